"""Conformance check 2, attestation: with ``defense.attestation`` every worker of the run has
attestation results and the offline audit rejected none of them."""

from __future__ import annotations

from stagewarden.attest.rundir import RunDir
from stagewarden.conformance.findings import ConformanceCode
from stagewarden.conformance.run import RunUnderCheck

#: Error codes of the attestation layer that mean a worker's attestation was not accepted.
ATTESTATION_CODES = frozenset(
    {
        "RESULT_MALFORMED",
        "RESULT_SIGNATURE",
        "RESULT_NOT_YET_VALID",
        "RESULT_EXPIRED",
        "RESULT_STATUS",
        "RESULT_NONCE",
        "RESULT_KEY_MISMATCH",
        "WORKER_NOT_ADMITTED",
        "KEY_UNATTESTED",
    }
)


def check_attestation(run: RunUnderCheck) -> None:
    """With ``defense.attestation``: a finding for each worker without attestation results, or with
    results the audit rejected."""
    if not run.spec.defense.attestation:
        return
    files = RunDir(run.run_dir)
    rejected: dict[str, list[str]] = {}
    for f in run.audit.findings if run.audit is not None else ():
        if str(f.code) in ATTESTATION_CODES:
            for w in f.workers:
                rejected.setdefault(w, []).append(str(f.code))
    for worker in run.summary.workers:
        if not files.results(worker.id):
            why = "has no attestation result"
        elif worker.id in rejected:
            why = f"has attestation the audit rejects ({', '.join(sorted(set(rejected[worker.id])))})"
        else:
            continue
        run.add(
            ConformanceCode.WORKER_UNATTESTED,
            f"the spec requires attestation, but worker {worker.id} {why}",
            spec=run.at("defense", "attestation"),
            file=f"attestation/{worker.id}.ear",
            workers=(worker.id,),
            stage=worker.stage,
        )
