"""Re-executing committed units: :func:`reexecute_forward`, :func:`reexecute_backward` and
:func:`reexecute_update` rebuild a stage from in-memory tensors (never from unpickled bytes) and run
the same units of :mod:`stagewarden.runtime.units` as the workers; the optimizer state travels as
plain tensors (:func:`export_optimizer_state`, :func:`import_optimizer_state`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from stagewarden.attest.tensor_digest import digest_state_dict
from stagewarden.runtime.compare import SpotCheckError
from stagewarden.runtime.model import GPTConfig, StageModule, build_stage
from stagewarden.runtime.units import TrainConfig, make_optimizer, optimizer_step, stage_backward, stage_forward

# -- re-execution ----------------------------------------------------------------------------


def load_stage(
    config: GPTConfig, stages: int, index: int, weights: Mapping[str, torch.Tensor], seed: int = 0
) -> StageModule:
    """Build stage ``index`` and load ``weights`` (in-memory tensors) into it.

    Raises:
        SpotCheckError: The names or shapes of ``weights`` do not fit the stage.
    """
    stage = build_stage(config, stages, index, seed)
    _load_weights(stage, weights, index, stages)
    return stage


class StagePool:
    """Stage modules built once per stage index and reloaded with each unit's weights.

    Building a stage allocates and initialises every parameter, which costs more than
    re-executing a small unit; a verifier that checks many units keeps one module per stage and
    loads the unit's weights into it. A loaded module computes bit for bit what a freshly built
    one with the same weights computes: every parameter and persistent buffer is overwritten
    (``strict=True``) and the gradients are dropped.
    """

    def __init__(self, config: GPTConfig, stages: int, seed: int = 0) -> None:
        self.config = config
        self.stages = stages
        self.seed = seed
        self._modules: dict[int, StageModule] = {}

    def load(self, index: int, weights: Mapping[str, torch.Tensor]) -> StageModule:
        """Stage ``index`` holding ``weights``, with no gradients.

        Raises:
            SpotCheckError: The names or shapes of ``weights`` do not fit the stage.
        """
        module = self._modules.get(index)
        if module is None:
            module = self._modules[index] = build_stage(self.config, self.stages, index, self.seed)
        _load_weights(module, weights, index, self.stages)
        module.zero_grad(set_to_none=True)
        return module


def _load_weights(stage: StageModule, weights: Mapping[str, torch.Tensor], index: int, stages: int) -> None:
    try:
        stage.load_state_dict(dict(weights), strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise SpotCheckError(f"the weights do not fit stage {index} of {stages}: {first}") from None


def _stage(
    pool: StagePool | None, config: GPTConfig, stages: int, index: int, weights: Mapping[str, torch.Tensor]
) -> StageModule:
    if pool is None:
        return load_stage(config, stages, index, weights)
    if (pool.config, pool.stages) != (config, stages):
        raise SpotCheckError("the stage pool was built for another model or number of stages")
    return pool.load(index, weights)


def reexecute_forward(
    config: GPTConfig,
    stages: int,
    index: int,
    weights: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    microbatches: int = 1,
    pool: StagePool | None = None,
) -> torch.Tensor:
    """Re-execute a forward unit from its committed input and weights.

    Args:
        config: The model shape.
        stages: Number of pipeline stages.
        index: The stage.
        weights: The stage's state dict the unit ran with.
        inputs: Token ids ``(B, T)`` (stage 0) or the input activation ``(B, T, C)``.
        targets: Target ids ``(B, T)`` on the last stage (optional: the output is the logits either way).
        microbatches: ``M`` of the step (only scales the loss, not the output).
        pool: Stage modules to reuse (:class:`StagePool`); a new stage is built without one.

    Returns:
        The output ``(B, T, C)``, or logits ``(B, T, V)`` on the last stage, detached.
    """
    return reexecute_forward_outputs(
        config, stages, index, weights, inputs, targets, microbatches=microbatches, pool=pool
    )["output"]


def reexecute_forward_outputs(
    config: GPTConfig,
    stages: int,
    index: int,
    weights: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    microbatches: int = 1,
    pool: StagePool | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`reexecute_forward`, with everything a forward unit commits to by name: ``output``
    and, on the last stage with ``targets``, ``loss`` (the micro-batch's loss before the
    ``1 / M`` scaling; see :func:`~stagewarden.attest.tensor_digest.last_forward_output_digest`)."""
    stage = _stage(pool, config, stages, index, weights)
    with torch.enable_grad():  # the worker's forward unit runs with autograd on; so does its re-execution
        if targets is not None or index != stages - 1:
            state = stage_forward(stage, inputs, microbatches, targets=targets)
            out = {"output": state.output.detach()}
            if state.loss is not None:
                out["loss"] = state.loss.detach()
            return out
        return {"output": stage(inputs).detach()}  # (B, T, V)


@dataclasses.dataclass(frozen=True)
class BackwardResult:
    """What re-executing a backward unit yields.

    Attributes:
        grad_input: The gradient of the stage input ``(B, T, C)``; ``None`` on stage 0.
        param_grads: This micro-batch's gradient of every parameter (name to tensor).
        param_grads_digest: :func:`stagewarden.attest.tensor_digest.digest_state_dict` of ``param_grads``.
    """

    grad_input: torch.Tensor | None
    param_grads: dict[str, torch.Tensor]
    param_grads_digest: bytes


def reexecute_backward(
    config: GPTConfig,
    stages: int,
    index: int,
    weights: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    grad_output: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    microbatches: int = 1,
    pool: StagePool | None = None,
) -> BackwardResult:
    """Re-execute a backward unit (its forward again, then the backward) from committed tensors.

    Args:
        config: The model shape.
        stages: Number of pipeline stages.
        index: The stage.
        weights: The stage's state dict the unit ran with.
        inputs: Token ids ``(B, T)`` or the input activation ``(B, T, C)``.
        grad_output: The received gradient of the output ``(B, T, C)``; for every stage but the last.
        targets: Target ids ``(B, T)``; for the last stage.
        microbatches: ``M`` of the step: the last stage differentiates ``loss / M``.
        pool: Stage modules to reuse (:class:`StagePool`); a new stage is built without one.

    Returns:
        The input gradient and this micro-batch's parameter gradients (from zero, not accumulated).
    """
    stage = _stage(pool, config, stages, index, weights)
    is_last = index == stages - 1
    if is_last and targets is None:
        raise SpotCheckError(f"re-executing the backward of the last stage ({index}) needs the targets")
    if not is_last and grad_output is None:
        raise SpotCheckError(f"re-executing the backward of stage {index} needs the gradient of its output")
    with torch.enable_grad():
        state = stage_forward(stage, inputs, microbatches, targets=targets if is_last else None)
        grad_input = stage_backward(state, None if is_last else grad_output)
    grads = {name: p.grad.detach().clone() for name, p in stage.named_parameters() if p.grad is not None}
    return BackwardResult(
        grad_input=None if grad_input is None else grad_input.detach(),
        param_grads=grads,
        param_grads_digest=digest_state_dict(grads),
    )


# -- optimizer state as plain tensors --------------------------------------------------------

#: The AdamW state fields of one parameter, stored as ``"<param name>/<field>"``.
ADAM_FIELDS = ("step", "exp_avg", "exp_avg_sq")


def export_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as a flat ``{"<param>/<field>": tensor}`` dict of copies.

    Fields are :data:`ADAM_FIELDS`; ``step`` is a scalar float32 tensor, the others have the
    parameter's shape. Parameters without state yet (before the first step) are absent. The
    dict is plain tensors, so it digests with :func:`stagewarden.attest.tensor_digest.digest_state_dict` and
    saves with ``torch.save`` / loads with ``torch.load(weights_only=True)``.
    """
    return {key: value.detach().clone() for key, value in optimizer_state_view(module, optimizer).items()}


def optimizer_state_view(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """:func:`export_optimizer_state` without the copies: the optimizer's own tensors, to digest."""
    out: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        state = optimizer.state.get(param)
        if not state:
            continue
        for field in ADAM_FIELDS:
            out[f"{name}/{field}"] = state[field]
    return out


def optimizer_state_digest(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bytes:
    """The :func:`~stagewarden.attest.tensor_digest.digest_state_dict` of the optimizer state
    (:func:`export_optimizer_state`), which update receipts commit to."""
    return digest_state_dict(optimizer_state_view(module, optimizer))


def import_optimizer_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, flat: Mapping[str, torch.Tensor]
) -> None:
    """Load a state from :func:`export_optimizer_state` into a fresh optimizer over ``module``.

    Raises:
        SpotCheckError: A key names no parameter or field, or a parameter's fields are incomplete.
    """
    params = dict(module.named_parameters())
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, field = key.rpartition("/")
        if name not in params or field not in ADAM_FIELDS:
            raise SpotCheckError(f"optimizer state key {key!r} names no parameter field of this stage")
        grouped.setdefault(name, {})[field] = value
    for name, fields in grouped.items():
        if set(fields) != set(ADAM_FIELDS):
            raise SpotCheckError(f"optimizer state of {name!r} lacks {sorted(set(ADAM_FIELDS) - set(fields))}")
        optimizer.state[params[name]] = {f: fields[f].detach().clone() for f in ADAM_FIELDS}


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    """What re-executing an update unit yields.

    Attributes:
        weights: The stage's state dict after the update.
        optimizer_state: The optimizer state after the update (see :func:`export_optimizer_state`).
        weights_digest: :func:`stagewarden.attest.tensor_digest.digest_state_dict` of ``weights``.
    """

    weights: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor]
    weights_digest: bytes


def reexecute_update(
    config: GPTConfig,
    stages: int,
    index: int,
    weights_before: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, torch.Tensor],
    train: TrainConfig,
    step: int,
    *,
    pool: StagePool | None = None,
) -> UpdateResult:
    """Re-execute an update unit: the worker's AdamW step from committed weights, gradients and state.

    Args:
        config: The model shape.
        stages: Number of pipeline stages.
        index: The stage.
        weights_before: The stage's state dict before the update.
        grads: The accumulated gradients of the step (parameter name to tensor).
        optimizer_state: The optimizer state before the update (:func:`export_optimizer_state`);
            empty before the first update.
        train: The optimizer settings the worker used.
        step: The 0-based step; the optimizer state must have taken exactly ``step`` updates.
        pool: Stage modules to reuse (:class:`StagePool`); a new stage is built without one.

    Returns:
        The weights and optimizer state after the update.

    Raises:
        SpotCheckError: The state does not fit the step or the stage, or a gradient is missing.
    """
    stage = _stage(pool, config, stages, index, weights_before)
    optimizer = make_optimizer(stage, train)
    import_optimizer_state(stage, optimizer, optimizer_state)
    counts = {float(v) for k, v in optimizer_state.items() if k.endswith("/step")}
    if counts - {float(step)} or (step > 0 and not counts):
        raise SpotCheckError(
            f"the optimizer state has taken {sorted(counts) or [0]} updates, but step {step} needs {step}"
        )
    for name, param in stage.named_parameters():
        if name not in grads:
            raise SpotCheckError(f"the gradients lack parameter {name!r} of stage {index}")
        param.grad = grads[name].detach().clone()
    optimizer_step(optimizer)
    weights = {k: v.detach().clone() for k, v in stage.state_dict().items()}
    return UpdateResult(weights, export_optimizer_state(stage, optimizer), digest_state_dict(weights))
