"""``summary.json``: the typed, versioned record of a run, and the only code that reads or writes it.

A record has two parts, written as one flat JSON object (keys sorted, two-space indent):

* the run's identity and shape (``format``, ``version``, ``run_id``, ``stages``, ``replicas``,
  ``micro_batches``, ``steps``, ``workers``), which every run directory holds, synthetic ones
  (:mod:`stagewarden.attest.synthetic`) included;
* what the training runtime recorded (``runtime_version`` and the keys of
  :class:`TrainingRecord`), present exactly when ``runtime_version`` is.

Reading is strict and bounded: the file must be a regular file (no link, FIFO or device) of at
most :data:`~stagewarden.attest.run_limits.MAX_RECORD_BYTES`; a duplicate key, an unknown or
missing field, a value of the wrong type or a count inconsistent with the rest is refused with
:class:`RunDirError` and one line that names the field. The counts that readers iterate over
are tied to data the file must hold (``steps`` equals the number of recorded losses) or capped
(:data:`MAX_RECOMPUTED_STEPS`), so a hostile record cannot make a reader loop or allocate per
step beyond the file's own size.

Records written by earlier releases within version 1 lack the keys added since
(:data:`LATER_KEYS`); they read with those keys' defaults and are written back without them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field, Strict, StrictBool, StrictFloat, StrictStr, model_validator

from .errors import AttestError, ErrorCode
from .files import atomic_write_text
from .run_limits import MAX_RECORD_BYTES as MAX_RECORD_BYTES
from .run_limits import MAX_WORKERS
from .run_record_parts import (
    STRICT_MODEL,
    Count,
    FaultRecord,
    FinalWeights,
    NeighbourCounts,
    Replacement,
    ResponseRecord,
    ResumeRecord,
    SignedDetection,
    SpotCheckCounts,
    ToleranceRecord,
    UnitCounts,
    WorkerId,
    WorkerInfo,
    one_line,
)

SUMMARY_FILE = "summary.json"
#: The ``format`` value of a run record.
SUMMARY_FORMAT = "stagewarden.run-summary"
#: The record version this module writes and reads (the JSON key ``version``).
SUMMARY_VERSION = 1
#: The ``runtime_version`` of the training part this module writes and reads.
RUNTIME_VERSION = 1
#: Most step computations the responses and resumes of one record may declare beyond the first
#: (each response redoes the steps from its plan's ``redo_from_step`` to its own step).
MAX_RECOMPUTED_STEPS = 1_000_000
#: Most stages and replicas a record may declare (the spec's limits,
#: :mod:`stagewarden.spec.limits`, which ``attest`` does not import).
MAX_STAGES = 65_536
#: Most micro-batches per step a record may declare (the spec's limit).
MAX_MICRO_BATCHES = 1_000_000
#: The keys of the training part that earlier releases did not write. A record without them reads
#: them as their defaults, and writing it back leaves them out.
LATER_KEYS = frozenset(
    {
        "stop_reason",
        "spot_check_tolerance",
        "redundant_neighbour",
        "faults",
        "pending_fault",
        "resumes",
        "benched",
        "interrupted_at_step",
    }
)
_IDENTITY_KEYS = frozenset({"format", "version", "run_id", "stages", "replicas", "micro_batches", "steps", "workers"})

Status = Literal["starting", "running", "completed", "stopped", "refused", "failed", "interrupted"]
StageCount = Annotated[int, Strict(), Field(ge=1, le=MAX_STAGES)]
KeyHex = Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{64}$")]


class RunDirError(AttestError):
    """A run directory that cannot be read or whose record is malformed (the CLI exits with 2).

    The message is one line: a character that is not printable (a newline in a key or a file
    name the directory chose) is written as its escape.
    """

    def __init__(self, message: str) -> None:
        if not message.isprintable():
            message = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in message)
        super().__init__(ErrorCode.RUNDIR_MALFORMED, message)


class TrainingRecord(pydantic.BaseModel):
    """What the training runtime records about a run (the ``runtime_version`` keys of ``summary.json``).

    Attributes:
        runtime_version (int): The version of this part.
        status (str): ``starting``, ``running``, ``completed``, ``stopped`` (a response gave up),
            ``refused`` (admission failed), ``failed`` or ``interrupted`` (resumable).
        stop_reason (str | None): Why the run stopped, was refused or failed.
        config (dict): The run configuration, a JSON object read by
            :meth:`stagewarden.runtime.config.RunConfig.from_json` (which owns its format).
        steps_completed (int): Optimizer steps completed (equal to the record's ``steps``).
        losses (list[float]): Each completed step's loss.
        tokens_per_second (float): Training throughput.
        wall_seconds (float): Wall-clock seconds of the run.
        units (UnitCounts): Units of work accepted, by kind.
        receipts (int): Receipts logged.
        headers (int): Signed transfer headers logged.
        detections (list[SignedDetection]): Every failed check, signed by the coordinator.
        false_alarms (int): Detections that blame a worker the attack plan does not make malicious.
        responses (list[ResponseRecord]): Every response carried out.
        final_weights (FinalWeights): The final weights digests.
        standby (list[str]): The standby workers' ids.
        replacements (list[Replacement]): Every worker replaced by a standby.
        checkpoints (list[int]): Steps with a verified checkpoint on disk.
        stage_busy_seconds (list[float]): Each stage's busy time.
        spot_check (SpotCheckCounts | None): The spot-check counters (``spot_check`` runs only).
        spot_check_tolerance (list[ToleranceRecord | None] | None): Each stage's calibrated tolerance (``tolerance``
            comparison only).
        redundant_neighbour (NeighbourCounts | None): The neighbours' check counters (``redundant_neighbour`` runs
            only).
        coordinator_key (str): Hex of the coordinator's Ed25519 public key (it signs detections).
        attestation (bool): Whether workers were admitted by attestation.
        faults (list[FaultRecord]): Every worker fault.
        pending_fault (FaultRecord | None): The fault that interrupted the run, until it is resumed.
        resumes (list[ResumeRecord]): Every resume.
        benched (list[str]): Workers taken out of service after a fault.
        interrupted_at_step (int | None): The step reached when the operator interrupted the run (Ctrl-C).
    """

    model_config = STRICT_MODEL

    runtime_version: Annotated[int, Strict(), Field(ge=RUNTIME_VERSION, le=RUNTIME_VERSION)]
    status: Status
    stop_reason: StrictStr | None = None
    config: dict[str, Any]
    steps_completed: Count
    losses: list[StrictFloat]
    tokens_per_second: StrictFloat
    wall_seconds: StrictFloat
    units: UnitCounts
    receipts: Count
    headers: Count
    detections: list[SignedDetection]
    false_alarms: Count
    responses: list[ResponseRecord]
    final_weights: FinalWeights
    standby: list[WorkerId]
    replacements: list[Replacement]
    checkpoints: list[Count]
    stage_busy_seconds: list[StrictFloat]
    spot_check: SpotCheckCounts | None
    spot_check_tolerance: list[ToleranceRecord | None] | None = None
    redundant_neighbour: NeighbourCounts | None = None
    coordinator_key: KeyHex
    attestation: StrictBool
    faults: list[FaultRecord] = []
    pending_fault: FaultRecord | None = None
    resumes: list[ResumeRecord] = []
    benched: list[WorkerId] = []
    interrupted_at_step: Count | None = None

    @property
    def receipts_logged(self) -> bool:
        """Whether the run signed and logged receipts (its configuration's ``receipts``)."""
        return self.config.get("receipts") is not False

    @property
    def attestation_configured(self) -> bool:
        """Whether the run's configuration admits workers by attestation (its ``attestation``)."""
        return self.config.get("attestation") is not False

    def recomputed_spans(self) -> list[tuple[int, int]]:
        """``(first, last)`` of every run of steps computed again: by a response (from its plan's
        ``redo_from_step`` to its step) and by a resume (from its ``from_step`` to its ``redo_to_step``)."""
        spans = [(r.plan.redo_from_step, r.step) for r in self.responses]
        return spans + [(r.from_step, r.redo_to_step) for r in self.resumes if r.from_step <= r.redo_to_step]


class RunRecord(pydantic.BaseModel):
    """``summary.json``: the run's identity and shape, and what the training runtime recorded.

    Attributes:
        format_version (int): The record version (the JSON key ``version``).
        run_id (str): The run id every receipt must carry.
        stages (int): Pipeline stages.
        replicas (int): Data-parallel replicas of the pipeline.
        micro_batches (int): Micro-batches per step.
        steps (int): Optimizer steps completed (receipts are expected for steps ``0 .. steps-1``).
        workers (list[WorkerInfo]): Every worker and its (stage, replica).
        training (TrainingRecord | None): What the training runtime recorded; ``None`` for a record without it (a
            synthetic run).
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_by_name=True)

    format_version: Annotated[int, Strict(), Field(ge=SUMMARY_VERSION, le=SUMMARY_VERSION)] = Field(
        default=SUMMARY_VERSION, alias="version"
    )
    run_id: WorkerId
    stages: StageCount
    replicas: StageCount
    micro_batches: Annotated[int, Strict(), Field(ge=1, le=MAX_MICRO_BATCHES)]
    steps: Count
    workers: Annotated[list[WorkerInfo], Field(max_length=MAX_WORKERS)]
    training: TrainingRecord | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RunRecord:
        seen: set[str] = set()
        for i, w in enumerate(self.workers):
            for name, value, bound in (("stage", w.stage, self.stages), ("replica", w.replica, self.replicas)):
                if value >= bound:
                    raise ValueError(f"workers[{i}].{name} must be in [0, {bound}), not {value}")
            if w.id in seen:
                raise ValueError(f"worker {w.id!r} is listed twice")
            seen.add(w.id)
        t = self.training
        if t is None:
            return self
        if not self.steps == t.steps_completed == len(t.losses):
            raise ValueError(
                f"steps ({self.steps}), steps_completed ({t.steps_completed}) and the number of losses "
                f"({len(t.losses)}) must be equal"
            )
        for name, length in (
            ("stage_busy_seconds", len(t.stage_busy_seconds)),
            ("final_weights.stages", len(t.final_weights.stages)),
        ):
            if length != self.stages:
                raise ValueError(f"{name} must have one entry per stage ({self.stages}), not {length}")
        for i, r in enumerate(t.responses):
            if r.plan.redo_from_step > r.step:
                raise ValueError(f"responses[{i}] redoes from step {r.plan.redo_from_step}, after its step {r.step}")
        if sum(last - first + 1 for first, last in t.recomputed_spans()) > MAX_RECOMPUTED_STEPS:
            raise ValueError(f"the responses and resumes redo more than {MAX_RECOMPUTED_STEPS} steps in all")
        return self

    def worker(self, worker_id: str) -> WorkerInfo | None:
        """The worker with this id, if the run has one."""
        return next((w for w in self.workers if w.id == worker_id), None)

    def require_training(self) -> TrainingRecord:
        """The training part; raise :class:`RunDirError` for a record without one."""
        if self.training is None:
            raise RunDirError(
                "summary.json holds no training record (no runtime_version): it was not written by a training run"
            )
        return self.training

    # -- JSON ---------------------------------------------------------------------------------

    def to_data(self) -> dict[str, Any]:
        """The JSON object of ``summary.json`` (one flat object; :data:`LATER_KEYS` that were not
        set are left out, as a record of an earlier release had none)."""
        data: dict[str, Any] = {"format": SUMMARY_FORMAT}
        data.update(self.model_dump(mode="python", by_alias=True, exclude={"training"}))
        if self.training is not None:
            unset = LATER_KEYS - self.training.model_fields_set
            data.update(self.training.model_dump(mode="python", exclude=set(unset)))
        return data

    def to_json(self) -> str:
        """The text of ``summary.json``."""
        return json.dumps(self.to_data(), indent=2, sort_keys=True) + "\n"

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_json` to ``path`` atomically (readers see the old file or the new one)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def from_data(cls, data: Any, where: str = SUMMARY_FILE) -> RunRecord:
        """Check and convert the JSON object of ``summary.json``; raise :class:`RunDirError` with one line."""
        if not isinstance(data, dict):
            raise RunDirError(f"{where} must hold a JSON object")
        if data.get("format") != SUMMARY_FORMAT:
            raise RunDirError(f"{where}: format must be {SUMMARY_FORMAT!r}, not {_short(data.get('format'))}")
        version = data.get("version")
        if type(version) is not int or version != SUMMARY_VERSION:
            raise RunDirError(f"{where}: version {_short(version)} is not supported (only {SUMMARY_VERSION})")
        identity = {k: v for k, v in data.items() if k in _IDENTITY_KEYS and k != "format"}
        rest = {k: v for k, v in data.items() if k not in _IDENTITY_KEYS}
        try:
            if "runtime_version" in rest:
                identity["training"] = TrainingRecord.model_validate(rest)
            elif rest:
                raise RunDirError(
                    f"{where}: {sorted(rest)[0]}: unknown field (a record without runtime_version has none)"
                )
            return cls.model_validate(identity)
        except pydantic.ValidationError as exc:
            raise RunDirError(f"{where}: {one_line(exc)}") from None

    @classmethod
    def from_json(cls, source: str | bytes | os.PathLike[str]) -> RunRecord:
        """Read a record from JSON text (``str`` or ``bytes``) or from a file (a path).

        A file must be a regular file (no symbolic link, FIFO or device) of at most
        :data:`~stagewarden.attest.run_limits.MAX_RECORD_BYTES`.

        Raises:
            RunDirError: The file cannot be read, or its content is not a valid record; the
                message is one line naming the file and the field.
        """
        where = SUMMARY_FILE
        if isinstance(source, str | bytes):
            raw = source.encode("utf-8") if isinstance(source, str) else source
        else:
            where = os.fspath(source)
            raw = read_bounded(Path(source), "run record", MAX_RECORD_BYTES)
        if len(raw) > MAX_RECORD_BYTES:
            raise RunDirError(f"{where} is larger than {MAX_RECORD_BYTES} bytes")
        try:
            data = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RunDirError(f"{where} is not valid JSON: {str(exc)[:200]}") from None
        return cls.from_data(data, where)


def open_regular(path: Path, what: str, limit: int) -> tuple[int, int]:
    """An open (read-only) file descriptor of the regular file ``path`` and its size, without
    following a symbolic link or blocking on a FIFO or device; raise :class:`RunDirError` when
    ``path`` is missing, not a regular file, unreadable or larger than ``limit`` bytes. The caller
    closes the descriptor."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise RunDirError(f"{what} {path} does not exist") from None
    except OSError as exc:
        if path.is_symlink():
            raise RunDirError(f"{what} {path} is a symbolic link; only a regular file is read") from None
        raise RunDirError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RunDirError(f"{what} {path} is not a regular file (a FIFO, device or folder is not read)")
        if info.st_size > limit:
            raise RunDirError(f"{what} {path} is larger than {limit} bytes")
    except BaseException:
        os.close(fd)
        raise
    return fd, info.st_size


def read_bounded(path: Path, what: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them, without following a
    symbolic link or blocking on a FIFO or device; raise :class:`RunDirError` otherwise."""
    fd, _ = open_regular(path, what, limit)
    try:
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise RunDirError(f"{what} {path} is larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise RunDirError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"key {_short(key)} appears twice in one object")
            seen.add(key)
    return data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
