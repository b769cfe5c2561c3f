"""Which kind of TEE attestation admitted each run's workers, as the run's verified attestation
results show it, and the notice every page of the report states from those kinds.

A run's kind comes from its results, never from its configuration: whoever holds a run directory
can write anything into ``summary.json`` (its ``attestation_kind`` included) and nothing checks
it, whereas a result counts only when its signature verifies against the run's verifier key and
the offline audit accepts every result the run holds. A run is called ``dcap`` only when every
worker of it holds results, every worker's latest result is an EAR for an Intel quote that
verifies with an accepted status, and the audit finds nothing wrong with any result file; results
that name Intel quotes but fall short of that are ``unverified``, and the report then claims no
TEE for the run. Simulated results are called ``simulated`` whether or not they verify: the
software-model notice claims nothing about hardware, so it cannot overstate.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from stagewarden.attest.audit import Severity
from stagewarden.attest.result import Status
from stagewarden.attest.rundir import ATTESTATION_DIR
from stagewarden.report.modelling import (
    DCAP_ADMISSION,
    DCAP_NOTICE,
    MIXED_OPENING,
    SIMULATED_ADMISSION,
    TEE_NOTICE,
    UNATTESTED_ADMISSION,
    UNVERIFIED_ADMISSION,
)
from stagewarden.report.runs import RunData

#: The EAR statuses under which a result admits a worker.
_ADMITTING = frozenset({str(Status.AFFIRMING), str(Status.WARNING)})


class AttestationKind(enum.StrEnum):
    """What a run's verified attestation results show its workers were admitted with."""

    DCAP = "dcap"
    """Intel TDX/SGX quotes: every worker's EAR result verifies and the audit accepts them all."""
    SIMULATED = "simulated"
    """The simulated TEE (a software model)."""
    UNVERIFIED = "unverified"
    """Results that name Intel quotes but do not all verify, or a mix of kinds."""
    NONE = "none"
    """No attestation result at all (a run trained without attestation)."""


def _audit_accepts_results(run: RunData) -> bool:
    """Whether the run's audit ran and found no error in any attestation file."""
    report = run.audit.report
    if report is None:
        return False
    return not any(
        f.severity is Severity.ERROR and (f.file or "").startswith(f"{ATTESTATION_DIR}/") for f in report.findings
    )


def run_attestation_kind(run: RunData) -> AttestationKind:
    """The kind of attestation the verified results of ``run`` show (see the module docstring)."""
    rows = run.attestations
    held = [row for row in rows if row.results > 0]
    if not held:
        return AttestationKind.NONE
    if all(row.kind == "simulated" for row in held):
        return AttestationKind.SIMULATED
    verified = all(
        row.results > 0 and row.kind == "dcap" and row.signature == "valid" and row.status in _ADMITTING for row in rows
    )
    return AttestationKind.DCAP if verified and _audit_accepts_results(run) else AttestationKind.UNVERIFIED


_ADMISSION = {
    AttestationKind.DCAP: DCAP_ADMISSION,
    AttestationKind.SIMULATED: SIMULATED_ADMISSION,
    AttestationKind.UNVERIFIED: UNVERIFIED_ADMISSION,
    AttestationKind.NONE: UNATTESTED_ADMISSION,
}


def tee_notice(runs: Sequence[RunData]) -> str:
    """The notice on every page of a report of ``runs`` (in the order of their pages), as plain text.

    No run, or runs that attested with the simulated TEE or not at all: the software-model notice.
    Every run admitted with Intel quotes: the DCAP notice. Otherwise each kind present, with the
    runs that used it, by page number and name.
    """
    kinds = [run_attestation_kind(run) for run in runs]
    if all(kind in (AttestationKind.SIMULATED, AttestationKind.NONE) for kind in kinds):
        return TEE_NOTICE
    if all(kind is AttestationKind.DCAP for kind in kinds):
        return DCAP_NOTICE
    labelled = [
        (f"{number} ({run.short_name})", kind) for number, (run, kind) in enumerate(zip(runs, kinds, strict=True), 1)
    ]
    parts = [MIXED_OPENING]
    for kind in AttestationKind:
        named = [label for label, of in labelled if of is kind]
        if named:
            parts.append(f"{'Runs' if len(named) > 1 else 'Run'} {', '.join(named)}: {_ADMISSION[kind]}.")
    return " ".join(parts)
