"""Which message a received object is, and sending and receiving messages and tensor groups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch

from stagewarden.attest.token import canonical_json
from stagewarden.runtime.protocol.fields import Message, ProtocolError
from stagewarden.runtime.protocol.heads import Cosigned, WitnessHead
from stagewarden.runtime.protocol.replies import (
    Calibrated,
    Commit,
    ErrorReport,
    Evidence,
    Fetched,
    FetchUnavailable,
    Loaded,
    Pushed,
    ReplicaLoaded,
    Restored,
    Snapshot,
    TensorGroupMessage,
    Updated,
)
from stagewarden.runtime.protocol.requests import (
    Admitted,
    Assign,
    Calibrate,
    Discard,
    Fetch,
    Hello,
    Idle,
    Load,
    Push,
    Ranks,
    Reattest,
    Refused,
    Release,
    Restore,
    Shutdown,
    SnapshotRequest,
    Step,
    Update,
)
from stagewarden.runtime.transport import Transport, pack_tensors

#: Every message class, coordinator's first.
MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Shutdown,
    Refused,
    Admitted,
    Release,
    Calibrate,
    SnapshotRequest,
    Load,
    Step,
    Idle,
    Discard,
    Update,
    Push,
    Restore,
    Assign,
    Ranks,
    Fetch,
    Reattest,
    WitnessHead,
    Evidence,
    Commit,
    Updated,
    Pushed,
    Fetched,
    FetchUnavailable,
    Snapshot,
    Loaded,
    ReplicaLoaded,
    Restored,
    Calibrated,
    Cosigned,
    ErrorReport,
)

# where a type names two messages, the key only the second one has
_VARIANTS: dict[str, tuple[type[Message], str, type[Message]]] = {
    "snapshot": (SnapshotRequest, "tensors", Snapshot),
    "fetched": (Fetched, "error", FetchUnavailable),
    "loaded": (Loaded, "replica", ReplicaLoaded),
}
_BY_TYPE: dict[str, type[Message]] = {m.TYPE: m for m in MESSAGES if m.TYPE not in _VARIANTS}

_M = TypeVar("_M", bound=Message)


def parse_message(data: Any) -> Message:
    """The control message ``data`` (a parsed JSON object) holds, checked strictly.

    Raises:
        ProtocolError: ``data`` is not an object with a known ``type``, or is not exactly such a
            message (see the module's description).
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
        raise ProtocolError("a control message must be a JSON object with a string 'type'")
    kind = data["type"]
    variant = _VARIANTS.get(kind)
    if variant is not None:
        first, key, second = variant
        return (second if key in data else first).parse(data)
    cls = _BY_TYPE.get(kind)
    if cls is None:
        raise ProtocolError(f"unknown control message type {kind[:64]!r}")
    return cls.parse(data)


def send_message(transport: Transport, dst: int, message: Message) -> None:
    """Send ``message`` to rank ``dst``."""
    transport.send_json(dst, message.to_wire())


def receive(transport: Transport, src: int, *kinds: type[_M]) -> _M:
    """Receive one control message from rank ``src`` that must be one of ``kinds``.

    Raises:
        TransportError: The receive failed, or ``src`` reported an error.
        ProtocolError: The message is malformed or of another kind (``peer`` is ``src``).
    """
    raw = transport.recv_json(src, tuple(dict.fromkeys(k.TYPE for k in kinds)))
    try:
        message = parse_message(raw)
    except ProtocolError as exc:
        raise ProtocolError(f"rank {src}: {exc}", peer=src) from None
    if not isinstance(message, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ProtocolError(f"rank {src} sent a {type(message).__name__} where {names} was expected", peer=src)
    return message


def send_tensor_group(
    transport: Transport,
    dst: int,
    message: TensorGroupMessage,
    tensors: Sequence[torch.Tensor],
    *,
    blocking: bool = True,
) -> None:
    """Send ``message`` (which announces ``tensors``, in order), then the bytes of all of them
    packed in one buffer (:func:`~stagewarden.runtime.transport.pack_tensors`); nothing follows
    a message that announces no tensor."""
    transport.send_bytes(dst, canonical_json(message.to_wire()), blocking=blocking)
    if tensors:
        transport.send_tensor(dst, pack_tensors(tensors), blocking=blocking)
