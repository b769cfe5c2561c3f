"""Fuzzing the signed JSON tokens: attestation results (``attest/result.py``), TCB info and reference
values (``attest/collateral.py``), through both the unverified parsers and the verified paths.

Random bytes and byte-level mutations of the tokens are already fuzzed against the unverified
parsers (``tests/attest/test_attest_properties.py``); here the mutations work on the token's
structure: its three parts swapped, dropped, repeated or spliced from another token, and its
payload edited (values replaced, keys added or deleted, two fields swapped) and signed again, so
that the edits reach the claim checks behind the signature. Properties: a changed token never
verifies; a payload the parser accepts is exactly what the parsed object writes back (one
encoding per value); every rejection is FormatError (or AttestError on the verified path) with the
format's code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from fuzzing import outcome
from hypothesis import assume, example, given
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey
from strategies import fuzz_settings, json_values, mutated_bytes, mutated_tree

from stagewarden.attest.clock import FixedClock
from stagewarden.attest.collateral import (
    REFERENCE_TYP,
    TCB_INFO_TYP,
    ReferenceValues,
    TcbInfo,
    TcbLevel,
    TcbStatus,
    open_reference_values,
    open_tcb_info,
    parse_reference_values,
    parse_tcb_info,
    sign_reference_values,
    sign_tcb_info,
)
from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.result import (
    RESULT_TYP,
    AttestationResult,
    Status,
    parse_result_unverified,
    sign_result,
    verify_result,
)
from stagewarden.attest.token import b64url_encode, canonical_json, key_id, sign_token

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
KEY = SigningKey(bytes(range(32)))
OTHER_KEY = SigningKey(bytes(range(1, 33)))

RESULT = AttestationResult(
    status=Status.AFFIRMING,
    checks=(("chain", "pass"), ("tcb", "TCB_OUT_OF_DATE")),
    attested_key=bytes(range(32)),
    nonce=bytes(range(16)),
    issued_at=T0,
    expires_at=T0 + dt.timedelta(hours=1),
    device_id="gpu-node-0",
    hardware_model="SWSIM-TEE-1",
    measurement="ab" * 32,
    tcb_status="OutOfDate",
    verifier_id=key_id(KEY.verify_key),
)
TCB_INFO = TcbInfo(
    "SWSIM-TEE-1",
    T0 - dt.timedelta(days=1),
    T0 + dt.timedelta(days=30),
    (TcbLevel((2, 2, 2, 2), TcbStatus.UP_TO_DATE), TcbLevel((0, 0, 0, 0), TcbStatus.REVOKED)),
)
REFERENCES = ReferenceValues(T0, T0 + dt.timedelta(days=1), (("stage-0", bytes(32)), ("stage-1", bytes(range(32)))))


def _verify_result(token: bytes, key: VerifyKey) -> AttestationResult:
    # Judged at its own issue time, as the auditor does, so that validity windows do not mask the claims.
    try:
        at = parse_result_unverified(token).issued_at
    except FormatError:
        at = T0
    return verify_result(token, key, FixedClock(at), at=at)


#: kind -> (typ, malformed code, payload, parse unverified, parse verified, payload of a parsed object)
KINDS: dict[str, tuple[str, ErrorCode, dict[str, Any], Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = {
    "result": (
        RESULT_TYP,
        ErrorCode.RESULT_MALFORMED,
        RESULT.claims(),
        parse_result_unverified,
        _verify_result,
        lambda r: r.claims(),
    ),
    "tcb_info": (
        TCB_INFO_TYP,
        ErrorCode.COLLATERAL_MALFORMED,
        TCB_INFO.payload(),
        parse_tcb_info,
        open_tcb_info,
        lambda t: t.payload(),
    ),
    "reference_values": (
        REFERENCE_TYP,
        ErrorCode.COLLATERAL_MALFORMED,
        REFERENCES.payload(),
        parse_reference_values,
        open_reference_values,
        lambda r: r.payload(),
    ),
}
BAD_SIGNATURE = {
    "result": ErrorCode.RESULT_SIGNATURE,
    "tcb_info": ErrorCode.TCB_INFO_INVALID,
    "reference_values": ErrorCode.REFERENCE_INVALID,
}
TOKENS = {
    "result": sign_result(RESULT, KEY),
    "tcb_info": sign_tcb_info(TCB_INFO, KEY),
    "reference_values": sign_reference_values(REFERENCES, KEY),
}
ALL_TOKENS = tuple(TOKENS.values())


@st.composite
def part_mutations(draw: st.DrawFn, token: bytes) -> bytes:
    """``token`` with its dot-separated parts swapped, dropped, repeated, or taken from another token."""
    parts = token.split(b".")
    donor = draw(st.sampled_from(ALL_TOKENS)).split(b".")
    op = draw(st.sampled_from(["swap", "drop", "repeat", "splice", "empty", "dots"]))
    i, j = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    if op == "swap":
        parts[i], parts[j] = parts[j], parts[i]
    elif op == "drop":
        del parts[i]
    elif op == "repeat":
        parts.insert(i, parts[j])
    elif op == "splice":
        parts[i] = donor[j]
    elif op == "empty":
        parts[i] = b""
    else:
        return b".".join(parts).replace(b".", b"..", 1)
    return b".".join(parts)


#: Collateral times: valid, impossible dates and times, and digits of other scripts (which
#: ``\d`` would match), so that only the one canonical spelling is accepted.
_TIME_BASES = [
    "2026-03-01T12:00:00Z",
    "2024-02-29T23:59:59Z",
    "2026-02-29T00:00:00Z",
    "2026-12-31T23:59:60Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2026-13-01T24:00:00Z",
]


@st.composite
def times(draw: st.DrawFn) -> str:
    chars = list(draw(st.sampled_from(_TIME_BASES)))
    for index in draw(st.lists(st.integers(0, len(chars) - 1), max_size=2)):
        if chars[index].isdigit():
            chars[index] = draw(st.characters(categories=["Nd"]))
    return "".join(chars)


_VALUES = st.one_of(json_values, times(), st.integers(int(T0.timestamp()) - 10, int(T0.timestamp()) + 10))


@st.composite
def edited_payloads(draw: st.DrawFn, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` after tree edits, or with one of its time fields respelled (see :func:`times`)."""
    time_fields = sorted(k for k, v in payload.items() if isinstance(v, str) and v[:2] == "20" and v[-1:] == "Z")
    if time_fields and draw(st.booleans()):
        return {**payload, draw(st.sampled_from(time_fields)): draw(times())}
    return draw(mutated_tree(payload, values=_VALUES))


def _sign(payload: dict[str, Any], typ: str, key: SigningKey = KEY) -> bytes:
    try:
        return sign_token(payload, key, typ)
    except UnicodeEncodeError:  # a lone surrogate cannot be signed (UTF-8) at all
        assume(False)
        raise


def _check_rejection(error: BaseException, code: ErrorCode) -> None:
    assert isinstance(error, AttestError) and error.message
    if isinstance(error, FormatError):
        assert error.code is code


@fuzz_settings(1.0)
@given(st.sampled_from(sorted(KINDS)), st.data())
def test_changed_tokens_never_verify(kind: str, data: st.DataObject) -> None:
    """Byte edits and part edits of a signed token are rejected with a domain error by the verified
    path (unless they left it unchanged); the unverified parser raises FormatError or parses."""
    typ, code, _, parse, verify, _ = KINDS[kind]
    token = TOKENS[kind]
    changed = data.draw(st.one_of(mutated_bytes(token, ALL_TOKENS), part_mutations(token)))
    _, error = outcome(parse, changed, errors=FormatError)
    if error is not None:
        _check_rejection(error, code)
    _, error = outcome(verify, changed, KEY.verify_key, errors=AttestError)
    if changed == token:
        assert error is None
    else:
        assert error is not None, "a changed token verified"
        _check_rejection(error, code)


@fuzz_settings(2.0)
@given(st.sampled_from(sorted(KINDS)), st.data(), st.none())
# A date in Arabic-Indic digits was accepted and written back in ASCII digits (fixed: ASCII only).
@example("tcb_info", None, {"issue_date": "\u0662\u0660\u0662\u0666-02-28T12:00:00Z"})
# Year 26 parsed, but was written back as "26-..." (strftime), which does not parse (fixed).
@example("reference_values", None, {"issued_at": "0026-03-01T12:00:00Z"})
def test_edited_payloads_signed_again(kind: str, data: st.DataObject | None, fixed: dict[str, Any] | None) -> None:
    """Edited payloads, signed with the right key, are rejected with the format's code or accepted;
    an accepted payload is exactly what the parsed object writes back, and both paths agree."""
    typ, code, payload, parse, verify, write = KINDS[kind]
    edited = {**payload, **fixed} if fixed is not None else data.draw(edited_payloads(payload)) if data else payload
    token = _sign(edited, typ)
    parsed, error = outcome(parse, token, errors=FormatError)
    verified, verify_error = outcome(verify, token, KEY.verify_key, errors=AttestError)
    if error is not None:
        _check_rejection(error, code)
        assert verify_error is not None and verify_error.code is code
        return
    written = write(parsed)
    if kind == "result":
        # The verifier-id's developer and build strings are informative: the result keeps its key id only.
        assert written["ear.verifier-id"]["key-id"] == edited["ear.verifier-id"]["key-id"]
        edited = {**edited, "ear.verifier-id": written["ear.verifier-id"]}
    assert written == edited
    if verify_error is not None:  # only the result's validity checks can refuse a well-formed token
        assert kind == "result" and verify_error.code is ErrorCode.RESULT_STATUS
    else:
        assert verified == parsed


@fuzz_settings(0.5)
@given(st.sampled_from(sorted(KINDS)), st.data())
def test_other_signers_never_verify(kind: str, data: st.DataObject) -> None:
    """A token signed by another key, even with the pinned key's id in its header, is refused."""
    typ, code, payload, _, verify, _ = KINDS[kind]
    forged = _sign(data.draw(st.one_of(st.just(payload), mutated_tree(payload))), typ, OTHER_KEY)
    if data.draw(st.booleans()):  # claim the pinned key's id
        header = canonical_json({"alg": "EdDSA", "kid": key_id(KEY.verify_key), "typ": typ})
        forged = b64url_encode(header).encode() + forged[forged.index(b".") :]
    _, error = outcome(verify, forged, KEY.verify_key, errors=AttestError)
    assert error is not None and error.code is BAD_SIGNATURE[kind]
