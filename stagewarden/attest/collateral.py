"""Endorsements and reference values: signed TCB info from the (simulated) vendor, signed reference measurements.

Both are JWS compact tokens (:mod:`stagewarden.attest.token`) over canonical JSON:

* **TCB info** (``typ`` ``swsim-tcb-info+jwt``), one per hardware model, signed by the vendor's
  Ed25519 TCB-signing key, whose certificate is issued by the pinned root. It lists TCB levels
  (minimum SVN vectors, newest first) with a status, an issue date and a next-update date.
* **Reference values** (``typ`` ``swsim-reference-values+jwt``), signed by a reference value
  provider's Ed25519 key that the verifier pins: the accepted launch measurements, each with a
  name, and a validity period.

The parsers here check structure only and raise :class:`~stagewarden.attest.errors.FormatError` (COLLATERAL_MALFORMED);
the verifier checks signatures and validity windows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from nacl.signing import SigningKey, VerifyKey

from .errors import ErrorCode, FormatError
from .evidence import MEASUREMENT_SIZE, SVN_COMPONENTS, check_hardware_model
from .token import open_token, peek_token, sign_token

TCB_INFO_TYP = "swsim-tcb-info+jwt"
REFERENCE_TYP = "swsim-reference-values+jwt"
TCB_INFO_TYPE = "stagewarden-simulated-tcb-info"
REFERENCE_TYPE = "stagewarden-reference-values"
MAX_TCB_LEVELS = 64
MAX_REFERENCE_VALUES = 1024
MAX_NAME = 64
# ASCII digits only: "\d" alone also matches the digits of other scripts, which strptime accepts too.
_TIME_RE = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z", re.ASCII)
_BAD = ErrorCode.COLLATERAL_MALFORMED


class TcbStatus(enum.StrEnum):
    """Status of a TCB level. Only ``UpToDate`` is affirming; ``Revoked`` is never accepted."""

    UP_TO_DATE = "UpToDate"
    OUT_OF_DATE = "OutOfDate"
    REVOKED = "Revoked"


def format_time(instant: dt.datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC (whole seconds)."""
    # isoformat always writes four year digits; strftime's %Y writes year 26 as "26" on glibc.
    return instant.astimezone(dt.UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def parse_time(value: Any, what: str) -> dt.datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` strictly; raise COLLATERAL_MALFORMED otherwise."""
    if not isinstance(value, str) or not _TIME_RE.match(value):
        raise FormatError(_BAD, f"{what} must be a UTC time written YYYY-MM-DDTHH:MM:SSZ")
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise FormatError(_BAD, f"{what} {value!r} is not a valid date and time") from None


def _keys(payload: dict[str, Any], expected: set[str], what: str) -> None:
    if set(payload) != expected:
        missing, extra = sorted(expected - set(payload)), sorted(set(payload) - expected)
        raise FormatError(_BAD, f"{what} fields differ from the format (missing {missing}, unexpected {extra})")


def _int(value: Any, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise FormatError(_BAD, f"{what} must be an integer from {lo} to {hi}")
    return value


@dataclasses.dataclass(frozen=True)
class TcbLevel:
    """A TCB level: evidence whose SVNs are all at least ``svns`` is at this level."""

    svns: tuple[int, ...]
    status: TcbStatus

    def covers(self, svns: Sequence[int]) -> bool:
        """Whether every component of ``svns`` is at least this level's minimum."""
        return all(have >= need for have, need in zip(svns, self.svns, strict=True))


@dataclasses.dataclass(frozen=True)
class TcbInfo:
    """TCB info for one hardware model."""

    hardware_model: str
    issue_date: dt.datetime
    next_update: dt.datetime
    levels: tuple[TcbLevel, ...]

    def level_for(self, svns: Sequence[int]) -> TcbLevel | None:
        """The first (newest) level that covers ``svns``, or None when the SVNs are below every level."""
        for level in self.levels:
            if level.covers(svns):
                return level
        return None

    def payload(self) -> dict[str, Any]:
        """The token payload."""
        return {
            "type": TCB_INFO_TYPE,
            "version": 1,
            "simulated": True,
            "hardware_model": self.hardware_model,
            "issue_date": format_time(self.issue_date),
            "next_update": format_time(self.next_update),
            "tcb_levels": [{"svns": list(level.svns), "status": str(level.status)} for level in self.levels],
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TcbInfo:
        """Check and convert a token payload; raise COLLATERAL_MALFORMED."""
        what = "TCB info"
        _keys(
            payload, {"type", "version", "simulated", "hardware_model", "issue_date", "next_update", "tcb_levels"}, what
        )
        if payload["type"] != TCB_INFO_TYPE or payload["version"] != 1 or type(payload["version"]) is not int:
            raise FormatError(_BAD, f"{what} must have type {TCB_INFO_TYPE!r} and version 1")
        if payload["simulated"] is not True:
            raise FormatError(_BAD, f"{what} must say it belongs to the simulated TEE")
        model = payload["hardware_model"]
        try:
            check_hardware_model(model if isinstance(model, str) else "")
        except ValueError as exc:
            raise FormatError(_BAD, f"{what} {exc}") from None
        issued = parse_time(payload["issue_date"], f"{what} issue_date")
        nxt = parse_time(payload["next_update"], f"{what} next_update")
        if nxt <= issued:
            raise FormatError(_BAD, f"{what} next_update must be after issue_date")
        raw_levels = payload["tcb_levels"]
        if not isinstance(raw_levels, list) or not 1 <= len(raw_levels) <= MAX_TCB_LEVELS:
            raise FormatError(_BAD, f"{what} tcb_levels must be a list of 1 to {MAX_TCB_LEVELS} levels")
        levels = []
        for index, raw in enumerate(raw_levels):
            if not isinstance(raw, dict):
                raise FormatError(_BAD, f"{what} level {index} must be an object")
            _keys(raw, {"svns", "status"}, f"{what} level {index}")
            svns = raw["svns"]
            if not isinstance(svns, list) or len(svns) != len(SVN_COMPONENTS):
                raise FormatError(_BAD, f"{what} level {index} svns must list {len(SVN_COMPONENTS)} integers")
            values = tuple(_int(s, 0, 0xFFFF, f"{what} level {index} svn") for s in svns)
            try:
                status = TcbStatus(raw["status"])
            except ValueError:
                raise FormatError(
                    _BAD, f"{what} level {index} status must be one of {[str(s) for s in TcbStatus]}"
                ) from None
            levels.append(TcbLevel(values, status))
        return cls(model, issued, nxt, tuple(levels))


@dataclasses.dataclass(frozen=True)
class ReferenceValues:
    """Accepted launch measurements (name per measurement) with a validity period.

    ``stages`` runs parallel to ``measurements``: the pipeline stage each measurement is valid
    for (a label such as ``"0"`` or ``"standby"``), or None for a measurement valid for any
    stage. Empty means every measurement is valid for any stage.
    """

    issued_at: dt.datetime
    expires_at: dt.datetime
    measurements: tuple[tuple[str, bytes], ...]
    stages: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if self.stages and len(self.stages) != len(self.measurements):
            raise ValueError("reference values need one stage (or None) per measurement")

    def stage_at(self, index: int) -> str | None:
        """The stage measurement ``index`` is valid for (None: any stage)."""
        return self.stages[index] if self.stages else None

    def name_of(self, measurement: bytes, stage: str | None = None) -> str | None:
        """The name of ``measurement`` when it is accepted (for ``stage``, when given), else None."""
        for index, (label, value) in enumerate(self.measurements):
            bound = self.stage_at(index)
            if value == measurement and (stage is None or bound is None or bound == stage):
                return label
        return None

    def stages_of(self, measurement: bytes) -> tuple[str, ...]:
        """The stages ``measurement`` is bound to (empty when it is valid for any stage or unknown)."""
        return tuple(
            bound
            for index, (_, value) in enumerate(self.measurements)
            if value == measurement and (bound := self.stage_at(index)) is not None
        )

    def payload(self) -> dict[str, Any]:
        """The token payload."""
        entries: list[dict[str, Any]] = []
        for index, (label, value) in enumerate(self.measurements):
            entry = {"name": label, "measurement": value.hex()}
            bound = self.stage_at(index)
            if bound is not None:
                entry["stage"] = bound
            entries.append(entry)
        return {
            "type": REFERENCE_TYPE,
            "version": 1,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "measurements": entries,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ReferenceValues:
        """Check and convert a token payload; raise COLLATERAL_MALFORMED."""
        what = "reference values"
        _keys(payload, {"type", "version", "issued_at", "expires_at", "measurements"}, what)
        if payload["type"] != REFERENCE_TYPE or payload["version"] != 1 or type(payload["version"]) is not int:
            raise FormatError(_BAD, f"{what} must have type {REFERENCE_TYPE!r} and version 1")
        issued = parse_time(payload["issued_at"], f"{what} issued_at")
        expires = parse_time(payload["expires_at"], f"{what} expires_at")
        if expires <= issued:
            raise FormatError(_BAD, f"{what} expires_at must be after issued_at")
        raw = payload["measurements"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_REFERENCE_VALUES:
            raise FormatError(_BAD, f"{what} measurements must be a list of 1 to {MAX_REFERENCE_VALUES} entries")
        out: list[tuple[str, bytes]] = []
        stages: list[str | None] = []
        for index, entry in enumerate(raw):
            if not isinstance(entry, dict):
                raise FormatError(_BAD, f"{what} entry {index} must be an object")
            required = {"name", "measurement"}
            _keys(entry, required | ({"stage"} & set(entry)), f"{what} entry {index}")
            label, text = entry["name"], entry["measurement"]
            if not isinstance(label, str) or not 1 <= len(label) <= MAX_NAME or not label.isprintable():
                raise FormatError(_BAD, f"{what} entry {index} name must be 1 to {MAX_NAME} printable characters")
            bound = entry.get("stage")
            if bound is not None and (
                not isinstance(bound, str) or not 1 <= len(bound) <= MAX_NAME or not bound.isprintable()
            ):
                raise FormatError(_BAD, f"{what} entry {index} stage must be 1 to {MAX_NAME} printable characters")
            value = _hex32(text, f"{what} entry {index} measurement")
            if any(value == v and bound == b for (_, v), b in zip(out, stages, strict=True)):
                raise FormatError(_BAD, f"{what} entry {index} repeats a measurement (for the same stage)")
            out.append((label, value))
            stages.append(bound)
        return cls(issued, expires, tuple(out), tuple(stages) if any(s is not None for s in stages) else ())


def _hex32(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * MEASUREMENT_SIZE:
        raise FormatError(_BAD, f"{what} must be {MEASUREMENT_SIZE} bytes of lowercase hex")
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise FormatError(_BAD, f"{what} must be {MEASUREMENT_SIZE} bytes of lowercase hex") from None
    if value.hex() != text:
        raise FormatError(_BAD, f"{what} must be {MEASUREMENT_SIZE} bytes of lowercase hex")
    return value


def sign_tcb_info(info: TcbInfo, key: SigningKey) -> bytes:
    """Sign TCB info with the vendor's TCB-signing key."""
    return sign_token(info.payload(), key, TCB_INFO_TYP)


def sign_reference_values(values: ReferenceValues, key: SigningKey) -> bytes:
    """Sign reference values with a reference value provider's key."""
    return sign_token(values.payload(), key, REFERENCE_TYP)


def parse_tcb_info(token: bytes) -> TcbInfo:
    """Parse TCB info without checking its signature (display and early format checks only)."""
    _, payload, _, _ = peek_token(token, TCB_INFO_TYP, _BAD, "TCB info")
    return TcbInfo.from_payload(payload)


def parse_reference_values(token: bytes) -> ReferenceValues:
    """Parse reference values without checking their signature (display and early format checks only)."""
    _, payload, _, _ = peek_token(token, REFERENCE_TYP, _BAD, "reference values")
    return ReferenceValues.from_payload(payload)


def open_tcb_info(token: bytes, key: VerifyKey) -> TcbInfo:
    """Parse TCB info and check its signature under the TCB-signing key (TCB_INFO_INVALID)."""
    payload = open_token(
        token, key, TCB_INFO_TYP, malformed=_BAD, bad_signature=ErrorCode.TCB_INFO_INVALID, what="TCB info"
    )
    return TcbInfo.from_payload(payload)


def open_reference_values(token: bytes, key: VerifyKey) -> ReferenceValues:
    """Parse reference values and check their signature under the provider's key (REFERENCE_INVALID)."""
    payload = open_token(
        token, key, REFERENCE_TYP, malformed=_BAD, bad_signature=ErrorCode.REFERENCE_INVALID, what="reference values"
    )
    return ReferenceValues.from_payload(payload)


@dataclasses.dataclass(frozen=True)
class Endorsements:
    """What the vendor (endorser) publishes and the verifier trusts.

    Attributes:
        roots: the pinned root certificates (trust anchors).
        crls: CRLs of the root (revoking intermediates and the TCB signer) and of intermediates
            (revoking devices).
        tcb_signing_cert: the certificate of the key that signs TCB info (issued by a root).
        tcb_infos: TCB info tokens, one per hardware model.
    """

    roots: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    tcb_signing_cert: x509.Certificate
    tcb_infos: tuple[bytes, ...]
