"""The stage worker process (:class:`StageWorker`): it attests, then serves the coordinator's
requests through a table of message type to handler until the coordinator releases it.

One process per stage (rank ``stage + 1``); a standby worker (rank ``S + 1 + k``) attests and
then waits idle until the coordinator assigns it a stage. The worker talks to the coordinator
(rank 0) with the control messages of :mod:`stagewarden.runtime.protocol` and to its neighbours
with signed tensor transfers (:mod:`stagewarden.runtime.transport`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from nacl.signing import SigningKey

from stagewarden.attest.errors import AttestError
from stagewarden.attest.providers import ConfigfsTsmProvider, SimulatedProvider
from stagewarden.attest.receipts import ExecutionEnv, UnitKind
from stagewarden.attest.tensor_digest import digest_state_dict
from stagewarden.attest.vendor import device_identity, load_vendor
from stagewarden.runtime.attacks import AttackPlan, NoAttack, PlanAttack, make_attack
from stagewarden.runtime.calibration import CALIBRATION_UNITS, calibration_inputs, calibration_outputs
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.data import batches_for
from stagewarden.runtime.liveness import Heartbeat
from stagewarden.runtime.measure import code_digest, stage_measurement
from stagewarden.runtime.protocol import (
    Admitted,
    Assign,
    Calibrate,
    Calibrated,
    Cosigned,
    Discard,
    ErrorReport,
    Evidence,
    Fetch,
    Fetched,
    FetchUnavailable,
    Hello,
    Idle,
    Load,
    Loaded,
    Message,
    Push,
    Pushed,
    Ranks,
    Reattest,
    Refused,
    Release,
    ReplicaLoaded,
    Restore,
    Restored,
    Shutdown,
    Snapshot,
    SnapshotRequest,
    Step,
    TensorGroupMessage,
    TensorMeta,
    Update,
    WitnessHead,
    receive,
    send_message,
    send_tensor_group,
)
from stagewarden.runtime.protocol.ids import COORDINATOR, device_id_for
from stagewarden.runtime.schedule import gpipe, one_f_one_b
from stagewarden.runtime.transport import Transport, TransportError
from stagewarden.runtime.units import deterministic
from stagewarden.runtime.worker.hooks import ROOT_ATTACKS, TestHooks, altered_root, crash, send_hostile
from stagewarden.runtime.worker.neighbour import NeighbourCheck
from stagewarden.runtime.worker.peers import Peers
from stagewarden.runtime.worker.signing import Signer
from stagewarden.runtime.worker.state import StageState, receive_checkpoint
from stagewarden.runtime.worker.step import StepRunner
from stagewarden.runtime.worker.witnessing import Witness

#: What a worker serves after admission, in the order its error messages name them.
SERVED: tuple[type[Message], ...] = (
    Step,
    Fetch,
    Update,
    Restore,
    Idle,
    Release,
    SnapshotRequest,
    Load,
    Assign,
    Ranks,
    Discard,
    Calibrate,
    Push,
    Reattest,
    WitnessHead,
)


class StageWorker:
    """The worker process of one stage (or a standby).

    Args:
        config: The run configuration as this worker read it.
        rank: This process's rank (``stage + 1`` for a stage worker).
        transport: The point-to-point transport.
        vendor_dir: The simulated vendor folder that provisioned this machine's device identity
            (required when attestation is on).
        heartbeats: Where this worker's heartbeat records go once it is admitted: its end of the
            run's heartbeat channel (:class:`~stagewarden.runtime.liveness.HeartbeatSender`).
        hooks: The test hooks in effect (:meth:`TestHooks.from_environ
            <stagewarden.runtime.worker.hooks.TestHooks.from_environ>` when not given).
        witness_dir: Where this worker keeps its witness file of the run's step heads
            (:mod:`stagewarden.attest.witness`; ``None``: it cosigns them and keeps no file).
    """

    def __init__(
        self,
        config: RunConfig,
        rank: int,
        transport: Transport,
        vendor_dir: str | None,
        *,
        heartbeats: Any,
        hooks: TestHooks | None = None,
        witness_dir: Path | None = None,
    ) -> None:
        self.config, self.rank, self.transport = config, rank, transport
        self.vendor_dir, self.heartbeats = vendor_dir, heartbeats
        self.hooks = TestHooks.from_environ() if hooks is None else hooks
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if config.device == "cuda" else torch.device("cpu")
        )
        self.signer = Signer(SigningKey.generate())
        self.peers = Peers(config)
        self.witness = Witness(witness_dir)
        self._answer: Cosigned | None = None
        """The answer to the last step head, sent with the next commit."""
        self.runner: StepRunner | None = None
        """The stage's step runner and, through it, its state (``None`` while a standby holds no stage)."""
        self._handlers: dict[type[Message], Callable[[Any], None]] = {
            Step: self._on_step,
            Fetch: self._on_fetch,
            Update: self._on_update,
            Restore: self._on_restore,
            SnapshotRequest: self._on_snapshot,
            Load: self._on_load,
            Discard: self._on_discard,
            Calibrate: self._on_calibrate,
            Push: self._on_push,
        }
        """The requests only a worker that holds a stage serves, by message type."""
        self._control: dict[type[Message], Callable[[Any], None]] = {
            Idle: lambda _: None,
            Ranks: self._on_ranks,
            Assign: self._on_assign,
            Reattest: lambda msg: self._attest(msg.nonce),
            WitnessHead: self._on_head,
        }
        """The requests every worker serves, a standby too."""
        self._measurement: bytes | None = None
        """The launch measurement this worker presented at admission, presented again when it is
        re-attested (what it runs was measured when it started, as a TEE measures at launch)."""

    @property
    def worker_id(self) -> str:
        """This worker's id (empty until the coordinator's hello)."""
        return self.signer.worker_id

    @property
    def stage_index(self) -> int | None:
        """The stage this worker runs (``None`` for a standby that has none yet)."""
        return self.signer.stage

    # -- start -------------------------------------------------------------------------------------

    def run(self) -> None:
        """Attest, then serve the coordinator until it releases this worker.

        A failure of a peer (its connection closed, a receive timed out, it sent something
        malformed) does not end this process: the worker reports it to the coordinator and keeps
        its heartbeat going until the coordinator releases it or goes away, so that the
        coordinator can tell the failed worker from the ones the failure blocked.
        """
        hello = receive(self.transport, COORDINATOR, Hello, Shutdown)
        if not isinstance(hello, Hello):
            return
        self.signer.start(hello.run_id, hello.worker_id, hello.chain_head)
        self.peers.run_id = hello.run_id
        self.witness.start(hello.coordinator_key)
        if hello.slot is not None and not 0 <= hello.slot < self.config.layout.slots:
            raise TransportError(
                f"the coordinator placed worker {hello.worker_id} in slot {hello.slot}, which does not exist"
            )
        with deterministic(self.config.train.threads):
            self._setup_stage(hello.slot)
            self._attest(hello.nonce)
        reply = receive(self.transport, COORDINATOR, Admitted, Refused, Shutdown)
        if not isinstance(reply, Admitted):
            return
        self.peers.update(reply.keys, reply.workers, reply.ranks)
        heartbeat = Heartbeat(
            self.heartbeats,
            hello.run_id,
            hello.session,
            self.rank,
            self.signer.key,
            self.config.heartbeat_timeout / 4,
            self.transport.wait_state,
        )
        heartbeat.start()
        try:
            self._serve()
        except TransportError as exc:
            if exc.peer in (None, COORDINATOR):
                raise
            self._report_failure(exc)
        finally:
            heartbeat.stop()
            self.witness.close()

    def _setup_stage(self, slot: int | None) -> None:
        """Take ``slot`` and build the parts of its stage (none for a standby without one)."""
        self.runner = None
        self.peers.place(slot)
        if slot is None:
            return
        c, layout = self.config, self.config.layout
        stage = layout.stage(slot)
        self.signer.stage, self.signer.pipeline = stage, layout.pipeline(slot)
        state = StageState(c, stage, self.device, self.worker_id, perturb=self.hooks.tampers_measurement(stage))
        neighbour = NeighbourCheck(c, stage, self.device, self.transport, self.peers, self.signer)
        reads_data = stage in (0, c.stages - 1) or (neighbour.replica is not None and stage == 1)
        schedule = (gpipe if c.schedule == "gpipe" else one_f_one_b)(c.stages, c.microbatches)[stage]
        # the plan names stages and pipelines, and so the workers first given those slots: a
        # standby never attacks
        original = self.worker_id == layout.worker_id(slot)
        attacks = (
            original and c.attack is not None and layout.pipeline(slot) in AttackPlan.from_json(c.attack).pipelines
        )
        attack = make_attack(c.attack, stage, c.model.vocab_size) if attacks else None
        if isinstance(attack, PlanAttack):
            attack.relay_equivocation = c.verification == "redundant_neighbour" and c.input_via == "upstream"
        self.runner = StepRunner(
            c,
            stage,
            schedule,
            state,
            neighbour,
            self.transport,
            self.peers,
            self.signer,
            attack if attack is not None else NoAttack(),
            self.hooks.skew(stage) if original else None,
            batches_for(c) if reads_data else None,
            self.device,
            shard=layout.replica(slot),
            forge_contribution=original and self.hooks.forge_contribution == (stage, layout.pipeline(slot)),
        )

    def _attest(self, nonce: bytes | None) -> None:
        """Send the coordinator this worker's receipt key and, when attestation is on, the
        evidence that binds it to ``nonce`` and the measurement of what the worker runs."""
        pubkey = bytes(self.signer.key.verify_key)
        message = Evidence(self.worker_id, pubkey, os.getpid(), socket.gethostname()[:255])
        if nonce is not None and self.config.attestation_kind == "dcap":
            try:
                quote = ConfigfsTsmProvider(self.config.tsm_report_root).get_evidence(nonce, pubkey)
                message = dataclasses.replace(message, evidence=quote)
            except AttestError as exc:  # the coordinator refuses the worker with the reason
                message = dataclasses.replace(message, evidence_error=exc.message, evidence_error_code=str(exc.code))
        elif nonce is not None:
            if self.vendor_dir is None:
                raise TransportError("attestation is on but this worker has no vendor folder (--vendor)")
            if self._measurement is None:
                module = self.runner.state.module if self.runner is not None else None
                weights = {k: v.detach().cpu() for k, v in module.state_dict().items()} if module is not None else None
                digest = digest_state_dict(weights) if weights is not None else None
                self._measurement = stage_measurement(self.config, self.stage_index, digest, code_digest())
            device = device_identity(load_vendor(self.vendor_dir), device_id_for(self.rank))
            evidence = SimulatedProvider(device, self._measurement).get_evidence(nonce, pubkey)
            message = dataclasses.replace(message, evidence=evidence)
        send_message(self.transport, COORDINATOR, message)

    def _report_failure(self, exc: TransportError) -> None:
        """Tell the coordinator that peer ``exc.peer`` failed, then wait for it to release us."""
        send_message(self.transport, COORDINATOR, ErrorReport(exc.peer, exc.cause, str(exc)[:2000]))
        while True:  # whatever else comes is ignored
            raw = self.transport.recv_json(COORDINATOR)
            if raw["type"] == Release.TYPE:
                Release.parse(raw)
                raise exc

    # -- serving -----------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            msg = receive(self.transport, COORDINATOR, *SERVED)
            if isinstance(msg, Release):
                return
            control = self._control.get(type(msg))
            if control is not None:
                control(msg)
                continue
            if self.runner is None:
                raise TransportError(f"standby worker {self.worker_id} got a {msg.TYPE!r} request but holds no stage")
            with deterministic(self.config.train.threads):
                self._handlers[type(msg)](msg)

    def _stage(self) -> StepRunner:
        assert self.runner is not None
        return self.runner

    def _on_step(self, msg: Step) -> None:
        """Compute a step and commit it (or play a test hook's crash or hostile message)."""
        runner, step = self._stage(), msg.step
        if self.hooks.step_delay:
            time.sleep(self.hooks.step_delay)
        if self.hooks.crashes(runner.stage, step, msg.attempt):
            crash()
        hostile = self.hooks.hostile_kind(runner.stage, step, self.worker_id)
        commit = runner.run(step, msg.attempt, msg.bypass)
        if self._answer is not None:
            cosignature = self._answer.cosignature
            encoded = cosignature.encode() if cosignature is not None else None
            commit = dataclasses.replace(commit, cosignature=encoded, dispute=self._answer.dispute)
            self._answer = None
        if hostile in ROOT_ATTACKS:
            commit, hostile = altered_root(commit, hostile, self.signer.key), None
        if hostile is not None:
            send_hostile(self.transport, step, hostile, lambda: self._forged_receipt(step))
        send_message(self.transport, COORDINATOR, commit)

    def _forged_receipt(self, step: int) -> bytes:
        """A receipt signed with a key the coordinator never attested (a test hook's message)."""
        self.signer.key = SigningKey.generate()
        zero = b"\0" * 32
        return self.signer.receipt(step, 0, UnitKind.FORWARD, zero, zero, zero, ExecutionEnv.capture(self.device))

    def _on_head(self, msg: WitnessHead) -> None:
        """Check, cosign and keep a step head: answered at once when it is the run's final head,
        else in the next commit (a standby keeps it and answers none but the final one)."""
        answer = self.witness.on_head(msg, self.signer)
        if msg.head.head.final:
            send_message(self.transport, COORDINATOR, answer)
        elif self.runner is not None:
            self._answer = answer

    def _on_update(self, msg: Update) -> None:
        send_message(self.transport, COORDINATOR, self._stage().update(msg.step, msg.contributions))

    def _on_restore(self, msg: Restore) -> None:
        """Return to the state before the step (weights and optimizer state) and drop its gradients."""
        runner = self._stage()
        weights = runner.state.restore(msg.step)
        runner.neighbour.restore()
        send_message(self.transport, COORDINATOR, Restored(msg.step, weights))

    def _on_ranks(self, msg: Ranks) -> None:
        """Take the coordinator's new map of slots to ranks, worker ids and receipt keys (after an eject)."""
        self.peers.update(msg.keys, msg.workers, msg.ranks)

    def _on_assign(self, msg: Assign) -> None:
        """A standby takes a slot: build it (its weights come next, with ``load``). The standby is
        a different worker from the one it replaces: it runs no attack plan."""
        if self.runner is not None or not 0 <= msg.slot < self.config.layout.slots:
            raise TransportError(f"worker {self.worker_id} cannot take slot {msg.slot!r}")
        with deterministic(self.config.train.threads):
            self._setup_stage(msg.slot)

    def _on_snapshot(self, msg: SnapshotRequest) -> None:
        """Send the stage's weights and optimizer state (after the step) for a checkpoint."""
        tensors = self._stage().state.state_tensors("weights", "optimizer")
        self._send_group(lambda meta: Snapshot(msg.step, meta), tensors)

    def _on_load(self, msg: Load) -> None:
        """Load a verified checkpoint's weights and optimizer state sent by the coordinator; every
        tensor is checked against the digest announced with it. With ``replica_only`` the message
        carries only the checked stage's state for this checker's replica (after a computation
        that bypassed this stage, in which the checked stage updated unseen by the replica)."""
        runner = self._stage()
        replica = runner.neighbour.replica
        if msg.replica_only and replica is None:
            raise TransportError(f"worker {self.worker_id} got a malformed load request")
        # A checker's load also carries the checked stage's state for its replica.
        modules: dict[str, torch.nn.Module] = {"": runner.state.module}
        if replica is not None:
            modules["replica_"] = replica.module
        if msg.replica_only:
            del modules[""]
        received = receive_checkpoint(self.transport, msg, modules, runner.stage)
        runner.neighbour.load(received)
        if msg.replica_only:
            send_message(self.transport, COORDINATOR, ReplicaLoaded(msg.step))
            return
        weights = runner.state.load(received.get("weights", {}), received.get("optimizer", {}))
        send_message(self.transport, COORDINATOR, Loaded(msg.step, weights))

    def _on_calibrate(self, msg: Calibrate) -> None:
        """Compute the calibration units the coordinator asks for on this stage's device and kernels
        (:func:`~stagewarden.runtime.calibration.calibration_outputs`, on seed-derived inputs) and
        send their outputs (``unit<i>.<name>``) and the weights they ran with (``weights.<name>``)."""
        runner, units = self._stage(), msg.units
        if not 1 <= units <= CALIBRATION_UNITS:
            raise TransportError(f"worker {self.worker_id} got a malformed calibration request")
        module = runner.state.module
        tensors = [(f"weights.{k}", v.detach().cpu()) for k, v in module.state_dict().items()]
        for i in range(units):
            inputs = calibration_inputs(self.config, runner.stage, i)
            outputs = calibration_outputs(module, inputs, self.config.microbatches)
            for name, t in outputs.items():
                if runner.skew is not None:
                    t = t * (1.0 + runner.skew)
                tensors.append((f"unit{i}.{name}", t.cpu()))
        self._send_group(lambda meta: Calibrated(units, meta), tensors)

    def _on_push(self, msg: Push) -> None:
        """Send the coordinator, without waiting for it to receive them, the committed inputs of the
        sampled units of the step (each ``(micro_batch, kind)``) with the weights the step ran
        with, and with ``snapshot`` the weights and optimizer state after the update (for the
        checkpoint after the step). The coordinator takes them while this worker computes the
        next step; they are what a FETCH of each unit and a snapshot would return."""
        state, step = self._stage().state, msg.step
        record = state.record
        if record is None or record.step != step:
            raise TransportError(f"worker {self.worker_id} got a malformed push request for step {step}")
        tensors: list[tuple[str, torch.Tensor]] = []
        for i, (mb, kind) in enumerate(msg.units):
            unit = record.unit_inputs(mb, kind)
            if unit is None:
                raise TransportError(f"worker {self.worker_id} does not keep unit step {step} {mb} {kind}")
            tensors += [(f"unit{i}.{name}", t) for name, t in unit.items()]
            if state.keep_outputs:  # tolerance mode: the unit's committed output comes too
                tensors += [(f"output{i}.{name}", t) for name, t in record.outputs.get((mb, kind), {}).items()]
        if msg.units:
            tensors += [(f"weights.{name}", t) for name, t in record.weights.items()]
        if msg.snapshot:
            tensors += state.state_tensors("snapshot_weights", "snapshot_optimizer")
        self._send_group(lambda meta: Pushed(step, msg.units, meta), tensors, blocking=False)

    def _on_discard(self, msg: Discard) -> None:
        """Drop the computation of a step the coordinator will not accept (a spot check of the
        step before it failed while it ran): forget its record and gradients, and continue the
        receipt chain from ``chain_head``, the last receipt the coordinator logged."""
        self._stage().state.discard(msg.step)
        self.signer.prev = msg.chain_head

    def _on_fetch(self, msg: Fetch) -> None:
        """Answer a FETCH: the committed input tensors of one unit and the weights it ran with."""
        state, step, mb, kind = self._stage().state, msg.step, msg.micro_batch, msg.kind
        record = state.kept_record(step)
        unit = record.unit_inputs(mb, kind) if record is not None else None
        if unit is None or record is None:
            error = f"unit step {step} micro-batch {mb} {kind} is not kept by {self.worker_id}"
            send_message(self.transport, COORDINATOR, FetchUnavailable(error))
            return
        tensors = [(f"input.{name}", t) for name, t in unit.items()]
        tensors += [(f"weights.{name}", t) for name, t in record.weights.items()]
        if state.keep_outputs:
            tensors += [(f"output.{name}", t) for name, t in record.outputs.get((mb, kind), {}).items()]
        self._send_group(lambda meta: Fetched(step, mb, kind, meta), tensors)

    def _send_group(
        self,
        message: Callable[[tuple[TensorMeta, ...]], TensorGroupMessage],
        tensors: list[tuple[str, torch.Tensor]],
        *,
        blocking: bool = True,
    ) -> None:
        """Send the message ``message`` makes of the tensors' announcements (name, dtype, shape,
        digest), then all their bytes packed in one buffer (:func:`send_tensor_group`)."""
        meta = tuple(TensorMeta.of(name, t) for name, t in tensors)
        send_tensor_group(self.transport, COORDINATOR, message(meta), [t for _, t in tensors], blocking=blocking)
