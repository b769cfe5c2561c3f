"""The messages between a coordinator and the attestation verifier service, and their framing.

Each message is one JSON object (typed by its ``op`` field, with a ``version``) in one frame: a
4-byte big-endian length, then that many bytes of UTF-8 JSON, at most :data:`MAX_FRAME_BYTES`.
Nothing is pickled: a frame that is too long, not JSON, or not exactly one of the messages below
is refused with :class:`VerifierProtocolError`.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

#: The version of the verifier service's messages.
VERIFIER_PROTOCOL_VERSION: Literal[1] = 1
#: The largest frame either side sends or reads (a DCAP quote of 64 KiB is 128 KiB as hex).
MAX_FRAME_BYTES = 1 << 20
_LENGTH = struct.Struct(">I")
_HEX_KEY = r"^[0-9a-f]{64}$"
_HEX = r"^([0-9a-f]{2})*$"
_T = TypeVar("_T")


class VerifierProtocolError(Exception):
    """A frame or message that breaks the verifier service's protocol, or a connection that broke."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    version: Literal[1] = VERIFIER_PROTOCOL_VERSION


class PublicKeyRequest(_Message):
    """Ask for the verifier's public key."""

    op: Literal["public_key"] = "public_key"


class NonceRequest(_Message):
    """Ask for a fresh single-use nonce."""

    op: Literal["nonce"] = "nonce"


class AppraiseRequest(_Message):
    """Appraise ``evidence`` that must bind ``nonce`` and ``receipt_key``, for ``worker`` of run
    ``run_id`` admitted for ``stage`` (``None``: a standby); the result names all of them."""

    op: Literal["appraise"] = "appraise"
    run_id: str = Field(min_length=1, max_length=256)
    worker: str = Field(min_length=1, max_length=256)
    stage: int | None = Field(ge=0, le=1_000_000)
    receipt_key: str = Field(pattern=_HEX_KEY)
    nonce: str = Field(pattern=_HEX_KEY)
    evidence: str = Field(pattern=_HEX, max_length=MAX_FRAME_BYTES // 2)


class PublicKeyReply(_Message):
    """The verifier's Ed25519 public key (hex) and the kind of evidence it appraises."""

    op: Literal["public_key"] = "public_key"
    key: str = Field(pattern=_HEX_KEY)
    kind: Literal["simulated", "dcap"]


class NonceReply(_Message):
    """A nonce (hex) the verifier issued and will accept once."""

    op: Literal["nonce"] = "nonce"
    nonce: str = Field(pattern=_HEX_KEY)


class AppraisalReply(_Message):
    """The signed attestation result (hex of its token) for an accepted piece of evidence."""

    op: Literal["appraisal"] = "appraisal"
    token: str = Field(pattern=_HEX, min_length=2, max_length=MAX_FRAME_BYTES // 2)


class RefusedReply(_Message):
    """The evidence was refused: ``code`` is the :class:`~stagewarden.attest.errors.ErrorCode`."""

    op: Literal["refused"] = "refused"
    code: str = Field(min_length=1, max_length=64)
    message: str = Field(max_length=4096)


class ErrorReply(_Message):
    """The request itself was malformed or the verifier failed; ``message`` says why."""

    op: Literal["error"] = "error"
    message: str = Field(max_length=4096)


Request = Annotated[PublicKeyRequest | NonceRequest | AppraiseRequest, Field(discriminator="op")]
Reply = Annotated[PublicKeyReply | NonceReply | AppraisalReply | RefusedReply | ErrorReply, Field(discriminator="op")]
_REQUEST: TypeAdapter[PublicKeyRequest | NonceRequest | AppraiseRequest] = TypeAdapter(Request)
_REPLY: TypeAdapter[PublicKeyReply | NonceReply | AppraisalReply | RefusedReply | ErrorReply] = TypeAdapter(Reply)


def parse_request(data: bytes) -> PublicKeyRequest | NonceRequest | AppraiseRequest:
    """The request in ``data`` (one frame's payload).

    Raises:
        VerifierProtocolError: Not JSON, or not exactly one request.
    """
    return _parse(_REQUEST, data, "request")


def parse_reply(data: bytes) -> PublicKeyReply | NonceReply | AppraisalReply | RefusedReply | ErrorReply:
    """The reply in ``data`` (one frame's payload).

    Raises:
        VerifierProtocolError: Not JSON, or not exactly one reply.
    """
    return _parse(_REPLY, data, "reply")


def _parse(adapter: TypeAdapter[_T], data: bytes, what: str) -> _T:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise VerifierProtocolError(f"the {what} is not JSON") from None
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise VerifierProtocolError(f"malformed {what} ({where}: {first['msg']})") from None


def encode_frame(message: BaseModel) -> bytes:
    """``message`` as one frame: its length and its JSON."""
    payload = message.model_dump_json().encode("utf-8")
    if len(payload) > MAX_FRAME_BYTES:
        raise VerifierProtocolError(f"a message of {len(payload)} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    return _LENGTH.pack(len(payload)) + payload


def read_frame(sock: socket.socket) -> bytes:
    """The payload of the next frame on ``sock`` (the socket's timeout applies to each read).

    Raises:
        VerifierProtocolError: The peer closed the connection, or announced an oversized frame.
        TimeoutError: The peer sent nothing in time.
    """
    (length,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise VerifierProtocolError(f"a frame of {length} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    return _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            raise VerifierProtocolError("the connection closed in the middle of a message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
