"""The step-head exchange: the coordinator sends each signed step head to every worker it serves
(:class:`WitnessHead`, with the roster and chain heads the head commits to), and the worker
answers with its cosignature, or says why it will not give one (:class:`Cosigned`)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from stagewarden.attest.errors import AttestError
from stagewarden.attest.step_heads import Cosignature, RosterEntry, SignedStepHead
from stagewarden.runtime.protocol.fields import (
    DIGEST_BYTES,
    MAX_ITEMS,
    Message,
    ProtocolError,
    read_fields,
    read_hex,
    read_id,
    read_int,
    read_list,
    read_text,
)


def _roster_entry(value: Any, what: str) -> RosterEntry:
    if not isinstance(value, list) or len(value) not in (3, 4):
        raise ProtocolError(f"{what} must be a [stage, worker, key] triple or a [stage, worker, key, replica] entry")
    stage = read_int(value[0], f"{what} stage")
    worker = read_id(value[1], f"{what} worker")
    key = read_hex(value[2], f"{what} key", DIGEST_BYTES)
    replica = read_int(value[3], f"{what} replica") if len(value) == 4 else 0
    return RosterEntry(stage=stage, worker=worker, key=key.hex(), replica=replica)


def _chains(value: Any, what: str) -> dict[str, bytes]:
    if not isinstance(value, dict) or len(value) > MAX_ITEMS:
        raise ProtocolError(f"{what} must be an object of at most {MAX_ITEMS} entries")
    return {read_id(k, f"{what} worker"): read_hex(v, f"{what}[{k}]", DIGEST_BYTES) for k, v in value.items()}


@dataclasses.dataclass(frozen=True)
class WitnessHead(Message):
    """Coordinator to worker after a step: a signed step head to check, cosign and keep."""

    TYPE: ClassVar[str] = "head"
    head: SignedStepHead
    roster: tuple[RosterEntry, ...]
    chains: dict[str, bytes]

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "head": self.head.encode().hex(),
            # an entry of replica 0 is the triple a single pipeline's roster always sent
            "roster": [[e.stage, e.worker, e.key, *([e.replica] if e.replica else [])] for e in self.roster],
            "chains": {w: d.hex() for w, d in self.chains.items()},
        }

    @classmethod
    def parse(cls, data: Any) -> WitnessHead:
        d = read_fields(data, cls.TYPE, ("head", "roster", "chains"))
        try:
            head = SignedStepHead.parse(read_hex(d["head"], "head"))
        except AttestError as exc:
            raise ProtocolError(f"head: {exc.message}") from None
        return cls(head, read_list(d["roster"], "head roster", _roster_entry), _chains(d["chains"], "head chains"))


@dataclasses.dataclass(frozen=True)
class Cosigned(Message):
    """Worker to coordinator: its cosignature of the head just sent, or (``dispute``) why the head
    does not match what the worker knows."""

    TYPE: ClassVar[str] = "cosigned"
    cosignature: Cosignature | None
    dispute: str | None = None

    def to_wire(self) -> dict[str, Any]:
        if self.cosignature is None:
            return {"type": self.TYPE, "dispute": self.dispute or ""}
        return {"type": self.TYPE, "cosignature": self.cosignature.encode().hex()}

    @classmethod
    def parse(cls, data: Any) -> Cosigned:
        d = read_fields(data, cls.TYPE, (), ("cosignature", "dispute"))
        if ("cosignature" in d) == ("dispute" in d):
            raise ProtocolError("a cosigned message carries a cosignature or a dispute, exactly one")
        if "dispute" in d:
            return cls(None, read_text(d["dispute"], "cosigned dispute"))
        try:
            return cls(Cosignature.parse(read_hex(d["cosignature"], "cosignature")))
        except AttestError as exc:
            raise ProtocolError(f"cosignature: {exc.message}") from None
