"""Taking up an interrupted run: its keys, history, receipt log and newest verified checkpoint."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stagewarden.attest.errors import AttestError
from stagewarden.attest.receipt_log import ReceiptLog, RecordType, read_log, recover_torn_tail
from stagewarden.attest.receipts import parse_receipt, receipt_digest
from stagewarden.attest.run_lines import event_objects
from stagewarden.attest.run_record import TrainingRecord
from stagewarden.attest.rundir import LOG_FILE, RunDir, RunDirWriter
from stagewarden.runtime.checkpoint import (
    latest_verified,
    list_steps,
    step_dir,
)
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.coordinator.context import EVENTS_FILE, EventLog, RunContext, private_key
from stagewarden.runtime.coordinator.errors import ResumeError

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.checkpoints import CheckpointStore
    from stagewarden.runtime.coordinator.ledger import Ledger
    from stagewarden.runtime.coordinator.roster import Roster
    from stagewarden.runtime.coordinator.tally import RunTally


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
    return event_objects(data[:end])


class Resume:
    """Restores the state of an interrupted run from its directory.

    Attributes:
        notes: What was repaired (a torn log record, a stale checkpoint...).
        start_step: The step the resumed session starts from.
    """

    def __init__(
        self, ctx: RunContext, roster: Roster, ledger: Ledger, tally: RunTally, store: CheckpointStore
    ) -> None:
        self.ctx, self.roster, self.ledger, self.tally, self.store = ctx, roster, ledger, tally, store
        self.notes: list[str] = []
        self.start_step = 0

    def load(self) -> None:
        """Take up the interrupted run in ``run_dir``: its run id, keys and history from
        ``summary.json`` and ``events.jsonl``, its receipt log (a torn final record, from a crash in
        mid-write, is cut off), and the newest checkpoint that verifies (a half-written or corrupt
        one is skipped and removed). The run goes on from that checkpoint's step; a pending fault
        with a standby named hands the failed worker's stage to the standby from that step.

        Raises:
            ResumeError: The directory holds no resumable run of this configuration.
        """
        c = self.ctx.config
        where = self.ctx.run_dir
        try:
            summary = RunDir(where).summary
        except AttestError as exc:
            raise ResumeError(f"cannot resume {where}: {exc.message}") from None
        try:
            training = summary.require_training()
        except AttestError as exc:
            raise ResumeError(f"cannot resume {where}: {exc.message}") from None
        status = training.status
        if status == "completed":
            raise ResumeError(f"cannot resume {where}: the run completed all its steps")
        if status == "refused":
            raise ResumeError(f"cannot resume {where}: its workers were refused admission; start a new run")
        try:
            own = RunConfig.from_json(training.config)
        except ValueError as exc:
            raise ResumeError(f"cannot resume {where}: its summary.json holds no valid configuration ({exc})") from None
        if own.measured_json() != c.measured_json() or own.attack != c.attack:
            raise ResumeError(
                f"cannot resume {where} with another configuration: only steps and the timeouts may change"
            )
        if c.checkpoint_every == 0:
            raise ResumeError(f"cannot resume {where}: the run writes no checkpoints (checkpoint_every 0)")
        self.ctx.run_id = summary.run_id
        self.ctx.signing_key = private_key(self.ctx.keys_dir, "coordinator", create=False)
        self.ctx.writer = RunDirWriter.reopen(where, summary)
        notes = self.notes
        events = _repair_events(where / EVENTS_FILE, notes)
        self.ctx.events = EventLog(where / EVENTS_FILE)
        self.ctx.log = None
        last_logged = -1
        logged = {RecordType.RECEIPT: 0, RecordType.HEADER: 0}
        if c.receipts:
            path = where / LOG_FILE
            try:
                removed = recover_torn_tail(path)
                if removed:
                    notes.append(f"cut a torn final record ({removed} bytes) off the receipt log")
                self.ctx.log = ReceiptLog.open(path, sync="explicit")
            except (AttestError, OSError) as exc:
                text = exc.message if isinstance(exc, AttestError) else str(exc)
                raise ResumeError(f"cannot resume {where}: the receipt log cannot be used ({text})") from None
            for record in read_log(path).records:
                logged[record.type] = logged.get(record.type, 0) + 1
                if record.type is RecordType.RECEIPT:
                    receipt = parse_receipt(record.payload)
                    self.roster.chain_heads[receipt.worker_id] = receipt_digest(receipt)
                    last_logged = max(last_logged, receipt.step)
        checkpoint = self._checkpoint(events)
        step = checkpoint.info.step
        self.start_step = step
        self.ledger.final_weights = {int(k): v for k, v in checkpoint.info.weights_digests.items()}
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
            self.tally.losses.append(loss)
            self.tally.metrics.append((t, loss, float(e.get("tokens_per_second", 0.0)), float(e.get("seconds", 0.0))))
        self._restore_history(training)
        if c.receipts:  # what the log holds, the interrupted session's last records included
            self.tally.counts["receipts"], self.tally.counts["headers"] = (
                logged[RecordType.RECEIPT],
                logged[RecordType.HEADER],
            )
        pending = training.pending_fault
        fault_note = None
        if pending is not None:
            standby, stage, failed = pending.standby, pending.stage, pending.worker
            index = self.roster.standby_ids.index(standby) if standby in self.roster.standby_ids else None
            slot = self.roster.slot_ids.index(failed) if failed in self.roster.slot_ids else None
            if stage is not None and slot is not None and index in self.roster.free_standbys:
                self.roster.free_standbys.remove(index)
                self.roster.slot_ids[slot] = str(standby)
                self.roster.slot_ranks[slot] = self.roster.standby_rank(index)
                self.roster.benched.append(str(failed))
                self.roster.add_replacement(str(failed), str(standby), slot, step)
                fault_note = f"standby {standby} takes stage {stage} from failed worker {failed}"
            elif failed is not None:
                fault_note = f"worker {failed} failed before the interruption and is admitted again"
        self.tally.pending_fault = None
        self.ctx.session = len(self.tally.resumes) + 1
        self.tally.resumes.append(
            {
                "session": self.ctx.session,
                "from_step": step,
                "redo_to_step": max(last_logged, step - 1),
                "after": status,
                "fault": None if pending is None else dataclasses.asdict(pending),
                "replacement": fault_note,
                "repairs": list(notes),
            }
        )

    def _checkpoint(self, events: list[dict[str, Any]]) -> Any:
        """The newest checkpoint that verifies and whose manifest is the one ``events.jsonl``
        recorded; newer ones (half-written or corrupt) are removed."""
        recorded = {
            e["step"]: e.get("manifest")
            for e in events
            if e.get("event") == "checkpoint" and type(e.get("step")) is int
        }
        limit = None
        while True:
            checkpoint = latest_verified(self.store.root, before_step=limit)
            if checkpoint is None:
                raise ResumeError(f"cannot resume {self.ctx.run_dir}: it holds no checkpoint that verifies")
            t = checkpoint.info.step
            if recorded.get(t) == checkpoint.info.manifest_digest:
                break
            self.notes.append(f"checkpoint of step {t} is not the one events.jsonl recorded; skipped")
            limit = t
        for stale in [u for u in list_steps(self.store.root, complete=False) if u > t]:
            shutil.rmtree(step_dir(self.store.root, stale), ignore_errors=True)
            self.notes.append(f"removed the checkpoint of step {stale} (incomplete, corrupt or unrecorded)")
        self.store.steps = [u for u in list_steps(self.store.root) if u <= t]
        return checkpoint

    def _restore_history(self, training: TrainingRecord) -> None:
        """The counters, detections, responses, replacements and faults recorded in ``summary.json``."""
        c = self.ctx.config
        counts = self.tally.counts
        counts["forward"], counts["backward"], counts["update"] = (
            training.units.forward,
            training.units.backward,
            training.units.update,
        )
        counts["receipts"], counts["headers"] = training.receipts, training.headers
        self.tally.detections = list(training.detections)
        self.tally.responses = [r.model_dump(mode="python") for r in training.responses]
        self.roster.replacements = [dataclasses.asdict(r) for r in training.replacements]
        # a pipeline a response took out of the run stays out: its ranks are sent home at admission
        self.roster.retired = {
            r.plan.retired_pipeline for r in training.responses if r.plan.retired_pipeline is not None
        }
        self.tally.faults = [dataclasses.asdict(f) for f in training.faults]
        self.tally.resumes = [dataclasses.asdict(r) for r in training.resumes]
        self.roster.benched = list(training.benched)
        if training.spot_check is not None:
            self.tally.spot.update(dataclasses.asdict(training.spot_check))
        if training.redundant_neighbour is not None:
            self.tally.neighbour.update(dataclasses.asdict(training.redundant_neighbour))
        layout = self.roster.layout
        if len(training.stage_busy_seconds) == layout.slots:  # per stage: kept per slot with one pipeline
            self.tally.busy = list(training.stage_busy_seconds)
        self.tally.wall_seconds = training.wall_seconds
        for r in training.replacements:
            if r.stage < c.stages and r.replica < layout.pipelines and r.by in self.roster.standby_ids:
                slot = layout.slot(r.stage, r.replica)
                self.roster.slot_ids[slot] = r.by
                self.roster.slot_ranks[slot] = self.roster.standby_rank(self.roster.standby_ids.index(r.by))
        taken = set(self.roster.slot_ids) | set(self.roster.benched) | {r.worker for r in training.replacements}
        self.roster.free_standbys = [k for k, wid in enumerate(self.roster.standby_ids) if wid not in taken]
