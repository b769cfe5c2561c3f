"""Re-executing committed units: fetching (or taking the pushed) inputs and weights of a unit,
checking them against its receipt, recomputing it and comparing (bitwise or within the stage's
calibrated tolerance)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from stagewarden.attest.receipts import Receipt, UnitKind, receipt_digest
from stagewarden.attest.run_record_parts import SignedDetection
from stagewarden.attest.tensor_digest import (
    digest_state_dict,
    digest_tensor,
    gradient_trace_digest,
    gradients_digest,
    last_forward_output_digest,
    update_input_digest,
    update_output_digest,
)
from stagewarden.runtime.compare import SpotCheckError, Tolerance, compare_within
from stagewarden.runtime.coordinator.commitments import StepCommit
from stagewarden.runtime.coordinator.context import NO_GRADS, RunContext
from stagewarden.runtime.coordinator.errors import RunFailed
from stagewarden.runtime.coordinator.wire import FETCH_DTYPES, MAX_FETCH_ELEMENTS, digest_of_weights, numel
from stagewarden.runtime.data import batches_for
from stagewarden.runtime.protocol import Fetch, Fetched, FetchUnavailable, TensorMeta, receive, send_message
from stagewarden.runtime.reexecute import StagePool, reexecute_backward, reexecute_forward_outputs, reexecute_update
from stagewarden.runtime.transport import (
    MAX_FRAME_BYTES,
    TransportError,
    packed_size,
    unpack_tensors,
)
from stagewarden.runtime.units import deterministic, loss_digest

if TYPE_CHECKING:
    from stagewarden.runtime.coordinator.accusations import DetectionSigner
    from stagewarden.runtime.coordinator.ledger import Ledger
    from stagewarden.runtime.coordinator.roster import Roster
    from stagewarden.runtime.coordinator.tally import RunTally


@dataclasses.dataclass(frozen=True)
class FetchedUnit:
    """What a worker returns for a FETCH: the unit's committed inputs and the weights it ran with.

    Attributes:
        stage: The stage asked.
        step: The step.
        micro_batch: The micro-batch.
        kind: ``forward`` or ``backward``.
        inputs: ``input`` (token ids or the received activation), ``targets`` on the last stage,
            ``grad_output`` for a backward unit of a stage other than the last.
        weights: The stage's state dict at the start of the step.
        outputs: With ``spot_check_compare = "tolerance"``: the unit's committed output
            (``output``; ``grad_input`` or ``grad.<parameter>``; ``weights.<name>`` of an update).
    """

    stage: int
    step: int
    micro_batch: int
    kind: str
    inputs: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    digests: dict[str, bytes] = dataclasses.field(default_factory=dict)
    """Tensor digests already computed, by ``weights.<name>`` (the rest are computed when needed)."""
    outputs: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def weights_digest(self) -> bytes:
        """:func:`~stagewarden.attest.tensor_digest.digest_state_dict` of the weights."""
        return digest_of_weights(self.weights, self.digests)


def _output_committed(unit: FetchedUnit, receipt: Receipt, accumulated: bytes | None = None) -> bool:
    """Tolerance mode: whether the output a worker returned for a unit (:attr:`FetchedUnit.outputs`)
    is the one it committed to: the activation or logits of a forward unit; the input gradient of
    a backward unit (stage 0: none) and its accumulated parameter gradients, in order (the
    ``accumulated`` entry of the stage's gradient trace, when known; stage 0's receipt commits to
    them too); the weights and optimizer state after an update."""
    out = unit.outputs
    if unit.kind == "update":
        weights = {k.removeprefix("weights."): v for k, v in out.items() if k.startswith("weights.")}
        state = {k.removeprefix("optimizer."): v for k, v in out.items() if k.startswith("optimizer.")}
        return (
            bool(weights)
            and len(weights) + len(state) == len(out)
            and update_output_digest(digest_state_dict(weights), digest_state_dict(state)) == receipt.output_digest
        )
    if unit.kind == "forward":
        return (
            set(out) <= {"output", "loss"} and "output" in out and _forward_output_digest(out) == receipt.output_digest
        )
    grads = [v for k, v in out.items() if k.startswith("grad.")]
    first = unit.stage == 0
    if len(grads) + (0 if first else 1) != len(out) or not grads:
        return False
    returned = gradients_digest(grads)
    if first and returned != receipt.output_digest:
        return False
    if not first and ("grad_input" not in out or digest_tensor(out["grad_input"]) != receipt.output_digest):
        return False
    return accumulated is None or returned == accumulated


def _forward_output_digest(outputs: dict[str, torch.Tensor]) -> bytes:
    """What a forward receipt commits to, from the unit's outputs: the ``output`` activation's
    digest or, with a ``loss`` (the last stage), the digest of the logits and the loss."""
    digest: bytes
    if "loss" in outputs:
        digest = last_forward_output_digest(digest_tensor(outputs["output"]), loss_digest(outputs["loss"]))
    else:
        digest = digest_tensor(outputs["output"])
    return digest


class Reexecution:
    """The coordinator's re-execution of sampled or accused units.

    Attributes:
        tolerance: With ``spot_check_compare = "tolerance"``: each calibrated stage's tolerance.
    """

    def __init__(
        self, ctx: RunContext, roster: Roster, ledger: Ledger, tally: RunTally, signer: DetectionSigner
    ) -> None:
        self.ctx, self.roster, self.ledger, self.tally, self.signer = ctx, roster, ledger, tally, signer
        self.tolerance: dict[int, Tolerance] = {}
        self._pool: StagePool | None = None
        self._batches: Any = None

    @property
    def stage_pool(self) -> StagePool:
        """The stage modules the coordinator re-executes units on (built on first use)."""
        if self._pool is None:
            self._pool = StagePool(self.ctx.config.model, self.ctx.config.stages, self.ctx.config.seed)
        return self._pool

    def data(self, step: int, micro_batch: int, shard: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch ``micro_batch`` of ``step`` in the data shard of replica ``shard``."""
        if self._batches is None:
            self._batches = batches_for(self.ctx.config)
        x, y = self._batches.microbatch(step, micro_batch, shard=shard)
        return x, y

    def check_unit(
        self, commit: StepCommit, stage: int, micro_batch: int, kind: str, unit: FetchedUnit | None = None
    ) -> list[SignedDetection]:
        """Spot-check one forward or backward unit: take its inputs and weights (``unit``, as
        pushed; fetched with FETCH when ``None``), check them
        against the receipt (and stage 0's token ids and the last stage's targets against the
        step's data), re-execute it here and compare the output bitwise with the receipt's."""
        c, step = self.ctx.config, commit.step
        receipt = commit.receipt(stage, micro_batch, UnitKind(kind))
        if receipt is None:
            return [
                self.signer.detection(step, micro_batch, kind, stage, "missing_receipt", "no receipt committed", b"")
            ]
        evidence = receipt_digest(receipt)

        def found(check: str, message: str) -> list[SignedDetection]:
            return [self.signer.detection(step, micro_batch, kind, stage, check, message, evidence)]

        if unit is None:
            try:
                unit = self.fetch(stage, step, micro_batch, kind)
            except TransportError as exc:
                return found("fetch", f"the worker did not return the committed unit: {exc}")
        inputs = unit.inputs
        layout = self.roster.layout
        is_last = layout.is_last(stage)
        received = inputs.get("input") if kind == "forward" else inputs.get("targets" if is_last else "grad_output")
        if (
            received is None
            or digest_tensor(received) != receipt.input_digest
            or unit.weights_digest != receipt.weights_digest
        ):
            return found(
                "fetch_mismatch",
                "the inputs or weights the worker returned differ from those its receipt commits to",
            )
        if (
            kind == "backward" and layout.stage(stage) > 0
        ):  # its forward again: on the input the forward unit committed to
            forward = commit.receipt(stage, micro_batch, UnitKind.FORWARD)
            if forward is None or digest_tensor(inputs.get("input", torch.empty(0))) != forward.input_digest:
                return found(
                    "fetch_mismatch",
                    "the activation the worker returned for the backward unit is not the input its forward "
                    "receipt commits to",
                )
        trace = self.ledger.gradient_trace(commit, stage) if kind == "backward" else None
        if trace is not None:  # the unit adds to the gradients the stage's previous backward unit committed to
            before = [v for k, v in inputs.items() if k.startswith("grad_before.")]
            if gradients_digest(before) != (trace[micro_batch - 1] if micro_batch > 0 else NO_GRADS):
                return found(
                    "fetch_mismatch",
                    "the accumulated gradients the worker returned as the backward unit's start are not those its "
                    "gradient trace commits to before the unit",
                )
        within = c.spot_check_compare == "tolerance"
        if within and not _output_committed(unit, receipt, None if trace is None else trace[micro_batch]):
            return found("fetch_mismatch", "the output the worker returned differs from the one it committed to")
        x, y = self.data(step, micro_batch, layout.replica(stage))
        if layout.stage(stage) == 0 and not torch.equal(inputs.get("input", torch.empty(0)), x):
            return found("data", "stage 0 computed on token ids that are not the step's data")
        if is_last and not torch.equal(inputs.get("targets", torch.empty(0)), y):
            return found("data", "the last stage computed on targets that are not the step's data")
        self.tally.spot["units_checked"] += 1
        try:
            expected = self._reexecute_unit(unit)
        except (SpotCheckError, KeyError, RuntimeError) as exc:
            return found("spot_check", f"the committed unit cannot be re-executed: {exc}")
        if within:  # compare with the committed outputs under the stage's calibrated tolerance
            message = self._beyond_tolerance(stage, expected, unit.outputs, f"the {kind} unit")
            return [] if message is None else found("spot_check", message)
        # bitwise: the receipt commits to the output (a forward unit), the input gradient (a backward
        # unit of a stage after the first) or the accumulated gradients (stage 0's backward unit)
        grads = [v for k, v in expected.items() if k.startswith("grad.")]
        accumulated = gradients_digest(grads) if kind == "backward" else None
        if kind == "forward":
            produced: bytes | None = _forward_output_digest(expected)
        else:
            produced = digest_tensor(expected["grad_input"]) if "grad_input" in expected else accumulated
        if produced != receipt.output_digest:
            return found("spot_check", f"re-executing the {kind} unit gives another output than the receipt's")
        if trace is not None and accumulated != trace[micro_batch]:
            return found(
                "spot_check",
                "re-executing the backward unit gives other accumulated parameter gradients than the stage's "
                "gradient trace commits to",
            )
        return []

    def _reexecute_unit(self, unit: FetchedUnit) -> dict[str, torch.Tensor]:
        """Re-execute a forward or backward unit from its committed inputs and weights; its outputs
        by name: ``output`` (a forward unit); ``grad_input`` (a backward unit of a stage after the
        first) and ``grad.<parameter>`` (a backward unit: the gradients accumulated up to and with
        the unit, from the ``grad_before.<parameter>`` it started from).

        Raises:
            SpotCheckError, KeyError, RuntimeError: The unit cannot be re-executed.
        """
        c, stage, inputs = self.ctx.config, self.roster.layout.stage(unit.stage), unit.inputs
        with deterministic(c.train.threads):
            if unit.kind == "forward":  # its output and, on the last stage, the loss
                outputs: dict[str, torch.Tensor] = reexecute_forward_outputs(
                    c.model,
                    c.stages,
                    stage,
                    unit.weights,
                    inputs["input"],
                    inputs.get("targets"),
                    microbatches=c.microbatches,
                    pool=self.stage_pool,
                )
                return outputs
            result = reexecute_backward(
                c.model,
                c.stages,
                stage,
                unit.weights,
                inputs["input"],
                inputs.get("grad_output"),
                inputs.get("targets"),
                microbatches=c.microbatches,
                pool=self.stage_pool,
            )
            out = {} if result.grad_input is None else {"grad_input": result.grad_input}
            before = {k.removeprefix("grad_before."): v for k, v in inputs.items() if k.startswith("grad_before.")}
            for n, g in result.param_grads.items():  # this unit's gradients, added to those before it
                out[f"grad.{n}"] = before[n] + g if n in before else g
            return out

    def _beyond_tolerance(
        self, stage: int, expected: dict[str, torch.Tensor], committed: dict[str, torch.Tensor], what: str
    ) -> str | None:
        """Compare re-executed outputs with committed ones, tensor by tensor by name, under the
        stage's calibrated tolerance (:func:`~stagewarden.runtime.compare.compare_within`);
        return why they differ, or ``None`` when they agree."""
        tolerance = self.tolerance.get(stage)
        if tolerance is None:
            raise RunFailed(f"stage {stage} has no calibrated spot-check tolerance")
        if set(committed) != set(expected):
            return f"the worker committed other output tensors for {what} than its re-execution gives"
        names = list(expected)
        comparison = compare_within([expected[n] for n in names], [committed[n] for n in names], tolerance.value)
        if comparison.equal:
            return None
        return (
            f"re-executing {what} gives another output than the receipt's: relative error "
            f"{comparison.relative_error:.3g} is above stage {stage}'s calibrated tolerance {tolerance.value:.3g}"
        )

    def check_update(
        self, s: int, step: int, receipt: Receipt, unit: FetchedUnit | None = None
    ) -> list[SignedDetection]:
        """Re-execute stage ``s``'s update unit of ``step``: with the weights before it, the
        accumulated gradients and the optimizer state (``unit``, as pushed; fetched when ``None``),
        checked against the update receipt (the gradients are the last entry of the gradient trace
        it commits to), re-execute the AdamW step and compare the new weights' and optimizer
        state's digests with the receipt's output. Returns the detections (none when they agree)."""
        c, evidence = self.ctx.config, receipt_digest(receipt)

        def found(check: str, message: str) -> list[SignedDetection]:
            return [self.signer.detection(step, 0, "update", s, check, message, evidence)]

        if unit is None:
            try:
                unit = self.fetch(s, step, 0, "update")
            except TransportError as exc:
                return found("fetch", f"no update unit returned: {exc}")
        grads = {k[5:]: v for k, v in unit.inputs.items() if k.startswith("grad.")}
        state = {k[10:]: v for k, v in unit.inputs.items() if k.startswith("optimizer.")}
        trace = self.ledger.traces.get(step, {}).get(s)
        if trace is None:
            raise RunFailed(f"the gradient trace of stage {s}'s update of step {step} is no longer kept")
        committed_input = update_input_digest(gradient_trace_digest(trace), digest_state_dict(state))
        if (
            unit.weights_digest != receipt.weights_digest
            or committed_input != receipt.input_digest
            or gradients_digest(list(grads.values())) != trace[-1]
        ):
            return found(
                "fetch_mismatch",
                "the weights, gradients or optimizer state the worker returned differ from those its update "
                "receipt commits to",
            )
        within = c.spot_check_compare == "tolerance"
        if within and not _output_committed(unit, receipt):
            return found(
                "fetch_mismatch", "the weights after the update the worker returned differ from its update receipt's"
            )
        self.tally.spot["units_checked"] += 1
        counts = {int(v) for k, v in state.items() if k.endswith("/step")}
        try:
            with deterministic(c.train.threads):
                result = reexecute_update(
                    c.model,
                    c.stages,
                    self.roster.layout.stage(s),
                    unit.weights,
                    grads,
                    state,
                    c.train,
                    max(counts, default=0),
                    pool=self.stage_pool,
                )
        except SpotCheckError as exc:
            return found("spot_check", f"cannot re-execute: {exc}")
        if within:
            expected = {f"weights.{k}": v for k, v in result.weights.items()}
            expected |= {f"optimizer.{k}": v for k, v in result.optimizer_state.items()}
            message = self._beyond_tolerance(s, expected, unit.outputs, "the update")
            return [] if message is None else found("spot_check", message)
        after = update_output_digest(result.weights_digest, digest_state_dict(result.optimizer_state))
        if after != receipt.output_digest:
            return found(
                "spot_check", "re-executing the update gives other weights or optimizer state than the update receipt's"
            )
        return []

    def fetch(self, stage: int, step: int, micro_batch: int, kind: str) -> FetchedUnit:
        """Ask the worker of ``stage`` for one committed unit's inputs and the weights it ran with.

        Valid between a step's commitment and the next step. The tensors are checked against the
        digests the worker announces; compare them with the receipt to catch a worker that lies.

        Raises:
            TransportError: The worker does not keep the unit, or sent a malformed answer.
        """
        rank = self.roster.rank_of(stage)
        send_message(self.ctx.transport, rank, Fetch(step, micro_batch, kind))
        fetched = receive(self.ctx.transport, rank, Fetched, FetchUnavailable)
        if isinstance(fetched, FetchUnavailable):
            raise TransportError(fetched.error)
        assert isinstance(fetched, Fetched)
        groups = ("input", "weights", "output")
        received, digests = self.recv_tensors(stage, fetched.tensors, groups)
        return FetchedUnit(
            stage,
            step,
            micro_batch,
            kind,
            received["input"],
            received["weights"],
            digests=digests,
            outputs=received.get("output", {}),
        )

    def recv_tensors(
        self, stage: int, announced: Sequence[TensorMeta], groups: tuple[str, ...]
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, bytes]]:
        """Receive the tensors a worker announced (``announced``: name ``<group>.<key>``, dtype,
        shape, digest, as its message parsed), packed in one buffer, checking each against its
        announced digest.

        Returns:
            The tensors by group and key (every group of ``groups`` present, possibly empty), and
            each tensor's digest by its full name.
        """
        rank = self.roster.rank_of(stage)
        layout: list[tuple[torch.dtype, tuple[int, ...]]] = []
        names: list[tuple[str, str, str]] = []
        for meta in announced:
            group, _, key = meta.name.partition(".")
            if numel(meta.shape) > MAX_FETCH_ELEMENTS:
                raise TransportError(f"worker of stage {stage} announced an unacceptable tensor {meta.name!r}")
            if group not in groups or not key:
                raise TransportError(f"worker of stage {stage} sent an unexpected tensor {meta.name!r}")
            layout.append((FETCH_DTYPES[meta.dtype], meta.shape))
            names.append((meta.name, group, key))
        received: dict[str, dict[str, torch.Tensor]] = {g: {} for g in groups}
        digests: dict[str, bytes] = {}
        if not layout:
            return received, digests
        size = packed_size(layout)
        if size > MAX_FRAME_BYTES:
            raise TransportError(
                f"worker of stage {stage} announced {size} bytes of tensors (the limit is {MAX_FRAME_BYTES})"
            )
        tensors = unpack_tensors(self.ctx.transport.recv_tensor(rank, torch.uint8, (size,)).cpu(), layout)
        for (name, group, key), meta, tensor in zip(names, announced, tensors, strict=True):
            digest = digest_tensor(tensor)
            if digest != meta.digest:
                raise TransportError(f"fetched tensor {name!r} of stage {stage} does not match its announced digest")
            if key in received[group]:
                raise TransportError(f"worker of stage {stage} sent tensor {name!r} twice")
            received[group][key] = tensor
            digests[name] = digest
        return received, digests

    def fetch_check(self, commit: StepCommit) -> None:
        c = self.ctx.config
        for s in self.roster.slots:
            for m, kind in ((0, UnitKind.FORWARD), (c.microbatches - 1, UnitKind.BACKWARD)):
                unit = self.fetch(s, commit.step, m, str(kind))
                receipt = commit.receipt(s, m, kind)
                assert receipt is not None
                if kind is UnitKind.FORWARD:
                    input_ok = digest_tensor(unit.inputs["input"]) == receipt.input_digest
                else:
                    source = unit.inputs.get("grad_output", unit.inputs.get("targets"))
                    input_ok = source is not None and digest_tensor(source) == receipt.input_digest
                self.ctx.events.write(
                    "fetch_check",
                    stage=s,
                    step=commit.step,
                    micro_batch=m,
                    kind=str(kind),
                    input_ok=input_ok,
                    weights_ok=unit.weights_digest == receipt.weights_digest,
                )
