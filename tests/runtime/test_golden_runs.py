"""Golden runs: every configuration of :data:`golden_runs.CONFIGS` run on the code under test gives,
field by field, what the golden file recorded from the runtime before it was restructured.

What is compared and what is left out, and why, is in :mod:`golden_runs` (module docstring,
``VOLATILE_KEYS``, ``VOLATILE_PATHS``, ``TEXT_NORMALISATIONS``): every value of the summary, the
events and the signed receipts and headers that two runs of the same code reproduce bit for
bit; the rest (run ids, keys, signatures, spot-check secrets and whatever is derived from them,
times, durations, the workers' code measurements, the transport's wording of a closed
connection) is left out, because it differs between two runs of the same code or, for the
measurement, must differ when the code's files move.

The digests depend on the numerics of torch's CPU kernels: on a machine whose kernels give
other bits than the recording machine's (``numerics_fingerprint``), the runs are skipped with a
message saying so, rather than compared against numbers this machine cannot reproduce.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from golden_runs import (
    CONFIGS,
    GOLDEN_DIR,
    VOLATILE_KEYS,
    GoldenConfig,
    compare_with_golden,
    golden_path,
    numerics_fingerprint,
    run,
)


def _golden(config: GoldenConfig) -> dict[str, Any]:
    return json.loads(golden_path(config.name).read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_the_run_matches_its_golden_file(tmp_path: Path, config: GoldenConfig) -> None:
    golden = _golden(config)
    if golden["recorded"]["numerics"] != numerics_fingerprint():
        pytest.skip(
            "torch's CPU kernels here give other bits than on the machine the golden files were recorded on; "
            "re-record them here from the reference commit (docs/development.rst, Golden runs)"
        )
    problems = compare_with_golden(config, golden, run(config, tmp_path / "run"))
    shown = "\n".join(problems[:40]) + (f"\n... and {len(problems) - 40} more" if len(problems) > 40 else "")
    assert not problems, f"{len(problems)} differences from {golden_path(config.name).name}:\n{shown}"


def test_every_configuration_has_a_golden_file_and_every_golden_file_a_configuration() -> None:
    files = {p.stem for p in GOLDEN_DIR.glob("*.json")}
    assert files == {c.name for c in CONFIGS}


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_the_golden_file_pins_what_its_configuration_is_for(config: GoldenConfig) -> None:
    """A golden file of a run that did not do what its name says (an attack that never fired, a
    standby that never took over) would pin nothing of interest; and none holds a volatile key."""
    observed = _golden(config)["observed"]
    summary, events = observed["summary"], observed["events"]
    assert not _keys(observed) & set(VOLATILE_KEYS)
    assert summary["final_weights"]["stages"] and all(len(d) == 64 for d in summary["final_weights"]["stages"])
    assert sum(len(rows) for rows in observed["signed_records"].values()) == summary["receipts"] + summary["headers"]
    names = {e["event"] for e in events}
    if config.name.startswith("clean") or config.name == "redundant_neighbour_clean":
        assert summary["status"] == "completed" and not summary["detections"] and not summary["faults"]
    elif config.name == "attack_withhold":
        assert [(f["worker"], f["cause"]) for f in summary["faults"]] == [("s1r0", "withholding")]
    elif config.name == "resume_after_crash":
        assert [r["fault"]["worker"] for r in summary["resumes"]] == ["s0r0"] and "run_resumed" in names
    else:
        assert summary["detections"], "the attack was never detected"
    if config.name in ("eject_standby", "rollback"):
        assert [r["plan"]["response"] for r in summary["responses"]][:1] == [config.settings["response"]]
        assert summary["replacements"][0]["by"] == "standby0"
    if config.name == "skip_stage":
        assert summary["responses"][0]["plan"]["response"] == "skip_stage"


# The comparison, attacked: each edit of a real golden file must be reported, at its place.


def _reported(config: GoldenConfig, edit: Any) -> list[str]:
    golden = _golden(config)
    observed = copy.deepcopy(golden["observed"])
    assert compare_with_golden(config, golden, observed) == []
    edit(observed)
    return compare_with_golden(config, golden, observed)


def _flip_first_digit(digest: str) -> str:
    return ("1" if digest[0] == "0" else "0") + digest[1:]


def test_a_changed_weights_digest_is_reported() -> None:
    config = next(c for c in CONFIGS if c.name == "rollback")

    def edit(observed: dict[str, Any]) -> None:
        stages = observed["summary"]["final_weights"]["stages"]
        stages[2] = _flip_first_digit(stages[2])

    [line] = _reported(config, edit)
    assert line.startswith("rollback: observed.summary.final_weights.stages[2]: expected ")


def test_a_dropped_detection_is_reported() -> None:
    config = next(c for c in CONFIGS if c.name == "attack_reverse")
    problems = _reported(config, lambda observed: observed["summary"]["detections"].pop())
    assert any(p.startswith("attack_reverse: observed.summary.detections: expected ") for p in problems), problems


def test_a_changed_receipt_digest_is_reported() -> None:
    config = next(c for c in CONFIGS if c.name == "eject_standby")

    def edit(observed: dict[str, Any]) -> None:
        receipt = next(r for r in observed["signed_records"]["standby0"] if r["record"] == "receipt")
        receipt["output"] = _flip_first_digit(receipt["output"])

    [line] = _reported(config, edit)
    assert line.startswith("eject_standby: observed.signed_records.standby0[")
    assert ".output: expected " in line


def test_a_swapped_event_order_and_a_changed_setting_are_reported() -> None:
    config = next(c for c in CONFIGS if c.name == "resume_after_crash")

    def edit(observed: dict[str, Any]) -> None:
        events = observed["events"]
        events[1], events[-1] = events[-1], events[1]

    assert any(p.startswith("resume_after_crash: observed.events[1]") for p in _reported(config, edit))
    golden = _golden(config)
    steps = golden["settings"]["steps"]
    golden["settings"]["steps"] = steps + 1
    assert compare_with_golden(config, golden, _golden(config)["observed"]) == [
        f"resume_after_crash: settings.steps: expected {steps + 1}, got {steps}"
    ]
