"""Framed messages over torch.distributed point-to-point: control messages and signed tensors.

Nothing is pickled. A frame is an int64 length followed by that many bytes (two ``uint8``-typed
sends); a control message is one frame of canonical JSON, parsed strictly on receipt. A tensor
from one stage to the next travels in one message, a *signed transfer*: a slot of
:data:`HEADER_SLOT` bytes holding the u32 length (big-endian) of the sender's encoded signed
header, the header and zero bytes, followed by the tensor's bytes. The receiver knows the
tensor's dtype and shape, so it receives the whole message into a buffer of that size, then
parses the header, checks its signature under the sender's attested key, its run, step,
micro-batch, direction, dtype and shape, and the tensor's digest (the tensor is a view of the
buffer). One message instead of a header frame and a tensor spares two of the three sends per
transfer, which on a loaded machine cost more than the signature.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from nacl.signing import SigningKey

from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.headers import (
    SignedHeader,
    TransferKind,
    encode_header,
    parse_header,
    sign_header,
    verify_header,
)
from stagewarden.attest.tensor_digest import TensorDigest, dtype_name, tensor_digest
from stagewarden.attest.token import canonical_json, parse_canonical_json
from stagewarden.runtime.errors import RuntimeSetupError

#: Largest frame accepted, in bytes (a control message, a header or a fetched tensor's bytes).
MAX_FRAME_BYTES = 1 << 30
#: The bytes before the tensor in a signed transfer, which hold a u32 length, the encoded signed
#: header and zero padding. 1 KiB holds the longest header (590 bytes, with 128-byte run and
#: sender ids, a 32-byte dtype name and 16 dimensions) and keeps the tensor aligned for every dtype.
HEADER_SLOT = 1024

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}


class TransportError(RuntimeSetupError):
    """A peer died, timed out, or sent a message that is malformed or fails its checks.

    ``peer`` is the rank concerned (when known) and ``cause`` what happened: ``closed`` (its
    connection closed: the process died or quit), ``timeout`` (nothing arrived within the
    process group's timeout), ``reported`` (the peer said it failed), ``malformed`` (what arrived
    fails parsing or the protocol's checks) or ``local`` (this process could not send).
    """

    def __init__(self, message: str, *, peer: int | None = None, cause: str = "malformed") -> None:
        super().__init__(message)
        self.peer = peer
        self.cause = cause


class HeaderRejected(TransportError):
    """A received signed header (or its tensor) failed a check; ``code`` says which."""

    def __init__(self, code: str, message: str, *, peer: int | None = None) -> None:
        super().__init__(message, peer=peer, cause="malformed")
        self.code = code


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a receiver expects of an incoming tensor transfer."""

    run_id: str
    sender: str
    sender_key: bytes
    sender_stage: int
    receiver_stage: int
    step: int
    micro_batch: int
    kind: TransferKind
    dtype: str
    shape: tuple[int, ...]


class Transport:
    """Point-to-point messages of one process of the run (blocking receives, optional non-blocking sends).

    Args:
        device: Where the communication buffers live: ``cpu`` for gloo, ``cuda`` for nccl.
        deliver_to: Where :meth:`recv_signed` returns the tensors it receives (the device the
            stage computes on); defaults to ``device``. With gloo and a stage on a GPU the buffers
            stay on the CPU: a tensor sent is copied to the CPU first, one received is copied to
            ``deliver_to`` after its digest has been checked.
        signed: Whether activations and gradients travel behind signed headers. Without
            (a run with receipts off: nothing would check a header) :meth:`send_signed` sends
            the tensor alone, :meth:`recv_signed` takes it by its expected dtype and shape and
            returns no header, and :meth:`send_relayed` forwards the tensor alone. Every process
            of a run must agree.
    """

    def __init__(
        self, device: torch.device | str = "cpu", deliver_to: torch.device | str | None = None, *, signed: bool = True
    ) -> None:
        self.device = torch.device(device)
        self.deliver_to = self.device if deliver_to is None else torch.device(deliver_to)
        self.signed = signed
        self._pending: list[tuple[Any, list[torch.Tensor]]] = []
        self.waiting_on: int | None = None
        """The rank a blocking receive is waiting on now (``None`` between receives)."""
        self.waiting_since = 0.0
        self.free_since = time.monotonic()
        """When the last blocking receive ended (or the transport was made)."""
        self.last_src: int | None = None
        """The rank the last receive was from (what the caller parses next came from it)."""

    # -- frames -------------------------------------------------------------------------------

    def _frame_tensors(self, data: bytes) -> list[torch.Tensor]:
        length = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        body = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.device) if data else None
        return [length] if body is None else [length, body]

    def send_bytes(self, dst: int, data: bytes, *, blocking: bool = True) -> None:
        """Send one frame to rank ``dst`` (with ``blocking=False`` the send is posted and completed
        by :meth:`flush`)."""
        tensors = self._frame_tensors(data)
        self._send(dst, tensors, blocking)

    def recv_bytes(self, src: int, limit: int = MAX_FRAME_BYTES) -> bytes:
        """Receive one frame from rank ``src``; refuse a length outside ``[0, limit]``."""
        length = torch.empty(1, dtype=torch.int64, device=self.device)
        self._recv(src, length)
        size = int(length.item())
        if not 0 <= size <= limit:
            raise TransportError(f"rank {src} announced a frame of {size} bytes (the limit is {limit})", peer=src)
        if size == 0:
            return b""
        body = torch.empty(size, dtype=torch.uint8, device=self.device)
        self._recv(src, body)
        return body.cpu().numpy().tobytes()

    def send_json(self, dst: int, message: dict[str, Any]) -> None:
        """Send a control message (canonical JSON) to ``dst``."""
        self.send_bytes(dst, canonical_json(message))

    def recv_json(self, src: int, expect: str | Sequence[str] | None = None) -> dict[str, Any]:
        """Receive a control message from ``src``, parsed strictly; check its ``type`` against ``expect``."""
        raw = self.recv_bytes(src, limit=64 * 1024 * 1024)
        try:
            message = parse_canonical_json(raw, ErrorCode.LOG_MALFORMED, f"message from rank {src}")
        except FormatError as exc:
            raise TransportError(exc.message, peer=src) from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise TransportError(f"message from rank {src} is not an object with a string 'type'", peer=src)
        if message["type"] == "error":
            raise TransportError(
                f"rank {src} reported an error: {str(message.get('message', ''))[:500]}", peer=src, cause="reported"
            )
        wanted = (expect,) if isinstance(expect, str) else tuple(expect) if expect is not None else None
        if wanted is not None and message["type"] not in wanted:
            raise TransportError(
                f"rank {src} sent a {message['type'][:64]!r} message where {' or '.join(wanted)} was expected",
                peer=src,
            )
        return message

    def send_tensor(self, dst: int, tensor: torch.Tensor, *, blocking: bool = True) -> None:
        """Send a raw tensor (the receiver must know its dtype and shape)."""
        self._send(dst, [tensor.detach().contiguous().to(self.device)], blocking)

    def recv_tensor(self, src: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """Receive a raw tensor of ``dtype`` and ``shape`` from ``src`` (returned on the CPU if the transport is)."""
        buffer = torch.empty(shape, dtype=dtype, device=self.device)
        self._recv(src, buffer)
        return buffer

    # -- signed transfers ---------------------------------------------------------------------

    def send_signed(
        self,
        dst: int,
        tensor: torch.Tensor,
        header: SignedHeader,
        key: SigningKey,
        *,
        blocking: bool = True,
        digest: TensorDigest | None = None,
    ) -> SignedHeader | None:
        """Sign ``header`` and send it with the tensor, as one message. Its tensor digest is
        computed here from ``tensor``, unless the caller passes ``digest``, which must be
        ``tensor_digest(tensor)`` (a sender that has just digested the tensor for its receipt
        need not hash it twice).
        Returns the signed header; ``None`` when the transport is not ``signed`` (the tensor
        went alone)."""
        wire = tensor.detach().to(self.device).contiguous()  # one copy when the stage computes elsewhere
        if not self.signed:
            self._send(dst, [wire], blocking)
            return None
        if digest is None:
            digest = tensor_digest(wire if wire.device.type == "cpu" else wire.cpu())
        signed = sign_header(dataclasses.replace(header, tensor=digest, signed_at=dt.datetime.now(dt.UTC)), key)
        self.send_relayed(dst, encode_header(signed), wire, blocking=blocking)
        return signed

    def recv_signed(self, src: int, expected: Expected) -> tuple[torch.Tensor, SignedHeader | None, bytes]:
        """Receive a signed transfer from ``src`` and check it against ``expected``.

        Returns:
            The tensor (on ``deliver_to``), the parsed header and its encoded bytes (kept for the
            coordinator); ``None`` and ``b""`` when the transport is not ``signed``.

        Raises:
            HeaderRejected: The header is malformed, forged, for another transfer, or the tensor's
                digest, dtype or shape differ from what the header or the receiver expects.
        """
        if not self.signed:
            tensor = self.recv_tensor(src, _DTYPES[expected.dtype], expected.shape)
            return tensor.to(self.deliver_to), None, b""
        dtype = _DTYPES[expected.dtype]
        frame = torch.empty(HEADER_SLOT + _nbytes(dtype, expected.shape), dtype=torch.uint8, device=self.device)
        self._recv(src, frame)
        slot = frame[:HEADER_SLOT].cpu().numpy().tobytes()
        length = int.from_bytes(slot[:4], "big")
        try:
            if not 0 < length <= HEADER_SLOT - 4:
                raise HeaderRejected(
                    "HEADER_MALFORMED", f"the signed header from {expected.sender} announces {length} bytes"
                )
            raw = slot[4 : 4 + length]
            header = check_header(raw, expected)
        except HeaderRejected as exc:
            exc.peer = src
            raise
        tensor = frame[HEADER_SLOT:].view(dtype).reshape(expected.shape)
        digest = tensor_digest(tensor.cpu())
        if digest != header.tensor:
            raise HeaderRejected(
                "HEADER_MISMATCH",
                f"the {expected.kind} for step {expected.step} micro-batch {expected.micro_batch} from "
                f"{expected.sender} does not match the digest its signed header commits to",
                peer=src,
            )
        return tensor.to(self.deliver_to), header, raw

    def send_relayed(self, dst: int, raw: bytes, tensor: torch.Tensor, *, blocking: bool = False) -> None:
        """Forward a transfer as it was received or sent: its encoded signed header ``raw`` and
        the tensor, as one signed transfer (the tensor alone when the transport is not
        ``signed``); the receiver takes it with :meth:`recv_signed`."""
        wire = tensor.detach().to(self.device).contiguous()
        self._send(dst, [self._transfer_frame(raw, wire) if self.signed else wire], blocking)

    def _transfer_frame(self, header: bytes, wire: torch.Tensor) -> torch.Tensor:
        """One signed transfer's message: the header's slot (:data:`HEADER_SLOT`), then the
        tensor's bytes (a copy of ``wire``, contiguous on the transport's device)."""
        if not 0 < len(header) <= HEADER_SLOT - 4:
            raise ValueError(
                f"an encoded signed header of {len(header)} bytes does not fit its {HEADER_SLOT}-byte slot"
            )
        slot = bytearray(HEADER_SLOT)  # zero padding: nothing of this process's memory goes out
        slot[:4] = len(header).to_bytes(4, "big")
        slot[4 : 4 + len(header)] = header
        frame = torch.empty(HEADER_SLOT + wire.numel() * wire.element_size(), dtype=torch.uint8, device=self.device)
        frame[:HEADER_SLOT] = torch.frombuffer(slot, dtype=torch.uint8).to(self.device)
        frame[HEADER_SLOT:] = wire.reshape(-1).view(torch.uint8)
        return frame

    # -- plumbing -----------------------------------------------------------------------------

    def _send(self, dst: int, tensors: list[torch.Tensor], blocking: bool) -> None:
        try:
            if blocking:
                for t in tensors:
                    dist.send(t, dst)
            else:
                for t in tensors:
                    self._pending.append((dist.isend(t, dst), [t]))
        except Exception as exc:  # noqa: BLE001 - torch raises several backend-specific types
            raise TransportError(
                f"sending to rank {dst} failed (did the process die?): {_short(exc)}", peer=dst, cause=_cause(exc)
            ) from None

    def _recv(self, src: int, tensor: torch.Tensor) -> None:
        # each time is set before the state it dates, so the heartbeat thread never pairs a
        # state with the time of the one before (:meth:`wait_state`)
        self.waiting_since, self.last_src = time.monotonic(), src
        self.waiting_on = src
        try:
            dist.recv(tensor, src)
        except Exception as exc:  # noqa: BLE001
            raise TransportError(
                f"receiving from rank {src} failed (did the process die or time out?): {_short(exc)}",
                peer=src,
                cause=_cause(exc),
            ) from None
        finally:
            self.free_since = time.monotonic()
            self.waiting_on = None

    def wait_state(self) -> tuple[int | None, float]:
        """The rank a blocking receive waits on now (``None``: none) and since when: the wait's
        start, or the end of the last receive when none is waiting (``time.monotonic()``)."""
        peer = self.waiting_on
        return (peer, self.waiting_since) if peer is not None else (None, self.free_since)

    def flush(self) -> None:
        """Wait until every non-blocking send has completed."""
        pending, self._pending = self._pending, []
        try:
            for work, _keep in pending:
                work.wait()
        except Exception as exc:  # noqa: BLE001
            raise TransportError(
                f"a send did not complete (did the receiver die?): {_short(exc)}", cause=_cause(exc)
            ) from None


def pack_tensors(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The bytes of ``tensors`` (each moved to the CPU, row-major) one after the other, as one
    ``uint8`` tensor: many tensors travel as one transfer. :func:`unpack_tensors` splits it."""
    parts = [t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)


def unpack_tensors(packed: torch.Tensor, layout: Sequence[tuple[torch.dtype, tuple[int, ...]]]) -> list[torch.Tensor]:
    """Split a :func:`pack_tensors` buffer into tensors of the announced dtypes and shapes (each
    a copy that owns its memory).

    Raises:
        ValueError: The buffer's size is not the sum of the announced tensors' sizes.
    """
    sizes = [_nbytes(dtype, shape) for dtype, shape in layout]
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != sum(sizes):
        raise ValueError(f"a packed buffer of {packed.numel()} bytes does not hold the {sum(sizes)} bytes announced")
    out, offset = [], 0
    for (dtype, shape), size in zip(layout, sizes, strict=True):
        out.append(packed[offset : offset + size].clone().view(dtype).reshape(shape))
        offset += size
    return out


def packed_size(layout: Sequence[tuple[torch.dtype, tuple[int, ...]]]) -> int:
    """The bytes :func:`pack_tensors` makes of tensors of these dtypes and shapes."""
    return sum(_nbytes(dtype, shape) for dtype, shape in layout)


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * torch.empty(0, dtype=dtype).element_size()


def check_header(raw: bytes, expected: Expected) -> SignedHeader:
    """Parse an encoded signed header and check it against ``expected`` (see :meth:`Transport.recv_signed`)."""
    try:
        header = parse_header(raw)
        verify_header(header, expected.sender_key)
    except AttestError as exc:
        raise HeaderRejected(str(exc.code), f"signed header from {expected.sender} rejected: {exc.message}") from None
    got = (
        header.run_id,
        header.sender,
        header.sender_stage,
        header.receiver_stage,
        header.step,
        header.micro_batch,
        header.kind,
    )
    want = (
        expected.run_id,
        expected.sender,
        expected.sender_stage,
        expected.receiver_stage,
        expected.step,
        expected.micro_batch,
        expected.kind,
    )
    if got != want:
        raise HeaderRejected(
            "HEADER_MISMATCH", f"signed header from {expected.sender} is for transfer {got}, expected {want}"
        )
    if header.tensor.dtype != expected.dtype or tuple(header.tensor.shape) != expected.shape:
        raise HeaderRejected(
            "HEADER_MISMATCH",
            f"signed header from {expected.sender} announces a {header.tensor.dtype} tensor of shape "
            f"{tuple(header.tensor.shape)}, expected {expected.dtype} {expected.shape}",
        )
    return header


def _cause(exc: BaseException) -> str:
    """``closed`` or ``timeout`` from a backend's error text, else ``local``."""
    text = str(exc).lower()
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "closed" in text or "reset" in text or "broken pipe" in text or "connection" in text:
        return "closed"
    return "local"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


__all__ = [
    "Expected",
    "HeaderRejected",
    "Transport",
    "TransportError",
    "check_header",
    "dtype_name",
    "pack_tensors",
    "packed_size",
    "unpack_tensors",
    "MAX_FRAME_BYTES",
]
