"""Tests of the canonical JSON and compact EdDSA token layer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.token import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    open_token,
    parse_canonical_json,
    peek_token,
    sign_token,
)

KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
CODES = {"malformed": ErrorCode.RESULT_MALFORMED, "bad_signature": ErrorCode.RESULT_SIGNATURE}


def _open(token: bytes, key: SigningKey = KEY) -> dict:
    return open_token(token, key.verify_key, "test+jwt", what="token", **CODES)


def test_canonical_json_sorts_keys_and_drops_spaces() -> None:
    """Canonical JSON sorts keys and has no white space, whatever the insertion order."""
    assert canonical_json({"b": 1, "a": [True, None, "x"]}) == b'{"a":[true,null,"x"],"b":1}'


def test_canonical_json_refuses_floats() -> None:
    """Floats have no single encoding, so canonical JSON refuses them."""
    with pytest.raises(TypeError):
        canonical_json({"a": 1.5})


@pytest.mark.parametrize(
    "data",
    [b'{"b":1,"a":2}', b'{"a": 1}', b'{"a":1,"a":1}', b'{"a":1.0}', b'{"a":NaN}', b"\xff", b'{"a":1}\n'],
)
def test_non_canonical_json_is_rejected(data: bytes) -> None:
    """Unsorted keys, spaces, duplicate keys, floats, NaN, bad UTF-8 and trailing bytes are all refused."""
    with pytest.raises(FormatError) as info:
        parse_canonical_json(data, ErrorCode.RESULT_MALFORMED, "x")
    assert info.value.code is ErrorCode.RESULT_MALFORMED


def test_round_trip() -> None:
    """A signed token opens to the payload it was made from."""
    payload = {"n": 3, "s": "é", "l": [1, 2]}
    assert _open(sign_token(payload, KEY, "test+jwt")) == payload


def test_signature_under_another_key_is_rejected() -> None:
    """A token signed by another key fails with the signature code, even with a matching kid."""
    token = sign_token({"n": 1}, OTHER, "test+jwt")
    with pytest.raises(AttestError) as info:
        _open(token)
    assert info.value.code is ErrorCode.RESULT_SIGNATURE
    _, payload, signature = token.split(b".")
    forged = b".".join([sign_token({"n": 1}, KEY, "test+jwt").split(b".")[0], payload, signature])
    with pytest.raises(AttestError) as info:
        _open(forged)
    assert info.value.code is ErrorCode.RESULT_SIGNATURE


def test_payload_swap_is_rejected() -> None:
    """Replacing the payload of a valid token breaks its signature."""
    token = sign_token({"n": 1}, KEY, "test+jwt")
    other = sign_token({"n": 2}, KEY, "test+jwt")
    spliced = b".".join([token.split(b".")[0], other.split(b".")[1], token.split(b".")[2]])
    with pytest.raises(AttestError) as info:
        _open(spliced)
    assert info.value.code is ErrorCode.RESULT_SIGNATURE


def test_wrong_type_and_shape_are_malformed() -> None:
    """A token of another typ, or with two or four parts, is malformed."""
    with pytest.raises(FormatError):
        _open(sign_token({"n": 1}, KEY, "other+jwt"))
    token = sign_token({"n": 1}, KEY, "test+jwt")
    for bad in (token.rsplit(b".", 1)[0], token + b".x", token + b"=", b"\x80" + token):
        with pytest.raises(FormatError) as info:
            _open(bad)
        assert info.value.code is ErrorCode.RESULT_MALFORMED


def test_base64url_is_strict() -> None:
    """Padding, foreign characters and non-canonical trailing bits are refused."""
    assert b64url_decode(b64url_encode(b"ab"), ErrorCode.RESULT_MALFORMED, "x") == b"ab"
    for bad in ("YWI=", "YW+", "YWJ", "Y"):
        with pytest.raises(FormatError):
            b64url_decode(bad, ErrorCode.RESULT_MALFORMED, "x")


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_the_domain_error(data: bytes) -> None:
    """Random bytes given to the token parser raise FormatError and nothing else."""
    with pytest.raises(FormatError):
        peek_token(data, "test+jwt", ErrorCode.RESULT_MALFORMED, "token")


@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255))
def test_mutated_tokens_never_verify(position: int, value: int) -> None:
    """Changing any byte of a valid token makes it fail with a domain error (or leaves it unchanged)."""
    token = bytearray(sign_token({"claim": "value", "n": 7}, KEY, "test+jwt"))
    position %= len(token)
    if token[position] == value:
        return
    token[position] = value
    with pytest.raises(AttestError):
        _open(bytes(token))
