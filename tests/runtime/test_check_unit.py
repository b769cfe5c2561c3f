"""Coordinator checks against what a stage committed before, without re-executing anything (a
coordinator without a run: receipts and tensors made here)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
import torch
from coordinator_parts import Parts
from distributed_helpers import activation_header, tiny_config
from nacl.signing import SigningKey

from stagewarden.attest.headers import SignedHeader, encode_header, sign_header
from stagewarden.attest.receipts import ExecutionEnv, Receipt, UnitKind, chain_genesis, encode_receipt, sign_receipt
from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.attest.tensor_digest import (
    digest_state_dict,
    digest_tensor,
    gradient_trace_digest,
    gradients_digest,
    last_forward_output_digest,
    tensor_digest,
    update_input_digest,
    update_output_digest,
)
from stagewarden.runtime.coordinator import FetchedUnit, StepCommit
from stagewarden.runtime.model import build_stage
from stagewarden.runtime.protocol import Commit, UpdateCommitment
from stagewarden.runtime.spotcheck import reexecute_forward_outputs
from stagewarden.runtime.transport import TransportError
from stagewarden.runtime.units import loss_digest

ENV = ExecutionEnv(torch_version=torch.__version__, device="cpu", dtype="float32")


def _receipt(kind: UnitKind, inp: torch.Tensor | bytes, weights: bytes, **changes: Any) -> Receipt:
    fields: dict[str, Any] = dict(
        run_id="run",
        worker_id="s1r0",
        stage=1,
        replica=0,
        step=0,
        micro_batch=1,
        kind=kind,
        input_digest=inp if isinstance(inp, bytes) else digest_tensor(inp),
        output_digest=bytes(32),
        weights_digest=weights,
        env=ENV,
        signed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        prev_digest=chain_genesis("run", "s1r0"),
    )
    fields.update(changes)
    return sign_receipt(Receipt(**fields), SigningKey(bytes(32)))


def _coordinator() -> Parts:
    """The collaborators alone: no run directory, no workers."""
    config = tiny_config(stages=3, microbatches=2, verification="spot_check", spot_check_rate=1.0)
    return Parts(config, transport=None, signing_key=SigningKey(bytes(32)))


def test_a_backward_unit_must_rerun_its_forward_on_the_committed_input() -> None:
    """A middle stage's backward unit re-executes its forward, on the activation the worker
    returns: that activation must be the input its forward receipt commits to, or a worker could
    compute the backward on another activation (steering the gradients it sends and adds) and
    return that one to the check. The control passes this check and stops at the next one."""
    weights = {"w": torch.ones(3)}
    x, other = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    grad_output = torch.randn(2, 4, 8)
    forward = _receipt(UnitKind.FORWARD, x, digest_state_dict(weights))
    backward = _receipt(UnitKind.BACKWARD, grad_output, digest_state_dict(weights))
    commit = StepCommit(0, {1: [forward, backward]}, {}, 0.0, [])
    coordinator = _coordinator()
    # the trace says the unit started from gradients the worker does not return
    coordinator.ledger.traces[0] = {1: [gradients_digest([torch.zeros(3)]), gradients_digest([torch.ones(3)])]}

    def check(activation: torch.Tensor) -> list[SignedDetection]:
        unit = FetchedUnit(1, 0, 1, "backward", {"input": activation, "grad_output": grad_output}, weights)
        return coordinator.reexec.check_unit(commit, 1, 1, "backward", unit)

    [found] = check(other)
    assert (found.check, found.stage, found.unit_kind) == ("fetch_mismatch", 1, "backward")
    assert "forward receipt" in found.message
    [control] = check(x)  # the right activation; the gradients before the unit are missing
    assert control.check == "fetch_mismatch" and "gradient trace" in control.message


def test_an_update_must_start_from_the_weights_the_stage_was_left_with() -> None:
    """An update receipt that starts from other weights than the stage's last update left (weights
    swapped after the step's units, right before the update, so that every unit and the update
    itself re-execute honestly) is a detection on the update when it arrives."""
    left, swapped = digest_state_dict({"w": torch.ones(3)}), digest_state_dict({"w": torch.zeros(3)})
    trace = [gradients_digest([torch.full((3,), 1.0)]), gradients_digest([torch.full((3,), 2.0)])]
    empty = digest_state_dict({})
    after, optimizer_after = digest_state_dict({"w": torch.full((3,), 0.5)}), bytes(range(32))

    def accept(weights_before: bytes) -> list[SignedDetection]:
        coordinator = _coordinator()
        coordinator.roster.slot_ids = ["s0r0", "s1r0", "s2r0"]
        coordinator.ledger.optimizer, coordinator.ledger.weights, coordinator.ledger.undo = (
            {1: empty.hex()},
            {1: left.hex()},
            {},
        )
        coordinator.ledger.last_updates = {}
        receipt = _receipt(
            UnitKind.UPDATE,
            update_input_digest(gradient_trace_digest(trace), empty),
            weights_before,
            micro_batch=0,
            output_digest=update_output_digest(after, optimizer_after),
        )
        commit = StepCommit(0, {1: []}, {}, 0.0, [])
        reported = UpdateCommitment(encode_receipt(receipt), empty, optimizer_after, tuple(trace))
        found = coordinator.checks.accept_update(1, 0, receipt, after, reported, commit)
        assert coordinator.ledger.weights[1] == after.hex()  # the next step must run with the update's output
        return found

    [found] = accept(swapped)
    assert (found.check, found.stage, found.unit_kind) == ("weights", 1, "update")
    assert accept(left) == []


def _last_stage_forward(coordinator: Parts, loss_scale: float) -> tuple[FetchedUnit, Receipt, bytes, float]:
    """Stage 2 (the last of 3)'s honest forward unit of micro-batch 1: the unit, a receipt
    committing to its logits and its loss times ``loss_scale``, the logits digest and that loss."""
    c = coordinator.ctx.config
    weights = build_stage(c.model, c.stages, 2, c.seed).state_dict()
    x = torch.randn(c.batch_size, c.model.block_size, c.model.n_embd, generator=torch.Generator().manual_seed(1))
    y = coordinator.reexec.data(0, 1)[1]
    out = reexecute_forward_outputs(c.model, c.stages, 2, weights, x, y, microbatches=c.microbatches)
    logits, loss = digest_tensor(out["output"]), float(out["loss"]) * loss_scale
    receipt = _receipt(
        UnitKind.FORWARD,
        x,
        digest_state_dict(weights),
        worker_id="s2r0",
        stage=2,
        output_digest=last_forward_output_digest(logits, loss_digest(loss)),
        prev_digest=chain_genesis("run", "s2r0"),
    )
    unit = FetchedUnit(2, 0, 1, "forward", {"input": x, "targets": y}, weights)
    return unit, receipt, logits, loss


def _spot_checking_coordinator() -> Parts:
    coordinator = _coordinator()
    return coordinator


def test_the_last_stage_forward_check_re_executes_the_loss() -> None:
    """A last stage's forward receipt commits to the logits and the loss: a unit whose receipt
    names the loss the stage computed passes; one that signed another loss with the right
    logits (a stage hiding a diverging or poisoned run behind its reported loss) fails."""
    coordinator = _spot_checking_coordinator()
    for scale, outcome in ((1.0, []), (0.5, ["spot_check"])):
        unit, receipt, _, _ = _last_stage_forward(coordinator, scale)
        commit = StepCommit(0, {2: [receipt]}, {}, 0.0, [])
        assert [d.check for d in coordinator.reexec.check_unit(commit, 2, 1, "forward", unit)] == outcome


def test_a_reported_loss_must_be_the_one_the_receipt_commits_to() -> None:
    """The coordinator takes a step's loss only from losses the last stage's forward receipts
    sign: a commitment reporting another loss than its receipt is refused, naming the worker."""
    coordinator = _spot_checking_coordinator()
    coordinator.ctx.config = tiny_config(stages=3, microbatches=2)
    _, receipt, logits, loss = _last_stage_forward(coordinator, 1.0)
    message = Commit(0, (), (), 0, microbatch_losses=(0.0, loss), logits=(bytes(32), logits))
    assert coordinator.commitments.reported_losses("s2r0", message, [receipt]) == [0.0, loss]
    tampered = dataclasses.replace(message, microbatch_losses=(0.0, loss + 1.0))
    with pytest.raises(TransportError, match="s2r0 reported another loss of micro-batch 1"):
        coordinator.commitments.reported_losses("s2r0", tampered, [receipt])
    with pytest.raises(TransportError, match="logits digest of each micro-batch"):
        coordinator.commitments.reported_losses("s2r0", dataclasses.replace(message, logits=None), [receipt])


def test_a_committed_header_must_be_genuine_and_of_this_transfer() -> None:
    """The link checks convict a header's sender of equivocation on the header's word, so the
    coordinator takes a header a receiver commits to only if the sender's attested key signed
    it, for this run and step and for that receiver; anything else is the receiver's fault
    (it checked the header when it arrived). Without the check a receiver could forge a header
    in an honest sender's name and have it convicted."""
    keys = {wid: SigningKey(bytes([i + 1]) * 32) for i, wid in enumerate(("s0r0", "s1r0", "s2r0"))}
    coordinator = _coordinator()
    coordinator.ctx.run_id, coordinator.roster.slot_ids, coordinator.roster.slot_ranks = "run", list(keys), [1, 2, 3]
    coordinator.roster.keys = {wid: bytes(k.verify_key) for wid, k in keys.items()}
    genuine = activation_header("run", tensor=tensor_digest(torch.ones(2, 3)))

    def accept(key: SigningKey, **changes: Any) -> SignedHeader:
        raw = encode_header(sign_header(dataclasses.replace(genuine, **changes), key))
        return coordinator.commitments.accept_header("s1r0", 1, 0, raw, {})

    assert accept(keys["s0r0"]).tensor == genuine.tensor
    for key, changes, why in (
        (keys["s1r0"], {}, "not genuine"),  # the receiver signs in the sender's name
        (keys["s1r0"], {"sender": "s1r0"}, "not the worker of stage 0"),
        (keys["s1r0"], {"receiver_stage": 2, "sender_stage": 1, "sender": "s1r0"}, "another transfer"),
        (keys["s0r0"], {"step": 1}, "another transfer"),
        (keys["s0r0"], {"run_id": "other"}, "another transfer"),
    ):
        with pytest.raises(TransportError, match=why):
            accept(key, **changes)
