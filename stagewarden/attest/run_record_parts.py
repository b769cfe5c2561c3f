"""The typed parts of a run record (``summary.json``): workers, detections, responses, replacements,
faults, resumes and the verification counters, each exactly as the training runtime writes it.

Every part is strict: a missing field, an unknown field or a value of the wrong type is refused
(booleans are not integers, strings are not numbers). :class:`~stagewarden.attest.run_record.RunRecord`
assembles them; readers use their attributes, never the JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

import pydantic
from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    StrictBool,
    StrictFloat,
    StrictStr,
    TypeAdapter,
    model_serializer,
)

from .binary import ID_PATTERN

#: Every part is closed (unknown fields are refused) and its scalars strict (``Strict*`` types:
#: no coercion of strings to numbers, of numbers to booleans); lists and nested parts are read from
#: the JSON's arrays and objects.
STRICT = ConfigDict(extra="forbid")
#: :data:`STRICT`, for the parts that are models (frozen; the dataclasses are frozen by their decorator).
STRICT_MODEL = ConfigDict(extra="forbid", frozen=True)
#: The largest count or index a record may hold (``2**32 - 1``).
MAX_COUNT = 2**32 - 1

Count = Annotated[int, Strict(), Field(ge=0, le=MAX_COUNT)]
WorkerId = Annotated[str, Strict(), Field(min_length=1, max_length=128, pattern=f"^{ID_PATTERN.pattern}$")]
Digest = Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{64}$")]
Signature = Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{128}$")]
UnitKindName = Literal["forward", "backward", "update"]
ResponseName = Literal["eject", "rollback", "skip_stage", "restart"]


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class WorkerInfo:
    """A worker of the run and the pipeline position it was admitted for."""

    id: WorkerId
    stage: Count
    replica: Count


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class Detection:
    """One failed check: the unit, the worker blamed and the check that caught it.

    Attributes:
        step: The step of the tampered unit.
        microbatch: Its micro-batch (0 for an update unit).
        unit_kind: ``forward``, ``backward`` or ``update``.
        worker: The convicted worker's id.
        stage: The convicted worker's stage.
        check: The check that caught it (``spot_check``, ``redundant_neighbour``, ``link``, ``referee``).
        evidence_digest: Hex digest of the evidence (the signed receipt or the sent tensor).
    """

    step: Count
    microbatch: Count
    unit_kind: UnitKindName
    worker: StrictStr
    stage: Count
    check: StrictStr
    evidence_digest: StrictStr

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """The inverse of :meth:`to_json`; a recorded detection, with its message and signature, reads
        as a :class:`~stagewarden.attest.run_record_parts.SignedDetection`.

        Raises:
            ValueError: A field is missing, unknown or of the wrong type (one line naming it).
        """
        try:
            return TypeAdapter(cls).validate_python(data)
        except pydantic.ValidationError as exc:
            raise ValueError(f"detection: {one_line(exc)}") from None


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class SignedDetection(Detection):
    """A :class:`Detection` as the coordinator records it in ``summary.json`` and ``events.jsonl``.

    Attributes:
        message: What the check found, for people.
        signature: Hex of the coordinator's Ed25519 signature over the other fields (the public
            key is the record's ``coordinator_key``).
    """

    message: StrictStr
    signature: Signature


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class ReceiptRef:
    """A pointer to one committed receipt, enough to fetch and re-execute its unit.

    Attributes:
        worker: The signing worker.
        stage: Its stage.
        step: The step.
        microbatch: The micro-batch (0 for update units).
        unit_kind: ``forward``, ``backward`` or ``update``.
    """

    worker: StrictStr
    stage: Count
    step: Count
    microbatch: Count
    unit_kind: UnitKindName


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class PlanRecord:
    """A response plan as recorded (the JSON of :class:`stagewarden.runtime.responses.ResponsePlan`)."""

    response: ResponseName
    stage: Count
    convict: StrictStr
    redo_from_step: Count
    checkpoint_step: Count | None
    standby: StrictStr | None
    ejected: StrictStr | None
    audit: list[ReceiptRef]
    bypass_stage: Count | None
    frozen_stages: list[Count]
    fallback_from: ResponseName | None
    reason: StrictStr
    retired_pipeline: Count | None = None

    @model_serializer(mode="wrap")
    def _without_absent_retirement(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.retired_pipeline is None:  # a plan that retired no pipeline reads as it always has
            del data["retired_pipeline"]
        return data


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class AuditedReceipt:
    """A receipt of the convict inside a rollback's window: its unit and the digest it was logged under."""

    step: Count
    micro_batch: Count
    unit_kind: UnitKindName
    digest: Digest


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class AuditFinding:
    """A problem the rollback's audit found in one of the convict's receipts."""

    step: Count
    micro_batch: Count
    unit: UnitKindName
    check: StrictStr
    message: StrictStr


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class RollbackAudit:
    """What a rollback's audit of the convict's logged receipts found.

    Attributes:
        window: The convict's receipts from the restored checkpoint to the detected step.
        receipts_checked: How many of its receipts the audit checked.
        findings: Each problem found.
        first_tampered_step: The earliest step known tampered with.
        replanned_from: The checkpoint first planned, when the findings moved the rollback further back.
    """

    window: list[AuditedReceipt]
    receipts_checked: Count
    findings: list[AuditFinding]
    first_tampered_step: Count
    replanned_from: Count | None


class ResponseRecord(pydantic.BaseModel):
    """A response the coordinator carried out, with the detection it answered.

    Attributes:
        step (int): The step the detection was made at.
        attempt (int): Which computation of that step it was made in (0: the first).
        plan (PlanRecord): What was done.
        detection (SignedDetection): The detection answered.
        audit (RollbackAudit | None): For a rollback, what its audit of the convict's receipts found (absent otherwise).
    """

    model_config = STRICT_MODEL

    step: Count
    attempt: Count
    plan: PlanRecord
    detection: SignedDetection
    audit: RollbackAudit | None = None

    @model_serializer(mode="wrap")
    def _without_absent_audit(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.audit is None:
            del data["audit"]
        return data


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class Replacement:
    """A worker replaced by a standby (eject, rollback, or a worker fault): ``worker`` served its
    stage (of pipeline ``replica``) until ``from_step``, ``by`` from then on."""

    worker: WorkerId
    by: WorkerId
    stage: Count
    from_step: Count
    replica: Count = 0

    @model_serializer(mode="wrap")
    def _without_first_replica(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.replica == 0:  # a single pipeline's replacement reads as it always has
            del data["replica"]
        return data


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class FaultRecord:
    """A worker that failed (died, went silent, withheld or sent a malformed message).

    Attributes:
        worker: The failed worker (``None``: nobody could be blamed).
        stage: Its stage (``None``: a standby, or nobody blamed).
        rank: Its process rank.
        cause: ``crashed``, ``unresponsive``, ``withholding``, ``malformed``, ``attestation_refused`` (refused
            when re-attested during the run) or ``unattributed``.
        reason: What happened, for people.
        step: The step the run had reached.
        session: The session (0: the first run, then one per resume) it happened in.
        standby: The standby chosen to take the stage on resume, if any.
    """

    worker: StrictStr | None
    stage: Count | None
    rank: Count | None
    cause: StrictStr
    reason: StrictStr
    step: Count
    session: Count
    standby: StrictStr | None


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class ResumeRecord:
    """One resume of the run.

    Attributes:
        session: The resumed session's number (1 for the first resume).
        from_step: The step training went on from (the restored checkpoint's).
        redo_to_step: The last step recomputed because the interrupted session had computed it already.
        after: The status the run had when it was resumed.
        fault: The worker fault that interrupted it, if any.
        replacement: What was done about that worker, for people.
        repairs: What had to be repaired in the run directory, for people.
    """

    session: Count
    from_step: Count
    redo_to_step: Count
    after: StrictStr
    fault: FaultRecord | None
    replacement: StrictStr | None
    repairs: list[StrictStr]


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class UnitCounts:
    """Units of work accepted, by kind."""

    forward: Count
    backward: Count
    update: Count


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class FinalWeights:
    """Each stage's final weights digest (hex; ``None`` where unknown) and the whole model's
    (``None`` unless every stage's is known)."""

    stages: list[Digest | None]
    digest: Digest | None


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class SpotCheckCounts:
    """The spot checks of a ``spot_check`` run: the sampling rate, units sampled and re-executed,
    and recomputations after detections."""

    rate: StrictFloat
    units_sampled: Count
    units_checked: Count
    recomputations: Count


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class NeighbourCounts:
    """The checks of a ``redundant_neighbour`` run.

    Attributes:
        input_via: Who sent the checker the checked stage's input.
        units_checked: Units the neighbours recomputed.
        mismatches_reported: Mismatches the checkers reported.
        confirmed: Reports the coordinator's re-execution confirmed.
        false_accusations: Reports it refuted (the accuser is blamed).
        unadjudicated: Reports it could not decide.
    """

    input_via: StrictStr
    units_checked: Count
    mismatches_reported: Count
    confirmed: Count
    false_accusations: Count
    unadjudicated: Count


#: A number that may be non-finite, which the record writes as a string (``"inf"``, ``"nan"``).
Measured = StrictFloat | Literal["inf", "-inf", "nan"]


@pydantic.dataclasses.dataclass(frozen=True, config=STRICT)
class ToleranceRecord:
    """A stage's tolerance calibrated at admission (``spot_check_compare = "tolerance"``).

    Attributes:
        stage: The stage.
        worker: The worker calibrated.
        rank: Its process rank.
        session: The session it was calibrated in.
        at_step: The step the run had reached.
        tolerance: The tolerance granted.
        max_relative_error: The largest relative error observed in honest executions.
        safety: The factor applied to it.
        floor: The smallest tolerance granted.
        samples: Executions compared.
        cap: The largest tolerance a worker may need.
        accepted: Whether the worker was admitted with it.
    """

    stage: Count
    worker: WorkerId
    rank: Count
    session: Count
    at_step: Count
    tolerance: Measured
    max_relative_error: Measured
    safety: Measured
    floor: Measured
    samples: Count
    cap: Measured
    accepted: StrictBool


_PLAIN = {
    "extra_forbidden": "unknown field",
    "unexpected_keyword_argument": "unknown field",
    "missing": "missing field",
    "missing_argument": "missing field",
}


def one_line(exc: pydantic.ValidationError) -> str:
    """The first error of ``exc`` as ``field.path: problem`` (plus how many more there are)."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    path = ""
    for part in first["loc"]:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    message = _PLAIN.get(first["type"], first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{path}: {message}{more}" if path else f"{message}{more}"
