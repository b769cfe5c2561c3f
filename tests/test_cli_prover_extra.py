"""The `synthesize` and `diff` commands, driven in-process with click's CliRunner: output, JSON
documents and exit codes (0 found / no regression, 1 none / regression, 2 bad input, 3 gave up)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from stagewarden.cli import cli
from stagewarden.cli.common import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNKNOWN, EXIT_VIOLATED
from stagewarden.prover import verify
from stagewarden.spec import example_text, load_text


def run(*args: str) -> Result:
    """Invoke ``stagewarden ARGS`` in-process."""
    return CliRunner().invoke(cli, list(args), prog_name="stagewarden")


def write_example(folder: Path, name: str, text: str | None = None) -> str:
    """Write a packaged example (or ``text``) to ``folder/name.yaml``; return the path."""
    path = folder / f"{name}.yaml"
    path.write_text(example_text(name) if text is None else text)
    return str(path)


def test_help_lists_the_new_commands() -> None:
    """The top-level help lists synthesize and diff, and each has its own --help."""
    result = run("--help")
    assert "  synthesize " in result.stdout and "  diff " in result.stdout
    for command in ("synthesize", "diff"):
        sub = run(command, "--help")
        assert sub.exit_code == 0 and sub.stdout.startswith(f"Usage: stagewarden {command} ")


# -- synthesize ---------------------------------------------------------------------------------


def test_synthesize_prints_the_block_its_cost_and_its_proof(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`synthesize --example paper-checked-worker-relay`: exit 0, a defense: block that loads, its cost, a proof."""
    monkeypatch.chdir(tmp_path)
    result = run("synthesize", "--example", "paper-checked-worker-relay")
    assert result.exit_code == EXIT_OK, result.output
    out = result.stdout
    block = re.search(r"^defense:\n(?:  .*\n)+", out, re.M)
    assert block is not None
    text = re.sub(r"^defense:\n(?:  .*\n)+", block.group(0), example_text("paper-checked-worker-relay"), flags=re.M)
    assert verify(load_text(text, "pasted.yaml")).exit_code == 0
    assert "cost: +0.833 compute, +0.833 memory" in out
    assert "proof: the spec with this defence in place, written to paper-checked-worker-relay.synthesized.yaml" in out
    assert "✔ integrity (detection) holds" in out and "rests on:" in out


def test_synthesize_without_a_defence_exits_1_and_says_why() -> None:
    """A spec whose compute bound no sufficient defence meets exits 1, naming the bound and the attack."""
    result = run("synthesize", "--example", "paper-redundant-neighbour")
    assert result.exit_code == EXIT_VIOLATED, result.output
    assert "no defence in the search space makes every guarantee hold" in result.stdout
    assert "costs more than 'cheap' allows" in result.stdout
    assert "cheap (overhead): every defence that makes the other guarantees hold costs more" in result.stdout


def test_synthesize_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--format json prints the versioned synthesis document; the spec with the defence is written too."""
    monkeypatch.chdir(tmp_path)
    result = run("synthesize", "--example", "paper-checked-worker-relay", "--format", "json")
    assert result.exit_code == EXIT_OK
    doc = json.loads(result.stdout)
    assert (tmp_path / doc["proof_file"]).read_text(encoding="utf-8") == doc["spec_text"]
    assert doc["version"] == 1 and doc["status"] == "found" and doc["exit_code"] == 0
    assert doc["yaml"].startswith("defense:\n") and doc["proof"]["exit_code"] == 0
    assert doc["warnings"] == []


def test_synthesize_json_without_a_defence() -> None:
    """--format json without a defence has status none and exit code 1."""
    result = run("synthesize", "--example", "paper-redundant-neighbour", "--format", "json")
    assert result.exit_code == EXIT_VIOLATED
    doc = json.loads(result.stdout)
    assert doc["status"] == "none" and doc["defense"] is None and doc["obstacles"]


def test_synthesize_gives_up_with_exit_3() -> None:
    """A per-guarantee timeout that the solver always hits makes the search give up: exit code 3."""
    result = run("synthesize", "--example", "paper-checked-worker-relay", "--timeout", "0.000001")
    assert result.exit_code == EXIT_UNKNOWN, result.output
    assert "the search gave up" in result.stdout


def test_synthesize_reads_a_file(tmp_path: Path) -> None:
    """SPEC is a file path; the proof's file name is derived from it."""
    path = write_example(tmp_path, "paper-checked-worker-relay")
    result = run("synthesize", path)
    assert result.exit_code == EXIT_OK
    assert str(tmp_path / "paper-checked-worker-relay.synthesized.yaml") in result.stdout


def test_synthesize_says_when_the_standby_pool_must_change(tmp_path: Path) -> None:
    """When liveness needs spare workers, the text output tells the user to set topology.standby too."""
    text = example_text("paper-eject-no-standby").replace(
        "  collusion: true\n", "  collusion: true\n  faults:\n    crash: 1\n"
    )
    result = run("synthesize", write_example(tmp_path, "crash", text))
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.count("set topology.standby to 1 (the spec has 0)") == 1
    assert "topology.standby" not in result.stdout.replace("set topology.standby to 1 (the spec has 0)", "")


@pytest.mark.parametrize(
    "args",
    [
        ["synthesize"],
        ["synthesize", "x.yaml", "--example", "demo"],
        ["synthesize", "--example", "nope"],
        ["synthesize", "/does/not/exist.yaml"],
        ["synthesize", "--example", "demo", "--format", "xml"],
    ],
)
def test_synthesize_bad_input_exits_2(args: list[str]) -> None:
    """A missing, unknown or doubled spec, or a bad flag, exits 2 without a traceback."""
    result = run(*args)
    assert result.exit_code == EXIT_BAD_INPUT
    assert "Traceback" not in result.output


def test_synthesize_bad_spec_names_the_line(tmp_path: Path) -> None:
    """A spec that does not load exits 2 with file:line:column diagnostics."""
    path = write_example(tmp_path, "bad", example_text("demo").replace("stages: 4", "stagez: 4"))
    result = run("synthesize", path)
    assert result.exit_code == EXIT_BAD_INPUT
    assert f"{path}:" in result.stderr and "stagez" in result.stderr


# -- diff -----------------------------------------------------------------------------------------


def test_diff_regression_exits_1_with_the_attack(tmp_path: Path) -> None:
    """paper-redundant-neighbour -> paper-adjacent-collusion: integrity regresses, exit 1, attack trace shown."""
    old = write_example(tmp_path, "paper-redundant-neighbour")
    new = write_example(tmp_path, "paper-adjacent-collusion")
    result = run("diff", old, new)
    assert result.exit_code == EXIT_VIOLATED, result.output
    out = result.stdout
    assert "✘ integrity regressed: holds -> violated" in out
    assert "attack trace:" in out and "covers for" in out
    assert "1 regressed, 3 unchanged: 1 regression" in out


def test_diff_improvement_exits_0(tmp_path: Path) -> None:
    """The reverse direction lists integrity as improved and exits 0."""
    old = write_example(tmp_path, "paper-adjacent-collusion")
    new = write_example(tmp_path, "paper-redundant-neighbour")
    result = run("diff", old, new)
    assert result.exit_code == EXIT_OK, result.output
    assert "• integrity improved: violated -> holds" in result.stdout
    assert "no guarantee got worse" in result.stdout


def test_diff_identical_specs_exit_0() -> None:
    """Two copies of one spec (here as example:NAME) have no changes."""
    result = run("diff", "example:demo", "example:demo")
    assert result.exit_code == EXIT_OK
    assert "5 unchanged: no guarantee got worse" in result.stdout


def test_diff_json(tmp_path: Path) -> None:
    """--format json prints the versioned diff document with the regression and its trace."""
    result = run("diff", "example:paper-redundant-neighbour", "example:paper-adjacent-collusion", "--format", "json")
    assert result.exit_code == EXIT_VIOLATED
    doc = json.loads(result.stdout)
    assert doc["version"] == 1 and doc["regressions"] == 1
    [integrity] = [g for g in doc["guarantees"] if g["change"] == "regressed"]
    assert integrity["id"] == "integrity" and integrity["trace"] is not None


def test_diff_added_and_removed(tmp_path: Path) -> None:
    """A guarantee present in one version only is shown as added or removed."""
    old = write_example(tmp_path, "paper-redundant-neighbour")
    new_text = example_text("paper-redundant-neighbour").replace("id: liveness", "id: progress")
    new = write_example(tmp_path, "renamed", new_text)
    result = run("diff", old, new)
    assert result.exit_code == EXIT_OK
    assert "• progress added: absent -> holds" in result.stdout
    assert "• liveness removed: holds -> absent" in result.stdout


@pytest.mark.parametrize(
    "args", [["diff", "example:demo"], ["diff", "/nope.yaml", "example:demo"], ["diff", "example:nope", "example:demo"]]
)
def test_diff_bad_input_exits_2(args: list[str]) -> None:
    """A missing argument, a missing file or an unknown example exits 2."""
    result = run(*args)
    assert result.exit_code == EXIT_BAD_INPUT
    assert "Traceback" not in result.output
