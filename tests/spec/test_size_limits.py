"""Size limits: a spec whose sizes exceed the documented maxima is refused when it loads, in one
``file:line:column`` line with exit code 2 and at once (it used to exhaust memory), in YAML and
in JSON; a spec exactly at every maximum loads; the JSON Schema carries the same maxima."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stagewarden.cli import cli
from stagewarden.spec import SpecError, json_schema, load_text
from stagewarden.spec import limits as lim

#: The refusal must come this fast (it runs no prover; the value is what the CLI promises).
REFUSED_WITHIN_SECONDS = 1.0


def _document(
    topology: dict[str, int] | None = None,
    factor: int | None = None,
    max_undetected: int = 3,
    checkpoint_every: int = 10,
) -> dict[str, Any]:
    """A small valid spec, with the given sizes in place."""
    checks: list[dict[str, Any]] = [{"scheme": "spot_check", "rate": 0.5}]
    if factor is not None:
        checks.append({"scheme": "replicate", "factor": factor})
    return {
        "version": 1,
        "name": "sizes",
        "topology": {"stages": 4, "replicas": 1, "microbatches": 2, "steps": 100, "standby": 1, **(topology or {})},
        "adversary": {"max_malicious": 1, "capabilities": ["tamper_activations"]},
        "defense": {"receipts": True, "checks": checks, "response": ["eject"], "checkpoint_every": checkpoint_every},
        "guarantees": [
            {"id": "damage", "kind": "bounded_damage", "max_undetected": max_undetected, "probability": 0.9},
            {"id": "live", "kind": "liveness"},
        ],
    }


def _yaml(doc: dict[str, Any]) -> str:
    """``doc`` as block YAML, one key per line (the structure _document builds)."""
    lines: list[str] = []

    def emit(value: Any, indent: int) -> None:
        pad = " " * indent
        for key, item in value.items():
            if isinstance(item, dict):
                lines.append(f"{pad}{key}:")
                emit(item, indent + 2)
            elif isinstance(item, list) and item and isinstance(item[0], dict):
                lines.append(f"{pad}{key}:")
                for entry in item:
                    first, *rest = entry.items()
                    lines.append(f"{pad}  - {first[0]}: {json.dumps(first[1])}")
                    lines.extend(f"{pad}    {k}: {json.dumps(v)}" for k, v in rest)
            else:
                lines.append(f"{pad}{key}: {json.dumps(item)}")

    emit(doc, 0)
    return "\n".join(lines) + "\n"


def _position(text: str, key: str, value: int) -> tuple[int, int]:
    """Line and column (1-based) of ``value`` written after ``key`` (YAML ``key: v`` or JSON ``"key": v``)."""
    for number, line in enumerate(text.splitlines(), start=1):
        for written in (f"{key}: {value}", f'"{key}": {value}'):
            at = line.find(written)
            if at >= 0 and not line[at + len(written) :].strip(" ,"):
                return number, at + len(written) - len(str(value)) + 1
    raise AssertionError(f"{key}: {value} is not in the text")


@dataclass(frozen=True)
class Oversized:
    id: str
    doc: dict[str, Any]
    key: str  # the key whose value the diagnostic must point at
    value: int
    message: str  # a part of the message


def _over(name: str, maximum: int) -> list[Oversized]:
    """The key one above its maximum, and at 10^12 (which used to end in MemoryError)."""
    out = []
    for value in (maximum + 1, 10**12):
        if name in ("stages", "replicas", "microbatches", "steps", "standby"):
            doc = _document(topology={name: value})
        elif name == "factor":
            doc = _document(factor=value)
        elif name == "max_undetected":
            doc = _document(max_undetected=value)
        else:
            doc = _document(checkpoint_every=value)
        out.append(Oversized(f"{name}={value}", doc, name, value, f"must be <= {maximum}, got {value}"))
    return out


OVERSIZED = [
    *_over("stages", lim.MAX_STAGES),
    *_over("replicas", lim.MAX_REPLICAS),
    *_over("standby", lim.MAX_STANDBY),
    *_over("microbatches", lim.MAX_MICROBATCHES),
    *_over("steps", lim.MAX_STEPS),
    *_over("factor", lim.MAX_REPLICATION_FACTOR),
    *_over("max_undetected", lim.MAX_UNDETECTED),
    *_over("checkpoint_every", lim.MAX_CHECKPOINT_EVERY),
    # Each size within its maximum, the workers together beyond MAX_WORKERS: the largest part is named.
    Oversized(
        "workers-stages",
        _document(topology={"stages": 16_384, "replicas": 9, "standby": 0}),
        "stages",
        16_384,
        "the spec has 147456 workers (16384 stages x 9 replicas + 0 standby); stagewarden supports at most 131072",
    ),
    Oversized(
        "workers-replicas",
        _document(topology={"stages": 3, "replicas": 65_536, "standby": 0}),
        "replicas",
        65_536,
        "the spec has 196608 workers",
    ),
    Oversized(
        "workers-standby",
        _document(topology={"stages": 16_385, "replicas": 4, "standby": 65_536}),
        "standby",
        65_536,
        "the spec has 131076 workers (16385 stages x 4 replicas + 65536 standby)",
    ),
    # The replication factor multiplies the workers (here the stages, the largest size, are named).
    Oversized(
        "workers-copies",
        _document(topology={"stages": 4096, "replicas": 1, "standby": 0}, factor=64),
        "stages",
        4096,
        "the spec has 262144 workers (4096 stages x 1 replica x 64 copies + 0 standby)",
    ),
    Oversized(
        "workers-one-over",
        _document(topology={"stages": 16_384, "replicas": 8, "standby": 1}),
        "stages",
        16_384,
        "the spec has 131073 workers",
    ),
]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("case", OVERSIZED, ids=[c.id for c in OVERSIZED])
def test_an_oversized_spec_is_refused_at_once(case: Oversized, suffix: str, tmp_path: Path) -> None:
    """``verify`` on a spec beyond a limit: exit code 2, one line naming the value's
    file:line:column and the limit, within a second, no traceback."""
    text = _yaml(case.doc) if suffix == ".yaml" else json.dumps(case.doc, indent=2) + "\n"
    path = tmp_path / f"spec{suffix}"
    path.write_text(text, encoding="utf-8")
    line, column = _position(text, case.key, case.value)
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["verify", str(path)], prog_name="stagewarden")
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{path}:{line}:{column}: "), lines[0]
    assert case.message in lines[0]
    assert result.stdout == ""
    assert elapsed < REFUSED_WITHIN_SECONDS, f"refused after {elapsed:.2f} s"


def test_a_huge_number_is_refused_like_a_large_one() -> None:
    """A size of 10^100 is refused by the same limit, at its location."""
    text = _yaml(_document(topology={"stages": 10**100}))
    with pytest.raises(SpecError) as info:
        load_text(text, "huge.yaml")
    line, column = _position(text, "stages", 10**100)
    assert str(info.value) == f"huge.yaml:{line}:{column}: topology.stages must be <= {lim.MAX_STAGES}, got {10**100}"


AT_MAXIMUM = {
    "stages": _document(topology={"stages": lim.MAX_STAGES}),
    "replicas": _document(topology={"stages": 2, "replicas": lim.MAX_REPLICAS, "standby": 0}),
    "standby": _document(topology={"stages": 2, "standby": lim.MAX_STANDBY}),
    "microbatches": _document(topology={"microbatches": lim.MAX_MICROBATCHES}),
    "steps": _document(topology={"steps": lim.MAX_STEPS}),
    "factor": _document(factor=lim.MAX_REPLICATION_FACTOR),
    "max_undetected": _document(max_undetected=lim.MAX_UNDETECTED),
    "checkpoint_every": _document(checkpoint_every=lim.MAX_CHECKPOINT_EVERY),
    "workers": _document(topology={"stages": 16_384, "replicas": 8, "standby": 0}),
    "workers-with-standby": _document(topology={"stages": 8_192, "replicas": 8, "standby": lim.MAX_STANDBY}),
}


@pytest.mark.parametrize("name", list(AT_MAXIMUM))
def test_a_spec_at_the_maximum_loads(name: str) -> None:
    """Every size exactly at its maximum (and S x R x k + standby exactly MAX_WORKERS) is valid."""
    loaded = load_text(_yaml(AT_MAXIMUM[name]), "max.yaml")
    assert loaded.spec.total_workers <= lim.MAX_WORKERS
    if name.startswith("workers"):
        assert loaded.spec.total_workers == lim.MAX_WORKERS


def test_the_prover_scale_fits_the_limits() -> None:
    """16,384 stages x 8 replicas, the largest topology the prover is built for, is within every limit."""
    assert lim.MAX_STAGES >= 16_384 and lim.MAX_REPLICAS >= 8 and 16_384 * 8 <= lim.MAX_WORKERS


def test_the_schema_carries_the_maxima() -> None:
    """``stagewarden schema`` gives each bounded size its ``maximum``, the loader's own limit."""
    defs = json.loads(CliRunner().invoke(cli, ["schema"]).stdout)["$defs"]
    expected = {
        ("Topology", "stages"): lim.MAX_STAGES,
        ("Topology", "replicas"): lim.MAX_REPLICAS,
        ("Topology", "standby"): lim.MAX_STANDBY,
        ("Topology", "microbatches"): lim.MAX_MICROBATCHES,
        ("Topology", "steps"): lim.MAX_STEPS,
        ("ReplicateCheck", "factor"): lim.MAX_REPLICATION_FACTOR,
        ("BoundedDamageGuarantee", "max_undetected"): lim.MAX_UNDETECTED,
        ("Defense", "checkpoint_every"): lim.MAX_CHECKPOINT_EVERY,
    }
    for (model, key), maximum in expected.items():
        assert defs[model]["properties"][key]["maximum"] == maximum, (model, key)
    assert json_schema()["$defs"] == defs
