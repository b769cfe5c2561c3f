"""Random small specs for differential testing of the prover against the brute-force checker.

:func:`random_dynamics_spec_data` draws tinier specs biased towards the dynamics (standby workers,
crashes, framing, rollback without eject, replicate) for the dynamics simulator.

Every spec is written as YAML text and loaded with :func:`stagewarden.spec.load_text`, so it
passes the loader's semantic checks too. Sizes stay within what :mod:`bruteforce` enumerates
quickly: at most 5 stages, 2 replicas, replicate factor 3, 2 standby workers and a budget of 2.
"""

from __future__ import annotations

import io
import math
import random
from fractions import Fraction
from typing import Any

from ruamel.yaml import YAML

from stagewarden.spec import CAPABILITIES, RESPONSES, TAMPERING_CAPABILITIES, LoadedSpec, Spec, load_text

__all__ = [
    "load_data",
    "random_dynamics_spec_data",
    "random_loaded_spec",
    "random_spec",
    "random_spec_data",
    "random_spec_text",
    "spec_text",
]

_PERCENTAGES = ("0%", "5%", "10%", "12.5%", "20%", "25%", "33%", "40%", "50%", "100%")


def _subset(rng: random.Random, items: list[Any], min_size: int = 0) -> list[Any]:
    size = rng.randint(min_size, len(items))
    return rng.sample(items, size)


def _trust_entries(rng: random.Random, stages: int, replicas: int) -> list[int | str]:
    """A random trust list: whole stages (ints) and single slots ("s:r"), no entry twice."""
    candidates: list[int | str] = list(range(stages)) + [f"{s}:{r}" for s in range(stages) for r in range(replicas)]
    if rng.random() < 0.4:
        return []
    return rng.sample(candidates, rng.randint(1, min(3, len(candidates))))


def _check(rng: random.Random, scheme: str) -> dict[str, Any]:
    if scheme == "redundant_neighbour":
        return {"scheme": scheme, "input_via": rng.choice(["coordinator", "upstream", "checked_worker"])}
    if scheme == "spot_check":
        return {
            "scheme": scheme,
            "rate": rng.choice([0.05, 0.5, 1.0]),
            "verifier": rng.choice(["coordinator", "tee", "peer"]),
        }
    if scheme == "replicate":
        return {"scheme": scheme, "factor": rng.randint(2, 3), "resolve": rng.choice(["majority", "referee"])}
    if scheme == "statistical":
        return {
            "scheme": scheme,
            "power": rng.choice([0.0, 0.5, 0.9, 1.0]),
            "min_deviation": rng.choice([0.0, 0.0, 0.1]),
        }
    return {"scheme": scheme, "rule": rng.choice(["median", "trimmed_mean", "krum"])}


def _checks(rng: random.Random) -> list[dict[str, Any]]:
    out = []
    used: set[str] = set()
    for _ in range(rng.randint(0, 3)):
        scheme = rng.choice(["redundant_neighbour", "spot_check", "replicate", "statistical", "robust_aggregation"])
        if scheme in used and scheme in ("redundant_neighbour", "replicate", "robust_aggregation"):
            continue  # the loader allows only one of these
        used.add(scheme)
        out.append(_check(rng, scheme))
    return out


def _budget(rng: random.Random, total: int) -> int | str:
    """An integer budget 0..2, or a percentage string that resolves to at most 2."""
    if rng.random() < 0.25:
        fitting = [p for p in _PERCENTAGES if math.floor(Fraction(p.rstrip("%")) * total / 100) <= 2]
        return rng.choice(fitting)
    return rng.randint(0, min(2, total))


def _guarantee(rng: random.Random, index: int) -> dict[str, Any]:
    kind = rng.choice(["detection", "bounded_damage", "no_framing", "liveness", "data_integrity", "overhead"])
    g: dict[str, Any] = {"id": f"g{index}-{kind}", "kind": kind}
    if kind == "detection":
        if rng.random() < 0.4:
            g["of"] = _subset(rng, list(TAMPERING_CAPABILITIES), 1)
        if rng.random() < 0.8:
            g["probability"] = rng.choice([1.0, 0.5, 0.05])
    elif kind == "bounded_damage":
        g["max_undetected"] = rng.randint(0, 5)
        g["probability"] = rng.choice([1.0, 0.9, "1 - 1e-6"])
    elif kind == "overhead":
        g["max_compute"] = rng.choice([0.0, 0.05, 0.25, 0.5, 1.0, 2.0])
        if rng.random() < 0.5:
            g["max_memory"] = rng.choice([0.0, 0.5, 1.0, 2.0])
    return g


def random_spec_data(rng: random.Random) -> dict[str, Any]:
    """A random small spec as plain data (the structure of a spec file)."""
    stages = rng.randint(2, 5)
    replicas = rng.randint(1, 2)
    standby = rng.randint(0, 2)
    checks = _checks(rng)
    factor = max((c["factor"] for c in checks if c["scheme"] == "replicate"), default=1)
    total = stages * replicas * factor + standby
    trust: dict[str, Any] = {
        "honest": _trust_entries(rng, stages, replicas),
        "tee": _trust_entries(rng, stages, replicas),
        "coordinator": rng.choice(["trusted", "untrusted"]),
    }
    silent: float = rng.choice([0.0, 0.0, 0.0, 0.001, 0.01])
    adversary = {
        "max_malicious": _budget(rng, total),
        "collusion": rng.random() < 0.6,
        "tee_compromise": rng.random() < 0.3,
        "capabilities": _subset(rng, list(CAPABILITIES), 1),
        "faults": {"crash": rng.randint(0, 1), "silent_corruption": silent},
    }
    defense = {
        "receipts": rng.random() < 0.5,
        "attestation": rng.random() < 0.5,
        "data_commitment": rng.random() < 0.4,
        "checks": checks,
        "response": _subset(rng, list(RESPONSES), 1),
    }
    return {
        "version": 1,
        "name": f"random-{rng.randrange(10**9)}",
        "topology": {
            "stages": stages,
            "replicas": replicas,
            "microbatches": rng.randint(1, 3),
            "steps": rng.randint(1, 50),
            "standby": standby,
        },
        "trust": trust,
        "adversary": adversary,
        "defense": defense,
        "guarantees": [_guarantee(rng, i) for i in range(rng.randint(1, 6))],
    }


def _dynamics_guarantee(rng: random.Random, index: int) -> dict[str, Any]:
    kind = rng.choice(["detection", "bounded_damage", "bounded_damage", "no_framing", "liveness", "data_integrity"])
    g: dict[str, Any] = {"id": f"g{index}-{kind}", "kind": kind}
    if kind == "detection":
        if rng.random() < 0.3:
            g["of"] = _subset(rng, list(TAMPERING_CAPABILITIES), 1)
        g["probability"] = rng.choice([1.0, 0.5, 0.25])
    elif kind == "bounded_damage":
        g["max_undetected"] = rng.randint(0, 3)
        g["probability"] = rng.choice([1.0, 0.9, 0.5, 0.99, "1 - 1e-6"])
    return g


def _dynamics_draw(rng: random.Random) -> dict[str, Any]:
    while True:
        stages, replicas = rng.randint(2, 4), rng.randint(1, 2)
        factor = rng.choice([1, 1, 2, 3])
        if stages * replicas * factor <= 8:
            break
    checks = [c for c in _checks(rng) if c["scheme"] != "replicate"]
    if factor > 1:
        checks.append({"scheme": "replicate", "factor": factor, "resolve": rng.choice(["majority", "referee"])})
    elif rng.random() < 0.6 and not any(c["scheme"] == "redundant_neighbour" for c in checks):
        checks.append(_check(rng, "redundant_neighbour"))
    for check in checks:
        if check["scheme"] == "spot_check":
            check["rate"] = rng.choice([0.25, 0.5, 1.0])
    capabilities = _subset(rng, list(TAMPERING_CAPABILITIES), 1)
    for extra in ("false_accuse", "equivocate", "withhold"):
        if extra not in capabilities and rng.random() < (0.2 if extra == "withhold" else 0.4):
            capabilities.append(extra)
    response = rng.choice([["eject"], ["rollback"], ["eject", "rollback"], ["skip_stage"], ["restart"]])
    if rng.random() < 0.25:
        response = _subset(rng, list(RESPONSES), 1)
    data = {
        "version": 1,
        "name": f"dynamics-{rng.randrange(10**9)}",
        "topology": {
            "stages": stages,
            "replicas": replicas,
            "microbatches": rng.randint(1, 2),
            "steps": rng.randint(1, 2),
            "standby": rng.choice([0, 1, 1, 2, 2]),
        },
        "trust": {
            "honest": _trust_entries(rng, stages, replicas),
            "tee": _trust_entries(rng, stages, replicas) if rng.random() < 0.3 else [],
            "coordinator": "untrusted" if rng.random() < 0.2 else "trusted",
        },
        "adversary": {
            "max_malicious": rng.choice([0, 1, 1, 2, 2]),
            "collusion": rng.random() < 0.7,
            "tee_compromise": rng.random() < 0.2,
            "capabilities": capabilities,
            "faults": {"crash": rng.choice([0, 1, 1, 2]), "silent_corruption": 0.01 if rng.random() < 0.1 else 0.0},
        },
        "defense": {
            "receipts": rng.random() < 0.5,
            "attestation": rng.random() < 0.5,
            "data_commitment": rng.random() < 0.4,
            "checks": checks,
            "response": response,
        },
        "guarantees": [_dynamics_guarantee(rng, i) for i in range(rng.randint(2, 5))],
    }
    return data


def _frames_anyone(data: dict[str, Any]) -> bool:
    """Whether any honest worker can be framed and ejected (an untrusted coordinator without
    receipts, or a false accusation by a peer verifier): every subset of positions can then be
    emptied, so such specs are kept to 4 positions."""
    defense, adversary = data["defense"], data["adversary"]
    if "eject" not in defense["response"]:
        return False
    untrusted = data["trust"]["coordinator"] == "untrusted"
    if untrusted and not defense["receipts"]:
        return True
    peer = any(c["scheme"] == "spot_check" and c["verifier"] == "peer" for c in defense["checks"])
    return peer and "false_accuse" in adversary["capabilities"] and (untrusted or not defense["receipts"])


def random_dynamics_spec_data(rng: random.Random) -> dict[str, Any]:
    """A random tiny spec biased towards the dynamics: standby workers, crash faults, framing
    (false_accuse, equivocate, untrusted coordinator), rollback without eject, replicate; at most
    4 stages, 2 replicas, factor 3, 8 positions (4 where anyone can be framed), 2 standby
    workers, budget 2, 2 crashes, and a horizon of at most 2 steps of 2 micro-batches (what the
    dynamics simulator explores)."""
    while True:
        data = _dynamics_draw(rng)
        topology = data["topology"]
        factor = max((c["factor"] for c in data["defense"]["checks"] if c["scheme"] == "replicate"), default=1)
        if not _frames_anyone(data) or topology["stages"] * topology["replicas"] * factor <= 4:
            return data


def spec_text(data: dict[str, Any]) -> str:
    """Spec data written as YAML text (keys in the order given)."""
    yaml = YAML(typ="rt", pure=True)
    yaml.default_flow_style = False
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue()


def load_data(data: dict[str, Any], file: str = "<random>.yaml") -> LoadedSpec:
    """Spec data loaded through its YAML text, so the loader's semantic checks run too."""
    return load_text(spec_text(data), file)


def random_spec_text(rng: random.Random) -> str:
    """A random small spec as YAML text."""
    return spec_text(random_spec_data(rng))


def random_loaded_spec(rng: random.Random, dynamics: bool = False) -> LoadedSpec:
    """A random small spec, loaded (and so checked) by :func:`stagewarden.spec.load_text`; with
    ``dynamics``, one of :func:`random_dynamics_spec_data`."""
    return load_data(random_dynamics_spec_data(rng) if dynamics else random_spec_data(rng))


def random_spec(rng: random.Random) -> Spec:
    """A random small valid spec."""
    return random_loaded_spec(rng).spec
