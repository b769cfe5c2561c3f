"""The audit's checks of the attestation behind the results: stored evidence, bindings and sharing.

For every worker of the run, :func:`check_attestation_record`:

* re-verifies the stored ``attestation/<worker>.evidence`` and checks that it is the evidence one
  of the worker's results was issued for: simulated TEE evidence must be signed by the device key
  of its certificate, chain to a pinned vendor root when the auditor gives one (checked at the
  result's issue time), and carry that result's device, hardware model and measurement, and
  report data binding that result's nonce and receipt key; a DCAP quote must parse and its
  REPORTDATA and measurements must be those of the EAR (its Intel signatures need collateral and
  are checked at admission, not here). A swapped or edited evidence file is an error naming the
  worker;
* checks that results naming a run, worker or stage name this run, this worker and the stage the
  worker was admitted for (a standby's results may name ``standby``);
* checks that no two workers hold results for one receipt key, or for one device at a common
  instant.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections import defaultdict
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .audit_findings import FindingLog, Severity
from .binding import STANDBY, Holder, stage_label
from .dcap import dcap_report_data, parse_quote
from .ear import EarResult
from .errors import AttestError, ErrorCode
from .evidence import MAGIC, Evidence, parse_evidence, report_data
from .result import AttestationResult
from .rundir import ATTESTATION_DIR, RunDir
from .verifier import check_evidence_signature, check_vendor_chain

Result = AttestationResult | EarResult


def check_attestation_record(
    run: RunDir,
    results: Mapping[str, Sequence[Result]],
    log: FindingLog,
    vendor_roots: Sequence[x509.Certificate] | None,
) -> None:
    """Report evidence, binding and sharing findings for the accepted ``results`` of each worker."""
    summary = run.summary
    training = summary.training
    expect_evidence = training is not None and training.attestation_configured
    for info in summary.workers:
        listed = results.get(info.id, ())
        if not listed:
            continue
        standbys = training.standby if training is not None else []
        allowed = {stage_label(info.stage)} | ({STANDBY} if info.id in standbys else set())
        for line, result in enumerate(listed, start=1):
            # A DCAP standby is appraised against every stage's reference values, and its EAR names
            # the stage that matched, not the one it later took over.
            if isinstance(result, EarResult) and info.id in standbys:
                continue
            _check_binding(result, summary.run_id, info.id, allowed, line, log)
        evidence = run.evidence(info.id)
        name = f"{ATTESTATION_DIR}/{info.id}.evidence"
        if evidence is None:
            if expect_evidence:
                log.add(
                    ErrorCode.EVIDENCE_MISSING,
                    f"worker {info.id} holds attestation results but its evidence file is missing, so the audit "
                    "cannot re-verify what the verifier appraised",
                    severity=Severity.WARNING,
                    workers=[info.id],
                    file=name,
                )
            continue
        try:
            if evidence.startswith(MAGIC):
                _check_simulated(evidence, [r for r in listed if isinstance(r, AttestationResult)], vendor_roots)
            else:
                _check_quote(evidence, [r for r in listed if isinstance(r, EarResult)])
        except AttestError as exc:
            log.add(
                exc.code,
                f"the stored evidence of worker {info.id} is not the evidence its attestation result was issued "
                f"for: {exc.message}",
                workers=[info.id],
                file=name,
            )
    _check_sharing(results, log)


def _check_binding(result: Result, run_id: str, worker: str, stages: set[str], line: int, log: FindingLog) -> None:
    named = [("stage", result.stage, stages)]
    if isinstance(result, AttestationResult):
        named += [("run", result.run_id, {run_id}), ("worker", result.worker, {worker})]
    for what, value, allowed in named:
        if value is not None and value not in allowed:
            log.add(
                ErrorCode.RESULT_BINDING,
                f"attestation result on line {line} of worker {worker} names {what} {value!r}, not "
                f"{' or '.join(repr(a) for a in sorted(allowed))}: it was issued for another {what}",
                workers=[worker],
                file=f"{ATTESTATION_DIR}/{worker}.ear",
            )


def _check_simulated(data: bytes, results: list[AttestationResult], roots: Sequence[x509.Certificate] | None) -> None:
    evidence = parse_evidence(data)
    if not results:
        raise AttestError(ErrorCode.EVIDENCE_RESULT_MISMATCH, "it is SIMULATED TEE evidence, its results are not")
    matching = [r for r in results if _matches(evidence, r)]
    if not matching:
        raise AttestError(ErrorCode.EVIDENCE_RESULT_MISMATCH, _difference(evidence, results[-1]))
    if roots is not None:
        check_vendor_chain(evidence, roots, matching[-1].issued_at)
    device = evidence.chain[0]
    if not isinstance(device.public_key(), ec.EllipticCurvePublicKey):
        raise AttestError(ErrorCode.CERT_KEY_TYPE, "the device certificate's key is not an ECDSA key")
    check_evidence_signature(evidence, device)


def _bound(nonce: bytes | None, key: bytes | None, expected: bytes, kind: str) -> bool:
    if nonce is None or key is None:
        return False
    try:
        made = report_data(nonce, key) if kind == "simulated" else dcap_report_data(nonce, key)
    except ValueError:
        return False
    return hmac.compare_digest(made, expected)


def _matches(evidence: Evidence, result: AttestationResult) -> bool:
    return (
        evidence.device_id == result.device_id
        and evidence.hardware_model == result.hardware_model
        and evidence.measurement.hex() == result.measurement
        and _bound(result.nonce, result.attested_key, evidence.report_data, "simulated")
    )


def _difference(evidence: Evidence, result: AttestationResult) -> str:
    if evidence.device_id != result.device_id or evidence.hardware_model != result.hardware_model:
        return (
            f"it is from device {evidence.device_id!r} ({evidence.hardware_model}), its latest result names "
            f"{result.device_id!r} ({result.hardware_model})"
        )
    if evidence.measurement.hex() != result.measurement:
        ours, theirs = evidence.measurement.hex()[:16], result.measurement[:16]
        return f"it carries measurement {ours}..., its latest result {theirs}..."
    return "its report data does not bind the nonce and receipt key of any of the worker's results"


def _check_quote(data: bytes, results: list[EarResult]) -> None:
    quote = parse_quote(data)
    if not results:
        raise AttestError(ErrorCode.EVIDENCE_RESULT_MISMATCH, "it is an Intel quote, its results are not EARs")
    for result in results:
        if result.measurements == quote.measurements and _bound(
            result.nonce, result.attested_key, quote.report_data, "dcap"
        ):
            return
    raise AttestError(
        ErrorCode.EVIDENCE_RESULT_MISMATCH,
        "its measurements or REPORTDATA (nonce and receipt key) are not those of any of the worker's EARs",
    )


def _check_sharing(results: Mapping[str, Sequence[Result]], log: FindingLog) -> None:
    by_key: dict[bytes, set[str]] = defaultdict(set)
    by_device: dict[str, list[Holder]] = defaultdict(list)
    for worker, listed in results.items():
        for result in listed:
            holder = Holder.of(worker, result)
            if holder.receipt_key is not None:
                by_key[holder.receipt_key].add(worker)
            if holder.device_id is not None:
                by_device[holder.device_id].append(holder)
    for key, workers in by_key.items():
        if len(workers) > 1:
            log.add(
                ErrorCode.KEY_SHARED,
                f"receipt key {key.hex()[:16]} is attested for workers {', '.join(sorted(workers))}: one receipt "
                "key, one worker",
                workers=sorted(workers),
                file=ATTESTATION_DIR,
            )
    for device, holders in by_device.items():
        # Sweep the results by issue time, remembering when each worker's results on this device end.
        ends: dict[str, dt.datetime] = {}
        pairs: set[tuple[str, str]] = set()
        for holder in sorted(holders, key=lambda h: h.issued_at):
            for other, end in ends.items():
                if other != holder.worker and end > holder.issued_at:
                    pairs.add((min(other, holder.worker), max(other, holder.worker)))
            ends[holder.worker] = max(ends.get(holder.worker, holder.expires_at), holder.expires_at)
        for first, second in sorted(pairs):
            log.add(
                ErrorCode.DEVICE_SHARED,
                f"device {device!r} is attested for workers {first} and {second} at the same time: one device, "
                "one worker",
                workers=[first, second],
                file=ATTESTATION_DIR,
            )
