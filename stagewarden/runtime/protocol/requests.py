"""The control messages the coordinator sends a worker."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Self

from stagewarden.runtime.protocol.fields import (
    DIGEST_BYTES,
    UNIT_KINDS,
    Message,
    ProtocolError,
    TensorMeta,
    read_bool,
    read_digest,
    read_fields,
    read_hex,
    read_id,
    read_int,
    read_list,
    read_opt_int,
    read_stage_map,
    read_tensors,
    read_text,
    read_unit,
    wire_map,
    wire_tensors,
)


@dataclasses.dataclass(frozen=True)
class Hello(Message):
    """Coordinator to worker at start: who the worker is (its slot,
    :class:`~stagewarden.runtime.layout.Layout`; ``None`` for a standby), the attestation nonce
    (``None``: attestation is off) and the coordinator's public key, which the worker pins to check
    the step heads it cosigns. ``chain_head`` continues a resumed run's receipt chain."""

    TYPE: ClassVar[str] = "hello"
    run_id: str
    worker_id: str
    slot: int | None
    nonce: bytes | None
    session: int
    coordinator_key: bytes
    chain_head: bytes | None = None

    @property
    def role(self) -> str:
        """``stage`` or ``standby``."""
        return "standby" if self.slot is None else "stage"

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "type": self.TYPE,
            "run_id": self.run_id,
            "worker_id": self.worker_id,
            "role": self.role,
            "slot": self.slot,
            "nonce": None if self.nonce is None else self.nonce.hex(),
            "session": self.session,
            "coordinator_key": self.coordinator_key.hex(),
        }
        if self.chain_head is not None:
            wire["chain_head"] = self.chain_head.hex()
        return wire

    @classmethod
    def parse(cls, data: Any) -> Hello:
        d = read_fields(
            data,
            cls.TYPE,
            ("run_id", "worker_id", "role", "slot", "nonce", "session", "coordinator_key"),
            ("chain_head",),
        )
        out = cls(
            read_id(d["run_id"], "hello run_id"),
            read_id(d["worker_id"], "hello worker_id"),
            read_opt_int(d["slot"], "hello slot"),
            None if d["nonce"] is None else read_hex(d["nonce"], "hello nonce"),
            read_int(d["session"], "hello session"),
            read_hex(d["coordinator_key"], "hello coordinator_key", DIGEST_BYTES),
            read_hex(d["chain_head"], "hello chain_head", DIGEST_BYTES) if "chain_head" in d else None,
        )
        if d["role"] != out.role:
            raise ProtocolError(f"hello role must be {out.role!r} for slot {out.slot}")
        return out


@dataclasses.dataclass(frozen=True)
class Shutdown(Message):
    """Coordinator to worker: the run ends before training (another worker was refused)."""

    TYPE: ClassVar[str] = "shutdown"


@dataclasses.dataclass(frozen=True)
class Refused(Message):
    """Coordinator to worker: this worker was refused admission."""

    TYPE: ClassVar[str] = "refused"


@dataclasses.dataclass(frozen=True)
class Reattest(Message):
    """Coordinator to an admitted worker during the run: present fresh evidence bound to ``nonce``
    (answered with :class:`~stagewarden.runtime.protocol.replies.Evidence`), so that a valid
    attestation result covers the worker for as long as it works."""

    TYPE: ClassVar[str] = "reattest"
    nonce: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "nonce": self.nonce.hex()}

    @classmethod
    def parse(cls, data: Any) -> Reattest:
        d = read_fields(data, cls.TYPE, ("nonce",))
        return cls(read_hex(d["nonce"], "reattest nonce"))


@dataclasses.dataclass(frozen=True)
class Release(Message):
    """Coordinator to worker: the worker is done (the run ended, or it was ejected)."""

    TYPE: ClassVar[str] = "release"


def read_keys(value: Any, what: str) -> dict[int, bytes]:
    """A map of slot numbers to receipt keys."""
    return read_stage_map(value, what, read_digest)


@dataclasses.dataclass(frozen=True)
class _StageMaps(Message):
    keys: dict[int, bytes]
    workers: dict[int, str]
    ranks: dict[int, int]

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "keys": wire_map({s: k.hex() for s, k in self.keys.items()}),
            "workers": wire_map(self.workers),
            "ranks": wire_map(self.ranks),
        }

    @classmethod
    def parse(cls, data: Any) -> Self:
        d = read_fields(data, cls.TYPE, ("keys", "workers", "ranks"))
        return cls(
            read_keys(d["keys"], f"{cls.TYPE} keys"),
            read_stage_map(d["workers"], f"{cls.TYPE} workers", read_id),
            read_stage_map(d["ranks"], f"{cls.TYPE} ranks", read_int),
        )


@dataclasses.dataclass(frozen=True)
class Admitted(_StageMaps):
    """Coordinator to worker: every computing slot's attested receipt key, worker id and rank (a
    retired pipeline's slots are left out)."""

    TYPE: ClassVar[str] = "admitted"


@dataclasses.dataclass(frozen=True)
class Ranks(_StageMaps):
    """Coordinator to worker after an eject: the new map of slots to keys, worker ids and ranks."""

    TYPE: ClassVar[str] = "ranks"


@dataclasses.dataclass(frozen=True)
class _StepOnly(Message):
    step: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "step": self.step}

    @classmethod
    def parse(cls, data: Any) -> Self:
        return cls(read_int(read_fields(data, cls.TYPE, ("step",))["step"], f"{cls.TYPE} step"))


@dataclasses.dataclass(frozen=True)
class Idle(_StepOnly):
    """Coordinator to worker: compute nothing in ``step`` (a standby, or a bypassed stage)."""

    TYPE: ClassVar[str] = "idle"


@dataclasses.dataclass(frozen=True)
class Update(Message):
    """Coordinator to worker: apply the optimizer step of ``step``. With replicas,
    ``contributions`` are the digests of the gradients the worker's group committed to (its stage
    in the same copy of every computing replica, in replica order): the contributions it must
    receive and aggregate."""

    TYPE: ClassVar[str] = "update"
    step: int
    contributions: tuple[bytes, ...] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE, "step": self.step}
        if self.contributions is not None:
            wire["contributions"] = [d.hex() for d in self.contributions]
        return wire

    @classmethod
    def parse(cls, data: Any) -> Update:
        d = read_fields(data, cls.TYPE, ("step",), ("contributions",))
        contributions = (
            read_list(d["contributions"], "update contributions", read_digest) if "contributions" in d else None
        )
        return cls(read_int(d["step"], "update step"), contributions)


@dataclasses.dataclass(frozen=True)
class Restore(_StepOnly):
    """Coordinator to worker: return to the state before ``step``."""

    TYPE: ClassVar[str] = "restore"


@dataclasses.dataclass(frozen=True)
class SnapshotRequest(_StepOnly):
    """Coordinator to worker: send the stage's state after ``step`` steps (:class:`.Snapshot`)."""

    TYPE: ClassVar[str] = "snapshot"


@dataclasses.dataclass(frozen=True)
class Step(Message):
    """Coordinator to worker: compute ``step`` (its ``attempt``-th recomputation), leaving out
    stage ``bypass`` when set."""

    TYPE: ClassVar[str] = "step"
    step: int
    attempt: int
    bypass: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE, "step": self.step, "attempt": self.attempt}
        if self.bypass is not None:
            wire["bypass"] = self.bypass
        return wire

    @classmethod
    def parse(cls, data: Any) -> Step:
        d = read_fields(data, cls.TYPE, ("step", "attempt"), ("bypass",))
        bypass = read_int(d["bypass"], "step bypass") if "bypass" in d else None
        return cls(read_int(d["step"], "step step"), read_int(d["attempt"], "step attempt"), bypass)


@dataclasses.dataclass(frozen=True)
class Discard(Message):
    """Coordinator to worker: drop the computation of ``step`` and continue the receipt chain
    from ``chain_head``."""

    TYPE: ClassVar[str] = "discard"
    step: int
    chain_head: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "step": self.step, "chain_head": self.chain_head.hex()}

    @classmethod
    def parse(cls, data: Any) -> Discard:
        d = read_fields(data, cls.TYPE, ("step", "chain_head"))
        return cls(read_int(d["step"], "discard step"), read_hex(d["chain_head"], "discard chain_head", DIGEST_BYTES))


@dataclasses.dataclass(frozen=True)
class Push(Message):
    """Coordinator to worker: send the sampled ``units`` of ``step`` (and with ``snapshot`` the
    state after the update) without waiting (:class:`.Pushed`)."""

    TYPE: ClassVar[str] = "push"
    step: int
    units: tuple[tuple[int, str], ...]
    snapshot: bool

    def to_wire(self) -> dict[str, Any]:
        units = [[m, k] for m, k in self.units]
        return {"type": self.TYPE, "step": self.step, "push": units, "snapshot": self.snapshot}

    @classmethod
    def parse(cls, data: Any) -> Push:
        d = read_fields(data, cls.TYPE, ("step", "push", "snapshot"))
        return cls(
            read_int(d["step"], "push step"),
            read_list(d["push"], "push units", read_unit),
            read_bool(d["snapshot"], "snapshot"),
        )


@dataclasses.dataclass(frozen=True)
class Assign(Message):
    """Coordinator to a standby: take ``slot`` (its state comes next, with :class:`Load`)."""

    TYPE: ClassVar[str] = "assign"
    slot: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "slot": self.slot}

    @classmethod
    def parse(cls, data: Any) -> Assign:
        return cls(read_int(read_fields(data, cls.TYPE, ("slot",))["slot"], "assign slot"))


@dataclasses.dataclass(frozen=True)
class Fetch(Message):
    """Coordinator to worker: send one committed unit's inputs and weights (:class:`.Fetched`)."""

    TYPE: ClassVar[str] = "fetch"
    step: int
    micro_batch: int
    kind: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "step": self.step, "micro_batch": self.micro_batch, "kind": self.kind}

    @classmethod
    def parse(cls, data: Any) -> Fetch:
        d = read_fields(data, cls.TYPE, ("step", "micro_batch", "kind"))
        return cls(
            read_int(d["step"], "fetch step"),
            read_int(d["micro_batch"], "fetch micro_batch"),
            read_text(d["kind"], "fetch kind", choices=UNIT_KINDS),
        )


@dataclasses.dataclass(frozen=True)
class Calibrate(Message):
    """Coordinator to worker: compute ``units`` calibration units (:class:`.Calibrated`)."""

    TYPE: ClassVar[str] = "calibrate"
    units: int

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.TYPE, "units": self.units}

    @classmethod
    def parse(cls, data: Any) -> Calibrate:
        return cls(read_int(read_fields(data, cls.TYPE, ("units",))["units"], "calibrate units", 1))


@dataclasses.dataclass(frozen=True)
class Load(Message):
    """Coordinator to worker: a verified state to load, announced tensor by tensor (each sent
    after the message as a raw tensor); with ``replica_only`` only a checker's replica."""

    TYPE: ClassVar[str] = "load"
    step: int
    tensors: tuple[TensorMeta, ...]
    replica_only: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"type": self.TYPE, "step": self.step, "tensors": wire_tensors(self.tensors)}
        if self.replica_only:
            wire["replica_only"] = True
        return wire

    @classmethod
    def parse(cls, data: Any) -> Load:
        d = read_fields(data, cls.TYPE, ("step", "tensors"), ("replica_only",))
        if "replica_only" in d and d["replica_only"] is not True:
            raise ProtocolError("load replica_only must be true when present")
        return cls(read_int(d["step"], "load step"), read_tensors(d["tensors"], "load tensors"), "replica_only" in d)
