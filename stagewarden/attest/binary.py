"""Strict big-endian binary encoding shared by receipts, signed headers and the receipt log.

Integers are fixed-width unsigned big-endian; a string is a ``u16`` byte length followed by
that many bytes of UTF-8, within a per-field bound and alphabet; byte fields have a fixed
length. A decoder reads exactly the bytes it is given: a short read, a value out of range or a
trailing byte raises :class:`~stagewarden.attest.errors.FormatError` with the caller's code
(the parsers in :mod:`~stagewarden.attest.receipts` and :mod:`~stagewarden.attest.headers` use
:func:`read_string` and fixed :class:`struct.Struct` blocks).
"""

from __future__ import annotations

import re
import struct

from .errors import ErrorCode, FormatError

#: Identifiers (run ids, worker ids): also safe as file names.
ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
#: Descriptive strings (versions, device and dtype names): printable ASCII.
TEXT_PATTERN = re.compile(r"[\x20-\x7e]*")

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def check_id(value: object, what: str, max_len: int = 128) -> str:
    """Return ``value`` if it is a valid identifier (1..max_len of ``[A-Za-z0-9._-]``, no leading dot)."""
    if not isinstance(value, str) or not 0 < len(value) <= max_len or ID_PATTERN.fullmatch(value) is None:
        raise ValueError(
            f"{what} must be 1 to {max_len} characters of A-Z a-z 0-9 . _ - not starting with a dot, not {value!r}"
        )
    return value


def check_text(value: object, what: str, max_len: int) -> str:
    """Return ``value`` if it is printable ASCII of at most ``max_len`` characters."""
    if not isinstance(value, str) or len(value) > max_len or TEXT_PATTERN.fullmatch(value) is None:
        raise ValueError(f"{what} must be at most {max_len} printable ASCII characters, not {value!r}")
    return value


def check_bytes(value: bytes, size: int, what: str) -> bytes:
    """Return ``value`` as bytes if it has exactly ``size`` bytes, else raise ``ValueError``."""
    if not isinstance(value, bytes | bytearray) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")
    return bytes(value)


def check_uint(value: int, bits: int, what: str) -> int:
    """Return ``value`` if it is an int that fits ``bits`` unsigned bits, else raise ``ValueError``."""
    if type(value) is not int or not 0 <= value < (1 << bits):
        raise ValueError(f"{what} must be an integer in [0, 2**{bits})")
    return value


class Writer:
    """Accumulates the encoding of one object."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> None:
        """Append bytes as they are."""
        self._parts.append(bytes(data))

    def u8(self, value: int) -> None:
        """Append an unsigned 8-bit integer."""
        self._parts.append(_U8.pack(value))

    def u16(self, value: int) -> None:
        """Append an unsigned 16-bit integer."""
        self._parts.append(_U16.pack(value))

    def u32(self, value: int) -> None:
        """Append an unsigned 32-bit integer."""
        self._parts.append(_U32.pack(value))

    def u64(self, value: int) -> None:
        """Append an unsigned 64-bit integer."""
        self._parts.append(_U64.pack(value))

    def string(self, value: str) -> None:
        """Append a ``u16`` length-prefixed UTF-8 string."""
        data = value.encode("utf-8")
        self._parts.append(_U16.pack(len(data)) + data)

    def getvalue(self) -> bytes:
        """The bytes written so far."""
        return b"".join(self._parts)


_U16_FROM = _U16.unpack_from
_ID_CACHE: dict[bytes, str] = {}
_TEXT_CACHE: dict[bytes, str] = {}
_CACHE_LIMIT = 4096


def read_string(
    data: bytes, pos: int, max_len: int, ident: bool, field: str, code: ErrorCode, what: str
) -> tuple[str, int]:
    """Read a length-prefixed identifier (``ident``) or printable-ASCII string at ``pos``.

    Returns the value and the offset after it.

    For parsers that run once per log record: validated values
    are remembered (a bounded cache), since a log repeats the same few ids and names.
    """
    if pos + 2 > len(data):
        raise FormatError(code, f"{what}: truncated in field {field} (at byte {pos})")
    (size,) = _U16_FROM(data, pos)
    start, end = pos + 2, pos + 2 + size
    if size > max_len:
        raise FormatError(
            code, f"{what}: field {field} is {size} bytes long, at most {max_len} allowed (at byte {pos})"
        )
    if end > len(data):
        raise FormatError(code, f"{what}: truncated in field {field} (at byte {pos})")
    raw = data[start:end]
    cache = _ID_CACHE if ident else _TEXT_CACHE
    value = cache.get(raw)
    if value is None:
        try:
            value = raw.decode("utf-8")
            if ident:
                check_id(value, field, max_len)
            else:
                check_text(value, field, max_len)
        except UnicodeDecodeError:
            raise FormatError(code, f"{what}: field {field} is not valid UTF-8 (at byte {pos})") from None
        except ValueError as exc:
            raise FormatError(code, f"{what}: {exc} (at byte {pos})") from None
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[raw] = value
    return value, end
