"""The text renderer (golden output at a fixed width) and the verdict JSON of ``stagewarden verify``.

The golden files in ``tests/golden/`` hold the exact text a report renders to. After a deliberate
change to the prover's wording or to the renderer, regenerate them with
``STAGEWARDEN_UPDATE_GOLDEN=1 python -m pytest -q tests/test_render.py`` and read the diff.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from stagewarden.cli import cli
from stagewarden.prover import AssumptionRef, Figure, GuaranteeResult, Report, verify
from stagewarden.render import print_report, trace_lines
from stagewarden.spec import example_names, load_example

GOLDEN = Path(__file__).parent / "golden"
UPDATE_VARIABLE = "STAGEWARDEN_UPDATE_GOLDEN"
GOLDEN_EXAMPLES = [
    "paper-redundant-neighbour",
    "paper-adjacent-collusion",
    "spot-check-eject",
    "paper-eject-no-standby",
]

VERDICTS = {"holds", "violated", "unknown", "vacuous"}
KINDS = {"detection", "bounded_damage", "no_framing", "liveness", "data_integrity", "overhead"}


# -- helpers -------------------------------------------------------------------------------


def render(report: Report, width: int = 100) -> str:
    """A report as plain text, rendered by rich at a fixed width without colour, trailing spaces removed."""
    console = Console(width=width, record=True, color_system=None, force_terminal=False, file=io.StringIO())
    print_report(console, report)
    # Rich pads table cells and wrapped lines with spaces; drop them so that editors that strip
    # trailing whitespace cannot break the golden files.
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def assert_golden(name: str, text: str) -> None:
    """Compare ``text`` with ``tests/golden/NAME.txt``; rewrite the file instead when the
    environment variable ``STAGEWARDEN_UPDATE_GOLDEN`` is ``1``."""
    path = GOLDEN / f"{name}.txt"
    if os.environ.get(UPDATE_VARIABLE) == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        pytest.fail(f"no golden file {path}; create it with {UPDATE_VARIABLE}=1 and read it before committing")
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"rendering differs from {path}; if the change is intended, rerun with {UPDATE_VARIABLE}=1"


@cache
def example_report(name: str) -> Report:
    """The prover's report for a packaged example (computed once per test session)."""
    return verify(load_example(name))


_RENDER_SCRIPT = """
import io, sys
from rich.console import Console
from stagewarden.prover import verify
from stagewarden.render import print_report
from stagewarden.spec import load_example
console = Console(width=100, record=True, color_system=None, force_terminal=False, file=io.StringIO())
print_report(console, verify(load_example(sys.argv[1])))
sys.stdout.write(console.export_text())
"""


@cache
def render_example(name: str) -> str:
    """A packaged example's report as plain text at width 100, trailing spaces removed.

    It runs in a fresh process, as ``stagewarden verify`` does: some counterexamples (those of
    ``bounded_damage``) depend on the solver state that earlier proofs in the process leave.
    """
    done = subprocess.run(
        [sys.executable, "-c", _RENDER_SCRIPT, name], capture_output=True, text=True, encoding="utf-8", check=True
    )
    return "\n".join(line.rstrip() for line in done.stdout.splitlines()) + "\n"


def run_cli(args: list[str]) -> tuple[int, str]:
    """``stagewarden ARGS`` in a fresh process, 80 columns wide: exit code, stderr then stdout."""
    done = subprocess.run(
        [sys.executable, "-c", "from stagewarden.cli import main; main()", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "COLUMNS": "80"},
    )
    return done.returncode, done.stderr + done.stdout


@cache
def example_json(name: str) -> tuple[int, dict[str, Any]]:
    """Exit code and parsed output of ``stagewarden verify --example NAME --format json``."""
    result = CliRunner().invoke(cli, ["verify", "--example", name, "--format", "json"])
    return result.exit_code, json.loads(result.stdout)


def synthetic_report(*results: GuaranteeResult) -> Report:
    """A report built by hand, to render verdicts that no packaged example produces."""
    return Report("my-spec.yaml", "my-spec", list(results))


# -- golden output -------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDEN_EXAMPLES)
def test_example_report_matches_golden(name: str) -> None:
    """The text report of a packaged example is exactly the reviewed golden text."""
    assert_golden(name, render_example(name))


def test_unknown_and_vacuous_match_golden() -> None:
    """Unknown and vacuous verdicts render with their verdict word, reason and contradictory assumptions."""
    unknown = GuaranteeResult(
        "integrity",
        "detection",
        "unknown",
        "the solver gave up: a solver limit was reached (--rlimit 1; z3: sat.canceled)",
        reason="a solver limit was reached (--rlimit 1; z3: sat.canceled)",
    )
    damage = GuaranteeResult(
        "damage",
        "bounded_damage",
        "unknown",
        "unknown: the dominating bound 3e-06 exceeds 1e-06 but the worst placement found reaches only 9e-07",
        figure=Figure("Pr[more than K undetected]", 9e-07, 1e-06, "<="),
        reason="probability bound not tight",
    )
    vacuous = GuaranteeResult(
        "liveness",
        "liveness",
        "vacuous",
        "the spec's assumptions contradict each other: no honest run is possible",
        assumptions=[
            AssumptionRef("honest:0", "stage 1 is honest", "my-spec.yaml:12"),
            AssumptionRef("contradiction", "stage 1 is malicious", "my-spec.yaml:30"),
        ],
    )
    assert_golden("synthetic-unknown-vacuous", render(synthetic_report(unknown, damage, vacuous)))


def test_golden_width_is_respected() -> None:
    """No golden line is wider than the console it was rendered for."""
    for name in GOLDEN_EXAMPLES:
        for line in render_example(name).splitlines():
            assert len(line) <= 100, line


# -- renderer details ------------------------------------------------------------------------


def test_cost_figure_is_not_formatted_as_a_probability() -> None:
    """An overhead figure above 1 renders to three digits, not as a raw float."""
    result = GuaranteeResult(
        "cheap",
        "overhead",
        "holds",
        "holds: extra compute 0.833 <= 1.5",
        figure=Figure("extra compute", 5 / 6, 1.5, "<="),
    )
    text = render(synthetic_report(result))
    assert "0.833 (needs <= 1.5)" in text
    assert "0.8333333" not in text


def test_check_rows_say_what_each_check_does() -> None:
    """A catching check shows its probability once; a passing one shows why it passed."""
    rows = [
        {
            "check": "spot_check",
            "checker": "coordinator",
            "result": "catches",
            "probability": "0.05",
            "why": "catches it with probability 1/20",
        },
        {
            "check": "redundant_neighbour",
            "checker": "4:0",
            "result": "passes",
            "probability": "0",
            "why": "the checker 4:0 is malicious and covers for 3:0",
        },
    ]
    state = {
        "#index": 0,
        "step": 0,
        "microbatch": 0,
        "worker": "3:0",
        "unit": "forward",
        "action": "tamper_activations",
        "detection_probability": "0.05",
        "checks": rows,
    }
    assert trace_lines({"states": [state]}) == [
        "step 0, micro-batch 0: 3:0 uses tamper_activations on its forward unit (detected with probability 0.05)",
        "    spot_check by coordinator: catches it with probability 0.05",
        "    redundant_neighbour by 4:0: passes - the checker 4:0 is malicious and covers for 3:0",
    ]


def test_verdict_counts_list_problems_first() -> None:
    """The closing line counts violated guarantees before those that hold."""
    text = render(example_report("paper-redundant-neighbour"))
    assert text.rstrip().splitlines()[-1] == "1 violated, 3 holds"


# -- verdict JSON ------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    """A JSON number (not a Boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_figure(figure: dict[str, Any]) -> None:
    """A ``figure`` object has the documented keys and types."""
    assert set(figure) <= {"name", "value", "bound", "relation", "exact", "bound_exact"}
    assert isinstance(figure["name"], str)
    assert _is_number(figure["value"]) and _is_number(figure["bound"])
    assert figure["relation"] in (">=", "<=")
    if "exact" in figure:
        assert re.fullmatch(r"-?\d+(/\d+)?", figure["exact"])


def _check_trace(trace: dict[str, Any], guarantee: dict[str, Any]) -> None:
    """A trace has the keys every kind of trace shares, with the documented types."""
    for key in ("#meta", "params", "malicious", "states", "outcome"):
        assert key in trace, key
    meta = trace["#meta"]
    assert meta["format"] == "stagewarden-trace" and isinstance(meta["version"], int)
    assert meta["guarantee"] == guarantee["id"] and meta["kind"] == guarantee["kind"]
    assert isinstance(meta["description"], str) and meta["description"]
    assert "minimal" not in meta or isinstance(meta["minimal"], bool)
    assert set(trace["params"]) == {"stages", "replicas", "microbatches", "steps", "standby", "replication_factor"}
    assert all(isinstance(v, int) for v in trace["params"].values())
    for entry in trace["malicious"]:
        assert set(entry) == {"worker", "role", "capabilities"}
        assert isinstance(entry["worker"], str) and isinstance(entry["role"], str)
        assert all(isinstance(c, str) for c in entry["capabilities"])
    assert [s["#index"] for s in trace["states"]] == list(range(len(trace["states"])))
    assert isinstance(trace["outcome"], dict)


@pytest.mark.parametrize("name", example_names())
def test_verdict_json_has_the_documented_fields(name: str) -> None:
    """Every packaged example's verdict JSON has the documented fields, with the right types."""
    code, data = example_json(name)
    assert set(data) == {"version", "spec", "name", "exit_code", "notes", "guarantees", "warnings"}
    assert data["version"] == 1 and data["spec"] == f"example:{name}" and data["name"] == name
    assert data["exit_code"] == code
    assert all(isinstance(n, str) for n in data["notes"])
    for warning in data["warnings"]:
        assert set(warning) == {"location", "message"}
    assert data["guarantees"]
    for g in data["guarantees"]:
        assert set(g) == {
            "id",
            "kind",
            "verdict",
            "summary",
            "figure",
            "trivially",
            "assumptions",
            "trace",
            "reason",
            "notes",
            "seconds",
        }
        assert isinstance(g["id"], str) and g["kind"] in KINDS and g["verdict"] in VERDICTS
        assert isinstance(g["summary"], str) and isinstance(g["trivially"], bool)
        assert g["figure"] is None or isinstance(g["figure"], dict)
        if g["figure"] is not None:
            _check_figure(g["figure"])
        for a in g["assumptions"]:
            assert set(a) == {"key", "text", "location"}
            assert re.fullmatch(rf"example:{re.escape(name)}:\d+", a["location"])
        assert g["reason"] is None or isinstance(g["reason"], str)
        assert all(isinstance(n, str) for n in g["notes"])
        assert _is_number(g["seconds"]) and g["seconds"] >= 0
        if g["verdict"] == "holds":
            assert g["trace"] is None
            # An explanation, unless none was needed or its search ran out of effort (with a note).
            assert g["assumptions"] or g["trivially"] or g["notes"]
        if g["verdict"] == "violated":
            assert g["trace"] is not None


@pytest.mark.parametrize("name", example_names())
def test_exit_code_follows_the_verdicts(name: str) -> None:
    """The JSON exit code is 2 for a vacuous, else 1 for a violated, else 3 for an unknown guarantee, else 0."""
    code, data = example_json(name)
    verdicts = {g["verdict"] for g in data["guarantees"]}
    expected = 2 if "vacuous" in verdicts else 1 if "violated" in verdicts else 3 if "unknown" in verdicts else 0
    assert code == data["exit_code"] == expected


@pytest.mark.parametrize("name", example_names())
def test_traces_have_the_itf_style_keys(name: str) -> None:
    """Every trace carries #meta, params, malicious, vars, states and outcome as documented."""
    _, data = example_json(name)
    for g in data["guarantees"]:
        trace = g["trace"]
        if trace is None:
            continue
        _check_trace(trace, g)
        missing = [k for k in ("spec",) if k not in trace["#meta"]] + [k for k in ("vars",) if k not in trace]
        assert not missing, missing
        assert trace["#meta"]["spec"] == data["spec"]
        assert all(isinstance(v, str) for v in trace["vars"])


def test_unknown_verdicts_carry_a_reason_in_json() -> None:
    """Under a tiny --rlimit every guarantee is unknown, with a reason naming the limit, and exit 3."""
    args = ["verify", "--example", "paper-redundant-neighbour", "--rlimit", "1", "--format", "json"]
    result = CliRunner().invoke(cli, args)
    data = json.loads(result.stdout)
    assert result.exit_code == 3 == data["exit_code"]
    for g in data["guarantees"]:
        assert g["verdict"] == "unknown" and g["trace"] is None and g["assumptions"] == []
        assert isinstance(g["reason"], str) and "--rlimit 1" in g["reason"]


# -- the docs show real output --------------------------------------------------------------

DOCS = Path(__file__).parent.parent / "docs"
#: Pages whose console blocks show the output of commands on packaged examples.
PAGES_WITH_OUTPUT = ["tutorial.rst", "examples.rst", "getting-started.rst"]


def console_sessions(path: Path) -> list[tuple[str, list[str]]]:
    """Every ``$ stagewarden ...`` command of the console blocks of an rst page, with the output
    lines shown under it (block indentation and trailing spaces removed)."""
    sessions: list[tuple[str, list[str]]] = []
    in_block = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith(".. code-block:: console"):
            in_block = True
            continue
        if in_block and raw and not raw.startswith("   "):
            in_block = False
        if not in_block:
            continue
        line = raw[3:].rstrip()
        if line.startswith("$ stagewarden "):
            sessions.append((line[2:], []))
        elif sessions and line.startswith("$ "):
            sessions.append((line[2:], []))  # another command: not checked, but ends the previous one
        elif sessions:
            sessions[-1][1].append(line)
    return [(command, shown) for command, shown in sessions if _reproducible(command)]


def _reproducible(command: str) -> bool:
    """Whether a documented command can be rerun as shown: it works on packaged examples only."""
    words = command.split()
    return words[0] == "stagewarden" and (
        "--example" in words or words[1] in ("examples", "demo") or any(w.startswith("example:") for w in words)
    )


def documented_sessions() -> list[tuple[str, str, list[str]]]:
    """(page, command, shown lines) for every reproducible command of the pages with output."""
    return [(page, command, shown) for page in PAGES_WITH_OUTPUT for command, shown in console_sessions(DOCS / page)]


def _normalise(line: str) -> str:
    """Drop what changes from run to run (timings) and trailing spaces."""
    return re.sub(r"in \d+(\.\d+)? s\)", "in N s)", line.rstrip())


def _first_mismatch(shown: list[str], actual: list[str]) -> str | None:
    """The first shown line that is not found, in order, in the actual output (``...`` skips)."""
    position = 0
    for line in shown:
        if line.strip() in ("...", ""):
            continue
        wanted = _normalise(line)
        while position < len(actual) and _normalise(actual[position]) != wanted:
            position += 1
        if position == len(actual):
            return line
        position += 1
    return None


@pytest.mark.parametrize(
    ("page", "command", "shown"),
    documented_sessions(),
    ids=[f"{page}: {command}" for page, command, _ in documented_sessions()],
)
def test_documented_output_is_real(
    page: str, command: str, shown: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every output line a docs page shows for a command is printed by that command, in that order."""
    monkeypatch.chdir(tmp_path)  # commands with a default output folder (``demo``) write it here
    code, output = run_cli(command.split()[1:])
    assert code in (0, 1), output
    missing = _first_mismatch(shown, output.splitlines())
    assert missing is None, f"docs/{page} shows a line that `{command}` does not print:\n{missing}"
