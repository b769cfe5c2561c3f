"""Attacks a malicious or faulty stage worker can mount, as data and as pure tensor transformations.

An :class:`AttackPlan` says who attacks (a set of stages, colluding or not), what they do
(an :class:`AttackKind`), from which step and how often. Whether the attack fires on a unit is
a deterministic function of the plan's seed and the unit, so every process (the attacker, the
verifier replaying a run, a test) agrees on which units were tampered. The transformations are
pure functions of the tensor, the plan and the unit; the engine decides where to apply them:

* forward kinds act on a stage's output activation before it is sent, backward kinds on the
  gradient of the stage's input before it is sent back (one set of functions; the plan's
  :attr:`AttackPlan.direction` says which message they are applied to);
* ``weights`` acts on a stage's parameters after its real optimizer step;
* ``optimizer`` acts on a stage's optimizer state at the start of a step (between updates);
* ``grad_drift`` acts on a stage's accumulated parameter gradients between its backward units;
* ``swap_weights`` acts on a stage's weights at the start of a step (between updates);
* ``equivocate`` returns two tensors: one sent on, one committed in the receipt;
* ``poison_data`` acts on stage 0's token ids;
* ``false_accuse`` produces a forged accusation for the referee.

Randomness comes only from :mod:`stagewarden.runtime.seeding`; the global random state is
neither used nor changed.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any

import blake3
import torch
from stagewarden.runtime.seeding import derive_seed, generator

_TWO_63 = float(2**63)


class AttackKind(enum.StrEnum):
    """What a malicious stage does; :data:`ATTACK_KINDS` has a one-line description of each."""

    REVERSE = "reverse"
    RANDOM = "random"
    SCALE = "scale"
    NOISE = "noise"
    BITFLIP = "bitflip"
    LAZY = "lazy"
    REPLAY = "replay"
    WEIGHTS = "weights"
    OPTIMIZER = "optimizer"
    GRAD_DRIFT = "grad_drift"
    SWAP_WEIGHTS = "swap_weights"
    EQUIVOCATE = "equivocate"
    POISON_DATA = "poison_data"
    FALSE_ACCUSE = "false_accuse"
    WITHHOLD = "withhold"


class Direction(enum.StrEnum):
    """Which inter-stage message a tensor attack tampers with."""

    FORWARD = "forward"
    """The output activation a stage sends to the next stage."""
    BACKWARD = "backward"
    """The gradient of the stage input a stage sends back to the previous stage."""
    INPUT = "input"
    """The activation a stage received, forged before the stage computes on it, so that the
    output it sends is consistent with the forged input (``y' = f(x')``)."""


#: One-line description of every attack kind, in :class:`AttackKind` order (for ``--help`` and the docs).
ATTACK_KINDS: dict[AttackKind, str] = {
    AttackKind.REVERSE: "negate the tensor sent on (the paper's 'reverse' attack)",
    AttackKind.RANDOM: "replace the tensor with Gaussian noise of the same mean and standard deviation",
    AttackKind.SCALE: "multiply the tensor by a constant factor (--scale)",
    AttackKind.NOISE: "add Gaussian noise of relative magnitude --noise times the tensor's RMS (stealthy)",
    AttackKind.BITFLIP: "flip one bit (--bit) of one element, as silent data corruption does",
    AttackKind.LAZY: "skip the work: send the stale previous output, else the stage input unchanged",
    AttackKind.REPLAY: "send an earlier micro-batch's output instead of this one's",
    AttackKind.WEIGHTS: "after the real optimizer step, move the weights a small step along a fixed direction",
    AttackKind.OPTIMIZER: "between updates, move the optimizer's first moment along a fixed direction (the next "
    "update then drifts while its arithmetic is honest)",
    AttackKind.GRAD_DRIFT: "before a backward unit, move the stage's accumulated parameter gradients along a fixed "
    "direction (its messages stay honest; the update then drifts)",
    AttackKind.SWAP_WEIGHTS: "between steps, move the weights along a fixed direction (a backdoored model loaded into "
    "the worker) and compute honestly with them",
    AttackKind.EQUIVOCATE: "send the next stage a tampered tensor while the receipt commits to the honest one",
    AttackKind.POISON_DATA: "stage 0 replaces the token ids of its micro-batch with other ids",
    AttackKind.FALSE_ACCUSE: "a checking worker claims a mismatch that is not there, to frame an honest stage",
    AttackKind.WITHHOLD: "stay alive but stop sending: keep the neighbour waiting forever (a liveness attack)",
}

#: Kinds applied by :func:`tamper_tensor` to an inter-stage message (activation or gradient).
TENSOR_KINDS: frozenset[AttackKind] = frozenset(
    {
        AttackKind.REVERSE,
        AttackKind.RANDOM,
        AttackKind.SCALE,
        AttackKind.NOISE,
        AttackKind.BITFLIP,
        AttackKind.LAZY,
        AttackKind.REPLAY,
    }
)

_INT_VIEW: dict[torch.dtype, torch.dtype] = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def describe_kinds() -> list[tuple[str, str]]:
    """Every attack kind's name and one-line description, in a fixed order."""
    return [(kind.value, text) for kind, text in ATTACK_KINDS.items()]


@dataclasses.dataclass(frozen=True)
class AttackPlan:
    """Who attacks, how, from when and how often.

    Attributes:
        kind: What the malicious stages do.
        stages: The malicious stages; several stages collude when they share a plan.
        rate: Probability in (0, 1] that the attack fires on an eligible unit.
        start: First step at which the attack may fire (never before).
        direction: For the tensor kinds and ``equivocate``: tamper with the forward activation
            or the backward gradient; for the tensor kinds also ``input``: forge the received
            activation and compute honestly on it.
        scale: The factor of ``scale``; must not be 1.
        noise: The relative magnitude of ``noise``: the added noise has standard deviation
            ``noise`` times the tensor's RMS.
        drift: The step size of ``weights``: each tampered update adds ``drift`` times a fixed
            unit-variance direction to every parameter; of ``optimizer``: each tampered step adds
            ``drift`` times that direction to every parameter's first moment; of ``grad_drift``:
            each tampered backward unit adds it to every parameter's accumulated gradient; of
            ``swap_weights``: each tampered step starts from weights moved that far.
        drift_seed: Seed of the fixed direction of ``weights``, ``optimizer``, ``grad_drift`` and
            ``swap_weights`` (the backdoor direction).
        bit: The bit ``bitflip`` flips in the element's integer view (0 is the least
            significant mantissa bit; 30 is the top exponent bit of a float32).
        seed: Seed of every random choice of the attack (when it fires, noise, positions).
        covers: Stages that mount nothing but collude with :attr:`stages`: as checkers they hide
            the tampering of those stages (a prover trace's ``covers`` role).
    """

    kind: AttackKind
    stages: frozenset[int]
    rate: float = 1.0
    start: int = 0
    direction: Direction = Direction.FORWARD
    scale: float = 10.0
    noise: float = 1e-2
    drift: float = 1e-3
    drift_seed: int = 0
    bit: int = 30
    seed: int = 0
    covers: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        for name in ("rate", "scale", "noise", "drift"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
                raise ValueError(f"the attack's {name} is out of range: {value}")
        object.__setattr__(self, "kind", AttackKind(self.kind))
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "stages", frozenset(int(s) for s in self.stages))
        object.__setattr__(self, "covers", frozenset(int(s) for s in self.covers))
        if self.covers & self.stages:
            raise ValueError(f"stages {sorted(self.covers & self.stages)} both attack and only cover")
        if self.covers and min(self.covers) < 0:
            raise ValueError(f"stage indices must be >= 0, got {sorted(self.covers)}")
        if not self.stages:
            raise ValueError("an attack needs at least one malicious stage")
        if min(self.stages) < 0:
            raise ValueError(f"stage indices must be >= 0, got {sorted(self.stages)}")
        if not (0.0 < self.rate <= 1.0) or math.isnan(self.rate):
            raise ValueError(f"the attack rate must be in (0, 1], got {self.rate}")
        if self.start < 0:
            raise ValueError(f"the start step must be >= 0, got {self.start}")
        if not math.isfinite(self.scale) or self.scale == 1.0:
            raise ValueError(f"the scale factor must be finite and not 1, got {self.scale}")
        if not (math.isfinite(self.noise) and self.noise > 0.0):
            raise ValueError(f"the relative noise magnitude must be a positive number, got {self.noise}")
        if not (math.isfinite(self.drift) and self.drift > 0.0):
            raise ValueError(f"the weight drift must be a positive number, got {self.drift}")
        if not 0 <= self.bit <= 63:
            raise ValueError(f"the bit index must be between 0 and 63, got {self.bit}")
        if self.kind is AttackKind.POISON_DATA and self.stages != frozenset({0}):
            raise ValueError(
                f"poison_data is mounted by stage 0 (which reads the data), not stages {sorted(self.stages)}"
            )

    @classmethod
    def from_cli(
        cls,
        kind: str,
        stages: str | Iterable[int],
        rate: float | str = 1.0,
        start: int | str = 0,
        *,
        num_stages: int | None = None,
        direction: str = "forward",
        scale: float | str = 10.0,
        noise: float | str = 1e-2,
        drift: float | str = 1e-3,
        drift_seed: int | str = 0,
        bit: int | str = 30,
        seed: int | str = 0,
        covers: str | Iterable[int] = (),
    ) -> AttackPlan:
        """Build a plan from command-line values (strings or numbers).

        Args:
            kind: An attack kind name (see :data:`ATTACK_KINDS`).
            stages: Comma-separated stage indices (``"1"``, ``"1,2"``) or an iterable of ints.
            rate: Firing probability in (0, 1].
            start: First step at which the attack may fire.
            num_stages: The pipeline's stage count; when given, every stage must be below it.
            direction: ``forward``, ``backward`` or ``input``.
            scale: See :class:`AttackPlan`.
            noise: See :class:`AttackPlan`.
            drift: See :class:`AttackPlan`.
            drift_seed: See :class:`AttackPlan`.
            bit: See :class:`AttackPlan`.
            seed: See :class:`AttackPlan`.
            covers: Comma-separated stages (or an iterable) that only collude, as checkers.

        Raises:
            ValueError: With a message naming the bad value and what is allowed.
        """
        names = [k.value for k in AttackKind]
        if kind not in names:
            raise ValueError(f"unknown attack kind {kind!r}; choose one of: {', '.join(names)}")
        directions = [d.value for d in Direction]
        if direction not in directions:
            raise ValueError(f"the attack direction must be one of {', '.join(directions)}, got {direction!r}")
        stage_set = _stage_set(stages, required=True)
        cover_set = _stage_set(covers, required=False)
        if num_stages is not None:
            bad = sorted(s for s in stage_set | cover_set if not 0 <= s < num_stages)
            if bad:
                raise ValueError(
                    f"stages {bad} do not exist in a pipeline of {num_stages} stages (0..{num_stages - 1})"
                )
        return cls(
            kind=AttackKind(kind),
            stages=stage_set,
            rate=_number(rate, "rate", float),
            start=_number(start, "start step", int),
            direction=Direction(direction),
            scale=_number(scale, "scale factor", float),
            noise=_number(noise, "relative noise magnitude", float),
            drift=_number(drift, "weight drift", float),
            drift_seed=_number(drift_seed, "drift seed", int),
            bit=_number(bit, "bit index", int),
            seed=_number(seed, "attack seed", int),
            covers=cover_set,
        )

    def active(self, stage: int, step: int, microbatch: int, attempt: int = 0) -> bool:
        """Whether the attack fires on ``stage``'s unit of ``(step, microbatch)``.

        False for an honest stage and before :attr:`start`; otherwise a deterministic draw that
        is true with probability :attr:`rate` (always true at rate 1). Update units (``weights``,
        ``optimizer``, ``swap_weights``) use ``microbatch = 0``; ``grad_drift`` uses the backward
        unit's micro-batch.
        ``attempt`` counts how often the step has been recomputed after
        a detection: each recomputation is a fresh draw (the first, ``attempt = 0``, is the
        draw of the unit alone).
        """
        if stage not in self.stages or step < self.start:
            return False
        if self.rate >= 1.0:
            return True
        parts: tuple[int, ...] = (stage, step, microbatch) if attempt == 0 else (stage, step, microbatch, attempt)
        draw: float = derive_seed(self.seed, "attack", "fire", self.kind.value, *parts) / _TWO_63
        return draw < self.rate

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (for ``summary.json`` and ``events.jsonl``)."""
        data = dataclasses.asdict(self)
        data["kind"] = self.kind.value
        data["direction"] = self.direction.value
        data["stages"] = sorted(self.stages)
        data["covers"] = sorted(self.covers)
        return data

    @classmethod
    def from_json(cls, data: Any) -> AttackPlan:
        """The inverse of :meth:`to_json`.

        Raises:
            ValueError: ``data`` is not such an object, or a value is out of range (the message
                names it).
        """
        if not isinstance(data, Mapping):
            raise ValueError("an attack plan must be a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown attack plan keys: {', '.join(unknown)}")
        if "kind" not in data or "stages" not in data:
            raise ValueError("an attack plan needs 'kind' and 'stages'")
        names = [k.value for k in AttackKind]
        if data["kind"] not in names:
            raise ValueError(f"unknown attack kind {data['kind']!r}; choose one of: {', '.join(names)}")
        directions = [d.value for d in Direction]
        if data.get("direction", "forward") not in directions:
            raise ValueError(f"the attack direction must be one of {', '.join(directions)}, got {data['direction']!r}")
        stages, covers = data["stages"], data.get("covers", [])
        for name, value in (("stages", stages), ("covers", covers)):
            if not isinstance(value, list | tuple) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in value
            ):
                raise ValueError(f"the attack plan's '{name}' must be a list of stage indices")
        try:
            return cls(**{**data, "stages": frozenset(stages), "covers": frozenset(covers)})
        except TypeError as exc:
            raise ValueError(f"bad attack plan: {exc}") from None


def _stage_set(stages: str | Iterable[int], required: bool) -> frozenset[int]:
    """Stage indices from ``"1,2"`` or an iterable of ints."""
    if not isinstance(stages, str):
        return frozenset(int(s) for s in stages)
    parts = [p.strip() for p in stages.split(",") if p.strip()]
    if not parts and required:
        raise ValueError("give the malicious stages as comma-separated indices, such as '1' or '1,2'")
    try:
        return frozenset(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"stage indices must be integers, got {stages!r}") from None


def _number(value: float | int | str, what: str, kind: type[float] | type[int]) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"the {what} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None


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
    """Apply a tensor kind (:data:`TENSOR_KINDS`) of ``plan`` to an inter-stage message.

    This does not consult :meth:`AttackPlan.active`; the caller checks it first.

    Args:
        plan: The attack plan; its kind must be in :data:`TENSOR_KINDS`.
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
            (:func:`~stagewarden.runtime.spotcheck.export_optimizer_state`); empty before the
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
    (:func:`stagewarden.runtime.spotcheck.referee`).
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
