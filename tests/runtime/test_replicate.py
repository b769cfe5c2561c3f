"""The ``replicate`` check run for real: k copies of every pipeline compute every unit, the
coordinator compares their receipts, and a majority or the coordinator as referee decides whom a
disagreement blames."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from distributed_helpers import tiny_config

from stagewarden.attest.audit import audit_run_dir
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.launch import launch_local

#: Every attack a worker mounts on the units it computes, with the stage it attacks and the first
#: step it fires (the update attacks start at step 1: at step 0 the optimizer has no state).
ATTACKS: list[tuple[str, int, str, int]] = [
    ("reverse", 1, "forward", 0),
    ("random", 1, "forward", 0),
    ("scale", 1, "forward", 0),
    ("noise", 1, "forward", 0),
    ("bitflip", 1, "backward", 0),
    ("lazy", 1, "forward", 0),
    ("replay", 1, "forward", 1),
    ("weights", 1, "forward", 1),
    ("optimizer", 1, "forward", 1),
    ("grad_drift", 1, "forward", 0),
    ("swap_weights", 1, "forward", 1),
    ("equivocate", 1, "backward", 0),
    ("poison_data", 0, "forward", 0),
]


def _errors(run: Path) -> list[str]:
    return [f"{f.code}: {f.message}" for f in audit_run_dir(run).errors]


def _plan(kind: str, stage: int, direction: str, start: int, pipelines: str = "0") -> dict[str, Any]:
    return AttackPlan.from_cli(kind, str(stage), 1.0, start, direction=direction, pipelines=pipelines).to_json()


@pytest.mark.parametrize(("resolve", "copies"), [("majority", 3), ("referee", 2)])
@pytest.mark.parametrize(("kind", "stage", "direction", "start"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_replicate_catches_every_attack_at_its_first_step_and_blames_the_copy_that_mounts_it(
    tmp_path: Path, kind: str, stage: int, direction: str, start: int, resolve: str, copies: int
) -> None:
    """Copy 0 of the stage attacks from ``start``; the other copies are honest. The first
    detection is at ``start`` and names copy 0's worker of that stage (by the replicate check,
    or by the link and weights checks for what they see first), nobody else is blamed, the
    attacker's pipeline leaves the run (no standby) and the rest completes. The audit is clean,
    but for an equivocation, whose two signed messages stay in the log as evidence against the
    attacker alone."""
    config = tiny_config(
        stages=3,
        steps=start + 2,
        verification="replicate",
        replicate_factor=copies,
        replicate_resolve=resolve,
        attack=_plan(kind, stage, direction, start),
    )
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    attacker = f"s{stage}r0c0"
    detections = summary["detections"]
    assert detections, "the attack went undetected"
    assert (detections[0]["worker"], detections[0]["step"]) == (attacker, start)
    assert {d["worker"] for d in detections} == {attacker}
    assert summary["false_alarms"] == 0
    assert summary["status"] == "completed" and summary["steps_completed"] == config.steps
    assert summary["responses"][0]["plan"]["retired_pipeline"] == 0
    findings = audit_run_dir(run).errors
    if kind == "equivocate":
        assert findings and all(f.workers == (attacker,) for f in findings)
    else:
        assert list(findings) == []


def test_thirty_clean_steps_raise_no_alarm(tmp_path: Path) -> None:
    """Three honest copies agree bit for bit on every unit of 30 steps: no detection."""
    config = tiny_config(stages=2, steps=30, verification="replicate", replicate_factor=3, checkpoint_every=10)
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert summary["status"] == "completed" and summary["steps_completed"] == 30
    assert summary["detections"] == [] and summary["responses"] == []
    assert _errors(run) == []


def test_a_tie_of_two_copies_under_majority_blames_both(tmp_path: Path) -> None:
    """With two copies and a majority vote, one tampering copy makes a tie: both are blamed (as the
    prover assumes). With two standbys both are replaced and the run completes; with none, no
    pipeline is left and training stops."""
    plan = _plan("reverse", 1, "forward", 1)
    config = tiny_config(stages=3, steps=3, verification="replicate", replicate_factor=2, attack=plan, standby=2)
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert {(d["worker"], d["step"]) for d in summary["detections"]} == {("s1r0c0", 1), ("s1r0c1", 1)}
    assert summary["false_alarms"] == 1  # the honest copy, blamed by the tie
    assert {(r["worker"], r["by"]) for r in summary["replacements"]} == {
        ("s1r0c0", "standby0"),
        ("s1r0c1", "standby1"),
    }
    assert summary["status"] == "completed" and summary["steps_completed"] == 3
    assert _errors(run) == []
    stopped = launch_local(config.__class__(**{**config.__dict__, "standby": 0}), tmp_path / "none").summary
    assert stopped["status"] == "stopped" and "no other pipeline is left" in stopped["stop_reason"]


@pytest.mark.parametrize("standby", [0, 1])
def test_ejecting_one_copy_leaves_the_others_computing(tmp_path: Path, standby: int) -> None:
    """Three copies, copy 0 of stage 1 attacks from step 1. With a standby it takes the copy's
    slot and the three copies compute on; without, the copy's pipeline leaves the run and the
    other two compute on, still compared with each other."""
    plan = _plan("scale", 1, "forward", 1)
    config = tiny_config(stages=3, steps=4, verification="replicate", replicate_factor=3, attack=plan, standby=standby)
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert summary["status"] == "completed" and summary["steps_completed"] == 4
    assert [(d["worker"], d["step"]) for d in summary["detections"]] == [("s1r0c0", 1)]
    plan_record = summary["responses"][0]["plan"]
    if standby:
        assert plan_record["standby"] == "standby0" and "retired_pipeline" not in plan_record
        assert summary["replacements"] == [{"worker": "s1r0c0", "by": "standby0", "stage": 1, "from_step": 1}]
    else:
        assert plan_record["retired_pipeline"] == 0 and plan_record["standby"] is None
    assert _errors(run) == []


def test_two_colluding_copies_outvote_the_honest_one(tmp_path: Path) -> None:
    """Copies 0 and 1 of stage 1 tamper alike: the majority of three is theirs, so the honest copy 2
    is blamed and its pipeline retired; the tampered computation stays in the model. The runtime
    does what the prover says of a replicate check against two colluding copies."""
    plan = _plan("reverse", 1, "forward", 1, pipelines="0,1")
    config = tiny_config(stages=3, steps=3, verification="replicate", replicate_factor=3, attack=plan)
    summary = launch_local(config, tmp_path / "run").summary
    assert [(d["worker"], d["step"]) for d in summary["detections"]] == [("s1r0c2", 1)]
    assert summary["false_alarms"] == 1
    assert summary["responses"][0]["plan"]["retired_pipeline"] == 2


def test_a_resumed_run_keeps_a_retired_copy_out(tmp_path: Path) -> None:
    """Copy 0 of stage 0 is caught at step 0 and its pipeline retired (no standby); then copy 1's
    stage 0 is killed after step 1 and the run stops resumably. The resumed session admits only
    the pipelines still in the run (copies 1 and 2), completes, and the record audits clean."""
    import json
    import os
    import signal

    from stagewarden.runtime.launch import LaunchError

    fast = {"heartbeat_timeout": 2.0, "silence_timeout": 4.0, "timeout": 60.0}
    plan = _plan("reverse", 0, "forward", 0)
    config = tiny_config(stages=2, steps=4, verification="replicate", replicate_factor=3, attack=plan, **fast)
    run = tmp_path / "run"
    done: list[bool] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step" and event.get("step") == 1 and not done:
            done.append(True)
            rows = json.loads((run / "workers.json").read_text())["workers"]
            os.kill(next(int(r["pid"]) for r in rows if r["worker"] == "s0r0c1"), signal.SIGKILL)

    try:
        launch_local(config, run, on_event=on_event)
    except LaunchError as exc:
        assert exc.resumable
    assert done
    summary = launch_local(config, run, resume=True).summary
    assert summary["status"] == "completed" and summary["steps_completed"] == 4
    assert summary["responses"][0]["plan"]["retired_pipeline"] == 0
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    resumed = [i for i, e in enumerate(events) if e["event"] == "run_resumed"]
    admitted = {e["worker"] for e in events[resumed[0] :] if e["event"] == "admitted"}
    assert admitted == {"s0r0c1", "s1r0c1", "s0r0c2", "s1r0c2"}
    assert _errors(run) == []


def test_replicas_of_copies_aggregate_one_copy_per_replica_after_a_copy_leaves(tmp_path: Path) -> None:
    """Two replicas of two copies each, refereed: replica 1's copy 0 attacks stage 0 and is
    caught at step 0; its pipeline leaves the run. Every remaining pipeline then aggregates
    replica 0's contribution with replica 1's from its remaining copy, so all three apply the same
    update: no further detection, and the weights chain of the audit is clean."""
    plan = _plan("reverse", 0, "forward", 0, pipelines="2")
    config = tiny_config(
        stages=2,
        steps=3,
        replicas=2,
        verification="replicate",
        replicate_factor=2,
        replicate_resolve="referee",
        attack=plan,
    )
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert [(d["worker"], d["step"], d["check"]) for d in summary["detections"]] == [("s0r1c0", 0, "replicate")]
    assert summary["responses"][0]["plan"]["retired_pipeline"] == 2
    assert summary["status"] == "completed" and summary["steps_completed"] == 3
    assert _errors(run) == []


def test_a_referee_blames_exactly_the_two_colluding_copies(tmp_path: Path) -> None:
    """The referee variant of example 9: copies 0 and 1 of stage 1 tamper alike; the coordinator
    re-executes the unit of each compared copy and blames the two whose receipts it does not
    reproduce, not the honest copy 2, as the prover says (no_framing and detection hold)."""
    plan = _plan("reverse", 1, "forward", 1, pipelines="0,1")
    config = tiny_config(
        stages=3,
        steps=3,
        verification="replicate",
        replicate_factor=3,
        replicate_resolve="referee",
        attack=plan,
        standby=2,
    )
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert {(d["worker"], d["step"]) for d in summary["detections"]} == {("s1r0c0", 1), ("s1r0c1", 1)}
    assert summary["false_alarms"] == 0
    assert summary["status"] == "completed" and summary["steps_completed"] == 3
    assert _errors(run) == []


@pytest.mark.parametrize("standby", [0, 1])
def test_the_conformance_check_names_a_retired_copy(tmp_path: Path, standby: int) -> None:
    """Against ``replicate-majority`` (three copies, majority): a run whose convicted copy could not
    be replaced had its whole copy of the pipeline retired, which the spec's dynamics do not do
    (the other stages kept all their copies there); the conformance check says so as an error.
    With a standby the convict's slot alone changes hands and no such finding is made."""
    from stagewarden.conformance import check_conformance
    from stagewarden.spec import load_example

    config = tiny_config(
        stages=3,
        microbatches=2,
        steps=3,
        verification="replicate",
        replicate_factor=3,
        attack=_plan("reverse", 1, "forward", 1),
        standby=standby,
    )
    run = tmp_path / "run"
    launch_local(config, run)
    report = check_conformance(run, load_example("replicate-majority"))
    retired = [f for f in report.findings if "whole copy of the pipeline" in f.message]
    assert len(retired) == (0 if standby else 1)
    assert all(f.severity == "error" and f.workers == ("s1r0c0",) for f in retired)
