"""Verification of a real Intel SGX quote against Intel's PKI (dcap-qvl), with its real collateral.

The sample (dcap-qvl 0.7.0's ``sample/sgx_quote``) verifies at SGX_AT as
ConfigurationAndSWHardeningNeeded with advisories INTEL-SA-00289 and INTEL-SA-00615. Its fields are
read here straight from the quote bytes at the offsets of Intel's SGX ECDSA quote format (v3), so
that what the parser reports is checked against the bytes, not against itself.
"""

from __future__ import annotations

import pytest
from dcap_samples import (
    AT,
    SGX_ADVISORIES,
    SGX_AT,
    SGX_FIRST_NEXT_UPDATE,
    SGX_FMSPC,
    SGX_MRENCLAVE,
    SGX_MRSIGNER,
    SGX_REPORT_DATA,
    SGX_SIGNED_LENGTH,
    SGX_STATUS,
    SWAP_AT,
    collateral,
    collateral_fields,
    instant,
    quote,
    sgx_collateral,
    sgx_collateral_fields,
    sgx_quote,
)

from stagewarden.attest.dcap import parse_quote, verify_quote
from stagewarden.attest.errors import AttestError, ErrorCode

E = ErrorCode

# Intel SGX ECDSA quote v3: a 48-byte header, then the 384-byte enclave report body.
HEADER = 48
VERSION, ATTESTATION_KEY_TYPE, TEE_TYPE = 0, 2, 4  # u16, u16, u32 (0 is SGX) in the header
ATTRIBUTES, MRENCLAVE, MRSIGNER, REPORT_DATA = HEADER + 48, HEADER + 64, HEADER + 128, HEADER + 320
SGX_DEBUG_FLAG = 0x02  # ATTRIBUTES.FLAGS bit 1


def _code(q: bytes, fields: dict[str, str] | None = None, at: int = SGX_AT) -> ErrorCode:
    with pytest.raises(AttestError) as info:
        verify_quote(q, collateral(fields if fields is not None else sgx_collateral_fields()), instant(at))
    return info.value.code


def test_sample_bytes_are_an_sgx_quote_with_the_documented_fields() -> None:
    """The sample's header says SGX quote v3 with an ECDSA P-256 key; the constants are its report body's bytes."""
    q = sgx_quote()
    assert len(q) == 4600
    assert int.from_bytes(q[VERSION : VERSION + 2], "little") == 3
    assert int.from_bytes(q[ATTESTATION_KEY_TYPE : ATTESTATION_KEY_TYPE + 2], "little") == 2
    assert int.from_bytes(q[TEE_TYPE : TEE_TYPE + 4], "little") == 0
    assert q[MRENCLAVE : MRENCLAVE + 32].hex() == SGX_MRENCLAVE
    assert q[MRSIGNER : MRSIGNER + 32].hex() == SGX_MRSIGNER
    assert q[REPORT_DATA : REPORT_DATA + 64] == SGX_REPORT_DATA
    assert not q[ATTRIBUTES] & SGX_DEBUG_FLAG
    # the signature data's declared length ends exactly at the end of the file: no padding
    assert HEADER + 384 + 4 + int.from_bytes(q[SGX_SIGNED_LENGTH : SGX_SIGNED_LENGTH + 4], "little") == len(q)


def test_sample_verifies_with_its_status_and_advisories() -> None:
    """The real SGX sample chains to Intel's root at a time inside its collateral: ConfigurationAndSWHardeningNeeded."""
    verified = verify_quote(sgx_quote(), sgx_collateral(), instant(SGX_AT))
    assert verified.status == SGX_STATUS
    assert verified.advisories == SGX_ADVISORIES
    assert verified.fmspc == SGX_FMSPC
    report = verified.report
    assert report.tee == "sgx" and not report.debug
    assert report.measurements == {"mrenclave": SGX_MRENCLAVE, "mrsigner": SGX_MRSIGNER}
    assert report.report_data == SGX_REPORT_DATA
    q = sgx_quote()
    assert report.attributes == q[ATTRIBUTES : ATTRIBUTES + 16]


def test_parse_quote_reads_the_same_report_without_verifying() -> None:
    """The unverified view of the SGX quote is the verified report."""
    assert parse_quote(sgx_quote()) == verify_quote(sgx_quote(), sgx_collateral(), instant(SGX_AT)).report


def test_the_debug_bit_is_read_from_attributes_flags_bit_1() -> None:
    """Setting ATTRIBUTES.FLAGS bit 1 in the quote bytes makes the parsed report debug, and breaks the signature;
    the neighbouring bits do not read as debug."""
    for mask, debug in ((SGX_DEBUG_FLAG, True), (0x01, False), (0x08, False)):
        changed = bytearray(sgx_quote())
        changed[ATTRIBUTES] ^= mask
        assert parse_quote(bytes(changed)).debug is debug, mask
        assert _code(bytes(changed)) is E.DCAP_QUOTE_SIGNATURE


@pytest.mark.parametrize(
    ("at", "code"),
    [
        (SGX_AT - 1, E.DCAP_COLLATERAL_NOT_YET_VALID),
        (AT, E.DCAP_COLLATERAL_NOT_YET_VALID),  # the TDX sample's time, before this TCB info was issued
        (SGX_FIRST_NEXT_UPDATE, E.DCAP_COLLATERAL_EXPIRED),
        (SGX_FIRST_NEXT_UPDATE + 86400 * 365, E.DCAP_COLLATERAL_EXPIRED),
    ],
)
def test_time_outside_the_collateral_is_refused(at: int, code: ErrorCode) -> None:
    """Before the SGX TCB info is issued, or at and after the QE identity's nextUpdate: refused with a time code."""
    assert _code(sgx_quote(), at=at) is code


def test_the_window_edges_are_accepted() -> None:
    """The window is [latest issueDate, earliest nextUpdate): both ends, the last second before it closes, verify."""
    for at in (SGX_AT, SGX_FIRST_NEXT_UPDATE - 1):
        assert verify_quote(sgx_quote(), sgx_collateral(), instant(at)).status == SGX_STATUS


def test_genuine_tdx_tcb_info_swapped_in_is_refused() -> None:
    """The Intel-signed TDX TCB info (another FMSPC), valid at the time, with its own signature: refused."""
    tdx = collateral_fields()
    fields = sgx_collateral_fields() | {k: tdx[k] for k in ("tcb_info", "tcb_info_signature")}
    assert verify_quote(sgx_quote(), sgx_collateral(), instant(SWAP_AT)).status == SGX_STATUS
    assert _code(sgx_quote(), fields, SWAP_AT) is E.DCAP_COLLATERAL_MISMATCH


def test_genuine_tdx_qe_identity_swapped_in_is_refused() -> None:
    """The Intel-signed identity of the TDX quoting enclave (TD_QE), with its own signature: refused for SGX."""
    tdx = collateral_fields()
    fields = sgx_collateral_fields() | {k: tdx[k] for k in ("qe_identity", "qe_identity_signature")}
    assert _code(sgx_quote(), fields, SWAP_AT) is E.DCAP_COLLATERAL_MISMATCH


@pytest.mark.parametrize("part", ["tcb_info", "qe_identity"])
def test_tdx_body_under_the_sgx_signature_is_refused(part: str) -> None:
    """A TCB info or QE identity body from the TDX bundle under the SGX bundle's signature does not verify."""
    fields = sgx_collateral_fields() | {part: collateral_fields()[part]}
    assert _code(sgx_quote(), fields, SWAP_AT) is E.DCAP_COLLATERAL_INVALID


def test_whole_bundles_swapped_between_tees_are_refused() -> None:
    """The TDX bundle for the SGX quote, and the SGX bundle for the TDX quote (both valid then): refused."""
    assert _code(sgx_quote(), collateral_fields(), SWAP_AT) in (E.DCAP_COLLATERAL_MISMATCH, E.DCAP_CERT_CHAIN)
    with pytest.raises(AttestError) as info:
        verify_quote(quote(), sgx_collateral(), instant(SWAP_AT))
    assert info.value.code in (E.DCAP_COLLATERAL_MISMATCH, E.DCAP_CERT_CHAIN)


def test_edited_tcb_info_is_refused() -> None:
    """A better status written into the signed SGX TCB info breaks Intel's signature."""
    fields = sgx_collateral_fields()
    edited = fields["tcb_info"].replace(f'"{SGX_STATUS}"', '"UpToDate"')
    assert edited != fields["tcb_info"]
    assert _code(sgx_quote(), fields | {"tcb_info": edited}) is E.DCAP_COLLATERAL_INVALID


def test_edited_qe_identity_is_refused() -> None:
    """A higher ISVSVN written into the signed QE identity breaks Intel's signature."""
    fields = sgx_collateral_fields()
    edited = fields["qe_identity"].replace('"isvsvn":8', '"isvsvn":9', 1)
    assert edited != fields["qe_identity"]
    assert _code(sgx_quote(), fields | {"qe_identity": edited}) is E.DCAP_COLLATERAL_INVALID


@pytest.mark.parametrize("part", ["tcb_info", "qe_identity"])
def test_a_status_name_dcap_qvl_does_not_know_is_invalid_collateral_not_a_revocation(part: str) -> None:
    """A TCB status renamed in the signed TCB info or QE identity cannot be decoded: DCAP_COLLATERAL_INVALID.
    (dcap-qvl's message then lists every status it knows, Revoked among them: that is no revoked certificate.)"""
    fields = sgx_collateral_fields()
    edited = fields[part].replace('"tcbStatus":"', '"tcbStatus":"Not', 1)
    assert edited != fields[part]
    assert _code(sgx_quote(), fields | {part: edited}) is E.DCAP_COLLATERAL_INVALID


def test_truncations_are_malformed() -> None:
    """The SGX sample has no padding after its signature data: every cut of it is refused as malformed."""
    original, bundle, at = sgx_quote(), sgx_collateral(), instant(SGX_AT)
    for length in range(len(original)):
        with pytest.raises(AttestError) as info:
            verify_quote(original[:length], bundle, at)
        assert info.value.code is E.DCAP_QUOTE_MALFORMED, length
