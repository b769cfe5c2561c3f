"""Signed computation receipts: one per forward, backward and update unit a worker executes.

A receipt names the unit (run, worker, stage, replica, step, micro-batch, kind), commits to the
digests of its input, output and weights and to the execution environment, carries the instant
it was signed and the digest of the same worker's previous receipt (a hash chain per worker),
and is signed with the worker's attested Ed25519 receipt key. The byte layout (version 1) is
documented in ``docs/receipts.rst``; it is canonical: every receipt has exactly one encoding,
and :func:`parse_receipt` accepts nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import struct
from typing import TYPE_CHECKING

import blake3
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from .binary import Writer, check_bytes, check_id, check_text, check_uint, read_string
from .errors import AttestError, ErrorCode, FormatError

if TYPE_CHECKING:  # torch is needed only by ExecutionEnv.capture
    import torch

#: First four bytes of every encoded receipt.
RECEIPT_MAGIC = b"SWRC"
#: The receipt format version this module writes and reads.
RECEIPT_VERSION = 1
#: Bounds of the string fields, in bytes.
MAX_ID_BYTES = 128
MAX_ENV_TEXT_BYTES = 64
MAX_DTYPE_BYTES = 32
#: Length of an Ed25519 signature and public key.
SIGNATURE_SIZE = 64
KEY_SIZE = 32
DIGEST_SIZE = 32
#: Domain tag of the genesis value of a worker's receipt chain.
CHAIN_GENESIS_DOMAIN = b"stagewarden/receipt-chain/genesis/v1\x00"

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US = dt.timedelta(microseconds=1)
#: Largest signing time that fits a datetime (9999-12-31T23:59:59.999999Z), in microseconds.
MAX_TIME_US = (dt.datetime.max.replace(tzinfo=dt.UTC) - EPOCH) // _ONE_US

_FIXED = struct.Struct(">IIQI32s32s32s")
_TAIL = struct.Struct(">IQ32s32s")


class UnitKind(enum.StrEnum):
    """The kind of a unit of work; its wire code is :attr:`code`."""

    FORWARD = "forward"
    BACKWARD = "backward"
    UPDATE = "update"

    @property
    def code(self) -> int:
        """The one-byte code of this kind in the receipt layout (1, 2, 3)."""
        return _KIND_CODES[self]


_KIND_CODES = {UnitKind.FORWARD: 1, UnitKind.BACKWARD: 2, UnitKind.UPDATE: 3}
_KINDS_BY_CODE = {code: kind for kind, code in _KIND_CODES.items()}


class EnvFlag(enum.IntFlag):
    """Determinism-relevant switches of the execution environment (a bit field in the receipt)."""

    DETERMINISTIC_ALGORITHMS = 1
    CUDNN_DETERMINISTIC = 2
    CUDNN_BENCHMARK = 4
    TF32_MATMUL = 8
    TF32_CUDNN = 16


_ALL_FLAGS = int(
    EnvFlag.DETERMINISTIC_ALGORITHMS
    | EnvFlag.CUDNN_DETERMINISTIC
    | EnvFlag.CUDNN_BENCHMARK
    | EnvFlag.TF32_MATMUL
    | EnvFlag.TF32_CUDNN
)


@dataclasses.dataclass(frozen=True)
class ExecutionEnv:
    """Where and how a unit ran: enough for a verifier to decide whether to compare bitwise.

    Attributes:
        torch_version: ``torch.__version__``.
        device: the device string (``"cpu"``, ``"cuda:0"``).
        dtype: the compute dtype name (``"float32"``).
        flags: the determinism switches in force.
    """

    torch_version: str
    device: str
    dtype: str
    flags: EnvFlag = EnvFlag(0)

    @classmethod
    def capture(cls, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> ExecutionEnv:
        """The environment of this process for ``device`` and ``dtype`` (default float32), from torch."""
        import torch

        dtype = torch.float32 if dtype is None else dtype
        flags = EnvFlag(0)
        if torch.are_deterministic_algorithms_enabled():
            flags |= EnvFlag.DETERMINISTIC_ALGORITHMS
        if torch.backends.cudnn.deterministic:
            flags |= EnvFlag.CUDNN_DETERMINISTIC
        if torch.backends.cudnn.benchmark:
            flags |= EnvFlag.CUDNN_BENCHMARK
        if torch.backends.cuda.matmul.allow_tf32:
            flags |= EnvFlag.TF32_MATMUL
        if torch.backends.cudnn.allow_tf32:
            flags |= EnvFlag.TF32_CUDNN
        return cls(
            torch_version=str(torch.__version__),
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            flags=flags,
        )


@dataclasses.dataclass(frozen=True)
class Receipt:
    """A receipt for one unit of work (see the module docstring).

    Attributes:
        run_id: the training run.
        worker_id: the worker that executed the unit.
        stage: the pipeline stage.
        replica: the data-parallel replica of the pipeline.
        step: the optimiser step.
        micro_batch: the micro-batch within the step (0 for update units).
        kind: forward, backward or update.
        input_digest: forward: the input activation (or data batch); backward: the gradient with
            respect to the stage's output; update: the accumulated gradients.
        output_digest: forward: the output activation; backward: the gradient with respect to
            the stage's input; update: the new weights.
        weights_digest: the weights the unit ran with.
        env: the execution environment.
        signed_at: when the receipt was signed (UTC, microsecond precision).
        prev_digest: :func:`receipt_digest` of this worker's previous receipt in the run, or
            :func:`chain_genesis` for its first.
        signer_key: the 32-byte Ed25519 public key that signed the receipt.
        signature: the 64-byte Ed25519 signature over the encoded body.
    """

    run_id: str
    worker_id: str
    stage: int
    replica: int
    step: int
    micro_batch: int
    kind: UnitKind
    input_digest: bytes
    output_digest: bytes
    weights_digest: bytes
    env: ExecutionEnv
    signed_at: dt.datetime
    prev_digest: bytes
    signer_key: bytes = bytes(KEY_SIZE)
    signature: bytes = bytes(SIGNATURE_SIZE)
    _body: bytes | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    """The encoded body, kept by :func:`sign_receipt` and :func:`parse_receipt` so that signing,
    digesting, verifying and logging encode a receipt once. Not an init field: a receipt made with
    :func:`dataclasses.replace` starts without it and is encoded again."""

    @property
    def unit(self) -> tuple[str, int, int, UnitKind]:
        """The unit this receipt is for, as ``(worker_id, step, micro_batch, kind)``."""
        return (self.worker_id, self.step, self.micro_batch, self.kind)


def chain_genesis(run_id: str, worker_id: str) -> bytes:
    """The ``prev_digest`` of a worker's first receipt in a run."""
    w = Writer()
    w.raw(CHAIN_GENESIS_DOMAIN)
    w.string(run_id)
    w.string(worker_id)
    return blake3.blake3(w.getvalue()).digest()


def time_to_us(instant: dt.datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (raises ``ValueError`` when naive or before 1970)."""
    if instant.tzinfo is None:
        raise ValueError("signing times must be timezone-aware")
    us = (instant - EPOCH) // _ONE_US
    if not 0 <= us <= MAX_TIME_US:
        raise ValueError(f"signing time {instant.isoformat()} is before 1970")
    return us


def us_to_time(us: int) -> dt.datetime:
    """The UTC datetime of a microsecond count since the Unix epoch."""
    return EPOCH + dt.timedelta(microseconds=us)


def encode_receipt_body(receipt: Receipt) -> bytes:
    """The signed part of the encoding (everything but the signature); raises ``ValueError`` for invalid fields."""
    if receipt._body is not None:
        return receipt._body
    r = receipt
    env = r.env
    w = Writer()
    w.raw(RECEIPT_MAGIC)
    w.u16(RECEIPT_VERSION)
    w.u8(UnitKind(r.kind).code)
    w.string(check_id(r.run_id, "run_id", MAX_ID_BYTES))
    w.string(check_id(r.worker_id, "worker_id", MAX_ID_BYTES))
    w.raw(
        _FIXED.pack(
            check_uint(r.stage, 32, "stage"),
            check_uint(r.replica, 32, "replica"),
            check_uint(r.step, 64, "step"),
            check_uint(r.micro_batch, 32, "micro_batch"),
            check_bytes(r.input_digest, DIGEST_SIZE, "input_digest"),
            check_bytes(r.output_digest, DIGEST_SIZE, "output_digest"),
            check_bytes(r.weights_digest, DIGEST_SIZE, "weights_digest"),
        )
    )
    w.string(check_text(env.torch_version, "torch_version", MAX_ENV_TEXT_BYTES))
    w.string(check_text(env.device, "device", MAX_ENV_TEXT_BYTES))
    w.string(check_text(env.dtype, "dtype", MAX_DTYPE_BYTES))
    flags = int(env.flags)
    if flags & ~_ALL_FLAGS:
        raise ValueError(f"unknown execution environment flags {flags & ~_ALL_FLAGS:#x}")
    w.raw(
        _TAIL.pack(
            flags,
            time_to_us(r.signed_at),
            check_bytes(r.prev_digest, DIGEST_SIZE, "prev_digest"),
            check_bytes(r.signer_key, KEY_SIZE, "signer_key"),
        )
    )
    return w.getvalue()


def encode_receipt(receipt: Receipt) -> bytes:
    """The canonical encoding of a signed receipt: body followed by the 64-byte signature."""
    return encode_receipt_body(receipt) + check_bytes(receipt.signature, SIGNATURE_SIZE, "signature")


def receipt_digest(receipt: Receipt) -> bytes:
    """BLAKE3 of the encoded body (the signature is excluded, so no signature variant can fork a chain)."""
    return blake3.blake3(encode_receipt_body(receipt)).digest()


def sign_receipt(receipt: Receipt, signing_key: SigningKey) -> Receipt:
    """Return ``receipt`` with ``signer_key`` set to the key's public half and signed by it."""
    unsigned = dataclasses.replace(receipt, signer_key=bytes(signing_key.verify_key), signature=bytes(SIGNATURE_SIZE))
    body = encode_receipt_body(unsigned)
    signed = dataclasses.replace(unsigned, signature=signing_key.sign(body).signature)
    object.__setattr__(signed, "_body", body)  # the signature is not part of the body
    return signed


def verify_receipt(receipt: Receipt, expected_key: bytes | None = None) -> None:
    """Check the receipt's signature under its ``signer_key`` (and that this is ``expected_key``).

    Raises:
        stagewarden.attest.errors.AttestError: ``RECEIPT_SIGNATURE`` when the signature does not verify
            or the key is not the expected one.
    """
    if expected_key is not None and receipt.signer_key != expected_key:
        raise AttestError(
            ErrorCode.RECEIPT_SIGNATURE,
            f"receipt was signed by key {receipt.signer_key.hex()[:16]}, "
            f"not by the expected key {expected_key.hex()[:16]}",
        )
    verify_signature(
        receipt.signer_key, encode_receipt_body(receipt), receipt.signature, ErrorCode.RECEIPT_SIGNATURE, "receipt"
    )


def verify_signature(key: bytes, message: bytes, signature: bytes, code: ErrorCode, what: str) -> None:
    """Verify an Ed25519 signature; raise :class:`~stagewarden.attest.errors.AttestError` with
    ``code`` when it does not verify."""
    try:
        VerifyKey(key).verify(message, signature)
    except (CryptoError, ValueError, TypeError):
        # CryptoError covers BadSignatureError and keys that are not valid curve points.
        raise AttestError(code, f"{what} signature does not verify under key {bytes(key).hex()[:16]}") from None


def parse_receipt(data: bytes) -> Receipt:
    """Parse an encoded receipt strictly (its signature is not checked; see :func:`verify_receipt`).

    Raises:
        stagewarden.attest.errors.FormatError: ``RECEIPT_MALFORMED`` for anything but a canonical version-1 encoding,
            ``RECEIPT_VERSION`` for another version.
    """
    bad = ErrorCode.RECEIPT_MALFORMED
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(bad, "receipt must be bytes")
    data = bytes(data)
    size = len(data)
    if size < 7:
        raise FormatError(bad, f"receipt: truncated ({size} bytes)")
    if data[:4] != RECEIPT_MAGIC:
        raise FormatError(bad, "receipt: does not start with the receipt magic 'SWRC'")
    version = (data[4] << 8) | data[5]
    if version != RECEIPT_VERSION:
        raise FormatError(
            ErrorCode.RECEIPT_VERSION, f"receipt format version {version} is not supported (only {RECEIPT_VERSION})"
        )
    kind = _KINDS_BY_CODE.get(data[6])
    if kind is None:
        raise FormatError(bad, "receipt: unit kind must be 1 (forward), 2 (backward) or 3 (update) (at byte 6)")
    run_id, pos = read_string(data, 7, MAX_ID_BYTES, True, "run_id", bad, "receipt")
    worker_id, pos = read_string(data, pos, MAX_ID_BYTES, True, "worker_id", bad, "receipt")
    if pos + _FIXED.size > size:
        raise FormatError(bad, f"receipt: truncated in fields stage..weights_digest (at byte {pos})")
    stage, replica, step, micro_batch, input_digest, output_digest, weights_digest = _FIXED.unpack_from(data, pos)
    pos += _FIXED.size
    env_start = pos
    torch_version, pos = read_string(data, pos, MAX_ENV_TEXT_BYTES, False, "torch_version", bad, "receipt")
    device, pos = read_string(data, pos, MAX_ENV_TEXT_BYTES, False, "device", bad, "receipt")
    dtype, pos = read_string(data, pos, MAX_DTYPE_BYTES, False, "dtype", bad, "receipt")
    if pos + _TAIL.size + SIGNATURE_SIZE != size:
        what = "truncated" if pos + _TAIL.size + SIGNATURE_SIZE > size else "followed by trailing bytes"
        raise FormatError(
            bad,
            f"receipt: {what} after the environment strings (at byte {pos}; the fixed tail is "
            f"{_TAIL.size + SIGNATURE_SIZE} bytes, {size - pos} are left)",
        )
    flags, signed_us, prev_digest, signer_key = _TAIL.unpack_from(data, pos)
    if flags & ~_ALL_FLAGS:
        raise FormatError(bad, f"receipt: unknown execution environment flags {flags & ~_ALL_FLAGS:#x} (at byte {pos})")
    if signed_us > MAX_TIME_US:
        raise FormatError(bad, f"receipt: signing time is out of range (at byte {pos + 4})")
    env_key = data[env_start : pos + 4]
    env = _ENV_CACHE.get(env_key)
    if env is None:
        env = ExecutionEnv(torch_version=torch_version, device=device, dtype=dtype, flags=EnvFlag(flags))
        if len(_ENV_CACHE) >= 256:
            _ENV_CACHE.clear()
        _ENV_CACHE[env_key] = env
    receipt = Receipt(
        run_id=run_id,
        worker_id=worker_id,
        stage=stage,
        replica=replica,
        step=step,
        micro_batch=micro_batch,
        kind=kind,
        input_digest=input_digest,
        output_digest=output_digest,
        weights_digest=weights_digest,
        env=env,
        signed_at=EPOCH + dt.timedelta(microseconds=signed_us),
        prev_digest=prev_digest,
        signer_key=signer_key,
        signature=data[size - SIGNATURE_SIZE :],
    )
    object.__setattr__(receipt, "_body", data[: size - SIGNATURE_SIZE])  # the exact bytes that were signed
    return receipt


_ENV_CACHE: dict[bytes, ExecutionEnv] = {}
