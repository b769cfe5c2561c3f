"""Tests of the collateral formats (TCB info, reference values) and of appraisal policies."""

from __future__ import annotations

import datetime as dt

import pytest
from attest_fixtures import MEASUREMENT, T0, AttestWorld
from nacl.signing import SigningKey

from stagewarden.attest.collateral import TcbStatus, parse_reference_values, parse_tcb_info
from stagewarden.attest.errors import ErrorCode, FormatError
from stagewarden.attest.policy import Policy, load_policy, parse_policy
from stagewarden.attest.token import sign_token


def test_tcb_info_round_trip(attest_world: AttestWorld) -> None:
    """TCB info parses back with its levels in order."""
    info = parse_tcb_info(attest_world.tcb_info())
    assert [lvl.status for lvl in info.levels] == [TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE, TcbStatus.REVOKED]
    assert info.level_for((3, 2, 2, 2)).status is TcbStatus.UP_TO_DATE  # type: ignore[union-attr]
    assert info.level_for((2, 1, 2, 2)).status is TcbStatus.OUT_OF_DATE  # type: ignore[union-attr]


def test_reference_values_round_trip(attest_world: AttestWorld) -> None:
    """Reference values parse back and name their measurements."""
    refs = parse_reference_values(attest_world.references())
    assert refs.name_of(MEASUREMENT) == "stage-0" and refs.name_of(bytes(32)) is None


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"type": "stagewarden-simulated-tcb-info", "version": 2},
        {
            "type": "stagewarden-simulated-tcb-info",
            "version": 1,
            "simulated": True,
            "hardware_model": "M",
            "issue_date": "2026-03-01T00:00:00Z",
            "next_update": "2026-02-01T00:00:00Z",
            "tcb_levels": [{"svns": [1, 1, 1, 1], "status": "UpToDate"}],
        },
        {
            "type": "stagewarden-simulated-tcb-info",
            "version": 1,
            "simulated": True,
            "hardware_model": "M",
            "issue_date": "2026-03-01T00:00:00Z",
            "next_update": "2026-04-01T00:00:00Z",
            "tcb_levels": [{"svns": [1, 1, 1], "status": "UpToDate"}],
        },
        {
            "type": "stagewarden-simulated-tcb-info",
            "version": 1,
            "simulated": True,
            "hardware_model": "M",
            "issue_date": "2026-03-01T00:00:00Z",
            "next_update": "2026-04-01T00:00:00Z",
            "tcb_levels": [{"svns": [1, 1, 1, 1], "status": "Fine"}],
        },
        {
            "type": "stagewarden-simulated-tcb-info",
            "version": 1,
            "simulated": True,
            "hardware_model": "M",
            "issue_date": "2026-03-01",
            "next_update": "2026-04-01T00:00:00Z",
            "tcb_levels": [{"svns": [1, 1, 1, 1], "status": "UpToDate"}],
        },
    ],
)
def test_bad_tcb_info_is_collateral_malformed(payload: dict[str, object]) -> None:
    """TCB info with missing, extra or out-of-range fields raises COLLATERAL_MALFORMED."""
    token = sign_token(payload, SigningKey.generate(), "swsim-tcb-info+jwt")
    with pytest.raises(FormatError) as caught:
        parse_tcb_info(token)
    assert caught.value.code is ErrorCode.COLLATERAL_MALFORMED


def test_reference_values_reject_duplicates_and_uppercase(attest_world: AttestWorld) -> None:
    """Reference values with a repeated or non-lowercase measurement raise COLLATERAL_MALFORMED."""
    key = SigningKey.generate()
    base = {
        "type": "stagewarden-reference-values",
        "version": 1,
        "issued_at": "2026-03-01T00:00:00Z",
        "expires_at": "2026-03-02T00:00:00Z",
    }
    for entries in (
        [{"name": "a", "measurement": "ab" * 32}, {"name": "b", "measurement": "ab" * 32}],
        [{"name": "a", "measurement": "AB" * 32}],
    ):
        token = sign_token({**base, "measurements": entries}, key, "swsim-reference-values+jwt")
        with pytest.raises(FormatError) as caught:
            parse_reference_values(token)
        assert caught.value.code is ErrorCode.COLLATERAL_MALFORMED


def test_policy_defaults() -> None:
    """The default policy warns about nothing, and results live an hour, nonces five minutes."""
    policy = parse_policy(b'{"version": 1}')
    assert (
        policy == Policy()
        and not policy.warn
        and policy.result_lifetime_seconds == 3600
        and policy.nonce_lifetime_seconds == 300
    )


def test_policy_yaml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A YAML policy file loads with its warnings and lifetimes."""
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nwarn: [TCB_OUT_OF_DATE]\nresult_lifetime_seconds: 60\n")
    policy = load_policy(path)
    assert policy.warn == {ErrorCode.TCB_OUT_OF_DATE} and policy.result_lifetime_seconds == 60


@pytest.mark.parametrize(
    "text",
    [
        b"{}",
        b'{"version": 2}',
        b'{"version": 1, "colour": "red"}',
        b'{"version": 1, "warn": ["TCB_REVOKED"]}',
        b'{"version": 1, "warn": ["CERT_REVOKED"]}',
        b'{"version": 1, "warn": ["NOPE"]}',
        b'{"version": 1, "result_lifetime_seconds": 0}',
        b'{"version": 1, "nonce_lifetime_seconds": 1.5}',
        b'{"version": 1, "version": 1}',
        b"[1]",
        b"\xff",
        b'{"version": true}',
    ],
)
def test_bad_policy_is_policy_malformed(text: bytes) -> None:
    """Unknown keys, bad values, duplicate keys and revoked-as-warning raise POLICY_MALFORMED."""
    with pytest.raises(FormatError) as caught:
        parse_policy(text)
    assert caught.value.code is ErrorCode.POLICY_MALFORMED


def test_revoked_can_never_be_a_warning() -> None:
    """Building a policy in code that accepts TCB_REVOKED as a warning fails too."""
    with pytest.raises(FormatError):
        Policy(warn=frozenset({ErrorCode.TCB_REVOKED}))


def test_validity_uses_whole_seconds(attest_world: AttestWorld) -> None:
    """Collateral times are whole-second UTC instants."""
    info = parse_tcb_info(attest_world.tcb_info(issue=T0 - dt.timedelta(days=1)))
    assert info.issue_date == T0 - dt.timedelta(days=1)
