"""The coordinator (rank 0): the engine that drives a run's steps over its collaborators.

The coordinator is trusted: it is also the verifier, the relying party and the only writer of the
run directory. Each step it sends ``step``, collects every worker's commitment
(:class:`~stagewarden.runtime.coordinator.commitments.Commitments`), checks that the digests link
up between adjacent stages and adjudicates the checkers' reports
(:class:`~stagewarden.runtime.coordinator.checks.Checks`), sends ``update``, and checks the sampled
units (:class:`~stagewarden.runtime.coordinator.reexecution.Reexecution`). The engine only wires
and sequences: each collaborator owns its state.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import time
from pathlib import Path
from typing import Any

import blake3
import torch

from stagewarden.attest.errors import AttestError
from stagewarden.attest.receipts import Receipt, UnitKind, chain_genesis
from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.attest.rundir import RunDirWriter
from stagewarden.attest.step_heads import EndStatus
from stagewarden.attest.tensor_digest import (
    weights_digest,
)
from stagewarden.attest.verifier_client import VerifierClient
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.coordinator.accusations import DetectionSigner
from stagewarden.runtime.coordinator.admission import Admission
from stagewarden.runtime.coordinator.checkpoints import CheckpointStore
from stagewarden.runtime.coordinator.checks import Checks
from stagewarden.runtime.coordinator.commitments import Commitments, StepCommit
from stagewarden.runtime.coordinator.context import (
    CONTENT_ERRORS,
    EVENTS_FILE,
    FETCH_CHECK_ENV,
    KEYS_SUFFIX,
    TRACES_KEPT,
    WORKERS_FILE,
    CurrentAttempt,
    EventLog,
    RunContext,
    private_key,
)
from stagewarden.runtime.coordinator.errors import AdmissionRefused, RunFailed, RunInterrupted, TrainingStopped
from stagewarden.runtime.coordinator.faults import Faults
from stagewarden.runtime.coordinator.ledger import Ledger
from stagewarden.runtime.coordinator.neighbour import NeighbourRelay
from stagewarden.runtime.coordinator.recovery import Recovery
from stagewarden.runtime.coordinator.reexecution import FetchedUnit, Reexecution
from stagewarden.runtime.coordinator.renewal import Renewal
from stagewarden.runtime.coordinator.replicas import ReplicaChecks
from stagewarden.runtime.coordinator.resume import Resume
from stagewarden.runtime.coordinator.roster import Roster
from stagewarden.runtime.coordinator.sealing import Sealer
from stagewarden.runtime.coordinator.tally import RunTally
from stagewarden.runtime.coordinator.wire import tensor_digests
from stagewarden.runtime.liveness import Fault
from stagewarden.runtime.protocol import (
    Commit,
    Discard,
    Idle,
    Push,
    Pushed,
    Release,
    Step,
    UpdateCommitment,
    Updated,
    receive,
    send_message,
)
from stagewarden.runtime.responses import ResponsePlan
from stagewarden.runtime.route import Route
from stagewarden.runtime.spotcheck import (
    SampleSeed,
)
from stagewarden.runtime.transport import (
    Transport,
    TransportError,
)


@dataclasses.dataclass
class AfterUpdate:
    """What is left of a step once its update is applied: checking its sampled units and, when
    one is due, writing the checkpoint after it.

    Attributes:
        step: The step.
        commit: Its commitments.
        sample: The sampled units ``(stage, micro_batch, kind)``.
        pushes: Per slot asked to push: its sampled units ``(micro_batch, kind)``.
        snapshot: Whether the stages push their state for the checkpoint after the step (each
            stage's first computing slot, :meth:`CheckpointStore.leads
            <stagewarden.runtime.coordinator.checkpoints.CheckpointStore.leads>`).
        snapshot_slots: The slots asked to push their state with the units (none without a snapshot).
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
    snapshot_slots: frozenset[int]
    update_receipts: dict[int, Receipt]
    weights: dict[int, str]
    optimizers: dict[int, str] = dataclasses.field(default_factory=dict)
    found: list[SignedDetection] = dataclasses.field(default_factory=list)
    state: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = dataclasses.field(default_factory=dict)
    state_digests: dict[int, dict[str, dict[str, bytes]]] = dataclasses.field(default_factory=dict)


class Coordinator:
    """The coordinator process of a run: builds its collaborators and runs the steps.

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
        verifier: The attestation verifier service that appraises the workers' evidence (needed
            when attestation is on; :mod:`stagewarden.runtime.verifier_process` starts one).
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
        verifier: VerifierClient | None = None,
    ) -> None:
        run_dir = Path(run_dir)
        self.ctx = ctx = RunContext(
            config=config,
            transport=transport,
            run_dir=run_dir,
            keys_dir=run_dir.parent / f"{run_dir.name}{KEYS_SUFFIX}",
            vendor_dir=vendor_dir,
            heartbeats=heartbeats,
            run_id=run_id or f"run-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{os.urandom(4).hex()}",
            session=0,
        )
        ctx.verifier = verifier
        self.current = CurrentAttempt(Route(config.stages))
        self.roster = Roster(ctx)
        self.ledger = Ledger(ctx)
        self.signer = DetectionSigner(ctx, self.roster)
        self.tally = RunTally(ctx, self.roster, self.ledger)
        self.reexec = Reexecution(ctx, self.roster, self.ledger, self.tally, self.signer)
        self.store = CheckpointStore(ctx, self.roster, self.ledger, self.tally, self.reexec)
        self.tally.store = self.store
        self.faults = Faults(ctx, self.roster, self.tally)
        self.admission = Admission(ctx, self.roster, self.ledger, self.tally, self.reexec, self.faults)
        self.recovery = Recovery(ctx, self.roster, self.ledger, self.tally, self.store, self.admission)
        self.renewal = Renewal(ctx, self.roster, self.admission, self.faults)
        self.sealer = Sealer(ctx, self.roster)
        self.commitments = Commitments(ctx, self.roster, self.tally, self.current, self.sealer)
        self.checks = Checks(ctx, self.roster, self.ledger, self.tally, self.signer, self.reexec, self.current)
        self.replicas = ReplicaChecks(ctx, self.roster, self.ledger, self.signer, self.reexec)
        self.neighbour = NeighbourRelay(ctx, self.roster, self.ledger, self.reexec, self.store, self.current)
        self.start_step = 0
        self._pending_bypass: int | None = None
        self._pending_attempt = 0
        self._deferred: AfterUpdate | None = None
        if resume:
            resumed = Resume(ctx, self.roster, self.ledger, self.tally, self.store)
            resumed.load()
            self.start_step = resumed.start_step
            self.sealer.take_up(run_dir / EVENTS_FILE)
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            ctx.signing_key = private_key(ctx.keys_dir, "coordinator", create=True)
            ctx.writer = RunDirWriter(run_dir, self.tally.summary())
            ctx.writer.write_coordinator_key(bytes(ctx.signing_key.verify_key))
            ctx.events = EventLog(run_dir / EVENTS_FILE)
            ctx.log = ctx.writer.create_log(sync="explicit") if config.receipts else None

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
        torch.set_num_threads(self.ctx.config.train.threads)
        try:
            if self.ctx.session == 0:
                self.ctx.events.write("run_started", run_id=self.ctx.run_id, config=self.ctx.config.to_json())
            else:
                self.ctx.events.write("run_resumed", **self.tally.resumes[-1])
            self.admission.admit()
            if self.ctx.config.verification == "spot_check":
                self.reexec.data(self.start_step, 0)  # read the corpus the checks regenerate data from before training
            self.tally.status = "running"
            self.faults.start_watchdog()
            self.tally.write_summary()
            train_start = time.perf_counter()
            stopped = None
            try:
                step = self.start_step
                if self.ctx.session > 0:
                    self.store.restore(step)
                self.admission.calibrate(self.roster.slots)
                if self.ctx.session == 0 and self.store.checkpointing:
                    self.store.write(0)
                while step < self.ctx.config.steps:
                    if self._deferred is None and self.renewal.due():
                        self.renewal.renew()
                    step = self.train_step(step)
            except TrainingStopped as stop:
                stopped = str(stop)
            self.store.finish()
            self.tally.train_seconds += time.perf_counter() - train_start
            end: EndStatus = "completed" if stopped is None else "stopped"
            self.tally.status = end
            self.faults.stop_watchdog()
            if stopped is None:
                self.ctx.events.write(
                    "run_completed", steps=len(self.tally.losses), detections=len(self.tally.detections)
                )
            else:
                self.tally.stop_reason = stopped
                self.ctx.events.write("run_stopped", reason=stopped, steps=len(self.tally.losses))
            self.tally.wall_seconds += time.perf_counter() - started
            started = time.perf_counter()
            summary = self.tally.seal_summary()
            self.sealer.seal_run(len(self.tally.losses), end, blake3.blake3(summary.encode("utf-8")).digest())
            for rank in range(1, self.ctx.config.world_size):
                if rank not in self.roster.released:
                    send_message(self.ctx.transport, rank, Release())
            if stopped is None:
                shutil.rmtree(self.ctx.keys_dir, ignore_errors=True)  # nothing left to resume
        except AdmissionRefused as exc:
            self.tally.status, self.tally.stop_reason = "refused", str(exc)
            self.ctx.events.write("run_stopped", reason=str(exc))
            raise
        except RunInterrupted:
            raise
        except (TransportError, *CONTENT_ERRORS) as exc:
            if self.tally.status != "running":
                self.tally.status = "failed"
                message = exc.message if isinstance(exc, AttestError) else str(exc)
                self.tally.stop_reason = message
                self.ctx.events.write("run_failed", reason=message)
                raise RunFailed(f"the run failed: {message}") from None
            self.faults.on_error(exc)
        finally:
            self.faults.stop_watchdog()
            self.store.close()  # a checkpoint not recorded by now does not count
            (self.ctx.run_dir / WORKERS_FILE).unlink(missing_ok=True)
            self.tally.wall_seconds += time.perf_counter() - started
            if self.tally.status == "running":
                self.tally.status = "failed"
            if self.ctx.log is not None:
                self.ctx.log.close()
            self.tally.write_summary()
            self.ctx.events.close()

    def train_step(self, step: int) -> int:
        """One step: ``step`` to every stage, collect and check the commitments, reveal the
        spot-check sample, ``update`` (the workers push the sampled units and, when a checkpoint is
        due, their new state), check the sampled units and write the checkpoint; on a detection,
        respond (:meth:`~stagewarden.runtime.coordinator.recovery.Recovery.respond`) and recompute the step.

        The checks and the checkpoint of a step run while the next step computes
        (:attr:`~stagewarden.runtime.config.RunConfig.overlap_checks`), except for a
        recomputation, a step with a bypassed stage and the last step, which settle before the
        step ends. No checkpoint is written before the checks of its step have passed; a check
        that fails while the next step computes discards that step and answers the detection as
        if it had been found at once.

        Returns the next step to train: ``step + 1``, the step to recompute after a late detection,
        or the checkpoint's step after an eject or a rollback."""
        c = self.ctx.config
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
            detections = self.checks.check_links(commit)
            if os.environ.get(FETCH_CHECK_ENV) == "1":
                self.reexec.fetch_check(commit)
            detections += self.checks.verify_step(step, commit, already=detections)
            if not detections:
                after = self.update_all(step, frozen=bypass, commit=commit)
                # settle at once when a renewal is due: it needs no step's checks in flight
                if (
                    c.overlap_checks
                    and attempt == 0
                    and bypass is None
                    and step + 1 < c.steps
                    and not self.renewal.due()
                ):
                    self._deferred = after
                else:
                    detections += self._settle(after, write_checkpoint=False)
            for d in detections:
                self.ctx.events.write("detection", attempt=attempt, **d.to_json())
            self.tally.detections += detections
            if not detections:
                break
            if attempt >= c.max_recomputations:
                raise self._no_honest_path(step, attempt + 1, detections[0])
            plan = self._respond(step, attempt, detections)
            if plan.checkpoint_step is not None:
                # a rollback without a standby bypasses the convict in the first recomputed step
                self._pending_bypass = plan.bypass_stage
                return plan.checkpoint_step
            bypass = plan.bypass_stage
            attempt += 1
        if bypass is not None and c.verification == "redundant_neighbour":
            self.neighbour.resync_bypassed_checker(step, bypass)
        if self.ctx.log is not None:
            self.ctx.log.sync()
        seconds = time.perf_counter() - started
        tps = c.tokens_per_step / seconds if seconds > 0 else 0.0
        self.tally.losses.append(commit.loss)
        self.tally.metrics.append((step, commit.loss, tps, seconds))
        self.ctx.events.write("step", step=step, loss=commit.loss, tokens_per_second=tps, seconds=seconds)
        if self.store.due(step) and self._deferred is None:
            if after is not None and after.snapshot:
                self.store.save_pushed(after.step + 1, after.state, after.state_digests, background=True)
            else:
                self.store.write(step + 1)
        self.tally.write_summary()
        self.tally.write_metrics()
        self.sealer.seal_step(len(self.tally.losses))
        return step + 1

    def _active_stages(self, bypass: int | None) -> list[int]:
        """The computing slots whose stage is not ``bypass``."""
        return [q for q in self.roster.slots if self.roster.layout.stage(q) != bypass]

    def _start_attempt(self, step: int, attempt: int, bypass: int | None) -> None:
        """Commit to the sample's secret and start one computation of ``step`` on every stage."""
        c = self.ctx.config
        if c.verification == "spot_check":
            self.current.seed = SampleSeed.draw(step)
            self.ctx.events.write(
                "spot_check_commitment", step=step, attempt=attempt, commitment=self.current.seed.commitment.hex()
            )
        message, idle = Step(step, attempt, bypass), Idle(step)
        self.current.bypass, self.current.route = bypass, Route(c.stages, bypass)
        for s in self.roster.slots:  # the bypassed worker computes nothing: it waits for the next step
            send_message(
                self.ctx.transport, self.roster.rank_of(s), message if self.roster.layout.stage(s) != bypass else idle
            )
        for k in list(self.roster.free_standbys):
            try:
                send_message(self.ctx.transport, self.roster.standby_rank(k), idle)
            except TransportError as exc:
                with self.faults.lock:
                    if k in self.roster.free_standbys:
                        self.faults.bench_standby(k, Fault(self.roster.standby_rank(k), "crashed", str(exc)))

    def _finish_attempt(self, step: int) -> StepCommit:
        """Relay the checkers' copies (``input_via: coordinator``) and collect the commitments."""
        c = self.ctx.config
        if c.verification == "redundant_neighbour" and c.input_via == "coordinator":
            self.neighbour.relay_copies(step)
        commit = self.commitments.collect(step)
        self.ctx.transport.flush()
        return commit

    def _settle(self, after: AfterUpdate, write_checkpoint: bool) -> list[SignedDetection]:
        """Take what the workers pushed after ``after.step``'s update, check its sampled units and,
        with ``write_checkpoint`` and no detection, write the checkpoint after it; return the
        detections."""
        self.store.finish()
        units = self._receive_pushed(after)
        found: list[SignedDetection] = list(after.found)
        for s, m, kind in after.sample:
            if kind == "update":
                receipt = after.update_receipts.get(s)
                if receipt is not None:
                    found += self.reexec.check_update(s, after.step, receipt, units.get((s, m, kind)))
            else:
                found += self.reexec.check_unit(after.commit, s, m, kind, units.get((s, m, kind)))
        if write_checkpoint and not found and after.snapshot:
            self.store.save_pushed(after.step + 1, after.state, after.state_digests, background=True)
        return found

    def _receive_pushed(self, after: AfterUpdate) -> dict[tuple[int, int, str], FetchedUnit]:
        """Receive each stage's push for ``after.step`` (the worker's ``push``): the sampled units with the weights the
        step ran with, and the state after the update when a checkpoint is due (kept in ``after``)."""
        step, units = after.step, {}
        for s, asked in sorted(after.pushes.items()):
            wid = self.roster.slot_ids[s]
            pushed = receive(self.ctx.transport, self.roster.rank_of(s), Pushed)
            if pushed.step != step or list(pushed.units) != asked:
                raise TransportError(f"worker {wid} pushed other units than those of step {step} it was asked for")
            groups: tuple[str, ...] = ("weights", "snapshot_weights", "snapshot_optimizer")
            groups += tuple(f"{part}{i}" for i in range(len(asked)) for part in ("unit", "output"))
            received, digests = self.reexec.recv_tensors(s, pushed.tensors, groups)
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
            if s in after.snapshot_slots:
                weights, optimizer = received["snapshot_weights"], received["snapshot_optimizer"]
                known = {
                    "weights": tensor_digests(weights, digests, "snapshot_weights"),
                    "optimizer": tensor_digests(optimizer, digests, "snapshot_optimizer"),
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

    def _late_detection(self, step: int, detections: list[SignedDetection]) -> int:
        """The checks of ``step - 1``, run while ``step`` computed, found tampering: receive and
        drop ``step``'s commitments (nothing of them is logged), tell every worker to discard the
        step and continue its receipt chain from the last logged receipt, take step ``step - 1``
        back and answer the detection as at attempt 0 of that step. Returns the step to train next."""
        c, done = self.ctx.config, step - 1
        for s in self.roster.slots:
            dropped = receive(self.ctx.transport, self.roster.rank_of(s), Commit)
            # the dropped commitment still answers the last step head
            self.sealer.take_cosignature(
                self.roster.slot_ids[s], self.roster.rank_of(s), dropped.cosignature, dropped.dispute
            )
        self.ctx.transport.flush()
        for s in self.roster.slots:
            wid = self.roster.slot_ids[s]
            head = self.roster.prev.get(wid) or chain_genesis(self.ctx.run_id, wid)
            send_message(self.ctx.transport, self.roster.rank_of(s), Discard(step, head))
        self.ctx.events.write("step_discarded", step=step, reason=f"a spot check of step {done} failed while it ran")
        del self.tally.losses[done:]
        del self.tally.metrics[done:]
        for d in detections:
            self.ctx.events.write("detection", attempt=0, found_during_step=step, **d.to_json())
        self.tally.detections += detections
        if c.max_recomputations == 0:
            raise self._no_honest_path(done, 1, detections[0])
        plan = self._respond(done, 0, detections)
        self._pending_bypass = plan.bypass_stage
        if plan.checkpoint_step is not None:
            return plan.checkpoint_step
        self._pending_attempt = 1
        return done

    def _respond(self, step: int, attempt: int, detections: list[SignedDetection]) -> ResponsePlan:
        """Answer the first detection; when the response removes convicts (eject, rollback), answer
        every other worker convicted in the same check too (the copies of a ``replicate`` tie), and
        leave every slot at the earliest checkpoint the plans went back to."""
        plan = self.recovery.respond(step, attempt, detections[0])
        if self.ctx.config.response not in ("eject", "rollback") or plan.checkpoint_step is None:
            return plan
        earliest, answered = plan, {detections[0].worker}
        for d in detections[1:]:
            if d.worker in answered or d.worker not in [self.roster.slot_ids[q] for q in self.roster.slots]:
                continue
            answered.add(d.worker)
            plan = self.recovery.respond(step, attempt, d)
            if plan.checkpoint_step is not None and earliest.checkpoint_step is not None:
                if plan.checkpoint_step < earliest.checkpoint_step:
                    earliest = plan
        if earliest is not plan and earliest.checkpoint_step is not None:
            self.store.restore(earliest.checkpoint_step)
        return earliest

    def _no_honest_path(self, step: int, computations: int, detection: SignedDetection) -> TrainingStopped:
        """The stop of a run whose ``step`` was tampered with in each of its ``computations``
        computations, the most :attr:`~stagewarden.runtime.config.RunConfig.max_recomputations` allows."""
        return TrainingStopped(
            f"no honest path through step {step}: it was tampered with in each of its {computations} "
            f"computations (last: stage {detection.stage}, {detection.check}), and the "
            f"{self.ctx.config.response} response cannot route around the tampering stage"
        )

    def update_all(self, step: int, frozen: int | None, commit: StepCommit) -> AfterUpdate:
        """Send ``update`` to every stage but ``frozen``, collect the update receipts, and then ask
        each stage with sampled units to push them (``push``; with, when a checkpoint is due and
        every stage updates, its new state); return what is left of the step (:class:`AfterUpdate`).

        The sample is drawn (:meth:`Checks.draw_sample
        <stagewarden.runtime.coordinator.checks.Checks.draw_sample>`) only once every update receipt is in: the
        update units and the gradient traces their receipts commit to are sampled with the rest,
        so they too must be committed before the randomness is fixed."""
        c = self.ctx.config
        stages = self._active_stages(frozen)
        snapshot = frozen is None and self.store.due(step)
        for s in stages:
            send_message(self.ctx.transport, self.roster.rank_of(s), self.replicas.update_message(step, s, commit))
        receipts: dict[int, Receipt] = {}
        optimizers: dict[int, str] = {}
        aggregated: dict[int, UpdateCommitment] = {}
        found: list[SignedDetection] = []
        for s in stages:
            wid = self.roster.slot_ids[s]
            updated = receive(self.ctx.transport, self.roster.rank_of(s), Updated)
            if updated.step != step:
                raise TransportError(f"worker {wid} reported the update of step {updated.step}, not {step}")
            weights = updated.weights
            self.ledger.final_weights[s] = weights.hex()
            self.tally.busy[s] += updated.busy_ns / 1e9
            if c.receipts:
                reported = updated.commitment
                if reported is None:
                    raise TransportError(f"worker {wid} sent no update receipt")
                receipt = self.commitments.accept_receipt(wid, s, step, reported.receipt)
                if receipt.kind is not UnitKind.UPDATE:
                    raise TransportError(f"worker {wid} sent a {receipt.kind} receipt as its update receipt")
                found += self.checks.accept_update(s, step, receipt, weights, reported, commit)
                receipts[s] = receipt
                optimizers[s] = self.ledger.optimizer[s]
                aggregated[s] = reported
                self.tally.counts["update"] += 1
        found += self.replicas.check_state(step, stages, receipts, commit)
        if receipts:  # what each update receipt commits to, for the audit's weights chain and aggregates
            done = {str(s): self.replicas.updated_entry(s, optimizers[s], aggregated[s]) for s in receipts}
            self.ctx.events.write("updated", step=step, stages=done)
        sample = self.checks.draw_sample(commit, receipts)
        self.ledger.updated_commits[step] = commit
        for kept in (self.ledger.updated_commits, self.ledger.traces):
            for old in [t for t in kept if t < step - TRACES_KEPT]:
                del kept[old]
        pushes: dict[int, list[tuple[int, str]]] = {}
        leads = set(self.store.leads())  # a checkpoint takes each stage's state from one slot
        for s in stages:
            asked = [(m, k) for t, m, k in sample if t == s]
            if asked or (snapshot and s in leads):
                pushes[s] = asked
        for s, asked in pushes.items():
            push = Push(step, tuple(asked), snapshot and s in leads)  # what _receive_pushed expects back
            send_message(self.ctx.transport, self.roster.rank_of(s), push)
        return AfterUpdate(
            step,
            commit,
            sample,
            pushes,
            snapshot,
            frozenset(leads) if snapshot else frozenset(),
            receipts,
            dict(self.ledger.final_weights),
            optimizers,
            found,
        )
