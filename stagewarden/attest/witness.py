"""Witness files: what a worker keeps of a run's record, one line per step head it cosigned.

Each line is the canonical JSON of a :class:`WitnessEntry`: the coordinator's signed step head
and the worker's cosignature of it. A worker writes its witness file where it is told (by default
``RUN_DIR/witness/<worker>.jsonl``; a worker on another machine keeps it there), and an auditor
passes it to ``stagewarden audit --witness FILE``: a head in the witness that the log lacks, or
that differs from the log's head of the same sequence, shows that the log was cut or rewritten,
even when whoever holds the log also holds the coordinator's key.

Lines are appended and flushed as heads arrive and synced to disk at the final head: a crash can
lose the last few lines, never corrupt an earlier one. A reader ignores a final line without its
newline (a write the crash cut short) and says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import pydantic

from .errors import ErrorCode, FormatError
from .run_record import RunDirError, read_bounded
from .run_record_parts import STRICT_MODEL
from .step_heads import MAX_HEAD_BYTES, Cosignature, SignedStepHead, canonical

#: Where a worker keeps its witness file by default, inside the run directory.
WITNESS_DIR = "witness"
#: The largest witness file an auditor reads.
MAX_WITNESS_BYTES = 64 * 1024 * 1024


class WitnessEntry(pydantic.BaseModel):
    """One line of a witness file: a signed step head and the worker's cosignature of it."""

    model_config = STRICT_MODEL
    head: SignedStepHead
    cosignature: Cosignature

    def encode(self) -> bytes:
        """The line's canonical bytes, without the newline."""
        return canonical(self.model_dump(mode="json"))


def witness_path(folder: Path, worker: str) -> Path:
    """The witness file of ``worker`` in ``folder``."""
    return folder / f"{worker}.jsonl"


class WitnessWriter:
    """Appends a worker's witness lines to its file (created with mode 0600 if missing)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.path = path
        self._file: IO[bytes] = os.fdopen(fd, "ab")

    def append(self, entry: WitnessEntry, durable: bool) -> None:
        """Append ``entry``; ``durable`` syncs it to disk before returning."""
        self._file.write(entry.encode() + b"\n")
        self._file.flush()
        if durable:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Sync and close the file."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def read_witness(path: str | os.PathLike[str]) -> tuple[list[WitnessEntry], bool]:
    """The entries of a witness file, and whether a torn final line was left out.

    Raises:
        FormatError: ``WITNESS_MALFORMED``: the file is not a regular file, is larger than
            :data:`MAX_WITNESS_BYTES`, or a line is not a canonical witness entry (with its line number).
    """
    where = Path(path)
    try:
        data = read_bounded(where, "witness file", MAX_WITNESS_BYTES)
    except RunDirError as exc:
        raise FormatError(ErrorCode.WITNESS_MALFORMED, exc.message) from None
    end = data.rfind(b"\n") + 1
    entries: list[WitnessEntry] = []
    for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if len(line) > 3 * MAX_HEAD_BYTES:
            raise FormatError(ErrorCode.WITNESS_MALFORMED, f"{where}:{number}: the line is too long")
        try:
            entry = WitnessEntry.model_validate_json(line, strict=False)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(top)"
            raise FormatError(ErrorCode.WITNESS_MALFORMED, f"{where}:{number}: {loc}: {first['msg']}") from None
        if entry.encode() != line:
            raise FormatError(ErrorCode.WITNESS_MALFORMED, f"{where}:{number}: the line is not in canonical form")
        entries.append(entry)
    return entries, end < len(data)
