"""The redundant-neighbour defence in multi-process runs (gloo, tiny model, 127.0.0.1).

Stage ``s + 1`` keeps a replica of stage ``s`` and recomputes every forward and backward unit
of it. These runs show what the paper's defence catches, what defeats it (a colluding checker;
an input relayed by the checked stage), and how the coordinator referees accusations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from distributed_helpers import reference, tiny_config

from stagewarden.attest.audit import audit_run_dir
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.config import ConfigError
from stagewarden.runtime.launch import launch_local


def _run(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    config = tiny_config(verification="redundant_neighbour", **settings)
    return launch_local(config, tmp_path / "run").summary


def _plan(kind: str, stages: str, start: int = 1, direction: str = "forward", covers: str = "") -> dict[str, Any]:
    return AttackPlan.from_cli(kind, stages, 1.0, start, direction=direction, covers=covers).to_json()


@pytest.mark.parametrize("via", ["coordinator", pytest.param("upstream", marks=pytest.mark.slow), "checked_worker"])
def test_clean_run_checks_every_unit_and_matches_single_process_training(tmp_path: Path, via: str) -> None:
    """S=4 with 1F1B: every checker recomputes every unit of its stage bit for bit (no report),
    and the replicas leave the training itself untouched."""
    summary = _run(tmp_path, stages=4, steps=3, schedule="1f1b", input_via=via)
    assert summary["status"] == "completed"
    assert summary["detections"] == [] and summary["false_alarms"] == 0
    # 3 checkers x 2 micro-batches x (forward + backward) x 3 steps
    assert summary["redundant_neighbour"]["units_checked"] == 36
    assert summary["redundant_neighbour"]["input_via"] == via
    losses, weights = reference(tiny_config(stages=4, steps=3, schedule="1f1b"))
    assert summary["losses"] == losses
    assert summary["final_weights"]["stages"] == weights
    assert audit_run_dir(tmp_path / "run").errors == ()


def test_tampered_activation_is_caught_by_the_next_stage_and_the_standby_completes(tmp_path: Path) -> None:
    """Stage 1 negates its activations from step 1; stage 2's recomputation catches it at step 1,
    the coordinator's re-execution confirms it, and a standby takes the stage."""
    summary = _run(tmp_path, stages=3, steps=3, attack=_plan("reverse", "1"), response="eject", standby=1)
    assert summary["status"] == "completed" and summary["steps_completed"] == 3
    first = summary["detections"][0]
    assert (first["step"], first["stage"], first["worker"], first["check"]) == (1, 1, "s1r0", "redundant_neighbour")
    assert first["unit_kind"] == "forward"
    assert summary["redundant_neighbour"]["confirmed"] >= 1
    assert summary["false_alarms"] == 0
    assert summary["replacements"][0]["by"] == "standby0"
    assert audit_run_dir(tmp_path / "run").errors == ()


def test_tampered_gradient_is_caught_by_the_next_stage(tmp_path: Path) -> None:
    """Stage 1 negates the gradient it sends stage 0; stage 2 gets that gradient relayed and catches it."""
    plan = _plan("reverse", "1", direction="backward")
    summary = _run(tmp_path, stages=3, steps=3, attack=plan, response="eject", standby=1, input_via="upstream")
    first = summary["detections"][0]
    assert (first["step"], first["worker"], first["unit_kind"]) == (1, "s1r0", "backward")
    assert summary["status"] == "completed"


def test_weights_attack_shows_as_a_forward_mismatch_at_the_next_step(tmp_path: Path) -> None:
    """The replica applies its own update: weights drifted by stage 1 at step 1 make its forward of
    step 2 differ."""
    summary = _run(tmp_path, stages=3, steps=4, attack=_plan("weights", "1"), response="eject", standby=1)
    first = summary["detections"][0]
    assert (first["step"], first["worker"], first["unit_kind"]) == (2, "s1r0", "forward")


def test_gradient_drift_is_blamed_on_the_drifting_stage_not_its_checker(tmp_path: Path) -> None:
    """Stage 1 drifts its accumulated gradients at step 1 while its messages and its update's
    arithmetic stay honest: the replica's own update differs, so stage 2 reports stage 1's
    forward of step 2. The referee finds that forward honest for its weights and the update that
    made them honest for its gradients, so it re-executes the backward units behind that update
    along the gradient trace, finds the drift, and confirms the report instead of blaming the
    honest checker for a false accusation."""
    summary = _run(tmp_path, stages=3, microbatches=2, steps=4, attack=_plan("grad_drift", "1"), response="restart")
    first = summary["detections"][0]
    assert (first["step"], first["worker"], first["unit_kind"], first["check"]) == (
        2,
        "s1r0",
        "forward",
        "redundant_neighbour",
    )
    assert {d["worker"] for d in summary["detections"]} == {"s1r0"}
    assert summary["redundant_neighbour"]["false_accusations"] == 0


def test_two_adjacent_colluding_stages_defeat_the_defence(tmp_path: Path) -> None:
    """Stage 1 tampers and its checker, stage 2, covers for it: nothing is reported, and the model
    trained is not the honest one."""
    summary = _run(tmp_path, stages=4, steps=3, attack=_plan("reverse", "1", covers="2"))
    assert summary["status"] == "completed"
    assert summary["detections"] == []
    assert summary["redundant_neighbour"]["mismatches_reported"] == 0
    losses, _ = reference(tiny_config(stages=4, steps=3))
    assert summary["losses"][0] == losses[0]  # before the attack starts
    assert summary["losses"][1:] != losses[1:]


@pytest.mark.parametrize(("via", "caught"), [("checked_worker", False), ("coordinator", True)])
def test_input_relayed_by_the_checked_stage_lets_poisoned_data_through(tmp_path: Path, via: str, caught: bool) -> None:
    """Stage 0 computes on poisoned token ids. When it also relays its input to its checker, the
    recomputation agrees and nothing is caught; from a trusted relay the checker recomputes on the
    step's real data and catches it."""
    summary = _run(tmp_path, stages=3, steps=2, attack=_plan("poison_data", "0"), input_via=via, response="restart")
    if caught:
        first = summary["detections"][0]
        assert (first["step"], first["worker"], first["unit_kind"]) == (1, "s0r0", "forward")
        assert "not the step's data" in first["message"]
    else:
        assert summary["detections"] == [] and summary["status"] == "completed"


def test_a_false_accusation_is_refereed_and_blames_the_accuser(tmp_path: Path) -> None:
    """Stage 2 accuses honest stage 1; the coordinator re-executes stage 1's unit from its committed
    inputs, finds the receipt's output, and blames stage 2; a standby replaces it."""
    plan = _plan("false_accuse", "2")
    summary = _run(tmp_path, stages=3, steps=3, attack=plan, response="eject", standby=1)
    first = summary["detections"][0]
    assert (first["step"], first["stage"], first["worker"], first["check"]) == (1, 2, "s2r0", "false_accusation")
    assert summary["redundant_neighbour"]["false_accusations"] >= 1
    assert summary["false_alarms"] == 0
    assert summary["status"] == "completed"


def test_without_receipts_a_false_accusation_frames_the_honest_stage(tmp_path: Path) -> None:
    """Without receipts nothing can be re-executed: the checker is believed, as in the paper's
    defence, and the honest stage is blamed (a false alarm)."""
    plan = _plan("false_accuse", "2")
    summary = _run(tmp_path, stages=3, steps=2, attack=plan, receipts=False, response="restart")
    first = summary["detections"][0]
    assert (first["worker"], first["check"]) == ("s1r0", "redundant_neighbour")
    assert summary["false_alarms"] >= 1
    assert summary["redundant_neighbour"]["unadjudicated"] >= 1
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "detection" and e["worker"] == "s1r0" for e in events)


def test_configurations_the_defence_cannot_run_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 2 stages"):
        tiny_config(stages=1, verification="redundant_neighbour")
    with pytest.raises(ConfigError, match="input_via"):
        tiny_config(verification="redundant_neighbour", input_via="carrier_pigeon")
    with pytest.raises(ConfigError, match="checking workers"):
        tiny_config(stages=3, verification="spot_check", attack=_plan("false_accuse", "2"))
    with pytest.raises(ConfigError, match="checks no stage"):
        tiny_config(stages=3, verification="redundant_neighbour", attack=_plan("false_accuse", "0"))


@pytest.mark.parametrize(("receipts", "caught"), [(False, False), (True, True)])
def test_forged_input_relayed_by_the_checked_stage(tmp_path: Path, receipts: bool, caught: bool) -> None:
    """Stage 1 forges the activation it received and computes honestly on it (``y' = f(x')``),
    relaying ``x'`` to its checker: without receipts the check passes; with receipts the link
    check finds that its committed input is not what stage 0 signed and sent."""
    plan = _plan("reverse", "1", direction="input")
    summary = _run(
        tmp_path, stages=3, steps=2, attack=plan, input_via="checked_worker", receipts=receipts, response="restart"
    )
    if caught:
        first = summary["detections"][0]
        assert (first["step"], first["worker"], first["check"]) == (1, "s1r0", "link")
    else:
        assert summary["detections"] == [] and summary["status"] == "completed"
        assert summary["losses"][1] != reference(tiny_config(stages=3, steps=2))[0][1]


@pytest.mark.parametrize(
    ("via", "receipts", "blamed"),
    [
        ("upstream", False, "s2r0"),
        ("upstream", True, "s1r0"),
        pytest.param("coordinator", False, "s1r0", marks=pytest.mark.slow),
    ],
)
def test_equivocating_upstream_stage(tmp_path: Path, via: str, receipts: bool, blamed: str) -> None:
    """Stage 1 equivocates. Through the upstream channel it sends stage 2 the honest activation
    and stage 3, stage 2's checker, a negated copy: without receipts stage 3's recomputation
    blames honest stage 2 (framing); with receipts the copy's signed header, which differs from
    what stage 2's receipt says it received, convicts stage 1. Through the trusted relay the
    checker sees what stage 2 really received; stage 1's own checker catches the negated
    activation it sent."""
    plan = _plan("equivocate", "1")
    summary = _run(tmp_path, stages=4, steps=2, attack=plan, input_via=via, receipts=receipts, response="restart")
    first = summary["detections"][0]
    assert (first["step"], first["worker"]) == (1, blamed)
    framed = [d for d in summary["detections"] if d["worker"] != "s1r0"]
    assert summary["false_alarms"] == len(framed)
    if blamed == "s2r0":
        assert framed and {d["worker"] for d in framed} == {"s2r0"}
    else:
        assert framed == []
    if via == "upstream" and receipts:
        assert first["check"] == "equivocation"
