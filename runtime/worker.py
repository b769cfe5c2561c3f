"""A stage worker: attests at start, runs its stage's schedule each step, signs receipts and
answers the coordinator's requests (commit, fetch, update).

One process per stage (rank ``stage + 1``); a standby worker (rank ``S + 1 + k``) attests and then
waits idle for an assignment. The worker talks to the coordinator (rank 0) with control messages
and to its neighbours with signed tensor transfers (:mod:`stagewarden.runtime.transport`).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from nacl.signing import SigningKey
from stagewarden.attest.headers import SignedHeader, TransferKind
from stagewarden.attest.providers import SimulatedProvider
from stagewarden.attest.receipts import (
    ExecutionEnv,
    Receipt,
    UnitKind,
    chain_genesis,
    encode_receipt,
    receipt_digest,
    sign_receipt,
)
from stagewarden.attest.tensor_digest import TensorDigest, digest_state_dict, digest_tensor, digest_tensors, dtype_name
from stagewarden.attest.vendor import device_identity, load_vendor
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.data import Batches
from stagewarden.runtime.measure import code_digest, stage_measurement
from stagewarden.runtime.model import StageModule, build_stage
from stagewarden.runtime.schedule import ActionKind, gpipe, one_f_one_b
from stagewarden.runtime.transport import Expected, Transport, TransportError
from stagewarden.runtime.units import (
    ForwardState,
    deterministic,
    make_optimizer,
    optimizer_step,
    stage_backward,
    stage_forward,
    step_loss,
)

#: Test-only hook: a stage index whose worker perturbs its initial weights before measuring them.
TAMPER_MEASUREMENT_ENV = "STAGEWARDEN_TEST_TAMPER_MEASUREMENT"
#: Test-only hook: ``STAGE:STEP``; that worker exits abruptly when step STEP starts.
CRASH_ENV = "STAGEWARDEN_TEST_CRASH"

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
    """The honest behaviour: every hook returns its argument unchanged."""

    def apply_input(self, stage: int, step: int, micro_batch: int, inputs: torch.Tensor) -> torch.Tensor:
        """Transform the input of a forward unit (token ids on stage 0, the received activation otherwise)."""
        return inputs

    def apply_forward(self, stage: int, step: int, micro_batch: int, output: torch.Tensor) -> torch.Tensor:
        """Transform the output activation a forward unit sends on (or the last stage's logits)."""
        return output

    def apply_backward(self, stage: int, step: int, micro_batch: int, grad: torch.Tensor) -> torch.Tensor:
        """Transform the input gradient a backward unit sends back."""
        return grad

    def apply_update(self, stage: int, step: int, module: torch.nn.Module) -> None:
        """Change the stage's weights in place after the optimizer step."""


def make_attack(plan: Any, stage: int) -> NoAttack | None:
    """The attack object a worker of ``stage`` applies for the run's attack plan; ``None`` for no plan.

    The plan is JSON data from
    :attr:`RunConfig.attack <stagewarden.runtime.config.RunConfig.attack>`. This version knows no attacks and applies
    :class:`NoAttack` whenever a plan is given.
    """
    return None if plan is None else NoAttack()


@dataclass
class StepRecord:
    """What a worker keeps of the current step until the next one starts: the committed unit
    inputs and the weights the step ran with (so the coordinator can fetch them)."""

    step: int
    weights: dict[str, torch.Tensor]
    units: dict[tuple[int, str], dict[str, torch.Tensor]] = field(default_factory=dict)


class StageWorker:
    """The worker process of one stage (or a standby).

    Args:
        config: The run configuration as this worker read it.
        rank: This process's rank (``stage + 1`` for a stage worker).
        transport: The point-to-point transport.
        vendor_dir: The simulated vendor folder that provisioned this machine's device identity
            (required when attestation is on).
    """

    def __init__(self, config: RunConfig, rank: int, transport: Transport, vendor_dir: str | None) -> None:
        self.config = config
        self.rank = rank
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
        self.attack: NoAttack | None = None

    # -- start --------------------------------------------------------------------------------

    def run(self) -> None:
        """Attest, then serve the coordinator until it releases this worker."""
        hello = self.transport.recv_json(COORDINATOR, ("hello", "shutdown"))
        if hello["type"] == "shutdown":
            return
        self.run_id = hello["run_id"]
        self.worker_id = hello["worker_id"]
        self.stage_index = hello["stage"]
        self.prev = chain_genesis(self.run_id, self.worker_id)
        with deterministic(self.config.train.threads):
            self._setup_stage()
            self._attest(hello.get("nonce"))
        reply = self.transport.recv_json(COORDINATOR, ("admitted", "refused", "shutdown"))
        if reply["type"] != "admitted":
            return
        self.keys = {int(s): bytes.fromhex(k) for s, k in reply["keys"].items()}
        self.ids = {int(s): w for s, w in reply["workers"].items()}
        self._serve()

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
        self.batches = _batches(c) if (s == 0 or s == c.stages - 1) else None
        self.schedule = (gpipe if c.schedule == "gpipe" else one_f_one_b)(c.stages, c.microbatches)[s]
        self.attack = make_attack(c.attack, s)

    def _attest(self, nonce_hex: str | None) -> None:
        pubkey = bytes(self.key.verify_key)
        message: dict[str, Any] = {"type": "evidence", "worker_id": self.worker_id, "receipt_key": pubkey.hex()}
        if nonce_hex is not None:
            if self.vendor_dir is None:
                raise TransportError("attestation is on but this worker has no vendor folder (--vendor)")
            weights = {k: v.detach().cpu() for k, v in self.module.state_dict().items()} if self.module else None
            measurement = stage_measurement(self.config, self.stage_index, weights, code_digest())
            device = device_identity(load_vendor(self.vendor_dir), device_id_for(self.rank))
            evidence = SimulatedProvider(device, measurement).get_evidence(bytes.fromhex(nonce_hex), pubkey)
            message["evidence"] = evidence.hex()
        self.transport.send_json(COORDINATOR, message)

    # -- serving ------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            msg = self.transport.recv_json(COORDINATOR, ("step", "fetch", "update", "idle", "release"))
            kind = msg["type"]
            if kind == "release":
                return
            if kind == "idle":
                continue
            if self.module is None:
                raise TransportError(f"standby worker {self.worker_id} got a {kind!r} request but holds no stage")
            with deterministic(self.config.train.threads):
                if kind == "step":
                    self._step(int(msg["step"]))
                elif kind == "fetch":
                    self._fetch(msg)
                else:
                    self._update(int(msg["step"]))

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

    def _expected(self, step: int, mb: int, kind: TransferKind) -> Expected:
        assert self.stage_index is not None
        c, s = self.config, self.stage_index
        sender = s - 1 if kind is TransferKind.ACTIVATION else s + 1
        return Expected(
            run_id=self.run_id,
            sender=self.ids[sender],
            sender_key=self.keys[sender],
            sender_stage=sender,
            receiver_stage=s,
            step=step,
            micro_batch=mb,
            kind=kind,
            dtype="float32",
            shape=(c.batch_size, c.model.block_size, c.model.n_embd),
        )

    def _header(self, step: int, mb: int, kind: TransferKind) -> SignedHeader:
        assert self.stage_index is not None
        s = self.stage_index
        return SignedHeader(
            run_id=self.run_id,
            sender=self.worker_id,
            sender_stage=s,
            sender_replica=0,
            receiver_stage=s + 1 if kind is TransferKind.ACTIVATION else s - 1,
            step=step,
            micro_batch=mb,
            kind=kind,
            tensor=TensorDigest("float32", (), bytes(32)),  # replaced when sent
            signed_at=dt.datetime.now(dt.UTC),
        )

    def _step(self, step: int) -> None:
        """Run this stage's forwards and backwards of ``step`` and commit the receipts and received headers."""
        crash = os.environ.get(CRASH_ENV)
        if crash is not None and crash == f"{self.stage_index}:{step}":
            os._exit(17)
        assert self.module is not None and self.stage_index is not None
        c, s, module = self.config, self.stage_index, self.module
        M = c.microbatches  # noqa: N806
        receipts_on = c.receipts
        weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.record = StepRecord(step, weights)
        weights_digest = digest_state_dict(weights) if receipts_on else b""
        env = ExecutionEnv.capture(self.device)
        inputs: dict[int, torch.Tensor] = {}
        grads_out: dict[int, torch.Tensor] = {}
        states: dict[int, ForwardState] = {}
        outputs: dict[int, torch.Tensor] = {}
        grads_in: dict[int, torch.Tensor] = {}
        targets: dict[int, torch.Tensor] = {}
        losses: dict[int, torch.Tensor] = {}
        receipts: list[str] = []
        headers: list[str] = []
        for action in self.schedule:
            m = action.microbatch
            kind = action.kind
            if kind is ActionKind.RECV_F:
                assert m is not None
                tensor, _, raw = self.transport.recv_signed(s, self._expected(step, m, TransferKind.ACTIVATION))
                inputs[m] = tensor
                headers.append(raw.hex())
            elif kind is ActionKind.RECV_B:
                assert m is not None
                tensor, _, raw = self.transport.recv_signed(s + 2, self._expected(step, m, TransferKind.GRADIENT))
                grads_out[m] = tensor
                headers.append(raw.hex())
            elif kind is ActionKind.F:
                assert m is not None
                if module.is_first or module.is_last:
                    assert self.batches is not None
                    x, y = self.batches.microbatch(step, m)
                    if module.is_first:
                        inputs[m] = x.to(self.device)
                    targets[m] = y.to(self.device)
                if self.attack is not None:
                    inputs[m] = self.attack.apply_input(s, step, m, inputs[m])
                state = stage_forward(module, inputs[m], M, targets=targets[m] if module.is_last else None)
                states[m] = state
                output = state.output.detach()
                if self.attack is not None:
                    output = self.attack.apply_forward(s, step, m, output)
                outputs[m] = output
                if state.loss is not None:
                    losses[m] = state.loss
                self.record.units[(m, "forward")] = _unit_tensors(inputs[m], targets.get(m) if module.is_last else None)
                if receipts_on:
                    receipts.append(
                        self._receipt(
                            step, m, UnitKind.FORWARD, _digest(inputs[m]), _digest(output), weights_digest, env
                        ).hex()
                    )
            elif kind is ActionKind.SEND_F:
                assert m is not None
                self.transport.send_signed(
                    s + 2, outputs.pop(m), self._header(step, m, TransferKind.ACTIVATION), self.key, blocking=False
                )
            elif kind is ActionKind.B:
                assert m is not None
                grad = stage_backward(states.pop(m), grads_out.get(m))
                unit = _unit_tensors(inputs[m], targets.get(m) if module.is_last else None)
                if m in grads_out:
                    unit["grad_output"] = grads_out[m]
                self.record.units[(m, "backward")] = unit
                if grad is not None:
                    grad = grad.detach()
                    if self.attack is not None:
                        grad = self.attack.apply_backward(s, step, m, grad)
                    grads_in[m] = grad
                    out_digest = _digest(grad) if receipts_on else b""
                else:  # stage 0: commit to the accumulated parameter gradients
                    out_digest = _grads_digest(module) if receipts_on else b""
                if receipts_on:
                    in_digest = _digest(grads_out[m]) if m in grads_out else _digest(targets[m])
                    receipts.append(
                        self._receipt(step, m, UnitKind.BACKWARD, in_digest, out_digest, weights_digest, env).hex()
                    )
                grads_out.pop(m, None)
            elif kind is ActionKind.SEND_B:
                assert m is not None
                self.transport.send_signed(
                    s, grads_in.pop(m), self._header(step, m, TransferKind.GRADIENT), self.key, blocking=False
                )
            # UPDATE waits for the coordinator's decision
        self.transport.flush()
        message: dict[str, Any] = {"type": "commit", "step": step, "receipts": receipts, "headers": headers}
        if module.is_last:
            message["loss"] = step_loss([losses[m] for m in range(M)]).hex()
            message["microbatch_losses"] = [float(losses[m]).hex() for m in range(M)]
        self.transport.send_json(COORDINATOR, message)

    def _update(self, step: int) -> None:
        """Apply the optimizer step of ``step`` and report the update receipt."""
        assert self.module is not None and self.record is not None and self.stage_index is not None
        module = self.module
        receipts_on = self.config.receipts
        grads = _grads_digest(module) if receipts_on else b""
        before = digest_state_dict(self.record.weights) if receipts_on else b""
        optimizer_step(self.optimizer)
        if self.attack is not None:
            self.attack.apply_update(self.stage_index, step, module)
        after = digest_state_dict(module.state_dict())
        message: dict[str, Any] = {"type": "updated", "step": step, "weights": after.hex()}
        if receipts_on:
            env = ExecutionEnv.capture(self.device)
            message["receipt"] = self._receipt(step, 0, UnitKind.UPDATE, grads, after, before, env).hex()
        self.transport.send_json(COORDINATOR, message)

    def _fetch(self, msg: dict[str, Any]) -> None:
        """Answer a FETCH: the committed input tensors of one unit and the weights it ran with."""
        step, mb, kind = msg["step"], msg["micro_batch"], msg["kind"]
        record = self.record
        unit = record.units.get((mb, kind)) if record is not None and record.step == step else None
        if unit is None or record is None:
            self.transport.send_json(
                COORDINATOR,
                {
                    "type": "fetched",
                    "error": f"unit step {step} micro-batch {mb} {kind} is not kept by {self.worker_id}",
                },
            )
            return
        tensors = [(f"input.{name}", t) for name, t in unit.items()] + [
            (f"weights.{name}", t) for name, t in record.weights.items()
        ]
        meta = [
            {"name": name, "dtype": dtype_name(t.dtype), "shape": list(t.shape), "digest": _digest(t).hex()}
            for name, t in tensors
        ]
        self.transport.send_json(
            COORDINATOR, {"type": "fetched", "step": step, "micro_batch": mb, "kind": kind, "tensors": meta}
        )
        for _, t in tensors:
            self.transport.send_tensor(COORDINATOR, t)


def _unit_tensors(inputs: torch.Tensor, targets: torch.Tensor | None) -> dict[str, torch.Tensor]:
    unit = {"input": inputs.detach()}
    if targets is not None:
        unit["targets"] = targets
    return unit


def _digest(tensor: torch.Tensor) -> bytes:
    return digest_tensor(tensor.detach().cpu())


def _grads_digest(module: torch.nn.Module) -> bytes:
    return digest_tensors(p.grad.detach().cpu() for p in module.parameters() if p.grad is not None)


def _batches(config: RunConfig) -> Batches:
    from pathlib import Path

    from stagewarden.runtime.data import default_corpus, load_corpus

    if config.data:
        corpus = load_corpus([Path(p) for p in config.data], config.max_bytes)
    else:
        corpus = default_corpus() if config.max_bytes is None else default_corpus(config.max_bytes)
    return Batches(corpus, config.model.block_size, config.batch_size, config.microbatches, config.seed)
