"""Coordinator checks against what a stage committed before, without re-executing anything (a
coordinator without a run: receipts and tensors made here)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import torch
from distributed_helpers import tiny_config
from nacl.signing import SigningKey
from stagewarden.attest.receipts import ExecutionEnv, Receipt, UnitKind, chain_genesis, sign_receipt
from stagewarden.attest.tensor_digest import (
    digest_state_dict,
    digest_tensor,
    gradient_trace_digest,
    gradients_digest,
    update_input_digest,
    update_output_digest,
)
from stagewarden.runtime.coordinator import Coordinator, FetchedUnit, StepCommit

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


def _coordinator() -> Coordinator:
    coordinator = Coordinator.__new__(Coordinator)  # the check alone: no run directory, no workers
    coordinator.config = tiny_config(stages=3, microbatches=2, verification="spot_check", spot_check_rate=1.0)
    coordinator._traces = {}
    coordinator.detection = lambda step, mb, kind, stage, check, message, evidence: {  # type: ignore[method-assign]
        "step": step,
        "microbatch": mb,
        "unit_kind": kind,
        "stage": stage,
        "check": check,
        "message": message,
    }
    return coordinator


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
    coordinator._traces[(1, 0)] = [gradients_digest([torch.zeros(3)]), gradients_digest([torch.ones(3)])]

    def check(activation: torch.Tensor) -> list[dict[str, Any]]:
        unit = FetchedUnit(1, 0, 1, "backward", {"input": activation, "grad_output": grad_output}, weights)
        return coordinator.check_unit(commit, 1, 1, "backward", unit)

    [found] = check(other)
    assert (found["check"], found["stage"], found["unit_kind"]) == ("fetch_mismatch", 1, "backward")
    assert "forward receipt" in found["message"]
    [control] = check(x)  # the right activation; the gradients before the unit are missing
    assert control["check"] == "fetch_mismatch" and "gradient trace" in control["message"]


def test_an_update_must_start_from_the_weights_the_stage_was_left_with() -> None:
    """An update receipt that starts from other weights than the stage's last update left (weights
    swapped after the step's units, right before the update, so that every unit and the update
    itself re-execute honestly) is a detection on the update when it arrives."""
    left, swapped = digest_state_dict({"w": torch.ones(3)}), digest_state_dict({"w": torch.zeros(3)})
    trace = [gradients_digest([torch.full((3,), 1.0)]), gradients_digest([torch.full((3,), 2.0)])]
    empty = digest_state_dict({})
    after, optimizer_after = digest_state_dict({"w": torch.full((3,), 0.5)}), bytes(range(32))
    message = {
        "grads_trace": [t.hex() for t in trace],
        "optimizer_before": empty.hex(),
        "optimizer": optimizer_after.hex(),
    }

    def accept(weights_before: bytes) -> list[dict[str, Any]]:
        coordinator = _coordinator()
        coordinator.stage_ids = ["s0r0", "s1r0", "s2r0"]
        coordinator._optimizer, coordinator._weights, coordinator._undo = {1: empty.hex()}, {1: left.hex()}, {}
        coordinator._last_updates = {}
        receipt = _receipt(
            UnitKind.UPDATE,
            update_input_digest(gradient_trace_digest(trace), empty),
            weights_before,
            micro_batch=0,
            output_digest=update_output_digest(after, optimizer_after),
        )
        commit = StepCommit(0, {1: []}, {}, 0.0, [])
        found = coordinator._accept_update(1, 0, receipt, after, message, commit)
        assert coordinator._weights[1] == after.hex()  # the next step must run with the update's output
        return found

    [found] = accept(swapped)
    assert (found["check"], found["stage"], found["unit_kind"]) == ("weights", 1, "update")
    assert accept(left) == []
