"""Verification of real Intel TDX quotes against Intel's PKI (dcap-qvl), with the real sample collateral."""

from __future__ import annotations

import json

import pytest
from dcap_samples import (
    AT,
    MRTD,
    OUTDATED_AT,
    OUTDATED_COLLATERAL,
    OUTDATED_QUOTE,
    PCK_CRL_NEXT_UPDATE,
    SWAP_AT,
    collateral,
    collateral_fields,
    instant,
    quote,
    sgx_signed_parts,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from stagewarden.attest.dcap import (
    classify_dcap_error,
    dcap_report_data,
    parse_collateral,
    parse_quote,
    verify_quote,
)
from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.evidence import report_data

E = ErrorCode


def _code(q: bytes, fields: dict[str, str] | None = None, at: int = AT) -> ErrorCode:
    with pytest.raises(AttestError) as info:
        verify_quote(q, collateral(fields), instant(at))
    return info.value.code


def test_sample_verifies_up_to_date() -> None:
    """The real TDX sample chains to Intel's root at a time inside its collateral's validity: UpToDate."""
    verified = verify_quote(quote(), collateral(), instant(AT))
    assert verified.status == "UpToDate"
    assert verified.advisories == ()
    assert verified.fmspc == "B0C06F000000"
    report = verified.report
    assert report.tee == "tdx" and not report.debug
    assert report.measurements["mrtd"] == MRTD
    assert set(report.measurements) >= {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"}
    assert len(report.report_data) == 64


def test_outdated_sample_matches_no_tcb_level() -> None:
    """The outdated sample, inside its own collateral's validity, is refused: no TCB level matches."""
    q = OUTDATED_QUOTE.read_bytes()
    with pytest.raises(AttestError) as info:
        verify_quote(q, collateral(collateral_fields(OUTDATED_COLLATERAL)), instant(OUTDATED_AT))
    assert info.value.code is E.DCAP_TCB_NO_MATCH


@pytest.mark.parametrize(
    ("at", "code"),
    [
        (AT - 3600, E.DCAP_COLLATERAL_NOT_YET_VALID),
        (1_600_000_000, E.DCAP_COLLATERAL_NOT_YET_VALID),
        (PCK_CRL_NEXT_UPDATE, E.DCAP_COLLATERAL_EXPIRED),
        (PCK_CRL_NEXT_UPDATE + 86400 * 365, E.DCAP_COLLATERAL_EXPIRED),
    ],
)
def test_time_outside_the_collateral_is_refused(at: int, code: ErrorCode) -> None:
    """Before the collateral is issued, or at and after its first nextUpdate, the quote is refused with a time code."""
    assert _code(quote(), at=at) is code


def test_the_last_second_before_next_update_is_accepted() -> None:
    """The window is [issue, nextUpdate): one second before the PCK CRL's nextUpdate still verifies."""
    assert verify_quote(quote(), collateral(), instant(PCK_CRL_NEXT_UPDATE - 1)).status == "UpToDate"


def test_genuine_sgx_tcb_info_swapped_in_is_refused() -> None:
    """Intel-signed TCB info of another platform (SGX, another FMSPC), valid then, does not verify a TDX quote."""
    parts = sgx_signed_parts()
    fields = collateral_fields() | {"tcb_info": parts["tcb_info"], "tcb_info_signature": parts["tcb_info_signature"]}
    assert verify_quote(quote(), collateral(), instant(SWAP_AT)).status == "UpToDate"
    assert _code(quote(), fields, SWAP_AT) is E.DCAP_COLLATERAL_MISMATCH


def test_genuine_sgx_qe_identity_swapped_in_is_refused() -> None:
    """The Intel-signed identity of the SGX quoting enclave, valid at the time, is refused for a TDX quote."""
    parts = sgx_signed_parts()
    fields = collateral_fields() | {
        "qe_identity": parts["qe_identity"],
        "qe_identity_signature": parts["qe_identity_signature"],
    }
    assert _code(quote(), fields, SWAP_AT) is E.DCAP_COLLATERAL_MISMATCH


@pytest.mark.parametrize("part", ["tcb_info", "qe_identity"])
def test_signed_collateral_swapped_without_its_signature_is_refused(part: str) -> None:
    """A TCB info or QE identity body from another bundle under this bundle's signature does not verify."""
    fields = collateral_fields() | {part: sgx_signed_parts()[part]}
    assert _code(quote(), fields, SWAP_AT) in (E.DCAP_COLLATERAL_INVALID, E.DCAP_COLLATERAL_MISMATCH)


def test_edited_tcb_info_is_refused() -> None:
    """One character changed in the signed TCB info (its status) breaks Intel's signature."""
    fields = collateral_fields()
    edited = fields["tcb_info"].replace('"OutOfDate"', '"UpToDate"', 1)
    assert edited != fields["tcb_info"]
    assert _code(quote(), fields | {"tcb_info": edited}) is E.DCAP_COLLATERAL_INVALID


def test_a_pck_crl_from_the_future_is_refused() -> None:
    """A genuine PCK CRL issued after the verification time is refused by the window check
    (dcap-qvl alone accepts it, which is why the windows are checked before it runs)."""
    fields = collateral_fields() | {"pck_crl": collateral_fields(OUTDATED_COLLATERAL)["pck_crl"]}
    assert _code(quote(), fields) is E.DCAP_COLLATERAL_NOT_YET_VALID


def test_truncated_and_foreign_quotes_are_malformed() -> None:
    """Bytes that are not a quote are refused before any verification."""
    for data in (b"", b"\x00" * 16, quote()[:40], b"A" * 70_000):
        assert _code(data) is E.DCAP_QUOTE_MALFORMED


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: "not json",
        lambda f: [],
        lambda f: {k: v for k, v in f.items() if k != "tcb_info"},
        lambda f: f | {"extra": "x"},
        lambda f: f | {"tcb_info": "{"},
        lambda f: f | {"pck_crl": "zz"},
        lambda f: f | {"qe_identity": json.dumps({"issueDate": "yesterday"})},
        lambda f: f | {"root_ca_crl": 7},
    ],
)
def test_malformed_collateral_files_are_bad_input(mutate: object) -> None:
    """A collateral file of the wrong shape raises COLLATERAL_MALFORMED (bad input), not a rejection."""
    value = mutate(collateral_fields())  # type: ignore[operator]
    data = value.encode() if isinstance(value, str) else json.dumps(value).encode()
    with pytest.raises(FormatError) as info:
        parse_collateral(data)
    assert info.value.code is E.COLLATERAL_MALFORMED


def test_parse_quote_reads_the_report_without_verifying() -> None:
    """The unverified view of a quote gives the same report as the verified one."""
    assert parse_quote(quote()) == verify_quote(quote(), collateral(), instant(AT)).report


def test_dcap_report_data_has_its_own_tag() -> None:
    """REPORTDATA for DCAP quotes differs from the simulated evidence's for the same nonce and key."""
    nonce, key = b"\x01" * 32, b"\x02" * 32
    assert len(dcap_report_data(nonce, key)) == 64
    assert dcap_report_data(nonce, key) != report_data(nonce, key)
    assert dcap_report_data(nonce, key) != dcap_report_data(key, nonce)
    with pytest.raises(ValueError):
        dcap_report_data(b"\x01" * 31, key)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("Verification failed: ISV enclave report signature is invalid", E.DCAP_QUOTE_SIGNATURE),
        ("Verification failed: Failed to verify certificate chain\n\nCaused by:\n    UnknownIssuer", E.DCAP_CERT_CHAIN),
        ("Verification failed: TCB status is invalid: Revoked", E.DCAP_TCB_STATUS),
        ("Verification failed: Failed to verify certificate chain\n\nCaused by:\n    CertRevoked", E.DCAP_CERT_REVOKED),
        ("Verification failed: TCBInfo expired", E.DCAP_COLLATERAL_EXPIRED),
        ("Verification failed: QE report hash mismatch", E.DCAP_QE_REPORT),
        ("Verification failed: Fmspc mismatch", E.DCAP_COLLATERAL_MISMATCH),
        ("Verification failed: No matching TCB level found", E.DCAP_TCB_NO_MATCH),
        ("Verification failed: Signature is invalid for tcb_info in quote_collateral", E.DCAP_COLLATERAL_INVALID),
        ("something new", E.DCAP_VERIFY_FAILED),
    ],
)
def test_dcap_errors_map_to_stable_codes(message: str, code: ErrorCode) -> None:
    """dcap-qvl's error texts map onto stable codes; an unknown text still rejects, with DCAP_VERIFY_FAILED."""
    assert classify_dcap_error(message) is code


def test_every_truncation_is_refused_or_cuts_only_padding() -> None:
    """The quote cut at every length is refused as malformed, except inside the 70 zero bytes of padding the
    sample carries after its declared end, which dcap-qvl ignores (the report is then the same)."""
    original, bundle, at = quote(), collateral(), instant(AT)
    declared_end = 48 + 584 + 4 + int.from_bytes(original[632:636], "little")
    assert set(original[declared_end:]) == {0} and len(original) - declared_end == 70
    for length in range(len(original)):
        try:
            verified = verify_quote(original[:length], bundle, at)
        except AttestError as exc:
            assert exc.code is E.DCAP_QUOTE_MALFORMED, (length, exc.code)
            continue
        assert length >= declared_end and verified.report == parse_quote(original), length


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=6000), keep_header=st.booleans())
def test_random_bytes_are_refused_with_a_code(data: bytes, keep_header: bool) -> None:
    """Random bytes, alone or behind the sample's real header, are refused with a stable code, never an exception."""
    candidate = quote()[:48] + data if keep_header else data
    with pytest.raises(AttestError) as info:
        verify_quote(candidate, collateral(), instant(AT))
    assert info.value.code in {E.DCAP_QUOTE_MALFORMED, E.DCAP_CERT_CHAIN, E.DCAP_QE_REPORT, E.DCAP_QUOTE_SIGNATURE}
