"""The outcome of a conformance check: the stable finding codes, each finding with where it points
(the spec location and the run file), the observed spot-check rate, and the report that gathers them."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from stagewarden.attest.audit import Severity
from stagewarden.guarantee_observation import GuaranteeObservation


class ConformanceError(ValueError):
    """A run directory whose configuration cannot be read, so it cannot be compared with a spec."""


class ConformanceCode(enum.StrEnum):
    """Stable codes of conformance findings (they never change meaning)."""

    SPEC_STAGES = "SPEC_STAGES"
    SPEC_REPLICAS = "SPEC_REPLICAS"
    SPEC_MICROBATCHES = "SPEC_MICROBATCHES"
    SPEC_STANDBY = "SPEC_STANDBY"
    SPEC_HORIZON = "SPEC_HORIZON"
    SPEC_RECEIPTS = "SPEC_RECEIPTS"
    SPEC_ATTESTATION = "SPEC_ATTESTATION"
    SPEC_CHECK = "SPEC_CHECK"
    SPEC_RATE = "SPEC_RATE"
    SPEC_RESPONSE = "SPEC_RESPONSE"
    SPEC_CHECKPOINTS = "SPEC_CHECKPOINTS"
    WORKER_UNATTESTED = "WORKER_UNATTESTED"
    RATE_OBSERVED = "RATE_OBSERVED"
    SAMPLE_MISMATCH = "SAMPLE_MISMATCH"
    SAMPLE_COUNTS = "SAMPLE_COUNTS"
    DETECTION_UNANSWERED = "DETECTION_UNANSWERED"
    RESPONSE_DEPARTURE = "RESPONSE_DEPARTURE"
    GUARANTEE_BROKEN = "GUARANTEE_BROKEN"
    EVENTS_UNREADABLE = "EVENTS_UNREADABLE"


@dataclasses.dataclass(frozen=True)
class ConformanceFinding:
    """One way the run departs from its spec.

    Attributes:
        code: What kind of departure.
        severity: Error (fails the audit) or warning.
        message: What departs, in words.
        spec: The spec location (``file:line:column``) of the setting or guarantee concerned.
        file: The run directory file the evidence is in.
        workers: Workers the finding names.
        step: The step concerned.
        stage: The stage concerned.
        guarantee: The guarantee id concerned.
    """

    code: ConformanceCode
    severity: Severity
    message: str
    spec: str | None = None
    file: str | None = None
    workers: tuple[str, ...] = ()
    step: int | None = None
    stage: int | None = None
    guarantee: str | None = None

    @property
    def where(self) -> str:
        """A short location: the spec position, then the run file, stage and step."""
        parts = [p for p in (self.spec, self.file) if p]
        if self.guarantee:
            parts.append(f"guarantee={self.guarantee}")
        if self.stage is not None:
            parts.append(f"stage={self.stage}")
        if self.step is not None:
            parts.append(f"step={self.step}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The finding with the audit finding's keys (``null`` where they do not apply) plus
        ``spec`` and ``guarantee``."""
        return {
            "code": str(self.code),
            "severity": str(self.severity),
            "message": self.message,
            "workers": list(self.workers),
            "file": self.file,
            "record": None,
            "offset": None,
            "step": self.step,
            "micro_batch": None,
            "unit": None,
            "stage": self.stage,
            "spec": self.spec,
            "guarantee": self.guarantee,
        }


@dataclasses.dataclass(frozen=True)
class RateObservation:
    """The spot-check rate the run shows.

    Attributes:
        sampled: Units sampled.
        eligible: Units that could have been sampled.
        interval: The Clopper-Pearson interval of the rate.
        confidence: Its confidence.
        expected: The spec's rate.
        source: Where the counts come from (``events.jsonl``, or estimated from ``summary.json``).
    """

    sampled: int
    eligible: int
    interval: tuple[float, float]
    confidence: float
    expected: float
    source: str

    @property
    def rate(self) -> float:
        """The observed rate."""
        return self.sampled / self.eligible

    @property
    def consistent(self) -> bool:
        """Whether the spec's rate lies in the interval."""
        return self.interval[0] <= self.expected <= self.interval[1]

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "sampled": self.sampled,
            "eligible": self.eligible,
            "rate": self.rate,
            "interval": list(self.interval),
            "confidence": self.confidence,
            "expected": self.expected,
            "consistent": self.consistent,
            "source": self.source,
        }


@dataclasses.dataclass(frozen=True)
class ConformanceReport:
    """The outcome of checking a run against a spec.

    Attributes:
        spec_file: The spec's file.
        spec_name: Its name.
        findings: The departures found.
        guarantees: Each guarantee and what the run shows about it.
        rate: The observed spot-check rate (``None`` when the spec has no spot check).
        attack: The attack plan the run records (its ground truth), or ``None`` for none.
        unchecked: What the spec assumes that no run can show.
    """

    spec_file: str
    spec_name: str
    findings: tuple[ConformanceFinding, ...]
    guarantees: tuple[GuaranteeObservation, ...]
    rate: RateObservation | None
    attack: dict[str, Any] | None
    unchecked: tuple[str, ...]

    @property
    def errors(self) -> tuple[ConformanceFinding, ...]:
        """The error findings."""
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def clean(self) -> bool:
        """True when no finding is an error."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """The ``conformance`` object of the audit's JSON report."""
        return {
            "spec": self.spec_file,
            "name": self.spec_name,
            "clean": self.clean,
            "rate": None if self.rate is None else self.rate.to_json(),
            "attack": self.attack,
            "guarantees": [g.to_json() for g in self.guarantees],
            "unchecked": list(self.unchecked),
        }
