"""Responses as data: detections, response plans and their fallbacks, and training with a stage skipped."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stagewarden.runtime.model import GPTConfig, build_stages
from stagewarden.runtime.responses import (
    Detection,
    ReceiptRef,
    Response,
    ResponseError,
    RunState,
    can_skip,
    plan_response,
    train_step_skipping,
)
from stagewarden.runtime.units import TrainConfig, deterministic, make_optimizer

CONFIG = GPTConfig(vocab_size=256, block_size=16, n_layer=4, n_head=4, n_embd=32)
WORKERS = {0: "w0", 1: "w1", 2: "w2", 3: "w3"}


def _detection(stage: int = 1, step: int = 7) -> Detection:
    return Detection(step, 1, "forward", WORKERS[stage], stage, "spot_check", "ab" * 32)


def _state(standbys: tuple[str, ...] = ("s0",)) -> RunState:
    receipts = [ReceiptRef(WORKERS[s], s, t, m, "forward") for s in range(4) for t in range(8) for m in range(2)]
    return RunState(4, 7, WORKERS, standbys, checkpoints=(0, 3, 6), receipts=receipts)


def test_detection_round_trips_through_json() -> None:
    """A Detection serialises to JSON and back unchanged; a bad or unknown field is refused by name."""
    d = _detection()
    assert Detection.from_json(json.loads(json.dumps(d.to_json()))) == d
    with pytest.raises(ValueError, match="detection: step: Input should be a valid integer"):
        Detection.from_json({**d.to_json(), "step": "7"})
    with pytest.raises(ValueError, match="detection: signature: unknown field"):
        Detection.from_json({**d.to_json(), "signature": "00"})
    with pytest.raises(ValueError, match="Input should be 'forward', 'backward' or 'update'"):
        Detection(1, 0, "sideways", "w1", 1, "x", "")
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Detection(-1, 0, "forward", "w1", 1, "x", "")


def test_eject_hands_the_stage_to_a_standby_from_a_checkpoint() -> None:
    """eject plans the first standby into the convict's stage, restoring the latest checkpoint at or before the step."""
    plan = plan_response("eject", _detection(step=7), _state())
    assert plan.response is Response.EJECT and plan.standby == "s0" and plan.ejected == "w1"
    assert plan.checkpoint_step == 6 and plan.redo_from_step == 6 and plan.fallback_from is None
    json.dumps(plan.to_json())


def test_rollback_restores_before_the_first_tampered_step_and_lists_receipts_to_audit() -> None:
    """rollback restores the checkpoint at or before the first tampered step and audits the convict's older receipts."""
    plan = plan_response("rollback", _detection(step=7), _state(), first_tampered_step=5)
    assert plan.checkpoint_step == 3 and plan.redo_from_step == 3
    assert plan.audit and all(r.worker == "w1" and r.step < 3 for r in plan.audit)
    assert len(plan.audit) == 3 * 2 and plan.audit[0].step == 2
    again = plan_response("rollback", _detection(step=7), _state(), first_tampered_step=1)
    assert again.checkpoint_step == 0 and again.audit == ()


def test_skip_stage_bypasses_a_middle_stage_for_the_step() -> None:
    """skip_stage on a middle stage redoes the detected step with it bypassed and its update frozen."""
    plan = plan_response("skip_stage", _detection(stage=2), _state())
    assert plan.response is Response.SKIP_STAGE and plan.bypass_stage == 2 and plan.frozen_stages == (2,)
    assert plan.redo_from_step == 7 and plan.checkpoint_step is None


@pytest.mark.parametrize("stage", [0, 3])
def test_skip_stage_on_an_edge_stage_falls_back_to_restart(stage: int) -> None:
    """The embedding and head stages cannot be bypassed: skip_stage falls back to restart and says why."""
    plan = plan_response("skip_stage", _detection(stage=stage), _state())
    assert plan.response is Response.RESTART and plan.fallback_from is Response.SKIP_STAGE
    assert "cannot be bypassed" in plan.reason and plan.redo_from_step == 7


def test_eject_without_standby_falls_back() -> None:
    """eject with no standby falls back to skip_stage on a middle stage and to restart on an edge stage."""
    middle = plan_response("eject", _detection(stage=1), _state(standbys=()))
    assert middle.response is Response.SKIP_STAGE and middle.fallback_from is Response.EJECT
    edge = plan_response("eject", _detection(stage=0), _state(standbys=()))
    assert edge.response is Response.RESTART and edge.fallback_from is Response.EJECT
    assert "no standby" in edge.reason


def test_restart_redoes_the_step() -> None:
    """restart redoes the detected step without restoring a checkpoint."""
    plan = plan_response(Response.RESTART, _detection(), _state())
    assert plan.response is Response.RESTART and plan.redo_from_step == 7 and plan.checkpoint_step is None


def test_inconsistent_detections_are_refused() -> None:
    """A detection for a stage outside the pipeline, or a worker not serving its stage, raises ResponseError."""
    with pytest.raises(ResponseError, match="not in a pipeline of 4"):
        plan_response("restart", Detection(0, 0, "forward", "w9", 9, "x", ""), _state())
    with pytest.raises(ResponseError, match="does not serve stage 1"):
        plan_response("restart", Detection(0, 0, "forward", "w2", 1, "x", ""), _state())
    with pytest.raises(ValueError):
        plan_response("panic", _detection(), _state())


def test_only_middle_stages_can_be_skipped() -> None:
    """can_skip is true exactly for stages strictly between the first and the last."""
    assert [can_skip(s, 4) for s in range(4)] == [False, True, True, False]


def test_training_continues_with_a_stage_skipped() -> None:
    """Three steps with stage 1 bypassed give finite losses, the last below the first; stage 1's weights stay frozen."""
    with deterministic(1):
        stages = build_stages(CONFIG, 3, seed=0)
        opts = [make_optimizer(s, TrainConfig(lr=3e-3)) for s in stages]
        frozen = {k: v.clone() for k, v in stages[1].state_dict().items()}
        moving = {k: v.clone() for k, v in stages[2].state_dict().items()}
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 256, (2, 17), generator=g)
        batch = [(ids[:, :-1], ids[:, 1:])]
        losses = [train_step_skipping(stages, opts, batch, skip=1) for _ in range(4)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert all(torch.equal(stages[1].state_dict()[k], v) for k, v in frozen.items())
    assert any(not torch.equal(stages[2].state_dict()[k], v) for k, v in moving.items())
    assert all(p.grad is None for p in stages[1].parameters())


def test_skipping_an_edge_stage_is_refused() -> None:
    """train_step_skipping refuses the first and the last stage with a message pointing to restart."""
    stages = build_stages(CONFIG, 3, seed=0)
    with pytest.raises(ResponseError, match="restart the step instead"):
        train_step_skipping(stages, [], [], skip=0)
