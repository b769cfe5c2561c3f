"""Comparing two versions of a protocol by their verdicts: which guarantees a change gains or
loses (matched by guarantee id), with the new attack for each guarantee that became violated.
``stagewarden diff`` turns a regression into exit code 1, a gate for CI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stagewarden.prover.prover import Limits, verify
from stagewarden.prover.verdict import HOLDS, UNKNOWN, VACUOUS, VIOLATED, GuaranteeResult, Report
from stagewarden.spec import LoadedSpec

#: Version of the JSON document that ``stagewarden diff --format json`` prints.
DIFF_FORMAT_VERSION = 1

#: How a guarantee changed between the old and the new version.
REGRESSED = "regressed"
IMPROVED = "improved"
CHANGED = "changed"
ADDED = "added"
REMOVED = "removed"
UNCHANGED = "unchanged"

# How good a verdict is: a proof beats "could not decide", which beats a counterexample or a
# contradictory spec.
_RANK = {HOLDS: 2, UNKNOWN: 1, VIOLATED: 0, VACUOUS: 0}


@dataclass
class GuaranteeChange:
    """One guarantee id in the old version, the new one or both, and what happened to it."""

    id: str
    change: str
    old: GuaranteeResult | None
    new: GuaranteeResult | None

    @property
    def kind(self) -> str:
        """The guarantee's kind (the new version's when both have it)."""
        result = self.new or self.old
        assert result is not None
        kind: str = result.kind
        return kind

    @property
    def old_verdict(self) -> str | None:
        """The verdict in the old version (None when the guarantee was added)."""
        return self.old.verdict if self.old else None

    @property
    def new_verdict(self) -> str | None:
        """The verdict in the new version (None when the guarantee was removed)."""
        return self.new.verdict if self.new else None

    @property
    def regression(self) -> bool:
        """True when the change makes the protocol worse (a verdict got worse, or a guarantee
        was added without a proof)."""
        return self.change == REGRESSED or (self.change == ADDED and self.new_verdict != HOLDS)

    @property
    def trace(self) -> dict[str, Any] | None:
        """The new version's attack trace when the guarantee is violated there and was not before."""
        if self.new is None or self.new.verdict != VIOLATED or self.old_verdict == VIOLATED:
            return None
        trace: dict[str, Any] | None = self.new.trace
        return trace

    def to_json(self) -> dict[str, Any]:
        """JSON form (one entry of the ``guarantees`` list)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "change": self.change,
            "regression": self.regression,
            "old": None
            if self.old is None
            else {"kind": self.old.kind, "verdict": self.old.verdict, "summary": self.old.summary},
            "new": None
            if self.new is None
            else {"kind": self.new.kind, "verdict": self.new.verdict, "summary": self.new.summary},
            "trace": self.trace,
        }


@dataclass
class DiffResult:
    """Every guarantee of two reports, matched by id, in the new version's order (removed ones last)."""

    old: Report
    new: Report
    entries: list[GuaranteeChange] = field(default_factory=list)

    @property
    def changes(self) -> list[GuaranteeChange]:
        """The entries whose verdict changed, or that only one version has."""
        return [e for e in self.entries if e.change != UNCHANGED]

    @property
    def regressions(self) -> list[GuaranteeChange]:
        """The entries that make the new version worse (see :attr:`GuaranteeChange.regression`)."""
        return [e for e in self.entries if e.regression]

    def of(self, change: str) -> list[GuaranteeChange]:
        """The entries with one kind of change (``REGRESSED``, ``IMPROVED``, ...)."""
        return [e for e in self.entries if e.change == change]

    @property
    def exit_code(self) -> int:
        """0 when no guarantee got worse, 1 when some regressed."""
        return 1 if self.regressions else 0

    def to_json(self) -> dict[str, Any]:
        """The versioned JSON document printed by ``diff --format json``."""
        counts = {c: len(self.of(c)) for c in (REGRESSED, IMPROVED, CHANGED, ADDED, REMOVED, UNCHANGED)}
        return {
            "version": DIFF_FORMAT_VERSION,
            "old": {"spec": self.old.spec_file, "name": self.old.spec_name},
            "new": {"spec": self.new.spec_file, "name": self.new.spec_name},
            "exit_code": self.exit_code,
            "regressions": len(self.regressions),
            "counts": counts,
            "guarantees": [e.to_json() for e in self.entries],
        }


def _change(old: GuaranteeResult, new: GuaranteeResult) -> str:
    if old.verdict == new.verdict:
        return UNCHANGED
    if _RANK[new.verdict] < _RANK[old.verdict]:
        return REGRESSED
    if _RANK[new.verdict] > _RANK[old.verdict]:
        return IMPROVED
    return CHANGED  # violated <-> vacuous


def diff_reports(old: Report, new: Report) -> DiffResult:
    """Match the guarantees of two reports by id and classify each change.

    A guarantee *regressed* when its verdict got worse (holds, then unknown, then violated or
    vacuous) and *improved* when it got better; one that only the new report has is *added*
    (a regression unless it holds), one that only the old report has is *removed*.
    """
    old_by_id = {g.id: g for g in old.guarantees}
    new_ids = {g.id for g in new.guarantees}
    entries = []
    for result in new.guarantees:
        before = old_by_id.get(result.id)
        entries.append(GuaranteeChange(result.id, ADDED if before is None else _change(before, result), before, result))
    entries += [GuaranteeChange(g.id, REMOVED, g, None) for g in old.guarantees if g.id not in new_ids]
    return DiffResult(old, new, entries)


def diff_specs(old: LoadedSpec, new: LoadedSpec, limits: Limits | None = None) -> DiffResult:
    """Verify two specs (two versions of a protocol) and compare their verdicts."""
    return diff_reports(verify(old, limits=limits), verify(new, limits=limits))
