"""Commit-then-sample spot checking: unpredictable sampling of committed units and their re-execution.

Sampling
   Before a step, the coordinator draws a secret and publishes its commitment
   (:class:`SampleSeed`). Only after every worker's receipts for the step are committed does it
   reveal the secret; the sampling randomness is ``BLAKE3(domain || secret || receipts digest)``.
   A worker therefore cannot know, when it commits, which of its units will be checked (the
   secret is hidden), and the coordinator cannot steer the sample after seeing the receipts (it
   is bound to the secret by the commitment, and the receipts enter the randomness). Anyone can
   recompute the sample after the reveal (:func:`verify_reveal`, :func:`sampling_randomness`).

Re-execution
   :func:`reexecute_forward`, :func:`reexecute_backward` and :func:`reexecute_update` rebuild a
   stage from in-memory tensors (never from unpickled bytes) and run the same units of
   :mod:`stagewarden.runtime.units` as the workers. :func:`compare` decides: bitwise (digest
   equality) on identical hardware with deterministic algorithms, or within a tolerance
   calibrated from honest re-executions (:func:`calibrate_tolerance`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import blake3
import torch

from stagewarden.attest.tensor_digest import digest_state_dict, digest_tensor
from stagewarden.runtime.model import GPTConfig, StageModule, build_stage
from stagewarden.runtime.units import TrainConfig, make_optimizer, optimizer_step, stage_backward, stage_forward

#: The type of a unit in :func:`sample_units` (any value the engine uses to name a unit).
U = TypeVar("U")

COMMIT_DOMAIN = b"stagewarden/spotcheck/commit/v1\x00"
RANDOMNESS_DOMAIN = b"stagewarden/spotcheck/randomness/v1\x00"
RECEIPTS_DOMAIN = b"stagewarden/spotcheck/receipts/v1\x00"
DRAW_DOMAIN = b"stagewarden/spotcheck/draw/v1\x00"
SECRET_SIZE = 32

#: Smallest tolerance :func:`calibrate_tolerance` returns: 64 float32 ulps at 1.0 (about 7.6e-6).
TOLERANCE_FLOOR = 64 * float(torch.finfo(torch.float32).eps)
#: Default factor between the largest honest error seen in calibration and the tolerance.
SAFETY_FACTOR = 10.0


class SpotCheckError(ValueError):
    """A spot-check input that cannot be used: a wrong reveal, weights that do not fit the stage, ..."""


class CompareMode(enum.StrEnum):
    """How a re-executed tensor is compared with the committed one."""

    BITWISE = "bitwise"
    """Digest equality, for identical hardware, thread count and deterministic algorithms."""
    TOLERANCE = "tolerance"
    """Relative infinity-norm error at most a calibrated tolerance, for other hardware or kernels."""


# -- commit then sample ----------------------------------------------------------------------


def commitment(step: int, secret: bytes) -> bytes:
    """The published commitment to ``secret`` for ``step``: ``BLAKE3(domain || u64 step || secret)``."""
    return blake3.blake3(COMMIT_DOMAIN + struct.pack(">Q", step) + secret).digest()


@dataclasses.dataclass(frozen=True)
class SampleSeed:
    """The coordinator's secret for one step's sample and its public commitment.

    Attributes:
        step: The step the sample is for.
        secret: 32 secret bytes; revealed only after the step's receipts are committed.
    """

    step: int
    secret: bytes = dataclasses.field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_SIZE:
            raise SpotCheckError(f"a sampling secret is {SECRET_SIZE} bytes, got {len(self.secret)}")
        if self.step < 0:
            raise SpotCheckError(f"the step must be >= 0, got {self.step}")

    @classmethod
    def draw(cls, step: int) -> SampleSeed:
        """A fresh secret from the operating system's cryptographic random source.

        This is deliberately not reproducible from the run seed: a worker that could derive the
        secret could predict the sample.
        """
        return cls(step, secrets.token_bytes(SECRET_SIZE))

    @property
    def commitment(self) -> bytes:
        """What the coordinator publishes before the step (see :func:`commitment`)."""
        return commitment(self.step, self.secret)

    def randomness(self, receipts: bytes) -> bytes:
        """The sampling randomness once the step's receipts, digested by :func:`receipts_digest`, are committed."""
        return _randomness(self.secret, receipts)


def _randomness(secret: bytes, receipts: bytes) -> bytes:
    return blake3.blake3(RANDOMNESS_DOMAIN + secret + receipts).digest()


def receipts_digest(digests: Iterable[bytes]) -> bytes:
    """The digest of all receipts committed for a step, independent of their arrival order.

    Args:
        digests: :func:`stagewarden.attest.receipts.receipt_digest` of each receipt.
    """
    ordered = sorted(bytes(d) for d in digests)
    return blake3.blake3(RECEIPTS_DOMAIN + struct.pack(">I", len(ordered)) + b"".join(ordered)).digest()


def verify_reveal(published: bytes, step: int, secret: bytes) -> None:
    """Check a revealed secret against the commitment published before the step.

    Raises:
        SpotCheckError: The secret does not open the commitment.
    """
    if len(secret) != SECRET_SIZE or not secrets.compare_digest(commitment(step, secret), published):
        raise SpotCheckError(f"the revealed sampling secret for step {step} does not match the published commitment")


def sampling_randomness(published: bytes, step: int, secret: bytes, receipts: bytes) -> bytes:
    """Recompute a step's sampling randomness after the reveal, checking the commitment first.

    Anyone holding the published commitment, the revealed secret and the step's receipts can
    run this and then :func:`sample_units` to confirm which units had to be checked.

    Raises:
        SpotCheckError: The secret does not open the commitment.
    """
    verify_reveal(published, step, secret)
    return _randomness(secret, receipts)


def sample_units(units: Sequence[U], rate: float, randomness: bytes) -> list[U]:
    """Pick each unit independently with probability ``rate``, deterministically from ``randomness``.

    Unit ``i`` (its position in ``units``, in the canonical order the engine fixes, such as
    the order of the receipts in the log) is picked when the first 8 bytes of
    ``BLAKE3(domain || randomness || u64 i)``, as a number in [0, 1), are below ``rate``.

    Raises:
        SpotCheckError: ``rate`` is not in (0, 1].
    """
    if not (0.0 < rate <= 1.0) or math.isnan(rate):
        raise SpotCheckError(f"the sampling rate must be in (0, 1], got {rate}")
    picked = []
    for i, unit in enumerate(units):
        draw = blake3.blake3(DRAW_DOMAIN + randomness + struct.pack(">Q", i)).digest()[:8]
        if int.from_bytes(draw, "big") / 2.0**64 < rate:
            picked.append(unit)
    return picked


# -- re-execution ----------------------------------------------------------------------------


def load_stage(
    config: GPTConfig, stages: int, index: int, weights: Mapping[str, torch.Tensor], seed: int = 0
) -> StageModule:
    """Build stage ``index`` and load ``weights`` (in-memory tensors) into it.

    Raises:
        SpotCheckError: The names or shapes of ``weights`` do not fit the stage.
    """
    stage = build_stage(config, stages, index, seed)
    _load_weights(stage, weights, index, stages)
    return stage


class StagePool:
    """Stage modules built once per stage index and reloaded with each unit's weights.

    Building a stage allocates and initialises every parameter, which costs more than
    re-executing a small unit; a verifier that checks many units keeps one module per stage and
    loads the unit's weights into it. A loaded module computes bit for bit what a freshly built
    one with the same weights computes: every parameter and persistent buffer is overwritten
    (``strict=True``) and the gradients are dropped.
    """

    def __init__(self, config: GPTConfig, stages: int, seed: int = 0) -> None:
        self.config = config
        self.stages = stages
        self.seed = seed
        self._modules: dict[int, StageModule] = {}

    def load(self, index: int, weights: Mapping[str, torch.Tensor]) -> StageModule:
        """Stage ``index`` holding ``weights``, with no gradients.

        Raises:
            SpotCheckError: The names or shapes of ``weights`` do not fit the stage.
        """
        module = self._modules.get(index)
        if module is None:
            module = self._modules[index] = build_stage(self.config, self.stages, index, self.seed)
        _load_weights(module, weights, index, self.stages)
        module.zero_grad(set_to_none=True)
        return module


def _load_weights(stage: StageModule, weights: Mapping[str, torch.Tensor], index: int, stages: int) -> None:
    try:
        stage.load_state_dict(dict(weights), strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise SpotCheckError(f"the weights do not fit stage {index} of {stages}: {first}") from None


def _stage(
    pool: StagePool | None, config: GPTConfig, stages: int, index: int, weights: Mapping[str, torch.Tensor]
) -> StageModule:
    if pool is None:
        return load_stage(config, stages, index, weights)
    if (pool.config, pool.stages) != (config, stages):
        raise SpotCheckError("the stage pool was built for another model or number of stages")
    return pool.load(index, weights)


def reexecute_forward(
    config: GPTConfig,
    stages: int,
    index: int,
    weights: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    microbatches: int = 1,
    pool: StagePool | None = None,
) -> torch.Tensor:
    """Re-execute a forward unit from its committed input and weights.

    Args:
        config: The model shape.
        stages: Number of pipeline stages.
        index: The stage.
        weights: The stage's state dict the unit ran with.
        inputs: Token ids ``(B, T)`` (stage 0) or the input activation ``(B, T, C)``.
        targets: Target ids ``(B, T)`` on the last stage (optional: the output is the logits either way).
        microbatches: ``M`` of the step (only scales the loss, not the output).
        pool: Stage modules to reuse (:class:`StagePool`); a new stage is built without one.

    Returns:
        The output ``(B, T, C)``, or logits ``(B, T, V)`` on the last stage, detached.
    """
    return reexecute_forward_outputs(
        config, stages, index, weights, inputs, targets, microbatches=microbatches, pool=pool
    )["output"]


def reexecute_forward_outputs(
    config: GPTConfig,
    stages: int,
    index: int,
    weights: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    *,
    microbatches: int = 1,
    pool: StagePool | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`reexecute_forward`, with everything a forward unit commits to by name: ``output``
    and, on the last stage with ``targets``, ``loss`` (the micro-batch's loss before the
    ``1 / M`` scaling; see :func:`~stagewarden.attest.tensor_digest.last_forward_output_digest`)."""
    stage = _stage(pool, config, stages, index, weights)
    with torch.enable_grad():  # the worker's forward unit runs with autograd on; so does its re-execution
        if targets is not None or index != stages - 1:
            state = stage_forward(stage, inputs, microbatches, targets=targets)
            out = {"output": state.output.detach()}
            if state.loss is not None:
                out["loss"] = state.loss.detach()
            return out
        return {"output": stage(inputs).detach()}  # (B, T, V)


@dataclasses.dataclass(frozen=True)
class BackwardResult:
    """What re-executing a backward unit yields.

    Attributes:
        grad_input: The gradient of the stage input ``(B, T, C)``; ``None`` on stage 0.
        param_grads: This micro-batch's gradient of every parameter (name to tensor).
        param_grads_digest: :func:`stagewarden.attest.tensor_digest.digest_state_dict` of ``param_grads``.
    """

    grad_input: torch.Tensor | None
    param_grads: dict[str, torch.Tensor]
    param_grads_digest: bytes


def reexecute_backward(
    config: GPTConfig,
    stages: int,
    index: int,
    weights: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    grad_output: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    microbatches: int = 1,
    pool: StagePool | None = None,
) -> BackwardResult:
    """Re-execute a backward unit (its forward again, then the backward) from committed tensors.

    Args:
        config: The model shape.
        stages: Number of pipeline stages.
        index: The stage.
        weights: The stage's state dict the unit ran with.
        inputs: Token ids ``(B, T)`` or the input activation ``(B, T, C)``.
        grad_output: The received gradient of the output ``(B, T, C)``; for every stage but the last.
        targets: Target ids ``(B, T)``; for the last stage.
        microbatches: ``M`` of the step: the last stage differentiates ``loss / M``.
        pool: Stage modules to reuse (:class:`StagePool`); a new stage is built without one.

    Returns:
        The input gradient and this micro-batch's parameter gradients (from zero, not accumulated).
    """
    stage = _stage(pool, config, stages, index, weights)
    is_last = index == stages - 1
    if is_last and targets is None:
        raise SpotCheckError(f"re-executing the backward of the last stage ({index}) needs the targets")
    if not is_last and grad_output is None:
        raise SpotCheckError(f"re-executing the backward of stage {index} needs the gradient of its output")
    with torch.enable_grad():
        state = stage_forward(stage, inputs, microbatches, targets=targets if is_last else None)
        grad_input = stage_backward(state, None if is_last else grad_output)
    grads = {name: p.grad.detach().clone() for name, p in stage.named_parameters() if p.grad is not None}
    return BackwardResult(
        grad_input=None if grad_input is None else grad_input.detach(),
        param_grads=grads,
        param_grads_digest=digest_state_dict(grads),
    )


# -- optimizer state as plain tensors --------------------------------------------------------

#: The AdamW state fields of one parameter, stored as ``"<param name>/<field>"``.
ADAM_FIELDS = ("step", "exp_avg", "exp_avg_sq")


def export_optimizer_state(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as a flat ``{"<param>/<field>": tensor}`` dict of copies.

    Fields are :data:`ADAM_FIELDS`; ``step`` is a scalar float32 tensor, the others have the
    parameter's shape. Parameters without state yet (before the first step) are absent. The
    dict is plain tensors, so it digests with :func:`stagewarden.attest.tensor_digest.digest_state_dict` and
    saves with ``torch.save`` / loads with ``torch.load(weights_only=True)``.
    """
    return {key: value.detach().clone() for key, value in optimizer_state_view(module, optimizer).items()}


def optimizer_state_view(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """:func:`export_optimizer_state` without the copies: the optimizer's own tensors, to digest."""
    out: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        state = optimizer.state.get(param)
        if not state:
            continue
        for field in ADAM_FIELDS:
            out[f"{name}/{field}"] = state[field]
    return out


def optimizer_state_digest(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bytes:
    """The :func:`~stagewarden.attest.tensor_digest.digest_state_dict` of the optimizer state
    (:func:`export_optimizer_state`), which update receipts commit to."""
    return digest_state_dict(optimizer_state_view(module, optimizer))


def import_optimizer_state(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer, flat: Mapping[str, torch.Tensor]
) -> None:
    """Load a state from :func:`export_optimizer_state` into a fresh optimizer over ``module``.

    Raises:
        SpotCheckError: A key names no parameter or field, or a parameter's fields are incomplete.
    """
    params = dict(module.named_parameters())
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, field = key.rpartition("/")
        if name not in params or field not in ADAM_FIELDS:
            raise SpotCheckError(f"optimizer state key {key!r} names no parameter field of this stage")
        grouped.setdefault(name, {})[field] = value
    for name, fields in grouped.items():
        if set(fields) != set(ADAM_FIELDS):
            raise SpotCheckError(f"optimizer state of {name!r} lacks {sorted(set(ADAM_FIELDS) - set(fields))}")
        optimizer.state[params[name]] = {f: fields[f].detach().clone() for f in ADAM_FIELDS}


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    """What re-executing an update unit yields.

    Attributes:
        weights: The stage's state dict after the update.
        optimizer_state: The optimizer state after the update (see :func:`export_optimizer_state`).
        weights_digest: :func:`stagewarden.attest.tensor_digest.digest_state_dict` of ``weights``.
    """

    weights: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor]
    weights_digest: bytes


def reexecute_update(
    config: GPTConfig,
    stages: int,
    index: int,
    weights_before: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, torch.Tensor],
    train: TrainConfig,
    step: int,
    *,
    pool: StagePool | None = None,
) -> UpdateResult:
    """Re-execute an update unit: the worker's AdamW step from committed weights, gradients and state.

    Args:
        config: The model shape.
        stages: Number of pipeline stages.
        index: The stage.
        weights_before: The stage's state dict before the update.
        grads: The accumulated gradients of the step (parameter name to tensor).
        optimizer_state: The optimizer state before the update (:func:`export_optimizer_state`);
            empty before the first update.
        train: The optimizer settings the worker used.
        step: The 0-based step; the optimizer state must have taken exactly ``step`` updates.
        pool: Stage modules to reuse (:class:`StagePool`); a new stage is built without one.

    Returns:
        The weights and optimizer state after the update.

    Raises:
        SpotCheckError: The state does not fit the step or the stage, or a gradient is missing.
    """
    stage = _stage(pool, config, stages, index, weights_before)
    optimizer = make_optimizer(stage, train)
    import_optimizer_state(stage, optimizer, optimizer_state)
    counts = {float(v) for k, v in optimizer_state.items() if k.endswith("/step")}
    if counts - {float(step)} or (step > 0 and not counts):
        raise SpotCheckError(
            f"the optimizer state has taken {sorted(counts) or [0]} updates, but step {step} needs {step}"
        )
    for name, param in stage.named_parameters():
        if name not in grads:
            raise SpotCheckError(f"the gradients lack parameter {name!r} of stage {index}")
        param.grad = grads[name].detach().clone()
    optimizer_step(optimizer)
    weights = {k: v.detach().clone() for k, v in stage.state_dict().items()}
    return UpdateResult(weights, export_optimizer_state(stage, optimizer), digest_state_dict(weights))


# -- comparison ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The outcome of comparing a re-executed tensor with the committed one.

    Attributes:
        equal: Whether the check passes.
        mode: The comparison mode.
        max_abs_diff: Largest absolute element difference (``inf`` on a shape, dtype or
            non-finite mismatch).
        relative_error: ``max_abs_diff / max(max |expected|, tiny)``.
        tolerance: The tolerance used (0 in bitwise mode).
    """

    equal: bool
    mode: CompareMode
    max_abs_diff: float
    relative_error: float
    tolerance: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (infinities as strings)."""
        data = dataclasses.asdict(self)
        data["mode"] = self.mode.value
        for key in ("max_abs_diff", "relative_error"):
            if not math.isfinite(data[key]):
                data[key] = str(data[key])
        return data


def relative_error(expected: torch.Tensor, observed: torch.Tensor) -> tuple[float, float]:
    """``(max |e - o|, max |e - o| / max |e|)`` over the finite elements, in float64.

    ``(inf, inf)`` if the shapes differ, or the non-finite elements (inf, NaN) differ in
    position or value.
    """
    if expected.shape != observed.shape:
        return math.inf, math.inf
    e, o = expected.detach().double(), observed.detach().double()
    finite = torch.isfinite(e)
    if not torch.equal(finite, torch.isfinite(o)) or not torch.equal(e[~finite].nan_to_num(), o[~finite].nan_to_num()):
        return math.inf, math.inf
    e, o = e[finite], o[finite]
    if e.numel() == 0:
        return 0.0, 0.0
    diff = float((e - o).abs().nan_to_num(nan=math.inf).max())
    ref = max(float(e.abs().max()), float(torch.finfo(torch.float64).tiny))
    return diff, diff / ref


def compare(
    expected: torch.Tensor,
    observed: torch.Tensor,
    mode: CompareMode | str = CompareMode.BITWISE,
    tolerance: float = 0.0,
) -> Comparison:
    """Compare a re-executed tensor (``expected``) with the committed one (``observed``).

    Bitwise mode compares :func:`stagewarden.attest.tensor_digest.digest_tensor` (dtype, shape and bytes);
    tolerance mode passes when the dtypes and shapes agree, ``observed`` has non-finite values
    exactly where ``expected`` has, and the relative error is at most ``tolerance``.
    """
    mode = CompareMode(mode)
    diff, rel = relative_error(expected, observed)
    if mode is CompareMode.BITWISE:
        equal = expected.dtype == observed.dtype and digest_tensor(expected) == digest_tensor(observed)
        return Comparison(equal, mode, diff, rel, 0.0)
    if tolerance < 0 or math.isnan(tolerance):
        raise SpotCheckError(f"the tolerance must be >= 0, got {tolerance}")
    equal = expected.dtype == observed.dtype and rel <= tolerance
    return Comparison(equal, mode, diff, rel, tolerance)


def compare_within(expected: Sequence[torch.Tensor], observed: Sequence[torch.Tensor], tolerance: float) -> Comparison:
    """Compare a unit's re-executed outputs with its committed ones, pair by pair, in tolerance mode.

    The check passes when both lists are equally long and every pair passes :func:`compare` in
    :attr:`CompareMode.TOLERANCE` (same dtype and shape, non-finite values in the same places,
    relative error at most ``tolerance``). The result carries the worst pair's differences
    (``inf`` when the lengths differ or a dtype or shape does not match).

    Raises:
        SpotCheckError: ``tolerance`` is negative or NaN.
    """
    if tolerance < 0 or math.isnan(tolerance):
        raise SpotCheckError(f"the tolerance must be >= 0, got {tolerance}")
    if len(expected) != len(observed):
        return Comparison(False, CompareMode.TOLERANCE, math.inf, math.inf, tolerance)
    equal, worst_diff, worst_rel = True, 0.0, 0.0
    for e, o in zip(expected, observed, strict=True):
        pair = compare(e, o, CompareMode.TOLERANCE, tolerance)
        if e.dtype != o.dtype:  # compare() measures across dtypes; a mismatch is a failure whatever the values
            pair = dataclasses.replace(pair, max_abs_diff=math.inf, relative_error=math.inf)
        equal = equal and pair.equal
        worst_diff, worst_rel = max(worst_diff, pair.max_abs_diff), max(worst_rel, pair.relative_error)
    return Comparison(equal, CompareMode.TOLERANCE, worst_diff, worst_rel, tolerance)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """A tolerance calibrated from honest re-executions; record it with the run.

    Attributes:
        value: The tolerance: ``max(max_observed * safety, floor)``.
        max_observed: The largest relative error between honest executions.
        safety: The safety factor.
        floor: The smallest tolerance returned.
        samples: How many honest pairs were measured.
    """

    value: float
    max_observed: float
    safety: float
    floor: float
    samples: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return dataclasses.asdict(self)


def calibrate_tolerance(
    samples: Iterable[tuple[torch.Tensor, torch.Tensor]], safety: float = SAFETY_FACTOR, floor: float = TOLERANCE_FLOOR
) -> Tolerance:
    """Derive a tolerance from pairs of honest executions of the same units.

    Args:
        samples: Pairs ``(a, b)`` of outputs of the same unit computed honestly in two
            environments (other thread counts, kernels or hardware).
        safety: Factor applied to the largest relative error seen.
        floor: Smallest tolerance returned, for environments that happen to agree bitwise.

    Raises:
        SpotCheckError: No samples, a safety factor below 1, or an honest pair that disagrees in shape.
    """
    if safety < 1.0:
        raise SpotCheckError(f"the safety factor must be at least 1, got {safety}")
    worst, count = 0.0, 0
    for a, b in samples:
        _, rel = relative_error(a, b)
        if not math.isfinite(rel):
            raise SpotCheckError("an honest calibration pair differs in shape or has non-finite values")
        worst, count = max(worst, rel), count + 1
    if count == 0:
        raise SpotCheckError("calibrating a tolerance needs at least one pair of honest executions")
    return Tolerance(max(worst * safety, floor), worst, safety, floor, count)


# -- digest links and the referee ------------------------------------------------------------


def check_link(sender_output_digest: bytes, receiver_input_digest: bytes) -> bool:
    """Whether the receiver's receipt commits to the input the sender's receipt says it sent.

    A mismatch on a link between two signed receipts means one of the two lied: it is the
    check that catches equivocation, which re-execution of either receipt alone does not.
    """
    return secrets.compare_digest(sender_output_digest, receiver_input_digest)


@dataclasses.dataclass(frozen=True)
class RefereeVerdict:
    """The referee's decision on an accusation.

    Attributes:
        blamed: The stage found at fault: the accused if its committed digest is wrong,
            otherwise the accuser (a false accusation).
        accused_honest: Whether the accused's committed digest equals the re-execution.
    """

    blamed: int
    accused_honest: bool


def referee(accuser: int, accused: int, observed_digest: bytes, reexecuted_digest: bytes) -> RefereeVerdict:
    """Decide an accusation by the referee's own re-execution of the accused unit.

    Args:
        accuser: The accusing stage.
        accused: The accused stage.
        observed_digest: What the accused committed to in its receipt.
        reexecuted_digest: What the referee's re-execution of the unit gives.
    """
    honest = secrets.compare_digest(observed_digest, reexecuted_digest)
    return RefereeVerdict(blamed=accuser if honest else accused, accused_honest=honest)
