"""Typed models of the threat-model spec: topology, trust, adversary, defence and guarantees.

The models check types, ranges and enumerations. Checks that need the whole spec (stage
indices against the topology, unique guarantee ids, ...) live in :mod:`stagewarden.spec.semantics`.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from stagewarden.spec import limits

#: Every adversary capability, in the order of the spec language reference.
CAPABILITIES: tuple[str, ...] = (
    "tamper_activations",
    "tamper_gradients",
    "tamper_weights",
    "poison_data",
    "equivocate",
    "withhold",
    "false_accuse",
)

#: Capabilities that change the content of the computation; a ``detection`` guarantee
#: without ``of`` covers those of them the adversary has.
TAMPERING_CAPABILITIES: tuple[str, ...] = (
    "tamper_activations",
    "tamper_gradients",
    "tamper_weights",
    "poison_data",
    "equivocate",
)

RESPONSES: tuple[str, ...] = ("eject", "rollback", "skip_stage", "restart")

Capability = Literal[
    "tamper_activations",
    "tamper_gradients",
    "tamper_weights",
    "poison_data",
    "equivocate",
    "withhold",
    "false_accuse",
]
Response = Literal["eject", "rollback", "skip_stage", "restart"]

_WORKER_RE = re.compile(r"^(0|[1-9][0-9]*):(0|[1-9][0-9]*)$")
# Digit and exponent counts are bounded: Fraction("1e-99999999") would take minutes to build.
_PERCENT_RE = re.compile(r"^\s*([0-9]{1,20}(?:\.[0-9]{1,20})?)\s*%\s*$")
_COMPLEMENT_RE = re.compile(r"^\s*1\s*-\s*([0-9]{1,50}(?:\.[0-9]{0,50})?(?:[eE][-+]?[0-9]{1,3})?)\s*$")


def _check_worker_ref(value: int | str) -> int | str:
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a stage index must be >= 0")
        return value
    if not _WORKER_RE.match(value):
        raise ValueError(f"{value!r} is not a worker: write a stage index (3) or 'stage:replica' ('3:1')")
    return value


def _check_budget(value: int | str) -> int | str:
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value
    match = _PERCENT_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a budget: write a whole number (2) or a percentage ('10%')")
    if Fraction(match.group(1)) > 100:
        raise ValueError(f"{value!r} is more than 100%")
    return value


def probability_fraction(value: float | str) -> Fraction:
    """The exact value of a probability written as a number or as ``"1 - 1e-6"``."""
    if isinstance(value, str):
        match = _COMPLEMENT_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a probability: write a number in [0, 1] or '1 - EPSILON'")
        return 1 - Fraction(match.group(1))
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"probability {value!r} is not in [0, 1]")
    # str() keeps the decimal the user wrote (0.999999), not its binary approximation.
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def _check_probability(value: float | str) -> float | str:
    exact = probability_fraction(value)
    if not 0 <= exact <= 1:
        raise ValueError(f"probability {value!r} is not in [0, 1]")
    return value


WorkerRef = Annotated[
    int | str,
    AfterValidator(_check_worker_ref),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _WORKER_RE.pattern}]}),
]
Budget = Annotated[
    int | str,
    AfterValidator(_check_budget),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _PERCENT_RE.pattern}]}),
]
Probability = Annotated[
    float | str,
    AfterValidator(_check_probability),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1},
                {"type": "string", "pattern": _COMPLEMENT_RE.pattern},
            ]
        }
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Topology(_Model):
    """The pipeline: stages, data-parallel replicas, micro-batches, horizon and spare workers."""

    stages: int = Field(
        ge=2,
        le=limits.MAX_STAGES,
        description="Number of pipeline stages S (>= 2). Stage 0 embeds the data; stage S-1 computes the loss.",
    )
    replicas: int = Field(
        1, ge=1, le=limits.MAX_REPLICAS, description="Data-parallel replicas R (>= 1); replica r is a whole pipeline."
    )
    microbatches: int = Field(1, ge=1, le=limits.MAX_MICROBATCHES, description="Micro-batches per optimizer step.")
    steps: int = Field(1000, ge=1, le=limits.MAX_STEPS, description="Horizon H: optimizer steps the guarantees cover.")
    standby: int = Field(
        0, ge=0, le=limits.MAX_STANDBY, description="Spare workers that can take over an ejected worker."
    )

    @property
    def workers(self) -> int:
        """Active workers, S * R (standby not included)."""
        return self.stages * self.replicas


class Trust(_Model):
    """What the spec assumes about who is honest and what runs in a TEE."""

    honest: list[WorkerRef] = Field(
        default_factory=list,
        description="Stages (an integer: every replica of the stage) or workers ('stage:replica') assumed honest.",
    )
    tee: list[WorkerRef] = Field(
        default_factory=list,
        description="Stages or workers running in an attested TEE (counts only with defense.attestation).",
    )
    coordinator: Literal["trusted", "untrusted"] = Field(
        "trusted", description="Whether the coordinator (admission, receipts, disputes) is trusted."
    )


class Faults(_Model):
    """Honest hardware that fails."""

    crash: int = Field(0, ge=0, description="Number of workers that may crash-stop.")
    silent_corruption: Probability = Field(
        0.0, description="Per-unit probability that an honest unit is silently wrong (SDC)."
    )


class Adversary(_Model):
    """The attacker's budget and powers."""

    max_malicious: Budget = Field(
        description=(
            "Malicious workers: a whole number, or a percentage of all workers (standby included), rounded down."
        )
    )
    collusion: bool = Field(True, description="Malicious workers cover for each other when they check each other.")
    tee_compromise: bool = Field(
        False, description="A TEE worker may be malicious (it then counts towards max_malicious)."
    )
    capabilities: list[Capability] = Field(min_length=1, description="What a malicious worker may do (non-empty).")
    faults: Faults = Field(default_factory=Faults, description="Honest hardware faults.")


class RedundantNeighbourCheck(_Model):
    """Worker (s+1):r recomputes every unit of s:r with its own copy of stage s (Lu et al. 2024)."""

    scheme: Literal["redundant_neighbour"]
    input_via: Literal["coordinator", "upstream", "checked_worker"] = Field(
        "coordinator",
        description=(
            "How the checker gets the checked unit's input: "
            "a trusted relay, the upstream worker s-1, or the checked worker itself."
        ),
    )


class SpotCheck(_Model):
    """Each unit is sampled with probability ``rate`` after it is committed and re-executed."""

    scheme: Literal["spot_check"]
    rate: float = Field(gt=0, le=1, description="Sampling probability p in (0, 1].")
    verifier: Literal["coordinator", "tee", "peer"] = Field(
        "coordinator", description="Who re-executes a sampled unit."
    )


class ReplicateCheck(_Model):
    """``factor`` workers compute every unit; any disagreement is detected."""

    scheme: Literal["replicate"]
    factor: int = Field(ge=2, le=limits.MAX_REPLICATION_FACTOR, description="Workers k >= 2 computing every unit.")
    resolve: Literal["majority", "referee"] = Field(
        "majority", description="Who decides whom to blame on disagreement."
    )


class StatisticalCheck(_Model):
    """A cheap detector on inter-stage messages (EMA-style bands)."""

    scheme: Literal["statistical"]
    power: float = Field(
        ge=0,
        le=1,
        description="Probability q of flagging a tampered message whose relative deviation is at least min_deviation.",
    )
    min_deviation: float = Field(ge=0, description="Relative deviation d below which a tamper passes.")


class RobustAggregationCheck(_Model):
    """Masks the corrupted weight updates of up to :meth:`masks` replicas; detects nothing."""

    scheme: Literal["robust_aggregation"]
    rule: Literal["median", "trimmed_mean", "krum"] = Field("median", description="Aggregation rule across replicas.")

    def masks(self, replicas: int) -> int:
        """How many corrupted replicas of ``replicas`` the rule outvotes by construction: fewer than
        half (``floor((R - 1) / 2)``) for ``median`` and ``trimmed_mean``; for ``krum`` the ``f``
        with ``R >= 2f + 3`` (Blanchard et al. 2017), ``floor((R - 3) / 2)``, none below 3 replicas."""
        if self.rule == "krum":
            return max(0, (replicas - 3) // 2)
        return max(0, (replicas - 1) // 2)


Check = Annotated[
    RedundantNeighbourCheck | SpotCheck | ReplicateCheck | StatisticalCheck | RobustAggregationCheck,
    Field(discriminator="scheme"),
]


def _eject_only() -> list[Response]:
    """The default response to a detection: eject the convicted worker."""
    return ["eject"]


class Defense(_Model):
    """The protocol's protections and its response to a detection."""

    receipts: bool = Field(False, description="Signed per-unit computation receipts and signed inter-stage messages.")
    attestation: bool = Field(
        False, description="Receipt keys bound to attested identities (needed for trust.tee to count)."
    )
    data_commitment: bool = Field(
        False, description="Training data committed (Merkle root); stage 0 proves each batch."
    )
    checks: list[Check] = Field(default_factory=list, description="Checks; several combine.")
    response: list[Response] = Field(
        default_factory=_eject_only, min_length=1, description="What happens on a detection."
    )
    checkpoint_every: int = Field(
        50, ge=1, le=limits.MAX_CHECKPOINT_EVERY, description="Steps between verified checkpoints."
    )


class _Guarantee(_Model):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", description="Unique name of the guarantee.")


class DetectionGuarantee(_Guarantee):
    """Every tampered unit is detected with probability at least ``probability``."""

    kind: Literal["detection"]
    of: list[Capability] | None = Field(
        None,
        min_length=1,
        description="Capabilities covered, non-empty (default: every tampering capability the adversary has).",
    )
    probability: Probability = Field(1.0, description="Minimum per-unit detection probability P.")


class BoundedDamageGuarantee(_Guarantee):
    """Pr[more than ``max_undetected`` tampered units stay in the model] <= 1 - ``probability``."""

    kind: Literal["bounded_damage"]
    max_undetected: int = Field(
        ge=0, le=limits.MAX_UNDETECTED, description="K: tampered units that may end up in the model undetected."
    )
    probability: Probability = Field(
        description="P: the bound must hold with at least this probability (a number, or '1 - 1e-6')."
    )


class NoFramingGuarantee(_Guarantee):
    """No honest worker is ever blamed, ejected or skipped as a culprit."""

    kind: Literal["no_framing"]


class LivenessGuarantee(_Guarantee):
    """Every stage of some replica keeps a worker for the whole horizon."""

    kind: Literal["liveness"]


class DataIntegrityGuarantee(_Guarantee):
    """Every sample that reaches the model comes from the committed data set."""

    kind: Literal["data_integrity"]


class OverheadGuarantee(_Guarantee):
    """Expected extra compute (and memory) of the checks is within the bound."""

    kind: Literal["overhead"]
    max_compute: float = Field(ge=0, description="Maximum extra compute, as a fraction of unprotected training.")
    max_memory: float | None = Field(None, ge=0, description="Maximum extra memory, as a fraction (optional).")


Guarantee = Annotated[
    DetectionGuarantee
    | BoundedDamageGuarantee
    | NoFramingGuarantee
    | LivenessGuarantee
    | DataIntegrityGuarantee
    | OverheadGuarantee,
    Field(discriminator="kind"),
]

GUARANTEE_KINDS: tuple[str, ...] = (
    "detection",
    "bounded_damage",
    "no_framing",
    "liveness",
    "data_integrity",
    "overhead",
)
CHECK_SCHEMES: tuple[str, ...] = (
    "redundant_neighbour",
    "spot_check",
    "replicate",
    "statistical",
    "robust_aggregation",
)


class Spec(_Model):
    """A whole threat-model spec (format version 1)."""

    version: Literal[1] = Field(description="Spec format version; must be 1.")
    name: str = Field(min_length=1, description="Name of the protocol or scenario.")
    description: str = Field("", description="Free text.")
    topology: Topology
    trust: Trust = Field(default_factory=Trust)
    adversary: Adversary
    defense: Defense = Field(default_factory=Defense)
    guarantees: list[Guarantee] = Field(min_length=1, description="At least one guarantee; ids unique.")

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_an_integer(cls, value: object) -> object:
        # Literal[1] alone accepts true and 1.0, which equal 1 in Python.
        if isinstance(value, bool) or not isinstance(value, int):
            raise PydanticCustomError("literal_error", "Input should be 1", {"expected": "1"})
        return value

    @property
    def replication_factor(self) -> int:
        """Workers computing each unit (the ``replicate`` check's factor, or 1 without it)."""
        factors = [c.factor for c in self.defense.checks if isinstance(c, ReplicateCheck)]
        return max(factors, default=1)

    @property
    def total_workers(self) -> int:
        """Every worker the adversary could occupy, S * R * k computing workers (k the
        replication factor) plus standby."""
        return self.topology.workers * self.replication_factor + self.topology.standby

    @property
    def malicious_budget(self) -> int:
        """``max_malicious`` resolved to a count (a percentage of all workers, rounded down)."""
        budget = self.adversary.max_malicious
        if isinstance(budget, int):
            return budget
        match = _PERCENT_RE.match(budget)
        assert match is not None  # validated on load
        return int(Fraction(match.group(1)) * self.total_workers / 100)
