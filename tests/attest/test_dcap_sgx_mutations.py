"""Every single-byte change of the real SGX sample quote is caught (or changes nothing it attests).

The quote signature covers the 48-byte header and the 384-byte enclave report body: each of those
432 bytes is inverted, and separately has its lowest bit flipped, and every such quote must be
rejected. After the signed region come the signature, the attestation key, the QE report and its
signature and the PCK certificate chain: each byte there has its lowest bit flipped and must be
rejected or leave what the quote attests as it was: about 5,000 verifications in all.
"""

from __future__ import annotations

import pytest
from dcap_samples import SGX_AT, SGX_SIGNED_LENGTH, instant, sgx_collateral, sgx_collateral_fields, sgx_quote
from test_dcap_mutations import assert_signature_flips_refused, signed_region_codes, unsigned_flips

from stagewarden.attest.errors import ErrorCode

E = ErrorCode


@pytest.mark.parametrize("mask", [0xFF, 0x01])
def test_every_byte_of_the_signed_region_is_refused(mask: int) -> None:
    """Each of the 432 bytes of the header and enclave report, changed, is rejected with a corruption code."""
    codes = signed_region_codes(sgx_quote(), sgx_collateral(), instant(SGX_AT), SGX_SIGNED_LENGTH, mask)
    assert codes[E.DCAP_QUOTE_SIGNATURE] > 380  # the report body and most of the header reach the signature check


def test_every_other_byte_is_refused_or_attests_the_same() -> None:
    """Each byte after the signed region, its lowest bit flipped, is rejected or leaves the report as it was."""
    rejected, harmless = unsigned_flips(sgx_quote(), sgx_collateral(), instant(SGX_AT), SGX_SIGNED_LENGTH)
    assert rejected > 3 * harmless


def test_flips_in_the_collateral_signatures_are_refused() -> None:
    """Every byte of the SGX TCB info and QE identity signatures, inverted, makes the collateral refused."""
    assert_signature_flips_refused(sgx_quote(), sgx_collateral_fields(), instant(SGX_AT))
