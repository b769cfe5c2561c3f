"""A stage worker: attests at start, runs its stage's schedule each step, signs receipts and
answers the coordinator's requests (commit, fetch, update).

One process per stage (rank ``stage + 1``); a standby worker (rank ``S + 1 + k``) attests and then
waits idle for an assignment. The worker talks to the coordinator (rank 0) with control messages
and to its neighbours with signed tensor transfers (:mod:`stagewarden.runtime.transport`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from nacl.signing import SigningKey

from stagewarden.attest.errors import AttestError
from stagewarden.attest.headers import SignedHeader, TransferKind, encode_header, sign_header
from stagewarden.attest.providers import ConfigfsTsmProvider, SimulatedProvider
from stagewarden.attest.receipts import (
    ExecutionEnv,
    Receipt,
    UnitKind,
    chain_genesis,
    encode_receipt,
    receipt_digest,
    sign_receipt,
)
from stagewarden.attest.tensor_digest import (
    TensorDigest,
    digest_state_dict,
    digest_tensor,
    dtype_name,
    gradient_trace_digest,
    gradients_digest,
    last_forward_output_digest,
    tensor_digest,
    update_input_digest,
    update_output_digest,
    views_cover,
)
from stagewarden.attest.vendor import device_identity, load_vendor
from stagewarden.runtime.attacks import (
    TENSOR_KINDS,
    AttackKind,
    AttackPlan,
    Direction,
    equivocate,
    poison_data,
    tamper_gradients,
    tamper_optimizer,
    tamper_tensor,
    tamper_weights,
)
from stagewarden.runtime.calibration import CALIBRATION_UNITS, calibration_inputs, calibration_outputs
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.data import Batches
from stagewarden.runtime.liveness import Heartbeat
from stagewarden.runtime.measure import code_digest, stage_measurement
from stagewarden.runtime.model import StageModule, build_stage
from stagewarden.runtime.protocol import (
    Admitted,
    Assign,
    Calibrate,
    Calibrated,
    CheckReport,
    Commit,
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
    Push,
    Pushed,
    Ranks,
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
    UpdateCommitment,
    Updated,
    receive,
    send_message,
    send_tensor_group,
)
from stagewarden.runtime.redundant import CheckOutcome, InputVia, NeighbourReplica
from stagewarden.runtime.route import Route
from stagewarden.runtime.schedule import ActionKind, gpipe, one_f_one_b
from stagewarden.runtime.spotcheck import (
    export_optimizer_state,
    import_optimizer_state,
    optimizer_state_digest,
    optimizer_state_view,
)
from stagewarden.runtime.transport import Expected, Transport, TransportError
from stagewarden.runtime.units import (
    ForwardState,
    deterministic,
    loss_digest,
    make_optimizer,
    optimizer_step,
    stage_backward,
    stage_forward,
)

#: Test-only hook: a stage index whose worker perturbs its initial weights before measuring them.
TAMPER_MEASUREMENT_ENV = "STAGEWARDEN_TEST_TAMPER_MEASUREMENT"
#: Test-only hook: ``STAGE:STEP``; that worker exits abruptly when step STEP starts.
CRASH_ENV = "STAGEWARDEN_TEST_CRASH"
#: Test hook: ``<stage>:<step>:<kind>`` makes the first worker of ``stage`` compute ``step`` and then
#: send the coordinator a crafted message of ``kind`` (see :data:`HOSTILE_MESSAGES`) instead of its
#: commitment, and then stay alive and silent.
HOSTILE_ENV = "STAGEWARDEN_TEST_HOSTILE"
#: The crafted messages :data:`HOSTILE_ENV` can send.
HOSTILE_MESSAGES = ("garbage", "oversize", "negative", "wrong_type", "bad_receipt", "forged_receipt", "deep_json")
#: Test hook: ``<stage>:<e>`` makes the first worker of ``stage`` multiply every output it commits
#: (activations or logits, input gradients, stage 0's accumulated gradients, its weights after an
#: update, its calibration outputs) by ``1 + e`` before committing: an honest worker whose
#: hardware or kernels differ from the verifier's by a relative ``e``.
NUMERICS_ENV = "STAGEWARDEN_TEST_NUMERICS"

COORDINATOR = 0


def worker_id_for(stage: int, replica: int = 0) -> str:
    """The id of the worker running ``stage`` of ``replica`` (``s<stage>r<replica>``)."""
    return f"s{stage}r{replica}"


def standby_id_for(index: int) -> str:
    """The id of standby worker ``index`` (``standby<index>``)."""
    return f"standby{index}"


def device_id_for(rank: int) -> str:
    """The simulated device id of the process of ``rank``."""
    return f"sim-device-{rank}"


class NoAttack:
    """The honest behaviour: every hook returns its argument unchanged.

    ``received`` is the message the unit received (the input activation of a forward unit, the
    gradient of the output of a backward unit), ``None`` where there is none.
    """

    attempt = 0
    """How often the current step has been recomputed after a detection (set by the worker)."""

    def apply_input(self, stage: int, step: int, micro_batch: int, inputs: torch.Tensor) -> torch.Tensor:
        """Transform the input of a forward unit (token ids on stage 0, the received activation otherwise)."""
        return inputs

    def apply_forward(
        self, stage: int, step: int, micro_batch: int, output: torch.Tensor, received: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Transform the output activation a forward unit commits to in its receipt (or the last stage's logits)."""
        return output

    def apply_backward(
        self, stage: int, step: int, micro_batch: int, grad: torch.Tensor, received: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Transform the input gradient a backward unit commits to in its receipt."""
        return grad

    def outgoing(
        self, stage: int, step: int, micro_batch: int, direction: str, committed: torch.Tensor
    ) -> torch.Tensor:
        """What is actually sent to the neighbour, given what the receipt commits to (``direction``:
        ``forward`` or ``backward``). Honest: the committed tensor."""
        return committed

    def apply_update(self, stage: int, step: int, module: torch.nn.Module) -> None:
        """Change the stage's weights in place after the optimizer step."""

    def apply_optimizer(self, stage: int, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """Change the stage's optimizer state in place at the start of ``step`` (after the state
        before the step is recorded); whether it changed."""
        return False

    def apply_accumulated(self, stage: int, step: int, micro_batch: int, module: torch.nn.Module) -> None:
        """Change the stage's accumulated parameter gradients in place right before its backward
        unit of ``micro_batch`` (after the previous unit committed to them)."""

    def swap_weights(self, stage: int, step: int, module: torch.nn.Module) -> bool:
        """Change the stage's weights in place at the start of ``step``, before the worker records
        them as the weights the step runs with; whether it changed them."""
        return False

    def withholds(self, stage: int, step: int, micro_batch: int) -> bool:
        """Whether the stage keeps back its message of ``micro_batch`` and everything after it
        (``withhold``: it stays alive and silent). Honest: never."""
        return False

    def report_checks(self, stage: int, step: int, outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
        """What a checking stage (redundant neighbour) reports of its checks. Honest: the outcomes."""
        return outcomes

    def relay_copy(
        self, stage: int, step: int, micro_batch: int, sent: torch.Tensor, committed: torch.Tensor
    ) -> torch.Tensor:
        """The activation this stage relays to its next stage's checker (``input_via: upstream``),
        given what it sent and what its receipt commits to. Honest: what it sent."""
        return sent


class PlanAttack(NoAttack):
    """A malicious stage's behaviour for an :class:`~stagewarden.runtime.attacks.AttackPlan`.

    Where each kind acts:

    * tensor kinds (``reverse``, ``random``, ``scale``, ``noise``, ``bitflip``, ``lazy``,
      ``replay``): on the output activation (direction ``forward``) or the input gradient
      (``backward``) before it is committed and sent; the receipt commits to what is sent.
      ``lazy`` resends this stage's message of the same micro-batch at the previous step, else
      what it received, else zeros; ``replay`` sends the last message this stage sent before this
      one (the previous micro-batch, or the last of the previous step), and cannot fire on the
      stage's very first message;
    * ``poison_data``: on stage 0's token ids before the forward (the receipt commits to the
      poisoned ids);
    * ``weights``: on the parameters after the real optimizer step (the update receipt commits to
      the tampered weights);
    * ``optimizer``: on the optimizer state at the start of a step;
    * ``grad_drift``: on the accumulated parameter gradients right before a backward unit (its
      messages stay honest; the unit, and the gradient trace the update commits to, carry the
      drift on);
    * ``swap_weights``: on the weights at the start of a step, before the worker records them
      (its receipts commit to the swapped weights, and a restore of the step brings them back);
    * ``equivocate``: the receipt (and so FETCH, which returns the unit's inputs and weights)
      commits to the honest message, while the negated message is sent to the neighbour under a
      header signed by this stage;
    * tensor kinds with direction ``input``: on the received activation before the forward, so
      the stage sends an output consistent with the forged input (and relays the forged input
      to its checker under ``input_via: checked_worker``);
    * as a checking stage (``redundant_neighbour``): a malicious checker never reports a failed
      check of a stage it colludes with (one named in the same plan), and ``false_accuse``
      reports a mismatch in every checked forward unit the attack fires on; a stage named only
      in the plan's ``covers`` does nothing else;
    * as a relay (``input_via: upstream``): a forward ``equivocate`` stage sends its next stage
      the honest activation its receipt commits to and that stage's checker the negated one
      under a second signed header (the prover's framing strategy).
    """

    def __init__(self, plan: AttackPlan, vocab_size: int) -> None:
        self.plan = plan
        self.vocab_size = vocab_size
        self.attempt = 0
        self.relay_equivocation = False
        """Set by the worker when it relays its activations to a checker (``input_via: upstream``)."""
        self._last_sent: dict[tuple[str, int], torch.Tensor] = {}
        self._previous: dict[str, torch.Tensor] = {}

    def _fires(self, stage: int, step: int, micro_batch: int) -> bool:
        return self.plan.active(stage, step, micro_batch, self.attempt)

    def apply_input(self, stage: int, step: int, micro_batch: int, inputs: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        if plan.kind is AttackKind.POISON_DATA and stage == 0 and self._fires(stage, step, micro_batch):
            return poison_data(inputs, plan, step, micro_batch, self.vocab_size)
        if plan.direction is Direction.INPUT and stage > 0 and plan.kind in TENSOR_KINDS:
            return self._message(Direction.INPUT, stage, step, micro_batch, inputs, None)
        return inputs

    def relay_copy(
        self, stage: int, step: int, micro_batch: int, sent: torch.Tensor, committed: torch.Tensor
    ) -> torch.Tensor:
        if (
            self.relay_equivocation
            and self.plan.kind is AttackKind.EQUIVOCATE
            and self.plan.direction is Direction.FORWARD
            and self._fires(stage, step, micro_batch)
        ):
            return equivocate(committed).sent  # the next stage got the honest activation
        return sent

    def _message(
        self, direction: Direction, stage: int, step: int, mb: int, tensor: torch.Tensor, received: torch.Tensor | None
    ) -> torch.Tensor:
        plan = self.plan
        out = tensor
        if plan.kind in TENSOR_KINDS and plan.direction is direction and self._fires(stage, step, mb):
            out = tamper_tensor(
                plan,
                tensor,
                stage=stage,
                step=step,
                microbatch=mb,
                stale=self._last_sent.get((direction.value, mb)),
                stage_input=received,
                earlier=self._previous.get(direction.value),
            )
        return out

    def apply_forward(
        self, stage: int, step: int, micro_batch: int, output: torch.Tensor, received: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._message(Direction.FORWARD, stage, step, micro_batch, output, received)

    def apply_backward(
        self, stage: int, step: int, micro_batch: int, grad: torch.Tensor, received: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._message(Direction.BACKWARD, stage, step, micro_batch, grad, received)

    def outgoing(
        self, stage: int, step: int, micro_batch: int, direction: str, committed: torch.Tensor
    ) -> torch.Tensor:
        sent = committed
        if (
            self.plan.kind is AttackKind.EQUIVOCATE
            and self.plan.direction.value == direction
            and not (self.relay_equivocation and direction == "forward")
            and self._fires(stage, step, micro_batch)
        ):
            sent = equivocate(committed).sent
        self._last_sent[(direction, micro_batch)] = sent.detach()
        self._previous[direction] = sent.detach()
        return sent

    def report_checks(self, stage: int, step: int, outcomes: list[CheckOutcome]) -> list[CheckOutcome]:
        plan, reported = self.plan, []
        for o in outcomes:
            if not o.passed and o.checked in plan.stages:  # hide a colluder's tampering
                o = dataclasses.replace(o, passed=True, blamed=None, max_abs_diff=0.0)
            if (
                plan.kind is AttackKind.FALSE_ACCUSE
                and o.passed
                and o.unit_kind == "forward"
                and o.checked not in plan.stages
                and self._fires(stage, step, o.microbatch)
            ):
                o = dataclasses.replace(o, passed=False, blamed=o.checked, max_abs_diff=float("inf"))
            reported.append(o)
        return reported

    def withholds(self, stage: int, step: int, micro_batch: int) -> bool:
        return self.plan.kind is AttackKind.WITHHOLD and self._fires(stage, step, micro_batch)

    def apply_optimizer(self, stage: int, step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        if self.plan.kind is not AttackKind.OPTIMIZER or not self._fires(stage, step, 0):
            return False
        state = optimizer_state_view(module, optimizer)
        tampered = tamper_optimizer(self.plan, stage, state)
        with torch.no_grad():
            for key, value in tampered.items():
                state[key].copy_(value)
        return bool(tampered)

    def apply_accumulated(self, stage: int, step: int, micro_batch: int, module: torch.nn.Module) -> None:
        if self.plan.kind is not AttackKind.GRAD_DRIFT or not self._fires(stage, step, micro_batch):
            return
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.detach() for n, p in params}
        tampered = tamper_gradients(self.plan, stage, grads)
        with torch.no_grad():
            for name, p in params:
                p.grad = tampered[name]

    def swap_weights(self, stage: int, step: int, module: torch.nn.Module) -> bool:
        if self.plan.kind is not AttackKind.SWAP_WEIGHTS or not self._fires(stage, step, 0):
            return False
        self._drift_weights(stage, module)
        return True

    def apply_update(self, stage: int, step: int, module: torch.nn.Module) -> None:
        if self.plan.kind is AttackKind.WEIGHTS and self._fires(stage, step, 0):
            self._drift_weights(stage, module)

    def _drift_weights(self, stage: int, module: torch.nn.Module) -> None:
        """Move the stage's parameters in place along the plan's drift direction (:func:`tamper_weights`)."""
        params = dict(module.named_parameters())
        tampered = tamper_weights(self.plan, stage, {k: v.detach() for k, v in params.items()})
        with torch.no_grad():
            for name, value in tampered.items():
                params[name].copy_(value)


def make_attack(plan: Any, stage: int, vocab_size: int = 256) -> NoAttack | None:
    """The attack object a worker of ``stage`` applies for the run's attack plan; ``None`` for no plan.

    The plan is JSON data from :attr:`RunConfig.attack <stagewarden.runtime.config.RunConfig.attack>`
    (:meth:`AttackPlan.to_json <stagewarden.runtime.attacks.AttackPlan.to_json>`). A stage the
    plan does not name gets :class:`NoAttack`; a malicious stage gets :class:`PlanAttack`.

    Raises:
        ValueError: The plan is malformed.
    """
    if plan is None:
        return None
    parsed = AttackPlan.from_json(plan)
    return PlanAttack(parsed, vocab_size) if stage in parsed.stages | parsed.covers else NoAttack()


@dataclass
class StepRecord:
    """What a worker keeps of the current step until the next one starts: the committed unit
    inputs, the weights the step ran with and, when the run verifies or responds, the optimizer
    state before the step and the accumulated gradients of its update (so the coordinator can
    fetch them, and a recomputation can start from the state before the step)."""

    step: int
    weights: dict[str, torch.Tensor]
    units: dict[tuple[int, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizer: dict[str, torch.Tensor] | None = None
    grads: dict[str, torch.Tensor] | None = None
    weights_digest: bytes = b""
    """:func:`~stagewarden.attest.tensor_digest.digest_state_dict` of ``weights`` (with receipts on)."""
    outputs: dict[tuple[int, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    """With ``spot_check_compare = "tolerance"``: each unit's committed output, by micro-batch and
    kind (``output``; ``grad_input``, or ``grad.<parameter>`` on stage 0; ``weights.<name>`` after
    the update, under micro-batch 0), for FETCH."""


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
    """

    def __init__(
        self, config: RunConfig, rank: int, transport: Transport, vendor_dir: str | None, *, heartbeats: Any
    ) -> None:
        self.config = config
        self.rank = rank
        self.heartbeats = heartbeats
        self.transport = transport
        self.vendor_dir = vendor_dir
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if config.device == "cuda" else torch.device("cpu")
        )
        self.key = SigningKey.generate()
        self.run_id = ""
        self.worker_id = ""
        self.stage_index: int | None = None
        self.keys: dict[int, bytes] = {}
        self.ids: dict[int, str] = {}
        self.prev = b""
        self.record: StepRecord | None = None
        self.previous: StepRecord | None = None
        self.attack: NoAttack | None = None
        self.route = Route(config.stages)
        """Who this stage talks to in the current computation (another route when a stage is bypassed)."""
        self.busy = 0.0
        self.ranks: dict[int, int] = {}
        self.replica: NeighbourReplica | None = None
        self.replica_record: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self.replica_checked = False
        self.copy_headers: dict[int, bytes] = {}
        self.grads_trace: tuple[int, list[bytes]] | None = None
        """The step and gradient trace of the stage's last schedule (the digest of its accumulated
        gradients after each backward unit, in micro-batch order), which its update commits to."""
        self.grad_buffers = _BufferPool()
        """Flat gradient buffers, reused once no kept step record can hold views of them."""
        self.current_digest: bytes | None = None
        """The digest of the stage's current weights when known (after an update, a restore or a
        load), so the next step need not hash them again."""
        self.optimizer_digest: bytes | None = None
        """The digest of the stage's optimizer state when known (the state after the last update,
        which the next update starts from), so the next update need not hash it again."""
        self.keep_outputs = config.spot_check_compare == "tolerance"
        """Whether to keep each unit's committed output for FETCH (tolerance-mode spot checks)."""
        self.skew: float | None = None
        """The relative ``e`` of the ``STAGEWARDEN_TEST_NUMERICS`` test hook for this worker's stage, if any."""

    # -- start --------------------------------------------------------------------------------

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
        self.run_id = hello.run_id
        self.worker_id = hello.worker_id
        self.stage_index = hello.stage
        head = hello.chain_head
        self.prev = head if head is not None else chain_genesis(self.run_id, self.worker_id)
        with deterministic(self.config.train.threads):
            self._setup_stage()
            self._attest(hello.nonce)
        reply = receive(self.transport, COORDINATOR, Admitted, Refused, Shutdown)
        if not isinstance(reply, Admitted):
            return
        self.keys, self.ids, self.ranks = dict(reply.keys), dict(reply.workers), dict(reply.ranks)
        heartbeat = Heartbeat(
            self.heartbeats,
            self.run_id,
            hello.session,
            self.rank,
            self.key,
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

    def _send_hostile(self, step: int, kind: str) -> None:
        """The :data:`HOSTILE_ENV` test hook: send a crafted message, then stay silent."""
        if kind == "garbage":
            self.transport.send_bytes(COORDINATOR, b"\xff\xfe{not json at all")
        elif kind in ("oversize", "negative"):
            length = torch.tensor([1 << 40 if kind == "oversize" else -5], dtype=torch.int64)
            self.transport._send(COORDINATOR, [length], True)  # noqa: SLF001 - a frame no honest sender makes
        elif kind == "wrong_type":
            send_message(self.transport, COORDINATOR, SnapshotRequest(step))
        elif kind == "bad_receipt":
            self.transport.send_json(
                COORDINATOR, {"type": "commit", "step": step, "receipts": ["zz"], "headers": [], "busy_ns": 0}
            )
        elif kind == "forged_receipt":
            self.key = SigningKey.generate()  # sign with a key the coordinator never attested
            zero = b"\0" * 32
            receipt = self._receipt(step, 0, UnitKind.FORWARD, zero, zero, zero, ExecutionEnv.capture(self.device))
            send_message(self.transport, COORDINATOR, Commit(step, (receipt,), (), 0))
        elif kind == "deep_json":
            self.transport.send_bytes(COORDINATOR, b"[" * 100_000 + b"]" * 100_000)
        else:
            raise ValueError(f"unknown hostile message kind {kind!r} (one of {', '.join(HOSTILE_MESSAGES)})")
        threading.Event().wait()

    def _report_failure(self, exc: TransportError) -> None:
        """Tell the coordinator that peer ``exc.peer`` failed, then wait for it to release us."""
        send_message(self.transport, COORDINATOR, ErrorReport(exc.peer, exc.cause, str(exc)[:2000]))
        while True:  # whatever else comes is ignored
            raw = self.transport.recv_json(COORDINATOR)
            if raw["type"] == Release.TYPE:
                Release.parse(raw)
                raise exc

    def _setup_stage(self) -> None:
        c = self.config
        self.module: StageModule | None = None
        self.weights_at_start: dict[str, torch.Tensor] | None = None
        if self.stage_index is None:
            return
        s = self.stage_index
        module = build_stage(c.model, c.stages, s, c.seed).to(self.device)
        tamper = os.environ.get(TAMPER_MEASUREMENT_ENV)
        if tamper is not None and tamper == str(s):
            with torch.no_grad():
                next(iter(module.parameters())).add_(1e-3)
        self.module = module
        self.optimizer = make_optimizer(module, c.train)
        self.current_digest = self.optimizer_digest = None
        self.replica = None
        if c.verification == "redundant_neighbour" and s >= 1:  # this stage checks stage s - 1
            self.replica = NeighbourReplica(c.model, c.stages, s - 1, c.seed, c.train, self.device)
        reads_data = s in (0, c.stages - 1) or (self.replica is not None and s == 1)
        self.batches = _batches(c) if reads_data else None
        self.schedule = (gpipe if c.schedule == "gpipe" else one_f_one_b)(c.stages, c.microbatches)[s]
        # the plan names stages, and so the workers first given them: a standby never attacks
        original = self.worker_id == worker_id_for(s)
        self.attack = make_attack(c.attack, s, c.model.vocab_size) if original else None
        self.skew = _numerics_skew(s) if original else None
        if isinstance(self.attack, PlanAttack):
            self.attack.relay_equivocation = c.verification == "redundant_neighbour" and c.input_via == "upstream"

    def _attest(self, nonce: bytes | None) -> None:
        pubkey = bytes(self.key.verify_key)
        message = Evidence(self.worker_id, pubkey, os.getpid(), socket.gethostname()[:255])
        if nonce is not None and self.config.attestation_kind == "dcap":
            message = _configfs_evidence(message, self.config.tsm_report_root, nonce, pubkey)
        elif nonce is not None:
            if self.vendor_dir is None:
                raise TransportError("attestation is on but this worker has no vendor folder (--vendor)")
            weights = {k: v.detach().cpu() for k, v in self.module.state_dict().items()} if self.module else None
            digest = digest_state_dict(weights) if weights is not None else None
            measurement = stage_measurement(self.config, self.stage_index, digest, code_digest())
            device = device_identity(load_vendor(self.vendor_dir), device_id_for(self.rank))
            evidence = SimulatedProvider(device, measurement).get_evidence(nonce, pubkey)
            message = dataclasses.replace(message, evidence=evidence)
        send_message(self.transport, COORDINATOR, message)

    # -- serving ------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            msg = receive(
                self.transport,
                COORDINATOR,
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
            )
            if isinstance(msg, Release):
                return
            if isinstance(msg, Idle):
                continue
            if isinstance(msg, Ranks):
                self.ranks, self.ids, self.keys = dict(msg.ranks), dict(msg.workers), dict(msg.keys)
                continue
            if isinstance(msg, Assign):
                self._assign(msg.stage)
                continue
            if self.module is None:
                raise TransportError(f"standby worker {self.worker_id} got a {msg.TYPE!r} request but holds no stage")
            with deterministic(self.config.train.threads):
                if isinstance(msg, Step):
                    self._step(msg.step, msg.attempt, msg.bypass)
                elif isinstance(msg, Fetch):
                    self._fetch(msg)
                elif isinstance(msg, Restore):
                    self._restore(msg.step)
                elif isinstance(msg, SnapshotRequest):
                    self._snapshot(msg.step)
                elif isinstance(msg, Load):
                    self._load(msg)
                elif isinstance(msg, Discard):
                    self._discard(msg)
                elif isinstance(msg, Calibrate):
                    self._calibrate(msg.units)
                elif isinstance(msg, Push):
                    self._push(msg)
                elif isinstance(msg, Update):
                    self._update(msg.step)

    def _receipt(
        self, step: int, mb: int, kind: UnitKind, inp: bytes, out: bytes, weights: bytes, env: ExecutionEnv
    ) -> bytes:
        assert self.stage_index is not None
        receipt = sign_receipt(
            Receipt(
                run_id=self.run_id,
                worker_id=self.worker_id,
                stage=self.stage_index,
                replica=0,
                step=step,
                micro_batch=mb,
                kind=kind,
                input_digest=inp,
                output_digest=out,
                weights_digest=weights,
                env=env,
                signed_at=dt.datetime.now(dt.UTC),
                prev_digest=self.prev,
            ),
            self.key,
        )
        self.prev = receipt_digest(receipt)
        return encode_receipt(receipt)

    def _neighbour(self, kind: TransferKind, incoming: bool) -> int:
        """The stage this stage receives from (``incoming``) or sends to, for a transfer ``kind``,
        on the current computation's route (past a bypassed stage)."""
        assert self.stage_index is not None
        return self.route.neighbour(self.stage_index, kind, incoming)

    def _expected(self, step: int, mb: int, kind: TransferKind) -> Expected:
        """What a transfer from this stage's neighbour must be."""
        assert self.stage_index is not None
        return self._transfer(step, mb, kind, self._neighbour(kind, incoming=True), self.stage_index)

    def _header(self, step: int, mb: int, kind: TransferKind) -> SignedHeader:
        assert self.stage_index is not None
        s = self.stage_index
        return SignedHeader(
            run_id=self.run_id,
            sender=self.worker_id,
            sender_stage=s,
            sender_replica=0,
            receiver_stage=self._neighbour(kind, incoming=False),
            step=step,
            micro_batch=mb,
            kind=kind,
            tensor=TensorDigest("float32", (), bytes(32)),  # replaced when sent
            signed_at=dt.datetime.now(dt.UTC),
        )

    def _keeps_state(self) -> bool:
        """Whether to keep the optimizer state and gradients of each step (for FETCH and recomputation)."""
        return self.config.verification != "none"

    def _step(self, step: int, attempt: int = 0, bypass: int | None = None) -> None:
        """Run this stage's forwards and backwards of ``step`` and commit the receipts and received headers.

        ``attempt`` counts recomputations of the step after a detection; ``bypass`` is a stage
        left out of this attempt: its neighbours talk to each other directly (:class:`Route`).
        """
        crash = os.environ.get(CRASH_ENV)
        if crash is not None and crash == f"{self.stage_index}:{step}" and attempt == 0:
            os._exit(17)
        hostile = os.environ.get(HOSTILE_ENV, "").split(":")
        if len(hostile) != 3 or hostile[:2] != [str(self.stage_index), str(step)]:
            hostile = []
        elif self.worker_id != worker_id_for(int(hostile[0])):  # a standby of that stage is not hostile
            hostile = []
        assert self.module is not None and self.stage_index is not None
        c, s, module = self.config, self.stage_index, self.module
        M = c.microbatches  # noqa: N806
        self.route = Route(c.stages, bypass)
        self.replica_checked = False
        if self.attack is not None:
            self.attack.attempt = attempt
        receipts_on = c.receipts
        busy = 0.0
        if attempt > 0 and self.record is not None and self.record.step == step:
            record = StepRecord(
                step, self.record.weights, optimizer=self.record.optimizer, weights_digest=self.record.weights_digest
            )
        else:
            if self.attack is not None and self.attack.swap_weights(s, step, module):
                self.current_digest = None  # the step runs with (and commits to) the swapped weights
            weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
            optimizer = export_optimizer_state(module, self.optimizer) if self._keeps_state() else None
            record = StepRecord(step, weights, optimizer=optimizer)
            if self.replica is not None:
                self.replica_record = self.replica.snapshot()
            # a checker's accusation is refereed by re-executing the update that made these weights;
            # a spot check of the previous step may still be running while this step computes
            kept = self.record if c.verification in ("redundant_neighbour", "spot_check") else None
            self.previous = kept if kept is not None and kept.step == step - 1 else None
            self.grad_buffers.release_before(step - 1)  # only this step's record and the previous one stay
        self.record = record
        if self.attack is not None and self.attack.apply_optimizer(s, step, module, self.optimizer):
            self.optimizer_digest = None  # the state the next update starts from is no longer the one digested
        if receipts_on and not record.weights_digest:
            record.weights_digest = self.current_digest or digest_state_dict(record.weights)
        weights_digest = record.weights_digest
        env = ExecutionEnv.capture(self.device)
        inputs: dict[int, torch.Tensor] = {}
        grads_out: dict[int, torch.Tensor] = {}
        states: dict[int, ForwardState] = {}
        outputs: dict[int, torch.Tensor] = {}
        grads_in: dict[int, torch.Tensor] = {}
        targets: dict[int, torch.Tensor] = {}
        losses: dict[int, torch.Tensor] = {}
        logits: dict[int, bytes] = {}  # the last stage's logits digests, by micro-batch
        relay = _Relay()
        arrivals: dict[tuple[int, TransferKind], tuple[torch.Tensor, bytes]] = {}
        committed_digests: dict[tuple[int, TransferKind], TensorDigest] = {}

        def known(m: int, transfer: TransferKind, tensor: torch.Tensor) -> bytes:
            """The digest of a received tensor, from its checked header when it is unchanged."""
            got = arrivals.get((m, transfer))
            return got[1] if got is not None and got[0] is tensor else _digest(tensor)

        def commit_digest(m: int, transfer: TransferKind, tensor: torch.Tensor) -> bytes:
            """Digest a tensor this unit commits to and sends, keeping the digest for the send."""
            digest = tensor_digest(tensor.detach().cpu())
            committed_digests[(m, transfer)] = digest
            return digest.digest

        receipts: list[bytes] = []
        headers: list[bytes] = []
        keep_grads = self._keeps_state()  # a backward unit's check starts from the gradients before it
        trace: list[bytes] = []
        # after a stage's backward unit (but stage 0's, whose receipt commits to its gradients), its
        # trace entry is digested only when the gradients are about to change or the schedule ends,
        # so that the input gradient goes upstream first
        pending = False
        flat: torch.Tensor | None = None  # the buffer the stage's gradients are views of, when they are
        for action in self.schedule:
            m = action.microbatch
            kind = action.kind
            if kind is ActionKind.RECV_F or kind is ActionKind.RECV_B:
                assert m is not None
                transfer = TransferKind.ACTIVATION if kind is ActionKind.RECV_F else TransferKind.GRADIENT
                sender = self._neighbour(transfer, incoming=True)
                tensor, header, raw = self.transport.recv_signed(self.ranks[sender], self._expected(step, m, transfer))
                (inputs if kind is ActionKind.RECV_F else grads_out)[m] = tensor
                (relay.received_f if kind is ActionKind.RECV_F else relay.received_b)[m] = (raw, tensor)
                if header is not None:  # none without receipts: the transfers are not signed
                    arrivals[(m, transfer)] = (tensor, header.tensor.digest)  # checked against the tensor
                    headers.append(raw)
            elif kind is ActionKind.F:
                assert m is not None
                began = time.perf_counter()
                received = inputs.get(m)
                if module.is_first or module.is_last:
                    assert self.batches is not None
                    x, y = self.batches.microbatch(step, m)
                    if module.is_first:
                        inputs[m] = x.to(self.device)
                    targets[m] = y.to(self.device)
                if self.attack is not None:
                    inputs[m] = self.attack.apply_input(s, step, m, inputs[m])
                state = stage_forward(module, inputs[m], M, targets=targets[m] if module.is_last else None)
                output = state.output.detach()
                if self.skew is not None:
                    output = output * (1.0 + self.skew)
                states[m] = state
                if self.attack is not None and not module.is_last:  # the last stage sends no activation
                    output = self.attack.apply_forward(s, step, m, output, received)
                outputs[m] = output
                if self.keep_outputs:
                    record.outputs[(m, "forward")] = {"output": output}
                    if state.loss is not None:
                        record.outputs[(m, "forward")]["loss"] = state.loss.detach()
                if state.loss is not None:
                    losses[m] = state.loss
                busy += time.perf_counter() - began
                record.units[(m, "forward")] = _unit_tensors(inputs[m], targets.get(m) if module.is_last else None)
                if receipts_on:
                    in_digest = known(m, TransferKind.ACTIVATION, inputs[m])
                    if module.is_last:  # the logits and the loss the run reports
                        logits[m] = _digest(output)
                        out_digest = last_forward_output_digest(logits[m], loss_digest(losses[m]))
                    else:
                        out_digest = commit_digest(m, TransferKind.ACTIVATION, output)
                    receipts.append(
                        self._receipt(step, m, UnitKind.FORWARD, in_digest, out_digest, weights_digest, env)
                    )
            elif kind is ActionKind.SEND_F or kind is ActionKind.SEND_B:
                assert m is not None
                forward = kind is ActionKind.SEND_F
                transfer = TransferKind.ACTIVATION if forward else TransferKind.GRADIENT
                committed = (outputs if forward else grads_in).pop(m)
                direction = "forward" if forward else "backward"
                if self.attack is not None and self.attack.withholds(s, step, m):
                    threading.Event().wait()  # alive (the heartbeat goes on) and silent from here on
                sent = committed if self.attack is None else self.attack.outgoing(s, step, m, direction, committed)
                signed = self.transport.send_signed(
                    self.ranks[self._neighbour(transfer, incoming=False)],
                    sent,
                    self._header(step, m, transfer),
                    self.key,
                    blocking=False,
                    digest=committed_digests.get((m, transfer)) if sent is committed else None,
                )
                raw = b"" if signed is None else encode_header(signed)
                (relay.sent_f if forward else relay.sent_b)[m] = (raw, sent)
                if forward:
                    relay.committed_f[m] = committed
            elif kind is ActionKind.B:
                assert m is not None
                unit = _unit_tensors(inputs[m], targets.get(m) if module.is_last else None)
                if m in grads_out:
                    unit["grad_output"] = grads_out[m]
                if pending:
                    trace.append(_grads_digest(module, flat))
                    pending = False
                if self.attack is not None:
                    self.attack.apply_accumulated(s, step, m, module)
                before: dict[str, torch.Tensor] = {}
                if keep_grads:  # the unit commits to the accumulated gradients: keep those before it
                    # (no copy: the unit's gradients go into fresh tensors, added to these afterwards)
                    for name, p in module.named_parameters():
                        if p.grad is not None:
                            before[name] = unit[f"grad_before.{name}"] = p.grad.detach()
                            p.grad = None
                began = time.perf_counter()
                state = states.pop(m)
                grad = stage_backward(state, grads_out.get(m))
                if before or receipts_on:  # the gradients so far, in one buffer: hashed in one pass
                    flat = _gather_grads(module, before, flat, self.grad_buffers.taker(step))
                if self.skew is not None:
                    grad = _skew_backward(module, grad, self.skew)
                if grad is not None:
                    grad = grad.detach()
                    if self.attack is not None:
                        grad = self.attack.apply_backward(s, step, m, grad, grads_out.get(m))
                    grads_in[m] = grad
                busy += time.perf_counter() - began
                record.units[(m, "backward")] = unit
                if self.keep_outputs:
                    record.outputs[(m, "backward")] = _backward_output(module, grad)
                if receipts_on:
                    # the receipt's output: the input gradient, or on stage 0 the accumulated
                    # gradients, the unit's gradient trace entry (the update commits to all entries)
                    if grad is None:
                        out_digest = _grads_digest(module, flat)
                        trace.append(out_digest)
                    else:
                        out_digest = commit_digest(m, TransferKind.GRADIENT, grad)
                        pending = True
                    in_digest = known(m, TransferKind.GRADIENT, grads_out[m]) if m in grads_out else _digest(targets[m])
                    receipts.append(
                        self._receipt(step, m, UnitKind.BACKWARD, in_digest, out_digest, weights_digest, env)
                    )
                grads_out.pop(m, None)
            # UPDATE waits for the coordinator's decision
        if pending:
            trace.append(_grads_digest(module, flat))
        self.grads_trace = (step, trace) if receipts_on else None
        relay.inputs = inputs
        checks: tuple[CheckReport, ...] | None = None
        checks_run: int | None = None
        if c.verification == "redundant_neighbour":
            self._send_relay(step, relay)
            began = time.perf_counter()
            outcomes = self._check_neighbour(step, relay)
            busy += time.perf_counter() - began
            checks_run = len(outcomes)
            if self.attack is not None:
                outcomes = self.attack.report_checks(s, step, outcomes)
            checks = tuple(
                CheckReport.from_outcome(o, self.copy_headers.get(o.microbatch) if o.unit_kind == "forward" else None)
                for o in outcomes
                if not o.passed
            )
        self.transport.flush()
        microbatch_losses, logits_digests = None, None
        if module.is_last:  # the coordinator takes the step's loss as their mean
            microbatch_losses = tuple(float(losses[m]) for m in range(M))
            if receipts_on:
                logits_digests = tuple(logits[m] for m in range(M))
        message = Commit(
            step,
            tuple(receipts),
            tuple(headers),
            int(busy * 1e9),
            checks,
            checks_run,
            microbatch_losses,
            logits_digests,
        )
        if hostile:
            self._send_hostile(step, hostile[2])
        send_message(self.transport, COORDINATOR, message)

    def _transfer(
        self, step: int, mb: int, kind: TransferKind, sender: int, receiver: int, token_ids: bool = False
    ) -> Expected:
        """What the transfer ``sender -> receiver`` (or a relayed copy of it) must be (token ids:
        stage 0's input)."""
        c = self.config
        shape = (c.batch_size, c.model.block_size)
        return Expected(
            run_id=self.run_id,
            sender=self.ids[sender],
            sender_key=self.keys[sender],
            sender_stage=sender,
            receiver_stage=receiver,
            step=step,
            micro_batch=mb,
            kind=kind,
            dtype="int64" if token_ids else "float32",
            shape=shape if token_ids else (*shape, c.model.n_embd),
        )

    def _send_relay(self, step: int, relay: _Relay) -> None:
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
        c, s, route = self.config, self.stage_index, self.route
        assert s is not None
        M = c.microbatches  # noqa: N806
        copies: list[tuple[bytes, torch.Tensor]] = []
        # with a stage bypassed, a copy goes only to a checker that computes, of a stage that does
        downstream = route.after(s)
        if c.input_via == InputVia.CHECKED_WORKER:
            if not route.checked(s):
                return
            dst = self.ranks[s + 1]
            for m in range(M):
                header = self._header(step, m, TransferKind.ACTIVATION)
                self.transport.send_signed(dst, relay.inputs[m], header, self.key, blocking=False)
            copies = [relay.sent_b[m] for m in range(M)] if s >= 1 else []
        elif c.input_via == InputVia.UPSTREAM:
            if not route.checked(downstream):
                return
            dst = self.ranks[downstream + 1]
            for m in range(M):
                raw, sent = relay.sent_f[m]
                copy = sent if self.attack is None else self.attack.relay_copy(s, step, m, sent, relay.committed_f[m])
                if copy is not sent and self.transport.signed:
                    header = self._header(step, m, TransferKind.ACTIVATION)
                    raw = encode_header(
                        sign_header(dataclasses.replace(header, tensor=tensor_digest(copy.cpu())), self.key)
                    )
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

    def _check_neighbour(self, step: int, relay: _Relay) -> list[CheckOutcome]:
        """As the checker of stage ``s = this stage - 1``: receive the relayed copies, recompute
        ``s``'s forward and backward units on the replica and compare them bit for bit with what
        ``s`` sent. A bypassed ``s`` computed nothing: there is nothing to check, and its replica,
        like ``s``, is not updated."""
        replica = self.replica
        c, me = self.config, self.stage_index
        assert me is not None
        s, M = me - 1, c.microbatches  # noqa: N806
        if replica is None or not self.route.checked(s):
            return []
        upstream = self.route.before(s)  # where s's input came from, and its gradient went
        via = InputVia(c.input_via)
        inputs: dict[int, torch.Tensor] = {}
        headers: dict[int, bytes] = {}
        grads: dict[int, torch.Tensor] = {}
        if via is InputVia.CHECKED_WORKER:
            src = self.ranks[s]
            for m in range(M):
                expected = self._transfer(step, m, TransferKind.ACTIVATION, s, me, token_ids=s == 0)
                inputs[m] = self.transport.recv_signed(src, expected)[0]
        elif s >= 1:
            src = self.ranks[upstream] if via is InputVia.UPSTREAM else COORDINATOR
            for m in range(M):
                expected = self._transfer(step, m, TransferKind.ACTIVATION, upstream, s)
                inputs[m], _, raw = self.transport.recv_signed(src, expected)
                if raw:
                    headers[m] = raw
        if s >= 1:
            for m in range(M):
                expected = self._transfer(step, m, TransferKind.GRADIENT, s, upstream)
                grads[m] = self.transport.recv_signed(src, expected)[0]
        replica.reset_step()
        self.copy_headers = headers  # the signed headers of the input copies: evidence if s - 1 equivocated
        outcomes = []
        for m in range(M):
            if m in inputs:
                recompute = inputs[m].to(self.device)
            else:  # stage 0 under a trusted channel: the step's data itself
                assert self.batches is not None
                recompute = self.batches.microbatch(step, m)[0].to(self.device)
            sent = relay.received_f[m][1].to(self.device)
            outcomes.append(replica.check_forward(step, m, M, recompute, sent, via))
        for m in range(M):
            grad_output = relay.sent_b[m][1].to(self.device)
            sent_grad = grads[m].to(self.device) if m in grads else None
            outcomes.append(replica.check_backward(step, m, grad_output, sent_grad))
        self.replica_checked = True
        return outcomes

    def _replica_update(self) -> None:
        """Step the replica's optimizer on the gradients it recomputed (after ``s``'s update)."""
        if self.replica is not None and self.replica_checked:
            with deterministic(self.config.train.threads):
                self.replica.apply_update()
        self.replica_checked = False

    def _restore(self, step: int) -> None:
        """Return to the state before ``step`` (weights and optimizer state) and drop its gradients."""
        assert self.module is not None
        record = self.record
        if record is None or record.step != step or record.optimizer is None:
            raise TransportError(f"worker {self.worker_id} cannot restore step {step}: it does not keep its state")
        module = self.module
        module.load_state_dict(record.weights)
        self.optimizer = make_optimizer(module, self.config.train)
        import_optimizer_state(module, self.optimizer, record.optimizer)
        module.zero_grad(set_to_none=True)
        self.grads_trace = None
        record.grads = None
        if self.replica is not None and self.replica_record is not None:
            self.replica.resync(*self.replica_record)
        self.replica_checked = False
        self.optimizer_digest = None
        self.current_digest = digest_state_dict(module.state_dict())
        send_message(self.transport, COORDINATOR, Restored(step, self.current_digest))

    def _assign(self, stage: int) -> None:
        """A standby takes a stage: build it (its weights come next, with ``load``). The standby is
        a different worker from the one it replaces: it runs no attack plan."""
        if self.module is not None or not 0 <= stage < self.config.stages:
            raise TransportError(f"worker {self.worker_id} cannot take stage {stage!r}")
        self.stage_index = stage
        with deterministic(self.config.train.threads):
            self._setup_stage()
        self.attack = None
        self.record = self.previous = None
        self.grad_buffers.release_before(None)

    def _snapshot(self, step: int) -> None:
        """Send the stage's weights and optimizer state (after ``step`` steps) for a checkpoint."""
        self._send_tensors(lambda meta: Snapshot(step, meta), self._state_tensors("weights", "optimizer"))

    def _state_tensors(self, weights: str, optimizer: str) -> list[tuple[str, torch.Tensor]]:
        """The stage's current weights and optimizer state, named ``<weights>.<name>`` and
        ``<optimizer>.<param>/<field>``."""
        assert self.module is not None
        tensors = [(f"{weights}.{k}", v.detach().cpu()) for k, v in self.module.state_dict().items()]
        tensors += [(f"{optimizer}.{k}", v) for k, v in export_optimizer_state(self.module, self.optimizer).items()]
        return tensors

    def _load(self, msg: Load) -> None:
        """Load a verified checkpoint's weights and optimizer state sent by the coordinator; every
        tensor is checked against the digest announced with it. With ``replica_only`` the message
        carries only the checked stage's state for this checker's replica (after a computation
        that bypassed this stage, in which the checked stage updated unseen by the replica)."""
        assert self.module is not None
        step, replica_only = msg.step, msg.replica_only
        if replica_only and self.replica is None:
            raise TransportError(f"worker {self.worker_id} got a malformed load request")
        # A checker's load also carries the checked stage's state for its replica.
        modules = {"": self.module} if self.replica is None else {"": self.module, "replica_": self.replica.module}
        if replica_only:
            del modules[""]
        received: dict[str, dict[str, torch.Tensor]] = {}
        for item in msg.tensors:
            name, dtype, shape = item.name, item.dtype, item.shape
            group, _, key = name.partition(".")
            prefix = "replica_" if group.startswith("replica_") else ""
            target = modules.get(prefix)
            section = group[len(prefix) :]
            if target is None:
                raise TransportError(f"checkpoint tensor {name!r} is not acceptable")
            params = dict(target.named_parameters())
            if section == "weights":
                ref = target.state_dict().get(key)
                if ref is None or tuple(ref.shape) != shape or dtype_name(ref.dtype) != dtype:
                    raise TransportError(f"checkpoint tensor {name!r} does not fit stage {self.stage_index}")
                torch_dtype = ref.dtype
            elif section == "optimizer" and dtype == "float32" and key.rpartition("/")[0] in params:
                param, field = params[key.rpartition("/")[0]], key.rpartition("/")[2]
                if shape != (() if field == "step" else tuple(param.shape)):
                    raise TransportError(f"checkpoint tensor {name!r} has the wrong shape")
                torch_dtype = torch.float32
            else:
                raise TransportError(f"checkpoint tensor {name!r} is not acceptable")
            tensor = self.transport.recv_tensor(COORDINATOR, torch_dtype, shape).cpu()
            if _digest(tensor) != item.digest:
                raise TransportError(f"checkpoint tensor {name!r} does not match its announced digest")
            received.setdefault(group, {})[key] = tensor
        weights, optimizer = received.get("weights", {}), received.get("optimizer", {})
        for prefix, target in modules.items():
            if set(received.get(f"{prefix}weights", {})) != set(target.state_dict()):
                raise TransportError(f"the checkpoint does not hold every weight of stage {self.stage_index}")
        if self.replica is not None:
            try:
                self.replica.resync(
                    {k: v.to(self.device) for k, v in received["replica_weights"].items()},
                    received.get("replica_optimizer", {}),
                )
            except ValueError as exc:
                raise TransportError(
                    f"checkpoint state of the replica of stage {self.replica.checked}: {exc}"
                ) from None
            self.replica_record = None
        if replica_only:
            send_message(self.transport, COORDINATOR, ReplicaLoaded(step))
            return
        module = self.module
        module.load_state_dict(weights)
        self.optimizer = make_optimizer(module, self.config.train)
        try:
            import_optimizer_state(module, self.optimizer, optimizer)
        except ValueError as exc:
            raise TransportError(f"checkpoint optimizer state of stage {self.stage_index}: {exc}") from None
        module.zero_grad(set_to_none=True)
        self.grads_trace = None
        self.record = self.previous = None
        self.grad_buffers.release_before(None)  # no record is kept: every buffer is free
        self.optimizer_digest = None
        self.current_digest = digest_state_dict(module.state_dict())
        send_message(self.transport, COORDINATOR, Loaded(step, self.current_digest))

    def _calibrate(self, units: int) -> None:
        """Compute the calibration units the coordinator asks for on this stage's device and kernels
        (:func:`~stagewarden.runtime.calibration.calibration_outputs`, on seed-derived inputs) and
        send their outputs (``unit<i>.<name>``) and the weights they ran with (``weights.<name>``)."""
        assert self.module is not None and self.stage_index is not None
        if not 1 <= units <= CALIBRATION_UNITS:
            raise TransportError(f"worker {self.worker_id} got a malformed calibration request")
        tensors = [(f"weights.{k}", v.detach().cpu()) for k, v in self.module.state_dict().items()]
        for i in range(units):
            inputs = calibration_inputs(self.config, self.stage_index, i)
            outputs = calibration_outputs(self.module, inputs, self.config.microbatches)
            for name, t in outputs.items():
                if self.skew is not None:
                    t = t * (1.0 + self.skew)
                tensors.append((f"unit{i}.{name}", t.cpu()))
        self._send_tensors(lambda meta: Calibrated(units, meta), tensors)

    def _send_tensors(
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

    def _update(self, step: int) -> None:
        """Apply the optimizer step of ``step`` and report it with its update receipt. Which units
        of the step are sampled (the update among them) the coordinator says only afterwards, in
        a ``push`` message (:meth:`_push`)."""
        assert self.module is not None and self.record is not None and self.stage_index is not None
        module = self.module
        receipts_on = self.config.receipts
        # the gradient trace of this step's schedule: the update starts from its last entry
        cached, self.grads_trace = self.grads_trace, None
        if receipts_on and (cached is None or cached[0] != step):
            raise TransportError(f"worker {self.worker_id} has no gradient trace of step {step} to update from")
        trace = cached[1] if cached is not None else []
        before = (self.record.weights_digest or digest_state_dict(self.record.weights)) if receipts_on else b""
        optimizer_before = b""
        if receipts_on:
            optimizer_before = self.optimizer_digest or optimizer_state_digest(module, self.optimizer)
        if self._keeps_state():  # the step clears them (set to None): the tensors stay as they are
            self.record.grads = {n: p.grad.detach() for n, p in module.named_parameters() if p.grad is not None}
        began = time.perf_counter()
        optimizer_step(self.optimizer)
        if self.attack is not None:
            self.attack.apply_update(self.stage_index, step, module)
        if self.skew is not None:
            with torch.no_grad():
                for p in module.parameters():
                    p.mul_(1.0 + self.skew)
        if self.replica is not None:
            self._replica_update()
        busy = time.perf_counter() - began
        after = digest_state_dict(module.state_dict())
        self.current_digest = after
        if self.keep_outputs:
            self.record.outputs[(0, "update")] = {
                f"weights.{k}": v.detach().clone() for k, v in module.state_dict().items()
            } | {f"optimizer.{k}": v for k, v in export_optimizer_state(module, self.optimizer).items()}
        commitment = None
        if receipts_on:
            # the receipt commits to the optimizer state on both sides of the update, so a spot
            # check re-executes it from a state the worker could not choose afterwards
            optimizer_after = optimizer_state_digest(module, self.optimizer)
            self.optimizer_digest = optimizer_after
            env = ExecutionEnv.capture(self.device)
            inp = update_input_digest(gradient_trace_digest(trace), optimizer_before)
            out = update_output_digest(after, optimizer_after)
            receipt = self._receipt(step, 0, UnitKind.UPDATE, inp, out, before, env)
            commitment = UpdateCommitment(receipt, optimizer_before, optimizer_after, tuple(trace))
        send_message(self.transport, COORDINATOR, Updated(step, after, int(busy * 1e9), commitment))

    def _push(self, msg: Push) -> None:
        """Send the coordinator, without waiting for it to receive them, the committed inputs of the
        sampled units of the step (each ``(micro_batch, kind)``) with the weights the step ran
        with, and with ``snapshot`` the weights and optimizer state after the update (for the
        checkpoint after the step). The coordinator takes them while this worker computes the
        next step; they are what a FETCH of each unit and a snapshot would return."""
        record, step, units = self.record, msg.step, msg.units
        if record is None or record.step != step:
            raise TransportError(f"worker {self.worker_id} got a malformed push request for step {step}")
        tensors: list[tuple[str, torch.Tensor]] = []
        for i, (mb, kind) in enumerate(units):
            unit = self._unit_inputs(record, mb, kind)
            if unit is None:
                raise TransportError(f"worker {self.worker_id} does not keep unit step {step} {mb} {kind}")
            tensors += [(f"unit{i}.{name}", t) for name, t in unit.items()]
            if self.keep_outputs:  # tolerance mode: the unit's committed output comes too
                tensors += [(f"output{i}.{name}", t) for name, t in record.outputs.get((mb, kind), {}).items()]
        if units:
            tensors += [(f"weights.{name}", t) for name, t in record.weights.items()]
        if msg.snapshot:
            tensors += self._state_tensors("snapshot_weights", "snapshot_optimizer")
        self._send_tensors(lambda meta: Pushed(step, units, meta), tensors, blocking=False)

    def _discard(self, msg: Discard) -> None:
        """Drop the computation of a step the coordinator will not accept (a spot check of the
        step before it failed while it ran): forget its record and gradients, and continue the
        receipt chain from ``chain_head``, the last receipt the coordinator logged."""
        record = self.record
        if record is None or record.step != msg.step:
            raise TransportError(f"worker {self.worker_id} got a malformed discard request")
        assert self.module is not None
        self.record, self.previous = self.previous, None
        self.module.zero_grad(set_to_none=True)
        self.grads_trace = self.optimizer_digest = None
        self.prev = msg.chain_head

    def _fetch(self, msg: Fetch) -> None:
        """Answer a FETCH: the committed input tensors of one unit and the weights it ran with."""
        step, mb, kind = msg.step, msg.micro_batch, msg.kind
        record = next((r for r in (self.record, self.previous) if r is not None and r.step == step), None)
        unit = self._unit_inputs(record, mb, kind) if record is not None else None
        if unit is None or record is None:
            error = f"unit step {step} micro-batch {mb} {kind} is not kept by {self.worker_id}"
            send_message(self.transport, COORDINATOR, FetchUnavailable(error))
            return
        tensors = [(f"input.{name}", t) for name, t in unit.items()] + [
            (f"weights.{name}", t) for name, t in record.weights.items()
        ]
        if self.keep_outputs:
            tensors += [(f"output.{name}", t) for name, t in record.outputs.get((mb, kind), {}).items()]
        self._send_tensors(lambda meta: Fetched(step, mb, kind, meta), tensors)

    @staticmethod
    def _unit_inputs(record: StepRecord, mb: Any, kind: Any) -> dict[str, torch.Tensor] | None:
        """The committed inputs of one unit of ``record``'s step (an update unit's are the
        accumulated gradients and the optimizer state before it); ``None`` when not kept."""
        if kind == "update":
            if record.grads is None or record.optimizer is None:
                return None
            unit = {f"grad.{k}": v for k, v in record.grads.items()}
            unit.update({f"optimizer.{k}": v for k, v in record.optimizer.items()})
            return unit
        return record.units.get((mb, kind))


@dataclass
class _Relay:
    """What one step's schedule exchanged, kept for the redundant-neighbour copies: per
    micro-batch the encoded signed header (``b""`` when the transfers are not signed) and tensor
    received or sent in each direction, and the stage's forward inputs."""

    received_f: dict[int, tuple[bytes, torch.Tensor]] = field(default_factory=dict)
    received_b: dict[int, tuple[bytes, torch.Tensor]] = field(default_factory=dict)
    sent_f: dict[int, tuple[bytes, torch.Tensor]] = field(default_factory=dict)
    sent_b: dict[int, tuple[bytes, torch.Tensor]] = field(default_factory=dict)
    committed_f: dict[int, torch.Tensor] = field(default_factory=dict)
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)


def _numerics_skew(stage: int) -> float | None:
    """The relative skew the :data:`NUMERICS_ENV` test hook gives the worker of ``stage``, if any."""
    value = os.environ.get(NUMERICS_ENV)
    if not value:
        return None
    target, _, e = value.partition(":")
    try:
        return float(e) if int(target) == stage else None
    except ValueError:
        raise ValueError(f"{NUMERICS_ENV} must be <stage>:<relative error>, got {value!r}") from None


def _skew_backward(module: torch.nn.Module, grad: torch.Tensor | None, e: float) -> torch.Tensor | None:
    """The :data:`NUMERICS_ENV` skew of a backward unit: its input gradient, or on stage 0 (no
    input gradient) the accumulated parameter gradients, in place."""
    if grad is not None:
        return grad * (1.0 + e)
    with torch.no_grad():
        for p in module.parameters():
            if p.grad is not None:
                p.grad.mul_(1.0 + e)
    return None


def _gather_grads(
    module: torch.nn.Module,
    before: dict[str, torch.Tensor],
    flat: torch.Tensor | None,
    alloc: Callable[[int, torch.dtype, torch.device], torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """After a backward unit, leave the stage's accumulated gradients as consecutive views of one
    buffer, in parameter order, and return it (``None`` when they cannot share one: mixed dtypes
    or devices; then they stay separate tensors).

    ``before`` (by parameter name) are the gradients accumulated before the unit when the unit
    ran from no gradients (so that ``before`` stays as it was): they are added to the unit's own
    into a new buffer, the values autograd's in-place accumulation gives (floating-point
    addition is commutative). Otherwise gradients that are views of ``flat`` already (autograd
    accumulated into them in place) keep it; any others are copied into a new buffer. A new
    buffer comes from ``alloc(numel, dtype, device)`` when given (its contents are overwritten)."""
    params = [(n, p) for n, p in module.named_parameters() if p.grad is not None or n in before]
    if not before and flat is not None and views_cover(flat, [p.grad for _, p in params if p.grad is not None]):
        return flat  # autograd accumulated into the buffer's views in place
    first = params[0][1] if params else None
    if first is None or any(p.dtype != first.dtype or p.device != first.device for _, p in params):
        with torch.no_grad():
            for name, p in params:
                kept = before.get(name)
                if kept is not None:
                    p.grad = kept.clone() if p.grad is None else kept + p.grad
        return None
    numel = sum(p.numel() for _, p in params)
    out = (alloc or _empty)(numel, first.dtype, first.device)
    offset = 0
    with torch.no_grad():
        for name, p in params:
            view = out[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
            kept, grad = before.get(name), p.grad
            if kept is not None and grad is not None:
                torch.add(kept, grad, out=view)
            elif grad is not None:
                view.copy_(grad)
            elif kept is not None:
                view.copy_(kept)
            p.grad = view
    return out


def _empty(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(numel, dtype=dtype, device=device)


class _BufferPool:
    """Flat gradient buffers by the step whose backward units filled them, for reuse.

    A worker keeps the gradients before each backward unit of a step (views of the buffers) in
    the step's record, and the records of the current and the previous step only; so the
    buffers of older steps are free again. Reusing them spares each backward unit faulting in
    1.75 MB of fresh memory (a stage of the benchmark job): measured 0.26 ms against 0.04 ms for
    the addition alone."""

    def __init__(self) -> None:
        self.free: list[torch.Tensor] = []
        self.used: dict[int, list[torch.Tensor]] = {}

    def taker(self, step: int) -> Callable[[int, torch.dtype, torch.device], torch.Tensor]:
        """An ``alloc`` for :func:`_gather_grads` that takes buffers for ``step``."""

        def take(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
            for i, buffer in enumerate(self.free):
                if buffer.numel() == numel and buffer.dtype == dtype and buffer.device == device:
                    out = self.free.pop(i)
                    break
            else:
                out = _empty(numel, dtype, device)
            self.used.setdefault(step, []).append(out)
            return out

        return take

    def release_before(self, step: int | None) -> None:
        """Free the buffers of the steps before ``step`` (every buffer when ``None``)."""
        for s in [s for s in self.used if step is None or s < step]:
            self.free += self.used.pop(s)


def _backward_output(module: torch.nn.Module, grad: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """What a backward unit commits to, kept for FETCH: the input gradient (its receipt's output;
    none on stage 0) and a copy of the accumulated parameter gradients, in parameter order (its
    gradient trace entry; on stage 0 also the receipt's output)."""
    out = {} if grad is None else {"grad_input": grad}
    out.update({f"grad.{n}": p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None})
    return out


def _unit_tensors(inputs: torch.Tensor, targets: torch.Tensor | None) -> dict[str, torch.Tensor]:
    unit = {"input": inputs.detach()}
    if targets is not None:
        unit["targets"] = targets
    return unit


def _digest(tensor: torch.Tensor) -> bytes:
    return digest_tensor(tensor.detach().cpu())


def _grads_digest(module: torch.nn.Module, flat: torch.Tensor | None = None) -> bytes:
    """The :func:`~stagewarden.attest.tensor_digest.gradients_digest` of the stage's accumulated
    gradients (in one pass when they are views of ``flat``)."""
    return gradients_digest([p.grad for p in module.parameters() if p.grad is not None], flat)


def _batches(config: RunConfig) -> Batches:
    from pathlib import Path

    from stagewarden.runtime.data import default_corpus, load_corpus

    if config.data:
        corpus = load_corpus([Path(p) for p in config.data], config.max_bytes)
    else:
        corpus = default_corpus() if config.max_bytes is None else default_corpus(config.max_bytes)
    return Batches(corpus, config.model.block_size, config.batch_size, config.microbatches, config.seed)


def _configfs_evidence(message: Evidence, root: str, nonce: bytes, pubkey: bytes) -> Evidence:
    """``message`` with the quote this TEE guest's configfs-tsm gives for ``nonce`` and ``pubkey``,
    or why there is none (the coordinator refuses the worker with it)."""
    try:
        return dataclasses.replace(message, evidence=ConfigfsTsmProvider(root).get_evidence(nonce, pubkey))
    except AttestError as exc:
        return dataclasses.replace(message, evidence_error=exc.message, evidence_error_code=str(exc.code))
