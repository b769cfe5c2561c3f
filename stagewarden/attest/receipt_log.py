"""The receipt log: an append-only, hash-chained, crash-safe file of receipts and received signed headers.

File layout: a 16-byte file header (magic ``SWRLOG\\r\\n``, ``u16`` version 1, six zero bytes),
then records, each framed as::

    u32 payload length L (1 .. MAX_PAYLOAD) | u8 record type (1 receipt, 2 signed header,
    3 coordinator-signed step head, 4 a worker's cosignature of a step head, 5 a worker's
    signed step root)
    | 32-byte digest of the previous record (LOG_GENESIS for the first) | L payload bytes
    | 32-byte record digest = BLAKE3 of everything before it in the frame

Reading (:func:`read_log`) never trusts a frame it has not checked: a file that ends inside a
frame, a final frame whose digest does not match (a write that did not reach the disk whole;
zero bytes after it, where the file grew but the data never reached the disk, are part of the
tear) or a tail of zero bytes is a *torn tail* (``LOG_TORN``, with its offset), reported and never
accepted; a bad frame anywhere else is ``LOG_MALFORMED``; a frame whose previous-digest field
does not match is ``LOG_CHAIN``. :func:`recover_torn_tail` truncates a torn tail, only when asked.

Durability (``sync``): ``"always"`` (default) fsyncs after every append, so an acknowledged
record survives power loss; ``"batch"`` fsyncs once per ``batch_size`` appends or
``batch_seconds`` (group commit) and on :meth:`ReceiptLog.sync` and close, so up to one batch of
acknowledged records can be lost, torn tails still being detected; ``"explicit"`` fsyncs only on
:meth:`ReceiptLog.sync` and close (the writer decides what a durable group is: the coordinator
syncs once per training step, before the step counts as done); ``"none"`` leaves it to the OS.
A new log is created atomically (written to a temporary file, fsynced, linked into place without
overwriting, and the directory fsynced).

The index maps ``(worker, step, micro_batch, kind)`` to the records for that unit (a list: a
log may hold duplicates or conflicting records, which the auditor must see). It is rebuilt from
the log on every open rather than kept in a sidecar file, so it can never be stale or trusted
instead of the log.
"""

from __future__ import annotations

import dataclasses
import enum
import fcntl
import os
import struct
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import blake3

from .errors import AttestError, ErrorCode, FormatError
from .headers import SignedHeader, encode_header, parse_header
from .log_source import BytesSource, FileSource, LogSource
from .receipts import Receipt, encode_receipt, parse_receipt
from .step_heads import Cosignature, SignedStepHead
from .step_roots import StepRoot, parse_root

#: First eight bytes of a receipt log.
LOG_MAGIC = b"SWRLOG\r\n"
#: The log format version this module writes and reads.
LOG_VERSION = 1
#: The whole file header: magic, version, six reserved zero bytes.
FILE_HEADER = LOG_MAGIC + struct.pack(">H", LOG_VERSION) + bytes(6)
#: Largest record payload, in bytes.
MAX_PAYLOAD = 64 * 1024
#: The previous-record digest of the first record.
LOG_GENESIS = blake3.blake3(b"stagewarden/receipt-log/genesis/v1\x00").digest()

_FRAME_HEAD = struct.Struct(">IB32s")
_DIGEST = 32
FRAME_OVERHEAD = _FRAME_HEAD.size + _DIGEST

SyncPolicy = Literal["always", "batch", "explicit", "none"]


class RecordType(enum.IntEnum):
    """What a log record holds."""

    RECEIPT = 1
    HEADER = 2
    STEP_HEAD = 3
    COSIGNATURE = 4
    STEP_ROOT = 5


_RECORD_TYPES = frozenset(int(t) for t in RecordType)


@dataclasses.dataclass(frozen=True)
class LogRecord:
    """One intact record of the log.

    Attributes:
        index: position in the log (0 for the first record).
        offset: byte offset of the frame in the file.
        type: receipt or signed header.
        payload: the encoded receipt or header.
        prev: the previous-record digest the frame carries.
        digest: the record's own digest (the next record's ``prev``).
    """

    index: int
    offset: int
    type: RecordType
    payload: bytes
    prev: bytes
    digest: bytes


@dataclasses.dataclass(frozen=True)
class LogProblem:
    """Something wrong with the log file itself.

    Attributes:
        code: ``LOG_TORN``, ``LOG_MALFORMED`` or ``LOG_CHAIN``.
        offset: byte offset in the file where the problem starts.
        index: the record index (the index the next record would have, for a torn tail).
        message: what is wrong.
    """

    code: ErrorCode
    offset: int
    index: int
    message: str

    def error(self) -> AttestError:
        """The problem as an exception."""
        cls = FormatError if self.code is not ErrorCode.LOG_CHAIN else AttestError
        return cls(self.code, f"{self.message} (record {self.index}, byte offset {self.offset})")


@dataclasses.dataclass(frozen=True)
class LogScan:
    """Everything :func:`read_log` found: the intact records and the problems, in file order.

    Attributes:
        records: every intact record (reading stops at the first torn or malformed frame).
        problems: the problems found.
        end: offset just after the last intact record (where a torn tail starts).
        size: the file size.
        truncated: the scan stopped at its record limit before the end of the file.
    """

    records: list[LogRecord]
    problems: list[LogProblem]
    end: int
    size: int
    truncated: bool = False

    @property
    def torn(self) -> LogProblem | None:
        """The torn-tail problem, if the log has one."""
        return next((p for p in self.problems if p.code is ErrorCode.LOG_TORN), None)


def frame_record(record_type: RecordType, payload: bytes, prev: bytes) -> bytes:
    """The frame of one record (see the module docstring)."""
    if not 0 < len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"a record payload is 1 to {MAX_PAYLOAD} bytes, not {len(payload)}")
    head = _FRAME_HEAD.pack(len(payload), int(record_type), prev) + payload
    return head + blake3.blake3(head).digest()


def scan_log(data: bytes) -> LogScan:
    """Check the bytes of a receipt log frame by frame; see the module docstring for the rules."""
    return scan_source(BytesSource(data))


def scan_log_file(fd: int, size: int, max_records: int | None = None) -> LogScan:
    """:func:`scan_log` of the first ``size`` bytes of the open file ``fd``, read in bounded
    windows: the scan's memory is that of the records it returns, whatever the file holds. With
    ``max_records``, the scan stops after that many records (``truncated`` says whether more
    bytes followed).

    Raises:
        OSError: the file cannot be read, or shrinks below ``size`` while it is read.
    """
    return scan_source(FileSource(fd, size), max_records)


def scan_source(source: LogSource, max_records: int | None = None) -> LogScan:
    """:func:`scan_log` of the bytes of ``source``, stopping after ``max_records`` records."""
    size = source.size
    problems: list[LogProblem] = []
    records: list[LogRecord] = []
    header = source.read(0, len(FILE_HEADER))
    if len(header) < len(FILE_HEADER) or header[: len(LOG_MAGIC)] != LOG_MAGIC:
        problems.append(
            LogProblem(
                ErrorCode.LOG_MALFORMED,
                0,
                0,
                "not a receipt log (the file does not start with the receipt-log magic and a full 16-byte file header)",
            )
        )
        return LogScan(records, problems, 0, size)
    if header != FILE_HEADER:
        (version,) = struct.unpack_from(">H", header, len(LOG_MAGIC))
        message = (
            f"receipt log version {version} is not supported (only {LOG_VERSION})"
            if version != LOG_VERSION
            else "the receipt log's reserved header bytes are not zero"
        )
        problems.append(LogProblem(ErrorCode.LOG_MALFORMED, len(LOG_MAGIC), 0, message))
        return LogScan(records, problems, 0, size)
    offset = len(FILE_HEADER)
    expected = LOG_GENESIS
    index = 0
    head_size = _FRAME_HEAD.size
    unpack = _FRAME_HEAD.unpack_from
    hasher = blake3.blake3
    read = source.read
    limit = size if max_records is None else max_records
    while offset < size:
        if index >= limit:
            return LogScan(records, problems, offset, size, truncated=True)
        left = size - offset
        if left < FRAME_OVERHEAD + 1:
            problems.append(_torn(offset, index, f"the file ends {left} bytes into a record frame"))
            break
        length, rtype, prev = unpack(read(offset, head_size))
        if not 0 < length <= MAX_PAYLOAD or rtype not in _RECORD_TYPES:
            if source.zeros_from(offset):
                problems.append(
                    _torn(
                        offset,
                        index,
                        f"the last {left} bytes of the file are zeros (space allocated, record never written)",
                    )
                )
            elif source.zeros_from(offset + 4):  # a tear inside the length field: type and rest are zeros
                problems.append(
                    _torn(offset, index, "the file ends with part of a frame's length field followed by zeros")
                )
            else:
                what = f"payload length {length}" if not 0 < length <= MAX_PAYLOAD else f"record type {rtype}"
                problems.append(LogProblem(ErrorCode.LOG_MALFORMED, offset, index, f"invalid frame: {what}"))
            break
        end = offset + head_size + length + _DIGEST
        if end > size:
            later = _intact_frame_at_eof(source, offset)
            if later is None:
                problems.append(
                    _torn(
                        offset,
                        index,
                        f"the file ends inside a record frame of {end - offset} bytes ({size - offset} present)",
                    )
                )
            else:  # appends are sequential: an intact record after this frame means it was damaged, not torn
                problems.append(
                    LogProblem(
                        ErrorCode.LOG_MALFORMED,
                        offset,
                        index,
                        f"invalid frame: payload length {length} runs past the end of the file, but an intact "
                        f"record ends the file at byte offset {later}",
                    )
                )
            break
        frame = read(offset, end - offset)
        digest = hasher(memoryview(frame)[:-_DIGEST]).digest()
        if digest != frame[-_DIGEST:]:
            # The final frame, even when zero bytes follow it (the file grew, its data never reached the disk).
            if end == size or source.zeros_from(end):
                problems.append(
                    _torn(
                        offset,
                        index,
                        "the final record's digest does not match its bytes (a write "
                        "that did not reach the disk whole)" + ("" if end == size else "; only zero bytes follow it"),
                    )
                )
            else:
                problems.append(
                    LogProblem(
                        ErrorCode.LOG_MALFORMED,
                        offset,
                        index,
                        "record digest does not match its bytes (corrupted or altered)",
                    )
                )
            break
        if prev != expected:
            problems.append(
                LogProblem(
                    ErrorCode.LOG_CHAIN,
                    offset,
                    index,
                    "record does not chain to the previous record (its previous-record digest differs)",
                )
            )
        records.append(LogRecord(index, offset, RecordType(rtype), frame[head_size:-_DIGEST], prev, digest))
        expected = digest
        offset = end
        index += 1
    end_offset = records[-1].offset + FRAME_OVERHEAD + len(records[-1].payload) if records else len(FILE_HEADER)
    return LogScan(records, problems, end_offset, size)


def _intact_frame_at_eof(source: LogSource, start: int) -> int | None:
    """The offset of a complete, digest-valid frame after ``start`` that ends exactly at the end of the source.

    A torn write is the last thing in the file, so finding such a frame proves that the frame at
    ``start`` was damaged rather than torn (and must not be truncated away with what follows).
    Only the last ``FRAME_OVERHEAD + MAX_PAYLOAD`` bytes can hold one.
    """
    size = source.size
    first = max(start + 1, size - FRAME_OVERHEAD - MAX_PAYLOAD)
    tail = source.read(first, size - first)
    for pos in range(first, size - FRAME_OVERHEAD):
        length, rtype, _ = _FRAME_HEAD.unpack_from(tail, pos - first)
        if length == size - pos - FRAME_OVERHEAD and rtype in (1, 2):
            if blake3.blake3(tail[pos - first : size - first - _DIGEST]).digest() == tail[size - first - _DIGEST :]:
                return pos
    return None


def _torn(offset: int, index: int, message: str) -> LogProblem:
    return LogProblem(ErrorCode.LOG_TORN, offset, index, f"torn final record: {message}")


def read_log(path: str | os.PathLike[str]) -> LogScan:
    """Read and check a receipt log file (raises ``OSError`` only when the file cannot be read)."""
    return scan_log(Path(path).read_bytes())


def recover_torn_tail(path: str | os.PathLike[str]) -> int:
    """Truncate a torn tail off the log at ``path``; return the number of bytes removed (0 if none).

    Only a torn tail is removed; a log with any other problem is left as it is.

    Raises:
        stagewarden.attest.errors.AttestError: the log has a problem other than a torn tail, or is locked by a writer.
    """
    with open(path, "r+b") as handle:
        _lock(handle.fileno(), path)
        scan = scan_log(handle.read())
        others = [p for p in scan.problems if p.code is not ErrorCode.LOG_TORN]
        if others:
            raise others[0].error()
        if scan.torn is None:
            return 0
        handle.truncate(scan.end)
        handle.flush()
        os.fsync(handle.fileno())
        return scan.size - scan.end


def _lock(fd: int, path: str | os.PathLike[str]) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise AttestError(
            ErrorCode.LOG_LOCKED, f"receipt log {os.fspath(path)} is open for writing elsewhere"
        ) from None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


UnitKey = tuple[str, int, int, str]


def record_key(record: LogRecord) -> UnitKey:
    """The index key of a record: ``(worker, step, micro_batch, kind)`` (raises FormatError if it does not parse).

    For a receipt the worker is its signer's worker id and kind the unit kind; for a signed
    header the worker is the sender and kind ``activation`` or ``gradient``. A step head or a
    cosignature names no unit: its key is ``("", index, 0, "head")`` or ``"cosignature"``; a
    worker's step root's is ``(worker, step, 0, "root")``.
    """
    if record.type in (RecordType.STEP_HEAD, RecordType.COSIGNATURE):
        return ("", record.index, 0, "head" if record.type is RecordType.STEP_HEAD else "cosignature")
    if record.type is RecordType.STEP_ROOT:
        root = parse_root(record.payload)
        return (root.worker_id, root.step, 0, "root")
    if record.type is RecordType.RECEIPT:
        r = parse_receipt(record.payload)
        return (r.worker_id, r.step, r.micro_batch, str(r.kind))
    h = parse_header(record.payload)
    return (h.sender, h.step, h.micro_batch, str(h.kind))


class ReceiptLog:
    """A receipt log open for appending (one writer at a time: the file is locked).

    Use :meth:`create` for a new log and :meth:`open` for an existing one; both return a log
    whose ``records`` and index cover every record already in the file.
    """

    def __init__(
        self, path: Path, fd: int, scan: LogScan, sync: SyncPolicy, batch_size: int, batch_seconds: float
    ) -> None:
        if sync not in ("always", "batch", "explicit", "none"):
            raise ValueError(f"sync must be 'always', 'batch', 'explicit' or 'none', not {sync!r}")
        self.path = path
        self._fd = fd
        self._sync = sync
        self._batch_size = batch_size
        self._batch_seconds = batch_seconds
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.records: list[LogRecord] = list(scan.records)
        self._end = scan.end
        self._index: defaultdict[UnitKey, list[int]] = defaultdict(list)
        for record in self.records:
            self._index[record_key(record)].append(record.index)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        sync: SyncPolicy = "always",
        batch_size: int = 64,
        batch_seconds: float = 0.05,
    ) -> ReceiptLog:
        """Create a new, empty log at ``path`` (never overwriting) and open it for appending.

        Raises:
            FileExistsError: ``path`` exists.
        """
        target = Path(path)
        folder = target.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        try:
            os.write(fd, FILE_HEADER)
            os.fsync(fd)
            os.close(fd)
            os.link(tmp, target)
        finally:
            os.unlink(tmp)
        _fsync_dir(folder)
        return cls.open(target, sync=sync, batch_size=batch_size, batch_seconds=batch_seconds)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        sync: SyncPolicy = "always",
        batch_size: int = 64,
        batch_seconds: float = 0.05,
    ) -> ReceiptLog:
        """Open an existing log for appending after checking every record.

        Raises:
            stagewarden.attest.errors.AttestError: the log has a problem (``LOG_TORN`` with its offset: call
                :func:`recover_torn_tail` to drop the torn record; ``LOG_MALFORMED``,
                ``LOG_CHAIN``; ``RECEIPT_MALFORMED`` or ``HEADER_MALFORMED`` for a record whose
                payload does not parse; ``LOG_LOCKED`` when another writer has it open).
        """
        target = Path(path)
        fd = os.open(target, os.O_RDWR | os.O_APPEND)
        try:
            _lock(fd, target)
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0)
            scan = scan_log(data)
            if scan.problems:
                raise scan.problems[0].error()
            return cls(target, fd, scan, sync, batch_size, batch_seconds)
        except BaseException:
            os.close(fd)
            raise

    @property
    def head(self) -> bytes:
        """The digest of the last record (``LOG_GENESIS`` for an empty log)."""
        return self.records[-1].digest if self.records else LOG_GENESIS

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[LogRecord]:
        return iter(self.records)

    def lookup(self, worker: str, step: int, micro_batch: int, kind: str) -> list[LogRecord]:
        """The records for a unit or transfer, in log order (``kind``: a unit or transfer kind name)."""
        return [self.records[i] for i in self._index.get((worker, step, micro_batch, str(kind)), [])]

    def append_receipt(self, receipt: Receipt) -> LogRecord:
        """Append a signed receipt."""
        return self._append(
            RecordType.RECEIPT,
            encode_receipt(receipt),
            (receipt.worker_id, receipt.step, receipt.micro_batch, str(receipt.kind)),
        )

    def append_header(self, header: SignedHeader) -> LogRecord:
        """Append a received signed header."""
        return self._append(
            RecordType.HEADER, encode_header(header), (header.sender, header.step, header.micro_batch, str(header.kind))
        )

    def append_head(self, head: SignedStepHead) -> LogRecord:
        """Append the coordinator's signed step head."""
        return self._append(RecordType.STEP_HEAD, head.encode(), ("", len(self.records), 0, "head"))

    def append_cosignature(self, cosignature: Cosignature) -> LogRecord:
        """Append a worker's cosignature of a step head."""
        return self._append(RecordType.COSIGNATURE, cosignature.encode(), ("", len(self.records), 0, "cosignature"))

    def append_root(self, root: StepRoot) -> LogRecord:
        """Append a worker's signed step root."""
        return self._append(RecordType.STEP_ROOT, root.encode(), (root.worker_id, root.step, 0, "root"))

    def _append(self, record_type: RecordType, payload: bytes, key: UnitKey) -> LogRecord:
        if self._fd < 0:
            raise ValueError("the receipt log is closed")
        frame = frame_record(record_type, payload, self.head)
        view = memoryview(frame)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except BaseException:
            # A failed write (disk full, I/O error) must not leave half a frame for the next append
            # to build on: cut the file back to the last whole record.
            os.ftruncate(self._fd, self._end)
            raise
        record = LogRecord(len(self.records), self._end, record_type, payload, self.head, frame[-_DIGEST:])
        self._end += len(frame)
        self.records.append(record)
        self._index[key].append(record.index)
        self._unsynced += 1
        if self._sync == "always" or (
            self._sync == "batch"
            and (self._unsynced >= self._batch_size or time.monotonic() - self._last_sync >= self._batch_seconds)
        ):
            self.sync()
        return record

    def sync(self) -> None:
        """Make every appended record durable now (fdatasync)."""
        if self._fd >= 0 and self._unsynced:
            os.fdatasync(self._fd)
            self._unsynced = 0
            self._last_sync = time.monotonic()

    def close(self) -> None:
        """Sync (unless the policy is ``"none"``), unlock and close the file."""
        if self._fd >= 0:
            if self._sync != "none":
                self.sync()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ReceiptLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
