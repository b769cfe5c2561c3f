"""The offline auditor: checks a run directory's receipt log and attestation without the processes.

:func:`audit_run_dir` reads the run directory (:mod:`stagewarden.attest.rundir`) and returns an
:class:`~stagewarden.attest.audit_findings.AuditReport` whose findings each say what is wrong,
where (file, record index, byte offset, step, micro-batch, unit) and which workers are implicated.
The unit and link checks are :mod:`stagewarden.attest.audit_links`, and the responses they read
:mod:`stagewarden.attest.audit_plans`. The checks, in order:

1. the verifier key: pinned by the caller, or read from the run directory (a warning);
2. every attestation result token of every worker (signature under the verifier key, status),
   what it is bound to, the stored evidence behind it, and that no two workers share a receipt
   key or a device (:mod:`stagewarden.attest.audit_evidence`);
3. the log file: torn tail, malformed frames, the log's own hash chain;
4. every record: strict parse, signature, run id, worker known and at its admitted position,
   signing time not in the future, and the signing key attested *for that worker* by a result
   that was valid at the signing time;
5. every worker's receipt chain: replayed (duplicate), dropped, reordered and forked records,
   and conflicting receipts for one unit;
6. completeness: a forward and a backward receipt for every micro-batch and an update receipt for
   every step the summary reports;
7. signed headers: a header that disagrees with its sender's receipt, and two different headers
   for one transfer (equivocation), both convict the sender;
8. links between adjacent stages for the same step, replica and micro-batch: forward output of
   stage s equals forward input of stage s+1, backward output of s+1 equals backward input of s;
   the signed header, when logged, says which side lied.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from nacl.signing import VerifyKey

from .audit_evidence import check_attestation_record
from .audit_findings import (
    AUDIT_FORMAT,
    AUDIT_VERSION,
    CLOCK_SKEW,
    AuditReport,
    Finding,
    FindingLog,
    LogItem,
    Severity,
)
from .audit_links import LinkAudit
from .audit_plans import (
    PlanFacts,
    bypasses,
    declared_attempts,
    declared_bypasses,
    declared_frozen,
    frozen_stages,
    recorded_attempts,
    recorded_plans,
    route_neighbour,
    served_steps,
)
from .audit_records import check_records
from .audit_scope import audit_scope
from .audit_seal import SealOutcome, check_seal, unattributed_if_altered
from .audit_weights import WeightsChain
from .clock import Clock, SystemClock
from .ear import EarResult, is_ear_token, open_ear
from .errors import AttestError, ErrorCode
from .headers import SignedHeader
from .receipt_log import LogRecord, RecordType
from .receipts import Receipt, chain_genesis
from .result import RESULT_TYP, AttestationResult, Status
from .run_limits import MAX_LOG_RECORDS
from .rundir import ATTESTATION_DIR, LOG_FILE, RunDir
from .token import open_token

__all__ = [
    "AUDIT_FORMAT",
    "AUDIT_VERSION",
    "AuditReport",
    "CLOCK_SKEW",
    "Finding",
    "FindingLog",
    "LogItem",
    "PlanFacts",
    "Severity",
    "audit_run_dir",
    "bypasses",
    "declared_attempts",
    "declared_bypasses",
    "declared_frozen",
    "frozen_stages",
    "recorded_attempts",
    "recorded_plans",
    "route_neighbour",
    "served_steps",
]


@dataclasses.dataclass(frozen=True)
class _Window:
    key: bytes
    issued_at: dt.datetime
    expires_at: dt.datetime


class _Auditor:
    """The attestation, record and chain checks of one run directory, reporting to ``log``."""

    def __init__(
        self, run: RunDir, verifier_key: bytes, pinned: bool, clock: Clock, log: FindingLog, links: LinkAudit
    ) -> None:
        self.run = run
        self.summary = run.summary
        self.verifier_key = verifier_key
        self.pinned = pinned
        self.clock = clock
        self.log = log
        self.links = links

    # -- attestation ------------------------------------------------------------------------

    def load_attestations(self) -> dict[str, list[_Window]]:
        verifier = VerifyKey(self.verifier_key)
        windows: dict[str, list[_Window]] = {}
        self.accepted: dict[str, list[AttestationResult | EarResult]] = {}
        for worker in self.summary.workers:
            name = f"{ATTESTATION_DIR}/{worker.id}.ear"
            windows[worker.id] = []
            accepted = self.accepted.setdefault(worker.id, [])
            for line, token in enumerate(self.run.results(worker.id), start=1):
                try:
                    result = _open_result(token, verifier)
                except AttestError as exc:
                    # A result the verifier key does not sign was not issued by the verifier: the
                    # attestation record was altered by whoever wrote it, not by the worker.
                    forged = exc.code is ErrorCode.RESULT_SIGNATURE
                    self.log.add(
                        exc.code,
                        f"attestation result on line {line} of worker {worker.id} is rejected: {exc.message}",
                        workers=[] if forged else [worker.id],
                        file=name,
                    )
                    continue
                if result.status not in (Status.AFFIRMING, Status.WARNING):
                    self.log.add(
                        ErrorCode.RESULT_STATUS,
                        f"attestation result on line {line} has status {result.status}",
                        workers=[worker.id],
                        file=name,
                    )
                    continue
                if result.attested_key is None:
                    self.log.add(
                        ErrorCode.RESULT_KEY_MISMATCH,
                        f"attestation result on line {line} attests no receipt key",
                        workers=[worker.id],
                        file=name,
                    )
                    continue
                windows[worker.id].append(_Window(result.attested_key, result.issued_at, result.expires_at))
                accepted.append(result)
        return windows

    def check_keys(self, items: list[LogItem], windows: dict[str, list[_Window]]) -> None:
        owners: dict[bytes, set[str]] = defaultdict(set)
        for worker, listed in windows.items():
            for w in listed:
                owners[w.key].add(worker)
        # (worker, key, code) -> (first item, count): one finding per kind of failure, not per record.
        failures: dict[tuple[str, bytes, ErrorCode], list[Any]] = {}
        usable: dict[tuple[str, bytes], list[_Window]] = {}
        for item in items:
            obj = item.obj
            if obj is None or item.error is not None:
                continue
            worker = obj.worker_id if isinstance(obj, Receipt) else obj.sender
            key, at = obj.signer_key, obj.signed_at
            if (worker, key) not in usable:
                usable[(worker, key)] = [w for w in windows.get(worker, ()) if w.key == key]
            ws = usable[(worker, key)]
            code = None
            if not ws:
                code = ErrorCode.KEY_UNATTESTED
            elif not any(w.issued_at <= at < w.expires_at for w in ws):
                code = (
                    ErrorCode.RESULT_EXPIRED if all(at >= w.expires_at for w in ws) else ErrorCode.RESULT_NOT_YET_VALID
                )
            if code is not None:
                entry = failures.setdefault((worker, key, code), [item, 0, ws])
                entry[1] += 1
        for (worker, key, code), (item, count, ws) in failures.items():
            obj = item.obj
            short = key.hex()[:16]
            more = f" ({count} records signed with it fail the same way; this is the first)" if count > 1 else ""
            if code is ErrorCode.KEY_UNATTESTED:
                others = sorted(owners.get(key, set()) - {worker})
                where = f"; it is attested for {', '.join(others)} instead" if others else ""
                self.log.add(
                    code,
                    f"signing key {short} is not attested for worker {worker} by any valid result{where}{more}",
                    workers=[worker, *others],
                    item=item,
                )
            else:
                window = "; ".join(f"[{w.issued_at.isoformat()}, {w.expires_at.isoformat()})" for w in ws)
                state = "expired" if code is ErrorCode.RESULT_EXPIRED else "not yet valid"
                self.log.add(
                    code,
                    f"the attestation of signing key {short} was {state} when the record was signed at "
                    f"{obj.signed_at.isoformat()} (valid {window}){more}",
                    workers=[worker],
                    item=item,
                )

    # -- records ----------------------------------------------------------------------------

    def check_records(self, items: list[LogItem]) -> list[LogItem]:
        """Report per-record problems; return the records that the chain and link checks use."""
        good = []
        now = self.clock.now()
        run_id = self.summary.run_id
        assigned = {w.id: (w.stage, w.replica) for w in self.summary.workers}
        for item in items:
            obj = item.obj
            if obj is None:
                assert item.error is not None
                self.log.add(item.error.code, item.error.message, item=item)
                continue
            worker = obj.worker_id if isinstance(obj, Receipt) else obj.sender
            what = "receipt" if isinstance(obj, Receipt) else "signed header"
            if item.error is not None:
                self.log.add(
                    item.error.code,
                    f"{what} claiming to be from worker {worker} is forged or altered: {item.error.message}",
                    workers=[worker],
                    item=item,
                )
                continue
            if obj.run_id != run_id:
                self.log.add(
                    ErrorCode.RUN_MISMATCH,
                    f"{what} of worker {worker} belongs to run {obj.run_id!r}, not "
                    f"{run_id!r} (replayed from another run)",
                    workers=[worker],
                    item=item,
                )
                continue
            position = (obj.stage, obj.replica) if isinstance(obj, Receipt) else (obj.sender_stage, obj.sender_replica)
            if worker not in assigned:
                self.log.add(
                    ErrorCode.WORKER_UNKNOWN,
                    f"{what} from worker {worker}, which the run summary does not list",
                    workers=[worker],
                    item=item,
                )
                continue
            if assigned[worker] != position:
                self.log.add(
                    ErrorCode.WORKER_UNKNOWN,
                    f"{what} of worker {worker} claims stage {position[0]} replica "
                    f"{position[1]}, but the worker was admitted for stage {assigned[worker][0]} replica "
                    f"{assigned[worker][1]}",
                    workers=[worker],
                    item=item,
                )
            if obj.signed_at > now + CLOCK_SKEW:
                self.log.add(
                    ErrorCode.RECEIPT_FUTURE,
                    f"{what} of worker {worker} is signed at {obj.signed_at.isoformat()}, in the future",
                    workers=[worker],
                    item=item,
                )
            good.append(item)
        return good

    def check_chains(self, receipts: list[LogItem]) -> list[LogItem]:
        """Check every worker's receipt chain; return the receipts without exact duplicates."""
        by_worker: dict[str, list[LogItem]] = defaultdict(list)
        unique: list[LogItem] = []
        seen: dict[bytes, LogItem] = {}
        for item in receipts:
            first = seen.get(item.body_digest)
            if first is not None:
                self.log.add(
                    ErrorCode.LOG_DUPLICATE,
                    f"receipt replayed: identical to record {first.record.index}",
                    workers=[item.receipt.worker_id],
                    item=item,
                )
                continue
            seen[item.body_digest] = item
            unique.append(item)
            by_worker[item.receipt.worker_id].append(item)
        for worker, chain in by_worker.items():
            genesis = chain_genesis(self.summary.run_id, worker)
            position = {item.body_digest: i for i, item in enumerate(chain)}
            children: dict[bytes, list[LogItem]] = defaultdict(list)
            for item in chain:
                children[item.receipt.prev_digest].append(item)
            for prev, kids in children.items():
                if len(kids) > 1:
                    parent = (
                        "the chain's genesis"
                        if prev == genesis
                        else (
                            f"record {chain[position[prev]].record.index}" if prev in position else "a missing receipt"
                        )
                    )
                    records = ", ".join(str(k.record.index) for k in kids)
                    self.log.add(
                        ErrorCode.RECEIPT_FORK,
                        f"worker {worker} signed {len(kids)} different receipts that all "
                        f"follow {parent} (records {records}): two histories",
                        workers=[worker],
                        item=kids[1],
                    )
            for i, item in enumerate(chain):
                prev = item.receipt.prev_digest
                if prev == genesis:
                    continue
                j = position.get(prev)
                if j is None:
                    self.log.add(
                        ErrorCode.RECEIPT_DROPPED,
                        f"worker {worker}'s receipt chains to a receipt that is not in "
                        f"the log: the receipt(s) before this one were dropped",
                        workers=[worker],
                        item=item,
                    )
                elif j > i:
                    self.log.add(
                        ErrorCode.RECEIPT_REORDERED,
                        f"worker {worker}'s receipt chains to record "
                        f"{chain[j].record.index}, which comes later in the log: the records were reordered",
                        workers=[worker],
                        item=item,
                    )
                if j is not None and item.receipt.signed_at < chain[j].receipt.signed_at:
                    self.log.add(
                        ErrorCode.RECEIPT_CHAIN,
                        f"worker {worker}'s receipt is signed at {item.receipt.signed_at.isoformat()}, before its "
                        f"predecessor (record {chain[j].record.index}, {chain[j].receipt.signed_at.isoformat()}): "
                        "its signing times go backwards (backdated)",
                        workers=[worker],
                        item=item,
                    )
        return unique


def audit_run_dir(
    path: str | os.PathLike[str],
    verifier_key: bytes | VerifyKey | None = None,
    clock: Clock | None = None,
    *,
    threads: int | None = None,
    vendor_roots: Sequence[x509.Certificate] | None = None,
    max_records: int = MAX_LOG_RECORDS,
    coordinator_key: bytes | None = None,
    witnesses: Sequence[str | os.PathLike[str]] = (),
) -> AuditReport:
    """Audit a run directory offline (see the module docstring for the checks).

    Args:
        path: the run directory.
        verifier_key: the verifier's Ed25519 public key, pinned. When omitted, the key in
            ``attestation/verifier.pub`` is used and a ``VERIFIER_KEY_UNPINNED`` warning says so:
            whoever wrote the run directory could have written that key too.
        clock: the auditor's clock (signing times later than now are findings); the system clock
            by default. Attestation results are judged at each record's signing time, not now.
        threads: threads that verify signatures (default: the number of CPUs).
        vendor_roots: the simulated vendor's root certificates, pinned: stored evidence must chain
            to one of them. Without them the evidence is checked against its results and its own
            device certificate only.
        max_records: the most receipt-log records read; a longer log is refused
            (:mod:`stagewarden.attest.run_limits`).
        coordinator_key: the coordinator's Ed25519 public key, pinned, that the step heads must
            verify under. When omitted, ``coordinator.pub`` (or the summary's key) is used and a
            ``COORDINATOR_KEY_UNPINNED`` warning says so.
        witnesses: witness files of workers (:mod:`stagewarden.attest.witness`) to compare the
            log's step heads with (:mod:`stagewarden.attest.audit_seal`).

    Raises:
        stagewarden.attest.run_record.RunDirError: the directory, its summary, its receipt log or the
            verifier key cannot be read or is malformed.
    """
    started = time.perf_counter()
    run = RunDir(path)
    pinned = verifier_key is not None
    scope = audit_scope(run, pinned)
    if scope.attestation:
        key = bytes(verifier_key) if verifier_key is not None else run.verifier_key()
    else:
        key = bytes(32)  # no results to check against a key: the run has none
    if len(key) != 32:
        raise ValueError("the verifier key must be 32 bytes")
    log = FindingLog()
    links = LinkAudit(run.summary, log)
    auditor = _Auditor(run, key, pinned, clock or SystemClock(), log, links)
    for code, message in scope.lacks():
        log.add(code, message, severity=Severity.WARNING)
    if not pinned and scope.attestation:
        log.add(
            ErrorCode.VERIFIER_KEY_UNPINNED,
            f"the verifier key {key.hex()[:16]} was read from the run directory, "
            "not pinned: the audit only shows the run is consistent with the key it ships; pass the verifier "
            "key to trust the attestation results",
            severity=Severity.WARNING,
            file=f"{ATTESTATION_DIR}/verifier.pub",
        )
    windows = auditor.load_attestations() if scope.attestation else {}
    if scope.attestation:
        check_attestation_record(run, auditor.accepted, log, vendor_roots)
    records: list[LogRecord] = []
    seal: SealOutcome | None = None
    if scope.receipts:
        scan = run.scan_log(max_records)
        records = scan.records
        for problem in scan.problems:
            log.add(problem.code, problem.message, file=LOG_FILE, record=problem.index, offset=problem.offset)
        items = check_records(records, threads or os.cpu_count() or 1, log)
        good = auditor.check_records(items)
        if scope.attestation:
            auditor.check_keys(good, windows)
        receipts = [i for i in good if isinstance(i.obj, Receipt)]
        headers = [i for i in good if isinstance(i.obj, SignedHeader)]
        unique = auditor.check_chains(receipts)
        linkable = links.check_units(unique)
        agreed = links.check_headers(headers, linkable)
        links.check_links(linkable, agreed)
        events = run.events_bytes()  # read once: the seal and the weights chain both replay it
        keys = attested(windows, scope.attestation)
        seal = check_seal(run, records, receipts, coordinator_key, witnesses, log, keys, events)
        WeightsChain(run.summary, log, run.path).check(events, receipts)
    elif coordinator_key is not None or witnesses:
        # a pinned coordinator key or a witness says the run kept a record: its absence is a finding
        log.add(
            ErrorCode.RECORD_UNSEALED,
            "a coordinator key or a witness file was given but the run directory keeps no receipt log",
        )
        seal = check_seal(run, [], [], coordinator_key, witnesses, log, None, run.events_bytes())

    def order(f: Finding) -> tuple[int, int, int]:
        group = (
            0 if f.code is ErrorCode.VERIFIER_KEY_UNPINNED else 1 if (f.file or "").startswith(ATTESTATION_DIR) else 2
        )
        return (group, f.record if f.record is not None else len(records), f.step or 0)

    findings = sorted(unattributed_if_altered(log.findings) + log.omitted(), key=order)
    return AuditReport(
        run_dir=str(Path(path)),
        run_id=run.summary.run_id,
        verifier_key=key.hex() if scope.attestation else "",
        verifier_key_pinned=pinned,
        records=len(records),
        receipts=sum(1 for r in records if r.type is RecordType.RECEIPT),
        headers=sum(1 for r in records if r.type is RecordType.HEADER),
        findings=tuple(findings),
        seconds=time.perf_counter() - started,
        coordinator_key=seal.key.hex() if seal is not None and seal.key else "",
        coordinator_key_pinned=coordinator_key is not None,
        step_heads=seal.report.heads if seal is not None else 0,
        sealed=seal is not None and seal.report.final is not None,
        witness_heads=seal.report.witnesses if seal is not None else 0,
    )


def attested(windows: dict[str, list[_Window]], in_scope: bool) -> dict[str, set[bytes]] | None:
    """The keys a verifier-signed result attests for each worker (``None`` without attestation)."""
    return {worker: {w.key for w in spans} for worker, spans in windows.items()} if in_scope else None


def _open_result(token: bytes, verifier: VerifyKey) -> AttestationResult | EarResult:
    """A result token's verified content: an EAR for DCAP evidence, the simulated TEE's result otherwise."""
    if is_ear_token(token):
        return open_ear(token, verifier)
    payload = open_token(
        token,
        verifier,
        RESULT_TYP,
        malformed=ErrorCode.RESULT_MALFORMED,
        bad_signature=ErrorCode.RESULT_SIGNATURE,
        what="attestation result",
    )
    return AttestationResult.from_claims(payload)
