"""Single-process reference training: the pipeline's stages run one after another in one process.

The distributed pipeline must reproduce these losses and weights; both call the units of
:mod:`stagewarden.runtime.units` in the same order (forwards, then backwards in micro-batch
order, then the update), so on the same hardware and thread count they agree bitwise.
"""

from __future__ import annotations

import dataclasses

import torch

from stagewarden.runtime.data import Batches
from stagewarden.runtime.model import GPTConfig, StageModule, build_stages
from stagewarden.runtime.units import (
    ForwardState,
    TrainConfig,
    deterministic,
    make_optimizer,
    optimizer_step,
    stage_backward,
    stage_forward,
    step_loss,
)


def reference_step(
    stages: list[StageModule],
    optimizers: list[torch.optim.Optimizer],
    microbatches: list[tuple[torch.Tensor, torch.Tensor]],
) -> float:
    """One training step of all stages in sequence, GPipe order.

    Args:
        stages: The stages, in pipeline order.
        optimizers: One optimizer per stage, from :func:`~stagewarden.runtime.units.make_optimizer`.
        microbatches: The step's ``M`` pairs ``(x, y)``, each ``(B, T)``.

    Returns:
        The step's loss, the mean of the micro-batch losses.
    """
    M = len(microbatches)  # noqa: N806
    states: list[list[ForwardState]] = [[] for _ in stages]
    losses = []
    for x, y in microbatches:
        activation = x  # (B, T) ids, then (B, T, C)
        for stage in stages:
            state = stage_forward(stage, activation, M, targets=y if stage.is_last else None)
            states[stage.index].append(state)
            activation = state.output.detach()  # what would be sent to the next stage
        assert state.loss is not None
        losses.append(state.loss)
    for m in range(M):
        grad: torch.Tensor | None = None
        for stage in reversed(stages):
            grad = stage_backward(states[stage.index][m], grad)  # (B, T, C) or None
    for optimizer in optimizers:
        optimizer_step(optimizer)
    loss: float = step_loss(losses)
    return loss


def train_reference(
    config: GPTConfig,
    stages: int,
    microbatches: int,
    steps: int,
    lr: float,
    seed: int,
    batches: Batches,
    train: TrainConfig | None = None,
) -> list[float]:
    """Train the model split into ``stages`` in one process and return the loss of every step.

    Args:
        config: The model shape.
        stages: Number of pipeline stages.
        microbatches: Micro-batches per step; must equal ``batches.microbatches``.
        steps: Number of optimizer steps.
        lr: Learning rate; replaces ``train.lr``.
        seed: The run seed (initial weights).
        batches: The data; step ``t`` trains on ``batches.batch(t)``.
        train: The remaining optimizer settings; defaults to :class:`~stagewarden.runtime.units.TrainConfig`.

    Returns:
        ``steps`` losses, one per step, each the mean over the step's micro-batches.
    """
    if microbatches != batches.microbatches:
        raise ValueError(f"microbatches ({microbatches}) differs from the data's ({batches.microbatches})")
    if batches.block_size > config.block_size:
        raise ValueError(f"the data's block_size ({batches.block_size}) exceeds the model's ({config.block_size})")
    settings = dataclasses.replace(train or TrainConfig(), lr=lr)
    with deterministic(settings.threads):
        modules = build_stages(config, stages, seed)
        optimizers: list[torch.optim.Optimizer] = [make_optimizer(stage, settings) for stage in modules]
        return [reference_step(modules, optimizers, batches.batch(step)) for step in range(steps)]
