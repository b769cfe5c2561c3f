"""The schedule interpreter: one step of a stage's schedule, one method per action over a
:class:`StepState`, ending in the step's commitment; and the update that follows it once the
coordinator decides (:class:`StepRunner`).

Each action is a method (``RECV_F``/``RECV_B``: :meth:`StepRunner.receive`, ``F``:
:meth:`~StepRunner.forward`, ``SEND_F``/``SEND_B``: :meth:`~StepRunner.send`, ``B``:
:meth:`~StepRunner.backward`); the attack plan's hooks are called where the plan acts
(:class:`~stagewarden.runtime.attacks.NoAttack` documents each), and every unit's receipt is
signed as the unit ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from stagewarden.attest.headers import TransferKind, encode_header
from stagewarden.attest.receipts import ExecutionEnv, UnitKind
from stagewarden.attest.tensor_digest import (
    TensorDigest,
    aggregate_commitment,
    digest_state_dict,
    gradient_trace_digest,
    last_forward_output_digest,
    tensor_digest,
    update_input_digest,
    update_output_digest,
)
from stagewarden.runtime.attacks import NoAttack
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.data import Batches
from stagewarden.runtime.protocol import CheckReport, Commit, UpdateCommitment, Updated
from stagewarden.runtime.reexecute import export_optimizer_state, optimizer_state_digest
from stagewarden.runtime.route import Route
from stagewarden.runtime.schedule import Action, ActionKind
from stagewarden.runtime.transport import Transport, TransportError
from stagewarden.runtime.units import ForwardState, loss_digest, optimizer_step, stage_backward, stage_forward
from stagewarden.runtime.worker.contributions import apply_aggregate, exchange, flat_gradients
from stagewarden.runtime.worker.grads import backward_output, gather_grads, grads_digest
from stagewarden.runtime.worker.hooks import skew_backward, skew_weights
from stagewarden.runtime.worker.neighbour import NeighbourCheck, Relay
from stagewarden.runtime.worker.peers import Peers
from stagewarden.runtime.worker.signing import Signer
from stagewarden.runtime.worker.state import StageState, StepRecord, digest, unit_tensors


@dataclass
class StepState:
    """Everything one computation of a step holds between its actions."""

    step: int
    record: StepRecord
    weights_digest: bytes
    env: ExecutionEnv
    busy: float = 0.0
    """Seconds spent computing (the forwards, backwards and checks)."""
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    grads_out: dict[int, torch.Tensor] = field(default_factory=dict)
    """The received gradients of the stage's outputs, by micro-batch."""
    states: dict[int, ForwardState] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    grads_in: dict[int, torch.Tensor] = field(default_factory=dict)
    """The gradients of the stage's inputs to send back, by micro-batch."""
    targets: dict[int, torch.Tensor] = field(default_factory=dict)
    losses: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: dict[int, bytes] = field(default_factory=dict)
    """The last stage's logits digests, by micro-batch."""
    relay: Relay = field(default_factory=Relay)
    arrivals: dict[tuple[int, TransferKind], tuple[torch.Tensor, bytes]] = field(default_factory=dict)
    """Each received tensor with the digest its checked header commits to."""
    committed_digests: dict[tuple[int, TransferKind], TensorDigest] = field(default_factory=dict)
    receipts: list[bytes] = field(default_factory=list)
    headers: list[bytes] = field(default_factory=list)
    trace: list[bytes] = field(default_factory=list)
    """The gradient trace, the accumulated gradients' digest after each backward unit."""
    pending: bool = False
    """Whether the last backward unit's trace entry is still to be digested. After a stage's
    backward unit (but stage 0's, whose receipt commits to its gradients) it is digested only when
    the gradients are about to change or the schedule ends, so that the input gradient goes
    upstream first."""
    flat: torch.Tensor | None = None
    """The buffer the stage's gradients are views of, when they are."""

    def known(self, m: int, transfer: TransferKind, tensor: torch.Tensor) -> bytes:
        """The digest of a received tensor, from its checked header when it is unchanged."""
        got = self.arrivals.get((m, transfer))
        return got[1] if got is not None and got[0] is tensor else digest(tensor)

    def commit_digest(self, m: int, transfer: TransferKind, tensor: torch.Tensor) -> bytes:
        """Digest a tensor this unit commits to and sends, keeping the digest for the send."""
        committed = tensor_digest(tensor.detach().cpu())
        self.committed_digests[(m, transfer)] = committed
        return committed.digest


class StepRunner:
    """Runs a stage's schedule each step and its update after it.

    Args:
        config: The run configuration.
        stage: This worker's stage.
        schedule: The stage's actions of one step.
        state: The stage's model, optimizer and kept records.
        neighbour: The stage's part in the redundant-neighbour defence.
        transport: The worker's transport.
        peers: The worker's view of the other stages.
        signer: The worker's signer.
        attack: The stage's behaviour (:class:`~stagewarden.runtime.attacks.NoAttack` when honest).
        skew: The relative numerics skew of a test hook, if any.
        batches: The run's data, on the stages that read it.
        device: Where the stage computes.
        shard: The data-parallel replica whose shard of the data the stage reads.
        forge_contribution: A test hook: send the other replicas twice the committed contribution.
    """

    def __init__(
        self,
        config: RunConfig,
        stage: int,
        schedule: list[Action],
        state: StageState,
        neighbour: NeighbourCheck,
        transport: Transport,
        peers: Peers,
        signer: Signer,
        attack: NoAttack,
        skew: float | None,
        batches: Batches | None,
        device: torch.device,
        *,
        shard: int = 0,
        forge_contribution: bool = False,
    ) -> None:
        self.config, self.stage, self.schedule, self.state = config, stage, schedule, state
        self.shard, self.forge_contribution = shard, forge_contribution
        self.neighbour, self.transport, self.peers, self.signer = neighbour, transport, peers, signer
        self.attack, self.skew, self.batches, self.device = attack, skew, batches, device
        self._actions: dict[ActionKind, Callable[[StepState, Action], None]] = {
            ActionKind.RECV_F: self.receive,
            ActionKind.RECV_B: self.receive,
            ActionKind.F: self.forward,
            ActionKind.SEND_F: self.send,
            ActionKind.SEND_B: self.send,
            ActionKind.B: self.backward,
        }

    # -- the step --------------------------------------------------------------------------------

    def run(self, step: int, attempt: int = 0, bypass: int | None = None) -> Commit:
        """Run this stage's forwards and backwards of ``step``; its commitment: the receipts, the
        received headers and (``redundant_neighbour``) the failed checks.

        ``attempt`` counts recomputations of the step after a detection; ``bypass`` is a stage
        left out of this attempt: its neighbours talk to each other directly
        (:class:`~stagewarden.runtime.route.Route`).
        """
        c = self.config
        self.peers.route = Route(c.stages, bypass)
        self.neighbour.checked = False
        self.attack.attempt = attempt
        st = self.begin(step, attempt)
        for action in self.schedule:  # UPDATE waits for the coordinator's decision
            run_action = self._actions.get(action.kind)
            if run_action is not None:
                run_action(st, action)
        if st.pending:
            st.trace.append(grads_digest(self.state.module, st.flat))
        self.state.grads_trace = (step, st.trace) if c.receipts else None
        st.relay.inputs = st.inputs
        checks, checks_run = self.check_neighbour(st) if c.verification == "redundant_neighbour" else (None, None)
        self.transport.flush()
        losses, logits = None, None
        if self.state.module.is_last:  # the coordinator takes the step's loss as their mean
            losses = tuple(float(st.losses[m]) for m in range(c.microbatches))
            if c.receipts:
                logits = tuple(st.logits[m] for m in range(c.microbatches))
        receipts, headers = tuple(st.receipts), tuple(st.headers)
        root = None
        if c.receipts:  # one signature over this computation's receipts and the headers it sent
            sent = [raw for raw, _ in (*st.relay.sent_f.values(), *st.relay.sent_b.values()) if raw]
            root = self.signer.root(step, receipts, sent)
        contribution = None
        if len(self.peers.group) > 1:  # the digest of what this worker sends its stage's other replicas
            contribution = st.trace[-1] if c.receipts else grads_digest(self.state.module)
        return Commit(
            step,
            receipts,
            headers,
            int(st.busy * 1e9),
            checks,
            checks_run,
            losses,
            logits,
            contribution=contribution,
            root=root,
        )

    def begin(self, step: int, attempt: int) -> StepState:
        """Record the state the step starts from: a recomputation starts from the recorded one."""
        state, s, module = self.state, self.stage, self.state.module
        kept = state.record
        if attempt > 0 and kept is not None and kept.step == step:
            record = StepRecord(step, kept.weights, optimizer=kept.optimizer, weights_digest=kept.weights_digest)
        else:
            if self.attack.swap_weights(s, step, module):
                state.current_digest = None  # the step runs with (and commits to) the swapped weights
            record = state.fresh_record(step)
            self.neighbour.begin_step()
            # a checker's accusation is refereed by re-executing the update that made these weights;
            # a spot check of the previous step may still be running while this step computes
            state.keep_previous(step, self.config.verification in ("redundant_neighbour", "spot_check"))
        state.record = record
        if self.attack.apply_optimizer(s, step, module, state.optimizer):
            state.optimizer_digest = None  # the state the next update starts from is no longer the one digested
        if self.config.receipts and not record.weights_digest:
            record.weights_digest = state.current_digest or digest_state_dict(record.weights)
        return StepState(step, record, record.weights_digest, ExecutionEnv.capture(self.device))

    def _sign(self, st: StepState, m: int, kind: UnitKind, inp: bytes, out: bytes) -> None:
        st.receipts.append(self.signer.receipt(st.step, m, kind, inp, out, st.weights_digest, st.env))

    # -- the actions -------------------------------------------------------------------------------

    def receive(self, st: StepState, action: Action) -> None:
        """``RECV_F``/``RECV_B``: take the neighbour's signed activation or gradient."""
        m = action.microbatch
        assert m is not None
        forward = action.kind is ActionKind.RECV_F
        transfer = TransferKind.ACTIVATION if forward else TransferKind.GRADIENT
        sender = self.peers.neighbour(self.stage, transfer, incoming=True)
        expected = self.peers.expected(self.stage, st.step, m, transfer)
        tensor, header, raw = self.transport.recv_signed(self.peers.ranks[sender], expected)
        (st.inputs if forward else st.grads_out)[m] = tensor
        (st.relay.received_f if forward else st.relay.received_b)[m] = (raw, tensor)
        if header is not None:  # none without receipts: the transfers are not signed
            st.arrivals[(m, transfer)] = (tensor, header.tensor.digest)  # checked against the tensor
            st.headers.append(raw)

    def forward(self, st: StepState, action: Action) -> None:
        """``F``: the forward unit of one micro-batch (on the last stage also the loss)."""
        m = action.microbatch
        assert m is not None
        module, step, s, record = self.state.module, st.step, self.stage, st.record
        began = time.perf_counter()
        received = st.inputs.get(m)
        if module.is_first or module.is_last:
            assert self.batches is not None
            x, y = self.batches.microbatch(step, m, shard=self.shard)
            if module.is_first:
                st.inputs[m] = x.to(self.device)
            st.targets[m] = y.to(self.device)
        st.inputs[m] = self.attack.apply_input(s, step, m, st.inputs[m])
        state = stage_forward(
            module, st.inputs[m], self.config.microbatches, targets=st.targets[m] if module.is_last else None
        )
        output = state.output.detach()
        if self.skew is not None:
            output = output * (1.0 + self.skew)
        st.states[m] = state
        if not module.is_last:  # the last stage sends no activation
            output = self.attack.apply_forward(s, step, m, output, received)
        st.outputs[m] = output
        if self.state.keep_outputs:
            record.outputs[(m, "forward")] = {"output": output}
            if state.loss is not None:
                record.outputs[(m, "forward")]["loss"] = state.loss.detach()
        if state.loss is not None:
            st.losses[m] = state.loss
        st.busy += time.perf_counter() - began
        record.units[(m, "forward")] = unit_tensors(st.inputs[m], st.targets.get(m) if module.is_last else None)
        if self.config.receipts:
            in_digest = st.known(m, TransferKind.ACTIVATION, st.inputs[m])
            if module.is_last:  # the logits and the loss the run reports
                st.logits[m] = digest(output)
                out_digest = last_forward_output_digest(st.logits[m], loss_digest(st.losses[m]))
            else:
                out_digest = st.commit_digest(m, TransferKind.ACTIVATION, output)
            self._sign(st, m, UnitKind.FORWARD, in_digest, out_digest)

    def send(self, st: StepState, action: Action) -> None:
        """``SEND_F``/``SEND_B``: send the committed activation or input gradient under a signed header."""
        m = action.microbatch
        assert m is not None
        step, s = st.step, self.stage
        forward = action.kind is ActionKind.SEND_F
        transfer = TransferKind.ACTIVATION if forward else TransferKind.GRADIENT
        committed = (st.outputs if forward else st.grads_in).pop(m)
        if self.attack.withholds(s, step, m):
            self.withhold()
        sent = self.attack.outgoing(s, step, m, "forward" if forward else "backward", committed)
        receiver = self.peers.neighbour(s, transfer, incoming=False)
        signed = self.transport.send_signed(
            self.peers.ranks[receiver],
            sent,
            self.signer.header(step, m, transfer, receiver),
            self.signer.key,
            blocking=False,
            digest=st.committed_digests.get((m, transfer)) if sent is committed else None,
        )
        raw = b"" if signed is None else encode_header(signed)
        (st.relay.sent_f if forward else st.relay.sent_b)[m] = (raw, sent)
        if forward:
            st.relay.committed_f[m] = committed

    @staticmethod
    def withhold() -> None:
        """Stay alive (the heartbeat goes on) and silent from here on."""
        threading.Event().wait()

    def backward(self, st: StepState, action: Action) -> None:
        """``B``: the backward unit of one micro-batch, accumulating the parameter gradients."""
        m = action.microbatch
        assert m is not None
        module, step, s, record = self.state.module, st.step, self.stage, st.record
        receipts_on = self.config.receipts
        unit = unit_tensors(st.inputs[m], st.targets.get(m) if module.is_last else None)
        if m in st.grads_out:
            unit["grad_output"] = st.grads_out[m]
        if st.pending:
            st.trace.append(grads_digest(module, st.flat))
            st.pending = False
        self.attack.apply_accumulated(s, step, m, module)
        before: dict[str, torch.Tensor] = {}
        if self.state.keeps_state:  # the unit commits to the accumulated gradients: keep those before it
            # (no copy: the unit's gradients go into fresh tensors, added to these afterwards)
            for name, p in module.named_parameters():
                if p.grad is not None:
                    before[name] = unit[f"grad_before.{name}"] = p.grad.detach()
                    p.grad = None
        began = time.perf_counter()
        state = st.states.pop(m)
        grad = stage_backward(state, st.grads_out.get(m))
        if before or receipts_on:  # the gradients so far, in one buffer: hashed in one pass
            st.flat = gather_grads(module, before, st.flat, self.state.grad_buffers.taker(step))
        if self.skew is not None:
            grad = skew_backward(module, grad, self.skew)
        if grad is not None:
            grad = self.attack.apply_backward(s, step, m, grad.detach(), st.grads_out.get(m))
            st.grads_in[m] = grad
        st.busy += time.perf_counter() - began
        record.units[(m, "backward")] = unit
        if self.state.keep_outputs:
            record.outputs[(m, "backward")] = backward_output(module, grad)
        if receipts_on:
            # the receipt's output: the input gradient, or on stage 0 the accumulated
            # gradients, the unit's gradient trace entry (the update commits to all entries)
            if grad is None:
                out_digest = grads_digest(module, st.flat)
                st.trace.append(out_digest)
            else:
                out_digest = st.commit_digest(m, TransferKind.GRADIENT, grad)
                st.pending = True
            in_digest = (
                st.known(m, TransferKind.GRADIENT, st.grads_out[m]) if m in st.grads_out else digest(st.targets[m])
            )
            self._sign(st, m, UnitKind.BACKWARD, in_digest, out_digest)
        st.grads_out.pop(m, None)

    def check_neighbour(self, st: StepState) -> tuple[tuple[CheckReport, ...], int]:
        """Relay the copies the checkers need and, as a checker, check the stage before: the
        failed checks (as the attack plan lets this stage report them) and how many ran."""
        self.neighbour.send_relay(st.step, st.relay, self.attack)
        began = time.perf_counter()
        outcomes = self.neighbour.check(st.step, st.relay, self.batches)
        st.busy += time.perf_counter() - began
        checks_run = len(outcomes)
        outcomes = self.attack.report_checks(self.stage, st.step, outcomes)
        headers = self.neighbour.copy_headers
        checks = tuple(
            CheckReport.from_outcome(o, headers.get(o.microbatch) if o.unit_kind == "forward" else None)
            for o in outcomes
            if not o.passed
        )
        return checks, checks_run

    # -- the update --------------------------------------------------------------------------------

    def update(self, step: int, contributions: tuple[bytes, ...] | None = None) -> Updated:
        """Apply the optimizer step of ``step``; the report of it, with its update receipt. Which
        units of the step are sampled (the update among them) the coordinator says only
        afterwards, in a ``push`` message.

        With replicas the worker first replaces its gradients with the aggregate of its group's
        ``contributions`` (the committed digests, in replica order;
        :mod:`~stagewarden.runtime.worker.contributions`), and its gradient trace gains two
        entries: the commitment to the contributions and the rule, and the aggregate's digest; the
        update receipt commits to both.

        Raises:
            TransportError: The stage has no gradient trace of ``step`` to update from.
        """
        state, c = self.state, self.config
        module, record = state.module, state.record
        assert record is not None
        receipts_on = c.receipts
        # the gradient trace of this step's schedule: the update starts from its last entry
        cached, state.grads_trace = state.grads_trace, None
        if receipts_on and (cached is None or cached[0] != step):
            raise TransportError(f"worker {self.signer.worker_id} has no gradient trace of step {step} to update from")
        trace = cached[1] if cached is not None else []
        before = (record.weights_digest or digest_state_dict(record.weights)) if receipts_on else b""
        optimizer_before = b""
        if receipts_on:
            optimizer_before = state.optimizer_digest or optimizer_state_digest(module, state.optimizer)
        if len(self.peers.group) > 1:
            trace = [*trace, *self._aggregate(step, contributions)]
        if state.keeps_state:  # the step clears them (set to None): the tensors stay as they are
            record.grads = {n: p.grad.detach() for n, p in module.named_parameters() if p.grad is not None}
        began = time.perf_counter()
        optimizer_step(state.optimizer)
        self.attack.apply_update(self.stage, step, module)
        if self.skew is not None:
            skew_weights(module, self.skew)
        self.neighbour.update()
        busy = time.perf_counter() - began
        after = digest_state_dict(module.state_dict())
        state.current_digest = after
        if state.keep_outputs:
            record.outputs[(0, "update")] = {
                f"weights.{k}": v.detach().clone() for k, v in module.state_dict().items()
            } | {f"optimizer.{k}": v for k, v in export_optimizer_state(module, state.optimizer).items()}
        commitment = None
        if receipts_on:
            # the receipt commits to the optimizer state on both sides of the update, so a spot
            # check re-executes it from a state the worker could not choose afterwards
            optimizer_after = optimizer_state_digest(module, state.optimizer)
            state.optimizer_digest = optimizer_after
            env = ExecutionEnv.capture(self.device)
            inp = update_input_digest(gradient_trace_digest(trace), optimizer_before)
            out = update_output_digest(after, optimizer_after)
            receipt = self.signer.receipt(step, 0, UnitKind.UPDATE, inp, out, before, env)
            commitment = UpdateCommitment(receipt, optimizer_before, optimizer_after, tuple(trace))
        return Updated(step, after, int(busy * 1e9), commitment)

    def _aggregate(self, step: int, contributions: tuple[bytes, ...] | None) -> tuple[bytes, bytes]:
        """Exchange gradients with the group and take their aggregate; the commitment to what was
        aggregated (:func:`~stagewarden.attest.tensor_digest.aggregate_commitment`) and the
        aggregate's digest, the two entries the gradient trace gains."""
        if contributions is None:
            raise TransportError(f"the update of step {step} names no contributions to aggregate")
        module = self.state.module
        group = [(rank, worker) for rank, worker, _ in self.peers.group]
        own = next((rank for rank, worker in group if worker == self.signer.worker_id), None)
        if own is None:
            raise TransportError(f"worker {self.signer.worker_id} is not in its own aggregation group")
        mine = flat_gradients(module)
        received = exchange(
            module,
            self.transport,
            group,
            own,
            mine,
            contributions,
            self.peers.audience,
            sent=mine * 2 if self.forge_contribution else None,
        )
        apply_aggregate(module, self.config.aggregation, received)
        return aggregate_commitment(self.config.aggregation, contributions), grads_digest(module)
