"""The words a run's summary table and report use for how it ended."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from stagewarden.attest.run_record import RunRecord, TrainingRecord
from stagewarden.attest.run_record_parts import ResponseRecord
from stagewarden.run_outcome import AttackOutcome, responses_line, status_line

RECORDED = RunRecord.from_json(
    Path(__file__).resolve().parents[1] / "docs" / "report-example" / "attacked" / "summary.json"
)


def _training(**changes: Any) -> TrainingRecord:
    training = RECORDED.require_training()
    return training.model_copy(update=changes)


def test_a_stopped_run_says_why() -> None:
    """A stopped run's status carries the stop reason summary.json records."""
    training = _training(status="stopped", stop_reason="no honest path through step 3: ...")
    assert status_line(training, None) == "stopped: no honest path through step 3: ..."


def test_completed_is_never_shown_beside_an_undetected_attack() -> None:
    """A completed run with tampered units in the model says so, and whether any was detected."""
    training = _training(status="completed", stop_reason=None)
    missed = AttackOutcome("reverse (forward) on stage 1 at rate 0.5 from step 0", 170, 0, 170)
    assert status_line(training, missed) == (
        "completed, but the attack went undetected: 170 tampered unit(s) in the model"
    )
    partly = AttackOutcome("x", 10, 8, 2)
    assert status_line(training, partly) == "completed, with 2 undetected tampered unit(s) in the model"
    assert status_line(training, AttackOutcome("x", 10, 10, 0)) == "completed"
    assert missed.line().endswith("170 tampered unit(s), 0 detected, 170 in the model")


def test_responses_are_grouped() -> None:
    """Repeated responses are counted with the steps they span, not listed one by one."""
    [recorded] = RECORDED.require_training().responses
    plan = recorded.plan
    skip = dataclasses.replace(plan, response="skip_stage", bypass_stage=1, standby=None)
    eject = dataclasses.replace(plan, response="eject", bypass_stage=None, standby="standby0")
    responses = [recorded.model_copy(update={"step": t, "plan": skip}) for t in (1, 4, 9)]
    responses.append(recorded.model_copy(update={"step": 12, "plan": eject}))
    assert responses_line(responses) == "skip_stage bypassing stage 1 x 3 (steps 1-9), eject to standby0 x 1 (step 12)"
    assert responses_line([]) == "-"
    assert all(isinstance(r, ResponseRecord) for r in responses)
