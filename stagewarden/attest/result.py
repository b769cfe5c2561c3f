"""Attestation results: what the verifier tells relying parties, shaped like an EAT Attestation Result (EAR).

A result is a JWS compact token (see :mod:`stagewarden.attest.token`) signed with the verifier's
Ed25519 key. Its claims follow the EAR information model (``eat_profile``, ``iat``, ``exp``,
``eat_nonce``, ``ear.verifier-id``, ``ear.status``) with a ``stagewarden.*`` extension that names
the attested receipt key, the device, the measurement and the outcome of every appraisal check.
The profile name says that the evidence behind it came from the *simulated* TEE.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any, Protocol

from nacl.signing import SigningKey, VerifyKey

from .clock import Clock
from .errors import AttestError, ErrorCode, FormatError
from .token import open_token, sign_token

#: The EAT profile of results issued by this verifier. "simulated" is part of the name on purpose.
EAR_PROFILE = "tag:stagewarden.dev,2026:ear-simulated-tee/v1"
#: Claims that bind a result to one run, worker and stage; optional, so that results issued
#: outside a run (the CLI's ``verify``) stay valid, and required by a relying party that names them.
BINDING_CLAIMS = ("stagewarden.run-id", "stagewarden.worker", "stagewarden.stage")
#: The JWS ``typ`` of a result token.
RESULT_TYP = "ear+jwt"


class Status(enum.StrEnum):
    """EAR trust tiers. The verifier issues results only for affirming or warning appraisals."""

    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"


@dataclasses.dataclass(frozen=True)
class AttestationResult:
    """The appraisal of one piece of evidence, as the verifier signs it.

    Attributes:
        status: the EAR status of the attester.
        checks: each appraisal check, in the order it ran, mapped to ``"pass"`` or to the
            ``ErrorCode`` of a condition that the policy turned into a warning.
        attested_key: the worker's 32-byte Ed25519 receipt public key bound by the evidence.
        nonce: the verifier's nonce, echoed.
        issued_at: when the result was issued (whole seconds, UTC).
        expires_at: after this instant relying parties must not accept the result.
        device_id: the hex device identifier from the evidence.
        hardware_model: the hardware model named by the evidence.
        measurement: the launch measurement (hex) that matched the reference values.
        tcb_status: the TCB level status (``UpToDate``, ``OutOfDate``, ...).
        verifier_id: the key id of the verifier that signed the result.
        run_id: the run the worker was appraised for (None: a result not bound to a run).
        worker: the worker id the result was issued to (None: not bound to a worker).
        stage: the pipeline stage (``"0"``, ``"1"``, ..., ``"standby"``) whose reference values
            the measurement was appraised against (None: appraised against every stage's).
    """

    status: Status
    checks: tuple[tuple[str, str], ...]
    attested_key: bytes
    nonce: bytes
    issued_at: dt.datetime
    expires_at: dt.datetime
    device_id: str
    hardware_model: str
    measurement: str
    tcb_status: str
    verifier_id: str
    run_id: str | None = None
    worker: str | None = None
    stage: str | None = None

    @property
    def warnings(self) -> tuple[str, ...]:
        """The error codes that the policy accepted as warnings."""
        return tuple(outcome for _, outcome in self.checks if outcome != "pass")

    def claims(self) -> dict[str, Any]:
        """The JSON claims set of this result (the token payload)."""
        claims: dict[str, Any] = {
            "eat_profile": EAR_PROFILE,
            "iat": int(self.issued_at.timestamp()),
            "exp": int(self.expires_at.timestamp()),
            "eat_nonce": self.nonce.hex(),
            "ear.verifier-id": {
                "developer": "stagewarden",
                "build": "simulated-tee-verifier",
                "key-id": self.verifier_id,
            },
            "ear.status": str(self.status),
            "stagewarden.simulated": True,
            "stagewarden.attested-key": self.attested_key.hex(),
            "stagewarden.device-id": self.device_id,
            "stagewarden.hardware-model": self.hardware_model,
            "stagewarden.measurement": self.measurement,
            "stagewarden.tcb-status": self.tcb_status,
            "stagewarden.checks": [[name, outcome] for name, outcome in self.checks],
        }
        for claim, value in zip(BINDING_CLAIMS, (self.run_id, self.worker, self.stage), strict=True):
            if value is not None:
                claims[claim] = value
        return claims

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> AttestationResult:
        """Build a result from a claims set, checking every claim's presence and type."""
        bad = ErrorCode.RESULT_MALFORMED
        expected = {
            "eat_profile",
            "iat",
            "exp",
            "eat_nonce",
            "ear.verifier-id",
            "ear.status",
            "stagewarden.simulated",
            "stagewarden.attested-key",
            "stagewarden.device-id",
            "stagewarden.hardware-model",
            "stagewarden.measurement",
            "stagewarden.tcb-status",
            "stagewarden.checks",
        }
        if set(claims) - set(BINDING_CLAIMS) != expected:
            missing, extra = sorted(expected - set(claims)), sorted(set(claims) - expected - set(BINDING_CLAIMS))
            raise FormatError(
                bad, f"attestation result claims differ from the profile (missing {missing}, unexpected {extra})"
            )
        if claims["eat_profile"] != EAR_PROFILE:
            raise FormatError(bad, f"attestation result profile {claims['eat_profile']!r} is not {EAR_PROFILE!r}")
        if claims["stagewarden.simulated"] is not True:
            raise FormatError(bad, "attestation result must say it comes from the simulated TEE")
        for name in ("iat", "exp"):
            if type(claims[name]) is not int or not 0 <= claims[name] < _YEAR_10000:
                raise FormatError(
                    bad, f"attestation result claim {name} must be an integer number of seconds since 1970"
                )
        strings = (
            "eat_nonce",
            "ear.status",
            "stagewarden.attested-key",
            "stagewarden.device-id",
            "stagewarden.hardware-model",
            "stagewarden.measurement",
            "stagewarden.tcb-status",
        )
        for name in BINDING_CLAIMS:
            if name in claims and (not isinstance(claims[name], str) or not 1 <= len(claims[name]) <= 128):
                raise FormatError(bad, f"attestation result claim {name} must be a string of 1 to 128 characters")
        for name in strings:
            if not isinstance(claims[name], str):
                raise FormatError(bad, f"attestation result claim {name} must be a string")
        verifier = claims["ear.verifier-id"]
        if (
            not isinstance(verifier, dict)
            or set(verifier) != {"developer", "build", "key-id"}
            or not all(isinstance(v, str) for v in verifier.values())
        ):
            raise FormatError(
                bad, "attestation result claim ear.verifier-id must hold developer, build and key-id strings"
            )
        try:
            status = Status(claims["ear.status"])
        except ValueError:
            raise FormatError(bad, f"attestation result status {claims['ear.status']!r} is not an EAR status") from None
        key = _hex(claims["stagewarden.attested-key"], "stagewarden.attested-key", 32)
        nonce = _hex(claims["eat_nonce"], "eat_nonce", None)
        checks = claims["stagewarden.checks"]
        if not isinstance(checks, list) or not all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in checks
        ):
            raise FormatError(
                bad, "attestation result claim stagewarden.checks must be a list of [check, outcome] pairs"
            )
        if claims["exp"] <= claims["iat"]:
            raise FormatError(bad, "attestation result expires before it is issued")
        return cls(
            status=status,
            checks=tuple((c[0], c[1]) for c in checks),
            attested_key=key,
            nonce=nonce,
            issued_at=dt.datetime.fromtimestamp(claims["iat"], dt.UTC),
            expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
            device_id=claims["stagewarden.device-id"],
            hardware_model=claims["stagewarden.hardware-model"],
            measurement=claims["stagewarden.measurement"],
            tcb_status=claims["stagewarden.tcb-status"],
            verifier_id=verifier["key-id"],
            run_id=claims.get("stagewarden.run-id"),
            worker=claims.get("stagewarden.worker"),
            stage=claims.get("stagewarden.stage"),
        )

    def valid_at(self, instant: dt.datetime) -> bool:
        """Whether ``instant`` lies in ``[issued_at, expires_at)``."""
        return self.issued_at <= instant < self.expires_at


_YEAR_10000 = 253_402_300_800


def _hex(text: str, name: str, size: int | None) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise FormatError(ErrorCode.RESULT_MALFORMED, f"attestation result claim {name} is not hex") from None
    if raw.hex() != text or (size is not None and len(raw) != size) or not raw:
        want = f"{size} bytes of" if size else "non-empty"
        raise FormatError(ErrorCode.RESULT_MALFORMED, f"attestation result claim {name} must be {want} lowercase hex")
    return raw


def sign_result(result: AttestationResult, verifier_key: SigningKey) -> bytes:
    """Sign ``result`` with the verifier's key; return the compact token."""
    return sign_token(result.claims(), verifier_key, RESULT_TYP)


def parse_result_unverified(token: bytes) -> AttestationResult:
    """Parse a result token without checking its signature (for display only, never for trust)."""
    from .token import peek_token

    _, payload, _, _ = peek_token(token, RESULT_TYP, ErrorCode.RESULT_MALFORMED, "attestation result")
    return AttestationResult.from_claims(payload)


def verify_result(
    token: bytes,
    verifier_key: VerifyKey,
    clock: Clock,
    *,
    expected_key: bytes | None = None,
    expected_nonce: bytes | None = None,
    at: dt.datetime | None = None,
) -> AttestationResult:
    """Appraise a result token as a relying party does; raise
    :class:`~stagewarden.attest.errors.AttestError` when it must not be trusted.

    Args:
        token: the compact token.
        verifier_key: the pinned public key of the verifier.
        clock: the relying party's clock (used when ``at`` is not given).
        expected_key: when given, the receipt key the result must attest.
        expected_nonce: when given, the nonce the result must echo.
        at: the instant at which the result must be valid (for audits of past use); defaults to now.
    """
    payload = open_token(
        token,
        verifier_key,
        RESULT_TYP,
        malformed=ErrorCode.RESULT_MALFORMED,
        bad_signature=ErrorCode.RESULT_SIGNATURE,
        what="attestation result",
    )
    result = AttestationResult.from_claims(payload)
    check_result_use(result, at if at is not None else clock.now(), expected_key, expected_nonce)
    return result


class UsableResult(Protocol):
    """What a relying party checks of any attestation result before it trusts it."""

    @property
    def status(self) -> Status: ...
    @property
    def issued_at(self) -> dt.datetime: ...
    @property
    def expires_at(self) -> dt.datetime: ...
    @property
    def nonce(self) -> bytes | None: ...
    @property
    def attested_key(self) -> bytes | None: ...


def check_result_use(
    result: UsableResult, instant: dt.datetime, expected_key: bytes | None, expected_nonce: bytes | None
) -> None:
    """Raise AttestError unless ``result`` is valid at ``instant``, affirming or warning, and (when
    given) echoes ``expected_nonce`` and attests ``expected_key``."""
    if instant < result.issued_at:
        raise AttestError(
            ErrorCode.RESULT_NOT_YET_VALID,
            f"attestation result is valid from {result.issued_at.isoformat()}, it is {instant.isoformat()}",
        )
    if instant >= result.expires_at:
        raise AttestError(
            ErrorCode.RESULT_EXPIRED,
            f"attestation result expired at {result.expires_at.isoformat()}, it is {instant.isoformat()}",
        )
    if result.status not in (Status.AFFIRMING, Status.WARNING):
        raise AttestError(ErrorCode.RESULT_STATUS, f"attestation result status is {result.status}")
    if expected_nonce is not None and result.nonce != expected_nonce:
        raise AttestError(ErrorCode.RESULT_NONCE, "attestation result does not echo the expected nonce")
    if expected_key is not None and result.attested_key != expected_key:
        attested = result.attested_key.hex()[:16] + "..." if result.attested_key is not None else "no key"
        wanted = expected_key.hex()[:16]
        raise AttestError(ErrorCode.RESULT_KEY_MISMATCH, f"attestation result attests {attested}, not {wanted}...")
