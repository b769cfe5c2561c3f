"""A stage's model and optimizer and what a worker keeps of its steps: the record of the
current and the previous step (for FETCH, a push and a recomputation), the digests of the
current weights and optimizer state, and loading a verified checkpoint (:class:`StageState`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stagewarden.attest.tensor_digest import digest_state_dict, digest_tensor, dtype_name
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.model import StageModule, build_stage
from stagewarden.runtime.protocol import Load
from stagewarden.runtime.protocol.ids import COORDINATOR
from stagewarden.runtime.reexecute import export_optimizer_state, import_optimizer_state
from stagewarden.runtime.transport import Transport, TransportError
from stagewarden.runtime.units import make_optimizer
from stagewarden.runtime.worker.grads import GradBuffers
from stagewarden.runtime.worker.hooks import perturb_measured_weights

#: A unit's tensors by name.
Tensors = dict[str, torch.Tensor]


@dataclass
class StepRecord:
    """What a worker keeps of the current step until the next one starts: the committed unit
    inputs, the weights the step ran with and, when the run verifies or responds, the optimizer
    state before the step and the accumulated gradients of its update (so the coordinator can
    fetch them, and a recomputation can start from the state before the step)."""

    step: int
    weights: Tensors
    units: dict[tuple[int, str], Tensors] = field(default_factory=dict)
    optimizer: Tensors | None = None
    grads: Tensors | None = None
    weights_digest: bytes = b""
    """:func:`~stagewarden.attest.tensor_digest.digest_state_dict` of ``weights`` (with receipts on)."""
    outputs: dict[tuple[int, str], Tensors] = field(default_factory=dict)
    """With ``spot_check_compare = "tolerance"``: each unit's committed output, by micro-batch and
    kind (``output``; ``grad_input``, or ``grad.<parameter>`` on stage 0; ``weights.<name>`` after
    the update, under micro-batch 0), for FETCH."""

    def unit_inputs(self, mb: int, kind: str) -> Tensors | None:
        """The committed inputs of one unit of the step (an update unit's are the accumulated
        gradients and the optimizer state before it); ``None`` when not kept."""
        if kind == "update":
            if self.grads is None or self.optimizer is None:
                return None
            unit = {f"grad.{k}": v for k, v in self.grads.items()}
            unit.update({f"optimizer.{k}": v for k, v in self.optimizer.items()})
            return unit
        return self.units.get((mb, kind))


class StageState:
    """The model and optimizer of a worker's stage, and what the worker keeps of its steps.

    Args:
        config: The run configuration.
        stage: The stage.
        device: Where the stage computes.
        worker_id: The worker's id (for error messages).
        perturb: Whether to change the initial weights before they are measured (a test hook).
    """

    def __init__(
        self, config: RunConfig, stage: int, device: torch.device, worker_id: str, perturb: bool = False
    ) -> None:
        self.config, self.stage, self.worker_id = config, stage, worker_id
        module = build_stage(config.model, config.stages, stage, config.seed).to(device)
        if perturb:
            perturb_measured_weights(module)
        self.module: StageModule = module
        self.optimizer = make_optimizer(module, config.train)
        self.record: StepRecord | None = None
        self.previous: StepRecord | None = None
        """The previous step's record while a check of that step may still be running."""
        self.grads_trace: tuple[int, list[bytes]] | None = None
        """The step and gradient trace of the stage's last schedule (the digest of its accumulated
        gradients after each backward unit, in micro-batch order), which its update commits to."""
        self.grad_buffers = GradBuffers()
        """Flat gradient buffers, reused once no kept step record can hold views of them."""
        self.current_digest: bytes | None = None
        """The digest of the stage's current weights when known (after an update, a restore or a
        load), so the next step need not hash them again."""
        self.optimizer_digest: bytes | None = None
        """The digest of the stage's optimizer state when known (the state after the last update,
        which the next update starts from), so the next update need not hash it again."""
        self.keep_outputs = config.spot_check_compare == "tolerance"
        """Whether to keep each unit's committed output for FETCH (tolerance-mode spot checks)."""
        self.keeps_state = config.verification != "none"
        """Whether to keep the optimizer state and gradients of each step (for FETCH and recomputation)."""

    def fresh_record(self, step: int) -> StepRecord:
        """A record of ``step`` starting from the current weights (and optimizer state, when kept)."""
        module = self.module
        weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
        optimizer = export_optimizer_state(module, self.optimizer) if self.keeps_state else None
        return StepRecord(step, weights, optimizer=optimizer)

    def keep_previous(self, step: int, keep: bool) -> None:
        """As ``step`` starts: keep the current record as the previous one if ``keep`` and it is
        of ``step - 1``; free the gradient buffers no kept record can hold."""
        kept = self.record if keep else None
        self.previous = kept if kept is not None and kept.step == step - 1 else None
        self.grad_buffers.release_before(step - 1)  # only this step's record and the previous one stay

    def kept_record(self, step: int) -> StepRecord | None:
        """The record of ``step`` if it is the current or the previous one."""
        return next((r for r in (self.record, self.previous) if r is not None and r.step == step), None)

    def forget(self) -> None:
        """Keep no step (after a load, or when a standby takes a stage): every buffer is free."""
        self.record = self.previous = None
        self.grad_buffers.release_before(None)

    def discard(self, step: int) -> None:
        """Drop the computation of ``step``: its record and gradients; the previous step's
        record is the current one again.

        Raises:
            TransportError: ``step`` is not the step the stage last computed.
        """
        if self.record is None or self.record.step != step:
            raise TransportError(f"worker {self.worker_id} got a malformed discard request")
        self.record, self.previous = self.previous, None
        self.module.zero_grad(set_to_none=True)
        self.grads_trace = self.optimizer_digest = None

    def restore(self, step: int) -> bytes:
        """Return to the state before ``step`` (weights and optimizer state) and drop its
        gradients; the digest of the weights.

        Raises:
            TransportError: The worker does not keep the state before ``step``.
        """
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
        self.optimizer_digest = None
        self.current_digest = digest_state_dict(module.state_dict())
        return self.current_digest

    def load(self, weights: Tensors, optimizer: Tensors) -> bytes:
        """Take a verified checkpoint's weights and optimizer state; the digest of the weights.

        Raises:
            TransportError: The optimizer state does not fit the stage.
        """
        module = self.module
        module.load_state_dict(weights)
        self.optimizer = make_optimizer(module, self.config.train)
        try:
            import_optimizer_state(module, self.optimizer, optimizer)
        except ValueError as exc:
            raise TransportError(f"checkpoint optimizer state of stage {self.stage}: {exc}") from None
        module.zero_grad(set_to_none=True)
        self.grads_trace = None
        self.forget()
        self.optimizer_digest = None
        self.current_digest = digest_state_dict(module.state_dict())
        return self.current_digest

    def state_tensors(self, weights: str, optimizer: str) -> list[tuple[str, torch.Tensor]]:
        """The stage's current weights and optimizer state, named ``<weights>.<name>`` and
        ``<optimizer>.<param>/<field>``."""
        tensors = [(f"{weights}.{k}", v.detach().cpu()) for k, v in self.module.state_dict().items()]
        tensors += [(f"{optimizer}.{k}", v) for k, v in export_optimizer_state(self.module, self.optimizer).items()]
        return tensors


def receive_checkpoint(
    transport: Transport, msg: Load, modules: dict[str, torch.nn.Module], stage: int
) -> dict[str, Tensors]:
    """Receive the tensors a ``load`` message announces, each checked against its announced
    digest and against the module it is for: ``modules`` by name prefix (``""`` for the stage,
    ``"replica_"`` for a checker's replica). Returns them by group (``weights``, ``optimizer``,
    ``replica_weights``, ``replica_optimizer``) and name.

    Raises:
        TransportError: A tensor is not acceptable, does not fit or does not match its digest, or
            a module's weights are not all there.
    """
    received: dict[str, Tensors] = {}
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
                raise TransportError(f"checkpoint tensor {name!r} does not fit stage {stage}")
            torch_dtype = ref.dtype
        elif section == "optimizer" and dtype == "float32" and key.rpartition("/")[0] in params:
            param, field_name = params[key.rpartition("/")[0]], key.rpartition("/")[2]
            if shape != (() if field_name == "step" else tuple(param.shape)):
                raise TransportError(f"checkpoint tensor {name!r} has the wrong shape")
            torch_dtype = torch.float32
        else:
            raise TransportError(f"checkpoint tensor {name!r} is not acceptable")
        tensor = transport.recv_tensor(COORDINATOR, torch_dtype, shape).cpu()
        if digest(tensor) != item.digest:
            raise TransportError(f"checkpoint tensor {name!r} does not match its announced digest")
        received.setdefault(group, {})[key] = tensor
    for prefix, target in modules.items():
        if set(received.get(f"{prefix}weights", {})) != set(target.state_dict()):
            raise TransportError(f"the checkpoint does not hold every weight of stage {stage}")
    return received


def unit_tensors(inputs: torch.Tensor, targets: torch.Tensor | None) -> Tensors:
    """The committed inputs of a forward unit: its input and, on the last stage, the targets."""
    unit = {"input": inputs.detach()}
    if targets is not None:
        unit["targets"] = targets
    return unit


def digest(tensor: torch.Tensor) -> bytes:
    """The digest of a tensor (moved to the CPU)."""
    return digest_tensor(tensor.detach().cpu())
