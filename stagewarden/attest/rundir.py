"""The on-disk layout of a run directory: what the training runtime writes and the auditor reads.

::

    RUN_DIR/
      summary.json                 the run record (versioned JSON, see stagewarden.attest.run_record)
      receipts.log                 the receipt log (stagewarden.attest.receipt_log)
      attestation/
        verifier.pub               hex of the verifier's 32-byte Ed25519 public key, one line
        <worker>.ear               the worker's attestation result tokens, one per line
        <worker>.evidence          the worker's evidence (optional, for the record)

Worker ids are identifiers (``[A-Za-z0-9._-]``, no leading dot), so they are safe file names.
Every file is written atomically (temporary file, fsync, rename); only the receipt log grows by
appending, with the semantics documented in :mod:`stagewarden.attest.receipt_log`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .binary import check_id
from .files import atomic_write_bytes, atomic_write_text
from .log_source import SourceChanged
from .receipt_log import LogScan, ReceiptLog, SyncPolicy, scan_log_file
from .run_limits import MAX_EVENTS_BYTES, MAX_FILE_BYTES, MAX_LOG_RECORDS, max_log_bytes
from .run_record import SUMMARY_FILE, RunDirError, RunRecord, open_regular, read_bounded

__all__ = [
    "ATTESTATION_DIR",
    "LOG_FILE",
    "SUMMARY_FILE",
    "VERIFIER_KEY_FILE",
    "RunDir",
    "RunDirError",
    "RunDirWriter",
    "parse_key_hex",
]

LOG_FILE = "receipts.log"
ATTESTATION_DIR = "attestation"
VERIFIER_KEY_FILE = "verifier.pub"
#: The coordinator's public key, as the run directory ships it (an auditor pins its own copy).
COORDINATOR_KEY_FILE = "coordinator.pub"
#: The coordinator's event log, which every step head signs line by line.
EVENTS_LOG_FILE = "events.jsonl"


def _read(path: Path, what: str) -> bytes:
    return read_bounded(path, what, MAX_FILE_BYTES)


class RunDir:
    """A run directory opened for reading; raises :class:`~.RunDirError` when it cannot be used."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            what = "is a file, not a directory" if self.path.exists() else "does not exist"
            raise RunDirError(f"run directory {self.path} {what}")
        self.summary = RunRecord.from_json(self.path / SUMMARY_FILE)

    @property
    def log_path(self) -> Path:
        """Where the receipt log is."""
        return self.path / LOG_FILE

    def read_log_bytes(self) -> bytes:
        """The receipt log's bytes, at most those of
        :data:`~stagewarden.attest.run_limits.MAX_LOG_RECORDS` records (raises
        :class:`~.RunDirError` when it cannot be read)."""
        return read_bounded(self.log_path, "receipt log", max_log_bytes(MAX_LOG_RECORDS))

    def scan_log(self, max_records: int = MAX_LOG_RECORDS) -> LogScan:
        """The receipt log, checked frame by frame as it is read (see
        :func:`~stagewarden.attest.receipt_log.scan_log`).

        Raises:
            RunDirError: the log is missing, not a regular file, larger than
                :func:`~stagewarden.attest.run_limits.max_log_bytes` of ``max_records``, holds more
                than ``max_records`` records, or cannot be read.
        """
        fd, size = open_regular(self.log_path, "receipt log", sys.maxsize)
        try:
            if size > max_log_bytes(max_records):
                raise RunDirError(
                    f"receipt log {self.log_path} is larger than {max_log_bytes(max_records)} bytes, the most the "
                    f"audit reads for {max_records} records (stagewarden audit --max-records raises it)"
                )
            scan = scan_log_file(fd, size, max_records=max_records)
        except SourceChanged as exc:
            raise RunDirError(f"receipt log {self.log_path} changed while it was read: {exc}") from None
        except OSError as exc:
            raise RunDirError(f"cannot read receipt log {self.log_path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if scan.truncated:
            raise RunDirError(
                f"receipt log {self.log_path} holds more than {max_records} records, the most the audit reads "
                "(stagewarden audit --max-records raises it)"
            )
        return scan

    def attestation_file(self, name: str) -> Path:
        """The path of ``attestation/<name>``; raise :class:`~.RunDirError` when ``attestation`` is
        a symbolic link or not a folder (a link could lead the reader out of the run directory)."""
        folder = self.path / ATTESTATION_DIR
        if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
            raise RunDirError(f"{folder} is not a folder (a symbolic link or file is not followed)")
        return folder / name

    def has_file(self, path: Path) -> bool:
        """Whether ``path`` exists as a directory entry (a dangling link counts: it is refused when read)."""
        return os.path.lexists(path)

    def verifier_key(self) -> bytes:
        """The verifier public key from ``attestation/verifier.pub`` (raises :class:`~.RunDirError`)."""
        path = self.attestation_file(VERIFIER_KEY_FILE)
        text = _read(path, "verifier key file").decode("ascii", errors="replace").strip()
        return parse_key_hex(text, f"{path}")

    def coordinator_key(self) -> bytes | None:
        """The coordinator public key from ``coordinator.pub`` (``None`` when the file is absent;
        raises :class:`~.RunDirError` when it cannot be read)."""
        path = self.path / COORDINATOR_KEY_FILE
        if not self.has_file(path):
            return None
        text = _read(path, "coordinator key file").decode("ascii", errors="replace").strip()
        return parse_key_hex(text, f"{path}")

    def summary_bytes(self) -> bytes:
        """The bytes of ``summary.json`` (which the final step head signs)."""
        return _read(self.path / SUMMARY_FILE, "summary")

    def events_bytes(self) -> bytes | None:
        """The bytes of ``events.jsonl`` (``None`` when absent), at most
        :data:`~stagewarden.attest.run_limits.MAX_EVENTS_BYTES`."""
        path = self.path / EVENTS_LOG_FILE
        if not self.has_file(path):
            return None
        return read_bounded(path, "event log", MAX_EVENTS_BYTES)

    def results(self, worker_id: str) -> list[bytes]:
        """The result tokens in ``attestation/<worker>.ear``, one per non-empty line (none if absent)."""
        path = self.attestation_file(f"{worker_id}.ear")
        if not self.has_file(path):
            return []
        return [line.strip() for line in _read(path, "attestation results").splitlines() if line.strip()]

    def evidence(self, worker_id: str) -> bytes | None:
        """The bytes of ``attestation/<worker>.evidence`` (None if absent)."""
        path = self.attestation_file(f"{worker_id}.evidence")
        if not self.has_file(path):
            return None
        return _read(path, "attestation evidence")


def parse_key_hex(text: str, what: str) -> bytes:
    """A 32-byte Ed25519 public key from 64 hex digits; raise :class:`~.RunDirError` otherwise."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise RunDirError(f"{what} must be 64 hex digits (a 32-byte Ed25519 public key)")
    return key


class RunDirWriter:
    """Writes a run directory in the documented layout (used by the runtime and by tests).

    Args:
        path: the run directory; created if missing, and it must not already hold a summary.
        summary: the run record to write.
    """

    def __init__(self, path: str | os.PathLike[str], summary: RunRecord) -> None:
        self.path = Path(path)
        self.summary = summary
        (self.path / ATTESTATION_DIR).mkdir(parents=True, exist_ok=True)
        if (self.path / SUMMARY_FILE).exists():
            raise FileExistsError(f"{self.path / SUMMARY_FILE} exists; a run directory is written once")
        self.write_summary(summary)

    @classmethod
    def reopen(cls, path: str | os.PathLike[str], summary: RunRecord) -> RunDirWriter:
        """A writer for the existing run directory ``path`` (a resumed run), keeping ``summary``."""
        writer = cls.__new__(cls)
        writer.path = Path(path)
        writer.summary = summary
        (writer.path / ATTESTATION_DIR).mkdir(parents=True, exist_ok=True)
        return writer

    def write_summary(self, summary: RunRecord) -> None:
        """(Re)write ``summary.json`` atomically (the runtime updates ``steps`` as training goes)."""
        self.summary = summary
        summary.write(self.path / SUMMARY_FILE)

    def write_verifier_key(self, key: bytes) -> None:
        """Write ``attestation/verifier.pub``."""
        atomic_write_text(self.path / ATTESTATION_DIR / VERIFIER_KEY_FILE, bytes(key).hex() + "\n")

    def write_coordinator_key(self, key: bytes) -> None:
        """Write ``coordinator.pub``."""
        atomic_write_text(self.path / COORDINATOR_KEY_FILE, bytes(key).hex() + "\n")

    def write_results(self, worker_id: str, tokens: list[bytes]) -> None:
        """Write ``attestation/<worker>.ear`` with these result tokens, one per line."""
        check_id(worker_id, "worker id")
        atomic_write_bytes(self.path / ATTESTATION_DIR / f"{worker_id}.ear", b"".join(t + b"\n" for t in tokens))

    def write_evidence(self, worker_id: str, evidence: bytes) -> None:
        """Write ``attestation/<worker>.evidence``."""
        check_id(worker_id, "worker id")
        atomic_write_bytes(self.path / ATTESTATION_DIR / f"{worker_id}.evidence", evidence)

    def create_log(self, sync: SyncPolicy = "always") -> ReceiptLog:
        """Create ``receipts.log`` and return it open for appending."""
        return ReceiptLog.create(self.path / LOG_FILE, sync=sync)
