"""The value checks every control message's parser is built of, the protocol's size limits, and
:class:`ProtocolError`; also :class:`Message`, the base of every message, and
:class:`TensorMeta`, the announcement of one tensor of a tensor group."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Self, TypeVar

import torch

from stagewarden.attest.tensor_digest import digest_tensor, dtype_name
from stagewarden.runtime.transport import TransportError

#: Longest run or worker id, in UTF-8 bytes (the receipts' limit).
MAX_ID_BYTES = 128
#: Most items of any list or map in a message.
MAX_ITEMS = 1 << 20
#: Longest hex-encoded byte string (evidence, a receipt, a header), in bytes.
MAX_BLOB_BYTES = 1 << 20
#: Longest free text (an error message, a host name is shorter), in characters.
MAX_TEXT_CHARS = 4096
#: Longest host name, in characters.
MAX_HOST_CHARS = 255
#: Longest tensor name, in characters.
MAX_NAME_CHARS = 512
#: Most dimensions of an announced tensor.
MAX_DIMS = 16
#: Largest integer a message carries (a signed 64-bit value).
MAX_INT = (1 << 63) - 1
#: The dtypes a tensor group may announce.
TENSOR_DTYPES = ("float32", "int64", "float16", "bfloat16")
#: The units a step has, by the name messages give them.
UNIT_KINDS = ("forward", "backward", "update")
#: What a worker can say happened to the peer it reports (see :class:`.ErrorReport`).
FAILURE_CAUSES = ("closed", "timeout", "reported", "malformed", "local")
#: Where a redundant-neighbour checker got a forward unit's input.
INPUT_VIAS = ("coordinator", "upstream", "checked_worker")

#: Size of a digest (SHA-256), in bytes.
DIGEST_BYTES = 32

_HEX_TEXT = re.compile(r"(?:[0-9a-f]{2})*")


class ProtocolError(TransportError):
    """A control message does not follow the protocol (one line saying which message and key)."""

    def __init__(self, message: str, *, peer: int | None = None) -> None:
        super().__init__(message, peer=peer, cause="malformed")


# -- value checks ----------------------------------------------------------------------------------


def read_int(value: Any, what: str, minimum: int = 0) -> int:
    """An integer (not a bool) from ``minimum`` to :data:`MAX_INT`."""
    if type(value) is not int or not minimum <= value <= MAX_INT:
        raise ProtocolError(f"{what} must be an integer of at least {minimum}")
    return value


def read_opt_int(value: Any, what: str, minimum: int = 0) -> int | None:
    """``None`` or a :func:`read_int` integer."""
    return None if value is None else read_int(value, what, minimum)


def read_bool(value: Any, what: str) -> bool:
    """``true`` or ``false``."""
    if type(value) is not bool:
        raise ProtocolError(f"{what} must be true or false")
    return value


def read_text(value: Any, what: str, limit: int = MAX_TEXT_CHARS, choices: Sequence[str] = ()) -> str:
    """A string of at most ``limit`` characters, one of ``choices`` when given."""
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"{what} must be a string of at most {limit} characters")
    if choices and value not in choices:
        raise ProtocolError(f"{what} must be one of {', '.join(choices)}, not {value[:64]!r}")
    return value


def read_id(value: Any, what: str) -> str:
    """A run or worker id: non-empty, at most :data:`MAX_ID_BYTES` bytes of UTF-8."""
    if not isinstance(value, str) or not value or len(value.encode("utf-8", "replace")) > MAX_ID_BYTES:
        raise ProtocolError(f"{what} must be a non-empty id of at most {MAX_ID_BYTES} bytes")
    return value


def read_hex(value: Any, what: str, size: int | None = None) -> bytes:
    """Bytes as lower-case hex: exactly ``size`` of them, or at most :data:`MAX_BLOB_BYTES`."""
    limit = 2 * (size if size is not None else MAX_BLOB_BYTES)
    if not isinstance(value, str) or len(value) > limit or not _HEX_TEXT.fullmatch(value):
        raise ProtocolError(f"{what} must be lower-case hex of at most {limit // 2} bytes")
    if size is not None and len(value) != 2 * size:
        raise ProtocolError(f"{what} must be {size} bytes of hex")
    return bytes.fromhex(value)


def read_digest(value: Any, what: str) -> bytes:
    """A digest: :data:`DIGEST_BYTES` bytes of lower-case hex."""
    return read_hex(value, what, DIGEST_BYTES)


def read_float(value: Any, what: str) -> float:
    """A float written with ``float.hex`` (canonical JSON has no floats)."""
    try:
        number = float.fromhex(value) if isinstance(value, str) and len(value) <= 64 else None
    except ValueError:
        number = None
    if number is None or number.hex() != value:
        raise ProtocolError(f"{what} must be a float in float.hex notation")
    return number


_T = TypeVar("_T")


def read_list(value: Any, what: str, item: Callable[[Any, str], _T]) -> tuple[_T, ...]:
    """A list of at most :data:`MAX_ITEMS` items, each read with ``item``."""
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise ProtocolError(f"{what} must be a list of at most {MAX_ITEMS} items")
    return tuple(item(v, f"{what}[{i}]") for i, v in enumerate(value))


def read_stage_map(value: Any, what: str, item: Callable[[Any, str], _T]) -> dict[int, _T]:
    """A map keyed by stage number (a decimal string on the wire)."""
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise ProtocolError(f"{what} must be an object of at most {MAX_ITEMS} entries")
    out: dict[int, _T] = {}
    for key, v in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and str(int(key)) == key):
            raise ProtocolError(f"{what} has a key {str(key)[:64]!r} that is not a stage number")
        out[int(key)] = item(v, f"{what}[{key}]")
    return out


def wire_map(values: Mapping[int, Any]) -> dict[str, Any]:
    """A map keyed by stage number as sent (decimal string keys)."""
    return {str(k): v for k, v in values.items()}


def read_unit(value: Any, what: str) -> tuple[int, str]:
    """A ``[micro_batch, kind]`` pair naming one unit of a step."""
    if not isinstance(value, list) or len(value) != 2:
        raise ProtocolError(f"{what} must be a [micro_batch, kind] pair")
    return read_int(value[0], f"{what} micro-batch"), read_text(value[1], f"{what} kind", choices=UNIT_KINDS)


def read_fields(data: Any, type_: str, required: Sequence[str], optional: Sequence[str] = ()) -> Mapping[str, Any]:
    """``data`` once it is an object of ``type_`` with every ``required`` key and no key beyond
    ``optional``."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"a {type_!r} message must be a JSON object")
    if data.get("type") != type_:
        raise ProtocolError(f"a {type_!r} message has type {str(data.get('type'))[:64]!r}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ProtocolError(f"a {type_!r} message lacks {', '.join(repr(k) for k in missing)}")
    extra = sorted(str(k)[:64] for k in data if k != "type" and k not in required and k not in optional)
    if extra:
        raise ProtocolError(f"a {type_!r} message has unexpected {', '.join(repr(k) for k in extra)}")
    return data


@dataclasses.dataclass(frozen=True)
class Message:
    """A control message: its wire ``type`` is ``TYPE``."""

    TYPE: ClassVar[str]

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent (canonical JSON of it goes on the wire)."""
        return {"type": self.TYPE}

    @classmethod
    def parse(cls, data: Any) -> Self:
        """The message ``data`` holds, checked strictly.

        Raises:
            ProtocolError: ``data`` is not exactly such a message.
        """
        read_fields(data, cls.TYPE, ())
        return cls()


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """One tensor announced in a tensor group: name (``<group>.<key>``), dtype, shape, digest."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    digest: bytes

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> TensorMeta:
        """The announcement of ``tensor`` (its digest computed on the CPU)."""
        return cls(name, dtype_name(tensor.dtype), tuple(tensor.shape), digest_tensor(tensor.detach().cpu()))

    def to_wire(self) -> dict[str, Any]:
        """The announcement as sent."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "digest": self.digest.hex()}

    @classmethod
    def parse(cls, data: Any, what: str = "a tensor entry") -> TensorMeta:
        """A tensor announcement, checked strictly (see :class:`Message`)."""
        if not isinstance(data, Mapping) or set(data) != {"name", "dtype", "shape", "digest"}:
            raise ProtocolError(f"{what} must be an object of name, dtype, shape and digest")
        name = read_text(data["name"], f"{what} name", MAX_NAME_CHARS)
        dtype = read_text(data["dtype"], f"{what} dtype", choices=TENSOR_DTYPES)
        shape = data["shape"]
        if not isinstance(shape, list) or len(shape) > MAX_DIMS:
            raise ProtocolError(f"{what} shape must be a list of at most {MAX_DIMS} sizes")
        dims = tuple(read_int(d, f"{what} shape") for d in shape)
        return cls(name, dtype, dims, read_hex(data["digest"], f"{what} digest", DIGEST_BYTES))


def read_tensors(value: Any, what: str) -> tuple[TensorMeta, ...]:
    """A list of tensor announcements."""
    return read_list(value, what, TensorMeta.parse)


def wire_tensors(tensors: Sequence[TensorMeta]) -> list[dict[str, Any]]:
    """Tensor announcements as sent."""
    return [t.to_wire() for t in tensors]
