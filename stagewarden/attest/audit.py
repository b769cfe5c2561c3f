"""The offline auditor: checks a run directory's receipt log and attestation without the processes.

:func:`audit_run_dir` reads the run directory (:mod:`stagewarden.attest.rundir`) and returns an
:class:`AuditReport` whose findings each say what is wrong, where (file, record index, byte
offset, step, micro-batch, unit) and which workers are implicated. The checks, in order:

1. the verifier key: pinned by the caller, or read from the run directory (a warning);
2. every attestation result token of every worker (signature under the verifier key, status);
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
import enum
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from .audit_scope import audit_scope
from .clock import Clock, SystemClock
from .ear import EarResult, is_ear_token, open_ear
from .errors import AttestError, ErrorCode
from .headers import SignedHeader, TransferKind, parse_header
from .receipt_log import LogRecord, RecordType, scan_log
from .receipts import SIGNATURE_SIZE, Receipt, UnitKind, chain_genesis, parse_receipt
from .result import RESULT_TYP, AttestationResult, Status
from .run_record import TrainingRecord
from .run_record_parts import Replacement
from .rundir import ATTESTATION_DIR, LOG_FILE, RunDir
from .token import open_token

#: The ``format`` of the JSON audit report.
AUDIT_FORMAT = "stagewarden.audit"
#: Its version.
AUDIT_VERSION = 1
#: How far in the future (by the auditor's clock) a signing time may lie before it is a finding.
CLOCK_SKEW = dt.timedelta(minutes=5)


class Severity(enum.StrEnum):
    """How bad a finding is: errors fail the audit (exit code 1), warnings do not."""

    ERROR = "error"
    WARNING = "warning"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One thing the audit found.

    Attributes:
        code: what kind of problem (an :class:`~stagewarden.attest.errors.ErrorCode`).
        severity: error or warning.
        message: what is wrong, in words.
        workers: the workers the finding implicates (empty when none can be named).
        file: the file, relative to the run directory.
        record: the log record index, when the finding is about a record.
        offset: the byte offset in the file.
        step: the step of the unit concerned.
        micro_batch: its micro-batch.
        unit: its unit or transfer kind (``forward``, ``backward``, ``update``, ``activation``,
            ``gradient``).
        stage: its stage.
    """

    code: ErrorCode
    severity: Severity
    message: str
    workers: tuple[str, ...] = ()
    file: str | None = None
    record: int | None = None
    offset: int | None = None
    step: int | None = None
    micro_batch: int | None = None
    unit: str | None = None
    stage: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The finding as a JSON object (every key present; ``null`` where unknown)."""
        return {
            "code": str(self.code),
            "severity": str(self.severity),
            "message": self.message,
            "workers": list(self.workers),
            "file": self.file,
            "record": self.record,
            "offset": self.offset,
            "step": self.step,
            "micro_batch": self.micro_batch,
            "unit": self.unit,
            "stage": self.stage,
        }

    @property
    def where(self) -> str:
        """A short location, as ``file#record@offset stage=.. step=.. mb=.. unit``."""
        parts = []
        if self.file:
            loc = self.file
            if self.record is not None:
                loc += f"#{self.record}"
            if self.offset is not None:
                loc += f"@{self.offset}"
            parts.append(loc)
        if self.stage is not None:
            parts.append(f"stage={self.stage}")
        if self.step is not None:
            parts.append(f"step={self.step}")
        if self.micro_batch is not None:
            parts.append(f"mb={self.micro_batch}")
        if self.unit:
            parts.append(self.unit)
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """The outcome of an audit.

    Attributes:
        run_dir: the audited directory.
        run_id: the run id from the summary.
        verifier_key: hex of the verifier key results were checked against.
        verifier_key_pinned: whether that key was given by the caller (else read from the run).
        records: intact log records.
        receipts: receipt records.
        headers: signed-header records.
        findings: everything found, errors and warnings.
        seconds: how long the audit took.
    """

    run_dir: str
    run_id: str
    verifier_key: str
    verifier_key_pinned: bool
    records: int
    receipts: int
    headers: int
    findings: tuple[Finding, ...]
    seconds: float

    @property
    def errors(self) -> tuple[Finding, ...]:
        """The error findings."""
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def clean(self) -> bool:
        """True when there is no error finding (warnings allowed)."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        """The versioned JSON report (``format``, ``version``, counts and findings)."""
        return {
            "format": AUDIT_FORMAT,
            "version": AUDIT_VERSION,
            "run_dir": self.run_dir,
            "run_id": self.run_id,
            "clean": self.clean,
            "verifier_key": self.verifier_key,
            "verifier_key_pinned": self.verifier_key_pinned,
            "counts": {
                "records": self.records,
                "receipts": self.receipts,
                "headers": self.headers,
                "errors": len(self.errors),
                "warnings": len(self.findings) - len(self.errors),
            },
            "findings": [f.to_json() for f in self.findings],
        }


@dataclasses.dataclass
class _Item:
    """A parsed, signature-checked log record."""

    record: LogRecord
    obj: Receipt | SignedHeader | None
    body_digest: bytes
    error: AttestError | None

    @property
    def receipt(self) -> Receipt:
        assert isinstance(self.obj, Receipt)
        return self.obj

    @property
    def header(self) -> SignedHeader:
        assert isinstance(self.obj, SignedHeader)
        return self.obj


#: (stage, replica, step, attempt, micro-batch, unit kind)
UnitKey = tuple[int, int, int, int, int, UnitKind]
#: (sender stage, sender replica, step, attempt, micro-batch, transfer kind)
TransferKey = tuple[int, int, int, int, int, TransferKind]


#: One response as the declarations below read it: its step, and its plan's ``redo_from_step``,
#: ``bypass_stage`` and ``frozen_stages`` (unchecked where it comes from raw JSON).
PlanFacts = tuple[int, Any, Any, Any]


def _response_plans(responses: Any) -> Iterator[PlanFacts]:
    """The :data:`PlanFacts` of every well-formed entry of a raw ``responses`` list (the
    runtime's own records, before they are written)."""
    if not isinstance(responses, list):
        return
    for entry in responses:
        if isinstance(entry, dict) and isinstance(entry.get("plan"), dict):
            step, plan = entry.get("step"), entry["plan"]
            if type(step) is int and step >= 0:
                yield step, plan.get("redo_from_step"), plan.get("bypass_stage"), plan.get("frozen_stages")


def recorded_plans(training: TrainingRecord | None) -> list[PlanFacts]:
    """The :data:`PlanFacts` of every response of a run record."""
    if training is None:
        return []
    return [(r.step, r.plan.redo_from_step, r.plan.bypass_stage, r.plan.frozen_stages) for r in training.responses]


def declared_attempts(responses: Any, resumes: Any = None) -> dict[int, int]:
    """How many times each step was computed, from raw ``responses`` and ``resumes`` lists.

    Each response entry whose ``plan`` redoes training from ``redo_from_step`` after a detection
    at ``step`` adds one computation to every step from the first to the second; so does each
    resume entry (a run resumed after a crash or a worker fault) for every step from its
    ``from_step`` to its ``redo_to_step``. Entries of any other shape are ignored, so lists
    without either allow one computation per step. :func:`recorded_attempts` reads a run record.
    """
    spans: list[tuple[Any, Any]] = [(first, step) for step, first, _, _ in _response_plans(responses)]
    if isinstance(resumes, list):
        spans += [(r.get("from_step"), r.get("redo_to_step")) for r in resumes if isinstance(r, dict)]
    return _attempts(spans)


def recorded_attempts(training: TrainingRecord | None) -> dict[int, int]:
    """:func:`declared_attempts` of a run record's responses and resumes."""
    return _attempts(training.recomputed_spans() if training is not None else [])


def _attempts(spans: Iterable[tuple[Any, Any]]) -> dict[int, int]:
    attempts: dict[int, int] = {}
    for first, last in spans:
        if type(first) is not int or type(last) is not int or not 0 <= first <= last or last - first > 1_000_000:
            continue
        for t in range(first, last + 1):
            attempts[t] = attempts.get(t, 1) + 1
    return attempts


def served_steps(replacements: Iterable[Replacement], steps: int) -> dict[str, tuple[int, int]]:
    """The steps each replaced or replacing worker is expected to have receipts for, from a run
    record's replacements: the ejected worker ``[0, from_step)``, its replacement
    ``[from_step, steps)``. Without replacements every worker is expected at every step.
    """
    spans: dict[str, tuple[int, int]] = {}
    for entry in replacements:
        start = entry.from_step
        spans[entry.worker] = (spans.get(entry.worker, (0, steps))[0], min(start, steps))
        spans[entry.by] = (min(start, steps), steps)
    return spans


def declared_frozen(responses: Any) -> dict[int, int]:
    """The stages whose updates a response froze, each with the first step it froze, from a raw
    ``responses`` list (:func:`frozen_stages` takes :data:`PlanFacts`).

    A frozen stage (``skip_stage``) signs no update receipts from that step on, so the audit does
    not report them missing.
    """
    return frozen_stages(_response_plans(responses))


def frozen_stages(plans: Iterable[PlanFacts]) -> dict[int, int]:
    """:func:`declared_frozen` of the responses' :data:`PlanFacts`."""
    frozen: dict[int, int] = {}
    for step, _, _, stages in plans:
        if not isinstance(stages, list):
            continue
        for stage in stages:
            if type(stage) is int and stage >= 0:
                frozen[stage] = min(step, frozen.get(stage, step))
    return frozen


def declared_bypasses(responses: Any) -> dict[tuple[int, int], int]:
    """The stage each recomputation bypassed, by ``(step, attempt)``, from a raw ``responses`` list
    (:func:`bypasses` takes :data:`PlanFacts`).

    A plan with a ``bypass_stage`` recomputes its ``redo_from_step`` once more with that stage left
    out: its neighbours exchange tensors directly (headers naming a receiver two stages away) and
    the bypassed worker signs nothing for that computation. The attempt is the number of
    computations of that step the responses before it declared, as :func:`declared_attempts` counts.
    """
    return bypasses(_response_plans(responses))


def bypasses(plans: Iterable[PlanFacts]) -> dict[tuple[int, int], int]:
    """:func:`declared_bypasses` of the responses' :data:`PlanFacts`."""
    counts: dict[int, int] = {}
    found: dict[tuple[int, int], int] = {}
    for step, first, stage, _ in plans:
        if type(first) is not int or not 0 <= first <= step or step - first > 1_000_000:
            continue
        for t in range(first, step + 1):
            counts[t] = counts.get(t, 1) + 1
        if type(stage) is int and stage >= 1:
            found[(first, counts[first] - 1)] = stage
    return found


def route_neighbour(stage: int, kind: TransferKind, bypassed: int | None) -> int:
    """The stage a ``kind`` transfer from ``stage`` goes to, past a ``bypassed`` stage."""
    step = 1 if kind is TransferKind.ACTIVATION else -1
    receiver = stage + step
    return receiver + step if receiver == bypassed else receiver


Job = tuple[bytes, bytes, bytes]  # (public key, signed message, signature)


def _verify_jobs(jobs: list[Job], start: int, stop: int) -> list[int]:
    """Indices of the jobs in ``[start, stop)`` whose signature does not verify."""
    bad = []
    open_ = crypto_sign_open
    for i in range(start, stop):
        key, message, signature = jobs[i]
        try:
            open_(signature + message, key)
        except (CryptoError, ValueError, TypeError):
            bad.append(i)
    return bad


def _verify_signatures(jobs: list[Job], threads: int) -> set[int]:
    """Indices of the ``(key, message, signature)`` jobs that do not verify, in ``threads`` threads.

    libsodium runs without the interpreter lock, so the threads verify in parallel; the loop
    around each call is kept thin so that they rarely wait for the lock. (Verifying while this
    process parses does not pay: a verifying thread would wait for the lock after every
    signature.)
    """
    if threads <= 1 or len(jobs) < 512:
        return set(_verify_jobs(jobs, 0, len(jobs)))
    size = max(256, len(jobs) // (threads * 4))
    bounds = [(i, min(i + size, len(jobs))) for i in range(0, len(jobs), size)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return {i for part in pool.map(lambda b: _verify_jobs(jobs, *b), bounds) for i in part}


def _check_records(records: list[LogRecord], threads: int) -> list[_Item]:
    """Parse every record strictly, then verify the signature of every record that parsed.

    Both formats end with ``signer_key (32) || signature (64)`` and sign everything before the
    signature, and the parsers accept only canonical bytes, so the signed message is the payload
    without its last 64 bytes.
    """
    items: list[_Item] = []
    jobs: list[Job] = []
    positions: list[int] = []
    digest = blake3.blake3
    for record in records:
        payload = record.payload
        try:
            obj: Receipt | SignedHeader = (
                parse_receipt(payload) if record.type is RecordType.RECEIPT else parse_header(payload)
            )
        except AttestError as exc:
            items.append(_Item(record, None, b"", exc))
            continue
        body = payload[:-SIGNATURE_SIZE]
        positions.append(len(items))
        jobs.append((obj.signer_key, body, obj.signature))
        items.append(_Item(record, obj, digest(body).digest(), None))
    for job in _verify_signatures(jobs, threads):
        item = items[positions[job]]
        code = ErrorCode.RECEIPT_SIGNATURE if item.record.type is RecordType.RECEIPT else ErrorCode.HEADER_SIGNATURE
        item.error = AttestError(code, f"signature does not verify under the key it names ({jobs[job][0].hex()[:16]})")
    return items


@dataclasses.dataclass(frozen=True)
class _Window:
    key: bytes
    issued_at: dt.datetime
    expires_at: dt.datetime


class _Auditor:
    def __init__(self, run: RunDir, verifier_key: bytes, pinned: bool, clock: Clock) -> None:
        self.run = run
        self.summary = run.summary
        self.verifier_key = verifier_key
        self.pinned = pinned
        self.clock = clock
        self.findings: list[Finding] = []
        self.log_name = LOG_FILE
        training = run.summary.training
        self.attempts = recorded_attempts(training)
        self.frozen = frozen_stages(recorded_plans(training))
        self.bypassed = bypasses(recorded_plans(training))
        self.replacements = training.replacements if training is not None else []

    def allowed(self, step: int) -> int:
        """How many computations of ``step`` the summary's responses declare (1 when none)."""
        return self.attempts.get(step, 1)

    def add(
        self,
        code: ErrorCode,
        message: str,
        *,
        severity: Severity = Severity.ERROR,
        workers: Iterable[str] = (),
        item: _Item | None = None,
        **where: Any,
    ) -> None:
        if item is not None:
            where.setdefault("file", self.log_name)
            where.setdefault("record", item.record.index)
            where.setdefault("offset", item.record.offset)
            obj = item.obj
            if isinstance(obj, Receipt):
                where.setdefault("step", obj.step)
                where.setdefault("micro_batch", obj.micro_batch)
                where.setdefault("unit", str(obj.kind))
                where.setdefault("stage", obj.stage)
            elif isinstance(obj, SignedHeader):
                where.setdefault("step", obj.step)
                where.setdefault("micro_batch", obj.micro_batch)
                where.setdefault("unit", str(obj.kind))
                where.setdefault("stage", obj.sender_stage)
        self.findings.append(Finding(code, severity, message, tuple(dict.fromkeys(workers)), **where))

    # -- attestation ------------------------------------------------------------------------

    def load_attestations(self) -> dict[str, list[_Window]]:
        verifier = VerifyKey(self.verifier_key)
        windows: dict[str, list[_Window]] = {}
        for worker in self.summary.workers:
            name = f"{ATTESTATION_DIR}/{worker.id}.ear"
            windows[worker.id] = []
            for line, token in enumerate(self.run.results(worker.id), start=1):
                try:
                    result = _open_result(token, verifier)
                except AttestError as exc:
                    self.add(
                        exc.code,
                        f"attestation result on line {line} is rejected: {exc.message}",
                        workers=[worker.id],
                        file=name,
                    )
                    continue
                if result.status not in (Status.AFFIRMING, Status.WARNING):
                    self.add(
                        ErrorCode.RESULT_STATUS,
                        f"attestation result on line {line} has status {result.status}",
                        workers=[worker.id],
                        file=name,
                    )
                    continue
                if result.attested_key is None:
                    self.add(
                        ErrorCode.RESULT_KEY_MISMATCH,
                        f"attestation result on line {line} attests no receipt key",
                        workers=[worker.id],
                        file=name,
                    )
                    continue
                windows[worker.id].append(_Window(result.attested_key, result.issued_at, result.expires_at))
        return windows

    def check_keys(self, items: list[_Item], windows: dict[str, list[_Window]]) -> None:
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
                self.add(
                    code,
                    f"signing key {short} is not attested for worker {worker} by any valid result{where}{more}",
                    workers=[worker, *others],
                    item=item,
                )
            else:
                window = "; ".join(f"[{w.issued_at.isoformat()}, {w.expires_at.isoformat()})" for w in ws)
                state = "expired" if code is ErrorCode.RESULT_EXPIRED else "not yet valid"
                self.add(
                    code,
                    f"the attestation of signing key {short} was {state} when the record was signed at "
                    f"{obj.signed_at.isoformat()} (valid {window}){more}",
                    workers=[worker],
                    item=item,
                )

    # -- records ----------------------------------------------------------------------------

    def check_records(self, items: list[_Item]) -> list[_Item]:
        """Report per-record problems; return the records that the chain and link checks use."""
        good = []
        now = self.clock.now()
        run_id = self.summary.run_id
        assigned = {w.id: (w.stage, w.replica) for w in self.summary.workers}
        for item in items:
            obj = item.obj
            if obj is None:
                assert item.error is not None
                self.add(item.error.code, item.error.message, item=item)
                continue
            worker = obj.worker_id if isinstance(obj, Receipt) else obj.sender
            what = "receipt" if isinstance(obj, Receipt) else "signed header"
            if item.error is not None:
                self.add(
                    item.error.code,
                    f"{what} claiming to be from worker {worker} is forged or altered: {item.error.message}",
                    workers=[worker],
                    item=item,
                )
                continue
            if obj.run_id != run_id:
                self.add(
                    ErrorCode.RUN_MISMATCH,
                    f"{what} of worker {worker} belongs to run {obj.run_id!r}, not "
                    f"{run_id!r} (replayed from another run)",
                    workers=[worker],
                    item=item,
                )
                continue
            position = (obj.stage, obj.replica) if isinstance(obj, Receipt) else (obj.sender_stage, obj.sender_replica)
            if worker not in assigned:
                self.add(
                    ErrorCode.WORKER_UNKNOWN,
                    f"{what} from worker {worker}, which the run summary does not list",
                    workers=[worker],
                    item=item,
                )
                continue
            if assigned[worker] != position:
                self.add(
                    ErrorCode.WORKER_UNKNOWN,
                    f"{what} of worker {worker} claims stage {position[0]} replica "
                    f"{position[1]}, but the worker was admitted for stage {assigned[worker][0]} replica "
                    f"{assigned[worker][1]}",
                    workers=[worker],
                    item=item,
                )
            if obj.signed_at > now + CLOCK_SKEW:
                self.add(
                    ErrorCode.RECEIPT_FUTURE,
                    f"{what} of worker {worker} is signed at {obj.signed_at.isoformat()}, in the future",
                    workers=[worker],
                    item=item,
                )
            good.append(item)
        return good

    def check_chains(self, receipts: list[_Item]) -> list[_Item]:
        """Check every worker's receipt chain; return the receipts without exact duplicates."""
        by_worker: dict[str, list[_Item]] = defaultdict(list)
        unique: list[_Item] = []
        seen: dict[bytes, _Item] = {}
        for item in receipts:
            first = seen.get(item.body_digest)
            if first is not None:
                self.add(
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
            children: dict[bytes, list[_Item]] = defaultdict(list)
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
                    self.add(
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
                    self.add(
                        ErrorCode.RECEIPT_DROPPED,
                        f"worker {worker}'s receipt chains to a receipt that is not in "
                        f"the log: the receipt(s) before this one were dropped",
                        workers=[worker],
                        item=item,
                    )
                elif j > i:
                    self.add(
                        ErrorCode.RECEIPT_REORDERED,
                        f"worker {worker}'s receipt chains to record "
                        f"{chain[j].record.index}, which comes later in the log: the records were reordered",
                        workers=[worker],
                        item=item,
                    )
                if j is not None and item.receipt.signed_at < chain[j].receipt.signed_at:
                    self.add(
                        ErrorCode.RECEIPT_CHAIN,
                        f"worker {worker}'s receipt is signed at {item.receipt.signed_at.isoformat()}, before its "
                        f"predecessor (record {chain[j].record.index}, {chain[j].receipt.signed_at.isoformat()}): "
                        "its signing times go backwards (backdated)",
                        workers=[worker],
                        item=item,
                    )
        return unique

    def check_units(self, receipts: list[_Item]) -> dict[UnitKey, Receipt]:
        """Conflicts and completeness; return the receipts to link, one per unit and attempt.

        A unit may be computed once per attempt at its step: a step that a response recomputed
        (declared in the summary's ``responses``) has several attempts, and the k-th receipt of a
        stage's unit in log order belongs to attempt k. More receipts than attempts for one worker
        and unit is a conflict.
        """
        units: dict[tuple[str, int, int, UnitKind], list[_Item]] = defaultdict(list)
        for item in receipts:
            r = item.receipt
            units[(r.worker_id, r.step, r.micro_batch, r.kind)].append(item)
        conflicted: set[tuple[str, int, int, UnitKind]] = set()
        for key, group in units.items():
            allowed = self.allowed(key[1])
            if len(group) > allowed:
                worker = key[0]
                records = ", ".join(str(g.record.index) for g in group)
                beyond = f", more than the {allowed} computations of its step" if allowed > 1 else ""
                self.add(
                    ErrorCode.RECEIPT_CONFLICT,
                    f"worker {worker} signed {len(group)} different receipts for the same unit (records {records})"
                    + beyond,
                    workers=[worker],
                    item=group[1],
                )
                conflicted.add(key)
        linkable: dict[UnitKey, Receipt] = {}
        attempt: dict[tuple[int, int, int, int, UnitKind], int] = defaultdict(int)
        for item in receipts:
            r = item.receipt
            if (r.worker_id, r.step, r.micro_batch, r.kind) in conflicted:
                continue
            position = (r.stage, r.replica, r.step, r.micro_batch, r.kind)
            while self.bypassed.get((r.step, attempt[position])) == r.stage:  # it computed nothing then
                attempt[position] += 1
            linkable[(r.stage, r.replica, r.step, attempt[position], r.micro_batch, r.kind)] = r
            attempt[position] += 1
        s = self.summary
        spans = served_steps(self.replacements, s.steps)
        logged: dict[str, list[tuple[int, int, UnitKind]]] = defaultdict(list)
        for worker, step, mb, kind in units:
            logged[worker].append((step, mb, kind))
        for w in s.workers:
            count, first = self._missing(w.id, spans.get(w.id, (0, s.steps)), self.frozen.get(w.stage), logged[w.id])
            if first is not None:
                step, mb, kind = first
                self.add(
                    ErrorCode.RECEIPT_MISSING,
                    f"worker {w.id} has no receipt for {count} unit(s) of the "
                    f"{s.steps} step(s) the summary reports; the first is step {step} micro-batch {mb} {kind}",
                    workers=[w.id],
                    file=self.log_name,
                    stage=w.stage,
                    step=step,
                    micro_batch=mb,
                    unit=str(kind),
                )
        return linkable

    def _missing(
        self, worker: str, span: tuple[int, int], frozen_from: int | None, logged: list[tuple[int, int, UnitKind]]
    ) -> tuple[int, tuple[int, int, UnitKind] | None]:
        """How many of ``worker``'s expected units in the steps ``span`` have no receipt among its
        ``logged`` units (distinct), and the first of them: ``micro_batches`` forward and backward
        units per step and an update per step before ``frozen_from``. The count is arithmetic and
        the search for the first stops after as many units as the worker logged, so the work is
        bounded by the log, not by the summary's step count."""
        begin, end = span
        mbs = self.summary.micro_batches
        updates_end = end if frozen_from is None else max(begin, min(end, frozen_from))
        present = 0
        for step, mb, kind in logged:
            if not begin <= step < end:
                continue
            if kind is UnitKind.UPDATE:
                present += mb == 0 and step < updates_end
            else:
                present += mb < mbs
        expected = max(0, end - begin) * mbs * 2 + max(0, updates_end - begin)
        if present == expected:
            return 0, None
        have = set(logged)
        for step in range(begin, end):
            for mb in range(mbs):
                for kind in (UnitKind.FORWARD, UnitKind.BACKWARD):
                    if (step, mb, kind) not in have:
                        return expected - present, (step, mb, kind)
            if step < updates_end and (step, 0, UnitKind.UPDATE) not in have:
                return expected - present, (step, 0, UnitKind.UPDATE)
        raise AssertionError("a unit counted missing was not found")  # pragma: no cover

    def check_headers(self, headers: list[_Item], linkable: dict[UnitKey, Receipt]) -> dict[TransferKey, SignedHeader]:
        """Duplicates, equivocation and agreement with the sender's receipt; return one header per transfer.

        Headers are grouped by transfer and attempt like receipts (see :meth:`check_units`):
        different headers for one transfer beyond the attempts declared for its step are
        equivocation.
        """
        transfers: dict[tuple[int, int, int, int, TransferKind], list[_Item]] = defaultdict(list)
        seen: dict[bytes, _Item] = {}
        for item in headers:
            h = item.header
            first = seen.get(item.body_digest)
            if first is not None:
                self.add(
                    ErrorCode.LOG_DUPLICATE,
                    f"signed header replayed: identical to record {first.record.index}",
                    workers=[h.sender],
                    item=item,
                )
                continue
            seen[item.body_digest] = item
            transfers[(h.sender_stage, h.sender_replica, h.step, h.micro_batch, h.kind)].append(item)
        agreed: dict[TransferKey, SignedHeader] = {}
        for key, group in transfers.items():
            sender = group[0].header.sender
            if len(group) > self.allowed(key[2]):
                digests = {g.header.tensor for g in group}
                records = ", ".join(str(g.record.index) for g in group)
                self.add(
                    ErrorCode.HEADER_EQUIVOCATION,
                    f"worker {sender} signed {len(digests)} different headers for "
                    f"the same {key[4]} transfer (records {records}): it sent different tensors for one transfer",
                    workers=sorted({g.header.sender for g in group}),
                    item=group[1],
                )
                continue
            unit = UnitKind.FORWARD if key[4] is TransferKind.ACTIVATION else UnitKind.BACKWARD
            for attempt, item in enumerate(group):
                h = item.header
                bypassed = self.bypassed.get((h.step, attempt))
                if h.receiver_stage != route_neighbour(h.sender_stage, h.kind, bypassed):
                    past = f" past bypassed stage {bypassed}" if bypassed is not None else ""
                    self.add(
                        ErrorCode.LINK_MISMATCH,
                        f"worker {h.sender} signed a {h.kind} header to stage {h.receiver_stage}, which stage "
                        f"{h.sender_stage} does not send to in computation {attempt} of step {h.step}{past}: "
                        "no response of the run bypasses the stage between them",
                        workers=[h.sender],
                        item=item,
                    )
                agreed[(key[0], key[1], key[2], attempt, key[3], key[4])] = h
                receipt = linkable.get((key[0], key[1], key[2], attempt, key[3], unit))
                if receipt is not None and receipt.output_digest != h.tensor.digest:
                    self.add(
                        ErrorCode.HEADER_MISMATCH,
                        f"worker {h.sender} signed a {key[4]} header whose tensor digest "
                        f"differs from the output digest of its own {unit} receipt",
                        workers=[h.sender],
                        item=item,
                    )
        return agreed

    def check_links(
        self,
        linkable: dict[UnitKey, Receipt],
        headers: dict[TransferKey, SignedHeader],
    ) -> None:
        """Adjacent stages must agree on the tensors they exchanged, attempt by attempt."""
        s = self.summary
        for (stage, replica, step, attempt, mb, kind), receipt in linkable.items():
            bypassed = self.bypassed.get((step, attempt))
            if (
                kind is UnitKind.FORWARD
                and (to := route_neighbour(stage, TransferKind.ACTIVATION, bypassed)) < s.stages
            ):
                sender, receiver = receipt, linkable.get((to, replica, step, attempt, mb, UnitKind.FORWARD))
                transfer = TransferKind.ACTIVATION
            elif kind is UnitKind.BACKWARD and (to := route_neighbour(stage, TransferKind.GRADIENT, bypassed)) >= 0:
                sender, receiver = receipt, linkable.get((to, replica, step, attempt, mb, UnitKind.BACKWARD))
                transfer = TransferKind.GRADIENT
            else:
                continue
            if receiver is None or sender.output_digest == receiver.input_digest:
                continue
            header = headers.get((stage, replica, step, attempt, mb, transfer))
            where: dict[str, Any] = dict(file=self.log_name, step=step, micro_batch=mb, unit=str(kind), stage=stage)
            if header is not None and header.tensor.digest == sender.output_digest:
                self.add(
                    ErrorCode.LINK_MISMATCH,
                    f"worker {receiver.worker_id} (stage {receiver.stage}) claims a "
                    f"{kind} input that differs from the {transfer} worker {sender.worker_id} sent with a signed "
                    f"header: the receiver's receipt is false",
                    workers=[receiver.worker_id],
                    **where,
                )
            elif header is not None and header.tensor.digest == receiver.input_digest:
                self.add(
                    ErrorCode.LINK_MISMATCH,
                    f"worker {sender.worker_id} (stage {stage}) sent a {transfer} that "
                    f"differs from the output its own {kind} receipt claims: the sender's receipt is false",
                    workers=[sender.worker_id],
                    **where,
                )
            else:
                self.add(
                    ErrorCode.LINK_MISMATCH,
                    f"the {kind} output of worker {sender.worker_id} (stage {stage}) "
                    f"differs from the input of worker {receiver.worker_id} (stage {receiver.stage}); no signed "
                    f"header settles which one is false",
                    workers=[sender.worker_id, receiver.worker_id],
                    **where,
                )


def audit_run_dir(
    path: str | os.PathLike[str],
    verifier_key: bytes | VerifyKey | None = None,
    clock: Clock | None = None,
    *,
    threads: int | None = None,
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

    Raises:
        stagewarden.attest.rundir.RunDirError: the directory, its summary, its receipt log or the
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
    auditor = _Auditor(run, key, pinned, clock or SystemClock())
    for code, message in scope.lacks():
        auditor.add(code, message, severity=Severity.WARNING)
    if not pinned and scope.attestation:
        auditor.add(
            ErrorCode.VERIFIER_KEY_UNPINNED,
            f"the verifier key {key.hex()[:16]} was read from the run directory, "
            "not pinned: the audit only shows the run is consistent with the key it ships; pass the verifier "
            "key to trust the attestation results",
            severity=Severity.WARNING,
            file=f"{ATTESTATION_DIR}/verifier.pub",
        )
    windows = auditor.load_attestations() if scope.attestation else {}
    records: list[LogRecord] = []
    if scope.receipts:
        scan = scan_log(run.read_log_bytes())
        records = scan.records
        for problem in scan.problems:
            auditor.add(problem.code, problem.message, file=LOG_FILE, record=problem.index, offset=problem.offset)
        items = _check_records(records, threads or os.cpu_count() or 1)
        good = auditor.check_records(items)
        if scope.attestation:
            auditor.check_keys(good, windows)
        receipts = [i for i in good if isinstance(i.obj, Receipt)]
        headers = [i for i in good if isinstance(i.obj, SignedHeader)]
        unique = auditor.check_chains(receipts)
        linkable = auditor.check_units(unique)
        agreed = auditor.check_headers(headers, linkable)
        auditor.check_links(linkable, agreed)

    def order(f: Finding) -> tuple[int, int, int]:
        group = (
            0 if f.code is ErrorCode.VERIFIER_KEY_UNPINNED else 1 if (f.file or "").startswith(ATTESTATION_DIR) else 2
        )
        return (group, f.record if f.record is not None else len(records), f.step or 0)

    findings = sorted(auditor.findings, key=order)
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
    )


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
