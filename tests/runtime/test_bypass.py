"""The paper's skip_stage recovery: a recomputation routes the flagged stage's input from the stage
before it straight to the stage after it, under signed headers naming that adjacency, which the
coordinator and the offline audit accept only for a computation the run declares bypassed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from coordinator_parts import Parts
from distributed_helpers import activation_header, reference, tiny_config
from nacl.signing import SigningKey

from stagewarden.attest.audit import audit_run_dir, declared_bypasses, route_neighbour
from stagewarden.attest.headers import TransferKind, encode_header, parse_header, sign_header
from stagewarden.attest.receipt_log import RecordType, scan_log
from stagewarden.attest.receipts import UnitKind, parse_receipt
from stagewarden.attest.rundir import LOG_FILE
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.coordinator.commitments import Commitments
from stagewarden.runtime.launch import launch_local
from stagewarden.runtime.route import Route
from stagewarden.runtime.transport import TransportError


def test_route_skips_the_bypassed_stage_both_ways() -> None:
    """With stage 2 of 5 bypassed, stage 1 sends activations to 3 and receives its gradients; 1 has
    no working checker (2) and 2 is not checked; the others keep theirs."""
    route = Route(5, 2)
    assert route.active_stages == [0, 1, 3, 4]
    assert route.neighbour(1, TransferKind.ACTIVATION, incoming=False) == 3
    assert route.neighbour(3, TransferKind.ACTIVATION, incoming=True) == 1
    assert route.neighbour(3, TransferKind.GRADIENT, incoming=False) == 1
    assert route.neighbour(1, TransferKind.GRADIENT, incoming=True) == 3
    assert [s for s in range(5) if route.checked(s)] == [0, 3]
    assert [s for s in range(5) if Route(5).checked(s)] == [0, 1, 2, 3]
    for stage in (0, 4, 7):
        with pytest.raises(ValueError, match="only a middle stage"):
            Route(5, stage)


def _accepting(bypass: int | None) -> Commitments:
    """The commitments of a run without a directory that can take stage 2's committed headers of step 0."""
    parts = Parts(tiny_config(stages=3), transport=None, run_id="r", bypass=bypass)
    parts.roster.keys = {wid: bytes(_KEYS[wid].verify_key) for wid in parts.roster.slot_ids}
    return parts.commitments


_KEYS = {wid: SigningKey(bytes([i + 7]) * 32) for i, wid in enumerate(["s0r0", "s1r0", "s2r0"])}


def test_coordinator_accepts_a_skipping_header_only_in_a_bypassed_computation() -> None:
    """A header genuinely signed by stage 0 for stage 2 is stage 2's input only when stage 1 is
    bypassed; in any other computation committing it is a protocol violation by stage 2."""
    raw = encode_header(sign_header(activation_header(receiver_stage=2), _KEYS["s0r0"]))
    accepted = _accepting(bypass=1).accept_header("s2r0", 2, 0, raw, {})
    assert (accepted.sender_stage, accepted.receiver_stage) == (0, 2)
    with pytest.raises(TransportError, match="does not send to stage 2") as caught:
        _accepting(bypass=None).accept_header("s2r0", 2, 0, raw, {})
    assert caught.value.peer == 3
    adjacent = encode_header(sign_header(activation_header(receiver_stage=1), _KEYS["s0r0"]))
    with pytest.raises(TransportError, match="another transfer"):
        _accepting(bypass=1).accept_header("s2r0", 2, 0, adjacent, {})


def test_a_header_cannot_name_a_receiver_further_than_one_skipped_stage() -> None:
    """The encoding allows one skipped stage at most, in the transfer's own direction."""
    for receiver in (3, 0):
        with pytest.raises(ValueError, match="must go to stage 1"):
            encode_header(sign_header(activation_header(receiver_stage=receiver), _KEYS["s0r0"]))
    assert parse_header(encode_header(sign_header(activation_header(receiver_stage=2), _KEYS["s0r0"])))


def test_declared_bypasses_follow_the_computations_of_each_step() -> None:
    """A skip_stage response bypasses the next computation of its step; a rollback's bypass is the
    next computation of the checkpoint's step; a restart bypasses nothing."""
    responses = [
        {"step": 4, "attempt": 0, "plan": {"redo_from_step": 4, "bypass_stage": 1}},
        {"step": 4, "attempt": 1, "plan": {"redo_from_step": 4, "bypass_stage": None}},
        {"step": 9, "attempt": 0, "plan": {"redo_from_step": 6, "bypass_stage": 2}},
    ]
    assert declared_bypasses(responses) == {(4, 1): 1, (6, 1): 2}
    assert route_neighbour(0, TransferKind.ACTIVATION, 1) == 2
    assert route_neighbour(2, TransferKind.GRADIENT, 1) == 0
    assert route_neighbour(2, TransferKind.GRADIENT, None) == 1


def _log(run: Path) -> tuple[list[Any], list[Any]]:
    records = scan_log((run / LOG_FILE).read_bytes()).records
    receipts = [parse_receipt(r.payload) for r in records if r.type is RecordType.RECEIPT]
    headers = [parse_header(r.payload) for r in records if r.type is RecordType.HEADER]
    return receipts, headers


def _audit_errors(run: Path) -> list[str]:
    return [f"{f.code}: {f.message}" for f in audit_run_dir(run).errors]


def test_skip_stage_routes_around_the_attacker_at_every_step_it_tampers(tmp_path: Path) -> None:
    """Stage 1 of 4 negates its activations at every step from step 1, under the paper's defence.
    Each detected step is recomputed with stage 0 sending straight to stage 2: the attacker signs
    and relays nothing in that computation, its update is frozen, the next step uses it again (and
    catches it again), the run completes with stage 1's weights those after step 0, and the audit
    accepts the bypass; moving the declared bypass to another stage, or deleting it, is rejected."""
    plan = AttackPlan.from_cli("reverse", "1", 1.0, 1).to_json()
    config = tiny_config(
        stages=4, steps=3, attack=plan, verification="redundant_neighbour", response="skip_stage", checkpoint_every=0
    )
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert summary["status"] == "completed" and summary["steps_completed"] == 3
    assert {d["worker"] for d in summary["detections"]} == {"s1r0"}
    plans = [(r["step"], r["plan"]["response"], r["plan"]["bypass_stage"]) for r in summary["responses"]]
    assert plans == [(1, "skip_stage", 1), (2, "skip_stage", 1)]
    receipts, headers = _log(run)
    for step in (1, 2):  # the attacker computed each step once: the bypassed computation is not its
        attacker = [r for r in receipts if r.worker_id == "s1r0" and r.step == step and r.kind is UnitKind.FORWARD]
        assert len(attacker) == config.microbatches
        sent = [h for h in headers if h.sender == "s1r0" and h.step == step]
        assert len(sent) == 2 * config.microbatches  # attempt 0's activations and gradients only
        skipping = {(h.sender_stage, h.receiver_stage, h.kind) for h in headers if h.step == step}
        assert {(0, 2, TransferKind.ACTIVATION), (2, 0, TransferKind.GRADIENT)} <= skipping
        assert not any(r.worker_id == "s1r0" and r.step == step and r.kind is UnitKind.UPDATE for r in receipts)
    assert not any(abs(h.receiver_stage - h.sender_stage) == 2 for h in headers if h.step == 0)
    assert summary["final_weights"]["stages"][1] == reference(tiny_config(stages=4, steps=1))[1][1]
    assert all(loss == loss and abs(loss) < 100 for loss in summary["losses"])
    assert _audit_errors(run) == []

    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    data = json.loads((moved / "summary.json").read_text())
    for response in data["responses"]:
        response["plan"]["bypass_stage"] = 2
    (moved / "summary.json").write_text(json.dumps(data))
    assert any("LINK_MISMATCH" in e and "does not send to" in e for e in _audit_errors(moved))

    undeclared = tmp_path / "undeclared"
    shutil.copytree(run, undeclared)
    data = json.loads((undeclared / "summary.json").read_text())
    for response in data["responses"]:
        response["plan"]["bypass_stage"] = None
    (undeclared / "summary.json").write_text(json.dumps(data))
    errors = _audit_errors(undeclared)
    assert any("LINK_MISMATCH" in e and "header to stage 2" in e for e in errors), errors


def test_rollback_without_a_standby_bypasses_the_convict_and_completes(tmp_path: Path) -> None:
    """rollback with no standby: each detected step goes back to its checkpoint and is recomputed
    around the attacker; the receipt audit of the convict does not take the computation that was
    answered for an earlier tampered step, so the run completes and audits clean."""
    plan = AttackPlan.from_cli("reverse", "1", 1.0, 1).to_json()
    config = tiny_config(stages=4, steps=3, attack=plan, verification="redundant_neighbour", response="rollback")
    run = tmp_path / "run"
    summary = launch_local(config, run).summary
    assert summary["status"] == "completed" and summary["steps_completed"] == 3
    plans = [(r["step"], r["plan"]["checkpoint_step"], r["plan"]["bypass_stage"]) for r in summary["responses"]]
    assert plans == [(1, 1, 1), (2, 2, 1)]
    assert all(r["audit"]["first_tampered_step"] == r["step"] for r in summary["responses"])
    assert _audit_errors(run) == []
