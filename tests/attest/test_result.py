"""Tests of attestation results: signing, strict claims and the relying party's checks."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from stagewarden.attest.clock import FixedClock
from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.result import (
    AttestationResult,
    Status,
    parse_result_unverified,
    sign_result,
    verify_result,
)
from stagewarden.attest.token import sign_token

VERIFIER = SigningKey(bytes([7]) * 32)
WORKER = SigningKey(bytes([9]) * 32)
T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _result(**changes: object) -> AttestationResult:
    base = AttestationResult(
        status=Status.AFFIRMING,
        checks=(("parse", "pass"), ("tcb", "pass")),
        attested_key=bytes(WORKER.verify_key),
        nonce=bytes(range(32)),
        issued_at=T0,
        expires_at=T0 + dt.timedelta(hours=1),
        device_id="00ff",
        hardware_model="SIM-1",
        measurement="ab" * 32,
        tcb_status="UpToDate",
        verifier_id="0123456789abcdef",
    )
    return dataclasses.replace(base, **changes)


def _clock(minutes: float) -> FixedClock:
    return FixedClock(T0 + dt.timedelta(minutes=minutes))


def test_round_trip_and_expected_values() -> None:
    """A signed result verifies, echoes its nonce and attests the worker's key."""
    token = sign_result(_result(), VERIFIER)
    result = verify_result(
        token, VERIFIER.verify_key, _clock(10), expected_key=bytes(WORKER.verify_key), expected_nonce=bytes(range(32))
    )
    assert result == _result()
    assert parse_result_unverified(token) == _result()


@pytest.mark.parametrize(
    ("minutes", "code"),
    [(-1, ErrorCode.RESULT_NOT_YET_VALID), (60, ErrorCode.RESULT_EXPIRED), (600, ErrorCode.RESULT_EXPIRED)],
)
def test_validity_window(minutes: float, code: ErrorCode) -> None:
    """A result is refused before its issue time and from its expiry on."""
    with pytest.raises(AttestError) as info:
        verify_result(sign_result(_result(), VERIFIER), VERIFIER.verify_key, _clock(minutes))
    assert info.value.code is code


def test_audit_time_overrides_clock() -> None:
    """``at`` checks validity at a past instant, as an audit of earlier use does."""
    token = sign_result(_result(), VERIFIER)
    assert (
        verify_result(token, VERIFIER.verify_key, _clock(600), at=T0 + dt.timedelta(minutes=30)).status
        is Status.AFFIRMING
    )


def test_forged_result_is_rejected() -> None:
    """A result signed by anyone but the pinned verifier is refused."""
    with pytest.raises(AttestError) as info:
        verify_result(sign_result(_result(), WORKER), VERIFIER.verify_key, _clock(1))
    assert info.value.code is ErrorCode.RESULT_SIGNATURE


def test_wrong_key_wrong_nonce_and_bad_status() -> None:
    """The attested key and nonce must be the expected ones; a contraindicated result is refused."""
    token = sign_result(_result(), VERIFIER)
    with pytest.raises(AttestError) as info:
        verify_result(token, VERIFIER.verify_key, _clock(1), expected_key=bytes(VERIFIER.verify_key))
    assert info.value.code is ErrorCode.RESULT_KEY_MISMATCH
    with pytest.raises(AttestError) as info:
        verify_result(token, VERIFIER.verify_key, _clock(1), expected_nonce=bytes(32))
    assert info.value.code is ErrorCode.RESULT_NONCE
    bad = sign_result(_result(status=Status.CONTRAINDICATED), VERIFIER)
    with pytest.raises(AttestError) as info:
        verify_result(bad, VERIFIER.verify_key, _clock(1))
    assert info.value.code is ErrorCode.RESULT_STATUS


def test_warnings_list_the_non_passing_checks() -> None:
    """``warnings`` lists the codes that the policy let through."""
    result = _result(status=Status.WARNING, checks=(("parse", "pass"), ("tcb", "TCB_OUT_OF_DATE")))
    assert result.warnings == ("TCB_OUT_OF_DATE",)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.pop("exp"),
        lambda c: c.update(extra=1),
        lambda c: c.update(eat_profile="tag:example.com,2026:other"),
        lambda c: c.update({"stagewarden.simulated": False}),
        lambda c: c.update(iat="0"),
        lambda c: c.update(exp=c["iat"]),
        lambda c: c.update(exp=10**20),
        lambda c: c.update(iat=-1),
        lambda c: c.update({"ear.status": "great"}),
        lambda c: c.update({"stagewarden.attested-key": "AB" * 32}),
        lambda c: c.update({"stagewarden.attested-key": "ab" * 31}),
        lambda c: c.update(eat_nonce=""),
        lambda c: c.update({"stagewarden.checks": [["parse"]]}),
        lambda c: c.update({"ear.verifier-id": {"developer": "x"}}),
    ],
)
def test_claims_are_checked_strictly(mutate) -> None:  # type: ignore[no-untyped-def]
    """Every missing, extra or ill-typed claim makes the result malformed, even when well signed."""
    claims = _result().claims()
    mutate(claims)
    token = sign_token(claims, VERIFIER, "ear+jwt")
    with pytest.raises(FormatError) as info:
        verify_result(token, VERIFIER.verify_key, _clock(1))
    assert info.value.code is ErrorCode.RESULT_MALFORMED


@given(st.binary(max_size=400))
def test_random_bytes_raise_only_the_domain_error(data: bytes) -> None:
    """Random bytes given to the result parser raise the domain error and nothing else."""
    with pytest.raises(AttestError):
        parse_result_unverified(data)


def test_binding_claims_round_trip_and_are_optional() -> None:
    """Run, worker and stage survive signing and parsing; a result without them parses with None."""
    bound = _result(run_id="run-a", worker="s1r0", stage="1")
    parsed = parse_result_unverified(sign_result(bound, VERIFIER))
    assert (parsed.run_id, parsed.worker, parsed.stage) == ("run-a", "s1r0", "1")
    assert parse_result_unverified(sign_result(_result(), VERIFIER)).stage is None


@pytest.mark.parametrize("value", [1, "", "x" * 129, None, ["0"]])
def test_malformed_binding_claim_is_refused(value: object) -> None:
    """A binding claim that is not a string of 1 to 128 characters: RESULT_MALFORMED."""
    claims = _result().claims()
    claims["stagewarden.stage"] = value
    with pytest.raises(FormatError) as info:
        parse_result_unverified(sign_token(claims, VERIFIER, "ear+jwt"))
    assert info.value.code is ErrorCode.RESULT_MALFORMED
