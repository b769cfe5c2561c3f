"""Conformance check 5 and the whole check: each guarantee the prover says holds against what the
run shows, after checks 1 to 4, gathered into one :class:`ConformanceReport`."""

from __future__ import annotations

from pathlib import Path

from stagewarden.attest.audit import AuditReport
from stagewarden.conformance.attestation import check_attestation
from stagewarden.conformance.configuration import check_configuration
from stagewarden.conformance.findings import ConformanceCode, ConformanceReport
from stagewarden.conformance.responses import check_responses
from stagewarden.conformance.run import RunUnderCheck
from stagewarden.conformance.sampling import RATE_CONFIDENCE, check_rate
from stagewarden.guarantee_observation import UNCHECKED, observe_guarantees
from stagewarden.spec import LoadedSpec


def check_conformance(
    run_dir: str | Path,
    loaded: LoadedSpec,
    audit: AuditReport | None = None,
    *,
    confidence: float = RATE_CONFIDENCE,
) -> ConformanceReport:
    """Check a run directory against a loaded spec (see :mod:`stagewarden.conformance`).

    Args:
        run_dir: The run directory.
        loaded: The spec, as :func:`stagewarden.spec.load_spec` returns it.
        audit: The offline audit of the same directory, whose attestation findings count for
            check 2; without it only the presence of attestation results is checked.
        confidence: The confidence of the interval the observed spot-check rate is judged by.

    Raises:
        ConformanceError: The run's configuration cannot be read.
        stagewarden.attest.run_record.RunDirError: The run directory or its summary cannot be read.
    """
    run = RunUnderCheck(Path(run_dir), loaded, audit, confidence)
    check_configuration(run)
    check_attestation(run)
    rate = check_rate(run)
    check_responses(run)
    observations, broken = observe_guarantees(loaded, run.config, run.summary, run.history)
    for obs, spec_at in broken:
        run.add(
            ConformanceCode.GUARANTEE_BROKEN,
            f"the prover says {obs.id} ({obs.kind}) holds, but the run breaks it: {obs.detail}",
            spec=spec_at,
            guarantee=obs.id,
        )
    return ConformanceReport(
        spec_file=loaded.file,
        spec_name=loaded.spec.name,
        findings=tuple(run.findings),
        guarantees=tuple(observations),
        rate=rate,
        attack=run.config.attack,
        unchecked=UNCHECKED,
    )
