"""Every single-byte change of the real TDX sample quote is caught (or changes nothing it attests).

The quote signature covers the header and the TD report body (the first 632 bytes): every byte of
that region is flipped and each flip must be rejected. Outside it lie the signature, the attestation
key, the QE report and its signature, and the PEM chain of the PCK certificate; every byte there is
flipped too, and a flip must either be rejected or leave what the quote attests exactly as it was
(some bytes, such as PEM line breaks, carry no meaning). All of it takes a few seconds (about 5,000
verifications of about 1.5 ms each).
"""

from __future__ import annotations

import datetime as dt

from dcap_samples import AT, SIGNED_LENGTH, collateral, collateral_fields, instant, quote

from stagewarden.attest.dcap import Collateral, verify_quote
from stagewarden.attest.errors import AttestError, ErrorCode

E = ErrorCode
#: The codes a corrupted quote may be refused with: a parse, chain, QE or signature failure.
CORRUPTION_CODES = {
    E.DCAP_QUOTE_MALFORMED,
    E.DCAP_CERT_CHAIN,
    E.DCAP_QE_REPORT,
    E.DCAP_QUOTE_SIGNATURE,
    E.DCAP_COLLATERAL_MISMATCH,
    E.DCAP_TCB_NO_MATCH,
}


def _flipped(data: bytes, index: int, mask: int = 0xFF) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


def signed_region_codes(
    original: bytes, bundle: Collateral, at: dt.datetime, length: int, mask: int
) -> dict[ErrorCode, int]:
    """Each of the first ``length`` bytes of ``original`` changed by ``mask``: how many quotes each corruption
    code refused (an accepted one, or another code, fails the test)."""
    codes: dict[ErrorCode, int] = {}
    for index in range(length):
        try:
            verify_quote(_flipped(original, index, mask), bundle, at)
        except AttestError as exc:
            assert exc.code in CORRUPTION_CODES, (index, exc.code)
            codes[exc.code] = codes.get(exc.code, 0) + 1
            continue
        raise AssertionError(f"changing byte {index} of the signed region with {mask:#x} was accepted")
    assert sum(codes.values()) == length
    return codes


def unsigned_flips(original: bytes, bundle: Collateral, at: dt.datetime, start: int) -> tuple[int, int]:
    """Each byte from ``start`` on, its lowest bit flipped: ``(rejected, harmless)``; a flip accepted with another
    report, status or advisories than the original's fails the test."""
    baseline = verify_quote(original, bundle, at)
    rejected = harmless = 0
    for index in range(start, len(original)):
        try:
            verified = verify_quote(_flipped(original, index, 0x01), bundle, at)
        except AttestError as exc:
            assert exc.code in CORRUPTION_CODES, (index, exc.code)
            rejected += 1
            continue
        assert (verified.report, verified.status, verified.advisories) == (
            baseline.report,
            baseline.status,
            baseline.advisories,
        ), f"flipping byte {index} changed what the quote attests"
        harmless += 1
    assert rejected + harmless == len(original) - start
    return rejected, harmless


def assert_signature_flips_refused(q: bytes, fields: dict[str, str], at: dt.datetime) -> None:
    """Every byte of the TCB info and QE identity signatures of ``fields``, inverted, is DCAP_COLLATERAL_INVALID."""
    for name in ("tcb_info_signature", "qe_identity_signature"):
        signature = bytes.fromhex(fields[name])
        for index in range(len(signature)):
            edited = fields | {name: _flipped(signature, index).hex()}
            try:
                verify_quote(q, collateral(edited), at)
            except AttestError as exc:
                assert exc.code is E.DCAP_COLLATERAL_INVALID, (name, index, exc.code)
                continue
            raise AssertionError(f"flipping byte {index} of {name} was accepted")


def test_every_byte_of_the_signed_region_is_refused() -> None:
    """Each of the 632 bytes of the header and TD report, inverted, is rejected with a corruption code."""
    codes = signed_region_codes(quote(), collateral(), instant(AT), SIGNED_LENGTH, 0xFF)
    assert codes[E.DCAP_QUOTE_SIGNATURE] > 500  # most flips reach the signature check itself


def test_every_other_byte_is_refused_or_attests_the_same() -> None:
    """Each byte after the signed region, its lowest bit flipped, is rejected or leaves the report as it was."""
    rejected, harmless = unsigned_flips(quote(), collateral(), instant(AT), SIGNED_LENGTH)
    assert rejected > 3 * harmless  # the signatures, keys and certificates are nearly all of it


def test_flips_in_the_collateral_signatures_are_refused() -> None:
    """Every byte of the TCB info and QE identity signatures, inverted, makes the collateral refused."""
    assert_signature_flips_refused(quote(), collateral_fields(), instant(AT))
