"""Comparing a re-executed unit's outputs with the committed ones: bitwise (digest equality) on
identical hardware with deterministic algorithms, or within a tolerance calibrated from honest
re-executions (:func:`calibrate_tolerance`); and the referee between an accuser and the accused."""

from __future__ import annotations

import dataclasses
import enum
import math
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from stagewarden.attest.tensor_digest import digest_tensor

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
