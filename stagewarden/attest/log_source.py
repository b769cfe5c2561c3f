"""The bytes a receipt-log scan reads: a buffer in memory, or a file read in bounded windows.

:func:`stagewarden.attest.receipt_log.scan_log` checks a log frame by frame and only ever needs
the bytes of one frame, the last window of the file (to tell a torn tail from a damaged frame)
and whether everything after an offset is zero. A :class:`FileSource` answers those from the
open file with ``pread`` in windows of :data:`WINDOW_BYTES`, so scanning a log costs memory for
the records it keeps, not for the file: a sparse file of zeros, or a huge one, is scanned in
constant memory.
"""

from __future__ import annotations

import os
from typing import Protocol

#: Bytes a :class:`FileSource` reads at once (and keeps).
WINDOW_BYTES = 1 << 20


class LogSource(Protocol):
    """Random access to the bytes of a log of ``size`` bytes."""

    size: int

    def read(self, offset: int, count: int) -> bytes:
        """The bytes ``[offset, offset + count)``, fewer only where the source ends."""

    def zeros_from(self, offset: int) -> bool:
        """Whether every byte from ``offset`` to the end is zero."""


class BytesSource:
    """A log held in memory."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read(self, offset: int, count: int) -> bytes:
        return bytes(self.data[offset : offset + count])

    def zeros_from(self, offset: int) -> bool:
        view = memoryview(self.data)
        for start in range(offset, self.size, WINDOW_BYTES):
            if view[start : start + WINDOW_BYTES].tobytes().strip(b"\x00"):
                return False
        return True


class SourceChanged(OSError):
    """The file became shorter than it was when the scan began (someone is changing it)."""


class FileSource:
    """A log read from the open file descriptor ``fd`` of a file of ``size`` bytes.

    The file must keep at least ``size`` bytes while it is scanned; a shorter read raises
    :class:`SourceChanged`. Bytes appended after ``size`` are not read.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._start = 0
        self._window = b""

    def _pread(self, offset: int, count: int) -> bytes:
        data = os.pread(self.fd, count, offset)
        if len(data) < count:
            raise SourceChanged(f"the file shrank below {self.size} bytes while it was read")
        return data

    def read(self, offset: int, count: int) -> bytes:
        count = max(0, min(count, self.size - offset))
        start = offset - self._start
        if 0 <= start and start + count <= len(self._window):
            return self._window[start : start + count]
        if count >= WINDOW_BYTES:
            return self._pread(offset, count)
        self._start = offset
        self._window = self._pread(offset, min(WINDOW_BYTES, self.size - offset))
        return self._window[:count]

    def zeros_from(self, offset: int) -> bool:
        for start in range(offset, self.size, WINDOW_BYTES):
            if self._pread(start, min(WINDOW_BYTES, self.size - start)).strip(b"\x00"):
                return False
        return True
