"""Compact signed tokens: JWS compact serialisation (RFC 7515) with EdDSA over Ed25519 (RFC 8037).

Payloads are canonical JSON (sorted keys, no white space, integers and strings only, no floats),
and a token is accepted only if its header and payload are exactly the canonical bytes, so a
token has one encoding and cannot be re-encoded into a second valid one.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from .errors import AttestError, ErrorCode, FormatError

#: Largest token accepted, in bytes; anything longer is rejected before parsing.
MAX_TOKEN_BYTES = 64 * 1024


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 JSON encoding of ``value`` (sorted keys, no spaces, no floats)."""
    _reject_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError("canonical JSON carries no floating-point numbers")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("canonical JSON object keys must be strings")
            _reject_floats(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _reject_floats(item)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = item
    return out


def _no_float(text: str) -> Any:
    raise ValueError(f"floating-point number {text!r} is not allowed")


def parse_canonical_json(data: bytes, code: ErrorCode, what: str) -> Any:
    """Parse ``data`` as canonical JSON; anything else raises
    :class:`~stagewarden.attest.errors.FormatError` with ``code``."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_float,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(code, f"{what} is not valid JSON: {exc}") from None
    try:
        again = canonical_json(value)
    except UnicodeEncodeError:  # an escaped lone surrogate ("\ud800") decodes, but has no UTF-8 encoding
        raise FormatError(code, f"{what} holds a lone surrogate escape, which is not canonical") from None
    except RecursionError:  # nested just too deep to re-encode, though not too deep to decode
        raise FormatError(code, f"{what} is nested too deeply") from None
    except TypeError as exc:  # pragma: no cover - json.loads yields only canonical-able values
        raise FormatError(code, f"{what}: {exc}") from None
    if again != data:
        raise FormatError(code, f"{what} is not in canonical form (sorted keys, no white space)")
    return value


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url, as JWS uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, code: ErrorCode, what: str) -> bytes:
    """Strict unpadded base64url decoding: no padding, no foreign characters, canonical trailing bits."""
    if "=" in text or any(c not in _B64URL for c in text) or len(text) % 4 == 1:
        raise FormatError(code, f"{what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise FormatError(code, f"{what} is not unpadded base64url") from None
    if b64url_encode(data) != text:
        raise FormatError(code, f"{what} is not canonical base64url")
    return data


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def key_id(verify_key: VerifyKey) -> str:
    """A short, stable identifier of an Ed25519 public key: the first 16 hex digits of it."""
    return bytes(verify_key).hex()[:16]


def sign_token(payload: dict[str, Any], signing_key: SigningKey, typ: str) -> bytes:
    """Sign ``payload`` as a JWS compact token of type ``typ``."""
    header = {"alg": "EdDSA", "kid": key_id(signing_key.verify_key), "typ": typ}
    signing_input = f"{b64url_encode(canonical_json(header))}.{b64url_encode(canonical_json(payload))}"
    signature = signing_key.sign(signing_input.encode("ascii")).signature
    return f"{signing_input}.{b64url_encode(signature)}".encode("ascii")


def peek_token(
    token: bytes, typ: str, code: ErrorCode, what: str
) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Parse a token without checking its signature: ``(header, payload, signing_input, signature)``."""
    if len(token) > MAX_TOKEN_BYTES:
        raise FormatError(code, f"{what} is larger than {MAX_TOKEN_BYTES} bytes")
    try:
        text = token.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(code, f"{what} is not ASCII") from None
    parts = text.split(".")
    if len(parts) != 3:
        raise FormatError(code, f"{what} must have three dot-separated parts, found {len(parts)}")
    header = parse_canonical_json(b64url_decode(parts[0], code, f"{what} header"), code, f"{what} header")
    payload = parse_canonical_json(b64url_decode(parts[1], code, f"{what} payload"), code, f"{what} payload")
    signature = b64url_decode(parts[2], code, f"{what} signature")
    if not isinstance(header, dict) or set(header) != {"alg", "kid", "typ"}:
        raise FormatError(code, f"{what} header must hold exactly alg, kid and typ")
    if header["alg"] != "EdDSA":
        raise FormatError(code, f"{what} header alg must be EdDSA, not {header['alg']!r}")
    if header["typ"] != typ:
        raise FormatError(code, f"{what} header typ must be {typ!r}, not {header['typ']!r}")
    if not isinstance(payload, dict):
        raise FormatError(code, f"{what} payload must be a JSON object")
    if len(signature) != 64:
        raise FormatError(code, f"{what} signature must be 64 bytes, not {len(signature)}")
    return header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature


def open_token(
    token: bytes,
    verify_key: VerifyKey,
    typ: str,
    *,
    malformed: ErrorCode,
    bad_signature: ErrorCode,
    what: str,
) -> dict[str, Any]:
    """Parse and verify a token signed by ``verify_key``; return its payload."""
    header, payload, signing_input, signature = peek_token(token, typ, malformed, what)
    if header["kid"] != key_id(verify_key):
        raise AttestError(
            bad_signature, f"{what} was signed by key {header['kid']}, not by the pinned key {key_id(verify_key)}"
        )
    try:
        verify_key.verify(signing_input, signature)
    except BadSignatureError:
        raise AttestError(bad_signature, f"{what} signature does not verify under key {key_id(verify_key)}") from None
    return payload
