"""Commit-then-sample spot checking: unpredictable sampling of committed units.

Before a step, the coordinator draws a secret and publishes its commitment (:class:`SampleSeed`).
Only after every worker's receipts for the step are committed does it reveal the secret; the
sampling randomness is ``BLAKE3(domain || secret || receipts digest)``. A worker therefore cannot
know, when it commits, which of its units will be checked (the secret is hidden), and the
coordinator cannot steer the sample after seeing the receipts (it is bound to the secret by the
commitment, and the receipts enter the randomness). Anyone can recompute the sample after the
reveal (:func:`verify_reveal`, :func:`sampling_randomness`).

The re-execution of the sampled units is :mod:`stagewarden.runtime.reexecute`, and the comparison
of their outputs with the committed ones :mod:`stagewarden.runtime.compare`; their names are also
importable from here.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import struct
from collections.abc import Iterable, Sequence
from typing import TypeVar

import blake3

from stagewarden.runtime.compare import (
    SAFETY_FACTOR,
    TOLERANCE_FLOOR,
    CompareMode,
    Comparison,
    RefereeVerdict,
    SpotCheckError,
    Tolerance,
    calibrate_tolerance,
    check_link,
    compare,
    compare_within,
    referee,
    relative_error,
)
from stagewarden.runtime.reexecute import (
    ADAM_FIELDS,
    BackwardResult,
    StagePool,
    UpdateResult,
    export_optimizer_state,
    import_optimizer_state,
    load_stage,
    optimizer_state_digest,
    optimizer_state_view,
    reexecute_backward,
    reexecute_forward,
    reexecute_forward_outputs,
    reexecute_update,
)

__all__ = [
    "ADAM_FIELDS",
    "BackwardResult",
    "COMMIT_DOMAIN",
    "CompareMode",
    "Comparison",
    "DRAW_DOMAIN",
    "RANDOMNESS_DOMAIN",
    "RECEIPTS_DOMAIN",
    "RefereeVerdict",
    "SAFETY_FACTOR",
    "SECRET_SIZE",
    "SampleSeed",
    "SpotCheckError",
    "StagePool",
    "TOLERANCE_FLOOR",
    "Tolerance",
    "U",
    "UpdateResult",
    "calibrate_tolerance",
    "check_link",
    "commitment",
    "compare",
    "compare_within",
    "export_optimizer_state",
    "import_optimizer_state",
    "load_stage",
    "optimizer_state_digest",
    "optimizer_state_view",
    "receipts_digest",
    "reexecute_backward",
    "reexecute_forward",
    "reexecute_forward_outputs",
    "reexecute_update",
    "referee",
    "relative_error",
    "sample_units",
    "sampling_randomness",
    "verify_reveal",
]


#: The type of a unit in :func:`sample_units` (any value the engine uses to name a unit).
U = TypeVar("U")

COMMIT_DOMAIN = b"stagewarden/spotcheck/commit/v1\x00"
RANDOMNESS_DOMAIN = b"stagewarden/spotcheck/randomness/v1\x00"
RECEIPTS_DOMAIN = b"stagewarden/spotcheck/receipts/v1\x00"
DRAW_DOMAIN = b"stagewarden/spotcheck/draw/v1\x00"
SECRET_SIZE = 32

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
