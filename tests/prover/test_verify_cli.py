"""`stagewarden verify` and `demo` end to end, in process: exit codes, JSON output, limits, and the
vacuity guard."""

from __future__ import annotations

import json
from pathlib import Path

import z3
from click.testing import CliRunner

from stagewarden.cli import cli
from stagewarden.prover import Prover
from stagewarden.spec import example_text, load_example


def run(*args: str) -> tuple[int, str]:
    """Invoke the CLI in process; return the exit code and standard output."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_all_hold_exits_zero() -> None:
    """A spec whose guarantees all hold exits 0."""
    code, out = run("verify", "--example", "paper-checked-worker-relay-receipts")
    assert code == 0 and "holds" in out


def test_violated_exits_one_with_trace() -> None:
    """A violated guarantee exits 1 and prints the attack trace."""
    code, out = run("verify", "--example", "paper-adjacent-collusion", "--guarantee", "integrity")
    assert code == 1
    assert "attack trace" in out and "covers" in out


def test_json_output_is_versioned() -> None:
    """--format json prints one versioned document with a guarantees list."""
    code, out = run("verify", "--example", "spot-check-eject", "--format", "json")
    data = json.loads(out)
    assert code == 1 and data["version"] == 1 and data["exit_code"] == 1
    by_id = {g["id"]: g for g in data["guarantees"]}
    assert by_id["damage"]["verdict"] == "violated"
    assert by_id["damage"]["figure"]["relation"] == "<="
    assert by_id["damage"]["trace"]["#meta"]["format"] == "stagewarden-trace"


def test_resource_limit_gives_unknown_exit_three() -> None:
    """A tiny deterministic resource limit makes the solver give up: unknown, exit 3, never holds."""
    code, out = run("verify", "--example", "paper-redundant-neighbour", "--rlimit", "1", "--format", "json")
    data = json.loads(out)
    assert code == 3
    assert {g["verdict"] for g in data["guarantees"]} == {"unknown"}
    assert all("--rlimit 1" in g["reason"] for g in data["guarantees"])


def test_unknown_guarantee_id_is_bad_input() -> None:
    """Asking for a guarantee the spec lacks is bad input (exit 2) with a hint."""
    code, out = run("verify", "--example", "paper-redundant-neighbour", "--guarantee", "integrety")
    assert code == 2


def test_broken_spec_exits_two(tmp_path: Path) -> None:
    """A spec that does not load exits 2."""
    spec = tmp_path / "bad.yaml"
    spec.write_text(example_text("demo").replace("stages: 4", "stages: 1"))
    code, _ = run("verify", str(spec))
    assert code == 2


def test_demo_proves_the_demo_protocol() -> None:
    """The protocol `stagewarden demo` proves and then trains with holds (the runs: tests/runtime/test_demo.py)."""
    code, out = run("verify", "--example", "demo")
    assert code == 0 and "5 holds" in out
    code, out = run("demo", "--help")
    assert code == 0 and "clean run and an attacked one" in " ".join(out.split())


def test_contradictory_assumptions_are_vacuous_never_holds() -> None:
    """If the assumptions admit no honest run, every guarantee is vacuous (exit 2), never holds."""
    prover = Prover(load_example("paper-redundant-neighbour"))
    with prover._symbolic():  # the encoding the vacuity check and explanations use
        first = prover.enc.mal[0]
        prover.enc._assume("contradiction", "a self-contradictory assumption", ("trust",), z3.And(first, z3.Not(first)))
    result = prover.check("integrity")
    assert result.verdict == "vacuous"
    assert [a.key for a in result.assumptions] == ["contradiction"]
