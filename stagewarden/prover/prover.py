"""The prover: one Z3 check per guarantee, a vacuity check before any "holds", minimal
counterexamples (fewest malicious workers, found by increasing cardinality bounds) and minimal explanations
(deletion-minimised unsat cores over assumption literals).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stagewarden.prover.explain import assumption_ref
from stagewarden.prover.guarantees.bounded_damage import BoundedDamageCheck
from stagewarden.prover.guarantees.data_integrity import DataIntegrityCheck
from stagewarden.prover.guarantees.detection import DetectionCheck
from stagewarden.prover.guarantees.liveness import LivenessCheck
from stagewarden.prover.guarantees.no_framing import NoFramingCheck
from stagewarden.prover.guarantees.overhead import OverheadCheck
from stagewarden.prover.session import (
    CANONICAL_WORKERS,
    MINIMALITY_EFFORT_MS,
    RECEIPT_COMPUTE,
    STATISTICAL_COMPUTE,
    Limits,
    SolverGaveUp,
)
from stagewarden.prover.verdict import UNKNOWN, VACUOUS, GuaranteeResult, Report
from stagewarden.spec import (
    BoundedDamageGuarantee,
    DataIntegrityGuarantee,
    DetectionGuarantee,
    LivenessGuarantee,
    LoadedSpec,
    NoFramingGuarantee,
    OverheadGuarantee,
)

__all__ = [
    "CANONICAL_WORKERS",
    "MINIMALITY_EFFORT_MS",
    "RECEIPT_COMPUTE",
    "STATISTICAL_COMPUTE",
    "Limits",
    "Prover",
    "SolverGaveUp",
    "verify",
]


class Prover(DetectionCheck, BoundedDamageCheck, NoFramingCheck, LivenessCheck, DataIntegrityCheck, OverheadCheck):
    """Checks the guarantees of one loaded spec."""

    def check(self, guarantee_id: str) -> GuaranteeResult:
        """The verdict for one guarantee."""
        guarantee = next(g for g in self.spec.guarantees if g.id == guarantee_id)
        if self.dynamics and not self._kinds_share_encoding():
            # Only bounded_damage counts second tries in a position, so only its encoding has
            # them; liveness unrolls its runs event by event (stagewarden.prover.liveness_runs),
            # where the per-position summary would only slow it down.
            if isinstance(guarantee, BoundedDamageGuarantee) and not self.second_tries:
                return self._delegate(guarantee_id, dynamics=True, second_tries=True)
            if isinstance(guarantee, LivenessGuarantee):
                return self._delegate(guarantee_id, dynamics=False, second_tries=False)
        started = time.monotonic()
        self._deadline = started + self.limits.timeout if self.limits.timeout else None
        try:
            contradiction = self.vacuity()
            if contradiction is not None:
                result = GuaranteeResult(
                    guarantee.id,
                    guarantee.kind,
                    VACUOUS,
                    "the spec's assumptions contradict each other: no honest run is possible",
                    assumptions=[assumption_ref(self.enc, a) for a in contradiction],
                )
            else:
                # Each handler takes its own guarantee model; the lookup by type pairs them up.
                handlers: dict[type, Callable[[Any], GuaranteeResult]] = {
                    DetectionGuarantee: self._detection,
                    BoundedDamageGuarantee: self._bounded_damage,
                    NoFramingGuarantee: self._no_framing,
                    LivenessGuarantee: self._liveness,
                    DataIntegrityGuarantee: self._data_integrity,
                    OverheadGuarantee: self._overhead,
                }
                handler = handlers[type(guarantee)]
                self.last_minimal = True
                self._reset_solver()
                result = handler(guarantee)
                if result.trace is not None and result.kind not in ("bounded_damage", "overhead"):
                    result.trace["#meta"]["minimal"] = self.last_minimal
                    if not self.last_minimal:
                        result.notes.append(
                            "the counterexample is valid but was not proven to use the fewest malicious "
                            "workers within the effort limit"
                        )
        except SolverGaveUp as exc:
            reason = self._explain_give_up(str(exc) or "unknown")
            result = GuaranteeResult(
                guarantee.id, guarantee.kind, UNKNOWN, f"the solver gave up: {reason}", reason=reason
            )
        finally:
            self._deadline = None
        result.seconds = time.monotonic() - started
        result.notes = self._notes(guarantee) + result.notes
        return result

    def _delegate(self, guarantee_id: str, *, dynamics: bool, second_tries: bool) -> GuaranteeResult:
        """Check one guarantee on a session with another encoding (built once per kind)."""
        key = (dynamics, second_tries)
        session = self._sessions.get(key)
        if session is None:
            session = Prover(self.loaded, self.limits, dynamics=dynamics, second_tries=second_tries)
            self._sessions[key] = session
        # Whether an honest run exists does not depend on the encoding: ask it once.
        if self._vacuity is not None:
            session._vacuity = self._vacuity
        result = session.check(guarantee_id)
        self._vacuity = session._vacuity
        return result

    def _explain_give_up(self, reason: str) -> str:
        limits = []
        if self.limits.timeout is not None:
            limits.append(f"--timeout {self.limits.timeout:g} s")
        if self.limits.rlimit is not None:
            limits.append(f"--rlimit {self.limits.rlimit}")
        if limits and ("cancel" in reason or "timeout" in reason or "resource" in reason):
            return f"a solver limit was reached ({' / '.join(limits)}; z3: {reason})"
        return f"z3 answered unknown: {reason}" if not reason.startswith("timeout") else reason

    def _notes(self, guarantee: object) -> list[str]:
        notes = []
        if self.spec.trust.tee and not self.spec.defense.attestation and not isinstance(guarantee, OverheadGuarantee):
            notes.append(
                "trust.tee is only a claim without defense.attestation: the prover treats those workers as untrusted"
            )
        return notes


def verify(
    loaded: LoadedSpec,
    guarantee_ids: list[str] | None = None,
    limits: Limits | None = None,
    progress: Callable[[str, GuaranteeResult | None], None] | None = None,
) -> Report:
    """Check the guarantees of a loaded spec (all of them, or those in ``guarantee_ids``)."""
    prover = Prover(loaded, limits)
    ids = guarantee_ids or [g.id for g in loaded.spec.guarantees]
    results = []
    for gid in ids:
        if progress:
            progress(gid, None)
        result = prover.check(gid)
        results.append(result)
        if progress:
            progress(gid, result)
    return Report(loaded.file, loaded.spec.name, results)
