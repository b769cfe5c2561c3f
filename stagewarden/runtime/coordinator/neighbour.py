"""The coordinator's part in the redundant-neighbour defence: the trusted relay of the checked
stages' inputs to their checkers (``input_via: coordinator``), and the checker's copy brought up
to date after a computation that bypassed it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stagewarden.attest.headers import TransferKind
from stagewarden.attest.tensor_digest import weights_digest
from stagewarden.runtime.coordinator.context import CurrentAttempt, RunContext
from stagewarden.runtime.coordinator.wire import tensor_digests
from stagewarden.runtime.protocol import ReplicaLoaded, Snapshot, SnapshotRequest, receive, send_message
from stagewarden.runtime.transport import Expected, TransportError

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.checkpoints import CheckpointStore
    from stagewarden.runtime.coordinator.ledger import Ledger
    from stagewarden.runtime.coordinator.reexecution import Reexecution
    from stagewarden.runtime.coordinator.roster import Roster


class NeighbourRelay:
    """Relays the checkers' inputs and resynchronises a bypassed checker (one pipeline only)."""

    def __init__(
        self,
        ctx: RunContext,
        roster: Roster,
        ledger: Ledger,
        reexec: Reexecution,
        store: CheckpointStore,
        current: CurrentAttempt,
    ) -> None:
        self.ctx, self.roster, self.ledger, self.reexec, self.store, self.current = (
            ctx,
            roster,
            ledger,
            reexec,
            store,
            current,
        )

    def resync_bypassed_checker(self, step: int, bypass: int) -> None:
        """After a computation of ``step`` that bypassed ``bypass``: the stage before it updated
        while its checker (the bypassed worker) computed nothing, so the checker's replica takes
        that stage's new state, which must be the one its update receipt commits to."""
        s, c = bypass - 1, self.ctx.config
        wid = self.roster.slot_ids[s]
        send_message(self.ctx.transport, self.roster.rank_of(s), SnapshotRequest(step + 1))
        snapshot = receive(self.ctx.transport, self.roster.rank_of(s), Snapshot)
        received, digests = self.reexec.recv_tensors(s, snapshot.tensors, ("weights", "optimizer"))
        weights = weights_digest(tensor_digests(received["weights"], digests, "weights")).hex()
        optimizer = weights_digest(tensor_digests(received["optimizer"], digests, "optimizer")).hex()
        if snapshot.step != step + 1 or weights != self.ledger.final_weights.get(s):
            raise TransportError(f"worker {wid} sent other weights than its update of step {step} reported")
        if c.receipts and optimizer != self.ledger.optimizer[s]:
            raise TransportError(f"worker {wid} sent another optimizer state than its update receipt of step {step}")
        tensors = [(f"replica_weights.{k}", v) for k, v in received["weights"].items()]
        tensors += [(f"replica_optimizer.{k}", v) for k, v in received["optimizer"].items()]
        self.store.send_load(self.roster.rank_of(bypass), step + 1, tensors, replica_only=True)
        loaded = receive(self.ctx.transport, self.roster.rank_of(bypass), ReplicaLoaded)
        if loaded.step != step + 1:
            raise TransportError(f"worker {self.roster.slot_ids[bypass]} did not load its replica of stage {s}")

    def relay_copies(self, step: int) -> None:
        """The trusted relay of ``input_via: coordinator``: for each checked stage ``s`` receive
        from ``s`` the activations it received (under ``s - 1``'s signed headers) and from
        ``s - 1`` the gradients ``s`` sent back (under ``s``'s), check them, and forward them to
        the checker ``s + 1``: what ``s`` really computed on, which no worker can substitute."""
        c, route = self.ctx.config, self.current.route
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
                        run_id=self.ctx.run_id,
                        sender=self.roster.slot_ids[sender],
                        sender_key=self.roster.keys[self.roster.slot_ids[sender]],
                        sender_stage=sender,
                        receiver_stage=receiver,
                        step=step,
                        micro_batch=m,
                        kind=kind,
                        dtype="float32",
                        shape=(c.batch_size, c.model.block_size, c.model.n_embd),
                    )
                    tensor, _, raw = self.ctx.transport.recv_signed(self.roster.rank_of(source), expected)
                    self.ctx.transport.send_relayed(self.roster.rank_of(s + 1), raw, tensor)
