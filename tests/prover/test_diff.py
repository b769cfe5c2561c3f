"""Tests of the verdict diff: guarantees matched by id between two versions of a protocol,
regressions (with the new attack) told apart from improvements, added and removed guarantees."""

from __future__ import annotations

import json

import pytest

from stagewarden.prover import HOLDS, UNKNOWN, VACUOUS, VIOLATED, GuaranteeResult, Report, verify
from stagewarden.prover.diff import (
    ADDED,
    CHANGED,
    DIFF_FORMAT_VERSION,
    IMPROVED,
    REGRESSED,
    REMOVED,
    UNCHANGED,
    diff_reports,
    diff_specs,
)
from stagewarden.spec import example_text, load_example, load_text


@pytest.fixture(scope="module")
def neighbour() -> Report:
    """Verdicts of worked example 1 (the paper's scheme, one malicious stage)."""
    return verify(load_example("paper-redundant-neighbour"))


@pytest.fixture(scope="module")
def collusion() -> Report:
    """Verdicts of worked example 2 (the same scheme, two colluding stages)."""
    return verify(load_example("paper-adjacent-collusion"))


def test_a_second_colluding_stage_is_a_regression_with_its_attack(neighbour: Report, collusion: Report) -> None:
    """paper-redundant-neighbour -> paper-adjacent-collusion: integrity goes from holds to violated,
    with the attack trace."""
    diff = diff_reports(neighbour, collusion)
    assert diff.exit_code == 1
    [change] = diff.changes
    assert (change.id, change.change, change.old_verdict, change.new_verdict) == (
        "integrity",
        REGRESSED,
        HOLDS,
        VIOLATED,
    )
    assert change.regression and diff.regressions == [change]
    assert change.trace is not None and change.trace["#meta"]["guarantee"] == "integrity"
    stages = sorted(int(m["worker"].split(":")[0]) for m in change.trace["malicious"])
    assert len(stages) == 2 and stages[1] == stages[0] + 1 and 1 <= stages[0] <= 3  # s tampers, s+1 covers


def test_reversed_direction_is_an_improvement(neighbour: Report, collusion: Report) -> None:
    """paper-adjacent-collusion -> paper-redundant-neighbour: integrity improves, nothing regresses, exit 0."""
    diff = diff_reports(collusion, neighbour)
    assert diff.exit_code == 0
    assert [(e.id, e.change) for e in diff.changes] == [("integrity", IMPROVED)]
    assert diff.changes[0].trace is None


def test_identical_specs_have_no_changes() -> None:
    """Two verifications of the same spec differ in nothing."""
    loaded = load_example("paper-adjacent-collusion")
    diff = diff_specs(loaded, loaded)
    assert diff.exit_code == 0 and diff.changes == [] and diff.regressions == []
    assert [e.change for e in diff.entries] == [UNCHANGED] * 4


def test_guarantee_only_in_one_version_is_added_or_removed() -> None:
    """A guarantee renamed between versions is listed as removed (old id) and added (new id)."""
    old = load_example("paper-redundant-neighbour")
    new = load_text(example_text("paper-redundant-neighbour").replace("id: no-framing", "id: blame-free"), "new.yaml")
    diff = diff_specs(old, new)
    assert [(e.id, e.change) for e in diff.changes] == [("blame-free", ADDED), ("no-framing", REMOVED)]
    assert diff.exit_code == 0  # added as holding: not worse
    removed = diff.of(REMOVED)[0]
    assert removed.new is None and removed.old_verdict == HOLDS and not removed.regression


def test_guarantee_added_as_violated_is_a_regression() -> None:
    """A new guarantee that the new version violates makes the diff fail the gate."""
    old_text = example_text("paper-redundant-neighbour")
    old = load_text(old_text.replace("  - id: cheap\n    kind: overhead\n    max_compute: 0.25\n", ""), "old.yaml")
    diff = diff_specs(old, load_example("paper-redundant-neighbour"))
    [added] = diff.changes
    assert (added.id, added.change, added.new_verdict) == ("cheap", ADDED, VIOLATED)
    assert added.regression and diff.exit_code == 1
    assert added.trace is not None  # the cost breakdown


def _report(*verdicts: tuple[str, str]) -> Report:
    return Report("x.yaml", "x", [GuaranteeResult(gid, "detection", verdict, verdict) for gid, verdict in verdicts])


@pytest.mark.parametrize(
    ("old", "new", "change", "regression"),
    [
        (HOLDS, VIOLATED, REGRESSED, True),
        (HOLDS, UNKNOWN, REGRESSED, True),
        (UNKNOWN, VIOLATED, REGRESSED, True),
        (HOLDS, VACUOUS, REGRESSED, True),
        (VIOLATED, HOLDS, IMPROVED, False),
        (UNKNOWN, HOLDS, IMPROVED, False),
        (VIOLATED, UNKNOWN, IMPROVED, False),
        (VIOLATED, VACUOUS, CHANGED, False),
        (HOLDS, HOLDS, UNCHANGED, False),
    ],
)
def test_verdict_order(old: str, new: str, change: str, regression: bool) -> None:
    """Verdicts are ordered holds > unknown > violated/vacuous; going down is a regression."""
    diff = diff_reports(_report(("g", old)), _report(("g", new)))
    [entry] = diff.entries
    assert (entry.change, entry.regression, diff.exit_code) == (change, regression, int(regression))


@pytest.mark.parametrize(
    ("verdict", "regression"), [(HOLDS, False), (VIOLATED, True), (UNKNOWN, True), (VACUOUS, True)]
)
def test_added_guarantee_regresses_unless_it_holds(verdict: str, regression: bool) -> None:
    """An added guarantee counts against the gate unless the new version proves it."""
    diff = diff_reports(_report(), _report(("g", verdict)))
    assert diff.entries[0].change == ADDED and diff.entries[0].regression is regression


def test_json_shape(neighbour: Report, collusion: Report) -> None:
    """The JSON document is versioned, counts each kind of change and carries the new attack."""
    doc = json.loads(json.dumps(diff_reports(neighbour, collusion).to_json()))
    assert doc["version"] == DIFF_FORMAT_VERSION == 1
    assert doc["exit_code"] == 1 and doc["regressions"] == 1
    assert doc["old"]["name"] == "paper-redundant-neighbour" and doc["new"]["name"] == "paper-adjacent-collusion"
    assert doc["counts"] == {"regressed": 1, "improved": 0, "changed": 0, "added": 0, "removed": 0, "unchanged": 3}
    integrity = next(g for g in doc["guarantees"] if g["id"] == "integrity")
    assert integrity["old"]["verdict"] == "holds" and integrity["new"]["verdict"] == "violated"
    assert integrity["regression"] is True and integrity["trace"]["#meta"]["format"] == "stagewarden-trace"
