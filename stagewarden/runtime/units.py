"""The units of work of one training step, shared by the reference trainer and the stage workers.

A step of ``M`` micro-batches is, on each stage: ``M`` forwards, ``M`` backwards in micro-batch
order (each backward adds the gradient of ``loss / M`` to the parameters' ``.grad``), and one
optimizer update. Running the stages in one process or in many, with any valid schedule, calls
these functions with the same tensors in the same order, so the results agree bitwise on the same
hardware and thread count.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from stagewarden.attest.tensor_digest import digest_tensor
from stagewarden.runtime.model import StageModule


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and numerics of training: AdamW, no gradient clipping.

    There is no clipping because a global gradient norm would need a reduction across all stages.
    """

    lr: float = 1e-3
    """AdamW learning rate."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    eps: float = 1e-8
    """AdamW denominator epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices and embeddings only (not to biases or LayerNorms)."""
    threads: int = 1
    """CPU threads for torch while training; results are bitwise reproducible only at a fixed count."""


@contextlib.contextmanager
def deterministic(threads: int = 1) -> Iterator[None]:
    """Within the block, use deterministic algorithms and ``threads`` CPU threads; restore both after."""
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def make_optimizer(module: torch.nn.Module, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``module``'s parameters: two groups, decayed (dim >= 2) and not decayed.

    The optimizer works on each parameter separately (``foreach=False``), so one optimizer over
    the whole model and one per stage take bitwise the same steps.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps, foreach=False, fused=False
    )


@dataclass
class ForwardState:
    """What a stage keeps from the forward of one micro-batch until its backward.

    Attributes:
        inputs: The stage input: token ids ``(B, T)`` on the first stage, otherwise a leaf copy of
            the received activation ``(B, T, C)`` that collects its gradient.
        output: The activation sent on ``(B, T, C)``, or the logits ``(B, T, V)`` on the last stage.
        loss: On the last stage, the micro-batch's mean loss (unscaled); otherwise ``None``.
        scaled_loss: On the last stage, ``loss / M``, the quantity the backward differentiates.
    """

    inputs: torch.Tensor
    output: torch.Tensor
    loss: torch.Tensor | None = None
    scaled_loss: torch.Tensor | None = None


def stage_forward(
    stage: StageModule,
    inputs: torch.Tensor,
    microbatches: int,
    targets: torch.Tensor | None = None,
) -> ForwardState:
    """The forward unit: run ``stage`` on one micro-batch and keep what its backward needs.

    Args:
        stage: The stage.
        inputs: Token ids ``(B, T)`` on the first stage, the received activation ``(B, T, C)`` otherwise.
        microbatches: ``M``, the number of micro-batches in the step (the loss is scaled by ``1/M``).
        targets: Target ids ``(B, T)``; required on the last stage, ignored elsewhere.

    Returns:
        The forward state; send ``state.output.detach()`` to the next stage.
    """
    if not stage.is_first:
        inputs = inputs.detach().requires_grad_(True)  # (B, T, C), a leaf that collects dL/dinput
    output = stage(inputs)  # (B, T, C) or (B, T, V)
    if not stage.is_last:
        return ForwardState(inputs, output)
    if targets is None:
        raise ValueError("the last stage needs the targets to compute the loss")
    loss = stage.loss(output, targets)  # ()
    return ForwardState(inputs, output, loss, loss / microbatches)


def stage_backward(state: ForwardState, grad_output: torch.Tensor | None = None) -> torch.Tensor | None:
    """The backward unit: add this micro-batch's gradients to the stage's ``.grad``.

    Args:
        state: The micro-batch's forward state.
        grad_output: The gradient of the output activation ``(B, T, C)`` received from the next
            stage; ``None`` on the last stage, which differentiates ``state.scaled_loss``.

    Returns:
        The gradient of the stage input ``(B, T, C)`` to send to the previous stage; ``None`` on
        the first stage.
    """
    if state.scaled_loss is not None:
        torch.autograd.backward(state.scaled_loss)
    else:
        if grad_output is None:
            raise ValueError("a stage other than the last needs the gradient of its output")
        torch.autograd.backward(state.output, grad_output)
    return state.inputs.grad if state.inputs.is_floating_point() else None


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """The update unit: apply the accumulated gradients and clear them."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def loss_digest(loss: torch.Tensor | float) -> bytes:
    """The :func:`~stagewarden.attest.tensor_digest.digest_tensor` of a micro-batch's loss as
    the last stage reports it: a 0-dimensional float32 tensor of the value (a NaN in its
    canonical form, which is what a reported ``float.hex`` of any NaN parses back to). A last
    stage's forward receipt commits to it
    (:func:`~stagewarden.attest.tensor_digest.last_forward_output_digest`)."""
    value = float(loss)
    digest: bytes = digest_tensor(torch.tensor(math.nan if math.isnan(value) else value, dtype=torch.float32))
    return digest


def step_loss(losses: list[torch.Tensor]) -> float:
    """The loss reported for a step: the mean of the ``M`` micro-batch losses."""
    return float(torch.stack([loss.detach() for loss in losses]).mean())
