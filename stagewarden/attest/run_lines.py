"""Reading a line-based file of a run directory (``events.jsonl``) as a stream, within limits.

The file is opened as :func:`~stagewarden.attest.run_record.open_regular` opens one (no link,
FIFO or device) and read in blocks; a line longer than its limit, more lines than allowed or
more bytes than allowed is refused with :class:`~stagewarden.attest.run_record.RunDirError` as
soon as it is seen, so a line of a gigabyte without a newline costs one block of memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .run_limits import MAX_EVENT_LINE_BYTES, MAX_EVENTS, MAX_EVENTS_BYTES
from .run_record import RunDirError, open_regular

#: Bytes read at once.
BLOCK_BYTES = 1 << 16


def read_lines(path: Path, what: str, *, max_bytes: int, max_line: int, max_lines: int) -> Iterator[tuple[int, bytes]]:
    """The lines of the regular file ``path`` as ``(number, bytes without the newline)``, from 1.

    Raises:
        RunDirError: ``path`` is missing, not a regular file or unreadable; it holds more than
            ``max_bytes`` bytes or ``max_lines`` lines, or a line longer than ``max_line`` bytes.
    """
    fd, _ = open_regular(path, what, max_bytes)
    try:
        number, total, pending = 0, 0, b""
        while True:
            try:
                block = os.read(fd, BLOCK_BYTES)
            except OSError as exc:
                raise RunDirError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
            total += len(block)
            if total > max_bytes:
                raise RunDirError(f"{what} {path} is larger than {max_bytes} bytes")
            if not block:
                break
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            for line in lines:
                number += 1
                if number > max_lines:
                    raise RunDirError(f"{what} {path} has more than {max_lines} lines")
                if len(line) > max_line:
                    raise RunDirError(f"{what} {path} line {number} is longer than {max_line} bytes")
                yield number, line
            if len(pending) > max_line:
                raise RunDirError(f"{what} {path} line {number + 1} is longer than {max_line} bytes")
        if pending:
            if number + 1 > max_lines:
                raise RunDirError(f"{what} {path} has more than {max_lines} lines")
            yield number + 1, pending
    finally:
        os.close(fd)


def read_event_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """:func:`read_lines` of an ``events.jsonl`` within the event-log limits of
    :mod:`stagewarden.attest.run_limits`."""
    return read_lines(
        path, "event log", max_bytes=MAX_EVENTS_BYTES, max_line=MAX_EVENT_LINE_BYTES, max_lines=MAX_EVENTS
    )


def event_objects(data: bytes) -> list[dict[str, Any]]:
    """The lines of ``events.jsonl`` bytes that parse as JSON objects, in order; any other line
    (not JSON, nested deeper than the decoder goes, or not an object) is skipped: whoever reads
    the events as evidence reports such a line on its own terms."""
    out: list[dict[str, Any]] = []
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict):
            out.append(event)
    return out
