"""Tests of the verifier's accepting path, its nonces and the results it signs."""

from __future__ import annotations

import datetime as dt

import pytest
from attest_fixtures import DEVICE_ID, MEASUREMENT, MODEL, T0, AttestWorld

from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.policy import Policy
from stagewarden.attest.result import Status, verify_result
from stagewarden.attest.verifier import CHECKS


def test_accepted_result_carries_every_claim(attest_world: AttestWorld) -> None:
    """An accepted appraisal yields an affirming, signed result naming the key, device, nonce and checks in order."""
    v = attest_world.verifier()
    nonce = v.issue_nonce()
    appraisal = v.appraise_evidence(attest_world.evidence(nonce), attest_world.worker_pub, nonce)
    result = verify_result(
        appraisal.token, v.verify_key, attest_world.clock(), expected_key=attest_world.worker_pub, expected_nonce=nonce
    )
    assert result == appraisal.result
    assert result.status is Status.AFFIRMING and result.tcb_status == "UpToDate"
    assert [name for name, _ in result.checks] == list(CHECKS)
    assert all(outcome == "pass" for _, outcome in result.checks)
    assert (result.device_id, result.hardware_model, result.measurement) == (DEVICE_ID, MODEL, MEASUREMENT.hex())
    assert result.issued_at == T0 and result.expires_at == T0 + dt.timedelta(hours=1)


def test_result_lifetime_follows_policy(attest_world: AttestWorld) -> None:
    """The result expires after the policy's result lifetime."""
    v = attest_world.verifier(policy=Policy(result_lifetime_seconds=120))
    nonce = v.issue_nonce()
    result = v.appraise_evidence(attest_world.evidence(nonce), attest_world.worker_pub, nonce).result
    assert result.expires_at - result.issued_at == dt.timedelta(seconds=120)


def test_nonces_are_random_and_single_use(attest_world: AttestWorld) -> None:
    """Issued nonces are 32 distinct random bytes."""
    v = attest_world.verifier()
    nonces = {v.issue_nonce() for _ in range(50)}
    assert len(nonces) == 50 and all(len(n) == 32 for n in nonces)


def test_forged_evidence_does_not_burn_the_nonce(attest_world: AttestWorld) -> None:
    """Evidence that fails before the nonce check leaves the nonce usable for the honest worker."""
    v = attest_world.verifier()
    nonce = v.issue_nonce()
    good = attest_world.evidence(nonce)
    with pytest.raises(AttestError) as caught:
        v.appraise_evidence(good[:-1] + bytes([good[-1] ^ 1]), attest_world.worker_pub, nonce)
    assert caught.value.code is ErrorCode.EVIDENCE_SIGNATURE
    assert v.appraise_evidence(good, attest_world.worker_pub, nonce).result.status is Status.AFFIRMING


def test_device_signed_evidence_consumes_the_nonce_even_when_rejected(attest_world: AttestWorld) -> None:
    """Once a genuine device signed for a nonce, the nonce is spent, even if a later check rejects."""
    v = attest_world.verifier()
    nonce = v.issue_nonce()
    with pytest.raises(AttestError):
        v.appraise_evidence(attest_world.evidence(nonce, debug=True), attest_world.worker_pub, nonce)
    with pytest.raises(AttestError) as caught:
        v.appraise_evidence(attest_world.evidence(nonce), attest_world.worker_pub, nonce)
    assert caught.value.code is ErrorCode.NONCE_REUSED


def test_register_nonce_rejects_duplicates(attest_world: AttestWorld) -> None:
    """The same nonce cannot be registered twice."""
    v = attest_world.verifier()
    v.register_nonce(b"\x07" * 32)
    with pytest.raises(ValueError):
        v.register_nonce(b"\x07" * 32)


def test_out_of_date_warning_result(attest_world: AttestWorld) -> None:
    """With OutOfDate as a warning, the result has status warning and names the condition at the tcb_level check."""
    v = attest_world.verifier(policy=Policy(warn=frozenset({ErrorCode.TCB_OUT_OF_DATE})))
    nonce = v.issue_nonce()
    result = v.appraise_evidence(attest_world.evidence(nonce, svns=(1, 1, 1, 1)), attest_world.worker_pub, nonce).result
    assert result.status is Status.WARNING and dict(result.checks)["tcb_level"] == "TCB_OUT_OF_DATE"
    assert result.tcb_status == "OutOfDate"


def test_revoked_tcb_rejected_even_when_out_of_date_is_a_warning(attest_world: AttestWorld) -> None:
    """A revoked TCB is rejected whatever the policy accepts as warnings."""
    v = attest_world.verifier(
        policy=Policy(warn=frozenset({ErrorCode.TCB_OUT_OF_DATE, ErrorCode.CRL_NEAR_NEXT_UPDATE}))
    )
    nonce = v.issue_nonce()
    with pytest.raises(AttestError) as caught:
        v.appraise_evidence(attest_world.evidence(nonce, svns=(0, 5, 5, 5)), attest_world.worker_pub, nonce)
    assert caught.value.code is ErrorCode.TCB_REVOKED


def test_verifier_clock_decides_validity(attest_world: AttestWorld) -> None:
    """After the CRLs' nextUpdate, the same setup is rejected with CRL_STALE."""
    v = attest_world.verifier(clock=attest_world.clock(T0 + dt.timedelta(days=8)))
    nonce = v.issue_nonce()
    with pytest.raises(AttestError) as caught:
        v.appraise_evidence(attest_world.evidence(nonce), attest_world.worker_pub, nonce)
    assert caught.value.code is ErrorCode.CRL_STALE
