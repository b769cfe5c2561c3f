"""What an attestation result is bound to beyond its key and nonce: the run, the worker and the stage.

A relying party that admits worker ``w`` of run ``r`` to stage ``s`` accepts only a result that
names exactly that run, worker and stage (:func:`check_binding`); a result issued for another
run, to another worker, or appraised against another stage's reference values is refused with
``RESULT_BINDING``. The verifier writes these claims when it is told what it appraises for
(:meth:`~stagewarden.attest.verifier.Verifier.appraise_evidence`).

One device, one worker; one receipt key, one worker (:func:`check_not_shared`): two workers
sharing a device would let one machine stand in for two (a replica and its redundant check, or two
pipeline neighbours whose links vouch for each other), and two workers sharing a receipt key
could sign each other's receipts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable

from .ear import EarResult
from .errors import AttestError, ErrorCode
from .result import AttestationResult

#: The stage label of a standby worker (one that holds no stage yet).
STANDBY = "standby"


def stage_label(stage: int | None) -> str:
    """The label a result and the reference values use for ``stage`` (``"standby"`` for None)."""
    return STANDBY if stage is None else str(stage)


@dataclasses.dataclass(frozen=True)
class Binding:
    """What a result must name; a None field is not checked."""

    run_id: str | None = None
    worker: str | None = None
    stage: str | None = None


def check_binding(result: AttestationResult | EarResult, expected: Binding) -> None:
    """Raise ``RESULT_BINDING`` unless ``result`` names every field ``expected`` gives.

    A result that omits a claim the caller expects is refused too (it was not issued for this
    use). An EAR for a DCAP quote names only a stage, and none when the policy held no reference
    values (then no measurement was appraised, and there is no stage to bind), so only a stage it
    names is checked.
    """
    pairs: list[tuple[str, str | None, str | None]]
    if isinstance(result, EarResult):
        pairs = [("stage", expected.stage, result.stage)] if result.stage is not None else []
    else:
        pairs = [
            ("run", expected.run_id, result.run_id),
            ("worker", expected.worker, result.worker),
            ("stage", expected.stage, result.stage),
        ]
    for what, wanted, named in pairs:
        if wanted is None or named == wanted:
            continue
        said = f"names {what} {named!r}" if named is not None else f"names no {what}"
        raise AttestError(
            ErrorCode.RESULT_BINDING,
            f"attestation result {said}, not {wanted!r}: it was not issued for this {what}",
        )


@dataclasses.dataclass(frozen=True)
class Holder:
    """A worker holding a result during ``[issued_at, expires_at)``: its receipt key and device."""

    worker: str
    receipt_key: bytes | None
    device_id: str | None
    issued_at: dt.datetime
    expires_at: dt.datetime

    @classmethod
    def of(cls, worker: str, result: AttestationResult | EarResult) -> Holder:
        """The holder of ``result``. A DCAP quote names a platform family, not a device, so an EAR has no device."""
        device = result.device_id if isinstance(result, AttestationResult) else None
        return cls(worker, result.attested_key, device, result.issued_at, result.expires_at)

    def overlaps(self, other: Holder) -> bool:
        """Whether the two results were valid at a common instant."""
        return self.issued_at < other.expires_at and other.issued_at < self.expires_at


def sharing(holder: Holder, others: Iterable[Holder]) -> AttestError | None:
    """The refusal when ``holder`` shares its receipt key (ever) or its device (at a common instant)
    with a holder of another worker, else None."""
    for other in others:
        if other.worker == holder.worker:
            continue
        if holder.receipt_key is not None and other.receipt_key == holder.receipt_key:
            return AttestError(
                ErrorCode.KEY_SHARED,
                f"receipt key {holder.receipt_key.hex()[:16]} of worker {holder.worker} is attested for worker "
                f"{other.worker} too: one receipt key, one worker",
            )
        if holder.device_id is not None and other.device_id == holder.device_id and holder.overlaps(other):
            return AttestError(
                ErrorCode.DEVICE_SHARED,
                f"device {holder.device_id!r} of worker {holder.worker} is attested for worker {other.worker} at "
                "the same time: one device, one worker",
            )
    return None


def check_not_shared(holder: Holder, others: Iterable[Holder]) -> None:
    """Raise ``KEY_SHARED`` or ``DEVICE_SHARED`` when :func:`sharing` finds a conflict."""
    problem = sharing(holder, others)
    if problem is not None:
        raise problem
