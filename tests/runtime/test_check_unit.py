"""The coordinator's check of one pushed backward unit against what the stage committed, before
anything is re-executed (a coordinator without a run: receipts and tensors made here)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import torch
from distributed_helpers import tiny_config
from nacl.signing import SigningKey
from stagewarden.attest.receipts import ExecutionEnv, Receipt, UnitKind, chain_genesis, sign_receipt
from stagewarden.attest.tensor_digest import digest_state_dict, digest_tensor, gradients_digest
from stagewarden.runtime.coordinator import Coordinator, FetchedUnit, StepCommit

ENV = ExecutionEnv(torch_version=torch.__version__, device="cpu", dtype="float32")


def _receipt(kind: UnitKind, inp: torch.Tensor, weights: bytes) -> Receipt:
    fields: dict[str, Any] = dict(
        run_id="run",
        worker_id="s1r0",
        stage=1,
        replica=0,
        step=0,
        micro_batch=1,
        kind=kind,
        input_digest=digest_tensor(inp),
        output_digest=bytes(32),
        weights_digest=weights,
        env=ENV,
        signed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        prev_digest=chain_genesis("run", "s1r0"),
    )
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
