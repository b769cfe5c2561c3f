"""The control messages a worker sends the coordinator."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from stagewarden.runtime.protocol.fields import (
    DIGEST_BYTES,
    FAILURE_CAUSES,
    INPUT_VIAS,
    MAX_HOST_CHARS,
    UNIT_KINDS,
    Message,
    ProtocolError,
    TensorMeta,
    read_bool,
    read_digest,
    read_fields,
    read_float,
    read_hex,
    read_id,
    read_int,
    read_list,
    read_opt_int,
    read_tensors,
    read_text,
    read_unit,
    wire_tensors,
)

if TYPE_CHECKING:
    from stagewarden.runtime.redundant import CheckOutcome


@dataclasses.dataclass(frozen=True)
class Evidence(Message):
    """Worker to coordinator at start: its receipt key and attestation evidence, or why its TEE
    gave none (``evidence_error`` and ``evidence_error_code``); neither when attestation is off."""

    TYPE: ClassVar[str] = "evidence"
    worker_id: str
    receipt_key: bytes
    pid: int
    host: str
    evidence: bytes | None = None
    evidence_error: str | None = None
    evidence_error_code: str | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": self.TYPE,
            "worker_id": self.worker_id,
            "receipt_key": self.receipt_key.hex(),
            "pid": self.pid,
            "host": self.host,
        }
        if self.evidence is not None:
            wire["evidence"] = self.evidence.hex()
        if self.evidence_error is not None:
            wire["evidence_error"] = self.evidence_error
            wire["evidence_error_code"] = self.evidence_error_code
        return wire

    @classmethod
    def parse(cls, data: Any) -> Evidence:
        optional = ("evidence", "evidence_error", "evidence_error_code")
        d = read_fields(data, cls.TYPE, ("worker_id", "receipt_key", "pid", "host"), optional)
        if "evidence" in d and "evidence_error" in d:
            raise ProtocolError("an evidence message carries evidence or an evidence error, not both")
        if ("evidence_error" in d) != ("evidence_error_code" in d):
            raise ProtocolError("an evidence message's evidence_error and evidence_error_code come together")
        return cls(
            read_id(d["worker_id"], "evidence worker_id"),
            read_hex(d["receipt_key"], "evidence receipt_key", DIGEST_BYTES),
            read_int(d["pid"], "evidence pid"),
            read_text(d["host"], "evidence host", MAX_HOST_CHARS),
            read_hex(d["evidence"], "evidence") if "evidence" in d else None,
            read_text(d["evidence_error"], "evidence_error") if "evidence_error" in d else None,
            read_text(d["evidence_error_code"], "evidence_error_code", 64) if "evidence_error_code" in d else None,
        )


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """A failed redundant-neighbour check as a checker reports it (the fields of
    :class:`~stagewarden.runtime.redundant.CheckOutcome`, the difference in ``float.hex``), with
    the signed header of the relayed input of a forward unit when there is one."""

    passed: bool
    checker: int
    checked: int
    blamed: int | None
    step: int
    microbatch: int
    unit_kind: str
    input_via: str | None
    max_abs_diff: float
    evidence_digest: str
    input_header: bytes | None = None

    _KEYS: ClassVar[tuple[str, ...]] = (
        "passed",
        "checker",
        "checked",
        "blamed",
        "step",
        "microbatch",
        "unit_kind",
        "input_via",
        "max_abs_diff",
        "evidence_digest",
    )

    @classmethod
    def from_outcome(cls, outcome: CheckOutcome, input_header: bytes | None = None) -> CheckReport:
        """The report of ``outcome`` (with the relayed input's signed header, if any)."""
        via = None if outcome.input_via is None else outcome.input_via.value
        return cls(
            outcome.passed,
            outcome.checker,
            outcome.checked,
            outcome.blamed,
            outcome.step,
            outcome.microbatch,
            outcome.unit_kind,
            via,
            outcome.max_abs_diff,
            outcome.evidence_digest,
            input_header,
        )

    def to_wire(self) -> dict[str, Any]:
        """The report as sent."""
        wire = {k: getattr(self, k) for k in self._KEYS}
        wire["max_abs_diff"] = float(self.max_abs_diff).hex()
        if self.input_header is not None:
            wire["input_header"] = self.input_header.hex()
        return wire

    @classmethod
    def parse(cls, data: Any, what: str = "a check report") -> CheckReport:
        """A check report, checked strictly (see :class:`.Message`)."""
        if not isinstance(data, Mapping) or not set(cls._KEYS) <= set(data) <= {*cls._KEYS, "input_header"}:
            raise ProtocolError(f"{what} must be an object of {', '.join(cls._KEYS)} (and input_header)")
        via = data["input_via"]
        digest = read_text(data["evidence_digest"], f"{what} evidence_digest", 2 * DIGEST_BYTES)
        read_hex(digest, f"{what} evidence_digest", DIGEST_BYTES)
        return cls(
            read_bool(data["passed"], f"{what} passed"),
            read_int(data["checker"], f"{what} checker"),
            read_int(data["checked"], f"{what} checked"),
            read_opt_int(data["blamed"], f"{what} blamed"),
            read_int(data["step"], f"{what} step"),
            read_int(data["microbatch"], f"{what} microbatch"),
            read_text(data["unit_kind"], f"{what} unit_kind", choices=("forward", "backward")),
            None if via is None else read_text(via, f"{what} input_via", choices=INPUT_VIAS),
            read_float(data["max_abs_diff"], f"{what} max_abs_diff"),
            digest,
            read_hex(data["input_header"], f"{what} input_header") if "input_header" in data else None,
        )


@dataclasses.dataclass(frozen=True)
class Commit(Message):
    """Worker to coordinator after a step's schedule: its receipts and the signed headers it
    received; with ``redundant_neighbour`` its failed checks and how many it ran; from the last
    stage each micro-batch's loss and (with receipts) logits digest. ``cosignature`` (an encoded
    :class:`~stagewarden.attest.step_heads.Cosignature`) or ``dispute`` answers the step head the
    coordinator sent since the worker's last commit. With replicas, ``contribution`` is the digest
    of the accumulated gradients the worker will send the other replicas of its stage (the last
    entry of its gradient trace, which its update receipt commits to). With receipts, ``root`` is
    the worker's encoded :class:`~stagewarden.attest.step_roots.StepRoot` over these receipts and
    the headers it sent in this computation: one signature the coordinator checks for all of them."""

    TYPE: ClassVar[str] = "commit"
    step: int
    receipts: tuple[bytes, ...]
    headers: tuple[bytes, ...]
    busy_ns: int
    checks: tuple[CheckReport, ...] | None = None
    checks_run: int | None = None
    microbatch_losses: tuple[float, ...] | None = None
    logits: tuple[bytes, ...] | None = None
    cosignature: bytes | None = None
    dispute: str | None = None
    contribution: bytes | None = None
    root: bytes | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "type": self.TYPE,
            "step": self.step,
            "receipts": [r.hex() for r in self.receipts],
            "headers": [h.hex() for h in self.headers],
            "busy_ns": self.busy_ns,
        }
        if self.checks is not None:
            wire["checks"] = [c.to_wire() for c in self.checks]
            wire["checks_run"] = self.checks_run
        if self.microbatch_losses is not None:
            wire["microbatch_losses"] = [loss.hex() for loss in self.microbatch_losses]
        if self.logits is not None:
            wire["logits"] = [d.hex() for d in self.logits]
        if self.cosignature is not None:
            wire["cosignature"] = self.cosignature.hex()
        if self.dispute is not None:
            wire["dispute"] = self.dispute
        if self.contribution is not None:
            wire["contribution"] = self.contribution.hex()
        if self.root is not None:
            wire["root"] = self.root.hex()
        return wire

    @classmethod
    def parse(cls, data: Any) -> Commit:
        optional = (
            "checks",
            "checks_run",
            "microbatch_losses",
            "logits",
            "cosignature",
            "dispute",
            "contribution",
            "root",
        )
        d = read_fields(data, cls.TYPE, ("step", "receipts", "headers", "busy_ns"), optional)
        if "cosignature" in d and "dispute" in d:
            raise ProtocolError("a commit carries a cosignature or a dispute, not both")
        if ("checks" in d) != ("checks_run" in d):
            raise ProtocolError("a commit's checks and checks_run come together")
        if "logits" in d and "microbatch_losses" not in d:
            raise ProtocolError("a commit's logits come with its microbatch_losses")
        return cls(
            read_int(d["step"], "commit step"),
            read_list(d["receipts"], "commit receipts", read_hex),
            read_list(d["headers"], "commit headers", read_hex),
            read_int(d["busy_ns"], "commit busy_ns"),
            read_list(d["checks"], "commit checks", CheckReport.parse) if "checks" in d else None,
            read_int(d["checks_run"], "commit checks_run") if "checks_run" in d else None,
            read_list(d["microbatch_losses"], "commit microbatch_losses", read_float)
            if "microbatch_losses" in d
            else None,
            read_list(d["logits"], "commit logits", read_digest) if "logits" in d else None,
            read_hex(d["cosignature"], "commit cosignature") if "cosignature" in d else None,
            read_text(d["dispute"], "commit dispute") if "dispute" in d else None,
            read_digest(d["contribution"], "commit contribution") if "contribution" in d else None,
            read_hex(d["root"], "commit root") if "root" in d else None,
        )


@dataclasses.dataclass(frozen=True)
class UpdateCommitment:
    """What an update commits to with receipts on: its signed receipt, the optimizer state's
    digests before and after, and the gradient trace it started from."""

    receipt: bytes
    optimizer_before: bytes
    optimizer: bytes
    grads_trace: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class Updated(Message):
    """Worker to coordinator: the update of ``step`` is done; the weights' digest after it, and
    with receipts on what it commits to."""

    TYPE: ClassVar[str] = "updated"
    step: int
    weights: bytes
    busy_ns: int
    commitment: UpdateCommitment | None = None

    _SIGNED: ClassVar[tuple[str, ...]] = ("receipt", "optimizer_before", "optimizer", "grads_trace")

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE, "step": self.step, "weights": self.weights.hex()}
        wire["busy_ns"] = self.busy_ns
        c = self.commitment
        if c is not None:
            wire.update(receipt=c.receipt.hex(), optimizer_before=c.optimizer_before.hex())
            wire.update(optimizer=c.optimizer.hex(), grads_trace=[d.hex() for d in c.grads_trace])
        return wire

    @classmethod
    def parse(cls, data: Any) -> Updated:
        d = read_fields(data, cls.TYPE, ("step", "weights", "busy_ns"), cls._SIGNED)
        present = [k for k in cls._SIGNED if k in d]
        if present and len(present) != len(cls._SIGNED):
            raise ProtocolError(f"an updated message carries {', '.join(cls._SIGNED)} together or none")
        commitment = None
        if present:
            commitment = UpdateCommitment(
                read_hex(d["receipt"], "updated receipt"),
                read_hex(d["optimizer_before"], "updated optimizer_before", DIGEST_BYTES),
                read_hex(d["optimizer"], "updated optimizer", DIGEST_BYTES),
                read_list(d["grads_trace"], "updated grads_trace", read_digest),
            )
        return cls(
            read_int(d["step"], "updated step"),
            read_hex(d["weights"], "updated weights", DIGEST_BYTES),
            read_int(d["busy_ns"], "updated busy_ns"),
            commitment,
        )


@dataclasses.dataclass(frozen=True)
class _StepWeights(Message):
    step: int
    weights: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "step": self.step, "weights": self.weights.hex()}

    @classmethod
    def parse(cls, data: Any) -> Self:
        d = read_fields(data, cls.TYPE, ("step", "weights"))
        return cls(read_int(d["step"], f"{cls.TYPE} step"), read_hex(d["weights"], f"{cls.TYPE} weights", DIGEST_BYTES))


@dataclasses.dataclass(frozen=True)
class Restored(_StepWeights):
    """Worker to coordinator: back at the state before ``step``; the weights' digest."""

    TYPE: ClassVar[str] = "restored"


@dataclasses.dataclass(frozen=True)
class Loaded(_StepWeights):
    """Worker to coordinator: loaded the state of ``step``; the weights' digest."""

    TYPE: ClassVar[str] = "loaded"


@dataclasses.dataclass(frozen=True)
class ReplicaLoaded(Message):
    """Worker to coordinator: a checker loaded its replica's state of ``step``."""

    TYPE: ClassVar[str] = "loaded"
    step: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "step": self.step, "replica": True}

    @classmethod
    def parse(cls, data: Any) -> ReplicaLoaded:
        d = read_fields(data, cls.TYPE, ("step", "replica"))
        if d["replica"] is not True:
            raise ProtocolError("a replica's loaded message must say replica: true")
        return cls(read_int(d["step"], "loaded step"))


class TensorGroupMessage(Message):
    """A message followed by the bytes of the tensors it announces (``tensors``, in order),
    packed in one buffer (:func:`.send_tensor_group`)."""

    tensors: tuple[TensorMeta, ...]


@dataclasses.dataclass(frozen=True)
class Snapshot(TensorGroupMessage):
    """Worker to coordinator: the stage's weights and optimizer state after ``step`` steps."""

    TYPE: ClassVar[str] = "snapshot"
    step: int
    tensors: tuple[TensorMeta, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "step": self.step, "tensors": wire_tensors(self.tensors)}

    @classmethod
    def parse(cls, data: Any) -> Snapshot:
        d = read_fields(data, cls.TYPE, ("step", "tensors"))
        return cls(read_int(d["step"], "snapshot step"), read_tensors(d["tensors"], "snapshot tensors"))


@dataclasses.dataclass(frozen=True)
class Pushed(TensorGroupMessage):
    """Worker to coordinator: the sampled units of ``step`` a :class:`.Push` asked for."""

    TYPE: ClassVar[str] = "pushed"
    step: int
    units: tuple[tuple[int, str], ...]
    tensors: tuple[TensorMeta, ...]

    def to_wire(self) -> dict[str, Any]:
        units = [[m, k] for m, k in self.units]
        return {"type": self.TYPE, "step": self.step, "units": units, "tensors": wire_tensors(self.tensors)}

    @classmethod
    def parse(cls, data: Any) -> Pushed:
        d = read_fields(data, cls.TYPE, ("step", "units", "tensors"))
        units = read_list(d["units"], "pushed units", read_unit)
        return cls(read_int(d["step"], "pushed step"), units, read_tensors(d["tensors"], "pushed tensors"))


@dataclasses.dataclass(frozen=True)
class Fetched(TensorGroupMessage):
    """Worker to coordinator: the unit a :class:`.Fetch` asked for."""

    TYPE: ClassVar[str] = "fetched"
    step: int
    micro_batch: int
    kind: str
    tensors: tuple[TensorMeta, ...]

    def to_wire(self) -> dict[str, Any]:
        wire = {"type": self.TYPE, "step": self.step, "micro_batch": self.micro_batch, "kind": self.kind}
        return wire | {"tensors": wire_tensors(self.tensors)}

    @classmethod
    def parse(cls, data: Any) -> Fetched:
        d = read_fields(data, cls.TYPE, ("step", "micro_batch", "kind", "tensors"))
        return cls(
            read_int(d["step"], "fetched step"),
            read_int(d["micro_batch"], "fetched micro_batch"),
            read_text(d["kind"], "fetched kind", choices=UNIT_KINDS),
            read_tensors(d["tensors"], "fetched tensors"),
        )


@dataclasses.dataclass(frozen=True)
class FetchUnavailable(Message):
    """Worker to coordinator: it does not keep the unit a :class:`.Fetch` asked for."""

    TYPE: ClassVar[str] = "fetched"
    error: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "error": self.error}

    @classmethod
    def parse(cls, data: Any) -> FetchUnavailable:
        return cls(read_text(read_fields(data, cls.TYPE, ("error",))["error"], "fetched error"))


@dataclasses.dataclass(frozen=True)
class Calibrated(TensorGroupMessage):
    """Worker to coordinator: the outputs of the calibration units a :class:`.Calibrate` asked for."""

    TYPE: ClassVar[str] = "calibrated"
    units: int
    tensors: tuple[TensorMeta, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "units": self.units, "tensors": wire_tensors(self.tensors)}

    @classmethod
    def parse(cls, data: Any) -> Calibrated:
        d = read_fields(data, cls.TYPE, ("units", "tensors"))
        return cls(read_int(d["units"], "calibrated units", 1), read_tensors(d["tensors"], "calibrated tensors"))


@dataclasses.dataclass(frozen=True)
class ErrorReport(Message):
    """Worker to coordinator: peer ``peer`` failed (``cause`` as :class:`.TransportError` says).
    :meth:`Transport.recv_json <stagewarden.runtime.transport.Transport.recv_json>` raises on
    receipt of it."""

    TYPE: ClassVar[str] = "error"
    peer: int | None
    cause: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "peer": self.peer, "cause": self.cause, "message": self.message}

    @classmethod
    def parse(cls, data: Any) -> ErrorReport:
        d = read_fields(data, cls.TYPE, ("peer", "cause", "message"))
        return cls(
            read_opt_int(d["peer"], "error peer"),
            read_text(d["cause"], "error cause", choices=FAILURE_CAUSES),
            read_text(d["message"], "error message"),
        )
