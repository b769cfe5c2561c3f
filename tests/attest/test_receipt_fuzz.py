"""Property tests: every parser of receipts, headers and log records turns any bytes into a value
or a domain error (FormatError / AttestError), never another exception; valid values round-trip."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from receipt_fixtures import headers, make_header, make_receipt, receipts
from strategies import fuzz_settings, mutated_bytes

from stagewarden.attest.errors import AttestError, FormatError
from stagewarden.attest.headers import SignedHeader, encode_header, parse_header
from stagewarden.attest.receipt_log import FILE_HEADER, LOG_GENESIS, ReceiptLog, RecordType, frame_record, scan_log
from stagewarden.attest.receipts import Receipt, encode_receipt, parse_receipt

FUZZ = fuzz_settings(3.0)

VALID_RECEIPT = encode_receipt(make_receipt())
VALID_HEADER = encode_header(make_header())
VALID_LOG = FILE_HEADER + frame_record(RecordType.RECEIPT, VALID_RECEIPT, LOG_GENESIS)


def _parse_receipt_or_domain_error(data: bytes) -> Receipt | None:
    try:
        r = parse_receipt(data)
    except FormatError:
        return None
    assert encode_receipt(r) == data  # canonical: whatever parses re-encodes to the same bytes
    return r


def _parse_header_or_domain_error(data: bytes) -> SignedHeader | None:
    try:
        h = parse_header(data)
    except FormatError:
        return None
    assert encode_header(h) == data
    return h


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_receipt(data: bytes) -> None:
    """Random bytes given to parse_receipt raise FormatError or parse canonically."""
    _parse_receipt_or_domain_error(data)


@FUZZ
@given(mutated_bytes(VALID_RECEIPT))
def test_mutated_receipt(data: bytes) -> None:
    """Mutations of a valid receipt raise FormatError or parse to a receipt that re-encodes identically."""
    _parse_receipt_or_domain_error(data)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_header(data: bytes) -> None:
    """Random bytes given to parse_header raise FormatError or parse canonically."""
    _parse_header_or_domain_error(data)


@FUZZ
@given(mutated_bytes(VALID_HEADER))
def test_mutated_header(data: bytes) -> None:
    """Mutations of a valid header raise FormatError or parse canonically."""
    _parse_header_or_domain_error(data)


@FUZZ
@given(
    st.one_of(st.binary(max_size=600), mutated_bytes(VALID_LOG), st.binary(max_size=200).map(lambda b: FILE_HEADER + b))
)
def test_scan_log_never_raises(data: bytes) -> None:
    """scan_log reports problems as data for any bytes; records it returns are intact frames."""
    scan = scan_log(data)
    assert scan.end <= len(data)
    for problem in scan.problems:
        assert problem.code.startswith("LOG_") and 0 <= problem.offset <= len(data)


@fuzz_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), mutated_bytes(VALID_LOG)))
def test_open_log_raises_domain_errors_only(tmp_path: Path, data: bytes) -> None:
    """ReceiptLog.open on arbitrary bytes either opens or raises AttestError."""
    path = tmp_path / "fuzz.log"
    path.write_bytes(data)
    try:
        ReceiptLog.open(path, sync="none").close()
    except AttestError:
        pass


@fuzz_settings(1.5)
@given(receipts())
def test_receipt_round_trip_property(r: Receipt) -> None:
    """Every valid receipt encodes, parses back equal, and re-encodes to the same bytes."""
    data = encode_receipt(r)
    assert parse_receipt(data) == r and encode_receipt(parse_receipt(data)) == data


@fuzz_settings(1.5)
@given(headers())
def test_header_round_trip_property(h: SignedHeader) -> None:
    """Every valid signed header encodes and parses back equal."""
    data = encode_header(h)
    assert parse_header(data) == h
