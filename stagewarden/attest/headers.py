"""Signed headers: what a stage attaches to every activation or gradient it sends to a neighbour.

The header names the transfer (run, sender worker, sender stage and replica, receiver stage,
step, micro-batch, kind), commits to the tensor's dtype, shape and digest
(:mod:`stagewarden.attest.tensor_digest`) and is signed with the sender's attested receipt key.
The receiver logs it; two valid headers for the same transfer with different digests convict the
sender of equivocation. The byte layout (version 1) is documented in ``docs/receipts.rst``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import struct

import blake3
from nacl.signing import SigningKey

from .binary import Writer, check_bytes, check_id, check_text, check_uint, read_string
from .errors import AttestError, ErrorCode, FormatError
from .receipts import (
    DIGEST_SIZE,
    EPOCH,
    KEY_SIZE,
    MAX_DTYPE_BYTES,
    MAX_ID_BYTES,
    MAX_TIME_US,
    SIGNATURE_SIZE,
    time_to_us,
    verify_signature,
)
from .tensor_digest import MAX_DIMS, TensorDigest

#: First four bytes of every encoded signed header.
HEADER_MAGIC = b"SWHD"
#: The header format version this module writes and reads.
HEADER_VERSION = 1

_FIXED = struct.Struct(">IIIQI")
_TAIL = struct.Struct(">32sQ32s")


class TransferKind(enum.StrEnum):
    """What a header travels with: an activation (to stage + 1) or a gradient (to stage - 1)."""

    ACTIVATION = "activation"
    GRADIENT = "gradient"

    @property
    def code(self) -> int:
        """The one-byte code of this kind in the header layout (1, 2)."""
        return 1 if self is TransferKind.ACTIVATION else 2


_KINDS_BY_CODE = {1: TransferKind.ACTIVATION, 2: TransferKind.GRADIENT}


@dataclasses.dataclass(frozen=True)
class SignedHeader:
    """The signed header of one activation or gradient transfer.

    Attributes:
        run_id: the training run.
        sender: the sending worker's id.
        sender_stage: the sending stage.
        sender_replica: the sending replica (the receiver is the same replica of the next or
            previous stage).
        receiver_stage: ``sender_stage + 1`` for activations, ``sender_stage - 1`` for gradients;
            one stage further when the stage between them is bypassed (which the checker of the
            header, not its encoding, must accept: the run must declare that bypass).
        step: the optimiser step.
        micro_batch: the micro-batch.
        kind: activation or gradient.
        tensor: the digest of the tensor sent, with its dtype and shape.
        signed_at: when the header was signed.
        signer_key: the sender's 32-byte Ed25519 receipt public key.
        signature: the 64-byte Ed25519 signature over the encoded body.
    """

    run_id: str
    sender: str
    sender_stage: int
    sender_replica: int
    receiver_stage: int
    step: int
    micro_batch: int
    kind: TransferKind
    tensor: TensorDigest
    signed_at: dt.datetime
    signer_key: bytes = bytes(KEY_SIZE)
    signature: bytes = bytes(SIGNATURE_SIZE)
    _body: bytes | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    """The encoded body, kept by :func:`sign_header` and :func:`parse_header` so that a header is
    encoded once. Not an init field: a header made with :func:`dataclasses.replace` starts without it."""

    @property
    def transfer(self) -> tuple[str, int, int, TransferKind, int]:
        """The transfer this header is for, as ``(sender, step, micro_batch, kind, receiver_stage)``."""
        return (self.sender, self.step, self.micro_batch, self.kind, self.receiver_stage)


def _check_direction(kind: TransferKind, sender_stage: int, receiver_stage: int) -> str | None:
    step = 1 if kind is TransferKind.ACTIVATION else -1
    if receiver_stage not in (sender_stage + step, sender_stage + 2 * step):
        expected = sender_stage + step
        return f"an {kind} from stage {sender_stage} must go to stage {expected}, not {receiver_stage}"
    return None


def encode_header_body(header: SignedHeader) -> bytes:
    """The signed part of the encoding; raises ``ValueError`` for invalid fields."""
    if header._body is not None:
        return header._body
    h = header
    kind = TransferKind(h.kind)
    w = Writer()
    w.raw(HEADER_MAGIC)
    w.u16(HEADER_VERSION)
    w.u8(kind.code)
    w.string(check_id(h.run_id, "run_id", MAX_ID_BYTES))
    w.string(check_id(h.sender, "sender", MAX_ID_BYTES))
    w.raw(
        _FIXED.pack(
            check_uint(h.sender_stage, 32, "sender_stage"),
            check_uint(h.sender_replica, 32, "sender_replica"),
            check_uint(h.receiver_stage, 32, "receiver_stage"),
            check_uint(h.step, 64, "step"),
            check_uint(h.micro_batch, 32, "micro_batch"),
        )
    )
    problem = _check_direction(kind, h.sender_stage, h.receiver_stage)
    if problem:
        raise ValueError(problem)
    w.string(check_text(h.tensor.dtype, "dtype", MAX_DTYPE_BYTES))
    if len(h.tensor.shape) > MAX_DIMS:
        raise ValueError(f"a header's tensor has at most {MAX_DIMS} dimensions")
    w.u8(len(h.tensor.shape))
    for dim in h.tensor.shape:
        w.u64(check_uint(dim, 64, "tensor dimension"))
    w.raw(
        _TAIL.pack(
            check_bytes(h.tensor.digest, DIGEST_SIZE, "tensor digest"),
            time_to_us(h.signed_at),
            check_bytes(h.signer_key, KEY_SIZE, "signer_key"),
        )
    )
    return w.getvalue()


def encode_header(header: SignedHeader) -> bytes:
    """The canonical encoding of a signed header: body followed by the 64-byte signature."""
    return encode_header_body(header) + check_bytes(header.signature, SIGNATURE_SIZE, "signature")


def header_digest(header: SignedHeader) -> bytes:
    """BLAKE3 of the encoded header body (signature excluded)."""
    return blake3.blake3(encode_header_body(header)).digest()


def sign_header(header: SignedHeader, signing_key: SigningKey) -> SignedHeader:
    """Return ``header`` with ``signer_key`` set to the key's public half and signed by it."""
    unsigned = dataclasses.replace(header, signer_key=bytes(signing_key.verify_key), signature=bytes(SIGNATURE_SIZE))
    body = encode_header_body(unsigned)
    signed = dataclasses.replace(unsigned, signature=signing_key.sign(body).signature)
    object.__setattr__(signed, "_body", body)  # the signature is not part of the body
    return signed


def verify_header(header: SignedHeader, expected_key: bytes | None = None) -> None:
    """Check the header's signature under its ``signer_key`` (and that this is ``expected_key``).

    Raises:
        stagewarden.attest.errors.AttestError: ``HEADER_SIGNATURE`` when it does not verify or the key
            is not the expected one.
    """
    if expected_key is not None and header.signer_key != expected_key:
        raise AttestError(
            ErrorCode.HEADER_SIGNATURE,
            f"header was signed by key {header.signer_key.hex()[:16]}, "
            f"not by the expected key {expected_key.hex()[:16]}",
        )
    verify_signature(
        header.signer_key, encode_header_body(header), header.signature, ErrorCode.HEADER_SIGNATURE, "header"
    )


def parse_header(data: bytes) -> SignedHeader:
    """Parse an encoded signed header strictly (its signature is not checked; see :func:`verify_header`).

    Raises:
        stagewarden.attest.errors.FormatError: ``HEADER_MALFORMED`` for anything but a canonical version-1 encoding (a
            version other than 1 is malformed too: there is no other header version yet).
    """
    bad = ErrorCode.HEADER_MALFORMED
    what = "signed header"
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(bad, "signed header must be bytes")
    data = bytes(data)
    size = len(data)
    if size < 7:
        raise FormatError(bad, f"{what}: truncated ({size} bytes)")
    if data[:4] != HEADER_MAGIC:
        raise FormatError(bad, f"{what}: does not start with the header magic 'SWHD'")
    version = (data[4] << 8) | data[5]
    if version != HEADER_VERSION:
        raise FormatError(bad, f"{what}: format version {version} is not supported (only {HEADER_VERSION})")
    kind = _KINDS_BY_CODE.get(data[6])
    if kind is None:
        raise FormatError(bad, f"{what}: transfer kind must be 1 (activation) or 2 (gradient) (at byte 6)")
    run_id, pos = read_string(data, 7, MAX_ID_BYTES, True, "run_id", bad, what)
    sender, pos = read_string(data, pos, MAX_ID_BYTES, True, "sender", bad, what)
    if pos + _FIXED.size > size:
        raise FormatError(bad, f"{what}: truncated in fields sender_stage..micro_batch (at byte {pos})")
    sender_stage, sender_replica, receiver_stage, step, micro_batch = _FIXED.unpack_from(data, pos)
    problem = _check_direction(kind, sender_stage, receiver_stage)
    if problem:
        raise FormatError(bad, f"{what}: {problem} (at byte {pos})")
    pos += _FIXED.size
    dtype, pos = read_string(data, pos, MAX_DTYPE_BYTES, False, "dtype", bad, what)
    if pos >= size:
        raise FormatError(bad, f"{what}: truncated in field ndim (at byte {pos})")
    ndim = data[pos]
    if ndim > MAX_DIMS:
        raise FormatError(bad, f"{what}: tensor has {ndim} dimensions, at most {MAX_DIMS} allowed (at byte {pos})")
    pos += 1
    expected = pos + 8 * ndim + _TAIL.size + SIGNATURE_SIZE
    if expected != size:
        state = "truncated" if expected > size else "followed by trailing bytes"
        raise FormatError(
            bad,
            f"{what}: {state} after the dtype (at byte {pos}; {expected - pos} bytes expected, {size - pos} are left)",
        )
    shape = struct.unpack_from(f">{ndim}Q", data, pos)
    pos += 8 * ndim
    digest, signed_us, signer_key = _TAIL.unpack_from(data, pos)
    if signed_us > MAX_TIME_US:
        raise FormatError(bad, f"{what}: signing time is out of range (at byte {pos + 32})")
    header = SignedHeader(
        run_id=run_id,
        sender=sender,
        sender_stage=sender_stage,
        sender_replica=sender_replica,
        receiver_stage=receiver_stage,
        step=step,
        micro_batch=micro_batch,
        kind=kind,
        tensor=TensorDigest(dtype=dtype, shape=shape, digest=digest),
        signed_at=EPOCH + dt.timedelta(microseconds=signed_us),
        signer_key=signer_key,
        signature=data[size - SIGNATURE_SIZE :],
    )
    object.__setattr__(header, "_body", data[: size - SIGNATURE_SIZE])  # the exact bytes that were signed
    return header
