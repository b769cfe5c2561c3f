"""Verified checkpoints: writing them (in the background from the state the workers pushed, or
asked for), recording, pruning and discarding them, and restoring every stage from one.

A checkpoint holds one state per stage: every computing pipeline holds the same weights and
optimizer state of a stage (the replicas apply one aggregated update, and the coordinator compares
what they report), so it takes the state of each stage's first computing slot, and a restore sends
it to every slot of the stage."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from stagewarden.attest.tensor_digest import (
    digest_state_dict,
    digest_tensor,
    dtype_name,
    weights_digest,
)
from stagewarden.runtime.checkpoint import (
    CheckpointError,
    delete_checkpoint,
    load_checkpoint,
    retired_checkpoints,
    save_checkpoint,
)
from stagewarden.runtime.coordinator.context import CHECKPOINTS_DIR, RunContext
from stagewarden.runtime.coordinator.errors import RunFailed
from stagewarden.runtime.coordinator.wire import tensor_digests
from stagewarden.runtime.protocol import Load, Loaded, Snapshot, SnapshotRequest, TensorMeta, receive, send_message
from stagewarden.runtime.transport import (
    TransportError,
)

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.ledger import Ledger
    from stagewarden.runtime.coordinator.reexecution import Reexecution
    from stagewarden.runtime.coordinator.roster import Roster
    from stagewarden.runtime.coordinator.tally import RunTally


class CheckpointStore:
    """The run's verified checkpoints.

    Attributes:
        root: The run directory's checkpoint folder.
        steps: The steps of the checkpoints written and recorded, oldest first.
    """

    def __init__(self, ctx: RunContext, roster: Roster, ledger: Ledger, tally: RunTally, reexec: Reexecution) -> None:
        self.ctx, self.roster, self.ledger, self.tally, self.reexec = ctx, roster, ledger, tally, reexec
        self.root = ctx.run_dir / CHECKPOINTS_DIR
        self.steps: list[int] = []
        self._writer: ThreadPoolExecutor | None = None
        self._job: tuple[int, Future[Any]] | None = None

    def close(self) -> None:
        """Wait for the background writer to finish and stop it (a checkpoint it wrote but nobody
        recorded does not count)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def send_load(
        self, rank: int, step: int, tensors: list[tuple[str, torch.Tensor]], replica_only: bool = False
    ) -> None:
        """Send a worker state to load (``load``): the tensors' names, dtypes, shapes and digests, then each tensor."""
        meta = tuple(TensorMeta(n, dtype_name(t.dtype), tuple(t.shape), digest_tensor(t)) for n, t in tensors)
        send_message(self.ctx.transport, rank, Load(step, meta, replica_only))
        for _, t in tensors:
            self.ctx.transport.send_tensor(rank, t)

    def due(self, step: int) -> bool:
        """Whether a checkpoint is written after ``step`` (of step ``step + 1``)."""
        c = self.ctx.config
        return self.checkpointing and (step + 1) % c.checkpoint_every == 0 and step + 1 < c.steps

    def save_pushed(
        self,
        step: int,
        state: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
        digests: dict[int, dict[str, dict[str, bytes]]],
        background: bool = False,
    ) -> None:
        """Write the checkpoint of ``step`` from the state the workers pushed after the step
        before it (weights and optimizer state per stage, with the tensor digests computed as it
        was received)."""
        stage = self.roster.layout.stage
        weights = {stage(q): w for q, (w, _) in state.items()}
        optimizer = {stage(q): o for q, (_, o) in state.items()}
        self.save(step, weights, optimizer, background, {stage(q): d for q, d in digests.items()})

    def leads(self) -> list[int]:
        """The slot whose state a checkpoint takes for each stage: its first computing one."""
        return [self.roster.stage_slots(s)[0] for s in range(self.ctx.config.stages)]

    @property
    def checkpointing(self) -> bool:
        """Whether this run writes verified checkpoints (``checkpoint_every`` above 0)."""
        return self.ctx.config.checkpoint_every > 0

    def write(self, step: int) -> None:
        """Get every stage's weights and optimizer state (after ``step`` steps) from its worker,
        digest-checked, and write them as the verified checkpoint of ``step``."""
        c = self.ctx.config
        for s in self.leads():
            send_message(self.ctx.transport, self.roster.rank_of(s), SnapshotRequest(step))
        weights: dict[int, dict[str, torch.Tensor]] = {}
        optimizer: dict[int, dict[str, torch.Tensor]] = {}
        known: dict[int, dict[str, dict[str, bytes]]] = {}
        for s in self.leads():
            snapshot = receive(self.ctx.transport, self.roster.rank_of(s), Snapshot)
            if snapshot.step != step:
                wid = self.roster.slot_ids[s]
                raise TransportError(f"worker {wid} sent the state of step {snapshot.step}, not {step}")
            received, digests = self.reexec.recv_tensors(s, snapshot.tensors, ("weights", "optimizer"))
            weights[s], optimizer[s] = received["weights"], received["optimizer"]
            known[s] = {kind: tensor_digests(received[kind], digests, kind) for kind in ("weights", "optimizer")}
            if step > 0 and weights_digest(known[s]["weights"]).hex() != self.ledger.final_weights.get(s):
                raise TransportError(
                    f"worker {self.roster.slot_ids[s]} sent other weights than its last update reported"
                )
            if c.receipts and weights_digest(known[s]["optimizer"]).hex() != self.ledger.optimizer[s]:
                raise TransportError(
                    f"worker {self.roster.slot_ids[s]} sent another optimizer state than its last update receipt "
                    "commits to"
                )
        stage = self.roster.layout.stage
        self.save(
            step,
            {stage(q): w for q, w in weights.items()},
            {stage(q): o for q, o in optimizer.items()},
            digests={stage(q): d for q, d in known.items()},
        )

    def save(
        self,
        step: int,
        weights: dict[int, dict[str, torch.Tensor]],
        optimizer: dict[int, dict[str, torch.Tensor]],
        background: bool = False,
        digests: dict[int, dict[str, dict[str, bytes]]] | None = None,
    ) -> None:
        """Write every stage's received state as the verified checkpoint of ``step``. With
        ``background`` the files are written (and fsynced) on a thread while the run goes on, and
        the checkpoint counts only once :meth:`finish` has recorded it, which every
        user of the checkpoints calls first. ``digests``: the tensor digests computed as the
        state was received (see :func:`~stagewarden.runtime.checkpoint.save_checkpoint`)."""
        self.finish()
        meta = {"run_id": self.ctx.run_id, "workers": list(self.roster.slot_ids)}
        if background:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
            future = self._writer.submit(
                save_checkpoint, self.root, step, weights, optimizer, meta=meta, digests=digests
            )
            self._job = (step, future)
            return
        try:
            info = save_checkpoint(self.root, step, weights, optimizer, meta=meta, digests=digests)
        except CheckpointError as exc:
            raise RunFailed(f"cannot write the checkpoint of step {step}: {exc}") from None
        self._record(step, info)

    def finish(self) -> None:
        """Wait for a checkpoint being written in the background, and record it.

        Raises:
            RunFailed: It could not be written.
        """
        job, self._job = self._job, None
        if job is None:
            return
        step, future = job
        try:
            info = future.result()
        except CheckpointError as exc:
            raise RunFailed(f"cannot write the checkpoint of step {step}: {exc}") from None
        self._record(step, info)

    def _record(self, step: int, info: Any) -> None:
        self.steps.append(step)
        self.ctx.events.write(
            "checkpoint",
            step=step,
            weights={str(k): v for k, v in info.weights_digests.items()},
            manifest=info.manifest_digest,
        )
        for old in retired_checkpoints(self.steps, self.ctx.config.keep_checkpoints):
            delete_checkpoint(self.root, old)
            self.steps.remove(old)
            self.ctx.events.write("checkpoint_pruned", step=old)

    def restore(self, step: int) -> None:
        """Load the verified checkpoint of ``step`` and send every stage its weights and optimizer
        state (digest-checked by the worker); check the weights each worker reports."""
        c = self.ctx.config
        self.finish()
        try:
            checkpoint = load_checkpoint(self.root, step)
        except CheckpointError as exc:
            raise RunFailed(f"cannot restore the checkpoint of step {step}: {exc}") from None
        layout, slots = self.roster.layout, self.roster.slots
        for q in slots:
            s = layout.stage(q)
            tensors = [(f"weights.{k}", v) for k, v in checkpoint.stage_states[s].items()]
            tensors += [(f"optimizer.{k}", v) for k, v in checkpoint.optimizer_states.get(s, {}).items()]
            if c.verification == "redundant_neighbour" and s >= 1:  # the checker's replica of s - 1
                tensors += [(f"replica_weights.{k}", v) for k, v in checkpoint.stage_states[s - 1].items()]
                tensors += [
                    (f"replica_optimizer.{k}", v) for k, v in checkpoint.optimizer_states.get(s - 1, {}).items()
                ]
            self.send_load(self.roster.rank_of(q), step, tensors)
        for q in slots:
            loaded = receive(self.ctx.transport, self.roster.rank_of(q), Loaded)
            reported = loaded.weights.hex()
            if loaded.step != step or reported != checkpoint.info.weights_digests[layout.stage(q)]:
                raise TransportError(f"worker {self.roster.slot_ids[q]} did not load the checkpoint of step {step}")
            self.ledger.final_weights[q] = reported
        self.ledger.last_updates = {}  # every stage's weights are now the verified checkpoint's
        optimizers = {s: digest_state_dict(checkpoint.optimizer_states.get(s, {})).hex() for s in range(c.stages)}
        self.ledger.optimizer = {q: optimizers[layout.stage(q)] for q in range(layout.slots)}
        self.ledger.weights = {q: checkpoint.info.weights_digests[layout.stage(q)] for q in range(layout.slots)}
        self.ledger.undo = {}
        del self.tally.losses[step:]
        del self.tally.metrics[step:]
        self.ctx.events.write(
            "restored_checkpoint",
            step=step,
            weights={str(k): v for k, v in checkpoint.info.weights_digests.items()},
        )

    def discard_after(self, step: int) -> None:
        """Forget and delete the checkpoints after ``step``: they hold weights a rollback discards
        (the manifest goes first, so an interrupted delete never leaves a complete-looking folder)."""
        for stale in [t for t in self.steps if t > step]:
            delete_checkpoint(self.root, stale)
            self.steps.remove(stale)
            self.ctx.events.write("checkpoint_discarded", step=stale)
