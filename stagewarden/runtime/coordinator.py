"""The coordinator (rank 0): admits the workers by attestation, drives the steps, logs and links
the receipts, and writes the run directory.

It is trusted: it is also the verifier, the relying party and the only writer of the run
directory. Each step it sends ``step``, collects every worker's commitment (receipts and the
signed headers it received), checks that the digests link up between adjacent stages, calls
:meth:`Coordinator.verify_step`, and then sends ``update``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import torch
from nacl.signing import SigningKey
from stagewarden.attest.audit import declared_bypasses, route_neighbour
from stagewarden.attest.clock import Clock, SystemClock
from stagewarden.attest.dcap_verifier import DcapVerifier, EarAppraisal
from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.files import atomic_write_text
from stagewarden.attest.headers import SignedHeader, TransferKind, parse_header, verify_header
from stagewarden.attest.policy import Policy
from stagewarden.attest.receipt_log import ReceiptLog, RecordType, read_log, recover_torn_tail
from stagewarden.attest.receipts import Receipt, UnitKind, chain_genesis, parse_receipt, receipt_digest, verify_receipt
from stagewarden.attest.relying_party import RelyingParty
from stagewarden.attest.rundir import LOG_FILE, RunDir, RunDirWriter, RunSummary, WorkerInfo
from stagewarden.attest.tensor_digest import (
    digest_state_dict,
    digest_tensor,
    gradient_trace_digest,
    gradients_digest,
    last_forward_output_digest,
    update_input_digest,
    update_output_digest,
    weights_digest,
)
from stagewarden.attest.vendor import load_vendor, local_verifier
from stagewarden.attest.verifier import Appraisal, Verifier
from stagewarden.runtime.calibration import CALIBRATION_UNITS, MAX_TOLERANCE, calibrate_stage, tolerance_record
from stagewarden.runtime.checkpoint import (
    CheckpointError,
    delete_checkpoint,
    latest_verified,
    list_steps,
    load_checkpoint,
    retired_checkpoints,
    save_checkpoint,
    step_dir,
)
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.errors import RuntimeSetupError
from stagewarden.runtime.liveness import Fault, Watchdog, WatchdogThread
from stagewarden.runtime.measure import code_digest, stage_measurement
from stagewarden.runtime.model import build_stage
from stagewarden.runtime.responses import (
    Detection,
    ReceiptRef,
    Response,
    ResponseError,
    ResponsePlan,
    RunState,
    can_skip,
    plan_response,
)
from stagewarden.runtime.route import Route
from stagewarden.runtime.spotcheck import (
    SampleSeed,
    SpotCheckError,
    StagePool,
    Tolerance,
    compare_within,
    receipts_digest,
    reexecute_backward,
    reexecute_forward_outputs,
    reexecute_update,
    sample_units,
)
from stagewarden.runtime.transport import (
    MAX_FRAME_BYTES,
    Expected,
    Transport,
    TransportError,
    packed_size,
    unpack_tensors,
)
from stagewarden.runtime.units import deterministic, loss_digest, step_loss
from stagewarden.runtime.worker import standby_id_for, worker_id_for

#: The ``runtime_version`` of the keys this module adds to ``summary.json``.
RUNTIME_SUMMARY_VERSION = 1
EVENTS_FILE = "events.jsonl"
METRICS_FILE = "metrics.csv"
#: Test-only hook: when set to ``1``, the coordinator fetches units after every commitment and
#: checks their digests against the receipts (event ``fetch_check``).
FETCH_CHECK_ENV = "STAGEWARDEN_TEST_FETCH_CHECK"

_FETCH_DTYPES = {"float32": torch.float32, "int64": torch.int64, "float16": torch.float16, "bfloat16": torch.bfloat16}
_MAX_FETCH_ELEMENTS = 1 << 28
#: How often one step is recomputed after detections before the run stops.
MAX_RECOMPUTATIONS = 3
#: Domain of the coordinator's signature over a detection.
DETECTION_DOMAIN = b"stagewarden/runtime/detection/v1\x00"
#: The responses the engine carries out.
CARRIED_OUT = (Response.EJECT, Response.ROLLBACK, Response.RESTART, Response.SKIP_STAGE)
#: The folder of the run directory that holds the verified checkpoints.
CHECKPOINTS_DIR = "checkpoints"
#: ``workers.json``: every process of the run now (for operators).
WORKERS_FILE = "workers.json"
#: The suffix of the folder beside the run directory (``RUN_DIR.keys``, mode 0700) that keeps the
#: coordinator's private signing seeds while the run can be resumed, so that a resumed coordinator
#: signs detections and attestation results under the same keys; removed when the run completes.
#: It is not in the run directory, which is meant to be shared.
KEYS_SUFFIX = ".keys"
#: Exit code of a coordinator that stopped on a worker fault, leaving a resumable run directory.
EXIT_RESUMABLE = 75
#: The exceptions that processing a worker's message can raise on malformed content.
_CONTENT_ERRORS = (AttestError, FormatError, ValueError, KeyError, TypeError, IndexError, OverflowError)


#: The digest (hex) of an optimizer state before its first update (no state yet).
EMPTY_OPTIMIZER = digest_state_dict({}).hex()
#: The digest of no accumulated gradients: what a step's first backward unit starts from.
NO_GRADS = gradients_digest([])
#: How many steps back the coordinator keeps each stage's gradient traces (for the checks of a
#: step's units, which may run while the next step computes, and of the update before a step).
TRACES_KEPT = 3


class AdmissionRefused(RuntimeSetupError):
    """A worker's attestation failed; the run does not start."""


class RunFailed(RuntimeSetupError):
    """The run stopped: a peer died, timed out or broke the protocol."""


class RunInterrupted(RuntimeSetupError):
    """The run stopped on a worker fault; its directory is resumable (``stagewarden train --resume``).

    ``replaced`` says whether a standby is to take the failed worker's stage on resume (then a
    launcher resumes at once); otherwise an operator must resume the run.
    """

    def __init__(self, message: str, replaced: bool) -> None:
        super().__init__(message)
        self.replaced = replaced


class ResumeError(RuntimeSetupError):
    """A run directory cannot be resumed (the message says why)."""


class _Stop(Exception):
    """Training stops cleanly: the workers are released and the run directory says why."""


@dataclasses.dataclass(frozen=True)
class FetchedUnit:
    """What a worker returns for a FETCH: the unit's committed inputs and the weights it ran with.

    Attributes:
        stage: The stage asked.
        step: The step.
        micro_batch: The micro-batch.
        kind: ``forward`` or ``backward``.
        inputs: ``input`` (token ids or the received activation), ``targets`` on the last stage,
            ``grad_output`` for a backward unit of a stage other than the last.
        weights: The stage's state dict at the start of the step.
        outputs: With ``spot_check_compare = "tolerance"``: the unit's committed output
            (``output``; ``grad_input`` or ``grad.<parameter>``; ``weights.<name>`` of an update).
    """

    stage: int
    step: int
    micro_batch: int
    kind: str
    inputs: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    digests: dict[str, bytes] = dataclasses.field(default_factory=dict)
    """Tensor digests already computed, by ``weights.<name>`` (the rest are computed when needed)."""
    outputs: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def weights_digest(self) -> bytes:
        """:func:`~stagewarden.attest.tensor_digest.digest_state_dict` of the weights."""
        return _weights_digest(self.weights, self.digests)


@dataclasses.dataclass
class _Commitment:
    """One stage's verified commitment for a step (:meth:`Coordinator._take_commitment`)."""

    busy: float
    receipts: list[Receipt] = dataclasses.field(default_factory=list)
    headers: list[SignedHeader] = dataclasses.field(default_factory=list)
    loss: float = float("nan")
    microbatch_losses: list[float] = dataclasses.field(default_factory=list)
    checks: list[Any] | None = None
    checks_run: int = 0


class _CommitmentThread(threading.Thread):
    """Takes one stage's commitment (:meth:`Coordinator._take_commitment`) on its own thread.

    A daemon: when another stage's failure ends the run first, this one may still wait on a
    receive that never completes, and must not hold the process open."""

    def __init__(self, coordinator: Coordinator, stage: int, step: int) -> None:
        super().__init__(name=f"commitment-{stage}", daemon=True)
        self._coordinator, self._stage, self._step = coordinator, stage, step
        self._result: _Commitment | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._result = self._coordinator._take_commitment(self._stage, self._step)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for the outcome
            self._error = exc

    def outcome(self) -> _Commitment:
        """Wait for the commitment; raise what taking it raised."""
        self.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


@dataclasses.dataclass
class StepCommit:
    """Everything the workers committed for one step, as the coordinator received it.

    Attributes:
        step: The step.
        receipts: Per stage, its forward and backward receipts in signing order.
        headers: Per receiving stage, the signed headers it received.
        loss: The step's loss, from the last stage.
        microbatch_losses: The micro-batch losses, from the last stage.
        checks: With ``redundant_neighbour``: per checking stage, the failed checks it reports.
        checks_run: With ``redundant_neighbour``: per checking stage, how many units it checked.
    """

    step: int
    receipts: dict[int, list[Receipt]]
    headers: dict[int, list[SignedHeader]]
    loss: float
    microbatch_losses: list[float]
    checks: dict[int, list[Any]] = dataclasses.field(default_factory=dict)
    checks_run: dict[int, int] = dataclasses.field(default_factory=dict)

    def receipt(self, stage: int, micro_batch: int, kind: UnitKind) -> Receipt | None:
        """The receipt of ``stage`` for one unit of this step, if committed."""
        return next((r for r in self.receipts.get(stage, []) if r.micro_batch == micro_batch and r.kind is kind), None)


@dataclasses.dataclass
class AfterUpdate:
    """What is left of a step once its update is applied: checking its sampled units and, when
    one is due, writing the checkpoint after it.

    Attributes:
        step: The step.
        commit: Its commitments.
        sample: The sampled units ``(stage, micro_batch, kind)``.
        pushes: Per stage asked to push: its sampled units ``(micro_batch, kind)``.
        snapshot: Whether the stages push their state for the checkpoint after the step.
        update_receipts: The update receipts of the step, per stage.
        weights: The weights digest (hex) each stage reported after its update.
        optimizers: The optimizer-state digest (hex) each stage's update receipt commits to after
            the update (with receipts on).
        found: Detections made when the update receipts arrived (an update that starts from
            another optimizer state than the stage's last update or checkpoint left).
        state: The pushed state per stage (weights, optimizer state), once received.
        state_digests: Per stage, the tensor digests of its pushed state, by kind (``weights``,
            ``optimizer``) and name, computed as it was received (for the checkpoint).
    """

    step: int
    commit: StepCommit
    sample: list[tuple[int, int, str]]
    pushes: dict[int, list[tuple[int, str]]]
    snapshot: bool
    update_receipts: dict[int, Receipt]
    weights: dict[int, str]
    optimizers: dict[int, str] = dataclasses.field(default_factory=dict)
    found: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    state: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = dataclasses.field(default_factory=dict)
    state_digests: dict[int, dict[str, dict[str, bytes]]] = dataclasses.field(default_factory=dict)


class EventLog:
    """``events.jsonl``: one JSON object per line, appended and flushed as events happen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, event: str, **fields: Any) -> None:
        """Append an event with the current UTC time."""
        record = {"time": dt.datetime.now(dt.UTC).isoformat(), "event": event, **fields}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Flush to disk and close."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


class Coordinator:
    """The coordinator process of a run.

    Args:
        config: The run configuration.
        run_dir: The run directory (must not hold a run yet).
        transport: The point-to-point transport (this process is rank 0).
        vendor_dir: The simulated vendor folder whose root the verifier pins (needed when attestation is on).
        run_id: The run id (default: a random one).
        resume: Continue the interrupted run in ``run_dir`` from its newest verified checkpoint
            instead of starting a new one.
        heartbeats: The workers' heartbeat records, which the watchdog reads: the coordinator's
            end of the run's heartbeat channel (:class:`~stagewarden.runtime.liveness.HeartbeatInbox`).
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        transport: Transport,
        vendor_dir: str | None,
        run_id: str | None = None,
        resume: bool = False,
        *,
        heartbeats: Any,
    ) -> None:
        self.config = config
        self.heartbeats = heartbeats
        self.run_dir = Path(run_dir)
        self.transport = transport
        self.vendor_dir = vendor_dir
        self.run_id = run_id or f"run-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{os.urandom(4).hex()}"
        self.stage_ids = [worker_id_for(s) for s in range(config.stages)]
        self.standby_ids = [standby_id_for(k) for k in range(config.standby)]
        self.stage_ranks = [s + 1 for s in range(config.stages)]
        self.free_standbys = list(range(config.standby))
        self.released: set[int] = set()
        self.replacements: list[dict[str, Any]] = []
        self.checkpoints: list[int] = []
        self.checkpoint_root = Path(run_dir) / CHECKPOINTS_DIR
        self.keys: dict[str, bytes] = {}
        self.prev: dict[str, bytes] = {}
        self.losses: list[float] = []
        self.metrics: list[tuple[int, float, float, float]] = []
        self.detections: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.counts = {"forward": 0, "backward": 0, "update": 0, "receipts": 0, "headers": 0}
        self.final_weights: dict[int, str] = {}
        self._initial_weights: dict[int, bytes] = {}  # each stage's seed-derived weights digest, once built
        self.busy = [0.0] * config.stages
        self.spot = {"rate": config.spot_check_rate, "units_sampled": 0, "units_checked": 0, "recomputations": 0}
        self.neighbour = {
            "input_via": config.input_via,
            "units_checked": 0,
            "mismatches_reported": 0,
            "confirmed": 0,
            "false_accusations": 0,
            "unadjudicated": 0,
        }
        self.tolerances: list[dict[str, Any] | None] = [None] * config.stages
        """With ``spot_check_compare = "tolerance"``: each stage's calibration record (see :meth:`calibrate`)."""
        self._tolerance: dict[int, Tolerance] = {}
        self._seed: SampleSeed | None = None
        self._bypass: int | None = None
        self.stop_reason: str | None = None
        """Why the run stopped, was refused or failed (``summary.json``'s ``stop_reason``)."""
        self._route = Route(self.config.stages)
        self._pending_bypass: int | None = None
        self._pending_attempt = 0
        self._rollbacks: dict[int, int] = {}
        self._deferred: AfterUpdate | None = None
        self._checkpoint_writer: ThreadPoolExecutor | None = None
        self._checkpoint_job: tuple[int, Future[Any]] | None = None
        self._pool: StagePool | None = None
        self._last_updates: dict[int, tuple[Receipt, bytes]] = {}
        """Per stage, its last accepted update receipt and the weights digest it commits to."""
        self._traces: dict[int, dict[int, list[bytes]]] = {}
        """Per step of the last few whose update ran, and per stage that updated: the gradient
        trace its update receipt commits to (the accumulated gradients after each backward unit
        of the step)."""
        self._updated_commits: dict[int, StepCommit] = {}
        """The commitments of the last few steps whose update ran, by step (the referee checks
        the backward units behind an update with them)."""
        self._optimizer: dict[int, str] = {s: EMPTY_OPTIMIZER for s in range(config.stages)}
        """Per stage, the digest (hex) of the optimizer state its next update must start from: the
        state its last update receipt committed to, or that of the checkpoint it loaded."""
        self._weights: dict[int, str] = {}
        """Per stage, the digest (hex) of the weights its next step must compute with: the weights
        its last update receipt committed to, those of the checkpoint it loaded, or (until then)
        its initial weights, derived from the seed or resumed from a checkpoint."""
        self._undo: dict[int, tuple[int, str, str]] = {}
        """Per stage, the step of its last accepted update and the optimizer state and weights
        expected before it (what a restore of that step goes back to)."""
        self._batches: Any = None
        self.status = "starting"
        self.wall_seconds = 0.0
        self.train_seconds = 0.0
        self.session = 0
        self.start_step = 0
        self.faults: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.benched: list[str] = []
        self.pending_fault: dict[str, Any] | None = None
        self.chain_heads: dict[str, bytes] = {}
        self.processes: dict[str, dict[str, Any]] = {}
        self._watchdog: WatchdogThread | None = None
        self._fault_lock = threading.Lock()
        self._main_handles_fault = False
        self._watchdog_exits = False
        self.resume_notes: list[str] = []
        self.keys_dir = self.run_dir.parent / f"{self.run_dir.name}{KEYS_SUFFIX}"
        if resume:
            self._load_resume()
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.signing_key = self._private_key("coordinator", create=True)
            self.writer = RunDirWriter(self.run_dir, self._summary())
            self.events = EventLog(self.run_dir / EVENTS_FILE)
            self.log = self.writer.create_log(sync="explicit") if config.receipts else None

    # -- resume -----------------------------------------------------------------------------------

    def _load_resume(self) -> None:
        """Take up the interrupted run in ``run_dir``: its run id, keys and history from
        ``summary.json`` and ``events.jsonl``, its receipt log (a torn final record, from a crash in
        mid-write, is cut off), and the newest checkpoint that verifies (a half-written or corrupt
        one is skipped and removed). The run goes on from that checkpoint's step; a pending fault
        with a standby named hands the failed worker's stage to the standby from that step.

        Raises:
            ResumeError: The directory holds no resumable run of this configuration.
        """
        c = self.config
        where = self.run_dir
        try:
            summary = RunDir(where).summary
        except AttestError as exc:
            raise ResumeError(f"cannot resume {where}: {exc.message}") from None
        extra = summary.extra
        status = extra.get("status")
        if status == "completed":
            raise ResumeError(f"cannot resume {where}: the run completed all its steps")
        if status == "refused":
            raise ResumeError(f"cannot resume {where}: its workers were refused admission; start a new run")
        try:
            own = RunConfig.from_json(extra.get("config"))
        except ValueError as exc:
            raise ResumeError(f"cannot resume {where}: its summary.json holds no valid configuration ({exc})") from None
        if own.measured_json() != c.measured_json() or own.attack != c.attack:
            raise ResumeError(
                f"cannot resume {where} with another configuration: only steps and the timeouts may change"
            )
        if c.checkpoint_every == 0:
            raise ResumeError(f"cannot resume {where}: the run writes no checkpoints (checkpoint_every 0)")
        self.run_id = summary.run_id
        self.signing_key = self._private_key("coordinator", create=False)
        self.writer = RunDirWriter.reopen(where, summary)
        notes = self.resume_notes
        events = _repair_events(where / EVENTS_FILE, notes)
        self.events = EventLog(where / EVENTS_FILE)
        self.log = None
        last_logged = -1
        logged = {RecordType.RECEIPT: 0, RecordType.HEADER: 0}
        if c.receipts:
            path = where / LOG_FILE
            try:
                removed = recover_torn_tail(path)
                if removed:
                    notes.append(f"cut a torn final record ({removed} bytes) off the receipt log")
                self.log = ReceiptLog.open(path, sync="explicit")
            except (AttestError, OSError) as exc:
                text = exc.message if isinstance(exc, AttestError) else str(exc)
                raise ResumeError(f"cannot resume {where}: the receipt log cannot be used ({text})") from None
            for record in read_log(path).records:
                logged[record.type] = logged.get(record.type, 0) + 1
                if record.type is RecordType.RECEIPT:
                    receipt = parse_receipt(record.payload)
                    self.chain_heads[receipt.worker_id] = receipt_digest(receipt)
                    last_logged = max(last_logged, receipt.step)
        checkpoint = self._resume_checkpoint(events)
        step = checkpoint.info.step
        self.start_step = step
        self.final_weights = {int(k): v for k, v in checkpoint.info.weights_digests.items()}
        done: dict[int, dict[str, Any]] = {}
        for event in events:
            if event.get("event") == "step" and type(event.get("step")) is int and event["step"] < step:
                done[event["step"]] = event
        if sorted(done) != list(range(step)):
            raise ResumeError(
                f"cannot resume {where}: events.jsonl does not record the {step} steps before the checkpoint"
            )
        for t in range(step):
            e = done[t]
            loss = float(e.get("loss", float("nan")))
            self.losses.append(loss)
            self.metrics.append((t, loss, float(e.get("tokens_per_second", 0.0)), float(e.get("seconds", 0.0))))
        self._restore_history(extra)
        if c.receipts:  # what the log holds, the interrupted session's last records included
            self.counts["receipts"], self.counts["headers"] = logged[RecordType.RECEIPT], logged[RecordType.HEADER]
        pending = extra.get("pending_fault") if isinstance(extra.get("pending_fault"), dict) else None
        fault_note = None
        if pending is not None:
            standby, stage, failed = pending.get("standby"), pending.get("stage"), pending.get("worker")
            index = self.standby_ids.index(standby) if standby in self.standby_ids else None
            if (
                type(stage) is int
                and 0 <= stage < c.stages
                and index in self.free_standbys
                and failed == self.stage_ids[stage]
            ):
                self.free_standbys.remove(index)
                self.stage_ids[stage] = str(standby)
                self.stage_ranks[stage] = self.standby_rank(index)
                self.benched.append(str(failed))
                self.replacements.append({"worker": failed, "by": standby, "stage": stage, "from_step": step})
                fault_note = f"standby {standby} takes stage {stage} from failed worker {failed}"
            elif failed is not None:
                fault_note = f"worker {failed} failed before the interruption and is admitted again"
        self.pending_fault = None
        self.session = len(self.resumes) + 1
        self.resumes.append(
            {
                "session": self.session,
                "from_step": step,
                "redo_to_step": max(last_logged, step - 1),
                "after": status,
                "fault": pending,
                "replacement": fault_note,
                "repairs": list(notes),
            }
        )

    def _resume_checkpoint(self, events: list[dict[str, Any]]) -> Any:
        """The newest checkpoint that verifies and whose manifest is the one ``events.jsonl``
        recorded; newer ones (half-written or corrupt) are removed."""
        recorded = {
            e["step"]: e.get("manifest")
            for e in events
            if e.get("event") == "checkpoint" and type(e.get("step")) is int
        }
        limit = None
        while True:
            checkpoint = latest_verified(self.checkpoint_root, before_step=limit)
            if checkpoint is None:
                raise ResumeError(f"cannot resume {self.run_dir}: it holds no checkpoint that verifies")
            t = checkpoint.info.step
            if recorded.get(t) == checkpoint.info.manifest_digest:
                break
            self.resume_notes.append(f"checkpoint of step {t} is not the one events.jsonl recorded; skipped")
            limit = t
        for stale in [u for u in list_steps(self.checkpoint_root, complete=False) if u > t]:
            shutil.rmtree(step_dir(self.checkpoint_root, stale), ignore_errors=True)
            self.resume_notes.append(f"removed the checkpoint of step {stale} (incomplete, corrupt or unrecorded)")
        self.checkpoints = [u for u in list_steps(self.checkpoint_root) if u <= t]
        return checkpoint

    def _restore_history(self, extra: dict[str, Any]) -> None:
        """The counters, detections, responses, replacements and faults recorded in ``summary.json``."""
        c = self.config

        def listed(name: str) -> list[Any]:
            value = extra.get(name)
            return list(value) if isinstance(value, list) else []

        raw_units = extra.get("units")
        units: dict[str, Any] = raw_units if isinstance(raw_units, dict) else {}
        for kind in ("forward", "backward", "update"):
            if type(units.get(kind)) is int:
                self.counts[kind] = units[kind]
        for kind in ("receipts", "headers"):
            if type(extra.get(kind)) is int:
                self.counts[kind] = extra[kind]
        self.detections = [d for d in listed("detections") if isinstance(d, dict)]
        self.responses = [r for r in listed("responses") if isinstance(r, dict)]
        self.replacements = [r for r in listed("replacements") if isinstance(r, dict)]
        self.faults = [f for f in listed("faults") if isinstance(f, dict)]
        self.resumes = [r for r in listed("resumes") if isinstance(r, dict)]
        self.benched = [w for w in listed("benched") if isinstance(w, str)]
        for name, target in (("spot_check", self.spot), ("redundant_neighbour", self.neighbour)):
            value = extra.get(name)
            if isinstance(value, dict):
                target.update({k: v for k, v in value.items() if k in target})
        busy = listed("stage_busy_seconds")
        if len(busy) == c.stages and all(isinstance(b, int | float) for b in busy):
            self.busy = [float(b) for b in busy]
        for key in ("wall_seconds",):
            if isinstance(extra.get(key), int | float):
                self.wall_seconds = float(extra[key])
        for r in self.replacements:
            stage, by = r.get("stage"), r.get("by")
            if type(stage) is int and 0 <= stage < c.stages and by in self.standby_ids:
                self.stage_ids[stage] = by
                self.stage_ranks[stage] = self.standby_rank(self.standby_ids.index(by))
        taken = set(self.stage_ids) | set(self.benched) | {r.get("worker") for r in self.replacements}
        self.free_standbys = [k for k, wid in enumerate(self.standby_ids) if wid not in taken]

    # -- ranks ----------------------------------------------------------------------------------

    def rank_of(self, stage: int) -> int:
        """The rank of the worker now serving ``stage`` (``stage + 1`` until a standby takes it)."""
        return self.stage_ranks[stage]

    def standby_rank(self, index: int) -> int:
        """The rank of standby worker ``index``."""
        return self.config.stages + 1 + index

    # -- the run ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Admit the workers, train every step, release the workers and finish the run directory.

        A resumed coordinator (``resume=True``) admits a fresh set of workers, restores every stage
        to the newest verified checkpoint and trains from its step.

        Raises:
            AdmissionRefused: A worker's attestation failed (the others are sent home).
            RunInterrupted: A worker failed (died, went silent, withheld, or sent a malformed
                message); the run directory is resumable.
            RunFailed: The run cannot go on for another reason.
        """
        started = time.perf_counter()
        # the coordinator's own tensor work (unpacking, digests, checkpoints) runs on the workers'
        # thread count: on a machine the workers share, more threads only wait for cores
        torch.set_num_threads(self.config.train.threads)
        try:
            if self.session == 0:
                self.events.write("run_started", run_id=self.run_id, config=self.config.to_json())
            else:
                self.events.write("run_resumed", **self.resumes[-1])
            self.admit()
            if self.config.verification == "spot_check":
                self._data(self.start_step, 0)  # read the corpus the checks regenerate data from before training
            self.status = "running"
            self._start_watchdog()
            self._write_summary()
            train_start = time.perf_counter()
            stopped = None
            try:
                step = self.start_step
                if self.session > 0:
                    self.restore_checkpoint(step)
                self.calibrate(range(self.config.stages))
                if self.session == 0 and self.checkpointing:
                    self.write_checkpoint(0)
                while step < self.config.steps:
                    step = self.train_step(step)
            except _Stop as stop:
                stopped = str(stop)
            self._finish_checkpoint()
            self.train_seconds += time.perf_counter() - train_start
            self.status = "completed" if stopped is None else "stopped"
            self._stop_watchdog()
            for rank in range(1, self.config.world_size):
                if rank not in self.released:
                    self.transport.send_json(rank, {"type": "release"})
            if stopped is None:
                self.events.write("run_completed", steps=len(self.losses), detections=len(self.detections))
                shutil.rmtree(self.keys_dir, ignore_errors=True)  # nothing left to resume
            else:
                self.stop_reason = stopped
                self.events.write("run_stopped", reason=stopped, steps=len(self.losses))
        except AdmissionRefused as exc:
            self.status, self.stop_reason = "refused", str(exc)
            self.events.write("run_stopped", reason=str(exc))
            raise
        except RunInterrupted:
            raise
        except (TransportError, *_CONTENT_ERRORS) as exc:
            if self.status != "running":
                self.status = "failed"
                message = exc.message if isinstance(exc, AttestError) else str(exc)
                self.stop_reason = message
                self.events.write("run_failed", reason=message)
                raise RunFailed(f"the run failed: {message}") from None
            self._on_error(exc)
        finally:
            self._stop_watchdog()
            if self._checkpoint_writer is not None:  # a checkpoint not recorded by now does not count
                self._checkpoint_writer.shutdown(wait=True)
            (self.run_dir / WORKERS_FILE).unlink(missing_ok=True)
            self.wall_seconds += time.perf_counter() - started
            if self.status == "running":
                self.status = "failed"
            if self.log is not None:
                self.log.close()
            self._write_summary()
            self.events.close()

    # -- faults -----------------------------------------------------------------------------------

    def _members(self) -> dict[int, bytes]:
        """The ranks the watchdog watches: every stage's worker and every free standby."""
        members = {self.rank_of(s): self.keys[w] for s, w in enumerate(self.stage_ids) if w in self.keys}
        for k in self.free_standbys:
            wid = self.standby_ids[k]
            if wid in self.keys:
                members[self.standby_rank(k)] = self.keys[wid]
        return {r: k for r, k in members.items() if r not in self.released}

    def _start_watchdog(self) -> None:
        c = self.config
        silence = min(c.silence_timeout, c.timeout / 2)
        watchdog = Watchdog(self.heartbeats, self.run_id, self.session, self._members, c.heartbeat_timeout, silence)
        self._watchdog = WatchdogThread(watchdog, c.heartbeat_timeout / 4, self._watchdog_fault)
        self._watchdog.start()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()

    def _watchdog_fault(self, fault: Fault) -> bool:
        """The watchdog found a fault. A free standby's is survived (:meth:`_bench_standby`; keep
        watching). Otherwise the main thread may be blocked in a receive that only the fault would
        end: record it and end this process (the run directory is resumable)."""
        with self._fault_lock:
            if self._main_handles_fault:
                return False  # the main thread is waiting for this verdict
            index = fault.rank - self.config.stages - 1
            if index in self.free_standbys:
                self._bench_standby(index, fault)
                return True
            self._watchdog_exits = True
        try:
            message = self._record_fault(fault)
            print(f"stagewarden rank 0: error: {message}", file=sys.stderr, flush=True)
        finally:
            os._exit(EXIT_RESUMABLE)

    def _bench_standby(self, index: int, fault: Fault) -> None:
        """Stop counting on free standby ``index``, which failed; the run goes on without it."""
        wid, rank = self.standby_ids[index], self.standby_rank(index)
        self.free_standbys.remove(index)
        self.released.add(rank)
        self.benched.append(wid)
        record = {"worker": wid, "stage": None, "rank": rank, "cause": fault.cause, "reason": fault.reason}
        record.update(step=len(self.losses), session=self.session, standby=None)
        self.faults.append(record)
        self.events.write("worker_fault", **record)

    def _on_error(self, exc: BaseException) -> None:
        """A receive or a worker's message failed during training: find the faulty worker and stop
        with a resumable run directory (:class:`RunInterrupted`)."""
        with self._fault_lock:
            if self._watchdog_exits:  # the watchdog is recording a fault and ends the process
                threading.Event().wait()
            self._main_handles_fault = True
        fault = self._attribute(exc)
        raise RunInterrupted(
            self._record_fault(fault, str(exc)),
            self.pending_fault is not None and bool(self.pending_fault.get("standby")),
        )

    def _attribute(self, exc: BaseException) -> Fault | None:
        """The faulty worker behind ``exc``: a malformed message is its sender's fault; a closed
        connection to the coordinator is that worker's (its process is gone); otherwise (a peer's
        failure reported by a worker, a timeout) the watchdog's verdict, waited for up to a
        heartbeat timeout. ``None``: nobody can be blamed (a dispute)."""
        workers = {self.rank_of(s) for s in range(self.config.stages)} | {
            self.standby_rank(k) for k in range(self.config.standby)
        }
        if isinstance(exc, TransportError):
            rank, cause = exc.peer, exc.cause
            if rank is None and cause == "malformed":  # raised on the content of the last message
                rank = self.transport.last_src
        else:
            rank, cause = self.transport.last_src, "malformed"
        text = exc.message if isinstance(exc, AttestError) else str(exc)
        if rank in workers and cause == "malformed":
            return Fault(rank, "malformed", f"rank {rank} sent a malformed message: {text}")
        if rank in workers and cause == "closed":
            return Fault(rank, "crashed", f"rank {rank}'s connection closed (its process is gone): {text}")
        assert self._watchdog is not None
        return self._watchdog.wait(self.config.heartbeat_timeout * 1.5 + 1.0)

    def _worker_at(self, rank: int) -> tuple[str, int | None]:
        """The worker id and stage (``None``: a standby) of ``rank``."""
        for s in range(self.config.stages):
            if self.rank_of(s) == rank:
                return self.stage_ids[s], s
        index = rank - self.config.stages - 1
        return self.standby_ids[index], None

    def _record_fault(self, fault: Fault | None, detail: str = "") -> str:
        """Record ``fault`` (or an unattributed failure) in the events, the summary's ``faults``
        and ``pending_fault``, and return the operator's message."""
        step = len(self.losses)
        standby = None
        if fault is None:
            record: dict[str, Any] = {"worker": None, "stage": None, "rank": None, "cause": "unattributed"}
            record["reason"] = f"a failure no worker can be blamed for: {detail}"
        else:
            wid, stage = self._worker_at(fault.rank)
            free = [self.standby_ids[k] for k in self.free_standbys if self.standby_ids[k] != wid]
            if stage is not None and free:
                standby = free[0]
            record = {"worker": wid, "stage": stage, "rank": fault.rank, "cause": fault.cause, "reason": fault.reason}
        record.update(step=step, session=self.session, standby=standby)
        self.faults.append(record)
        self.pending_fault = record
        self.status = "interrupted"
        self.events.write("worker_fault", **record)
        self._write_summary()
        self.events.close()
        if standby is not None:
            return (
                f"worker {record['worker']} (stage {record['stage']}) failed at step {step} ({record['cause']}): "
                f"{record['reason']}; standby {standby} takes its stage when the run resumes"
            )
        who = "" if fault is None else f"worker {record['worker']} failed at step {step} ({record['cause']}): "
        return (
            f"{who}{record['reason']}; no standby can take over: the run stopped and can be resumed with "
            f"'stagewarden train --resume {self.run_dir}'"
        )

    # -- admission ------------------------------------------------------------------------------

    def reference_measurements(self) -> dict[str, bytes]:
        """The measurement each worker must present: computed here from the code, the
        configuration and the initial weights derived from the seed."""
        c = self.config
        code = code_digest()
        out = {}
        for s, wid in enumerate(self.stage_ids):
            out[wid] = stage_measurement(c, s, self._initial_weights_digest(s), code)
        for k in self.free_standbys:
            out[self.standby_ids[k]] = stage_measurement(c, None, None, code)
        return out

    def admit(self) -> None:
        """Send every worker its assignment and a nonce, appraise the evidence, admit or refuse.

        A resumed run sends each worker the head of its identity's receipt chain (the last receipt
        the log holds for it) and tells a worker whose identity was benched to go home.
        """
        c = self.config
        workers = [(self.rank_of(s), wid, s) for s, wid in enumerate(self.stage_ids)] + [
            (self.standby_rank(k), self.standby_ids[k], None) for k in self.free_standbys
        ]
        serving = {rank for rank, _, _ in workers}
        for rank in range(1, c.world_size):
            if rank not in serving:
                self.transport.send_json(rank, {"type": "shutdown"})
                self.released.add(rank)
        verifier: Verifier | DcapVerifier | None = None
        rp = None
        if c.attestation and c.attestation_kind == "dcap":
            clock = SystemClock()
            verifier = _dcap_verifier(c, self._private_key("verifier", create=self.session == 0), clock)
            rp = RelyingParty(verifier.verify_key, clock)
            self.writer.write_verifier_key(bytes(verifier.verify_key))
        elif c.attestation:
            if self.vendor_dir is None:
                raise AdmissionRefused("attestation is on but no vendor folder was given")
            references = self.reference_measurements()
            clock = SystemClock()
            verifier = local_verifier(
                load_vendor(self.vendor_dir),
                list(references.values()),
                Policy(),
                clock,
                signing_key=self._private_key("verifier", create=self.session == 0),
            )
            rp = RelyingParty(verifier.verify_key, clock)
            self.writer.write_verifier_key(bytes(verifier.verify_key))
        nonces: dict[str, bytes] = {}
        for rank, wid, stage in workers:
            nonce = verifier.issue_nonce() if verifier is not None else None
            if nonce is not None:
                nonces[wid] = nonce
            role = "stage" if stage is not None else "standby"
            hello: dict[str, Any] = {
                "type": "hello",
                "run_id": self.run_id,
                "worker_id": wid,
                "role": role,
                "stage": stage,
                "nonce": nonce.hex() if nonce is not None else None,
                "session": self.session,
            }
            if wid in self.chain_heads:
                hello["chain_head"] = self.chain_heads[wid].hex()
            self.transport.send_json(rank, hello)
        refusals: list[str] = []
        for rank, wid, stage in workers:
            msg = self.transport.recv_json(rank, "evidence")
            try:
                key = _hex(msg.get("receipt_key"), 32, "receipt_key")
                if msg.get("worker_id") != wid:
                    raise ValueError(f"rank {rank} answered as {msg.get('worker_id')!r}, not {wid!r}")
                if verifier is not None and rp is not None:
                    if isinstance(msg.get("evidence_error"), str):  # the worker's TEE gave it no quote
                        unavailable = msg.get("evidence_error_code") == ErrorCode.PROVIDER_UNAVAILABLE
                        code = ErrorCode.PROVIDER_UNAVAILABLE if unavailable else ErrorCode.PROVIDER_FAILED
                        raise AttestError(code, msg["evidence_error"][:500])
                    evidence = _hex(msg.get("evidence"), None, "evidence")
                    self.writer.write_evidence(wid, evidence)
                    appraisal: Appraisal | EarAppraisal
                    if isinstance(verifier, DcapVerifier):
                        at_stage = str(stage) if stage is not None else None
                        appraisal = verifier.appraise_evidence(evidence, key, nonces[wid], stage=at_stage)
                    else:
                        appraisal = verifier.appraise_evidence(evidence, key, nonces[wid])
                    rp.admit(wid, appraisal.token, key, expected_nonce=nonces[wid])
                    earlier = RunDir(self.run_dir).results(wid) if self.session > 0 else []
                    self.writer.write_results(wid, [*earlier, appraisal.token])
                    self.events.write(
                        "admitted",
                        worker=wid,
                        stage=stage,
                        rank=rank,
                        status=str(appraisal.result.status),
                        measurement=appraisal.result.measurement,
                        device=appraisal.result.device_id,
                    )
                else:
                    self.events.write("admitted", worker=wid, stage=stage, rank=rank, status="unattested")
                self.keys[wid] = key
                self.prev[wid] = self.chain_heads.get(wid, chain_genesis(self.run_id, wid))
                pid, host = msg.get("pid"), msg.get("host")
                self.processes[wid] = {
                    "worker": wid,
                    "stage": stage,
                    "role": "stage" if stage is not None else "standby",
                    "rank": rank,
                    "pid": pid if type(pid) is int else None,
                    "host": host[:255] if isinstance(host, str) else None,
                }
            except AttestError as exc:
                reason = f"{exc.code}: {exc.message}"
                self.events.write("refused", worker=wid, stage=stage, rank=rank, code=str(exc.code), reason=exc.message)
                refusals.append(
                    f"worker {wid} ({'stage ' + str(stage) if stage is not None else 'standby'}) "
                    f"was refused admission: {reason}"
                )
            except ValueError as exc:
                self.events.write("refused", worker=wid, stage=stage, rank=rank, code="MALFORMED", reason=str(exc))
                refusals.append(f"worker {wid} was refused admission: {exc}")
        if refusals:
            for rank, wid, _ in workers:
                self.transport.send_json(rank, {"type": "refused" if wid not in self.keys else "shutdown"})
            raise AdmissionRefused("; ".join(refusals))
        keys = {str(s): self.keys[wid].hex() for s, wid in enumerate(self.stage_ids)}
        ids = {str(s): wid for s, wid in enumerate(self.stage_ids)}
        ranks = {str(s): self.rank_of(s) for s in range(c.stages)}
        for rank, _, _ in workers:
            self.transport.send_json(rank, {"type": "admitted", "keys": keys, "workers": ids, "ranks": ranks})
        self._write_workers()

    def _write_workers(self) -> None:
        """Write ``workers.json``: the coordinator's and each serving worker's id, stage, role, rank,
        process id and host (for operators; removed when the run ends)."""
        serving = [self.stage_ids[s] for s in range(self.config.stages)]
        serving += [self.standby_ids[k] for k in self.free_standbys]
        rows = []
        for wid in serving:
            row = dict(self.processes.get(wid, {"worker": wid}))
            stage = self.stage_ids.index(wid) if wid in self.stage_ids else None
            row.update(stage=stage, role="stage" if stage is not None else "standby")
            rows.append(row)
        coordinator = {
            "worker": "coordinator",
            "stage": None,
            "role": "coordinator",
            "rank": 0,
            "pid": os.getpid(),
            "host": socket.gethostname()[:255],
        }
        body = {"run_id": self.run_id, "session": self.session, "workers": [coordinator, *rows]}
        atomic_write_text(self.run_dir / WORKERS_FILE, json.dumps(body, indent=2, sort_keys=True) + "\n")

    def _private_key(self, name: str, create: bool) -> SigningKey:
        """The coordinator's signing key ``name``, kept (as its seed) in ``RUN_DIR.keys`` (see
        :data:`KEYS_SUFFIX`) so that a resumed coordinator signs under the same key."""
        folder = self.keys_dir
        path = folder / f"{name}.key"
        if create:
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
            key = SigningKey.generate()
            atomic_write_text(path, bytes(key).hex() + "\n")
            return key
        try:
            return SigningKey(bytes.fromhex(path.read_text(encoding="utf-8").strip()))
        except (OSError, ValueError) as exc:
            raise ResumeError(f"{path}: the coordinator's {name} key cannot be read ({exc})") from None

    # -- tolerance calibration ----------------------------------------------------------------------

    def calibrate(self, stages: Iterable[int]) -> None:
        """With ``spot_check_compare = "tolerance"``, calibrate the tolerance of each of ``stages``
        from its current worker (:mod:`stagewarden.runtime.calibration`); nothing in bitwise mode.

        Each worker computes the calibration units on seed-derived inputs on its own device and
        returns their outputs and the weights it used, which must be the weights the stage holds
        (else its message is malformed). The coordinator re-executes the units and sets the
        stage's tolerance; event ``calibration`` and ``spot_check_tolerance`` in ``summary.json``
        record it. Called at admission, on resume and when a standby takes a stage.

        Raises:
            AdmissionRefused: A worker's tolerance exceeds
                :data:`~stagewarden.runtime.calibration.MAX_TOLERANCE`; every worker is released.
            TransportError: A worker's answer is malformed (blamed on that worker).
        """
        c = self.config
        if c.spot_check_compare != "tolerance":
            return
        chosen = list(stages)
        for s in chosen:
            self.transport.send_json(self.rank_of(s), {"type": "calibrate", "units": CALIBRATION_UNITS})
        groups = ("weights", *(f"unit{i}" for i in range(CALIBRATION_UNITS)))
        refusals: list[str] = []
        for s in chosen:
            wid, rank = self.stage_ids[s], self.rank_of(s)
            msg = self.transport.recv_json(rank, "calibrated")
            received, digests = self._recv_tensors(s, msg, groups)
            weights, units = received["weights"], [received[f"unit{i}"] for i in range(CALIBRATION_UNITS)]
            if _weights_digest(weights, digests) != self._stage_weights_digest(s):
                raise TransportError(
                    f"worker {wid} computed its calibration with other weights than stage {s} holds", peer=rank
                )
            try:
                with deterministic(c.train.threads):
                    tolerance = calibrate_stage(c, s, weights, units)
            except SpotCheckError as exc:
                raise TransportError(f"worker {wid} sent a malformed calibration: {exc}", peer=rank) from None
            accepted = tolerance.value <= MAX_TOLERANCE
            record = {"stage": s, "worker": wid, "rank": rank, "session": self.session, "at_step": len(self.losses)}
            record.update(tolerance_record(tolerance), accepted=accepted)
            self.events.write("calibration", **record)
            self.tolerances[s] = record
            if accepted:
                self._tolerance[s] = tolerance
                continue
            reason = (
                f"its calibration differs from the coordinator's re-execution by a relative error of "
                f"{tolerance.max_observed:.3g}, which needs a tolerance of {tolerance.value:.3g}, above the cap "
                f"of {MAX_TOLERANCE:g}: its numerics are too far from the verifier's for a spot check to tell "
                "them from tampering"
            )
            self.events.write("refused", worker=wid, stage=s, rank=rank, code="TOLERANCE_ABOVE_CAP", reason=reason)
            refusals.append(f"worker {wid} (stage {s}) was refused: {reason}")
        if refusals:
            self._stop_watchdog()
            for rank in range(1, c.world_size):
                if rank not in self.released:
                    self.transport.send_json(rank, {"type": "release"})
                    self.released.add(rank)
            raise AdmissionRefused("; ".join(refusals))

    def _stage_weights_digest(self, s: int) -> bytes:
        """The digest of the weights stage ``s`` holds now: those its last update, restore or load
        reported, else the initial weights derived from the seed."""
        known = self.final_weights.get(s)
        return bytes.fromhex(known) if known else self._initial_weights_digest(s)

    def _initial_weights_digest(self, s: int) -> bytes:
        """The digest of stage ``s``'s initial weights, derived from the seed (the stage is built
        once: admission measures it, and the weights chain starts from it)."""
        if s not in self._initial_weights:
            c = self.config
            self._initial_weights[s] = digest_state_dict(build_stage(c.model, c.stages, s, c.seed).state_dict())
        return self._initial_weights[s]

    # -- steps ------------------------------------------------------------------------------------

    def train_step(self, step: int) -> int:
        """One step: ``step`` to every stage, collect and check the commitments, reveal the
        spot-check sample, ``update`` (the workers push the sampled units and, when a checkpoint is
        due, their new state), check the sampled units and write the checkpoint; on a detection,
        respond (:meth:`respond`) and recompute the step.

        The checks and the checkpoint of a step run while the next step computes
        (:attr:`~stagewarden.runtime.config.RunConfig.overlap_checks`), except for a
        recomputation, a step with a bypassed stage and the last step, which settle before the
        step ends. No checkpoint is written before the checks of its step have passed; a check
        that fails while the next step computes discards that step and answers the detection as
        if it had been found at once.

        Returns the next step to train: ``step + 1``, the step to recompute after a late detection,
        or the checkpoint's step after an eject or a rollback."""
        c = self.config
        started = time.perf_counter()
        attempt, bypass = self._pending_attempt, self._pending_bypass
        self._pending_attempt, self._pending_bypass = 0, None
        after: AfterUpdate | None = None
        while True:
            self._start_attempt(step, attempt, bypass)
            if self._deferred is not None:  # the previous step's checks, while this one computes
                deferred, self._deferred = self._deferred, None
                late = self._settle(deferred, write_checkpoint=True)
                if late:
                    return self._late_detection(step, late)
            commit = self._finish_attempt(step)
            detections = self.check_links(commit)
            if os.environ.get(FETCH_CHECK_ENV) == "1":
                self._fetch_check(commit)
            detections += self.verify_step(step, commit, already=detections)
            if not detections:
                after = self._update_all(step, frozen=bypass, commit=commit)
                if c.overlap_checks and attempt == 0 and bypass is None and step + 1 < c.steps:
                    self._deferred = after
                else:
                    detections += self._settle(after, write_checkpoint=False)
            for d in detections:
                self.events.write("detection", attempt=attempt, **d)
            self.detections += detections
            if not detections:
                break
            if attempt >= MAX_RECOMPUTATIONS:
                d = detections[0]
                raise _Stop(
                    f"no honest path through step {step}: it was tampered with in each of its {attempt + 1} "
                    f"computations (last: stage {d['stage']}, {d['check']}), and the {c.response} response "
                    "cannot route around the tampering stage"
                )
            plan = self.respond(step, attempt, detections[0])
            if plan.checkpoint_step is not None:
                return plan.checkpoint_step
            bypass = plan.bypass_stage
            attempt += 1
        if bypass is not None and c.verification == "redundant_neighbour":
            self._resync_bypassed_checker(step, bypass)
        if self.log is not None:
            self.log.sync()
        seconds = time.perf_counter() - started
        tps = c.tokens_per_step / seconds if seconds > 0 else 0.0
        self.losses.append(commit.loss)
        self.metrics.append((step, commit.loss, tps, seconds))
        self.events.write("step", step=step, loss=commit.loss, tokens_per_second=tps, seconds=seconds)
        if self._checkpoint_due(step) and self._deferred is None:
            if after is not None and after.snapshot:
                self._checkpoint_from(after, background=True)
            else:
                self.write_checkpoint(step + 1)
        self._write_summary()
        self._write_metrics()
        return step + 1

    def _resync_bypassed_checker(self, step: int, bypass: int) -> None:
        """After a computation of ``step`` that bypassed ``bypass``: the stage before it updated
        while its checker (the bypassed worker) computed nothing, so the checker's replica takes
        that stage's new state, which must be the one its update receipt commits to."""
        s, c = bypass - 1, self.config
        wid = self.stage_ids[s]
        self.transport.send_json(self.rank_of(s), {"type": "snapshot", "step": step + 1})
        msg = self.transport.recv_json(self.rank_of(s), "snapshot")
        received, digests = self._recv_tensors(s, msg, ("weights", "optimizer"))
        weights = weights_digest(_tensor_digests(received["weights"], digests, "weights")).hex()
        optimizer = weights_digest(_tensor_digests(received["optimizer"], digests, "optimizer")).hex()
        if msg.get("step") != step + 1 or weights != self.final_weights.get(s):
            raise TransportError(f"worker {wid} sent other weights than its update of step {step} reported")
        if c.receipts and optimizer != self._optimizer[s]:
            raise TransportError(f"worker {wid} sent another optimizer state than its update receipt of step {step}")
        tensors = [(f"replica_weights.{k}", v) for k, v in received["weights"].items()]
        tensors += [(f"replica_optimizer.{k}", v) for k, v in received["optimizer"].items()]
        self._send_load(self.rank_of(bypass), step + 1, tensors, replica_only=True)
        msg = self.transport.recv_json(self.rank_of(bypass), "loaded")
        if msg.get("step") != step + 1 or msg.get("replica") is not True:
            raise TransportError(f"worker {self.stage_ids[bypass]} did not load its replica of stage {s}")

    def _send_load(
        self, rank: int, step: int, tensors: list[tuple[str, torch.Tensor]], replica_only: bool = False
    ) -> None:
        """Send a worker state to load (``load``): the tensors' names, dtypes, shapes and digests, then each tensor."""
        meta = [
            {"name": n, "dtype": _dtype_name(t), "shape": list(t.shape), "digest": digest_tensor(t).hex()}
            for n, t in tensors
        ]
        message: dict[str, Any] = {"type": "load", "step": step, "tensors": meta}
        if replica_only:
            message["replica_only"] = True
        self.transport.send_json(rank, message)
        for _, t in tensors:
            self.transport.send_tensor(rank, t)

    def _checkpoint_due(self, step: int) -> bool:
        """Whether a checkpoint is written after ``step`` (of step ``step + 1``)."""
        c = self.config
        return self.checkpointing and (step + 1) % c.checkpoint_every == 0 and step + 1 < c.steps

    def _active_stages(self, bypass: int | None) -> list[int]:
        return [s for s in range(self.config.stages) if s != bypass]

    def _start_attempt(self, step: int, attempt: int, bypass: int | None) -> None:
        """Commit to the sample's secret and start one computation of ``step`` on every stage."""
        c = self.config
        if c.verification == "spot_check":
            self._seed = SampleSeed.draw(step)
            self.events.write(
                "spot_check_commitment", step=step, attempt=attempt, commitment=self._seed.commitment.hex()
            )
        message: dict[str, Any] = {"type": "step", "step": step, "attempt": attempt}
        if bypass is not None:
            message["bypass"] = bypass
        self._bypass, self._route = bypass, Route(c.stages, bypass)
        for s in range(c.stages):  # the bypassed worker computes nothing: it waits for the next step
            self.transport.send_json(self.rank_of(s), message if s != bypass else {"type": "idle", "step": step})
        for k in list(self.free_standbys):
            try:
                self.transport.send_json(self.standby_rank(k), {"type": "idle", "step": step})
            except TransportError as exc:
                with self._fault_lock:
                    if k in self.free_standbys:
                        self._bench_standby(k, Fault(self.standby_rank(k), "crashed", str(exc)))

    def _finish_attempt(self, step: int) -> StepCommit:
        """Relay the checkers' copies (``input_via: coordinator``) and collect the commitments."""
        c = self.config
        if c.verification == "redundant_neighbour" and c.input_via == "coordinator":
            self.relay_copies(step)
        commit = self.collect(step)
        self.transport.flush()
        return commit

    def _settle(self, after: AfterUpdate, write_checkpoint: bool) -> list[dict[str, Any]]:
        """Take what the workers pushed after ``after.step``'s update, check its sampled units and,
        with ``write_checkpoint`` and no detection, write the checkpoint after it; return the
        detections."""
        self._finish_checkpoint()
        units = self._receive_pushed(after)
        found: list[dict[str, Any]] = list(after.found)
        for s, m, kind in after.sample:
            if kind == "update":
                receipt = after.update_receipts.get(s)
                if receipt is not None:
                    found += self.check_update(s, after.step, receipt, units.get((s, m, kind)))
            else:
                found += self.check_unit(after.commit, s, m, kind, units.get((s, m, kind)))
        if write_checkpoint and not found and after.snapshot:
            self._checkpoint_from(after, background=True)
        return found

    def _receive_pushed(self, after: AfterUpdate) -> dict[tuple[int, int, str], FetchedUnit]:
        """Receive each stage's push for ``after.step`` (:meth:`StageWorker._push
        <stagewarden.runtime.worker.StageWorker._push>`): the sampled units with the weights the
        step ran with, and the state after the update when a checkpoint is due (kept in ``after``)."""
        step, units = after.step, {}
        for s, asked in sorted(after.pushes.items()):
            wid = self.stage_ids[s]
            msg = self.transport.recv_json(self.rank_of(s), "pushed")
            if msg.get("step") != step or msg.get("units") != [[m, k] for m, k in asked]:
                raise TransportError(f"worker {wid} pushed other units than those of step {step} it was asked for")
            groups = ("weights", "snapshot_weights", "snapshot_optimizer")
            groups += tuple(f"{part}{i}" for i in range(len(asked)) for part in ("unit", "output"))
            received, digests = self._recv_tensors(s, msg, groups)
            for i, (m, kind) in enumerate(asked):
                units[(s, m, kind)] = FetchedUnit(
                    s,
                    step,
                    m,
                    kind,
                    received[f"unit{i}"],
                    received["weights"],
                    digests=digests,
                    outputs=received[f"output{i}"],
                )
            if after.snapshot:
                weights, optimizer = received["snapshot_weights"], received["snapshot_optimizer"]
                known = {
                    "weights": _tensor_digests(weights, digests, "snapshot_weights"),
                    "optimizer": _tensor_digests(optimizer, digests, "snapshot_optimizer"),
                }
                if weights_digest(known["weights"]).hex() != after.weights.get(s):
                    raise TransportError(f"worker {wid} pushed other weights than its update of step {step} reported")
                committed = after.optimizers.get(s)
                if committed is not None and weights_digest(known["optimizer"]).hex() != committed:
                    raise TransportError(
                        f"worker {wid} pushed another optimizer state than its update receipt of step {step} commits to"
                    )
                after.state[s] = (weights, optimizer)
                after.state_digests[s] = known
        return units

    def _checkpoint_from(self, after: AfterUpdate, background: bool = False) -> None:
        """Write the checkpoint after ``after.step`` from the state the workers pushed."""
        self._save_checkpoint(
            after.step + 1,
            {s: w for s, (w, _) in after.state.items()},
            {s: o for s, (_, o) in after.state.items()},
            background,
            after.state_digests,
        )

    def _late_detection(self, step: int, detections: list[dict[str, Any]]) -> int:
        """The checks of ``step - 1``, run while ``step`` computed, found tampering: receive and
        drop ``step``'s commitments (nothing of them is logged), tell every worker to discard the
        step and continue its receipt chain from the last logged receipt, take step ``step - 1``
        back and answer the detection as at attempt 0 of that step. Returns the step to train next."""
        c, done = self.config, step - 1
        for s in range(c.stages):
            self.transport.recv_json(self.rank_of(s), "commit")
        self.transport.flush()
        for s in range(c.stages):
            wid = self.stage_ids[s]
            head = self.prev.get(wid) or chain_genesis(self.run_id, wid)
            self.transport.send_json(self.rank_of(s), {"type": "discard", "step": step, "chain_head": head.hex()})
        self.events.write("step_discarded", step=step, reason=f"a spot check of step {done} failed while it ran")
        del self.losses[done:]
        del self.metrics[done:]
        for d in detections:
            self.events.write("detection", attempt=0, found_during_step=step, **d)
        self.detections += detections
        plan = self.respond(done, 0, detections[0])
        if plan.checkpoint_step is not None:
            return plan.checkpoint_step
        self._pending_bypass = plan.bypass_stage
        self._pending_attempt = 1
        return done

    def relay_copies(self, step: int) -> None:
        """The trusted relay of ``input_via: coordinator``: for each checked stage ``s`` receive
        from ``s`` the activations it received (under ``s - 1``'s signed headers) and from
        ``s - 1`` the gradients ``s`` sent back (under ``s``'s), check them, and forward them to
        the checker ``s + 1``: what ``s`` really computed on, which no worker can substitute."""
        c, route = self.config, self._route
        for s in range(1, c.stages - 1):
            if not route.checked(s):  # bypassed, or its checker is
                continue
            upstream = route.before(s)
            for kind, sender, receiver, source in (
                (TransferKind.ACTIVATION, upstream, s, s),
                (TransferKind.GRADIENT, s, upstream, upstream),
            ):
                for m in range(c.microbatches):
                    expected = Expected(
                        run_id=self.run_id,
                        sender=self.stage_ids[sender],
                        sender_key=self.keys[self.stage_ids[sender]],
                        sender_stage=sender,
                        receiver_stage=receiver,
                        step=step,
                        micro_batch=m,
                        kind=kind,
                        dtype="float32",
                        shape=(c.batch_size, c.model.block_size, c.model.n_embd),
                    )
                    tensor, _, raw = self.transport.recv_signed(self.rank_of(source), expected)
                    self.transport.send_relayed(self.rank_of(s + 1), raw, tensor)

    def _update_all(self, step: int, frozen: int | None, commit: StepCommit) -> AfterUpdate:
        """Send ``update`` to every stage but ``frozen``, collect the update receipts, and then ask
        each stage with sampled units to push them (``push``; with, when a checkpoint is due and
        every stage updates, its new state); return what is left of the step (:class:`AfterUpdate`).

        The sample is drawn (``_draw_sample``) only once every update receipt is in: the
        update units and the gradient traces their receipts commit to are sampled with the rest,
        so they too must be committed before the randomness is fixed."""
        c = self.config
        stages = self._active_stages(frozen)
        snapshot = frozen is None and self._checkpoint_due(step)
        for s in stages:
            self.transport.send_json(self.rank_of(s), {"type": "update", "step": step})
        receipts: dict[int, Receipt] = {}
        optimizers: dict[int, str] = {}
        found: list[dict[str, Any]] = []
        for s in stages:
            wid = self.stage_ids[s]
            msg = self.transport.recv_json(self.rank_of(s), "updated")
            if msg.get("step") != step:
                raise TransportError(f"worker {wid} reported the update of step {msg.get('step')}, not {step}")
            weights = _hex(msg.get("weights"), 32, "weights")
            self.final_weights[s] = weights.hex()
            self.busy[s] += _busy(msg)
            if c.receipts:
                receipt = self._accept_receipt(wid, s, step, _hex(msg.get("receipt"), None, "receipt"))
                if receipt.kind is not UnitKind.UPDATE:
                    raise TransportError(f"worker {wid} sent a {receipt.kind} receipt as its update receipt")
                found += self._accept_update(s, step, receipt, weights, msg, commit)
                receipts[s] = receipt
                optimizers[s] = self._optimizer[s]
                self.counts["update"] += 1
        sample = self._draw_sample(commit, receipts)
        self._updated_commits[step] = commit
        for kept in (self._updated_commits, self._traces):
            for old in [t for t in kept if t < step - TRACES_KEPT]:
                del kept[old]
        pushes: dict[int, list[tuple[int, str]]] = {}
        for s in stages:
            asked = [(m, k) for t, m, k in sample if t == s]
            if asked or snapshot:
                pushes[s] = asked
        for s, asked in pushes.items():
            message = {"type": "push", "step": step, "push": [[m, k] for m, k in asked], "snapshot": snapshot}
            self.transport.send_json(self.rank_of(s), message)
        return AfterUpdate(
            step, commit, sample, pushes, snapshot, receipts, dict(self.final_weights), optimizers, found
        )

    def _accept_update(
        self, s: int, step: int, receipt: Receipt, weights: bytes, msg: dict[str, Any], commit: StepCommit
    ) -> list[dict[str, Any]]:
        """Take stage ``s``'s update receipt of ``step``: the digests its message reports (the
        gradient trace, the optimizer state before and after, the weights after) must be the ones
        the receipt commits to, and the optimizer state before must be the one the stage's previous
        update receipt committed to after it (or that of the checkpoint it loaded), as must the
        weights before (see ``_check_weights_chain``); return a detection when they are not: a
        state changed between updates is not the optimizer's work.
        Stage 0's backward receipts commit to its accumulated gradients themselves, so its
        gradient trace must be theirs, in micro-batch order."""
        c, wid = self.config, self.stage_ids[s]
        trace = _hex_list(msg.get("grads_trace"), c.microbatches, "grads_trace")
        before = _hex(msg.get("optimizer_before"), 32, "optimizer_before")
        after = _hex(msg.get("optimizer"), 32, "optimizer")
        if (
            update_input_digest(gradient_trace_digest(trace), before) != receipt.input_digest
            or update_output_digest(weights, after) != receipt.output_digest
        ):
            raise TransportError(f"worker {wid}'s update report does not match the digests of its update receipt")
        expected = self._optimizer[s]
        found = []

        def detection(check: str, message: str) -> None:
            found.append(self.detection(step, 0, "update", s, check, message, receipt_digest(receipt)))

        if before.hex() != expected:
            detection(
                "optimizer_state",
                f"stage {s}'s update of step {step} starts from another optimizer state than its last update "
                "or checkpoint left",
            )
        if receipt.weights_digest.hex() != self._expected_weights(s):
            detection(
                "weights",
                f"stage {s}'s update of step {step} starts from other weights than its last update or checkpoint left",
            )
        if s == 0 and self._backward_outputs(commit, 0) != trace:
            detection(
                "gradient_trace",
                f"stage 0's update of step {step} commits to other accumulated gradients than its backward receipts",
            )
        self._undo[s] = (step, expected, self._expected_weights(s))
        self._optimizer[s], self._weights[s] = after.hex(), weights.hex()
        self._last_updates[s] = (receipt, weights)
        self._traces.setdefault(step, {})[s] = trace
        return found

    def respond(self, step: int, attempt: int, detection: dict[str, Any]) -> ResponsePlan:
        """Answer a detection: plan the response and carry it out. ``restart`` and ``skip_stage``
        restore every stage to the state before ``step`` (the plan's ``bypass_stage`` runs as the
        identity in the recomputation); ``eject`` hands the convict's stage to a standby and
        restores every stage to the plan's checkpoint (:meth:`eject`); ``rollback`` audits the
        convict's receipts and returns every stage to the checkpoint before its first tampered step
        (:meth:`rollback`).

        Raises:
            RunFailed: The response cannot be carried out.
        """
        c = self.config
        self._finish_checkpoint()  # a response plans with the checkpoints written so far
        if c.response == Response.ROLLBACK:
            return self.rollback(step, attempt, detection)
        state = RunState(
            num_stages=c.stages,
            step=step,
            workers=dict(enumerate(self.stage_ids)),
            standbys=tuple(self.standby_ids[k] for k in self.free_standbys),
            checkpoints=tuple(self.checkpoints),
        )
        try:
            plan = plan_response(c.response, Detection.from_json(detection), state)
        except ResponseError as exc:
            raise RunFailed(f"cannot respond to the detection at step {step}: {exc}") from None
        if plan.response not in CARRIED_OUT:
            raise _Stop(f"the {plan.response} response is not carried out by this runtime; training stops")
        record = {"step": step, "attempt": attempt, "plan": plan.to_json(), "detection": detection}
        self.responses.append(record)
        self.events.write("response", **record)
        if plan.response is Response.EJECT:
            self.eject(plan, step)
            return plan
        for s in range(c.stages):
            self.transport.send_json(self.rank_of(s), {"type": "restore", "step": step})
        for s in range(c.stages):
            msg = self.transport.recv_json(self.rank_of(s), "restored")
            if msg.get("step") != step:
                raise TransportError(f"worker {self.stage_ids[s]} restored step {msg.get('step')}, not {step}")
            self.final_weights[s] = _hex(msg.get("weights"), 32, "weights").hex()
            undo = self._undo.pop(s, None)
            if undo is not None and undo[0] == step:  # the stage's update of the step is taken back
                _, self._optimizer[s], self._weights[s] = undo
        self.spot["recomputations"] += 1
        return plan

    # -- checkpoints and eject --------------------------------------------------------------------

    @property
    def checkpointing(self) -> bool:
        """Whether this run writes verified checkpoints (``checkpoint_every`` above 0)."""
        return self.config.checkpoint_every > 0

    def write_checkpoint(self, step: int) -> None:
        """Get every stage's weights and optimizer state (after ``step`` steps) from its worker,
        digest-checked, and write them as the verified checkpoint of ``step``."""
        c = self.config
        for s in range(c.stages):
            self.transport.send_json(self.rank_of(s), {"type": "snapshot", "step": step})
        weights: dict[int, dict[str, torch.Tensor]] = {}
        optimizer: dict[int, dict[str, torch.Tensor]] = {}
        known: dict[int, dict[str, dict[str, bytes]]] = {}
        for s in range(c.stages):
            msg = self.transport.recv_json(self.rank_of(s), "snapshot")
            if msg.get("step") != step:
                raise TransportError(f"worker {self.stage_ids[s]} sent the state of step {msg.get('step')}, not {step}")
            received, digests = self._recv_tensors(s, msg, ("weights", "optimizer"))
            weights[s], optimizer[s] = received["weights"], received["optimizer"]
            known[s] = {kind: _tensor_digests(received[kind], digests, kind) for kind in ("weights", "optimizer")}
            if step > 0 and weights_digest(known[s]["weights"]).hex() != self.final_weights.get(s):
                raise TransportError(f"worker {self.stage_ids[s]} sent other weights than its last update reported")
            if c.receipts and weights_digest(known[s]["optimizer"]).hex() != self._optimizer[s]:
                raise TransportError(
                    f"worker {self.stage_ids[s]} sent another optimizer state than its last update receipt commits to"
                )
        self._save_checkpoint(step, weights, optimizer, digests=known)

    def _save_checkpoint(
        self,
        step: int,
        weights: dict[int, dict[str, torch.Tensor]],
        optimizer: dict[int, dict[str, torch.Tensor]],
        background: bool = False,
        digests: dict[int, dict[str, dict[str, bytes]]] | None = None,
    ) -> None:
        """Write every stage's received state as the verified checkpoint of ``step``. With
        ``background`` the files are written (and fsynced) on a thread while the run goes on, and
        the checkpoint counts only once :meth:`_finish_checkpoint` has recorded it, which every
        user of the checkpoints calls first. ``digests``: the tensor digests computed as the
        state was received (see :func:`~stagewarden.runtime.checkpoint.save_checkpoint`)."""
        self._finish_checkpoint()
        meta = {"run_id": self.run_id, "workers": list(self.stage_ids)}
        if background:
            if self._checkpoint_writer is None:
                self._checkpoint_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
            future = self._checkpoint_writer.submit(
                save_checkpoint, self.checkpoint_root, step, weights, optimizer, meta=meta, digests=digests
            )
            self._checkpoint_job = (step, future)
            return
        try:
            info = save_checkpoint(self.checkpoint_root, step, weights, optimizer, meta=meta, digests=digests)
        except CheckpointError as exc:
            raise RunFailed(f"cannot write the checkpoint of step {step}: {exc}") from None
        self._record_checkpoint(step, info)

    def _finish_checkpoint(self) -> None:
        """Wait for a checkpoint being written in the background, and record it.

        Raises:
            RunFailed: It could not be written.
        """
        job, self._checkpoint_job = self._checkpoint_job, None
        if job is None:
            return
        step, future = job
        try:
            info = future.result()
        except CheckpointError as exc:
            raise RunFailed(f"cannot write the checkpoint of step {step}: {exc}") from None
        self._record_checkpoint(step, info)

    def _record_checkpoint(self, step: int, info: Any) -> None:
        self.checkpoints.append(step)
        self.events.write(
            "checkpoint",
            step=step,
            weights={str(k): v for k, v in info.weights_digests.items()},
            manifest=info.manifest_digest,
        )
        for old in retired_checkpoints(self.checkpoints, self.config.keep_checkpoints):
            delete_checkpoint(self.checkpoint_root, old)
            self.checkpoints.remove(old)
            self.events.write("checkpoint_pruned", step=old)

    def restore_checkpoint(self, step: int) -> None:
        """Load the verified checkpoint of ``step`` and send every stage its weights and optimizer
        state (digest-checked by the worker); check the weights each worker reports."""
        c = self.config
        self._finish_checkpoint()
        try:
            checkpoint = load_checkpoint(self.checkpoint_root, step)
        except CheckpointError as exc:
            raise RunFailed(f"cannot restore the checkpoint of step {step}: {exc}") from None
        for s in range(c.stages):
            tensors = [(f"weights.{k}", v) for k, v in checkpoint.stage_states[s].items()]
            tensors += [(f"optimizer.{k}", v) for k, v in checkpoint.optimizer_states.get(s, {}).items()]
            if c.verification == "redundant_neighbour" and s >= 1:  # the checker's replica of s - 1
                tensors += [(f"replica_weights.{k}", v) for k, v in checkpoint.stage_states[s - 1].items()]
                tensors += [
                    (f"replica_optimizer.{k}", v) for k, v in checkpoint.optimizer_states.get(s - 1, {}).items()
                ]
            self._send_load(self.rank_of(s), step, tensors)
        for s in range(c.stages):
            msg = self.transport.recv_json(self.rank_of(s), "loaded")
            reported = _hex(msg.get("weights"), 32, "weights").hex()
            if msg.get("step") != step or reported != checkpoint.info.weights_digests[s]:
                raise TransportError(f"worker {self.stage_ids[s]} did not load the checkpoint of step {step}")
            self.final_weights[s] = reported
        self._last_updates = {}  # every stage's weights are now the verified checkpoint's
        self._optimizer = {s: digest_state_dict(checkpoint.optimizer_states.get(s, {})).hex() for s in range(c.stages)}
        self._weights = {s: checkpoint.info.weights_digests[s] for s in range(c.stages)}
        self._undo = {}
        del self.losses[step:]
        del self.metrics[step:]
        self.events.write(
            "restored_checkpoint",
            step=step,
            weights={str(k): v for k, v in checkpoint.info.weights_digests.items()},
        )

    def eject(self, plan: ResponsePlan, step: int) -> None:
        """Carry out an eject: release the convict, hand its stage to the standby (which builds it),
        tell every stage the new rank map and the standby's attested key, restore every stage to
        the plan's checkpoint and record the replacement (the standby's receipts chain under its
        own worker id from the checkpoint's step on)."""
        assert plan.standby is not None and plan.checkpoint_step is not None
        rank = self._hand_over(plan.stage, plan.standby)
        self.restore_checkpoint(plan.checkpoint_step)
        self._record_replacement(plan, step, rank)
        self.calibrate([plan.stage])
        self.spot["recomputations"] += 1

    def _hand_over(self, s: int, standby: str) -> int:
        """Release the worker of stage ``s``, tell ``standby`` to take the stage and send every stage
        the new map of stages to ranks, worker ids and attested keys; return the standby's rank."""
        index = self.standby_ids.index(standby)
        self.free_standbys.remove(index)
        convict_rank = self.rank_of(s)
        self.transport.send_json(convict_rank, {"type": "release"})
        self.released.add(convict_rank)
        rank = self.standby_rank(index)
        self.transport.send_json(rank, {"type": "assign", "stage": s})
        self.stage_ranks[s] = rank
        self.stage_ids[s] = standby
        ranks = {
            "type": "ranks",
            "ranks": {str(t): r for t, r in enumerate(self.stage_ranks)},
            "workers": {str(t): w for t, w in enumerate(self.stage_ids)},
            "keys": {str(t): self.keys[w].hex() for t, w in enumerate(self.stage_ids)},
        }
        for t in range(self.config.stages):
            self.transport.send_json(self.rank_of(t), ranks)
        self._write_workers()
        return rank

    def _record_replacement(self, plan: ResponsePlan, step: int, rank: int) -> None:
        assert plan.standby is not None and plan.checkpoint_step is not None
        s = plan.stage
        self.replacements.append(
            {"worker": plan.convict, "by": plan.standby, "stage": s, "from_step": plan.checkpoint_step}
        )
        self.events.write(
            "ejected",
            worker=plan.convict,
            stage=s,
            standby=plan.standby,
            rank=rank,
            detected_step=step,
            from_step=plan.checkpoint_step,
        )

    def rollback(self, step: int, attempt: int, detection: dict[str, Any]) -> ResponsePlan:
        """Carry out a rollback: audit the convict's logged receipts (:meth:`audit_receipts`), plan
        the return to the latest verified checkpoint at or before its first tampered step (the
        detected step, or an earlier one the audit found), drop the checkpoints after it, then
        hand the convict's stage to a free standby as :meth:`eject` does, or else bypass the stage
        for the first recomputed step as ``skip_stage`` does (a middle stage only), and restore
        every stage to the checkpoint.

        Raises:
            RunFailed: The rollback cannot be planned or carried out.
        """
        c = self.config
        count = self._rollbacks.get(step, 0) + 1
        if count > MAX_RECOMPUTATIONS:
            raise _Stop(
                f"step {step} was tampered with after each of its {MAX_RECOMPUTATIONS} rollbacks (last: stage "
                f"{detection['stage']}, {detection['check']}); the rollback response does not remove this attacker"
            )
        self._rollbacks[step] = count
        try:
            found = Detection.from_json(detection)
            receipts, findings = self.audit_receipts(found.worker)
            state = RunState(
                num_stages=c.stages,
                step=step,
                workers=dict(enumerate(self.stage_ids)),
                standbys=tuple(self.standby_ids[k] for k in self.free_standbys),
                checkpoints=tuple(self.checkpoints),
                receipts=tuple(ReceiptRef(r.worker_id, r.stage, r.step, r.micro_batch, str(r.kind)) for r in receipts),
            )
            plan = plan_response(Response.ROLLBACK, found, state)
            first = min((f["step"] for f in findings), default=step)
            replanned_from = None
            if first < step:  # the audit found an earlier tampered step: go back before it
                replanned_from = plan.checkpoint_step
                plan = plan_response(Response.ROLLBACK, found, state, first_tampered_step=first)
        except ResponseError as exc:
            raise RunFailed(f"cannot respond to the detection at step {step}: {exc}") from None
        assert plan.checkpoint_step is not None
        back = plan.checkpoint_step
        standby = state.standbys[0] if state.standbys else None
        if standby is not None:
            plan = dataclasses.replace(
                plan,
                standby=standby,
                ejected=plan.convict,
                reason=f"{plan.reason}; standby {standby} takes stage {plan.stage}",
            )
        elif can_skip(plan.stage, c.stages):
            plan = dataclasses.replace(
                plan,
                bypass_stage=plan.stage,
                frozen_stages=(plan.stage,),
                reason=f"{plan.reason}; no standby: step {back} is recomputed with stage {plan.stage} bypassed",
            )
        audit = {
            "window": [
                {
                    "step": r.step,
                    "micro_batch": r.micro_batch,
                    "unit_kind": str(r.kind),
                    "digest": receipt_digest(r).hex(),
                }
                for r in receipts
                if back <= r.step <= step
            ],
            "receipts_checked": len(receipts),
            "findings": findings,
            "first_tampered_step": min(first, step),
            "replanned_from": replanned_from,
        }
        record = {"step": step, "attempt": attempt, "plan": plan.to_json(), "detection": detection, "audit": audit}
        self.responses.append(record)
        self.events.write("response", **record)
        self._discard_checkpoints_after(back)
        if standby is not None:
            rank = self._hand_over(plan.stage, standby)
            self.restore_checkpoint(back)
            self._record_replacement(plan, step, rank)
            self.calibrate([plan.stage])
        else:
            self.restore_checkpoint(back)
            self._pending_bypass = plan.bypass_stage
        self.spot["recomputations"] += 1
        return plan

    def _discard_checkpoints_after(self, step: int) -> None:
        """Forget and delete the checkpoints after ``step``: they hold weights a rollback discards
        (the manifest goes first, so an interrupted delete never leaves a complete-looking folder)."""
        for stale in [t for t in self.checkpoints if t > step]:
            delete_checkpoint(self.checkpoint_root, stale)
            self.checkpoints.remove(stale)
            self.events.write("checkpoint_discarded", step=stale)

    def audit_receipts(self, worker: str) -> tuple[list[Receipt], list[dict[str, Any]]]:
        """Audit ``worker``'s receipts in the receipt log as the offline auditor would: the signature
        of each under the worker's attested key, its hash chain from its genesis, and the links
        of the receipts that count (the last computation of each unit) with the adjacent stages'.

        Returns:
            The worker's receipts in log order, and one finding (``step``, ``micro_batch``,
            ``unit``, ``check``, ``message``) per problem.
        """
        if self.log is None:
            return [], []
        self.log.sync()
        scan = read_log(self.run_dir / LOG_FILE)
        findings: list[dict[str, Any]] = []

        def finding(r: Receipt, check: str, message: str) -> None:
            findings.append(
                {"step": r.step, "micro_batch": r.micro_batch, "unit": str(r.kind), "check": check, "message": message}
            )

        mine: list[Receipt] = []
        # the k-th receipt of a stage's unit belongs to the k-th computation of its step that the
        # stage took part in (a bypassed stage takes no part), as the offline audit counts them
        bypassed = declared_bypasses(self.responses)
        seen: dict[tuple[int, int, int, UnitKind], int] = {}
        units: dict[tuple[int, int, int, UnitKind, int], Receipt] = {}
        last: dict[int, int] = {}
        prev = chain_genesis(self.run_id, worker)
        for record in scan.records:
            if record.type is not RecordType.RECEIPT:
                continue
            r = parse_receipt(record.payload)
            key = (r.stage, r.step, r.micro_batch, r.kind)
            attempt = seen.get(key, 0)
            while bypassed.get((r.step, attempt)) == r.stage:
                attempt += 1
            seen[key] = attempt + 1
            units[(*key, attempt)] = r
            last[r.step] = max(last.get(r.step, 0), attempt)
            if r.worker_id != worker:
                continue
            mine.append(r)
            try:
                verify_receipt(r, self.keys[worker])
            except AttestError as exc:
                finding(r, "signature", exc.message)
            if r.prev_digest != prev:
                finding(r, "chain", f"worker {worker}'s receipt does not continue its hash chain")
            prev = receipt_digest(r)
        for (stage, t, m, kind, attempt), r in units.items():
            # the receipts that count: the worker's of the last computation of each step
            if r.worker_id != worker or kind is UnitKind.UPDATE or attempt != last[t]:
                continue
            route = bypassed.get((t, attempt))
            downstream = route_neighbour(stage, TransferKind.ACTIVATION, route)
            upstream = route_neighbour(stage, TransferKind.GRADIENT, route)
            before, after = (upstream, downstream) if kind is UnitKind.FORWARD else (downstream, upstream)
            source, sink = units.get((before, t, m, kind, attempt)), units.get((after, t, m, kind, attempt))
            if source is not None and source.output_digest != r.input_digest:
                finding(r, "link", f"its {kind} input differs from the output of stage {before}")
            if sink is not None and sink.input_digest != r.output_digest:
                finding(r, "link", f"its {kind} output differs from the input of stage {after}")
        return mine, findings

    def detection(
        self, step: int, micro_batch: int, unit: str, stage: int, check: str, message: str, evidence: bytes
    ) -> dict[str, Any]:
        """A detection as recorded: the unit, the worker blamed, the check, the evidence digest (the
        offending signed receipt's digest) and the coordinator's Ed25519 signature over all of it
        (``signature``; the public key is ``coordinator_key`` in ``summary.json``)."""
        body = Detection(
            step=step,
            microbatch=micro_batch,
            unit_kind=unit,
            worker=self.stage_ids[stage],
            stage=stage,
            check=check,
            evidence_digest=evidence.hex(),
        ).to_json()
        body["message"] = message
        signed = DETECTION_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
        body["signature"] = self.signing_key.sign(signed).signature.hex()
        return body

    def collect(self, step: int) -> StepCommit:
        """Receive every stage's commitment for ``step``; verify and log its receipts and headers.

        The outcomes are taken in stage order: a stage that died mid-step is met as a closed
        connection (taking the last stage first left the verdict to the chain of waits, which
        blamed the next stage), and of two faulty commitments the lower stage's is the one
        reported. With gloo the work is not: the pipeline's stages finish from the last to the
        first, so while this thread waits for stage 0, one thread per other stage receives and
        verifies that stage's commitment as it arrives (``_take_commitment``), and after
        stage 0's only its own verification is left. (NCCL point-to-point calls from several
        threads could interleave differently on each rank: with it the stages are taken one
        after the other.)"""
        c, stages = self.config, self._route.active_stages
        taken: dict[int, _Commitment] = {}
        if c.backend == "gloo" and c.stages > 1:
            threads = {s: _CommitmentThread(self, s, step) for s in stages[1:]}
            for thread in threads.values():
                thread.start()
            taken[0] = self._take_commitment(0, step)
            for s, thread in threads.items():
                taken[s] = thread.outcome()
        else:
            for s in stages:
                taken[s] = self._take_commitment(s, step)
        receipts = {s: t.receipts for s, t in taken.items()}
        headers = {s: t.headers for s, t in taken.items()}
        last = taken[c.stages - 1]
        checks = {s: t.checks for s, t in taken.items() if t.checks is not None}
        checks_run = {s: t.checks_run for s, t in taken.items() if t.checks is not None}
        # a step's commitments enter the log together, so a crash mid-collection leaves none of them
        for s in stages:
            self.busy[s] += taken[s].busy
            for r in receipts[s]:
                self.counts[str(r.kind)] += 1
                if self.log is not None:
                    self.log.append_receipt(r)
                    self.counts["receipts"] += 1
            for header in headers[s]:
                if self.log is not None:
                    self.log.append_header(header)
                    self.counts["headers"] += 1
        return StepCommit(step, receipts, headers, last.loss, last.microbatch_losses, checks, checks_run)

    def _take_commitment(self, s: int, step: int) -> _Commitment:
        """Receive stage ``s``'s commitment for ``step`` and verify its receipts, headers, losses
        and check report. Touches nothing another stage's commitment touches (its worker's hash
        chain head is its own), so the stages can be taken on separate threads.

        Raises:
            TransportError: The receive failed or the commitment fails a check; its ``peer`` is
                stage ``s``'s rank (a receive on another thread may have come in since).
        """
        c = self.config
        wid, rank = self.stage_ids[s], self.rank_of(s)
        try:
            msg = self.transport.recv_json(rank, "commit")
            if msg.get("step") != step:
                raise TransportError(f"worker {wid} committed step {msg.get('step')}, not {step}")
            raw_receipts, raw_headers = msg.get("receipts"), msg.get("headers")
            if not isinstance(raw_receipts, list) or not isinstance(raw_headers, list):
                raise TransportError(f"worker {wid}'s commitment has no receipt or header list")
            out = _Commitment(_busy(msg))
            out.receipts = [
                self._accept_receipt(wid, s, step, _hex(r, None, "receipt"), log=False) for r in raw_receipts
            ]
            out.headers = [self._accept_header(wid, s, step, _hex(raw, None, "header")) for raw in raw_headers]
            if s == c.stages - 1:
                out.microbatch_losses = self._reported_losses(wid, msg, out.receipts)
                out.loss = step_loss([torch.tensor(v, dtype=torch.float32) for v in out.microbatch_losses])
            if c.verification == "redundant_neighbour" and s >= 1:
                reported, run = msg.get("checks"), msg.get("checks_run")
                if not isinstance(reported, list) or not isinstance(run, int) or isinstance(run, bool) or run < 0:
                    raise TransportError(f"worker {wid}'s commitment has no check report")
                out.checks, out.checks_run = reported, run
            return out
        except TransportError as exc:
            if exc.peer is None:
                exc.peer = rank
            raise
        except _CONTENT_ERRORS as exc:
            message = exc.message if isinstance(exc, AttestError) else str(exc)
            raise TransportError(
                f"worker {wid}'s commitment for step {step} is malformed: {message}", peer=rank
            ) from None

    def _accept_header(self, wid: str, stage: int, step: int, raw: bytes) -> SignedHeader:
        """Take a signed header that stage ``stage``'s worker ``wid`` received in ``step`` and
        commits to. It must be genuine: signed by the attested key of the worker that runs its
        sender stage, for a transfer of this run and step to ``stage``. The link checks take a
        header as evidence against its sender (an equivocation), and the log keeps it, so one
        that its receiver forged or took from another transfer must not get that far.

        Raises:
            TransportError: The header is malformed, not genuine or of another transfer (the
                worker that committed it is at fault: it checked the header when it arrived).
        """
        c = self.config
        try:
            header = parse_header(raw)
            sender = self.stage_ids[header.sender_stage] if header.sender_stage < c.stages else None
            if sender is None or header.sender != sender or sender not in self.keys:
                raise TransportError(
                    f"worker {wid} committed a signed header from {header.sender!r}, which is not the worker of "
                    f"stage {header.sender_stage}",
                    peer=self.rank_of(stage),
                )
            verify_header(header, self.keys[sender])
        except AttestError as exc:
            raise TransportError(
                f"worker {wid} committed a signed header that is not genuine: {exc.message}", peer=self.rank_of(stage)
            ) from None
        if (header.run_id, header.receiver_stage, header.step) != (self.run_id, stage, step):
            raise TransportError(
                f"worker {wid} committed a signed header of another transfer (run {header.run_id!r}, to stage "
                f"{header.receiver_stage}, step {header.step})",
                peer=self.rank_of(stage),
            )
        if header.sender_stage != self._route.neighbour(stage, header.kind, incoming=True):
            # a transfer that skips a stage is this computation's only when it bypasses that stage
            raise TransportError(
                f"worker {wid} committed a signed {header.kind} header from stage {header.sender_stage}, which "
                f"does not send to stage {stage} in this computation of step {step}",
                peer=self.rank_of(stage),
            )
        return header

    def _reported_losses(self, wid: str, msg: dict[str, Any], receipts: list[Receipt]) -> list[float]:
        """The micro-batch losses the last stage's commitment reports, in micro-batch order. With
        receipts each must be the one its forward receipt commits to with the logits
        (:func:`~stagewarden.attest.tensor_digest.last_forward_output_digest` of the reported
        logits digest and :func:`~stagewarden.runtime.units.loss_digest`): the run reports only
        signed losses, and a spot check of the unit re-executes the loss with the logits.

        Raises:
            TransportError: A loss is missing or malformed, or is not the one its receipt commits to.
        """
        c = self.config
        raw = msg.get("microbatch_losses")
        if not isinstance(raw, list) or len(raw) != c.microbatches:
            raise TransportError(
                f"worker {wid}'s commitment does not report the loss of each of the {c.microbatches} micro-batches"
            )
        losses = [_float(v) for v in raw]
        if c.receipts:
            logits = _hex_list(msg.get("logits"), c.microbatches, "logits")
            for r in receipts:
                m = r.micro_batch
                if r.kind is UnitKind.FORWARD and 0 <= m < c.microbatches:
                    if last_forward_output_digest(logits[m], loss_digest(losses[m])) != r.output_digest:
                        raise TransportError(
                            f"worker {wid} reported another loss of micro-batch {m} than its forward receipt commits to"
                        )
        return losses

    def _accept_receipt(self, wid: str, stage: int, step: int, raw: bytes, log: bool = True) -> Receipt:
        receipt = parse_receipt(raw)
        verify_receipt(receipt, self.keys[wid])
        if (receipt.run_id, receipt.worker_id, receipt.stage, receipt.step) != (self.run_id, wid, stage, step):
            raise TransportError(f"worker {wid} sent a receipt for another unit: {receipt.unit}")
        if receipt.prev_digest != self.prev[wid]:
            raise TransportError(f"worker {wid}'s receipt does not continue its hash chain")
        self.prev[wid] = receipt_digest(receipt)
        if log and self.log is not None:
            self.log.append_receipt(receipt)
            self.counts["receipts"] += 1
        return receipt

    def check_links(self, commit: StepCommit) -> list[dict[str, Any]]:
        """Check that adjacent stages agree on the tensors they exchanged and that the received
        signed headers match the senders' receipts, and that every stage computed with the weights
        it was left with (``_check_weights_chain``); return one detection per disagreement.

        The sender is blamed: its signed header (checked by ``_accept_header`` when the
        commitment arrived) proves what it sent, so a sender whose receipt
        commits to another tensor than the one it signed and sent (an equivocation) is caught
        here, and a receiver whose receipt commits to another input than the signed header it
        holds is blamed for that."""
        c = self.config
        if not c.receipts:
            return []
        found: list[dict[str, Any]] = []
        stages = sorted(commit.receipts)
        for s, r in zip(stages, stages[1:], strict=False):
            for m in range(c.microbatches):
                for kind, sender, receiver, transfer in (
                    (UnitKind.FORWARD, s, r, TransferKind.ACTIVATION),
                    (UnitKind.BACKWARD, r, s, TransferKind.GRADIENT),
                ):
                    out = commit.receipt(sender, m, kind)
                    inp = commit.receipt(receiver, m, kind)
                    header = next(
                        (h for h in commit.headers.get(receiver, []) if h.micro_batch == m and h.kind is transfer), None
                    )
                    unit = str(kind)
                    if out is None or inp is None:
                        culprit = sender if out is None else receiver
                        found.append(
                            self.detection(
                                commit.step, m, unit, culprit, "missing_receipt", "a committed receipt is missing", b""
                            )
                        )
                        continue
                    if header is None or header.tensor.digest != out.output_digest:
                        found.append(
                            self.detection(
                                commit.step,
                                m,
                                unit,
                                sender,
                                "header",
                                f"stage {sender} signed and sent a {transfer} to stage {receiver} that differs "
                                f"from the one its receipt commits to (equivocation)",
                                receipt_digest(out),
                            )
                        )
                    elif out.output_digest != inp.input_digest:
                        found.append(
                            self.detection(
                                commit.step,
                                m,
                                unit,
                                receiver,
                                "link",
                                f"stage {receiver}'s receipt commits to another {kind} input than the signed "
                                f"{transfer} stage {sender} sent",
                                receipt_digest(inp),
                            )
                        )
        return found + self._check_weights_chain(commit)

    def _expected_weights(self, s: int) -> str:
        """The weights digest (hex) stage ``s``'s next step must compute with (see ``_weights``)."""
        expected = self._weights.get(s)
        if expected is None:  # no update or load yet: the initial weights
            expected = self._weights[s] = self._stage_weights_digest(s).hex()
        return expected

    def _check_weights_chain(self, commit: StepCommit) -> list[dict[str, Any]]:
        """Every receipt of a step must commit to the weights the stage's last update receipt
        committed to (or its checkpoint's, or its initial weights): one detection (check
        ``weights``) per stage whose receipts name others (a bypassed stage's weights are unused).
        A worker that changed its weights between steps computes honestly with them, so
        re-executing its units cannot see it."""
        found: list[dict[str, Any]] = []
        for s in sorted(commit.receipts):
            if s == self._bypass:  # its blocks act as the identity: its weights are not used
                continue
            expected = self._expected_weights(s)
            other = next((r for r in commit.receipts[s] if r.weights_digest.hex() != expected), None)
            if other is not None:
                message = (
                    f"stage {s} computed step {commit.step} with other weights than its last update or checkpoint left"
                )
                found.append(
                    self.detection(
                        commit.step, other.micro_batch, str(other.kind), s, "weights", message, receipt_digest(other)
                    )
                )
        return found

    def verify_step(
        self, step: int, commit: StepCommit, already: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """The verification hook, called after every commitment and before the update.

        ``already`` are the detections the link checks made for this commitment. With
        ``verification = "none"`` it checks nothing. With ``redundant_neighbour`` it adjudicates
        the failed checks the checking stages report (:meth:`adjudicate`). With ``spot_check`` the
        sample is drawn after the update receipts (``_draw_sample``). A bypassed stage must
        pass every tensor on unchanged. Returns the detections.
        """
        if self.config.verification == "redundant_neighbour":
            return self.adjudicate(commit, already or [])
        return []

    def _draw_sample(self, commit: StepCommit, updates: dict[int, Receipt]) -> list[tuple[int, int, str]]:
        """With ``spot_check``: reveal the secret committed before the step, derive the sampling
        randomness from it and every receipt of the step (forward and backward in ``commit``,
        the update receipts in ``updates``), sample the units (forward, backward and update of
        every running stage and micro-batch, each with probability ``spot_check_rate``) and
        return the sample: the workers push the sampled units, and :meth:`check_unit` and
        :meth:`check_update` check them. Otherwise nothing is sampled."""
        c, step, bypass = self.config, commit.step, self._bypass
        if c.verification != "spot_check" or self._seed is None:
            return []
        seed = self._seed
        digests = [receipt_digest(r) for s in sorted(commit.receipts) for r in commit.receipts[s]]
        digests += [receipt_digest(updates[s]) for s in sorted(updates)]
        committed = receipts_digest(digests)
        units = [
            (s, m, kind)
            for s in sorted(commit.receipts)
            if s != bypass
            for m in range(c.microbatches)
            for kind in ("forward", "backward", "update")
            if kind != "update" or m == 0
        ]
        sampled = sample_units(units, c.spot_check_rate, seed.randomness(committed))
        self.events.write(
            "spot_check_reveal",
            step=step,
            secret=seed.secret.hex(),
            receipts_digest=committed.hex(),
            sampled=[{"stage": s, "micro_batch": m, "kind": k} for s, m, k in sampled],
        )
        self.spot["units_sampled"] += len(sampled)
        return sampled

    def adjudicate(self, commit: StepCommit, already: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Turn the failed redundant-neighbour checks of a step into detections.

        A report is about the unit of stage ``s`` that its checker ``s + 1`` recomputed. With
        receipts on, the coordinator is the referee: it re-executes the accused unit from its
        committed inputs and weights (:meth:`check_unit`); a unit whose re-execution gives its
        receipt's output was computed honestly (and the link checks tie the receipt to what was
        sent) with the weights it committed to; if those weights are the output of the stage's
        previous update, the coordinator re-executes that update too, and
        only when both agree is the accuser blamed (``false_accusation``). Without receipts nothing can be
        re-executed and the checker is believed, as in the paper's defence. A report on a unit the
        link checks already blamed is not adjudicated again.
        """
        c, step, found = self.config, commit.step, []
        blamed = {(d["stage"], d["microbatch"], d["unit_kind"]) for d in already}
        for checker, reports in sorted(commit.checks.items()):
            self.neighbour["units_checked"] += commit.checks_run.get(checker, 0)
            for report in reports:
                try:
                    s, m, kind = int(report["checked"]), int(report["microbatch"]), str(report["unit_kind"])
                    diff = float.fromhex(str(report["max_abs_diff"]))
                except (KeyError, TypeError, ValueError):
                    raise TransportError(f"stage {checker} sent a malformed check report") from None
                if (
                    s != checker - 1
                    or not self._route.checked(s)
                    or int(report.get("step", -1)) != step
                    or not 0 <= m < c.microbatches
                    or kind not in ("forward", "backward")
                ):
                    raise TransportError(f"stage {checker} reported a check of a unit it does not check: {report}")
                self.neighbour["mismatches_reported"] += 1
                if (s, m, kind) in blamed or (self._route.before(s), m, "forward") in blamed:
                    # already convicted, or explained by the upstream stage's conviction (the
                    # replica's backward of a micro-batch follows from its forward)
                    continue
                claim = (
                    f"stage {checker} recomputed stage {s}'s {kind} unit and got another result (max |diff| {diff:g})"
                )
                receipt = commit.receipt(s, m, UnitKind(kind))
                if not c.receipts or receipt is None:
                    self.neighbour["unadjudicated"] += 1
                    evidence = bytes.fromhex(str(report.get("evidence_digest", "")))
                    found.append(self.detection(step, m, kind, s, "redundant_neighbour", claim, evidence))
                    continue
                equivocation = self._relayed_equivocation(report, s, m, step, receipt)
                if equivocation is not None:
                    found.append(equivocation)
                    blamed.add((self._route.before(s), m, "forward"))
                    continue
                confirmed = self.check_unit(commit, s, m, kind)
                settled = True
                if not confirmed:  # the unit follows from its weights: were those weights honest?
                    confirmed, settled = self._check_weights(s, step, receipt)
                if not settled:
                    self.neighbour["unadjudicated"] += 1
                    found.append(
                        self.detection(step, m, kind, s, "redundant_neighbour", claim, receipt_digest(receipt))
                    )
                elif confirmed:
                    self.neighbour["confirmed"] += 1
                    found.append(
                        self.detection(
                            step,
                            m,
                            kind,
                            s,
                            "redundant_neighbour",
                            f"{claim}; the coordinator's re-execution confirms it: {confirmed[0]['message']}",
                            receipt_digest(receipt),
                        )
                    )
                else:
                    self.neighbour["false_accusations"] += 1
                    found.append(
                        self.detection(
                            step,
                            m,
                            kind,
                            checker,
                            "false_accusation",
                            f"{claim}, but the coordinator's re-execution of the unit from its committed inputs "
                            f"and weights gives the output stage {s}'s receipt commits to: the accusation is false",
                            receipt_digest(receipt),
                        )
                    )
                blamed.add((s, m, kind))
        return found

    def _relayed_equivocation(
        self, report: dict[str, Any], s: int, m: int, step: int, receipt: Receipt
    ) -> dict[str, Any] | None:
        """A detection of stage ``s - 1`` when the input copy its checker recomputed from (the
        ``input_header`` of the report, signed by ``s - 1``) commits to another activation than
        the one ``s``'s receipt says it received: ``s - 1`` signed two activations for one transfer."""
        raw = report.get("input_header")
        if not isinstance(raw, str) or s < 1:
            return None
        before = self._route.before(s)
        upstream = self.stage_ids[before]
        try:
            header = parse_header(bytes.fromhex(raw))
            verify_header(header, self.keys[upstream])
        except (ValueError, AttestError):
            return None  # not evidence against s - 1: the report is judged on its own
        if (header.sender, header.receiver_stage, header.step, header.micro_batch, header.kind) != (
            upstream,
            s,
            step,
            m,
            TransferKind.ACTIVATION,
        ) or header.tensor.digest == receipt.input_digest:
            return None
        message = (
            f"stage {before} signed two activations for micro-batch {m}: the one stage {s} computed on and "
            f"another relayed to stage {s + 1}, stage {s}'s checker (equivocation)"
        )
        return self.detection(step, m, "forward", before, "equivocation", message, receipt_digest(receipt))

    def _check_weights(self, s: int, step: int, receipt: Receipt) -> tuple[list[dict[str, Any]], bool]:
        """Whether the weights stage ``s`` committed to at ``step`` are honest: the detections, and
        whether the question could be settled. Weights never updated since the measured initial
        weights or the last verified checkpoint are honest; otherwise they must be the output of
        the update receipt of ``step - 1``, whose re-execution (:meth:`check_update`) must agree,
        and the gradients that update started from must be honest: every backward unit of
        ``step - 1`` is re-executed along the stage's gradient trace (:meth:`check_unit`, with
        FETCH). After a recomputation that went back past an update, the question cannot be settled."""
        latest = self._last_updates.get(s)
        if latest is None:
            return [], True
        last, weights = latest
        if last.step != step - 1:
            return [], False
        if weights != receipt.weights_digest:
            message = f"stage {s} computed step {step} with other weights than its update of step {step - 1} produced"
            return [self.detection(step, 0, "update", s, "weights", message, receipt_digest(last))], True
        found = self.check_update(s, step - 1, last)
        if found:
            return found, True
        previous = self._updated_commits.get(step - 1)
        if previous is None:
            return [], False
        for m in range(self.config.microbatches):
            found = self.check_unit(previous, s, m, "backward")
            if found:
                return found, True
        return [], True

    @property
    def stage_pool(self) -> StagePool:
        """The stage modules the coordinator re-executes units on (built on first use)."""
        if self._pool is None:
            self._pool = StagePool(self.config.model, self.config.stages, self.config.seed)
        return self._pool

    def _data(self, step: int, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:
            from stagewarden.runtime.worker import _batches

            self._batches = _batches(self.config)
        x, y = self._batches.microbatch(step, micro_batch)
        return x, y

    def check_unit(
        self, commit: StepCommit, stage: int, micro_batch: int, kind: str, unit: FetchedUnit | None = None
    ) -> list[dict[str, Any]]:
        """Spot-check one forward or backward unit: take its inputs and weights (``unit``, as
        pushed; fetched with FETCH when ``None``), check them
        against the receipt (and stage 0's token ids and the last stage's targets against the
        step's data), re-execute it here and compare the output bitwise with the receipt's."""
        c, step = self.config, commit.step
        receipt = commit.receipt(stage, micro_batch, UnitKind(kind))
        if receipt is None:
            return [self.detection(step, micro_batch, kind, stage, "missing_receipt", "no receipt committed", b"")]
        evidence = receipt_digest(receipt)

        def found(check: str, message: str) -> list[dict[str, Any]]:
            return [self.detection(step, micro_batch, kind, stage, check, message, evidence)]

        if unit is None:
            try:
                unit = self.fetch(stage, step, micro_batch, kind)
            except TransportError as exc:
                return found("fetch", f"the worker did not return the committed unit: {exc}")
        inputs = unit.inputs
        is_last = stage == c.stages - 1
        received = inputs.get("input") if kind == "forward" else inputs.get("targets" if is_last else "grad_output")
        if (
            received is None
            or digest_tensor(received) != receipt.input_digest
            or unit.weights_digest != receipt.weights_digest
        ):
            return found(
                "fetch_mismatch",
                "the inputs or weights the worker returned differ from those its receipt commits to",
            )
        if kind == "backward" and stage > 0:  # its forward again: on the input the forward unit committed to
            forward = commit.receipt(stage, micro_batch, UnitKind.FORWARD)
            if forward is None or digest_tensor(inputs.get("input", torch.empty(0))) != forward.input_digest:
                return found(
                    "fetch_mismatch",
                    "the activation the worker returned for the backward unit is not the input its forward "
                    "receipt commits to",
                )
        trace = self._gradient_trace(commit, stage) if kind == "backward" else None
        if trace is not None:  # the unit adds to the gradients the stage's previous backward unit committed to
            before = [v for k, v in inputs.items() if k.startswith("grad_before.")]
            if gradients_digest(before) != (trace[micro_batch - 1] if micro_batch > 0 else NO_GRADS):
                return found(
                    "fetch_mismatch",
                    "the accumulated gradients the worker returned as the backward unit's start are not those its "
                    "gradient trace commits to before the unit",
                )
        within = c.spot_check_compare == "tolerance"
        if within and not _output_committed(unit, receipt, None if trace is None else trace[micro_batch]):
            return found("fetch_mismatch", "the output the worker returned differs from the one it committed to")
        x, y = self._data(step, micro_batch)
        if stage == 0 and not torch.equal(inputs.get("input", torch.empty(0)), x):
            return found("data", "stage 0 computed on token ids that are not the step's data")
        if is_last and not torch.equal(inputs.get("targets", torch.empty(0)), y):
            return found("data", "the last stage computed on targets that are not the step's data")
        self.spot["units_checked"] += 1
        try:
            expected = self._reexecute_unit(unit)
        except (SpotCheckError, KeyError, RuntimeError) as exc:
            return found("spot_check", f"the committed unit cannot be re-executed: {exc}")
        if within:  # compare with the committed outputs under the stage's calibrated tolerance
            message = self._beyond_tolerance(stage, expected, unit.outputs, f"the {kind} unit")
            return [] if message is None else found("spot_check", message)
        # bitwise: the receipt commits to the output (a forward unit), the input gradient (a backward
        # unit of a stage after the first) or the accumulated gradients (stage 0's backward unit)
        grads = [v for k, v in expected.items() if k.startswith("grad.")]
        accumulated = gradients_digest(grads) if kind == "backward" else None
        if kind == "forward":
            produced: bytes | None = _forward_output_digest(expected)
        else:
            produced = digest_tensor(expected["grad_input"]) if "grad_input" in expected else accumulated
        if produced != receipt.output_digest:
            return found("spot_check", f"re-executing the {kind} unit gives another output than the receipt's")
        if trace is not None and accumulated != trace[micro_batch]:
            return found(
                "spot_check",
                "re-executing the backward unit gives other accumulated parameter gradients than the stage's "
                "gradient trace commits to",
            )
        return []

    def _gradient_trace(self, commit: StepCommit, stage: int) -> list[bytes] | None:
        """The gradient trace stage ``stage``'s update receipt of ``commit``'s step commits to; for
        stage 0 its backward receipts are the trace. ``None`` when the stage made no update that
        step (a stage frozen by ``skip_stage``: its gradients of the step are never used)."""
        trace = self._traces.get(commit.step, {}).get(stage)
        if trace is None and stage == 0:
            trace = self._backward_outputs(commit, 0)
        return trace

    def _backward_outputs(self, commit: StepCommit, stage: int) -> list[bytes] | None:
        """The output digests of ``stage``'s backward receipts in ``commit``, in micro-batch order
        (stage 0's gradient trace); ``None`` when one is missing."""
        receipts = [commit.receipt(stage, m, UnitKind.BACKWARD) for m in range(self.config.microbatches)]
        return None if any(r is None for r in receipts) else [r.output_digest for r in receipts if r is not None]

    def _reexecute_unit(self, unit: FetchedUnit) -> dict[str, torch.Tensor]:
        """Re-execute a forward or backward unit from its committed inputs and weights; its outputs
        by name: ``output`` (a forward unit); ``grad_input`` (a backward unit of a stage after the
        first) and ``grad.<parameter>`` (a backward unit: the gradients accumulated up to and with
        the unit, from the ``grad_before.<parameter>`` it started from).

        Raises:
            SpotCheckError, KeyError, RuntimeError: The unit cannot be re-executed.
        """
        c, stage, inputs = self.config, unit.stage, unit.inputs
        with deterministic(c.train.threads):
            if unit.kind == "forward":  # its output and, on the last stage, the loss
                outputs: dict[str, torch.Tensor] = reexecute_forward_outputs(
                    c.model,
                    c.stages,
                    stage,
                    unit.weights,
                    inputs["input"],
                    inputs.get("targets"),
                    microbatches=c.microbatches,
                    pool=self.stage_pool,
                )
                return outputs
            result = reexecute_backward(
                c.model,
                c.stages,
                stage,
                unit.weights,
                inputs["input"],
                inputs.get("grad_output"),
                inputs.get("targets"),
                microbatches=c.microbatches,
                pool=self.stage_pool,
            )
            out = {} if result.grad_input is None else {"grad_input": result.grad_input}
            before = {k.removeprefix("grad_before."): v for k, v in inputs.items() if k.startswith("grad_before.")}
            for n, g in result.param_grads.items():  # this unit's gradients, added to those before it
                out[f"grad.{n}"] = before[n] + g if n in before else g
            return out

    def _beyond_tolerance(
        self, stage: int, expected: dict[str, torch.Tensor], committed: dict[str, torch.Tensor], what: str
    ) -> str | None:
        """Compare re-executed outputs with committed ones, tensor by tensor by name, under the
        stage's calibrated tolerance (:func:`~stagewarden.runtime.spotcheck.compare_within`);
        return why they differ, or ``None`` when they agree."""
        tolerance = self._tolerance.get(stage)
        if tolerance is None:
            raise RunFailed(f"stage {stage} has no calibrated spot-check tolerance")
        if set(committed) != set(expected):
            return f"the worker committed other output tensors for {what} than its re-execution gives"
        names = list(expected)
        comparison = compare_within([expected[n] for n in names], [committed[n] for n in names], tolerance.value)
        if comparison.equal:
            return None
        return (
            f"re-executing {what} gives another output than the receipt's: relative error "
            f"{comparison.relative_error:.3g} is above stage {stage}'s calibrated tolerance {tolerance.value:.3g}"
        )

    def check_update(
        self, s: int, step: int, receipt: Receipt, unit: FetchedUnit | None = None
    ) -> list[dict[str, Any]]:
        """Re-execute stage ``s``'s update unit of ``step``: with the weights before it, the
        accumulated gradients and the optimizer state (``unit``, as pushed; fetched when ``None``),
        checked against the update receipt (the gradients are the last entry of the gradient trace
        it commits to), re-execute the AdamW step and compare the new weights' and optimizer
        state's digests with the receipt's output. Returns the detections (none when they agree)."""
        c, evidence = self.config, receipt_digest(receipt)

        def found(check: str, message: str) -> list[dict[str, Any]]:
            return [self.detection(step, 0, "update", s, check, message, evidence)]

        if unit is None:
            try:
                unit = self.fetch(s, step, 0, "update")
            except TransportError as exc:
                return found("fetch", f"no update unit returned: {exc}")
        grads = {k[5:]: v for k, v in unit.inputs.items() if k.startswith("grad.")}
        state = {k[10:]: v for k, v in unit.inputs.items() if k.startswith("optimizer.")}
        trace = self._traces.get(step, {}).get(s)
        if trace is None:
            raise RunFailed(f"the gradient trace of stage {s}'s update of step {step} is no longer kept")
        committed_input = update_input_digest(gradient_trace_digest(trace), digest_state_dict(state))
        if (
            unit.weights_digest != receipt.weights_digest
            or committed_input != receipt.input_digest
            or gradients_digest(list(grads.values())) != trace[-1]
        ):
            return found(
                "fetch_mismatch",
                "the weights, gradients or optimizer state the worker returned differ from those its update "
                "receipt commits to",
            )
        within = c.spot_check_compare == "tolerance"
        if within and not _output_committed(unit, receipt):
            return found(
                "fetch_mismatch", "the weights after the update the worker returned differ from its update receipt's"
            )
        self.spot["units_checked"] += 1
        counts = {int(v) for k, v in state.items() if k.endswith("/step")}
        try:
            with deterministic(c.train.threads):
                result = reexecute_update(
                    c.model,
                    c.stages,
                    s,
                    unit.weights,
                    grads,
                    state,
                    c.train,
                    max(counts, default=0),
                    pool=self.stage_pool,
                )
        except SpotCheckError as exc:
            return found("spot_check", f"cannot re-execute: {exc}")
        if within:
            expected = {f"weights.{k}": v for k, v in result.weights.items()}
            expected |= {f"optimizer.{k}": v for k, v in result.optimizer_state.items()}
            message = self._beyond_tolerance(s, expected, unit.outputs, "the update")
            return [] if message is None else found("spot_check", message)
        after = update_output_digest(result.weights_digest, digest_state_dict(result.optimizer_state))
        if after != receipt.output_digest:
            return found(
                "spot_check", "re-executing the update gives other weights or optimizer state than the update receipt's"
            )
        return []

    # -- FETCH ------------------------------------------------------------------------------------

    def fetch(self, stage: int, step: int, micro_batch: int, kind: str) -> FetchedUnit:
        """Ask the worker of ``stage`` for one committed unit's inputs and the weights it ran with.

        Valid between a step's commitment and the next step. The tensors are checked against the
        digests the worker announces; compare them with the receipt to catch a worker that lies.

        Raises:
            TransportError: The worker does not keep the unit, or sent a malformed answer.
        """
        rank = self.rank_of(stage)
        self.transport.send_json(rank, {"type": "fetch", "step": step, "micro_batch": micro_batch, "kind": kind})
        msg = self.transport.recv_json(rank, "fetched")
        if "error" in msg:
            raise TransportError(str(msg["error"]))
        groups = ("input", "weights", "output")
        received, digests = self._recv_tensors(stage, msg, groups)
        return FetchedUnit(
            stage,
            step,
            micro_batch,
            kind,
            received["input"],
            received["weights"],
            digests=digests,
            outputs=received.get("output", {}),
        )

    def _recv_tensors(
        self, stage: int, msg: dict[str, Any], groups: tuple[str, ...]
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, bytes]]:
        """Receive the tensors a worker announced in ``msg`` (name ``<group>.<key>``, dtype, shape,
        digest), packed in one buffer, checking each against its announced digest.

        Returns:
            The tensors by group and key (every group of ``groups`` present, possibly empty), and
            each tensor's digest by its full name.
        """
        rank = self.rank_of(stage)
        items = msg.get("tensors", [])
        if not isinstance(items, list):
            raise TransportError(f"worker of stage {stage} sent a malformed tensor list")
        layout: list[tuple[torch.dtype, tuple[int, ...]]] = []
        names: list[tuple[str, str, str]] = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("shape"), list):
                raise TransportError(f"worker of stage {stage} sent a malformed tensor entry")
            name, dtype, shape = item.get("name"), _FETCH_DTYPES.get(str(item.get("dtype"))), tuple(item["shape"])
            group, _, key = str(name).partition(".")
            if (
                dtype is None
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                or _numel(shape) > _MAX_FETCH_ELEMENTS
            ):
                raise TransportError(f"worker of stage {stage} announced an unacceptable tensor {name!r}")
            if group not in groups or not key:
                raise TransportError(f"worker of stage {stage} sent an unexpected tensor {name!r}")
            layout.append((dtype, shape))
            names.append((str(name), group, key))
        received: dict[str, dict[str, torch.Tensor]] = {g: {} for g in groups}
        digests: dict[str, bytes] = {}
        if not layout:
            return received, digests
        size = packed_size(layout)
        if size > MAX_FRAME_BYTES:
            raise TransportError(
                f"worker of stage {stage} announced {size} bytes of tensors (the limit is {MAX_FRAME_BYTES})"
            )
        tensors = unpack_tensors(self.transport.recv_tensor(rank, torch.uint8, (size,)).cpu(), layout)
        for (name, group, key), item, tensor in zip(names, items, tensors, strict=True):
            digest = digest_tensor(tensor)
            if digest.hex() != item.get("digest"):
                raise TransportError(f"fetched tensor {name!r} of stage {stage} does not match its announced digest")
            if key in received[group]:
                raise TransportError(f"worker of stage {stage} sent tensor {name!r} twice")
            received[group][key] = tensor
            digests[name] = digest
        return received, digests

    def _fetch_check(self, commit: StepCommit) -> None:
        c = self.config
        for s in range(c.stages):
            for m, kind in ((0, UnitKind.FORWARD), (c.microbatches - 1, UnitKind.BACKWARD)):
                unit = self.fetch(s, commit.step, m, str(kind))
                receipt = commit.receipt(s, m, kind)
                assert receipt is not None
                if kind is UnitKind.FORWARD:
                    input_ok = digest_tensor(unit.inputs["input"]) == receipt.input_digest
                else:
                    source = unit.inputs.get("grad_output", unit.inputs.get("targets"))
                    input_ok = source is not None and digest_tensor(source) == receipt.input_digest
                self.events.write(
                    "fetch_check",
                    stage=s,
                    step=commit.step,
                    micro_batch=m,
                    kind=str(kind),
                    input_ok=input_ok,
                    weights_ok=unit.weights_digest == receipt.weights_digest,
                )

    # -- run directory ----------------------------------------------------------------------------

    def _summary(self) -> RunSummary:
        c = self.config
        tokens = c.tokens_per_step * len(self.losses)
        final = [self.final_weights.get(s) for s in range(c.stages)]
        model_digest = blake3.blake3(b"".join(bytes.fromhex(d) for d in final if d)).hexdigest() if all(final) else None
        extra = {
            "runtime_version": RUNTIME_SUMMARY_VERSION,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "config": c.to_json(),
            "steps_completed": len(self.losses),
            "losses": list(self.losses),
            "tokens_per_second": tokens / self.train_seconds
            if self.train_seconds > 0
            else (sum(m[2] for m in self.metrics) / len(self.metrics) if self.metrics else 0.0),
            "wall_seconds": self.wall_seconds,
            "units": {k: self.counts[k] for k in ("forward", "backward", "update")},
            "receipts": self.counts["receipts"],
            "headers": self.counts["headers"],
            "detections": list(self.detections),
            "false_alarms": self._false_alarms(),
            "responses": list(self.responses),
            "final_weights": {"stages": final, "digest": model_digest},
            "standby": list(self.standby_ids),
            "replacements": list(self.replacements),
            "checkpoints": list(self.checkpoints),
            "stage_busy_seconds": list(self.busy),
            "spot_check": dict(self.spot) if c.verification == "spot_check" else None,
            "spot_check_tolerance": list(self.tolerances) if c.spot_check_compare == "tolerance" else None,
            "redundant_neighbour": dict(self.neighbour) if c.verification == "redundant_neighbour" else None,
            "coordinator_key": bytes(self.signing_key.verify_key).hex(),
            "attestation": c.attestation,
            "faults": list(self.faults),
            "pending_fault": self.pending_fault,
            "resumes": list(self.resumes),
            "benched": list(self.benched),
        }
        workers = tuple(WorkerInfo(worker_id_for(s), s, 0) for s in range(c.stages)) + tuple(
            WorkerInfo(r["by"], r["stage"], 0) for r in self.replacements
        )
        return RunSummary(
            run_id=self.run_id,
            stages=c.stages,
            replicas=1,
            micro_batches=c.microbatches,
            steps=len(self.losses),
            workers=workers,
            extra=extra,
        )

    def _false_alarms(self) -> int:
        """Detections that blame a worker the run's attack plan does not make malicious (the plan
        is the ground truth of a run with injected attacks; a standby never attacks)."""
        plan = self.config.attack
        malicious = set()
        if plan is not None:
            malicious = {worker_id_for(int(s)) for s in plan.get("stages", [])}
        return sum(1 for d in self.detections if d["worker"] not in malicious)

    def _write_summary(self) -> None:
        self.writer.write_summary(self._summary())

    def _write_metrics(self) -> None:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["step", "loss", "tokens_per_second", "wall_seconds"])
        for step, loss, tps, seconds in self.metrics:
            w.writerow([step, repr(loss), f"{tps:.1f}", f"{seconds:.4f}"])
        atomic_write_text(self.run_dir / METRICS_FILE, out.getvalue())


def _dcap_verifier(c: RunConfig, signing_key: SigningKey, clock: Clock) -> DcapVerifier:
    """The verifier of Intel quotes the configuration names (its collateral and policy files)."""
    if c.dcap_collateral is None:
        raise AdmissionRefused("attestation_kind dcap needs dcap_collateral (a collateral file or cache folder)")
    try:
        return DcapVerifier.from_files(c.dcap_collateral, c.dcap_policy, signing_key, clock)
    except (AttestError, OSError) as exc:
        raise AdmissionRefused(f"cannot set up the DCAP verifier: {exc}") from None


def _hex(value: Any, size: int | None, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a hex string")
    try:
        data = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} is not hex") from None
    if size is not None and len(data) != size:
        raise ValueError(f"{what} must be {size} bytes, not {len(data)}")
    return data


def _hex_list(value: Any, length: int, what: str) -> list[bytes]:
    if not isinstance(value, list) or len(value) != length:
        raise ValueError(f"{what} must be a list of {length} hex digests")
    return [_hex(v, 32, f"{what}[{i}]") for i, v in enumerate(value)]


def _output_committed(unit: FetchedUnit, receipt: Receipt, accumulated: bytes | None = None) -> bool:
    """Tolerance mode: whether the output a worker returned for a unit (:attr:`FetchedUnit.outputs`)
    is the one it committed to: the activation or logits of a forward unit; the input gradient of
    a backward unit (stage 0: none) and its accumulated parameter gradients, in order (the
    ``accumulated`` entry of the stage's gradient trace, when known; stage 0's receipt commits to
    them too); the weights and optimizer state after an update."""
    out = unit.outputs
    if unit.kind == "update":
        weights = {k.removeprefix("weights."): v for k, v in out.items() if k.startswith("weights.")}
        state = {k.removeprefix("optimizer."): v for k, v in out.items() if k.startswith("optimizer.")}
        return (
            bool(weights)
            and len(weights) + len(state) == len(out)
            and update_output_digest(digest_state_dict(weights), digest_state_dict(state)) == receipt.output_digest
        )
    if unit.kind == "forward":
        return (
            set(out) <= {"output", "loss"} and "output" in out and _forward_output_digest(out) == receipt.output_digest
        )
    grads = [v for k, v in out.items() if k.startswith("grad.")]
    first = unit.stage == 0
    if len(grads) + (0 if first else 1) != len(out) or not grads:
        return False
    returned = gradients_digest(grads)
    if first and returned != receipt.output_digest:
        return False
    if not first and ("grad_input" not in out or digest_tensor(out["grad_input"]) != receipt.output_digest):
        return False
    return accumulated is None or returned == accumulated


def _forward_output_digest(outputs: dict[str, torch.Tensor]) -> bytes:
    """What a forward receipt commits to, from the unit's outputs: the ``output`` activation's
    digest or, with a ``loss`` (the last stage), the digest of the logits and the loss."""
    digest: bytes
    if "loss" in outputs:
        digest = last_forward_output_digest(digest_tensor(outputs["output"]), loss_digest(outputs["loss"]))
    else:
        digest = digest_tensor(outputs["output"])
    return digest


def _weights_digest(weights: dict[str, torch.Tensor], digests: dict[str, bytes], group: str = "weights") -> bytes:
    """:func:`~stagewarden.attest.tensor_digest.digest_state_dict` of ``weights``, from the tensor
    digests :meth:`Coordinator._recv_tensors` computed (by ``<group>.<name>``) where it has them."""
    return weights_digest(_tensor_digests(weights, digests, group))


def _tensor_digests(tensors: dict[str, torch.Tensor], digests: dict[str, bytes], group: str) -> dict[str, bytes]:
    """Each tensor's :func:`~stagewarden.attest.tensor_digest.digest_tensor` by key: the one
    :meth:`Coordinator._recv_tensors` computed (by ``<group>.<name>``) where it has it."""
    return {k: digests.get(f"{group}.{k}") or digest_tensor(v) for k, v in tensors.items()}


def _dtype_name(tensor: torch.Tensor) -> str:
    return next(name for name, dtype in _FETCH_DTYPES.items() if dtype == tensor.dtype)


def _busy(msg: dict[str, Any]) -> float:
    value = msg.get("busy_ns", 0)
    return value / 1e9 if isinstance(value, int) and value >= 0 else 0.0


def _float(value: Any) -> float:
    if not isinstance(value, str):
        raise ValueError("a loss must be a float in hex notation")
    return float.fromhex(value)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _repair_events(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Cut a partial final line (a crash in mid-write) off ``events.jsonl`` and return its events."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        notes.append(f"cut a partial final line ({len(data) - end} bytes) off events.jsonl")
    events = []
    for line in data[:end].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
