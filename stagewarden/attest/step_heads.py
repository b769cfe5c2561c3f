"""Signed step heads and cosignatures: the coordinator's commitments to a run's record.

After every step the coordinator appends a :class:`SignedStepHead` to the receipt log. The head
commits to everything before it: the log (record count and the digest of the last record), the
event log ``events.jsonl`` (line count and a hash chain over its lines), who serves each stage
with which receipt key, and every worker's receipt-chain head. The run's last head is *final*: it
also commits to the digest of ``summary.json`` and to how the run ended. The coordinator sends
every head to every worker it still serves; a worker checks it against its own view (its key in
the roster, its own chain head), countersigns it (:class:`Cosignature`) and keeps both in its
witness file (:mod:`stagewarden.attest.witness`). The cosignatures of the final head are logged
after it, so a run directory carries its own proof of completeness that the coordinator's key
alone cannot forge.

Encoding: a head and a cosignature are canonical JSON (sorted keys, no spaces, UTF-8); a parser
accepts only the canonical bytes, so one value has one encoding. The coordinator signs
``HEAD_DOMAIN || canonical JSON of the head``; a worker signs ``COSIGN_DOMAIN || head digest ||
worker id``, where the head digest is BLAKE3 over the coordinator's signed message.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Self, TypeVar

import blake3
import pydantic
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from pydantic import Field, Strict, StrictBool

from .errors import AttestError, ErrorCode, FormatError
from .run_record_parts import STRICT_MODEL, Count, Digest, Signature, WorkerId

HEAD_DOMAIN = b"stagewarden/record/step-head/v1\x00"
COSIGN_DOMAIN = b"stagewarden/record/cosignature/v1\x00"
EVENT_DOMAIN = b"stagewarden/record/event/v1\x00"
ROSTER_DOMAIN = b"stagewarden/record/roster/v1\x00"
CHAINS_DOMAIN = b"stagewarden/record/chains/v1\x00"
#: The events digest of an empty ``events.jsonl``.
EVENTS_GENESIS = blake3.blake3(b"stagewarden/record/events/genesis/v1\x00").digest()
#: The largest encoded head or cosignature (a head lists every stage and worker once).
MAX_HEAD_BYTES = 64 * 1024

KeyHex = Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{64}$")]
EndStatus = Literal["completed", "stopped"]


class RosterEntry(pydantic.BaseModel):
    """Who serves a stage of a replica (pipeline) when a head is signed: the worker and its
    attested receipt key."""

    model_config = STRICT_MODEL
    stage: Count
    worker: WorkerId
    key: KeyHex
    replica: Count = 0


class StepHead(pydantic.BaseModel):
    """What the coordinator commits to after a step (see the module docstring).

    Attributes:
        run_id: The run.
        sequence: The head's position among the run's heads (0 for the first, over every session).
        session: The coordinator session that signed it (0, then one more per resume).
        steps: Steps completed when it was signed.
        records: Receipt-log records before this head.
        log_digest: The digest of the last of those records (the log's genesis digest for none).
        events: Lines of ``events.jsonl`` written before this head.
        events_digest: The hash chain over those lines (:class:`EventsChain`).
        roster_digest: :func:`roster_digest` of who serves each stage, with the attested
            receipt key (sent to the workers with the head, not logged: the log's records say it).
        chains_digest: :func:`chains_digest` of every worker's receipt-chain head, the digest its
            next receipt continues (sent to the workers with the head).
        final: Whether this is the run's last head.
        status: How the run ended (final heads only).
        summary_digest: BLAKE3 of ``summary.json`` (final heads only).
    """

    model_config = STRICT_MODEL
    run_id: WorkerId
    sequence: Count
    session: Count
    steps: Count
    records: Count
    log_digest: Digest
    events: Count
    events_digest: Digest
    roster_digest: Digest
    chains_digest: Digest
    final: StrictBool
    status: Literal["completed", "stopped"] | None = None
    summary_digest: Digest | None = None

    def message(self) -> bytes:
        """What the coordinator signs."""
        return HEAD_DOMAIN + canonical(self.model_dump(mode="json"))

    def digest(self) -> bytes:
        """BLAKE3 of :meth:`message`: what a cosignature names."""
        return blake3.blake3(self.message()).digest()


class SignedStepHead(pydantic.BaseModel):
    """A step head with the coordinator's Ed25519 signature over :meth:`StepHead.message`."""

    model_config = STRICT_MODEL
    head: StepHead
    signature: Signature

    def encode(self) -> bytes:
        """The canonical bytes of the signed head (a log record's payload, a witness line's part)."""
        return canonical(self.model_dump(mode="json"))

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """The signed head ``data`` encodes; raise :class:`~stagewarden.attest.errors.FormatError`
        (``HEAD_MALFORMED``) for anything but the canonical encoding of a valid head."""
        return _parse_canonical(cls, data, ErrorCode.HEAD_MALFORMED, "step head")

    def verify(self, coordinator_key: bytes) -> None:
        """Raise ``HEAD_SIGNATURE`` unless the coordinator key signed this head."""
        _verify(coordinator_key, self.head.message(), self.signature, ErrorCode.HEAD_SIGNATURE, "step head")


class Cosignature(pydantic.BaseModel):
    """A worker's countersignature over a step head, with its receipt key."""

    model_config = STRICT_MODEL
    sequence: Count
    head_digest: Digest
    worker: WorkerId
    key: KeyHex
    signature: Signature

    def message(self) -> bytes:
        """What the worker signs."""
        return COSIGN_DOMAIN + bytes.fromhex(self.head_digest) + self.worker.encode("utf-8")

    def encode(self) -> bytes:
        """The canonical bytes (a log record's payload)."""
        return canonical(self.model_dump(mode="json"))

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """The cosignature ``data`` encodes (``HEAD_MALFORMED`` for anything but canonical bytes)."""
        return _parse_canonical(cls, data, ErrorCode.HEAD_MALFORMED, "cosignature")

    def verify(self, head: StepHead) -> None:
        """Raise ``COSIGNATURE_INVALID`` unless this cosigns ``head`` under the key it names."""
        if self.head_digest != head.digest().hex() or self.sequence != head.sequence:
            raise AttestError(
                ErrorCode.COSIGNATURE_INVALID,
                f"the cosignature of {self.worker} is for another head than {head.sequence}",
            )
        _verify(bytes.fromhex(self.key), self.message(), self.signature, ErrorCode.COSIGNATURE_INVALID, "cosignature")


def sign_head(head: StepHead, key: SigningKey) -> SignedStepHead:
    """``head`` signed with the coordinator's key."""
    return SignedStepHead(head=head, signature=key.sign(head.message()).signature.hex())


def cosign(head: StepHead, worker: str, key: SigningKey) -> Cosignature:
    """``worker``'s cosignature over ``head`` with its receipt key."""
    unsigned = Cosignature(
        sequence=head.sequence,
        head_digest=head.digest().hex(),
        worker=worker,
        key=bytes(key.verify_key).hex(),
        signature="0" * 128,
    )
    return unsigned.model_copy(update={"signature": key.sign(unsigned.message()).signature.hex()})


class EventsChain:
    """The hash chain over the lines of ``events.jsonl`` that step heads commit to: each link is
    BLAKE3 of ``EVENT_DOMAIN || previous link || the line without its newline``."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = EVENTS_GENESIS

    def add(self, line: bytes) -> None:
        """Take one more line (without its newline)."""
        self.digest = blake3.blake3(EVENT_DOMAIN + self.digest + line).digest()
        self.count += 1


def roster_digest(roster: list[RosterEntry]) -> bytes:
    """The digest a head holds for ``roster`` (in slot order; an entry's replica is left out when
    it is 0, so a single pipeline's roster reads as it always has)."""
    entries = [e.model_dump(mode="json", exclude_defaults=True) for e in roster]
    return blake3.blake3(ROSTER_DOMAIN + canonical(entries)).digest()


def chains_digest(chains: dict[str, bytes]) -> bytes:
    """The digest a head holds for the workers' chain heads."""
    return blake3.blake3(CHAINS_DOMAIN + canonical({w: d.hex() for w, d in chains.items()})).digest()


def canonical(value: Any) -> bytes:
    """The canonical JSON encoding of ``value``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_M = TypeVar("_M", bound=pydantic.BaseModel)


def _parse_canonical(cls: type[_M], data: bytes, code: ErrorCode, what: str) -> _M:
    if len(data) > MAX_HEAD_BYTES:
        raise FormatError(code, f"the {what} is {len(data)} bytes, more than {MAX_HEAD_BYTES}")
    try:
        value = cls.model_validate_json(data, strict=False)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise FormatError(code, f"the {what} is malformed: {where}: {first['msg']}") from None
    if canonical(value.model_dump(mode="json")) != data:
        raise FormatError(code, f"the {what} is not in canonical form")
    return value


def _verify(key: bytes, message: bytes, signature: str, code: ErrorCode, what: str) -> None:
    try:
        VerifyKey(key).verify(message, bytes.fromhex(signature))
    except (BadSignatureError, ValueError):
        raise AttestError(code, f"the {what}'s signature does not verify under key {key.hex()[:16]}") from None
