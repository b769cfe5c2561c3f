"""Attack plans: who attacks (a set of stages, colluding or not), what they do (an
:class:`AttackKind`), from which step and how often, parsed from the command line or JSON.

Whether the attack fires on a unit is a deterministic function of the plan's seed and the unit,
so every process (the attacker, the verifier replaying a run, a test) agrees on which units
were tampered.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any

from stagewarden.runtime.seeding import derive_seed

_TWO_63 = float(2**63)


class AttackKind(enum.StrEnum):
    """What a malicious stage does; :data:`~stagewarden.runtime.attacks.plan.ATTACK_KINDS` has a one-line
    description of each."""

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


class FiringUnit(enum.StrEnum):
    """What one draw of the attack's rate decides."""

    UNIT = "unit"
    """Each unit (micro-batch of a step's forward or backward, or the update) is drawn on its own."""
    STEP = "step"
    """One draw per computation of a step decides for every unit of that computation at once. This
    is the paper's rate, which is per training iteration. A recomputation of the step draws again."""


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

#: Kinds applied by :func:`~stagewarden.runtime.attacks.tamper_tensor` to an inter-stage message
#: (activation or gradient).
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
        per: What one draw of :attr:`rate` decides: each unit on its own (``unit``, the default)
            or every unit of a step computation at once (``step``, the paper's per-iteration rate).
        pipelines: Which pipelines' workers of :attr:`stages` attack (the pipelines of a run with
            replicas or ``replicate`` copies, :class:`~stagewarden.runtime.layout.Layout`); pipeline
            0 is replica 0 (its copy 0). Several pipelines collude: two copies of one replica that
            tamper alike outvote an honest third.
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
    per: FiringUnit = FiringUnit.UNIT
    pipelines: frozenset[int] = frozenset({0})

    def __post_init__(self) -> None:
        for name in ("rate", "scale", "noise", "drift"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
                raise ValueError(f"the attack's {name} is out of range: {value}")
        object.__setattr__(self, "kind", AttackKind(self.kind))
        object.__setattr__(self, "direction", Direction(self.direction))
        object.__setattr__(self, "per", FiringUnit(self.per))
        object.__setattr__(self, "stages", frozenset(int(s) for s in self.stages))
        object.__setattr__(self, "covers", frozenset(int(s) for s in self.covers))
        object.__setattr__(self, "pipelines", frozenset(int(p) for p in self.pipelines))
        if not self.pipelines or min(self.pipelines) < 0:
            raise ValueError(f"the attacking pipelines must be indices >= 0, got {sorted(self.pipelines)}")
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
        per: str = "unit",
        pipelines: str | Iterable[int] = (0,),
    ) -> AttackPlan:
        """Build a plan from command-line values (strings or numbers).

        Args:
            kind: An attack kind name (see :data:`~stagewarden.runtime.attacks.plan.ATTACK_KINDS`).
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
            per: ``unit`` or ``step``: what one draw of the rate decides (see :class:`AttackPlan`).
            pipelines: Comma-separated pipelines (or an iterable) whose workers attack.

        Raises:
            ValueError: With a message naming the bad value and what is allowed.
        """
        names = [k.value for k in AttackKind]
        if kind not in names:
            raise ValueError(f"unknown attack kind {kind!r}; choose one of: {', '.join(names)}")
        directions = [d.value for d in Direction]
        if direction not in directions:
            raise ValueError(f"the attack direction must be one of {', '.join(directions)}, got {direction!r}")
        units = [u.value for u in FiringUnit]
        if per not in units:
            raise ValueError(f"the attack's firing unit must be one of {', '.join(units)}, got {per!r}")
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
            per=FiringUnit(per),
            pipelines=_stage_set(pipelines, required=True),
        )

    def active(self, stage: int, step: int, microbatch: int, attempt: int = 0) -> bool:
        """Whether the attack fires on ``stage``'s unit of ``(step, microbatch)``.

        False for an honest stage and before :attr:`start`; otherwise a deterministic draw that
        is true with probability :attr:`rate` (always true at rate 1). Update units (``weights``,
        ``optimizer``, ``swap_weights``) use ``microbatch = 0``; ``grad_drift`` uses the backward
        unit's micro-batch.
        ``attempt`` counts how often the step has been recomputed after
        a detection: each recomputation is a fresh draw (the first, ``attempt = 0``, is the
        draw of the unit alone). With :attr:`per` ``step`` the draw leaves out the unit: every
        unit of one computation of the step fires or none does.
        """
        if stage not in self.stages or step < self.start:
            return False
        if self.rate >= 1.0:
            return True
        unit: tuple[int, ...] = (stage, step) if self.per is FiringUnit.STEP else (stage, step, microbatch)
        parts = unit if attempt == 0 else (*unit, attempt)
        draw: float = derive_seed(self.seed, "attack", "fire", self.kind.value, *parts) / _TWO_63
        return draw < self.rate

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (for ``summary.json`` and ``events.jsonl``)."""
        data = dataclasses.asdict(self)
        data["kind"] = self.kind.value
        data["direction"] = self.direction.value
        data["stages"] = sorted(self.stages)
        data["covers"] = sorted(self.covers)
        # The default is left out, so that plans written before the field existed read and
        # compare the same.
        if self.per is FiringUnit.UNIT:
            del data["per"]
        else:
            data["per"] = self.per.value
        if self.pipelines == frozenset({0}):
            del data["pipelines"]
        else:
            data["pipelines"] = sorted(self.pipelines)
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
        units = [u.value for u in FiringUnit]
        if data.get("per", "unit") not in units:
            raise ValueError(f"the attack's firing unit must be one of {', '.join(units)}, got {data['per']!r}")
        stages, covers, pipelines = data["stages"], data.get("covers", []), data.get("pipelines", [0])
        for name, value in (("stages", stages), ("covers", covers), ("pipelines", pipelines)):
            if not isinstance(value, list | tuple) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in value
            ):
                raise ValueError(f"the attack plan's '{name}' must be a list of indices")
        try:
            sets = {"stages": frozenset(stages), "covers": frozenset(covers), "pipelines": frozenset(pipelines)}
            return cls(**{**data, **sets})
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
