"""Calibration of the tolerance of tolerance-mode spot checks, per stage, from honest executions.

With ``spot_check_compare = "tolerance"`` the coordinator, at admission, on resume and when a
standby takes a stage, asks the stage's worker to compute :data:`CALIBRATION_UNITS` forward and
backward units on inputs derived from the run seed (:func:`calibration_inputs`, never training
data) on its own device and kernels (:func:`calibration_outputs`). It re-executes the same units
itself (:func:`reexecute_calibration_unit`) and sets the stage's tolerance from the largest
relative error between the two (:func:`calibrate_stage`); a tolerance above
:data:`MAX_TOLERANCE` refuses the worker.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.model import StageModule
from stagewarden.runtime.seeding import generator
from stagewarden.runtime.spotcheck import (
    SAFETY_FACTOR,
    TOLERANCE_FLOOR,
    SpotCheckError,
    Tolerance,
    calibrate_tolerance,
    reexecute_backward,
    reexecute_forward_outputs,
)
from stagewarden.runtime.units import stage_backward, stage_forward

#: Calibration units each worker computes per calibration.
CALIBRATION_UNITS = 2
#: The largest tolerance a worker may be calibrated to; a worker whose calibration needs more is refused.
MAX_TOLERANCE = 1e-3


def calibration_inputs(config: RunConfig, stage: int, index: int) -> dict[str, torch.Tensor]:
    """The inputs of calibration unit ``index`` of ``stage``, derived from the run seed only.

    Returns:
        ``input``: token ids ``(B, T)`` on stage 0, else an activation ``(B, T, C)`` drawn from
        N(0, 1); ``targets`` ``(B, T)`` on the last stage; ``grad_output`` ``(B, T, C)`` from
        N(0, 1) on every other stage. All on the CPU, the same in every process.
    """
    c = config
    shape = (c.batch_size, c.model.block_size)
    gen = generator(c.seed, "spot-check-calibration", stage, index)
    inputs: dict[str, torch.Tensor] = {}
    if stage == 0:
        inputs["input"] = torch.randint(0, c.model.vocab_size, shape, generator=gen)  # (B, T)
    else:
        inputs["input"] = torch.randn((*shape, c.model.n_embd), generator=gen)  # (B, T, C)
    if stage == c.stages - 1:
        inputs["targets"] = torch.randint(0, c.model.vocab_size, shape, generator=gen)  # (B, T)
    else:
        inputs["grad_output"] = torch.randn((*shape, c.model.n_embd), generator=gen)  # (B, T, C)
    return inputs


def calibration_outputs(
    stage: StageModule, inputs: Mapping[str, torch.Tensor], microbatches: int
) -> dict[str, torch.Tensor]:
    """Compute one calibration unit on ``stage`` where it lives: its forward, then its backward
    from zero parameter gradients. The stage's own gradients are left as they were.

    Returns:
        ``output`` (the activation or the logits), ``loss`` (the last stage), ``grad_input`` (except on stage 0) and
        ``grad.<parameter>`` for every parameter that gets a gradient.
    """
    device = next(stage.parameters()).device
    params = list(stage.named_parameters())
    saved = [p.grad for _, p in params]
    for _, p in params:
        p.grad = None
    try:
        with torch.enable_grad():
            targets = inputs["targets"].to(device) if stage.is_last else None
            state = stage_forward(stage, inputs["input"].to(device), microbatches, targets=targets)
            grad_output = None if stage.is_last else inputs["grad_output"].to(device)
            grad_input = stage_backward(state, grad_output)
        out = {"output": state.output.detach()}
        if state.loss is not None:
            out["loss"] = state.loss.detach()
        if grad_input is not None:
            out["grad_input"] = grad_input.detach()
        out.update({f"grad.{name}": p.grad.detach().clone() for name, p in params if p.grad is not None})
    finally:
        for (_, p), grad in zip(params, saved, strict=True):
            p.grad = grad
    return out


def reexecute_calibration_unit(
    config: RunConfig, stage: int, weights: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The coordinator's own execution of a calibration unit (:func:`calibration_outputs`'s
    outputs, under the same names), with :func:`~stagewarden.runtime.reexecute.reexecute_forward`
    and :func:`~stagewarden.runtime.reexecute.reexecute_backward`."""
    c = config
    targets = inputs.get("targets")
    out: dict[str, torch.Tensor] = reexecute_forward_outputs(
        c.model, c.stages, stage, weights, inputs["input"], targets, microbatches=c.microbatches
    )
    result = reexecute_backward(
        c.model,
        c.stages,
        stage,
        weights,
        inputs["input"],
        inputs.get("grad_output"),
        targets,
        microbatches=c.microbatches,
    )
    if result.grad_input is not None:
        out["grad_input"] = result.grad_input
    out.update({f"grad.{name}": g for name, g in result.param_grads.items()})
    return out


def calibrate_stage(
    config: RunConfig,
    stage: int,
    weights: Mapping[str, torch.Tensor],
    observed: Sequence[Mapping[str, torch.Tensor]],
) -> Tolerance:
    """The tolerance of ``stage`` from a worker's calibration outputs.

    Re-executes each of the :data:`CALIBRATION_UNITS` units from its seed-derived inputs and
    ``weights`` and calibrates over every output pair
    (:func:`~stagewarden.runtime.compare.calibrate_tolerance`: ``max(largest relative error x
    10, 64 float32 ulps)``). A non-finite value where the re-execution has none gives an infinite
    tolerance (no tolerance covers it).

    Args:
        config: The run configuration.
        stage: The stage.
        weights: The weights the worker computed with (check them against the stage's first).
        observed: The worker's outputs of each unit, named as :func:`calibration_outputs` names them.

    Raises:
        SpotCheckError: The worker returned another number of units, other output names, or an
            output of another dtype or shape than the re-execution's.
    """
    if len(observed) != CALIBRATION_UNITS:
        raise SpotCheckError(f"a calibration has {CALIBRATION_UNITS} units, got {len(observed)}")
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    for index, got in enumerate(observed):
        expected = reexecute_calibration_unit(config, stage, weights, calibration_inputs(config, stage, index))
        if set(got) != set(expected):
            raise SpotCheckError(
                f"calibration unit {index} returned the outputs {sorted(got)}, not stage {stage}'s {sorted(expected)}"
            )
        for name, e in expected.items():
            o = got[name]
            if o.dtype != e.dtype or o.shape != e.shape:
                raise SpotCheckError(
                    f"calibration output {name!r} of unit {index} is {o.dtype} {tuple(o.shape)}, "
                    f"not {e.dtype} {tuple(e.shape)}"
                )
            pairs.append((e, o))
    try:
        return calibrate_tolerance(pairs, SAFETY_FACTOR, TOLERANCE_FLOOR)
    except SpotCheckError:  # only non-finite disagreements are left after the checks above
        return Tolerance(math.inf, math.inf, SAFETY_FACTOR, TOLERANCE_FLOOR, len(pairs))


def tolerance_record(tolerance: Tolerance) -> dict[str, Any]:
    """A tolerance as recorded in ``events.jsonl`` and ``summary.json`` (non-finite numbers as
    strings), with the cap it was held to."""
    record: dict[str, Any] = {
        "tolerance": tolerance.value,
        "max_relative_error": tolerance.max_observed,
        "safety": tolerance.safety,
        "floor": tolerance.floor,
        "samples": tolerance.samples,
        "cap": MAX_TOLERANCE,
    }
    return {k: str(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
