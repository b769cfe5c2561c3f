"""Multi-process runs with attacks, spot checking and responses (gloo, tiny model, 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from distributed_helpers import fires_once, reference, reference_with_updates, tiny_config
from nacl.signing import VerifyKey

from stagewarden.attest.audit import audit_run_dir
from stagewarden.attest.receipt_log import RecordType, scan_log
from stagewarden.attest.receipts import UnitKind, parse_receipt, receipt_digest
from stagewarden.attest.rundir import LOG_FILE
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.config import ConfigError
from stagewarden.runtime.coordinator import DETECTION_DOMAIN
from stagewarden.runtime.launch import launch_local
from stagewarden.runtime.spotcheck import receipts_digest


def _summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def _events(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def _attacked(tmp_path: Path, kind: str, stage: int, direction: str = "forward", **overrides: Any) -> dict[str, Any]:
    """Run S=3, M=1 with the attack from step 1 and spot checks at p=1; return the summary. The
    middle stage is routed around (eject without a standby falls back to skip_stage) and the run
    completes; an edge stage cannot be, and the run stops (no honest path)."""
    plan = AttackPlan.from_cli(kind, str(stage), 1.0, 1, direction=direction).to_json()
    settings: dict[str, Any] = dict(
        stages=3, microbatches=1, steps=2, attack=plan, verification="spot_check", spot_check_rate=1.0
    )
    settings.update(overrides)
    run = tmp_path / "run"
    result = launch_local(tiny_config(**settings), run)
    if settings.get("response", "eject") != "restart" and stage == 1:
        assert result.summary["status"] == "completed"
        assert {r["plan"]["bypass_stage"] for r in result.summary["responses"]} == {1}
    else:
        assert result.summary["status"] == "stopped"
        assert "no honest path" in result.summary["stop_reason"]
        assert "tampered with in each of its" in _events(run)[-1]["reason"]
    return result.summary


def _first(summary: dict[str, Any]) -> dict[str, Any]:
    assert summary["detections"], "no detection"
    return summary["detections"][0]


def _check_signature(summary: dict[str, Any], detection: dict[str, Any]) -> None:
    body = {k: v for k, v in detection.items() if k != "signature"}
    signed = DETECTION_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    VerifyKey(bytes.fromhex(summary["coordinator_key"])).verify(signed, bytes.fromhex(detection["signature"]))


SLOW_KINDS = ["random", "scale", "noise", "lazy", "replay"]


@pytest.mark.parametrize(
    ("kind", "direction"),
    [("reverse", "forward"), ("bitflip", "backward")]
    + [pytest.param(k, "forward", marks=pytest.mark.slow) for k in SLOW_KINDS],
)
def test_tensor_attack_is_caught_at_its_first_step(tmp_path: Path, kind: str, direction: str) -> None:
    """A tensor attack by stage 1 is caught by the spot check at p=1 at step 1 (its start), blaming s1r0."""
    summary = _attacked(tmp_path, kind, 1, direction)
    first = _first(summary)
    unit = "forward" if direction == "forward" else "backward"
    assert (first["step"], first["worker"], first["stage"], first["unit_kind"], first["check"]) == (
        1,
        "s1r0",
        1,
        unit,
        "spot_check",
    )
    assert all(d["worker"] == "s1r0" for d in summary["detections"])
    # step 0 was honest; step 1 was recomputed around the attacker and kept
    assert summary["losses"][:1] == reference(tiny_config(stages=3, microbatches=1, steps=1))[0]
    assert len(summary["losses"]) == 2
    _check_signature(summary, first)


def test_weights_attack_is_caught_on_the_update(tmp_path: Path) -> None:
    """A weights attack is caught by re-executing the sampled update unit, blaming the tampering stage."""
    first = _first(_attacked(tmp_path, "weights", 2))
    assert (first["step"], first["worker"], first["unit_kind"], first["check"]) == (1, "s2r0", "update", "spot_check")


@pytest.mark.parametrize("rate", [1.0, 1e-9])
def test_optimizer_attack_is_caught_by_the_optimizer_state_chain(tmp_path: Path, rate: float) -> None:
    """A stage that changes its optimizer state between updates (so the next update, honest
    arithmetic on that state, drifts) is caught when its update receipt arrives: the state it
    starts from is not the one its previous update receipt committed to. The chain needs no
    sampling, so it catches the attack at a spot-check rate that samples nothing too."""
    summary = _attacked(tmp_path, "optimizer", 2, spot_check_rate=rate)
    first = _first(summary)
    assert (first["step"], first["worker"], first["unit_kind"], first["check"]) == (
        1,
        "s2r0",
        "update",
        "optimizer_state",
    )
    assert all(d["worker"] == "s2r0" for d in summary["detections"])
    _check_signature(summary, first)


@pytest.mark.parametrize("stage", [0, 1])
def test_gradient_drift_is_caught_by_the_gradient_trace(tmp_path: Path, stage: int) -> None:
    """A stage that moves its accumulated parameter gradients before each backward unit, while
    every message it sends and every unit's arithmetic stay honest, is caught at p=1 at the
    attack's first step: each tampered unit starts from other gradients than the stage's gradient
    trace committed to before it (nothing, before the step's first unit). The trace binds stage 0
    through its backward receipts and every other stage through its update receipt. (``restart``:
    the fallback ``skip_stage`` would freeze stage 1's update, whose gradients then go nowhere.)"""
    summary = _attacked(tmp_path, "grad_drift", stage, microbatches=2, response="restart")
    first = _first(summary)
    assert (first["step"], first["worker"], first["stage"], first["unit_kind"], first["check"]) == (
        1,
        f"s{stage}r0",
        stage,
        "backward",
        "fetch_mismatch",
    )
    assert "gradient trace" in first["message"]
    step1 = {(d["microbatch"], d["unit_kind"], d["check"]) for d in summary["detections"] if d["step"] == 1}
    assert {(0, "backward", "fetch_mismatch"), (1, "backward", "fetch_mismatch")} <= step1
    assert all(d["worker"] == f"s{stage}r0" for d in summary["detections"])
    _check_signature(summary, first)


@pytest.mark.parametrize("rate", [1.0, 1e-9])
def test_weights_swapped_between_steps_are_caught_by_the_weights_chain(tmp_path: Path, rate: float) -> None:
    """A stage that changes its weights between steps (a backdoored model loaded into the
    worker) and computes honestly with them is caught when its commitment arrives: its receipts
    name other weights than its last update receipt committed to. Re-executing its units with the
    weights they name would pass, so this needs no sampling and holds at a rate that samples
    nothing too."""
    summary = _attacked(tmp_path, "swap_weights", 2, spot_check_rate=rate)
    first = _first(summary)
    assert (first["step"], first["worker"], first["microbatch"], first["unit_kind"], first["check"]) == (
        1,
        "s2r0",
        0,
        "forward",
        "weights",
    )
    assert all(d["worker"] == "s2r0" for d in summary["detections"])
    _check_signature(summary, first)


def test_poisoned_data_is_caught(tmp_path: Path) -> None:
    """Stage 0 computing on other token ids than the step's data is caught against the regenerated data."""
    first = _first(_attacked(tmp_path, "poison_data", 0))
    assert (first["step"], first["worker"], first["check"]) == (1, "s0r0", "data")


def test_equivocation_blames_the_equivocator(tmp_path: Path) -> None:
    """An equivocating stage (honest receipt, negated tensor sent) is blamed by its own signed header,
    not its neighbour; re-executing its units passes."""
    summary = _attacked(tmp_path, "equivocate", 1, "backward")
    assert {(d["worker"], d["check"]) for d in summary["detections"]} == {("s1r0", "header")}
    assert _first(summary)["step"] == 1 and _first(summary)["unit_kind"] == "backward"


@pytest.mark.slow
def test_no_false_alarm_over_fifty_clean_steps(tmp_path: Path) -> None:
    """Spot checks at p=1 over 50 honest steps find nothing and every unit is checked."""
    config = tiny_config(microbatches=1, steps=50, verification="spot_check", spot_check_rate=1.0)
    result = launch_local(config, tmp_path / "run")
    s = result.summary
    assert s["detections"] == [] and s["status"] == "completed"
    assert s["spot_check"]["units_checked"] == s["spot_check"]["units_sampled"] == 50 * (2 * 2 + 2)
    assert audit_run_dir(result.run_dir).clean


def test_clean_spot_checked_run_matches_reference_and_records_timing(tmp_path: Path) -> None:
    """A spot-checked honest run (p=1) has no detection, trains bitwise like the reference, audits
    clean, commits to each step's secret before the step, and records per-stage busy time."""
    config = tiny_config(verification="spot_check", spot_check_rate=1.0)
    result = launch_local(config, tmp_path / "run")
    s = result.summary
    assert s["detections"] == [] and s["losses"] == reference(config)[0]
    assert s["spot_check"]["units_checked"] == 2 * (2 * 2 * 2 + 2)
    assert len(s["stage_busy_seconds"]) == 2 and all(0 < b < s["wall_seconds"] for b in s["stage_busy_seconds"])
    assert audit_run_dir(result.run_dir).clean
    kinds = [(e["event"], e.get("step")) for e in _events(result.run_dir)]
    for step in (0, 1):
        assert kinds.index(("spot_check_commitment", step)) < kinds.index(("spot_check_reveal", step))
        assert kinds.index(("spot_check_reveal", step)) < kinds.index(("step", step))
    # the randomness is derived from every receipt of the step, the update receipts (and the
    # gradient traces they commit to) included: all were committed before the reveal
    records = scan_log((result.run_dir / LOG_FILE).read_bytes()).records
    receipts = [parse_receipt(r.payload) for r in records if r.type is RecordType.RECEIPT]
    reveals = {e["step"]: e for e in _events(result.run_dir) if e["event"] == "spot_check_reveal"}
    for step in (0, 1):
        of_step = [r for r in receipts if r.step == step]
        assert sum(r.kind is UnitKind.UPDATE for r in of_step) == 2
        digest = receipts_digest(receipt_digest(r) for r in of_step)
        assert reveals[step]["receipts_digest"] == digest.hex()


def test_restart_recomputes_the_step_and_training_continues(tmp_path: Path) -> None:
    """With restart, a detected step is recomputed from the state before it; an attack that does
    not fire again on the recomputation leaves the run completing with the reference's losses."""
    plan = fires_once(1, 1, quiet_steps=(2,))
    config = tiny_config(
        stages=3,
        microbatches=1,
        steps=3,
        attack=plan,
        verification="spot_check",
        spot_check_rate=1.0,
        response="restart",
    )
    result = launch_local(config, tmp_path / "run")
    s = result.summary
    assert s["status"] == "completed" and len(s["detections"]) == 1
    assert [r["plan"]["response"] for r in s["responses"]] == ["restart"]
    assert s["responses"][0]["detection"] == s["detections"][0]
    honest = tiny_config(stages=3, microbatches=1, steps=3)
    assert s["losses"] == reference(honest)[0]
    assert s["final_weights"]["stages"] == reference(honest)[1]
    # the recomputed step's two attempts are told apart: no honest worker is accused by the audit
    assert audit_run_dir(result.run_dir).errors == ()


def _restart_plan(stage: int, steps: int, max_recomputations: int) -> AttackPlan:
    """A per-step ``reverse`` plan at rate 0.5 whose draws fire on some step at least twice in a
    row and never more than ``max_recomputations`` times in a row."""

    def plan(seed: int) -> AttackPlan:
        return AttackPlan.from_cli("reverse", str(stage), 0.5, seed=seed, per="step")

    def firings(p: AttackPlan, step: int) -> int:
        return next(a for a in range(100) if not p.active(stage, step, 0, a))

    return next(
        p
        for p in map(plan, range(1000))
        if max(firings(p, t) for t in range(steps)) == 2
        and all(firings(p, t) <= max_recomputations for t in range(steps))
    )


def test_restart_against_a_per_step_attacker_retries_until_a_clean_computation(tmp_path: Path) -> None:
    """The paper's baseline: with restart, a step is recomputed until the attacker's per-step draw
    does not fire; each failed computation is one response, and the run ends with the honest
    reference's losses and weights. With too few recomputations allowed it stops, saying so."""
    steps = 3
    plan = _restart_plan(1, steps, max_recomputations=4)
    settings: dict[str, Any] = dict(
        stages=3, microbatches=2, steps=steps, attack=plan.to_json(), verification="spot_check", spot_check_rate=1.0
    )
    result = launch_local(tiny_config(**settings, response="restart", max_recomputations=4), tmp_path / "run")
    s = result.summary
    fired = [next(a for a in range(100) if not plan.active(1, t, 0, a)) for t in range(steps)]
    assert s["status"] == "completed"
    assert [r["plan"]["response"] for r in s["responses"]] == ["restart"] * sum(fired)
    honest = tiny_config(stages=3, microbatches=2, steps=steps)
    assert s["losses"] == reference(honest)[0]
    assert s["final_weights"]["stages"] == reference(honest)[1]
    assert audit_run_dir(result.run_dir).errors == ()

    stopped = launch_local(tiny_config(**settings, response="restart", max_recomputations=1), tmp_path / "short")
    twice = fired.index(2)
    assert stopped.summary["status"] == "stopped" and len(stopped.summary["losses"]) == twice
    assert f"no honest path through step {twice}" in stopped.summary["stop_reason"]
    assert "in each of its 2 computations" in stopped.summary["stop_reason"]


def test_bad_attack_plans_are_config_errors() -> None:
    """Attacks the engine cannot mount are refused with a message saying why."""
    with pytest.raises(ConfigError, match="sends no activation"):
        tiny_config(attack=AttackPlan.from_cli("reverse", "1").to_json())
    with pytest.raises(ConfigError, match="do not exist"):
        tiny_config(attack=AttackPlan.from_cli("reverse", "5").to_json())
    with pytest.raises(ConfigError, match="receipts"):
        tiny_config(verification="spot_check", receipts=False)


def test_skip_stage_recomputes_with_the_stage_as_identity_and_freezes_it(tmp_path: Path) -> None:
    """With skip_stage, the detected step is recomputed with stage 1 passing tensors on unchanged
    (checked for every unit) and not updated: its weights stay those before the step; loss stays finite."""
    plan = fires_once(1, 1)
    config = tiny_config(
        stages=3,
        microbatches=1,
        steps=2,
        attack=plan,
        verification="spot_check",
        spot_check_rate=1.0,
        response="skip_stage",
    )
    result = launch_local(config, tmp_path / "run")
    s = result.summary
    assert s["status"] == "completed" and len(s["detections"]) == 1
    assert [(r["plan"]["response"], r["plan"]["bypass_stage"]) for r in s["responses"]] == [("skip_stage", 1)]
    assert audit_run_dir(result.run_dir).errors == ()
    after_step0 = reference(tiny_config(stages=3, microbatches=1, steps=1))[1]
    assert s["final_weights"]["stages"][1] == after_step0[1]
    assert s["final_weights"]["stages"][0] != after_step0[0]
    assert all(loss == loss and abs(loss) < 100 for loss in s["losses"])


def test_eject_hands_the_stage_to_the_standby_and_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    """With eject and a standby, the convict is released, the standby takes its stage from the last
    verified checkpoint (of the detected step) and the run completes; the audit is clean."""
    plan = AttackPlan.from_cli("reverse", "1", 1.0, 1).to_json()
    config = tiny_config(
        stages=3,
        microbatches=1,
        steps=2,
        standby=1,
        attack=plan,
        verification="spot_check",
        spot_check_rate=1.0,
        response="eject",
    )
    result = launch_local(config, tmp_path / "run")
    s = result.summary
    assert s["status"] == "completed" and s["steps_completed"] == 2
    assert [(d["worker"], d["step"]) for d in s["detections"]] == [("s1r0", 1)]
    assert [(r["plan"]["response"], r["plan"]["standby"], r["plan"]["checkpoint_step"]) for r in s["responses"]] == [
        ("eject", "standby0", 1)
    ]
    assert s["replacements"] == [{"worker": "s1r0", "by": "standby0", "stage": 1, "from_step": 1}]
    assert s["checkpoints"] == [0, 1]
    events = _events(result.run_dir)
    restored = next(e for e in events if e["event"] == "restored_checkpoint")
    checkpoint_1 = next(e for e in events if e["event"] == "checkpoint" and e["step"] == 1)
    assert restored["weights"] == checkpoint_1["weights"]
    # The honest pipeline from the checkpoint: the standby's stage trains exactly as the reference.
    losses, weights, update_outputs = reference_with_updates(tiny_config(stages=3, microbatches=1, steps=2))
    assert s["losses"] == losses and s["final_weights"]["stages"] == weights
    assert all(loss == loss and abs(loss) < 100 for loss in s["losses"])
    # Stage 1's final weights and optimizer state are the output of the last update receipt in the
    # standby's chain, and they are the honest ones.
    records = scan_log((result.run_dir / LOG_FILE).read_bytes()).records
    receipts = [parse_receipt(r.payload) for r in records if r.type is RecordType.RECEIPT]
    updates = [r for r in receipts if r.stage == 1 and r.kind is UnitKind.UPDATE]
    # the sampled units are checked after the update, so the convict's update of step 1 is
    # logged before the check that convicts it; the standby recomputes step 1 from the checkpoint
    assert [(r.worker_id, r.step) for r in updates] == [("s1r0", 0), ("s1r0", 1), ("standby0", 1)]
    assert updates[-1].output_digest.hex() == update_outputs[1]
    report = audit_run_dir(result.run_dir)
    assert report.clean, [f.message for f in report.findings]


def test_rollback_audits_the_convict_and_resumes_from_the_checkpoint_with_the_standby(tmp_path: Path) -> None:
    """With rollback and a standby, the convict's receipts are audited, every stage returns to the
    verified checkpoint of the detected step, the standby takes the convict's stage and the run
    completes; the audit is clean."""
    plan = AttackPlan.from_cli("reverse", "1", 1.0, 1).to_json()
    config = tiny_config(
        stages=3,
        microbatches=1,
        steps=3,
        standby=1,
        attack=plan,
        verification="spot_check",
        spot_check_rate=1.0,
        response="rollback",
    )
    result = launch_local(config, tmp_path / "run")
    s = result.summary
    assert s["status"] == "completed" and s["steps_completed"] == 3
    assert [(d["worker"], d["step"]) for d in s["detections"]] == [("s1r0", 1)]
    [response] = s["responses"]
    assert response["plan"]["response"] == "rollback" and response["plan"]["checkpoint_step"] == 1
    assert response["plan"]["standby"] == "standby0" and response["plan"]["fallback_from"] is None
    # The convict's receipts since the checkpoint are listed and audited; none shows an earlier tamper.
    audit = response["audit"]
    assert audit["findings"] == [] and audit["first_tampered_step"] == 1 and audit["replanned_from"] is None
    # the update of step 1 was applied (and its receipt logged) before the check of step 1 failed
    assert {(r["step"], r["unit_kind"]) for r in audit["window"]} == {(1, "forward"), (1, "backward"), (1, "update")}
    assert audit["receipts_checked"] == 6  # step 0: forward, backward, update; step 1: the same
    assert [a["step"] for a in response["plan"]["audit"]] == [0, 0, 0]
    assert s["replacements"] == [{"worker": "s1r0", "by": "standby0", "stage": 1, "from_step": 1}]
    assert s["checkpoints"] == [0, 1, 2]
    events = _events(result.run_dir)
    names = [e["event"] for e in events]
    at = names.index("restored_checkpoint")
    assert names.index("response") < at and "detection" in names[:at]
    checkpoint_1 = next(e for e in events if e["event"] == "checkpoint" and e["step"] == 1)
    # Right after the rollback every stage holds the checkpoint's weights.
    assert events[at]["step"] == 1 and events[at]["weights"] == checkpoint_1["weights"]
    honest = reference(tiny_config(stages=3, microbatches=1, steps=3))
    assert s["losses"] == honest[0] and s["final_weights"]["stages"] == honest[1]
    report = audit_run_dir(result.run_dir)
    assert not report.errors, [f.message for f in report.errors]
