"""The receipt log: framing, hash chain, torn-tail detection and recovery, locking, the index."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from receipt_fixtures import make_header, make_receipt

from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.receipt_log import (
    FILE_HEADER,
    FRAME_OVERHEAD,
    LOG_GENESIS,
    ReceiptLog,
    RecordType,
    frame_record,
    read_log,
    recover_torn_tail,
    scan_log,
)
from stagewarden.attest.receipts import UnitKind, encode_receipt


def _log(tmp_path: Path, n: int = 3, **kw: object) -> Path:
    path = tmp_path / "receipts.log"
    with ReceiptLog.create(path, **kw) as log:  # type: ignore[arg-type]
        for i in range(n):
            log.append_receipt(make_receipt(step=i))
        log.append_header(make_header())
    return path


def test_append_and_reopen(tmp_path: Path) -> None:
    """Records appended are read back intact, in order, chained from the genesis value."""
    path = _log(tmp_path)
    scan = read_log(path)
    assert not scan.problems
    assert [r.type for r in scan.records] == [RecordType.RECEIPT] * 3 + [RecordType.HEADER]
    assert scan.records[0].prev == LOG_GENESIS
    assert all(b.prev == a.digest for a, b in zip(scan.records, scan.records[1:], strict=False))
    with ReceiptLog.open(path) as log:
        assert len(log) == 4
        log.append_receipt(make_receipt(step=9))
    assert len(read_log(path).records) == 5


def test_index_lookup(tmp_path: Path) -> None:
    """The index finds a unit's receipt and a transfer's header by (worker, step, micro-batch, kind)."""
    path = _log(tmp_path)
    with ReceiptLog.open(path) as log:
        [rec] = log.lookup("s0r0", 2, 1, UnitKind.FORWARD)
        assert rec.index == 2
        assert [r.index for r in log.lookup("s0r0", 3, 1, "activation")] == [3]
        assert log.lookup("s0r0", 7, 1, "forward") == []


def test_torn_final_record_detected(tmp_path: Path) -> None:
    """A partly written last record (power loss mid-write) is LOG_TORN at its offset, never accepted."""
    path = _log(tmp_path)
    intact = path.stat().st_size
    frame = frame_record(RecordType.RECEIPT, encode_receipt(make_receipt(step=5)), read_log(path).records[-1].digest)
    with open(path, "ab") as handle:
        handle.write(frame[: len(frame) // 2])
    scan = read_log(path)
    assert scan.torn is not None and scan.torn.offset == intact
    assert len(scan.records) == 4
    with pytest.raises(AttestError) as info:
        ReceiptLog.open(path)
    assert info.value.code is ErrorCode.LOG_TORN and str(intact) in info.value.message


def test_recover_torn_tail_only_when_asked(tmp_path: Path) -> None:
    """recover_torn_tail truncates exactly the torn bytes; the log then opens and appends again."""
    path = _log(tmp_path)
    intact = path.stat().st_size
    with open(path, "ab") as handle:
        handle.write(b"\x00\x00\x01")
    assert path.stat().st_size == intact + 3  # reading alone changes nothing
    read_log(path)
    assert path.stat().st_size == intact + 3
    assert recover_torn_tail(path) == 3
    assert path.stat().st_size == intact
    assert recover_torn_tail(path) == 0
    with ReceiptLog.open(path) as log:
        log.append_receipt(make_receipt(step=8))
    assert not read_log(path).problems


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    """A tail of zero bytes (space allocated, data never written) is LOG_TORN."""
    path = _log(tmp_path)
    with open(path, "ab") as handle:
        handle.write(bytes(400))
    assert read_log(path).torn is not None


def test_final_record_bad_digest_is_torn(tmp_path: Path) -> None:
    """A complete-length last frame whose digest does not match is a torn write."""
    path = _log(tmp_path)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    scan = read_log(path)
    assert scan.torn is not None and len(scan.records) == 3


def test_corruption_in_the_middle_is_malformed(tmp_path: Path) -> None:
    """A damaged record before the end is LOG_MALFORMED at its offset, and recovery refuses to truncate."""
    path = _log(tmp_path)
    records = read_log(path).records
    data = bytearray(path.read_bytes())
    data[records[1].offset + 50] ^= 0x01
    path.write_bytes(bytes(data))
    scan = read_log(path)
    assert [(p.code, p.offset, p.index) for p in scan.problems] == [(ErrorCode.LOG_MALFORMED, records[1].offset, 1)]
    with pytest.raises(AttestError) as info:
        recover_torn_tail(path)
    assert info.value.code is ErrorCode.LOG_MALFORMED


def test_broken_log_chain(tmp_path: Path) -> None:
    """A well-formed frame that does not chain to its predecessor is LOG_CHAIN."""
    payload = encode_receipt(make_receipt())
    first = frame_record(RecordType.RECEIPT, payload, LOG_GENESIS)
    second = frame_record(RecordType.RECEIPT, payload, LOG_GENESIS)
    scan = scan_log(FILE_HEADER + first + second)
    assert [(p.code, p.index) for p in scan.problems] == [(ErrorCode.LOG_CHAIN, 1)]
    assert len(scan.records) == 2


def test_not_a_log(tmp_path: Path) -> None:
    """A file that is not a receipt log is LOG_MALFORMED, and so is an unknown version."""
    assert scan_log(b"hello").problems[0].code is ErrorCode.LOG_MALFORMED
    assert scan_log(FILE_HEADER[:8] + b"\x00\x02" + bytes(6)).problems[0].code is ErrorCode.LOG_MALFORMED


def test_create_never_overwrites(tmp_path: Path) -> None:
    """Creating a log where a file exists fails and leaves the file alone."""
    path = _log(tmp_path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        ReceiptLog.create(path)
    assert path.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    """A second writer is refused with LOG_LOCKED while the first holds the log."""
    path = _log(tmp_path)
    with ReceiptLog.open(path):
        with pytest.raises(AttestError) as info:
            ReceiptLog.open(path)
        assert info.value.code is ErrorCode.LOG_LOCKED


def test_batch_sync_policy(tmp_path: Path) -> None:
    """Group commit keeps every record once the log is closed."""
    path = _log(tmp_path, n=10, sync="batch", batch_size=4)
    assert len(read_log(path).records) == 11


def test_explicit_sync_policy_syncs_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the explicit policy appends never fsync; sync() fsyncs once for all of them, and
    close syncs what is left."""
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    path = tmp_path / "receipts.log"
    with ReceiptLog.create(path, sync="explicit") as log:
        for i in range(5):
            log.append_receipt(make_receipt(step=i))
        assert calls == []
        log.sync()
        assert len(calls) == 1
        log.sync()  # nothing new to make durable
        assert len(calls) == 1
        log.append_header(make_header())
    assert len(calls) == 2
    assert len(read_log(path).records) == 6


def test_frame_size_bounds() -> None:
    """Empty and oversized payloads cannot be framed."""
    with pytest.raises(ValueError):
        frame_record(RecordType.RECEIPT, b"", LOG_GENESIS)
    assert len(frame_record(RecordType.RECEIPT, b"x", LOG_GENESIS)) == FRAME_OVERHEAD + 1


def test_open_rejects_malformed_payload(tmp_path: Path) -> None:
    """Opening for append checks every payload: a frame holding a non-receipt is RECEIPT_MALFORMED."""
    path = tmp_path / "receipts.log"
    path.write_bytes(FILE_HEADER + frame_record(RecordType.RECEIPT, b"not a receipt", LOG_GENESIS))
    with pytest.raises(AttestError) as info:
        ReceiptLog.open(path)
    assert info.value.code is ErrorCode.RECEIPT_MALFORMED


def test_damaged_length_before_intact_records_is_not_torn(tmp_path: Path) -> None:
    """A length field damaged so that it runs past the end, with intact records after it, is LOG_MALFORMED:
    recovery must not truncate the intact records away."""
    path = _log(tmp_path)
    records = read_log(path).records
    data = bytearray(path.read_bytes())
    data[records[1].offset : records[1].offset + 4] = (60000).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    scan = read_log(path)
    assert [(p.code, p.index) for p in scan.problems] == [(ErrorCode.LOG_MALFORMED, 1)]
    assert str(records[3].offset) in scan.problems[0].message
    with pytest.raises(AttestError):
        recover_torn_tail(path)
    assert path.read_bytes() == bytes(data)


def test_failed_append_leaves_no_partial_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails midway (disk full) is cut back, so the log stays whole and appendable."""
    path = _log(tmp_path)
    size = path.stat().st_size
    real_write = os.write
    calls = {"n": 0}

    def flaky(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data)[:10])
        raise OSError(28, "No space left on device")

    with ReceiptLog.open(path) as log:
        monkeypatch.setattr(os, "write", flaky)
        with pytest.raises(OSError):
            log.append_receipt(make_receipt(step=7))
        monkeypatch.setattr(os, "write", real_write)
        assert path.stat().st_size == size
        log.append_receipt(make_receipt(step=8))
    assert not read_log(path).problems and len(read_log(path).records) == 5
