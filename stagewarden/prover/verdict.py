"""Verdicts: what the prover says about each guarantee, as data that renders to text and to a
versioned JSON form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Version of the verdict JSON format (``stagewarden verify --format json``).
VERDICT_FORMAT_VERSION = 1

HOLDS = "holds"
VIOLATED = "violated"
UNKNOWN = "unknown"
VACUOUS = "vacuous"


@dataclass(frozen=True)
class AssumptionRef:
    """A spec assumption a proof rests on, and where the spec states it."""

    key: str
    text: str
    location: str  # "file:line"

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"key": self.key, "text": self.text, "location": self.location}


@dataclass(frozen=True)
class Figure:
    """The computed quantity of a guarantee beside its bound, e.g. a probability."""

    name: str
    value: float
    bound: float
    relation: str  # what the guarantee needs: ">=" or "<="
    exact: str | None = None  # the value as an exact rational, "p/q", when known
    display: str = ""
    bound_exact: str | None = None  # the bound as an exact rational, "p/q", when known

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        out: dict[str, Any] = {"name": self.name, "value": self.value, "bound": self.bound, "relation": self.relation}
        if self.exact is not None:
            out["exact"] = self.exact
        if self.bound_exact is not None:
            out["bound_exact"] = self.bound_exact
        return out


@dataclass
class GuaranteeResult:
    """The verdict for one guarantee."""

    id: str
    kind: str
    verdict: str
    summary: str
    figure: Figure | None = None
    assumptions: list[AssumptionRef] = field(default_factory=list)
    trivially: bool = False
    trace: dict[str, Any] | None = None
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON form (one entry of the ``guarantees`` list)."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "verdict": self.verdict,
            "summary": self.summary,
            "figure": self.figure.to_json() if self.figure else None,
            "trivially": self.trivially,
            "assumptions": [a.to_json() for a in self.assumptions],
            "trace": self.trace,
            "reason": self.reason,
            "notes": self.notes,
            "seconds": round(self.seconds, 4),
        }
        return out


@dataclass
class Report:
    """Every verdict for one spec."""

    spec_file: str
    spec_name: str
    guarantees: list[GuaranteeResult]
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all hold, 1 some violated, 2 vacuous (contradictory spec), 3 some unknown."""
        verdicts = {g.verdict for g in self.guarantees}
        if VACUOUS in verdicts:
            return 2
        if VIOLATED in verdicts:
            return 1
        if UNKNOWN in verdicts:
            return 3
        return 0

    def to_json(self) -> dict[str, Any]:
        """The versioned JSON document printed by ``verify --format json``."""
        return {
            "version": VERDICT_FORMAT_VERSION,
            "spec": self.spec_file,
            "name": self.spec_name,
            "exit_code": self.exit_code,
            "notes": self.notes,
            "guarantees": [g.to_json() for g in self.guarantees],
        }

    def by_id(self, guarantee_id: str) -> GuaranteeResult:
        """The result for one guarantee id."""
        for result in self.guarantees:
            if result.id == guarantee_id:
                return result
        raise KeyError(guarantee_id)
