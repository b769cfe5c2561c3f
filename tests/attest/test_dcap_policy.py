"""Appraisal of verified quotes under a DCAP policy: TCB status, debug, key binding, reference values (TDX and SGX)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
from dcap_samples import AT, MRTD, collateral, instant, quote

from stagewarden.attest.dcap import VerifiedQuote, dcap_report_data, report_from_body, verify_quote
from stagewarden.attest.dcap_policy import (
    Binding,
    DcapPolicy,
    appraise_quote,
    appraise_verified,
    parse_dcap_policy,
)
from stagewarden.attest.errors import ErrorCode, FormatError

E = ErrorCode
NONCE, KEY = b"\x11" * 32, b"\x22" * 32


def _policy(data: dict[str, object]) -> DcapPolicy:
    return parse_dcap_policy(json.dumps({"version": 1} | data).encode())


def _sample() -> VerifiedQuote:
    return verify_quote(quote(), collateral(), instant(AT))


def _sgx(
    attributes: bytes = b"\x04" + bytes(15), report_data: bytes = bytes(64), status: str = "UpToDate"
) -> VerifiedQuote:
    """An SGX quote as dcap-qvl would return it once verified (its enclave report and TCB status)."""
    body = SimpleNamespace(
        mr_enclave=b"\xaa" * 32,
        mr_signer=b"\xbb" * 32,
        attributes=attributes,
        report_data=report_data,
        cpu_svn=bytes(16),
    )
    advisories = ("INTEL-SA-00615",) if status != "UpToDate" else ()
    return VerifiedQuote(report_from_body("sgx", body), status, advisories, "00A067110000", instant(AT))


def test_sample_is_accepted_by_the_default_policy() -> None:
    """UpToDate, not debug, no reference values and no binding asked for: accepted, measurements not appraised."""
    appraisal = appraise_quote(quote(), collateral(), DcapPolicy(), instant(AT))
    assert appraisal.accepted and appraisal.code is None
    assert not appraisal.measurements_appraised and not appraisal.key_bound
    out = appraisal.to_json()
    assert out["tee"] == "tdx" and out["status"] == "UpToDate" and out["measurements"]["mrtd"] == MRTD


def test_sample_binds_no_key_of_ours() -> None:
    """The sample's REPORTDATA was made by someone else: any nonce and key we ask for is refused with KEY_BINDING."""
    appraisal = appraise_quote(quote(), collateral(), DcapPolicy(), instant(AT), Binding(NONCE, KEY))
    assert not appraisal.accepted and appraisal.code is E.KEY_BINDING
    assert appraisal.verified is not None  # the quote itself is genuine; only the binding fails


def test_reference_values_of_the_sample_match_its_stage() -> None:
    """A policy listing the sample's MRTD and RTMRs for stage 1 accepts it as stage 1, and refuses it for stage 0."""
    report = _sample().report.measurements
    tdx_set = {name: report[name] for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")}
    other = tdx_set | {"rtmr1": "00" * 48}
    policy = _policy({"reference_values": {"0": [other], "1": [tdx_set]}})
    assert appraise_verified(_sample(), policy).stage == "1"
    assert appraise_verified(_sample(), policy, stage="1").accepted
    refused = appraise_verified(_sample(), policy, stage="0")
    assert refused.code is E.DCAP_MEASUREMENT_MISMATCH and refused.stage is None
    assert appraise_verified(_sample(), policy, stage="7").code is E.DCAP_MEASUREMENT_MISMATCH


def test_a_changed_rtmr_is_a_mismatch() -> None:
    """One RTMR off (a different kernel or command line) refuses the quote."""
    report = _sample().report.measurements
    policy = _policy({"reference_values": {"0": [{"mrtd": MRTD, "rtmr2": "ff" * 48}]}})
    assert report["rtmr2"] != "ff" * 48
    assert appraise_verified(_sample(), policy).code is E.DCAP_MEASUREMENT_MISMATCH


@pytest.mark.parametrize("status", ["SWHardeningNeeded", "ConfigurationAndSWHardeningNeeded", "OutOfDate"])
def test_other_statuses_need_the_policy(status: str) -> None:
    """A TCB status other than UpToDate is refused with its advisories shown, unless the policy allows it."""
    verified = dataclasses.replace(_sample(), status=status, advisories=("INTEL-SA-00615",))
    refused = appraise_verified(verified, DcapPolicy())
    assert refused.code is E.DCAP_TCB_STATUS and "INTEL-SA-00615" in refused.failures[0][1]
    assert refused.to_json()["advisories"] == ["INTEL-SA-00615"]
    assert appraise_verified(verified, DcapPolicy().with_statuses((status,))).accepted
    assert appraise_verified(verified, _policy({"allow_status": ["UpToDate", status]})).accepted


def test_all_failures_are_reported_the_first_decides() -> None:
    """A quote failing the binding and the status lists both reasons; the code is the binding's."""
    verified = dataclasses.replace(_sample(), status="OutOfDate")
    appraisal = appraise_verified(verified, DcapPolicy(), Binding(NONCE, KEY))
    assert [code for code, _ in appraisal.failures] == [E.KEY_BINDING, E.DCAP_TCB_STATUS]
    assert appraisal.reasons()[0].startswith("KEY_BINDING: ")


def test_tdx_debug_bit_is_refused() -> None:
    """TDATTRIBUTES bit 0 (DEBUG) set in a TD report refuses it."""
    sample = _sample()
    debug_report = dataclasses.replace(sample.report, attributes=b"\x01" + sample.report.attributes[1:], debug=True)
    appraisal = appraise_verified(dataclasses.replace(sample, report=debug_report), DcapPolicy())
    assert appraisal.code is E.DCAP_DEBUG


def test_sgx_report_fields_and_debug_flag() -> None:
    """An SGX enclave report gives MRENCLAVE and MRSIGNER; ATTRIBUTES.FLAGS bit 1 is DEBUG."""
    normal = _sgx()
    assert normal.report.tee == "sgx" and not normal.report.debug
    assert normal.report.measurements == {"mrenclave": "aa" * 32, "mrsigner": "bb" * 32}
    debug = _sgx(attributes=b"\x06" + bytes(15))
    assert debug.report.debug
    assert appraise_verified(debug, DcapPolicy()).code is E.DCAP_DEBUG


def test_sgx_reference_values_and_binding() -> None:
    """SGX quotes take the same path: MRSIGNER/MRENCLAVE reference sets, REPORTDATA binding, TEE type policy."""
    bound = _sgx(report_data=dcap_report_data(NONCE, KEY))
    by_signer = _policy({"reference_values": {"0": [{"mrsigner": "bb" * 32}]}})
    assert appraise_verified(bound, by_signer, Binding(NONCE, KEY)).accepted
    assert appraise_verified(bound, by_signer, Binding(NONCE, b"\x33" * 32)).code is E.KEY_BINDING
    wrong = _policy({"reference_values": {"0": [{"mrenclave": "cc" * 32, "mrsigner": "bb" * 32}]}})
    assert appraise_verified(bound, wrong).code is E.DCAP_MEASUREMENT_MISMATCH
    assert appraise_verified(bound, _policy({"tee": ["tdx"]})).code is E.DCAP_TEE_TYPE
    tdx_only = _policy({"reference_values": {"0": [{"mrtd": MRTD}]}})
    assert appraise_verified(bound, tdx_only).code is E.DCAP_MEASUREMENT_MISMATCH
    hardening = _sgx(status="SWHardeningNeeded")
    assert appraise_verified(hardening, DcapPolicy()).code is E.DCAP_TCB_STATUS


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 2},
        {"version": 1, "allow_status": ["Revoked"]},
        {"version": 1, "allow_status": "UpToDate"},
        {"version": 1, "tee": ["sev"]},
        {"version": 1, "colour": "red"},
        {"version": 1, "reference_values": {"0": []}},
        {"version": 1, "reference_values": {"0": [{"rtmr0": "00" * 48}]}},
        {"version": 1, "reference_values": {"0": [{"mrtd": "00" * 47}]}},
        {"version": 1, "reference_values": {"0": [{"mrtd": "zz" * 48}]}},
        {"version": 1, "reference_values": {"0": [{"mrtd": "00" * 48, "mrenclave": "00" * 32}]}},
        {"version": 1, "result_lifetime_seconds": 0},
        {"version": 1, "nonce_lifetime_seconds": "300"},
    ],
)
def test_bad_policies_are_refused(data: dict[str, object]) -> None:
    """Anything but a well-formed version 1 policy raises POLICY_MALFORMED."""
    with pytest.raises(FormatError) as info:
        parse_dcap_policy(json.dumps(data).encode())
    assert info.value.code is E.POLICY_MALFORMED


def test_policy_files_in_yaml_and_garbage() -> None:
    """YAML policies parse like JSON ones; bytes that are neither, or JSON with a repeated key, are refused."""
    policy = parse_dcap_policy(b"version: 1\nallow_status: [UpToDate, SWHardeningNeeded]\n", yaml=True)
    assert policy.allow_status == {"UpToDate", "SWHardeningNeeded"}
    garbage = [(b"\xff\xfe", False), (b"{", False), (b"[: :", True), (b"x" * 300_000, False)]
    for data, yaml in [*garbage, (b'{"version": 1, "version": 1}', False)]:
        with pytest.raises(FormatError):
            parse_dcap_policy(data, yaml=yaml)
