"""EAR attestation results (signed JWTs): issue, verify as a relying party, audit in a run directory, tamper."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from dcap_samples import AT, collateral, instant, quote
from nacl.signing import SigningKey

from stagewarden.attest.audit import audit_run_dir
from stagewarden.attest.clock import FixedClock
from stagewarden.attest.dcap import VerifiedQuote, dcap_report_data, report_from_body
from stagewarden.attest.dcap_policy import Binding, DcapPolicy, appraise_quote, appraise_verified
from stagewarden.attest.ear import (
    EAR_PROFILE,
    EarResult,
    ear_from_appraisal,
    is_ear_token,
    open_ear,
    sign_ear,
    verify_ear,
)
from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.relying_party import RelyingParty
from stagewarden.attest.result import Status, parse_result_unverified
from stagewarden.attest.synthetic import synthetic_run

E = ErrorCode
VERIFIER = SigningKey(b"\x07" * 32)
NONCE, KEY = b"\x11" * 32, b"\x22" * 32


def _bound_sgx(status: str = "UpToDate", key: bytes = KEY) -> VerifiedQuote:
    body = SimpleNamespace(
        mr_enclave=b"\xaa" * 32,
        mr_signer=b"\xbb" * 32,
        attributes=b"\x04" + bytes(15),
        report_data=dcap_report_data(NONCE, key),
    )
    return VerifiedQuote(report_from_body("sgx", body), status, (), "00A067110000", instant(AT))


def _ear(status: str = "UpToDate", policy: DcapPolicy | None = None, key: bytes = KEY) -> tuple[EarResult, bytes]:
    policy = policy or DcapPolicy(allow_status=frozenset({"UpToDate", "SWHardeningNeeded"}))
    appraisal = appraise_verified(_bound_sgx(status, key), policy, Binding(NONCE, key))
    assert appraisal.accepted
    result = ear_from_appraisal(appraisal, policy, VERIFIER.verify_key, instant(AT), NONCE, key)
    return result, sign_ear(result, VERIFIER)


def _segments(token: bytes) -> list[dict[str, object]]:
    return [json.loads(base64.urlsafe_b64decode(p + b"=" * (-len(p) % 4))) for p in token.split(b".")[:2]]


def test_ear_claims_follow_the_profile() -> None:
    """The JWT names the EAR profile, the verifier, the nonce and one submodule with status and trust vector."""
    result, token = _ear()
    header, claims = _segments(token)
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": bytes(VERIFIER.verify_key).hex()[:16]}
    assert claims["eat_profile"] == EAR_PROFILE and claims["exp"] == claims["iat"] + 3600  # type: ignore[operator]
    assert base64.urlsafe_b64decode(str(claims["eat_nonce"]) + "=") == NONCE
    submod = claims["submods"]["sgx"]  # type: ignore[index]
    assert submod["ear.status"] == "affirming"
    assert submod["ear.trustworthiness-vector"] == {
        "instance-identity": 2,
        "configuration": 2,
        "hardware": 2,
        "runtime-opaque": 2,
    }
    assert submod["stagewarden.attested-key"] == KEY.hex()
    assert is_ear_token(token) and result.measurement == "aa" * 32


def test_ear_signature_is_plain_eddsa() -> None:
    """The signature is standard JWS EdDSA: it verifies with a bare Ed25519 check over header.payload."""
    _, token = _ear()
    signing_input, _, signature = token.rpartition(b".")
    public = ed25519.Ed25519PublicKey.from_public_bytes(bytes(VERIFIER.verify_key))
    public.verify(base64.urlsafe_b64decode(signature + b"=" * (-len(signature) % 4)), signing_input)
    with pytest.raises(InvalidSignature):
        public.verify(base64.urlsafe_b64decode(signature + b"=" * (-len(signature) % 4)), signing_input + b"x")


def test_relying_party_verifies_and_admits() -> None:
    """A valid EAR attesting the worker's key and echoing the nonce admits it; the round trip keeps every claim."""
    result, token = _ear()
    clock = FixedClock(instant(AT + 60))
    assert verify_ear(token, VERIFIER.verify_key, clock, expected_key=KEY, expected_nonce=NONCE) == result
    admission = RelyingParty(VERIFIER.verify_key, clock).admit("w0", token, KEY, expected_nonce=NONCE)
    assert admission.result == result


def test_warning_tier_for_an_allowed_non_current_tcb() -> None:
    """A status the policy allowed other than UpToDate gives hardware 32 and EAR status warning."""
    result, token = _ear("SWHardeningNeeded")
    assert result.status is Status.WARNING and result.trust_vector["hardware"] == 32
    assert result.warnings == ("hardware",)
    rp = RelyingParty(VERIFIER.verify_key, FixedClock(instant(AT)), accept_warning=False)
    with pytest.raises(AttestError) as info:
        rp.admit("w0", token, KEY)
    assert info.value.code is E.RESULT_STATUS


@pytest.mark.parametrize(
    ("at", "kwargs", "code"),
    [
        (AT - 1, {}, E.RESULT_NOT_YET_VALID),
        (AT + 3600, {}, E.RESULT_EXPIRED),
        (AT, {"expected_key": b"\x33" * 32}, E.RESULT_KEY_MISMATCH),
        (AT, {"expected_nonce": b"\x44" * 32}, E.RESULT_NONCE),
    ],
)
def test_relying_party_refusals(at: int, kwargs: dict[str, bytes], code: ErrorCode) -> None:
    """Too early, expired, another key, another nonce: each refused with its code."""
    _, token = _ear()
    with pytest.raises(AttestError) as info:
        verify_ear(token, VERIFIER.verify_key, FixedClock(instant(at)), **kwargs)  # type: ignore[arg-type]
    assert info.value.code is code


def test_forgeries_are_refused() -> None:
    """Another verifier's key, a changed payload, a changed signature byte, alg none: all refused."""
    result, token = _ear()
    clock = FixedClock(instant(AT))
    other = SigningKey(b"\x08" * 32)
    for forged, key in (
        (sign_ear(result, other), VERIFIER.verify_key),
        (token, other.verify_key),
    ):
        with pytest.raises(AttestError) as info:
            verify_ear(forged, key, clock)
        assert info.value.code is E.RESULT_SIGNATURE
    header, payload, signature = token.split(b".")
    claims = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    claims["submods"]["sgx"]["stagewarden.attested-key"] = "33" * 32
    swapped = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    flipped = signature[:10] + (b"A" if signature[10:11] != b"A" else b"B") + signature[11:]
    for forged in (b".".join([header, swapped, signature]), b".".join([header, payload, flipped])):
        with pytest.raises(AttestError) as info:
            verify_ear(forged, VERIFIER.verify_key, clock)
        assert info.value.code is E.RESULT_SIGNATURE
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT","kid":"x"}').rstrip(b"=")
    with pytest.raises(FormatError):
        verify_ear(b".".join([none_header, payload, b""]), VERIFIER.verify_key, clock)
    for garbage in (b"", b"a.b", b"x" * 70_000, b"!!.!!.!!"):
        with pytest.raises(AttestError):
            verify_ear(garbage, VERIFIER.verify_key, clock)


def test_signed_but_malformed_claims_are_refused() -> None:
    """A correctly signed token whose claims break the profile (status against vector, extra claim) is malformed."""
    result, _ = _ear()
    lying = dataclasses.replace(result, trust_vector={**result.trust_vector, "hardware": 96})
    extra = {**result.claims(), "surprise": 1}
    from jwcrypto import jwk, jwt

    key = jwk.JWK.from_pyca(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(VERIFIER)))
    for claims in (lying.claims(), extra, {**result.claims(), "eat_profile": "tag:other"}):
        token = jwt.JWT(header={"alg": "EdDSA", "typ": "JWT", "kid": result.verifier_id}, claims=claims)
        token.make_signed_token(key)
        with pytest.raises(FormatError) as info:
            open_ear(token.serialize().encode(), VERIFIER.verify_key)
        assert info.value.code is E.RESULT_MALFORMED


def test_unbound_ear_of_the_real_sample_admits_no_worker() -> None:
    """The real sample appraised without a binding yields an EAR that attests no key: no relying party admits on it."""
    appraisal = appraise_quote(quote(), collateral(), DcapPolicy(), instant(AT))
    result = ear_from_appraisal(appraisal, DcapPolicy(), VERIFIER.verify_key, instant(AT))
    assert result.attested_key is None and result.tee == "tdx" and result.tcb_status == "UpToDate"
    token = sign_ear(result, VERIFIER)
    with pytest.raises(AttestError) as info:
        RelyingParty(VERIFIER.verify_key, FixedClock(instant(AT))).admit("w0", token, KEY)
    assert info.value.code is E.RESULT_KEY_MISMATCH


def _ear_run(tmp_path: Path, tamper: bool = False, unbound: bool = False) -> Path:
    """A synthetic run whose workers were admitted with EAR results instead of simulated ones."""
    run = synthetic_run("ear", stages=2, micro_batches=2)
    for worker, tokens in run.results.items():
        simulated = parse_result_unverified(tokens[0])
        key = bytes(run.keys[worker].verify_key)
        result, _ = _ear(key=key)
        result = dataclasses.replace(
            result,
            issued_at=simulated.issued_at,
            expires_at=simulated.expires_at,
            attested_key=None if unbound else key,
            verifier_id=simulated.verifier_id,
        )
        token = sign_ear(result, run.verifier)
        run.results[worker] = [token[:-3] + (b"AAA" if token[-3:] != b"AAA" else b"BBB") if tamper else token]
    return run.write(tmp_path / "run")


def test_audit_accepts_ear_results(tmp_path: Path) -> None:
    """A run whose every worker holds an EAR attesting its receipt key audits clean."""
    path = _ear_run(tmp_path)
    run = synthetic_run("ear")
    report = audit_run_dir(path, run.verifier_key, coordinator_key=run.coordinator_key)
    assert report.clean and report.findings == ()


@pytest.mark.parametrize(
    ("kwargs", "code"), [({"tamper": True}, E.RESULT_SIGNATURE), ({"unbound": True}, E.RESULT_KEY_MISMATCH)]
)
def test_audit_refuses_forged_or_unbound_ears(tmp_path: Path, kwargs: dict[str, bool], code: ErrorCode) -> None:
    """A forged EAR, or one that attests no key, is a finding, and the workers' receipts become unattested."""
    path = _ear_run(tmp_path, **kwargs)
    report = audit_run_dir(path, bytes(synthetic_run("ear").verifier.verify_key))
    found = {f.code for f in report.errors}
    assert code in found and E.KEY_UNATTESTED in found


def test_results_lifetime_follows_the_policy() -> None:
    """The EAR's expiry is the policy's result lifetime after issue."""
    result, _ = _ear(policy=DcapPolicy(result_lifetime_seconds=60))
    assert result.expires_at - result.issued_at == dt.timedelta(seconds=60)
