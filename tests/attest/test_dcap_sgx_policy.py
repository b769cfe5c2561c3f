"""Appraisal of the real SGX sample under DCAP policies: its TCB status, reference values per stage,
key binding, the debug attribute, the TEE type, and the EAR result it earns when accepted."""

from __future__ import annotations

import dataclasses
import json

import pytest
from dcap_samples import (
    MRTD,
    SGX_ADVISORIES,
    SGX_AT,
    SGX_MRENCLAVE,
    SGX_MRSIGNER,
    SGX_STATUS,
    instant,
    sgx_collateral,
    sgx_quote,
)
from nacl.signing import SigningKey

from stagewarden.attest.clock import FixedClock
from stagewarden.attest.dcap import VerifiedQuote, verify_quote
from stagewarden.attest.dcap_policy import Binding, DcapPolicy, appraise_quote, appraise_verified, parse_dcap_policy
from stagewarden.attest.ear import Status, ear_from_appraisal, sign_ear, verify_ear
from stagewarden.attest.errors import ErrorCode

E = ErrorCode
NONCE, KEY = b"\x11" * 32, b"\x22" * 32
ALLOWING = DcapPolicy().with_statuses((SGX_STATUS,))


def _policy(data: dict[str, object]) -> DcapPolicy:
    return parse_dcap_policy(json.dumps({"version": 1} | data).encode())


def _sample() -> VerifiedQuote:
    return verify_quote(sgx_quote(), sgx_collateral(), instant(SGX_AT))


def test_default_policy_refuses_the_status_and_names_the_advisories() -> None:
    """UpToDate only (the default): refused with DCAP_TCB_STATUS; the reason and the JSON carry both advisories."""
    appraisal = appraise_quote(sgx_quote(), sgx_collateral(), DcapPolicy(), instant(SGX_AT))
    assert not appraisal.accepted and appraisal.code is E.DCAP_TCB_STATUS
    assert [code for code, _ in appraisal.failures] == [E.DCAP_TCB_STATUS]
    reason = appraisal.failures[0][1]
    assert SGX_STATUS in reason and all(advisory in reason for advisory in SGX_ADVISORIES)
    out = appraisal.to_json()
    assert out["tee"] == "sgx" and out["status"] == SGX_STATUS and out["advisories"] == list(SGX_ADVISORIES)
    strict = _policy({"allow_status": ["UpToDate"]})
    assert appraise_verified(_sample(), strict).code is E.DCAP_TCB_STATUS


def test_allowing_the_status_accepts_the_sample() -> None:
    """A policy that allows ConfigurationAndSWHardeningNeeded accepts it (from a file or from --allow-status)."""
    for policy in (ALLOWING, _policy({"allow_status": ["UpToDate", SGX_STATUS]})):
        appraisal = appraise_quote(sgx_quote(), sgx_collateral(), policy, instant(SGX_AT))
        assert appraisal.accepted and appraisal.code is None
        assert not appraisal.measurements_appraised and not appraisal.key_bound
    near_miss = _policy({"allow_status": ["UpToDate", "SWHardeningNeeded", "ConfigurationNeeded"]})
    assert appraise_verified(_sample(), near_miss).code is E.DCAP_TCB_STATUS


def test_reference_values_of_the_sample_match_its_stage() -> None:
    """The sample's MRENCLAVE and MRSIGNER listed for stage 1 accept it as stage 1; stage 0's other set refuses it."""
    both = {"mrenclave": SGX_MRENCLAVE, "mrsigner": SGX_MRSIGNER}
    other = {"mrenclave": "00" * 32, "mrsigner": SGX_MRSIGNER}
    policy = _policy({"allow_status": [SGX_STATUS], "reference_values": {"0": [other], "1": [both]}})
    matched = appraise_verified(_sample(), policy)
    assert matched.accepted and matched.stage == "1" and matched.measurements_appraised
    assert appraise_verified(_sample(), policy, stage="1").accepted
    refused = appraise_verified(_sample(), policy, stage="0")
    assert refused.code is E.DCAP_MEASUREMENT_MISMATCH and refused.stage is None
    assert appraise_verified(_sample(), policy, stage="7").code is E.DCAP_MEASUREMENT_MISMATCH


@pytest.mark.parametrize(
    ("reference", "accepted"),
    [
        ({"mrsigner": SGX_MRSIGNER}, True),
        ({"mrenclave": SGX_MRENCLAVE}, True),
        ({"mrsigner": SGX_MRENCLAVE}, False),  # the right digest under the wrong name
        ({"mrenclave": SGX_MRENCLAVE[:-2] + "00"}, False),
        ({"mrenclave": SGX_MRENCLAVE, "mrsigner": "ff" * 32}, False),
        ({"mrtd": MRTD}, False),  # a TDX set never matches an SGX quote
    ],
)
def test_each_reference_set_is_matched_exactly(reference: dict[str, str], accepted: bool) -> None:
    """A set matches only when every measurement it names equals the quote's; otherwise DCAP_MEASUREMENT_MISMATCH."""
    appraisal = appraise_verified(
        _sample(), _policy({"allow_status": [SGX_STATUS], "reference_values": {"0": [reference]}})
    )
    assert appraisal.accepted is accepted
    assert appraisal.code is (None if accepted else E.DCAP_MEASUREMENT_MISMATCH)


def test_sample_binds_no_key_of_ours() -> None:
    """The sample's REPORTDATA is "Hello, world!": any nonce and key we ask for is refused with KEY_BINDING,
    ahead of the status failure."""
    appraisal = appraise_quote(sgx_quote(), sgx_collateral(), DcapPolicy(), instant(SGX_AT), Binding(NONCE, KEY))
    assert [code for code, _ in appraisal.failures] == [E.KEY_BINDING, E.DCAP_TCB_STATUS]
    assert appraisal.verified is not None and not appraisal.key_bound
    assert appraise_verified(_sample(), ALLOWING, Binding(NONCE, KEY)).code is E.KEY_BINDING


def test_tee_type_policy() -> None:
    """A policy for TDX quotes only refuses the SGX sample with DCAP_TEE_TYPE."""
    assert appraise_verified(_sample(), _policy({"tee": ["tdx"], "allow_status": [SGX_STATUS]})).code is E.DCAP_TEE_TYPE
    assert appraise_verified(_sample(), _policy({"tee": ["sgx"], "allow_status": [SGX_STATUS]})).accepted


def test_debug_attribute_is_refused() -> None:
    """The sample with ATTRIBUTES.FLAGS bit 1 (DEBUG) set is refused with DCAP_DEBUG. Set in the quote bytes it
    breaks the signature (test_dcap_sgx), so it is set here in the report dcap-qvl verified."""
    sample = _sample()
    attributes = bytes([sample.report.attributes[0] | 0x02]) + sample.report.attributes[1:]
    debug_report = dataclasses.replace(sample.report, attributes=attributes, debug=True)
    appraisal = appraise_verified(dataclasses.replace(sample, report=debug_report), ALLOWING)
    assert appraisal.code is E.DCAP_DEBUG and "sgx debug attribute" in appraisal.failures[0][1]


def test_accepted_sample_earns_a_warning_ear() -> None:
    """Accepted under a policy that allows its status, the sample's EAR is a warning (configuration and hardware
    claims at 32), carries MRENCLAVE as its measurement, and verifies under the verifier's key."""
    appraisal = appraise_verified(_sample(), ALLOWING)
    key = SigningKey.generate()
    result = ear_from_appraisal(appraisal, ALLOWING, key.verify_key, instant(SGX_AT))
    assert result.status is Status.WARNING and result.submod == "sgx"
    assert result.trust_vector["configuration"] == 32 and result.trust_vector["hardware"] == 32
    assert result.measurement == SGX_MRENCLAVE and result.advisories == SGX_ADVISORIES
    opened = verify_ear(sign_ear(result, key), key.verify_key, FixedClock(instant(SGX_AT)))
    assert opened.tee == "sgx" and opened.measurements == {"mrenclave": SGX_MRENCLAVE, "mrsigner": SGX_MRSIGNER}
