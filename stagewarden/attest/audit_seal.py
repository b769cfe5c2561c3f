"""The audit of a run's seal: the coordinator's signed step heads in the receipt log, the workers'
cosignatures of the final head, and any witness files an auditor holds
(:mod:`stagewarden.attest.step_heads`, :mod:`stagewarden.attest.witness`).

What it concludes (docs/receipts.rst, "The sealed record"):

- every head verifies under the coordinator key, heads are numbered without a gap, and each one's
  record count and log digest are those of the log before it: a record deleted, inserted,
  reordered or rewritten before a head is ``RECORD_REWRITTEN``, whoever recomputed the frames;
- every head's events digest is the hash chain of that many lines of ``events.jsonl``, and the
  final head covers every line (``EVENTS_REWRITTEN``);
- the final head signs ``summary.json``'s digest (``SUMMARY_REWRITTEN``) and is followed by a
  cosignature of every worker that served a stage at the end, under the key its receipts carry
  (``COSIGNATURE_MISSING``, ``COSIGNATURE_INVALID``): forging a final head for a cut log takes
  those workers' keys, not only the coordinator's;
- a log without a final head is ``RECORD_UNSEALED``: whatever followed its last head may have been
  cut, so the audit cannot call it complete;
- a head in a witness file that the log lacks is ``RECORD_TRUNCATED``, one that differs from the
  log's head of the same number ``HEAD_CONFLICT``: this holds even against a log holder who has
  the coordinator's key.

Seal findings implicate no worker: the log holder (or the coordinator) is the one that altered
the record.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import blake3

from .audit_findings import Finding, FindingLog, LogItem, Severity
from .audit_plans import retired_pipelines
from .errors import AttestError, ErrorCode
from .receipt_log import LOG_GENESIS, LogRecord, RecordType
from .run_record import RunRecord
from .rundir import COORDINATOR_KEY_FILE, EVENTS_LOG_FILE, SUMMARY_FILE, RunDir
from .step_heads import Cosignature, EventsChain, RosterEntry, SignedStepHead, StepHead, roster_digest
from .witness import read_witness

#: Findings that rest on the absence of a record. On a log without a final head they may be the
#: work of whoever cut its tail, so they are not attributed to a worker there.
ABSENCE = frozenset({ErrorCode.RECEIPT_MISSING, ErrorCode.RECEIPT_DROPPED})

#: Findings that show the record was altered after it was written. These are the seal's, and an
#: attestation result that the verifier key does not sign (only the verifier issues results).
ALTERED = frozenset(
    {
        ErrorCode.RESULT_SIGNATURE,
        ErrorCode.RECORD_REWRITTEN,
        ErrorCode.RECORD_TRUNCATED,
        ErrorCode.RECORD_AFTER_SEAL,
        ErrorCode.HEAD_CONFLICT,
        ErrorCode.HEAD_SIGNATURE,
        ErrorCode.HEAD_SEQUENCE,
        ErrorCode.HEAD_MALFORMED,
        ErrorCode.EVENTS_REWRITTEN,
        ErrorCode.SUMMARY_REWRITTEN,
        ErrorCode.COSIGNATURE_MISSING,
        ErrorCode.COSIGNATURE_INVALID,
    }
)


@dataclasses.dataclass
class SealReport:
    """What the seal audit found.

    Attributes:
        heads: Step heads in the log that verified.
        final: The final head, when the log has one that verified.
        witnesses: Witness entries compared with the log.
    """

    heads: int = 0
    final: StepHead | None = None
    witnesses: int = 0


def stage_holders(summary: RunRecord) -> dict[tuple[int, int], str]:
    """Who served each stage of each replica (pipeline) at the end, as ``summary.json`` lists the
    workers: the last one listed for a position holds it (replacements come after the workers
    they replaced)."""
    retired = retired_pipelines(summary.training)
    return {(info.stage, info.replica): info.id for info in summary.workers if info.replica not in retired}


def final_roster(summary: RunRecord, keys: dict[str, bytes]) -> list[RosterEntry] | None:
    """:func:`~stagewarden.attest.audit_seal.stage_holders` with the key their receipts carry, in
    slot order (every stage of replica 0, then of replica 1, ...); ``None`` when a position's
    worker signed no receipt."""
    holders = stage_holders(summary)
    entries = []
    retired = retired_pipelines(summary.training)
    for replica in range(summary.replicas):
        if replica in retired:
            continue
        for stage in range(summary.stages):
            worker = holders.get((stage, replica))
            if worker is None or worker not in keys:
                return None
            entries.append(RosterEntry(stage=stage, worker=worker, key=keys[worker].hex(), replica=replica))
    return entries


class SealAudit:
    """Checks the seal of one run directory's record (see the module docstring)."""

    def __init__(self, summary: RunRecord, summary_bytes: bytes, events: bytes | None, log: FindingLog) -> None:
        self.summary, self.summary_bytes, self.log = summary, summary_bytes, log
        self._event_lines = events.split(b"\n")[:-1] if events is not None else []
        self._events_torn = events is not None and not events.endswith(b"\n") and bool(events)
        self._chain_at: list[bytes] = []
        self._attested: dict[str, set[bytes]] | None = None

    def check(
        self,
        records: Sequence[LogRecord],
        coordinator_key: bytes,
        keys: dict[str, bytes],
        witnesses: Sequence[Path],
        attested: dict[str, set[bytes]] | None = None,
    ) -> SealReport:
        """Audit the heads and cosignatures in ``records`` under ``coordinator_key`` (``keys``:
        each worker's receipt key as its receipts carry it; ``attested``: with attestation, the
        keys a verifier-signed result attests for each worker, which every cosigner's key must be
        one of), then compare each witness file."""
        self._attested = attested
        report = SealReport()
        logged: dict[int, tuple[SignedStepHead, LogRecord]] = {}
        final_at: int | None = None
        last: StepHead | None = None
        for record in records:
            if record.type is not RecordType.STEP_HEAD:
                continue
            signed = self._head(record, coordinator_key)
            if signed is None:
                continue
            head = signed.head
            if final_at is not None and not (
                report.final is not None and report.final.status == "stopped" and head.session > report.final.session
            ):
                self._add(ErrorCode.RECORD_AFTER_SEAL, f"step head {head.sequence} follows the final head", record)
            expected = 0 if last is None else last.sequence + 1
            # a rollback lowers the step count: only the numbering and the sessions must go forward
            if head.sequence != expected or (last is not None and head.session < last.session):
                self._add(
                    ErrorCode.HEAD_SEQUENCE,
                    f"step head {head.sequence} (session {head.session}) does not follow "
                    f"{'the start of the log' if last is None else f'head {last.sequence}'}",
                    record,
                )
            self._covers(head, record, records)
            logged[head.sequence] = (signed, record)
            report.heads += 1
            last = head
            if head.final:
                report.final, final_at = head, record.index
        if report.final is None or final_at is None:
            tail = "the log has no step head" if last is None else f"its last step head is {last.sequence}"
            self.log.add(
                ErrorCode.RECORD_UNSEALED,
                f"the log has no final step head ({tail}): records after it may have been cut or the run did not "
                "end, so the record cannot be shown complete",
                file=self.log.log_name,
            )
        else:
            self._final(report.final, final_at, records, keys)
        for path in witnesses:
            report.witnesses += self._witness(path, coordinator_key, logged)
        return report

    # -- the log's heads ---------------------------------------------------------------------------

    def _head(self, record: LogRecord, key: bytes) -> SignedStepHead | None:
        try:
            signed = SignedStepHead.parse(record.payload)
            signed.verify(key)
        except AttestError as exc:
            self._add(exc.code, exc.message, record)
            return None
        if signed.head.run_id != self.summary.run_id:
            self._add(
                ErrorCode.HEAD_SIGNATURE, f"step head {signed.head.sequence} is for run {signed.head.run_id}", record
            )
            return None
        return signed

    def _covers(self, head: StepHead, record: LogRecord, records: Sequence[LogRecord]) -> None:
        before = records[record.index - 1].digest if record.index > 0 else LOG_GENESIS
        if head.records != record.index or head.log_digest != before.hex():
            self._add(
                ErrorCode.RECORD_REWRITTEN,
                f"step head {head.sequence} signed {head.records} records ending in {head.log_digest[:16]}, but the "
                f"log has {record.index} ending in {before.hex()[:16]} before it: records were deleted, inserted, "
                "reordered or rewritten",
                record,
            )
        if self._events_digest(head.events) != head.events_digest:
            self._add(
                ErrorCode.EVENTS_REWRITTEN,
                f"step head {head.sequence} signed {head.events} lines of {EVENTS_LOG_FILE} that the file no longer "
                "holds as signed",
                record,
                file=EVENTS_LOG_FILE,
            )

    def _events_digest(self, count: int) -> str | None:
        if count > len(self._event_lines):
            return None
        if not self._chain_at:
            chain = EventsChain()
            self._chain_at.append(chain.digest)
            for line in self._event_lines:
                chain.add(line)
                self._chain_at.append(chain.digest)
        return self._chain_at[count].hex()

    def _final(self, final: StepHead, at: int, records: Sequence[LogRecord], keys: dict[str, bytes]) -> None:
        where = records[at]
        if final.summary_digest != blake3.blake3(self.summary_bytes).hexdigest():
            self._add(
                ErrorCode.SUMMARY_REWRITTEN,
                f"{SUMMARY_FILE} is not the summary the final step head {final.sequence} signed",
                where,
                file=SUMMARY_FILE,
            )
        if final.events != len(self._event_lines) or self._events_torn:
            self._add(
                ErrorCode.EVENTS_REWRITTEN,
                f"{EVENTS_LOG_FILE} holds {len(self._event_lines)} lines, the final step head signed {final.events}",
                where,
                file=EVENTS_LOG_FILE,
            )
        roster = final_roster(self.summary, keys)
        if roster is not None and roster_digest(roster).hex() != final.roster_digest:
            self._add(
                ErrorCode.SUMMARY_REWRITTEN,
                "the workers serving each stage at the end, with their receipt keys, are not the roster the "
                f"final step head {final.sequence} signed",
                where,
            )
        holders = stage_holders(self.summary)
        required = set(holders.values())
        cosigned: dict[str, Cosignature] = {}
        for record in records[at + 1 :]:
            if record.type is RecordType.STEP_HEAD:
                break
            if record.type is not RecordType.COSIGNATURE:
                self._add(ErrorCode.RECORD_AFTER_SEAL, "a record follows the final step head", record)
                continue
            try:
                cosignature = Cosignature.parse(record.payload)
                cosignature.verify(final)
            except AttestError as exc:
                self._add(ErrorCode.COSIGNATURE_INVALID, exc.message, record)
                continue
            if cosignature.worker not in required:  # a free standby's: welcome, not needed
                continue
            problem = self._cosigner_problem(cosignature, keys.get(cosignature.worker))
            if problem is not None:
                self._add(ErrorCode.COSIGNATURE_INVALID, f"the cosignature of {cosignature.worker} {problem}", record)
                continue
            cosigned[cosignature.worker] = cosignature
        for stage, worker in sorted(holders.items()):
            if worker not in cosigned:
                self._add(
                    ErrorCode.COSIGNATURE_MISSING,
                    f"worker {worker} (stage {stage}) did not cosign the final step head {final.sequence} in the log: "
                    "without it the final head is the coordinator's word alone",
                    where,
                )

    def _cosigner_problem(self, cosignature: Cosignature, receipt_key: bytes | None) -> str | None:
        """Why a stage holder's cosignature does not count: its key must be the one its receipts
        carry (whose attestation the record checks find), or, for a holder without receipts, one a
        verifier-signed result attests for it (with attestation): a worker the log holder invented
        has neither."""
        key = bytes.fromhex(cosignature.key)
        if receipt_key is not None:
            return None if receipt_key == key else "is under another key than its receipts"
        if self._attested is not None and key not in self._attested.get(cosignature.worker, set()):
            return "is under a key no attestation result attests for it, and the worker signed no receipt"
        return None

    # -- witness files -------------------------------------------------------------------------------

    def _witness(self, path: Path, key: bytes, logged: dict[int, tuple[SignedStepHead, LogRecord]]) -> int:
        name = os.fspath(path)
        try:
            entries, torn = read_witness(path)
        except AttestError as exc:
            self._not_evidence(name, exc.message)
            return 0
        if torn:
            self._not_evidence(name, "its last line is incomplete (a write cut short) and was left out")
        compared = 0
        for number, entry in enumerate(entries, start=1):
            head = entry.head.head
            try:
                entry.head.verify(key)
                entry.cosignature.verify(head)
            except AttestError as exc:
                self._not_evidence(name, f"line {number} is not evidence: {exc.message}")
                continue
            if head.run_id != self.summary.run_id:
                self._not_evidence(name, f"line {number} is for run {head.run_id}, not {self.summary.run_id}")
                continue
            compared += 1
            mine = logged.get(head.sequence)
            who = entry.cosignature.worker
            if mine is None:
                self.log.add(
                    ErrorCode.RECORD_TRUNCATED,
                    f"worker {who}'s witness holds step head {head.sequence} ({head.steps} steps"
                    f"{', final' if head.final else ''}) that the log lacks: the log was cut or its heads removed",
                    file=name,
                )
            elif mine[0].encode() != entry.head.encode():
                self.log.add(
                    ErrorCode.HEAD_CONFLICT,
                    f"the log's step head {head.sequence} is not the one worker {who} cosigned: the record was "
                    "rewritten, or the coordinator signed two histories",
                    file=name,
                    record=mine[1].index,
                )
        return compared

    def _not_evidence(self, witness: str, message: str) -> None:
        """A witness file, or a line of it, that proves nothing: a warning (a worker's file cannot
        fail the audit of a record it cannot show altered)."""
        self.log.add(ErrorCode.WITNESS_MALFORMED, message, severity=Severity.WARNING, file=witness)

    def _add(self, code: ErrorCode, message: str, record: LogRecord, **where: Any) -> None:
        where.setdefault("file", self.log.log_name)
        self.log.add(code, message, record=record.index, offset=record.offset, **where)


@dataclasses.dataclass(frozen=True)
class SealOutcome:
    """The coordinator key the seal was checked under, and what the check found."""

    key: bytes
    report: SealReport


def check_seal(
    run: RunDir,
    records: list[LogRecord],
    receipts: list[LogItem],
    pinned: bytes | None,
    witnesses: Sequence[str | os.PathLike[str]],
    log: FindingLog,
    attested_keys: dict[str, set[bytes]] | None,
    events: bytes | None,
) -> SealOutcome | None:
    """Check the log's step heads, the final head's cosignatures and the witness files
    (``events``: the bytes of ``events.jsonl``, which the heads sign line by line)."""
    training = run.summary.training
    key = coordinator_key_source(pinned, run.coordinator_key(), training.coordinator_key if training else None)
    if key is None:
        log.add(
            ErrorCode.RECORD_UNSEALED,
            "no coordinator key is pinned or shipped (coordinator.pub): the log's step heads cannot be checked, "
            "so the record cannot be shown complete",
        )
        return None
    if pinned is None:
        log.add(
            ErrorCode.COORDINATOR_KEY_UNPINNED,
            f"the coordinator key {key.hex()[:16]} was read from the run directory, not pinned: a holder of the "
            "directory who made a key of its own could have re-signed every step head; pass the coordinator key "
            "(or a worker's witness file) to rule that out",
            severity=Severity.WARNING,
            file=COORDINATOR_KEY_FILE,
        )
    keys = {i.receipt.worker_id: i.receipt.signer_key for i in receipts}
    audit = SealAudit(run.summary, run.summary_bytes(), events, log)
    return SealOutcome(key, audit.check(records, key, keys, [Path(w) for w in witnesses], attested_keys))


def unattributed_if_altered(findings: list[Finding]) -> list[Finding]:
    """When the seal shows the record was altered, no other finding can be pinned on a worker: the
    records it rests on are the log holder's word, not the workers'. On a log without a final head
    (its tail may have been cut), findings that rest on a missing record are not attributed."""
    errors = {f.code for f in findings if f.severity is Severity.ERROR}
    if errors & ALTERED:
        blameless = frozenset(ErrorCode) - ALTERED
    elif ErrorCode.RECORD_UNSEALED in errors:
        blameless = ABSENCE
    else:
        return findings
    return [
        f
        if f.code not in blameless or not f.workers
        else dataclasses.replace(
            f, workers=(), message=f"{f.message} (not attributed to {', '.join(f.workers)}: the record was altered)"
        )
        for f in findings
    ]


def coordinator_key_source(pinned: bytes | None, shipped: bytes | None, summary_key: str | None) -> bytes | None:
    """The coordinator key the seal is checked under: the pinned one, else the one the directory
    ships (``coordinator.pub``, or the summary's ``coordinator_key``)."""
    if pinned is not None:
        return pinned
    if shipped is not None:
        return shipped
    return bytes.fromhex(summary_key) if summary_key else None


__all__ = [
    "ABSENCE",
    "SealOutcome",
    "check_seal",
    "unattributed_if_altered",
    "ALTERED",
    "COORDINATOR_KEY_FILE",
    "SealAudit",
    "SealReport",
    "coordinator_key_source",
    "final_roster",
    "stage_holders",
]
