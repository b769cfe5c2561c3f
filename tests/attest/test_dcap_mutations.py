"""Every single-byte change of the real TDX sample quote is caught (or changes nothing it attests).

The quote signature covers the header and the TD report body (the first 632 bytes): every byte of
that region is flipped and each flip must be rejected. Outside it lie the signature, the attestation
key, the QE report and its signature, and the PEM chain of the PCK certificate; every byte there is
flipped too, and a flip must either be rejected or leave what the quote attests exactly as it was
(some bytes, such as PEM line breaks, carry no meaning). All of it takes a few seconds (about 5,000
verifications of about 1.5 ms each).
"""

from __future__ import annotations

import json

from dcap_samples import AT, SIGNED_LENGTH, collateral, instant, quote

from stagewarden.attest.dcap import verify_quote
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


def _flipped(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0xFF
    return bytes(changed)


def test_every_byte_of_the_signed_region_is_refused() -> None:
    """Each of the 632 bytes of the header and TD report, inverted, is rejected with a corruption code."""
    original, bundle, at = quote(), collateral(), instant(AT)
    codes: dict[ErrorCode, int] = {}
    for index in range(SIGNED_LENGTH):
        try:
            verify_quote(_flipped(original, index), bundle, at)
        except AttestError as exc:
            codes[exc.code] = codes.get(exc.code, 0) + 1
            continue
        raise AssertionError(f"flipping byte {index} of the signed region was accepted")
    assert sum(codes.values()) == SIGNED_LENGTH
    assert set(codes) <= CORRUPTION_CODES, codes
    assert codes[E.DCAP_QUOTE_SIGNATURE] > 500  # most flips reach the signature check itself


def test_every_other_byte_is_refused_or_attests_the_same() -> None:
    """Each byte after the signed region, its lowest bit flipped, is rejected or leaves the report as it was."""
    original, bundle, at = quote(), collateral(), instant(AT)
    baseline = verify_quote(original, bundle, at)
    rejected = harmless = 0
    for index in range(SIGNED_LENGTH, len(original)):
        changed = bytearray(original)
        changed[index] ^= 0x01
        try:
            verified = verify_quote(bytes(changed), bundle, at)
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
    assert rejected + harmless == len(original) - SIGNED_LENGTH
    assert rejected > 3 * harmless  # the signatures, keys and certificates are nearly all of it


def test_flips_in_the_collateral_signatures_are_refused() -> None:
    """Every byte of the TCB info and QE identity signatures, inverted, makes the collateral refused."""
    fields = json.loads(json.dumps(collateral().fields))
    for name in ("tcb_info_signature", "qe_identity_signature"):
        signature = bytes.fromhex(fields[name])
        for index in range(len(signature)):
            edited = fields | {name: _flipped(signature, index).hex()}
            try:
                verify_quote(quote(), collateral(edited), instant(AT))
            except AttestError as exc:
                assert exc.code is E.DCAP_COLLATERAL_INVALID, (name, index, exc.code)
                continue
            raise AssertionError(f"flipping byte {index} of {name} was accepted")
