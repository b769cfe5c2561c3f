"""The attacks' pure tensor transformations: each a function of the tensor, the plan and the
unit (randomness only from :mod:`stagewarden.runtime.seeding`; the global random state is
neither used nor changed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import blake3
import torch

from stagewarden.runtime.attacks.plan import TENSOR_KINDS, AttackKind, AttackPlan
from stagewarden.runtime.seeding import derive_seed, generator

_INT_VIEW: dict[torch.dtype, torch.dtype] = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _unit_generator(plan: AttackPlan, what: str, stage: int, step: int, microbatch: int) -> torch.Generator:
    gen: torch.Generator = generator(plan.seed, "attack", what, plan.direction.value, stage, step, microbatch)
    return gen


def reverse(tensor: torch.Tensor) -> torch.Tensor:
    """The ``reverse`` attack: the negated tensor (any shape)."""
    return -tensor


def random_like(tensor: torch.Tensor, plan: AttackPlan, stage: int, step: int, microbatch: int) -> torch.Tensor:
    """The ``random`` attack: Gaussian noise with the tensor's mean and standard deviation (1 if it is 0)."""
    values = tensor.detach().double()
    mean, std = float(values.mean()), float(values.std()) if tensor.numel() > 1 else 0.0
    std = std if std > 0.0 else 1.0
    gen = _unit_generator(plan, "random", stage, step, microbatch)
    noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float64)  # same shape as tensor
    return (noise * std + mean).to(tensor.dtype)


def scale(tensor: torch.Tensor, plan: AttackPlan) -> torch.Tensor:
    """The ``scale`` attack: the tensor times :attr:`AttackPlan.scale` (unchanged only if it is all zeros)."""
    return tensor * plan.scale


def relative_noise(tensor: torch.Tensor, plan: AttackPlan, stage: int, step: int, microbatch: int) -> torch.Tensor:
    """The ``noise`` attack: add Gaussian noise with standard deviation ``plan.noise`` x RMS(tensor).

    Small magnitudes are the stealthy case: below the comparison tolerance they pass a
    tolerance-mode check (see :mod:`stagewarden.runtime.spotcheck`).
    """
    rms = float(tensor.detach().double().pow(2).mean().sqrt()) if tensor.numel() else 0.0
    rms = rms if rms > 0.0 else 1.0
    gen = _unit_generator(plan, "noise", stage, step, microbatch)
    noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float64) * (plan.noise * rms)
    return (tensor.detach().double() + noise).to(tensor.dtype)


def bitflip_position(tensor: torch.Tensor, plan: AttackPlan, stage: int, step: int, microbatch: int) -> int:
    """The flat index of the element :func:`bitflip` corrupts (deterministic per plan and unit)."""
    if tensor.numel() == 0:
        raise ValueError("cannot flip a bit of an empty tensor")
    seed: int = derive_seed(plan.seed, "attack", "bitflip", plan.direction.value, stage, step, microbatch)
    return seed % tensor.numel()


def bitflip(tensor: torch.Tensor, plan: AttackPlan, stage: int, step: int, microbatch: int) -> torch.Tensor:
    """The ``bitflip`` attack: a copy with bit :attr:`AttackPlan.bit` of one element flipped.

    The bit is flipped in the element's integer view (float32 as int32, ...), as silent data
    corruption in memory or on a link would; the element is :func:`bitflip_position`.

    Raises:
        ValueError: The dtype is not a floating type of 16, 32 or 64 bits, or the bit index
            does not fit it.
    """
    int_dtype = _INT_VIEW.get(tensor.dtype)
    if int_dtype is None:
        raise ValueError(f"bitflip works on float16, bfloat16, float32 and float64 tensors, not {tensor.dtype}")
    width = torch.iinfo(int_dtype).bits
    if plan.bit >= width:
        raise ValueError(f"bit {plan.bit} does not exist in a {width}-bit {tensor.dtype} element")
    mask = 1 << plan.bit
    if mask >= 1 << (width - 1):  # the sign bit, as a two's-complement value of the signed view
        mask -= 1 << width
    out = tensor.detach().clone().contiguous()
    flat = out.view(-1).view(int_dtype)  # (N,) same bytes
    index = bitflip_position(tensor, plan, stage, step, microbatch)
    flat[index] = flat[index] ^ mask
    return out


def lazy(
    tensor: torch.Tensor, stale: torch.Tensor | None = None, stage_input: torch.Tensor | None = None
) -> torch.Tensor:
    """The ``lazy`` attack: return what the worker has instead of computing.

    The caller passes what it holds; the first usable of these is returned (a copy):

    1. ``stale``: the tensor this stage sent for the same micro-batch position at an earlier
       step (a worker that stopped computing and resends its last result);
    2. ``stage_input``: the message the stage received, sent on unchanged (forward: the input
       activation ``(B, T, C)``, as if the stage's blocks were skipped; backward: the gradient
       of its output, as if its Jacobian were the identity);
    3. otherwise zeros (the first stage, whose input is token ids, or the last, whose output
       shape differs from its input).

    A candidate is usable if it has the tensor's shape and dtype. The result differs from the
    honest tensor unless the stale or passed-through message happens to equal it.
    """
    for candidate in (stale, stage_input):
        if candidate is not None and candidate.shape == tensor.shape and candidate.dtype == tensor.dtype:
            return candidate.detach().clone()
    return torch.zeros_like(tensor)


def replay(tensor: torch.Tensor, earlier: torch.Tensor | None) -> torch.Tensor:
    """The ``replay`` attack: a copy of ``earlier``, an earlier micro-batch's tensor the caller kept.

    With nothing to replay (the stage's first micro-batch) the attack cannot fire and the honest
    tensor is returned unchanged.

    Raises:
        ValueError: ``earlier`` has another shape or dtype than ``tensor``.
    """
    if earlier is None:
        return tensor
    if earlier.shape != tensor.shape or earlier.dtype != tensor.dtype:
        raise ValueError(
            f"cannot replay a {earlier.dtype} {tuple(earlier.shape)} tensor"
            f" in place of a {tensor.dtype} {tuple(tensor.shape)} one"
        )
    return earlier.detach().clone()


def tamper_tensor(
    plan: AttackPlan,
    tensor: torch.Tensor,
    *,
    stage: int,
    step: int,
    microbatch: int,
    stale: torch.Tensor | None = None,
    stage_input: torch.Tensor | None = None,
    earlier: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply a tensor kind (:data:`~stagewarden.runtime.attacks.plan.TENSOR_KINDS`) of ``plan`` to an
    inter-stage message.

    This does not consult :meth:`AttackPlan.active`; the caller checks it first.

    Args:
        plan: The attack plan; its kind must be in :data:`~stagewarden.runtime.attacks.plan.TENSOR_KINDS`.
        tensor: The honest message: an activation ``(B, T, C)`` / logits, or a gradient ``(B, T, C)``.
        stage: The tampering stage.
        step: The step.
        microbatch: The micro-batch.
        stale: For ``lazy``: this stage's message for the same micro-batch at an earlier step.
        stage_input: For ``lazy``: the message this stage received for this unit.
        earlier: For ``replay``: an earlier micro-batch's message of this stage.

    Returns:
        The tampered message (a new tensor; ``tensor`` is not modified).
    """
    kind = plan.kind
    if kind is AttackKind.REVERSE:
        return reverse(tensor)
    if kind is AttackKind.RANDOM:
        return random_like(tensor, plan, stage, step, microbatch)
    if kind is AttackKind.SCALE:
        return scale(tensor, plan)
    if kind is AttackKind.NOISE:
        return relative_noise(tensor, plan, stage, step, microbatch)
    if kind is AttackKind.BITFLIP:
        return bitflip(tensor, plan, stage, step, microbatch)
    if kind is AttackKind.LAZY:
        return lazy(tensor, stale=stale, stage_input=stage_input)
    if kind is AttackKind.REPLAY:
        return replay(tensor, earlier)
    raise ValueError(f"{kind.value} is not an attack on an inter-stage tensor; tensor kinds: {sorted(TENSOR_KINDS)}")


def drift_direction(plan: AttackPlan, stage: int, name: str, like: torch.Tensor) -> torch.Tensor:
    """The fixed unit-variance direction ``weights`` pushes parameter ``name`` of ``stage`` along.

    It depends on :attr:`AttackPlan.drift_seed`, the stage and the parameter name only, so every
    tampered update pushes the same way (as a backdoor injection does).
    """
    gen = generator(plan.drift_seed, "attack", "weights", stage, name)
    return torch.randn(like.shape, generator=gen, dtype=torch.float32).to(like.dtype)  # same shape as the parameter


def tamper_weights(plan: AttackPlan, stage: int, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``weights`` attack: the state after the real update, moved ``plan.drift`` along the fixed direction.

    Args:
        plan: The attack plan.
        stage: The tampering stage.
        weights: The stage's parameters right after its real optimizer step (name to tensor).

    Returns:
        New tensors ``w + drift * d`` under the same names; ``weights`` is not modified.
        Non-floating tensors are copied unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for name, value in weights.items():
        if value.is_floating_point():
            out[name] = value.detach() + plan.drift * drift_direction(plan, stage, name, value)
        else:
            out[name] = value.detach().clone()
    return out


def tamper_optimizer(plan: AttackPlan, stage: int, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``optimizer`` attack: the optimizer state between two updates, with every parameter's
    first moment (``<param>/exp_avg``) moved ``plan.drift`` along the fixed direction of
    :func:`drift_direction`, so that the next update, computed honestly from this state, drifts
    the weights that way.

    Args:
        plan: The attack plan.
        stage: The tampering stage.
        state: The stage's flat optimizer state
            (:func:`~stagewarden.runtime.reexecute.export_optimizer_state`); empty before the
            stage's first update, when there is nothing to tamper with.

    Returns:
        The tampered entries only (new tensors under the same keys); ``state`` is not modified.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name, _, field = key.rpartition("/")
        if field == "exp_avg" and value.is_floating_point():
            out[key] = value.detach() + plan.drift * drift_direction(plan, stage, name, value)
    return out


def tamper_gradients(plan: AttackPlan, stage: int, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``grad_drift`` attack: a stage's accumulated parameter gradients, moved ``plan.drift``
    along the fixed direction of :func:`drift_direction`, right before one of its backward units.
    The unit then computes honestly on top of them, so its input gradient (the message it sends)
    is honest while the gradients its update starts from drift.

    Args:
        plan: The attack plan.
        stage: The tampering stage.
        grads: Every parameter's accumulated gradient so far in the step (zeros before the
            stage's first backward unit of the step).

    Returns:
        New tensors ``g + drift * d`` under the same names (the move :func:`tamper_weights` makes);
        ``grads`` is not modified.
    """
    return tamper_weights(plan, stage, grads)


@dataclasses.dataclass(frozen=True)
class Equivocation:
    """The two faces of an equivocating unit.

    Attributes:
        sent: What goes to the neighbouring stage (tampered).
        shown: What the receipt commits to and the verifier is shown (honest).
    """

    sent: torch.Tensor
    shown: torch.Tensor


def equivocate(tensor: torch.Tensor) -> Equivocation:
    """The ``equivocate`` attack: send the negated tensor on, commit to the honest one.

    Re-executing the committed unit passes (the receipt is honest); the attack is caught only
    by linking digests: the next stage's receipt commits to an input that is not the output the
    sender committed to.
    """
    return Equivocation(sent=reverse(tensor), shown=tensor.detach().clone())


def poison_data(ids: torch.Tensor, plan: AttackPlan, step: int, microbatch: int, vocab_size: int) -> torch.Tensor:
    """The ``poison_data`` attack: stage 0 replaces every token id of its micro-batch.

    Each id becomes ``(id + offset) mod vocab_size`` with an offset in ``[1, vocab_size)`` drawn
    per unit, so every position changes and the batch stays valid input.

    Args:
        ids: Token ids ``(B, T)`` int64.
        plan: The attack plan.
        step: The step.
        microbatch: The micro-batch.
        vocab_size: The vocabulary size; at least 2.
    """
    if vocab_size < 2:
        raise ValueError("poison_data needs a vocabulary of at least 2 ids")
    if ids.dtype.is_floating_point:
        raise ValueError(f"poison_data works on integer token ids, not {ids.dtype}")
    offset: int = 1 + derive_seed(plan.seed, "attack", "poison", step, microbatch) % (vocab_size - 1)
    poisoned: torch.Tensor = (ids + offset) % vocab_size  # (B, T)
    return poisoned


@dataclasses.dataclass(frozen=True)
class Accusation:
    """A claim that a stage's unit was computed wrongly, as a checking worker sends it to the referee.

    Attributes:
        accuser: The stage making the claim.
        accused: The stage claimed to have tampered.
        step: The step of the accused unit.
        microbatch: The micro-batch of the accused unit.
        unit_kind: ``forward``, ``backward`` or ``update``.
        observed_digest: Hex digest of what the accused committed to (from its receipt).
        claimed_digest: Hex digest the accuser says an honest execution gives.
    """

    accuser: int
    accused: int
    step: int
    microbatch: int
    unit_kind: str
    observed_digest: str
    claimed_digest: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return dataclasses.asdict(self)


def false_accuse(
    plan: AttackPlan,
    accuser: int,
    accused: int,
    step: int,
    microbatch: int,
    observed_digest: bytes,
    unit_kind: str = "forward",
) -> Accusation:
    """The ``false_accuse`` attack: a forged :class:`Accusation` against an honest unit.

    The claimed digest is derived from the plan's seed and the unit, never equal to the
    observed one, so the claim asserts a mismatch. A referee that re-executes the unit finds
    the accused's digest correct and blames the accuser
    (:func:`stagewarden.runtime.compare.referee`).
    """
    if accuser == accused:
        raise ValueError("a stage cannot accuse itself")
    forged = blake3.blake3(
        b"stagewarden/attack/false-accuse\x00"
        + observed_digest
        + derive_seed(plan.seed, "attack", "accuse", accuser, accused, step, microbatch).to_bytes(8, "big")
    ).digest()
    return Accusation(
        accuser=accuser,
        accused=accused,
        step=step,
        microbatch=microbatch,
        unit_kind=unit_kind,
        observed_digest=observed_digest.hex(),
        claimed_digest=forged.hex(),
    )
