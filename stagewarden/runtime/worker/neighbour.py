"""The redundant-neighbour defence on a worker: relaying the copies a checker needs, and, as
the checker of the stage before, recomputing its units on a replica (:class:`NeighbourCheck`).

Stage ``s + 1`` checks stage ``s`` (:mod:`stagewarden.runtime.redundant`). Where the checked
unit's input comes from is the run's ``input_via``: the checked stage itself, the stage before
it, or the coordinator as a trusted relay.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stagewarden.attest.headers import SignedHeader, TransferKind
from stagewarden.runtime.attacks import NoAttack
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.data import Batches
from stagewarden.runtime.protocol.ids import COORDINATOR
from stagewarden.runtime.redundant import CheckOutcome, InputVia, NeighbourReplica
from stagewarden.runtime.transport import Transport, TransportError
from stagewarden.runtime.units import deterministic
from stagewarden.runtime.worker.peers import Peers
from stagewarden.runtime.worker.signing import Signer
from stagewarden.runtime.worker.state import Tensors


@dataclass
class Relay:
    """What one step's schedule exchanged, kept for the redundant-neighbour copies: per
    micro-batch the encoded signed header (``b""`` when the transfers are not signed) and tensor
    received or sent in each direction, and the stage's forward inputs."""

    received_f: dict[int, tuple[bytes, torch.Tensor]] = field(default_factory=dict)
    received_b: dict[int, tuple[bytes, torch.Tensor]] = field(default_factory=dict)
    sent_f: dict[int, tuple[bytes, torch.Tensor]] = field(default_factory=dict)
    sent_b: dict[int, tuple[bytes, torch.Tensor]] = field(default_factory=dict)
    committed_f: dict[int, torch.Tensor] = field(default_factory=dict)
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)


class NeighbourCheck:
    """A stage's part in the redundant-neighbour defence: the copies it relays and, on a stage
    ``s + 1 >= 1`` under ``redundant_neighbour``, the replica of stage ``s`` it checks with.

    Args:
        config: The run configuration.
        stage: This worker's stage.
        device: Where the replica computes.
        transport: The worker's transport.
        peers: The worker's view of the other stages (ranks, ids, keys, the route).
        signer: The worker's signer (a relayed copy may go under a header it signs).
    """

    def __init__(
        self, config: RunConfig, stage: int, device: torch.device, transport: Transport, peers: Peers, signer: Signer
    ) -> None:
        self.config, self.stage, self.device = config, stage, device
        self.transport, self.peers, self.signer = transport, peers, signer
        self.replica: NeighbourReplica | None = None
        if config.verification == "redundant_neighbour" and stage >= 1:  # this stage checks stage s - 1
            self.replica = NeighbourReplica(config.model, config.stages, stage - 1, config.seed, config.train, device)
        self.replica_record: tuple[Tensors, Tensors] | None = None
        """The replica's state before the current step (what a restore of the step returns it to)."""
        self.checked = False
        """Whether the replica recomputed the checked stage's units of the current step."""
        self.copy_headers: dict[int, bytes] = {}
        """The signed headers of the last step's relayed input copies (evidence if ``s - 1`` equivocated)."""

    def begin_step(self) -> None:
        """Remember the replica's state before a new step."""
        if self.replica is not None:
            self.replica_record = self.replica.snapshot()

    def send_relay(self, step: int, relay: Relay, attack: NoAttack) -> None:
        """Send the copies a redundant-neighbour checker needs, as the run's ``input_via`` says.

        With ``checked_worker`` stage ``s`` sends its checker ``s + 1`` the inputs it claims to
        have computed on (under a header it signs itself: nothing binds them to what ``s - 1``
        sent) and the gradients it sent back. With ``upstream`` stage ``s - 1`` sends the checker
        ``s + 1`` the activations it sent ``s`` and the gradients ``s`` sent back, each under its
        original signed header (a relayed activation that differs from the one sent goes under a
        new header: ``s - 1`` equivocates). With ``coordinator`` the trusted relay gets each
        stage's received activations (signed by ``s - 1``) and the gradients ``s`` sent back
        (signed by ``s``) and forwards them: nobody can substitute them. Forward copies go
        first, then gradient copies, in micro-batch order.
        """
        c, s, route = self.config, self.stage, self.peers.route
        M = c.microbatches  # noqa: N806
        copies: list[tuple[bytes, torch.Tensor]] = []
        # with a stage bypassed, a copy goes only to a checker that computes, of a stage that does
        downstream = route.after(s)
        if c.input_via == InputVia.CHECKED_WORKER:
            if not route.checked(s):
                return
            dst = self.peers.ranks[s + 1]
            for m in range(M):
                header = self._activation_header(step, m)
                self.transport.send_signed(dst, relay.inputs[m], header, self.signer.key, blocking=False)
            copies = [relay.sent_b[m] for m in range(M)] if s >= 1 else []
        elif c.input_via == InputVia.UPSTREAM:
            if not route.checked(downstream):
                return
            dst = self.peers.ranks[downstream + 1]
            for m in range(M):
                raw, sent = relay.sent_f[m]
                copy = attack.relay_copy(s, step, m, sent, relay.committed_f[m])
                if copy is not sent and self.transport.signed:
                    raw = self.signer.sign_for(self._activation_header(step, m), copy)
                copies.append((raw, copy))
            copies += [relay.received_b[m] for m in range(M)]
        else:
            dst = COORDINATOR
            if s >= 1 and route.checked(s):
                copies += [relay.received_f[m] for m in range(M)]
            if route.checked(downstream):
                copies += [relay.received_b[m] for m in range(M)]
        for raw, tensor in copies:
            self.transport.send_relayed(dst, raw, tensor)

    def _activation_header(self, step: int, m: int) -> SignedHeader:
        """The header of this stage's activation of micro-batch ``m`` to its next stage on the route."""
        receiver = self.peers.neighbour(self.stage, TransferKind.ACTIVATION, incoming=False)
        return self.signer.header(step, m, TransferKind.ACTIVATION, receiver)

    def check(self, step: int, relay: Relay, batches: Batches | None) -> list[CheckOutcome]:
        """As the checker of stage ``s = this stage - 1``: receive the relayed copies, recompute
        ``s``'s forward and backward units on the replica and compare them bit for bit with what
        ``s`` sent. A bypassed ``s`` computed nothing: there is nothing to check, and its replica,
        like ``s``, is not updated."""
        replica, peers = self.replica, self.peers
        c, me = self.config, self.stage
        s, M = me - 1, c.microbatches  # noqa: N806
        if replica is None or not peers.route.checked(s):
            return []
        upstream = peers.route.before(s)  # where s's input came from, and its gradient went
        via = InputVia(c.input_via)
        inputs: dict[int, torch.Tensor] = {}
        headers: dict[int, bytes] = {}
        grads: dict[int, torch.Tensor] = {}
        if via is InputVia.CHECKED_WORKER:
            src = peers.ranks[s]
            for m in range(M):
                expected = peers.transfer(step, m, TransferKind.ACTIVATION, s, me, token_ids=s == 0)
                inputs[m] = self.transport.recv_signed(src, expected)[0]
        elif s >= 1:
            src = peers.ranks[upstream] if via is InputVia.UPSTREAM else COORDINATOR
            for m in range(M):
                expected = peers.transfer(step, m, TransferKind.ACTIVATION, upstream, s)
                inputs[m], _, raw = self.transport.recv_signed(src, expected)
                if raw:
                    headers[m] = raw
        if s >= 1:
            for m in range(M):
                expected = peers.transfer(step, m, TransferKind.GRADIENT, s, upstream)
                grads[m] = self.transport.recv_signed(src, expected)[0]
        replica.reset_step()
        self.copy_headers = headers
        outcomes = []
        for m in range(M):
            if m in inputs:
                recompute = inputs[m].to(self.device)
            else:  # stage 0 under a trusted channel: the step's data itself
                assert batches is not None
                recompute = batches.microbatch(step, m)[0].to(self.device)
            sent = relay.received_f[m][1].to(self.device)
            outcomes.append(replica.check_forward(step, m, M, recompute, sent, via))
        for m in range(M):
            grad_output = relay.sent_b[m][1].to(self.device)
            sent_grad = grads[m].to(self.device) if m in grads else None
            outcomes.append(replica.check_backward(step, m, grad_output, sent_grad))
        self.checked = True
        return outcomes

    def update(self) -> None:
        """Step the replica's optimizer on the gradients it recomputed (after ``s``'s update)."""
        if self.replica is not None and self.checked:
            with deterministic(self.config.train.threads):
                self.replica.apply_update()
        self.checked = False

    def restore(self) -> None:
        """Return the replica to its state before the current step (the step is restored)."""
        if self.replica is not None and self.replica_record is not None:
            self.replica.resync(*self.replica_record)
        self.checked = False

    def load(self, received: dict[str, Tensors]) -> None:
        """Take the checked stage's verified state for the replica (``replica_weights`` and
        ``replica_optimizer`` of a checkpoint's tensors).

        Raises:
            TransportError: The state does not fit the replica.
        """
        if self.replica is None:
            return
        try:
            self.replica.resync(
                {k: v.to(self.device) for k, v in received["replica_weights"].items()},
                received.get("replica_optimizer", {}),
            )
        except ValueError as exc:
            raise TransportError(f"checkpoint state of the replica of stage {self.replica.checked}: {exc}") from None
        self.replica_record = None
