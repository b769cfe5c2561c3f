"""Fuzzing receipt-log files (``attest/receipt_log.py``: ``read_log``, ``recover_torn_tail``,
``ReceiptLog.open``) with many records: torn at any byte, given a zero-filled tail, mutated, and
spliced from two logs.

``tests/attest/test_receipt_fuzz.py`` fuzzes ``scan_log`` on a one-record log. Here: reading
never raises for any file (only OSError when it cannot be read); what it returns is a chain of
intact frames from the start of the file, with at most one torn tail, reported last at the offset
where the intact records end; a torn copy of a valid log yields exactly the records written
before the tear and recovers to a log that opens.
"""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest
from fuzzing import outcome
from hypothesis import example, given
from hypothesis import strategies as st
from receipt_fixtures import small_run
from strategies import fuzz_settings, mutated_bytes

from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.headers import encode_header
from stagewarden.attest.receipt_log import (
    FILE_HEADER,
    FRAME_OVERHEAD,
    LOG_GENESIS,
    LogScan,
    ReceiptLog,
    RecordType,
    frame_record,
    read_log,
    recover_torn_tail,
    scan_log,
)
from stagewarden.attest.receipts import Receipt, encode_receipt
from stagewarden.attest.step_roots import StepRoot

_LOG_CODES = {ErrorCode.LOG_TORN, ErrorCode.LOG_MALFORMED, ErrorCode.LOG_CHAIN}


def _log(run_id: str) -> tuple[bytes, list[int]]:
    """A valid log of a small synthetic run, and the offset where each record's frame ends."""
    data, prev, ends = bytearray(FILE_HEADER), LOG_GENESIS, []
    for entry in small_run(run_id=run_id, steps=1).entries:
        kind, payload = (
            (RecordType.RECEIPT, encode_receipt(entry))
            if isinstance(entry, Receipt)
            else (RecordType.STEP_ROOT, entry.encode())
            if isinstance(entry, StepRoot)
            else (RecordType.HEADER, encode_header(entry))
        )
        frame = frame_record(kind, payload, prev)
        prev = frame[-32:]
        data += frame
        ends.append(len(data))
    return bytes(data), ends


LOG, ENDS = _log("run-1")
OTHER_LOG, _ = _log("run-2")


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("receipt-log") / "receipts.log"


def _check_scan(scan: LogScan, data: bytes) -> None:
    """Invariants of any scan: intact frames chained from the file header, problems in range, at most
    one torn tail, reported last, where the intact records end."""
    offset, index = len(FILE_HEADER), 0
    for record in scan.records:
        assert (record.index, record.offset) == (index, offset)
        frame = data[offset : offset + FRAME_OVERHEAD + len(record.payload)]
        assert blake3.blake3(frame[:-32]).digest() == record.digest == frame[-32:]
        offset += len(frame)
        index += 1
    if scan.records:
        assert scan.end == offset
    assert scan.size == len(data) and scan.end <= len(data)
    torn = [p for p in scan.problems if p.code is ErrorCode.LOG_TORN]
    assert len(torn) <= 1
    for problem in scan.problems:
        assert problem.code in _LOG_CODES and 0 <= problem.offset <= len(data) and problem.message
    if torn:
        assert scan.problems[-1] is torn[0] and torn[0].offset == scan.end


@fuzz_settings()
@given(st.integers(0, len(LOG)), st.integers(0, 200))
@example(len(LOG), 0)
@example(ENDS[0] - 1, 0)
@example(ENDS[-1], 37)
@example(10, 6)  # the zeros complete the file header: an empty log
# Both were LOG_MALFORMED, which recovery refuses: a frame torn in its body or in its length field,
# then zeros (the file grew, the data never reached the disk), is a torn tail (fixed).
@example(ENDS[0] + 100, 300)
@example(ENDS[0] + 4, 400)
def test_torn_logs(log_path: Path, cut: int, zeros: int) -> None:
    """A log cut at any byte (then maybe followed by zeros, space allocated but never written) reads
    as the records written before the cut plus one torn tail, and recovers to a log that opens."""
    data = LOG[:cut] + bytes(zeros)
    log_path.write_bytes(data)
    scan, _ = outcome(read_log, log_path, errors=())
    assert scan is not None
    _check_scan(scan, data)
    if not data.startswith(FILE_HEADER):  # cut inside the file header (its last six bytes are zeros)
        assert [p.code for p in scan.problems] == [ErrorCode.LOG_MALFORMED] and not scan.records
        return
    kept = sum(1 for end in ENDS if end <= cut)
    assert len(scan.records) == kept
    intact_end = ENDS[kept - 1] if kept else len(FILE_HEADER)
    assert scan.end == intact_end
    assert [p.code for p in scan.problems] == ([ErrorCode.LOG_TORN] if len(data) > intact_end else [])
    removed, _ = outcome(recover_torn_tail, log_path, errors=())
    assert removed == len(data) - intact_end
    with ReceiptLog.open(log_path, sync="none") as log:
        assert [r.payload for r in log.records] == [r.payload for r in scan.records]


@fuzz_settings()
@given(
    st.one_of(
        mutated_bytes(LOG, (OTHER_LOG,)),
        st.binary(max_size=400),
        st.binary(max_size=400).map(lambda b: FILE_HEADER + b),
        mutated_bytes(LOG[: ENDS[1]], max_ops=2).map(lambda b: b + LOG[ENDS[1] :]),
    )
)
def test_mutated_logs(log_path: Path, data: bytes) -> None:
    """Any file (random bytes, an edited log) reads without raising, with the scan's invariants; opening it raises
    AttestError or gives the scanned records; recovering removes a torn tail or raises AttestError."""
    log_path.write_bytes(data)
    scan, _ = outcome(read_log, log_path, errors=())
    assert scan is not None
    _check_scan(scan, data)
    log, error = outcome(ReceiptLog.open, log_path, sync="none", errors=AttestError)
    if log is not None:
        with log:
            assert not scan.problems and len(log) == len(scan.records)
    else:
        assert error is not None and (scan.problems or error.code.name.endswith("_MALFORMED"))
    removed, error = outcome(recover_torn_tail, log_path, errors=AttestError)
    if error is None:
        assert removed == (scan.size - scan.end if scan.torn else 0)
        assert read_log(log_path).torn is None
    else:
        assert any(p.code is not ErrorCode.LOG_TORN for p in scan.problems)


def _frames(data: bytes) -> list[bytes]:
    return [data[r.offset : r.offset + FRAME_OVERHEAD + len(r.payload)] for r in scan_log(data).records]


FRAMES, OTHER_FRAMES = _frames(LOG), _frames(OTHER_LOG)


@fuzz_settings()
@given(st.lists(st.sampled_from([*FRAMES, *OTHER_FRAMES]), max_size=12))
def test_spliced_logs(log_path: Path, frames: list[bytes]) -> None:
    """Intact frames of two logs in any order read as intact records; every frame whose chain does
    not follow its predecessor is a LOG_CHAIN problem at its offset, and such a log does not open."""
    data = FILE_HEADER + b"".join(frames)
    log_path.write_bytes(data)
    scan = read_log(log_path)
    _check_scan(scan, data)
    assert len(scan.records) == len(frames)
    breaks = [
        r.offset for i, r in enumerate(scan.records) if r.prev != (scan.records[i - 1].digest if i else LOG_GENESIS)
    ]
    assert [p.offset for p in scan.problems] == breaks
    assert all(p.code is ErrorCode.LOG_CHAIN for p in scan.problems)
    log, error = outcome(ReceiptLog.open, log_path, sync="none", errors=AttestError)
    assert (error is None) == (not breaks)
    if log is not None:
        log.close()
    else:
        assert error is not None and error.code is ErrorCode.LOG_CHAIN
