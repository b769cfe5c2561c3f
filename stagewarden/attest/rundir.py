"""The on-disk layout of a run directory: what the training runtime writes and the auditor reads.

::

    RUN_DIR/
      summary.json                 run id, topology and workers (versioned JSON, see RunSummary)
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

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .binary import check_id
from .errors import AttestError, ErrorCode
from .files import atomic_write_bytes, atomic_write_text
from .receipt_log import ReceiptLog, SyncPolicy

SUMMARY_FILE = "summary.json"
LOG_FILE = "receipts.log"
ATTESTATION_DIR = "attestation"
VERIFIER_KEY_FILE = "verifier.pub"
#: The ``format`` value of a run summary.
SUMMARY_FORMAT = "stagewarden.run-summary"
#: The summary version this module writes and reads.
SUMMARY_VERSION = 1
#: Largest summary.json and .ear file read, in bytes.
MAX_FILE_BYTES = 16 * 1024 * 1024


class RunDirError(AttestError):
    """A run directory that cannot be read or whose summary is malformed (the CLI exits with 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.RUNDIR_MALFORMED, message)


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """A worker of the run and the pipeline position it was admitted for."""

    id: str
    stage: int
    replica: int


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """``summary.json``: the run's identity and shape.

    Attributes:
        run_id: the run id every receipt must carry.
        stages: pipeline stages.
        replicas: data-parallel replicas of the pipeline.
        micro_batches: micro-batches per step.
        steps: optimiser steps completed (receipts are expected for steps ``0 .. steps-1``).
        workers: every worker and its (stage, replica).
        extra: further keys of the summary, kept as they are (readers ignore keys they do not
            know, so the runtime can add some within version 1).
    """

    run_id: str
    stages: int
    replicas: int
    micro_batches: int
    steps: int
    workers: tuple[WorkerInfo, ...]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def worker(self, worker_id: str) -> WorkerInfo | None:
        """The worker with this id, if the run has one."""
        return next((w for w in self.workers if w.id == worker_id), None)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to ``summary.json``."""
        return {
            **self.extra,
            "format": SUMMARY_FORMAT,
            "version": SUMMARY_VERSION,
            "run_id": self.run_id,
            "stages": self.stages,
            "replicas": self.replicas,
            "micro_batches": self.micro_batches,
            "steps": self.steps,
            "workers": [{"id": w.id, "stage": w.stage, "replica": w.replica} for w in self.workers],
        }

    @classmethod
    def from_json(cls, data: Any) -> RunSummary:
        """Check and convert the JSON object of ``summary.json``; raise :class:`RunDirError`."""
        if not isinstance(data, dict):
            raise RunDirError("summary.json must hold a JSON object")
        if data.get("format") != SUMMARY_FORMAT:
            raise RunDirError(f"summary.json: format must be {SUMMARY_FORMAT!r}, not {data.get('format')!r}")
        if data.get("version") != SUMMARY_VERSION or type(data.get("version")) is not int:
            raise RunDirError(
                f"summary.json: version {data.get('version')!r} is not supported (only {SUMMARY_VERSION})"
            )
        try:
            run_id = check_id(data.get("run_id"), "summary.json: run_id")  # type: ignore[arg-type]
        except ValueError as exc:
            raise RunDirError(str(exc)) from None
        numbers = {}
        for name, low in (("stages", 1), ("replicas", 1), ("micro_batches", 1), ("steps", 0)):
            value = data.get(name)
            if type(value) is not int or not low <= value < 2**32:
                raise RunDirError(f"summary.json: {name} must be an integer of at least {low}, not {value!r}")
            numbers[name] = value
        raw_workers = data.get("workers")
        if not isinstance(raw_workers, list):
            raise RunDirError("summary.json: workers must be a list of {id, stage, replica} objects")
        workers: list[WorkerInfo] = []
        for i, item in enumerate(raw_workers):
            if not isinstance(item, dict) or set(item) != {"id", "stage", "replica"}:
                raise RunDirError(f"summary.json: workers[{i}] must be an object with exactly id, stage and replica")
            try:
                wid = check_id(item["id"], f"summary.json: workers[{i}].id")
            except ValueError as exc:
                raise RunDirError(str(exc)) from None
            for key, bound in (("stage", numbers["stages"]), ("replica", numbers["replicas"])):
                if type(item[key]) is not int or not 0 <= item[key] < bound:
                    raise RunDirError(f"summary.json: workers[{i}].{key} must be an integer in [0, {bound})")
            if any(w.id == wid for w in workers):
                raise RunDirError(f"summary.json: worker {wid!r} is listed twice")
            workers.append(WorkerInfo(wid, item["stage"], item["replica"]))
        known = {"format", "version", "run_id", "stages", "replicas", "micro_batches", "steps", "workers"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(run_id=run_id, workers=tuple(workers), extra=extra, **numbers)


def _read(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise RunDirError(f"{what} {path} is larger than {MAX_FILE_BYTES} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise RunDirError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise RunDirError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


class RunDir:
    """A run directory opened for reading; raises :class:`RunDirError` when it cannot be used."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            what = "is a file, not a directory" if self.path.exists() else "does not exist"
            raise RunDirError(f"run directory {self.path} {what}")
        raw = _read(self.path / SUMMARY_FILE, "run summary")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RunDirError(f"summary.json is not valid JSON: {exc}") from None
        self.summary = RunSummary.from_json(data)

    @property
    def log_path(self) -> Path:
        """Where the receipt log is."""
        return self.path / LOG_FILE

    def read_log_bytes(self) -> bytes:
        """The receipt log's bytes (raises :class:`RunDirError` when it cannot be read)."""
        try:
            return self.log_path.read_bytes()
        except FileNotFoundError:
            raise RunDirError(f"receipt log {self.log_path} does not exist") from None
        except OSError as exc:
            raise RunDirError(f"cannot read receipt log {self.log_path}: {exc.strerror or exc}") from None

    def verifier_key(self) -> bytes:
        """The verifier public key from ``attestation/verifier.pub`` (raises :class:`RunDirError`)."""
        path = self.path / ATTESTATION_DIR / VERIFIER_KEY_FILE
        text = _read(path, "verifier key file").decode("ascii", errors="replace").strip()
        return parse_key_hex(text, f"{path}")

    def results(self, worker_id: str) -> list[bytes]:
        """The result tokens in ``attestation/<worker>.ear``, one per non-empty line (none if absent)."""
        path = self.path / ATTESTATION_DIR / f"{worker_id}.ear"
        if not path.exists():
            return []
        return [line.strip() for line in _read(path, "attestation results").splitlines() if line.strip()]


def parse_key_hex(text: str, what: str) -> bytes:
    """A 32-byte Ed25519 public key from 64 hex digits; raise :class:`RunDirError` otherwise."""
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
        summary: the run summary to write.
    """

    def __init__(self, path: str | os.PathLike[str], summary: RunSummary) -> None:
        self.path = Path(path)
        self.summary = summary
        (self.path / ATTESTATION_DIR).mkdir(parents=True, exist_ok=True)
        if (self.path / SUMMARY_FILE).exists():
            raise FileExistsError(f"{self.path / SUMMARY_FILE} exists; a run directory is written once")
        self.write_summary(summary)

    @classmethod
    def reopen(cls, path: str | os.PathLike[str], summary: RunSummary) -> RunDirWriter:
        """A writer for the existing run directory ``path`` (a resumed run), keeping ``summary``."""
        writer = cls.__new__(cls)
        writer.path = Path(path)
        writer.summary = summary
        (writer.path / ATTESTATION_DIR).mkdir(parents=True, exist_ok=True)
        return writer

    def write_summary(self, summary: RunSummary) -> None:
        """(Re)write ``summary.json`` atomically (the runtime updates ``steps`` as training goes)."""
        self.summary = summary
        atomic_write_text(self.path / SUMMARY_FILE, json.dumps(summary.to_json(), indent=2, sort_keys=True) + "\n")

    def write_verifier_key(self, key: bytes) -> None:
        """Write ``attestation/verifier.pub``."""
        atomic_write_text(self.path / ATTESTATION_DIR / VERIFIER_KEY_FILE, bytes(key).hex() + "\n")

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
