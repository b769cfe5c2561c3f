"""The audit's first pass over the receipt log: parse every record and establish who signed it.

A receipt or signed header is its signer's when its leaf hash is listed by a genuine step root
(:mod:`stagewarden.attest.step_roots`) of the same worker under the same key: one signature
check per worker and step stands for all the records it covers. A record no genuine root covers
has its own signature checked. A root is checked in turn: its signature, and that every receipt
and header it lists is in the log (what a worker signed for a step cannot be cut out of the log
without its root, which the seal then finds missing).
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import blake3
from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

from .audit_findings import FindingLog, LogItem
from .errors import AttestError, ErrorCode
from .headers import SignedHeader, parse_header
from .receipt_log import LogRecord, RecordType
from .receipts import SIGNATURE_SIZE, Receipt, parse_receipt
from .rundir import LOG_FILE
from .step_roots import StepRoot, leaf_hash, parse_root

Job = tuple[bytes, bytes, bytes]  # (public key, signed message, signature)
_SEAL_RECORDS = (RecordType.STEP_HEAD, RecordType.COSIGNATURE)


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


def verify_signatures(jobs: list[Job], threads: int) -> set[int]:
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


def _genuine_roots(records: list[LogRecord], log: FindingLog, threads: int) -> list[tuple[LogRecord, StepRoot]]:
    """The step roots of the log whose signature verifies; the others are reported."""
    parsed: list[tuple[LogRecord, StepRoot]] = []
    for record in records:
        if record.type is not RecordType.STEP_ROOT:
            continue
        try:
            parsed.append((record, parse_root(record.payload)))
        except AttestError as exc:
            log.add(exc.code, exc.message, file=LOG_FILE, record=record.index, offset=record.offset)
    jobs = [(root.signer_key, root.message(), root.signature) for _, root in parsed]
    bad = verify_signatures(jobs, threads)
    for i in sorted(bad):
        record, root = parsed[i]
        log.add(
            ErrorCode.STEP_ROOT_SIGNATURE,
            f"the step root claiming to be from worker {root.worker_id} for step {root.step} is forged or altered: "
            f"its signature does not verify under the key it names ({root.signer_key.hex()[:16]})",
            workers=[root.worker_id],
            file=LOG_FILE,
            record=record.index,
            offset=record.offset,
            step=root.step,
        )
    return [pair for i, pair in enumerate(parsed) if i not in bad]


def check_records(records: list[LogRecord], threads: int, log: FindingLog) -> list[LogItem]:
    """Parse every receipt and header strictly and establish its signer (see the module
    docstring); report the step roots' problems to ``log``.

    Both record formats end with ``signer_key (32) || signature (64)`` and sign everything
    before the signature, and the parsers accept only canonical bytes, so a record's signed
    message is its payload without the last 64 bytes.
    """
    roots = _genuine_roots(records, log, threads)
    covered: dict[bytes, tuple[str, bytes]] = {}  # leaf hash -> (worker, key) of a genuine root
    for _, root in roots:
        for leaf in root.leaves:
            covered[leaf] = (root.worker_id, root.signer_key)
    items: list[LogItem] = []
    jobs: list[Job] = []
    positions: list[int] = []
    seen: set[bytes] = set()
    digest = blake3.blake3
    for record in records:
        if record.type in _SEAL_RECORDS or record.type is RecordType.STEP_ROOT:
            continue
        payload = record.payload
        try:
            obj: Receipt | SignedHeader = (
                parse_receipt(payload) if record.type is RecordType.RECEIPT else parse_header(payload)
            )
        except AttestError as exc:
            items.append(LogItem(record, None, b"", exc))
            continue
        body = payload[:-SIGNATURE_SIZE]
        leaf = leaf_hash(payload)
        seen.add(leaf)
        signer = obj.worker_id if isinstance(obj, Receipt) else obj.sender
        if covered.get(leaf) != (signer, obj.signer_key):
            positions.append(len(items))
            jobs.append((obj.signer_key, body, obj.signature))
        items.append(LogItem(record, obj, digest(body).digest(), None))
    for job in verify_signatures(jobs, threads):
        item = items[positions[job]]
        code = ErrorCode.RECEIPT_SIGNATURE if item.record.type is RecordType.RECEIPT else ErrorCode.HEADER_SIGNATURE
        item.error = AttestError(code, f"signature does not verify under the key it names ({jobs[job][0].hex()[:16]})")
    _check_listed(roots, seen, log)
    return items


def _check_listed(roots: list[tuple[LogRecord, StepRoot]], seen: set[bytes], log: FindingLog) -> None:
    """Report every genuine root that lists a record the log does not hold: the record was cut
    out (the coordinator logs a root only with every record it covers). Not blamed on the
    worker, whose signature shows what it committed to."""
    missing: defaultdict[tuple[str, int], list[tuple[LogRecord, int, int]]] = defaultdict(list)
    for record, root in roots:
        receipts = sum(1 for leaf in root.receipt_leaves if leaf not in seen)
        headers = sum(1 for leaf in root.header_leaves if leaf not in seen)
        if receipts or headers:
            missing[(root.worker_id, root.step)].append((record, receipts, headers))
    for (worker, step), cases in missing.items():
        record, receipts, headers = cases[0]
        log.add(
            ErrorCode.STEP_ROOT_MISMATCH,
            f"worker {worker}'s signed step root for step {step} lists {receipts} receipt(s) and {headers} "
            "header(s) that the log does not hold: records were removed",
            file=LOG_FILE,
            record=record.index,
            offset=record.offset,
            step=step,
        )
