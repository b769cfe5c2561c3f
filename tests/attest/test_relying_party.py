"""Tests of the relying party: admission, receipt-key checks, expiry and re-attestation."""

from __future__ import annotations

import datetime as dt

import pytest
from attest_fixtures import AttestWorld
from nacl.signing import SigningKey

from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.policy import Policy
from stagewarden.attest.relying_party import RelyingParty


def _token(w: AttestWorld, clock=None, policy=None, svns=(2, 2, 2, 2)):  # type: ignore[no-untyped-def]
    v = w.verifier(clock=clock, policy=policy)
    nonce = v.issue_nonce()
    return v.appraise_evidence(w.evidence(nonce, svns=svns), w.worker_pub, nonce).token, nonce


def test_admit_and_check(attest_world: AttestWorld) -> None:
    """A valid result admits the worker for the key it attests, and only that key."""
    token, nonce = _token(attest_world)
    rp = RelyingParty(attest_world.verifier_key.verify_key, attest_world.clock())
    admission = rp.admit("stage-0", token, attest_world.worker_pub, expected_nonce=nonce)
    assert rp.is_admitted("stage-0") and rp.admitted_workers() == ["stage-0"]
    assert rp.check_receipt_key("stage-0", attest_world.worker_pub) == admission
    with pytest.raises(AttestError) as caught:
        rp.check_receipt_key("stage-0", bytes(SigningKey.generate().verify_key))
    assert caught.value.code is ErrorCode.RESULT_KEY_MISMATCH


def test_unknown_worker_is_not_admitted(attest_world: AttestWorld) -> None:
    """A worker that never presented a result is refused with WORKER_NOT_ADMITTED."""
    rp = RelyingParty(attest_world.verifier_key.verify_key, attest_world.clock())
    assert rp.needs_reattestation("stage-1")
    with pytest.raises(AttestError) as caught:
        rp.admission("stage-1")
    assert caught.value.code is ErrorCode.WORKER_NOT_ADMITTED


def test_expiry_needs_reattestation(attest_world: AttestWorld) -> None:
    """An expired admission is refused until a fresh result is presented."""
    clock = attest_world.clock()
    rp = RelyingParty(attest_world.verifier_key.verify_key, clock)
    token, _ = _token(attest_world)
    rp.admit("stage-0", token, attest_world.worker_pub)
    assert not rp.needs_reattestation("stage-0")
    assert rp.needs_reattestation("stage-0", margin=dt.timedelta(hours=1))
    clock.advance(dt.timedelta(hours=1))
    assert rp.needs_reattestation("stage-0") and not rp.is_admitted("stage-0")
    with pytest.raises(AttestError) as caught:
        rp.admit("stage-0", token, attest_world.worker_pub)
    assert caught.value.code is ErrorCode.RESULT_EXPIRED
    fresh, _ = _token(attest_world, clock=attest_world.clock(clock.now()))
    rp.admit("stage-0", fresh, attest_world.worker_pub)
    assert rp.is_admitted("stage-0")


def test_wrong_nonce_refused(attest_world: AttestWorld) -> None:
    """A result that echoes another nonce than the one the relying party expects is refused."""
    token, _ = _token(attest_world)
    rp = RelyingParty(attest_world.verifier_key.verify_key, attest_world.clock())
    with pytest.raises(AttestError) as caught:
        rp.admit("stage-0", token, attest_world.worker_pub, expected_nonce=bytes(32))
    assert caught.value.code is ErrorCode.RESULT_NONCE


def test_warning_results_can_be_refused(attest_world: AttestWorld) -> None:
    """A relying party that wants affirming results refuses a warning result with RESULT_STATUS."""
    policy = Policy(warn=frozenset({ErrorCode.TCB_OUT_OF_DATE}))
    token, _ = _token(attest_world, policy=policy, svns=(1, 1, 1, 1))
    strict = RelyingParty(attest_world.verifier_key.verify_key, attest_world.clock(), accept_warning=False)
    with pytest.raises(AttestError) as caught:
        strict.admit("stage-0", token, attest_world.worker_pub)
    assert caught.value.code is ErrorCode.RESULT_STATUS
    lenient = RelyingParty(attest_world.verifier_key.verify_key, attest_world.clock())
    assert lenient.admit("stage-0", token, attest_world.worker_pub).result.warnings == ("TCB_OUT_OF_DATE",)


def test_evict(attest_world: AttestWorld) -> None:
    """An evicted worker is no longer admitted."""
    token, _ = _token(attest_world)
    rp = RelyingParty(attest_world.verifier_key.verify_key, attest_world.clock())
    rp.admit("stage-0", token, attest_world.worker_pub)
    rp.evict("stage-0")
    assert not rp.is_admitted("stage-0")
