"""Attestation results for DCAP quotes as EAR: the IETF RATS EAT Attestation Result, a signed JWT.

An EAR carries the EAR profile (``eat_profile``), issue and expiry times, the verifier's identity,
the nonce (``eat_nonce``, base64url) and one submodule per attester with its ``ear.status``, its
AR4SI trustworthiness vector and the policy it was appraised under; ``stagewarden.*`` extension
claims in the submodule name the TEE, the TCB status and advisories, the measurements and the
receipt key the quote's REPORTDATA binds. The JWT is signed with the verifier's Ed25519 key
(``alg`` EdDSA) through ``jwcrypto``.

Trustworthiness claims (AR4SI values) set by :func:`trust_vector`:

* ``instance-identity`` 2: the quote chains to Intel's root CA through a valid PCK certificate.
* ``hardware`` 2 when the TCB is UpToDate, 32 (known vulnerabilities) for any other status the policy allowed.
* ``configuration`` 2, or 32 when the TCB status asks for a configuration change.
* ``executables`` 2 when the measurements matched the policy's reference values; absent when none were appraised.
* ``runtime-opaque`` 2: the TD or enclave is not in debug mode, so its memory is encrypted and opaque to the host.

``file-system``, ``storage-opaque`` and ``sourced-data`` do not apply to a quote and are left out.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from .clock import Clock
from .dcap_policy import DcapPolicy, QuoteAppraisal
from .errors import AttestError, ErrorCode, FormatError
from .result import Status, check_result_use
from .token import MAX_TOKEN_BYTES, canonical_json, key_id

#: The EAR profile (draft-ietf-rats-ear) named by every result this module issues.
EAR_PROFILE = "tag:github.com,2023:veraison/ear"
#: The JWS ``typ`` of an EAR token.
EAR_TYP = "JWT"
#: AR4SI trustworthiness claim names, in the EAR order.
TRUST_CLAIMS = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)
_BUILD = "stagewarden dcap verifier (dcap-qvl)"
_BAD = ErrorCode.RESULT_MALFORMED
_EXTENSIONS = {
    "stagewarden.tee",
    "stagewarden.tcb-status",
    "stagewarden.advisories",
    "stagewarden.measurements",
    "stagewarden.fmspc",
    "stagewarden.attested-key",
    "stagewarden.stage",
}


def _tier(value: int) -> Status:
    if value >= 96:
        return Status.CONTRAINDICATED
    if value >= 32:
        return Status.WARNING
    return Status.AFFIRMING


def trust_vector(appraisal: QuoteAppraisal) -> dict[str, int]:
    """The AR4SI trustworthiness vector of an accepted appraisal (see the module docstring)."""
    verified = appraisal.verified
    if verified is None or not appraisal.accepted:
        raise ValueError("only an accepted appraisal has a trustworthiness vector")
    status = verified.status
    vector = {
        "instance-identity": 2,
        "configuration": 32 if "Configuration" in status else 2,
        "hardware": 2 if status == "UpToDate" else 32,
        "runtime-opaque": 2,
    }
    if appraisal.measurements_appraised:
        vector["executables"] = 2
    return {name: vector[name] for name in TRUST_CLAIMS if name in vector}


def policy_id(policy: DcapPolicy) -> str:
    """A stable identifier of a policy: the SHA-256 of its canonical JSON."""
    return "policy:sha256:" + hashlib.sha256(canonical_json(policy.to_json())).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise FormatError(_BAD, f"EAR {what} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise FormatError(_BAD, f"EAR {what} is not unpadded base64url") from None


@dataclasses.dataclass(frozen=True)
class EarResult:
    """The appraisal of one DCAP quote, as the verifier signs it in an EAR.

    Attributes:
        submod: the name of the attester's submodule (the stage, or the TEE type).
        status: the EAR status (the worst tier of the trustworthiness vector).
        trust_vector: AR4SI claim name to value.
        issued_at: when the result was issued (whole seconds, UTC).
        expires_at: after this instant relying parties must not accept the result.
        nonce: the verifier's nonce, echoed (None when the quote was appraised without one).
        attested_key: the receipt key REPORTDATA binds (None when no binding was checked).
        tee: ``tdx`` or ``sgx``.
        tcb_status: the TCB status of the platform.
        advisories: the Intel security advisory ids of that TCB level.
        measurements: the quote's measurements (hex by name).
        fmspc: the platform family.
        stage: the stage whose reference values matched (None when not appraised).
        appraisal_policy_id: the identifier of the policy applied.
        verifier_id: the key id of the verifier that signed the result.
    """

    submod: str
    status: Status
    trust_vector: dict[str, int]
    issued_at: dt.datetime
    expires_at: dt.datetime
    nonce: bytes | None
    attested_key: bytes | None
    tee: str
    tcb_status: str
    advisories: tuple[str, ...]
    measurements: dict[str, str]
    fmspc: str
    stage: str | None
    appraisal_policy_id: str
    verifier_id: str

    @property
    def warnings(self) -> tuple[str, ...]:
        """The trustworthiness claims in the warning tier."""
        return tuple(name for name, value in self.trust_vector.items() if _tier(value) is Status.WARNING)

    @property
    def measurement(self) -> str:
        """The launch measurement (MRTD for TDX, MRENCLAVE for SGX)."""
        return self.measurements.get("mrtd") or self.measurements.get("mrenclave", "")

    @property
    def device_id(self) -> str:
        """The platform as far as a quote names it (its TEE type and FMSPC)."""
        return f"{self.tee}:{self.fmspc}"

    def valid_at(self, instant: dt.datetime) -> bool:
        """Whether ``instant`` lies in ``[issued_at, expires_at)``."""
        return self.issued_at <= instant < self.expires_at

    def claims(self) -> dict[str, Any]:
        """The JWT claims set of this result."""
        submod: dict[str, Any] = {
            "ear.status": str(self.status),
            "ear.trustworthiness-vector": dict(self.trust_vector),
            "ear.appraisal-policy-id": self.appraisal_policy_id,
            "stagewarden.tee": self.tee,
            "stagewarden.tcb-status": self.tcb_status,
            "stagewarden.advisories": list(self.advisories),
            "stagewarden.measurements": dict(self.measurements),
            "stagewarden.fmspc": self.fmspc,
        }
        if self.attested_key is not None:
            submod["stagewarden.attested-key"] = self.attested_key.hex()
        if self.stage is not None:
            submod["stagewarden.stage"] = self.stage
        claims: dict[str, Any] = {
            "eat_profile": EAR_PROFILE,
            "iat": int(self.issued_at.timestamp()),
            "exp": int(self.expires_at.timestamp()),
            "ear.verifier-id": {"developer": "stagewarden", "build": _BUILD},
            "submods": {self.submod: submod},
        }
        if self.nonce is not None:
            claims["eat_nonce"] = _b64(self.nonce)
        return claims

    @classmethod
    def from_claims(cls, claims: Any, verifier_id: str) -> EarResult:
        """Build a result from a claims set, checking every claim's presence and type."""
        if not isinstance(claims, dict):
            raise FormatError(_BAD, "EAR claims must be a JSON object")
        required = {"eat_profile", "iat", "exp", "ear.verifier-id", "submods"}
        extra = sorted(set(claims) - required - {"eat_nonce"})
        if not required <= set(claims) or extra:
            raise FormatError(
                _BAD,
                f"EAR claims differ from the profile (missing {sorted(required - set(claims))}, unexpected {extra})",
            )
        if claims["eat_profile"] != EAR_PROFILE:
            raise FormatError(_BAD, f"EAR profile {claims['eat_profile']!r} is not {EAR_PROFILE!r}")
        for name in ("iat", "exp"):
            if type(claims[name]) is not int or not 0 <= claims[name] < 253_402_300_800:
                raise FormatError(_BAD, f"EAR claim {name} must be an integer number of seconds since 1970")
        if claims["exp"] <= claims["iat"]:
            raise FormatError(_BAD, "EAR expires before it is issued")
        submods = claims["submods"]
        if not isinstance(submods, dict) or len(submods) != 1:
            raise FormatError(_BAD, "EAR must carry exactly one submodule")
        ((name, body),) = submods.items()
        if not isinstance(body, dict):
            raise FormatError(_BAD, "EAR submodule must be a JSON object")
        base = {"ear.status", "ear.trustworthiness-vector", "ear.appraisal-policy-id"}
        known = base | _EXTENSIONS
        if not base <= set(body) or set(body) - known:
            raise FormatError(
                _BAD,
                f"EAR submodule claims differ from the profile (missing {sorted(base - set(body))}, "
                f"unexpected {sorted(set(body) - known)})",
            )
        try:
            status = Status(body["ear.status"])
        except ValueError:
            raise FormatError(_BAD, f"EAR status {body['ear.status']!r} is not an EAR status") from None
        vector = body["ear.trustworthiness-vector"]
        if (
            not isinstance(vector, dict)
            or not set(vector) <= set(TRUST_CLAIMS)
            or not all(type(v) is int and -128 <= v <= 127 for v in vector.values())
        ):
            raise FormatError(_BAD, "EAR trustworthiness vector must map AR4SI claims to integers -128..127")
        worst = max((_tier(v) for v in vector.values()), key=list(Status).index, default=Status.AFFIRMING)
        if worst is not status:
            raise FormatError(_BAD, f"EAR status {status} contradicts its trustworthiness vector ({worst})")
        strings = ("ear.appraisal-policy-id", "stagewarden.tee", "stagewarden.tcb-status", "stagewarden.fmspc")
        if not all(isinstance(body.get(s), str) for s in strings):
            raise FormatError(_BAD, f"EAR submodule claims {list(strings)} must be strings")
        advisories = body.get("stagewarden.advisories")
        measurements = body.get("stagewarden.measurements")
        if not isinstance(advisories, list) or not all(isinstance(a, str) for a in advisories):
            raise FormatError(_BAD, "EAR claim stagewarden.advisories must be a list of strings")
        if not isinstance(measurements, dict) or not all(isinstance(v, str) for v in measurements.values()):
            raise FormatError(_BAD, "EAR claim stagewarden.measurements must map names to hex strings")
        key = body.get("stagewarden.attested-key")
        attested = None
        if key is not None:
            try:
                attested = bytes.fromhex(key) if isinstance(key, str) else None
            except ValueError:
                attested = None
            if attested is None or len(attested) != 32 or attested.hex() != key:
                raise FormatError(_BAD, "EAR claim stagewarden.attested-key must be 32 bytes of lowercase hex")
        stage = body.get("stagewarden.stage")
        if stage is not None and not isinstance(stage, str):
            raise FormatError(_BAD, "EAR claim stagewarden.stage must be a string")
        nonce = _unb64(claims["eat_nonce"], "eat_nonce") if "eat_nonce" in claims else None
        return cls(
            submod=name,
            status=status,
            trust_vector=dict(vector),
            issued_at=dt.datetime.fromtimestamp(claims["iat"], dt.UTC),
            expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
            nonce=nonce,
            attested_key=attested,
            tee=body["stagewarden.tee"],
            tcb_status=body["stagewarden.tcb-status"],
            advisories=tuple(advisories),
            measurements=dict(measurements),
            fmspc=body["stagewarden.fmspc"],
            stage=stage,
            appraisal_policy_id=body["ear.appraisal-policy-id"],
            verifier_id=verifier_id,
        )


def ear_from_appraisal(
    appraisal: QuoteAppraisal,
    policy: DcapPolicy,
    verifier_key: VerifyKey,
    issued_at: dt.datetime,
    nonce: bytes | None = None,
    receipt_key: bytes | None = None,
) -> EarResult:
    """The result of an accepted appraisal, ready to be signed."""
    verified = appraisal.verified
    if verified is None or not appraisal.accepted:
        raise ValueError("an EAR is issued only for an accepted appraisal")
    vector = trust_vector(appraisal)
    issued = issued_at.replace(microsecond=0)
    status = max((_tier(v) for v in vector.values()), key=list(Status).index, default=Status.AFFIRMING)
    report = verified.report
    return EarResult(
        submod=appraisal.stage if appraisal.stage is not None else report.tee,
        status=status,
        trust_vector=vector,
        issued_at=issued,
        expires_at=issued + dt.timedelta(seconds=policy.result_lifetime_seconds),
        nonce=nonce,
        attested_key=receipt_key if appraisal.key_bound else None,
        tee=report.tee,
        tcb_status=verified.status,
        advisories=verified.advisories,
        measurements=dict(report.measurements),
        fmspc=verified.fmspc,
        stage=appraisal.stage,
        appraisal_policy_id=policy_id(policy),
        verifier_id=key_id(verifier_key),
    )


def _jwk_private(signing_key: SigningKey) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from jwcrypto import jwk

    return jwk.JWK.from_pyca(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(signing_key)))


def _jwk_public(verify_key: VerifyKey) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from jwcrypto import jwk

    return jwk.JWK.from_pyca(ed25519.Ed25519PublicKey.from_public_bytes(bytes(verify_key)))


def sign_ear(result: EarResult, signing_key: SigningKey) -> bytes:
    """Sign ``result`` as a compact JWT (EdDSA) with the verifier's key."""
    from jwcrypto import jwt

    header = {"alg": "EdDSA", "typ": EAR_TYP, "kid": key_id(signing_key.verify_key)}
    token = jwt.JWT(header=header, claims=result.claims())
    token.make_signed_token(_jwk_private(signing_key))
    return str(token.serialize()).encode("ascii")


def _peek_header(token: bytes) -> dict[str, Any]:
    if len(token) > MAX_TOKEN_BYTES:
        raise FormatError(_BAD, f"EAR is larger than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(b".")
    if len(parts) != 3:
        raise FormatError(_BAD, f"EAR must be a compact JWS with three parts, found {len(parts)}")
    try:
        header = json.loads(_unb64(parts[0].decode("ascii"), "header"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError(_BAD, "EAR header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise FormatError(_BAD, "EAR header must be a JSON object")
    return header


def is_ear_token(token: bytes) -> bool:
    """Whether ``token`` claims to be an EAR JWT (its header's ``typ``); says nothing of its validity."""
    try:
        return _peek_header(token).get("typ") == EAR_TYP
    except FormatError:
        return False


def parse_ear_unverified(token: bytes) -> EarResult:
    """Parse an EAR token without checking its signature (for display only, never for trust)."""
    header = _peek_header(token)
    claims = _unb64(token.split(b".")[1].decode("ascii", "replace"), "payload")
    try:
        payload = json.loads(claims)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError(_BAD, "EAR payload is not JSON") from None
    kid = header.get("kid")
    return EarResult.from_claims(payload, kid if isinstance(kid, str) else "")


def open_ear(token: bytes, verifier_key: VerifyKey) -> EarResult:
    """Check the signature and the shape of an EAR token; return its result (times are not checked)."""
    from jwcrypto import jwt

    header = _peek_header(token)
    if header.get("alg") != "EdDSA" or header.get("typ") != EAR_TYP or set(header) != {"alg", "typ", "kid"}:
        raise FormatError(_BAD, f"EAR header must be exactly alg EdDSA, typ {EAR_TYP} and kid")
    if header["kid"] != key_id(verifier_key):
        raise AttestError(
            ErrorCode.RESULT_SIGNATURE,
            f"EAR was signed by key {header['kid']}, not by the pinned key {key_id(verifier_key)}",
        )
    try:
        checked = jwt.JWT(
            jwt=token.decode("ascii"),
            key=_jwk_public(verifier_key),
            algs=["EdDSA"],
            check_claims=False,
            expected_type="JWS",
            strict_serialization=True,
        )
    except Exception:  # jwcrypto raises many types for a bad signature or encoding
        raise AttestError(
            ErrorCode.RESULT_SIGNATURE, f"EAR signature does not verify under key {key_id(verifier_key)}"
        ) from None
    try:
        claims = json.loads(checked.claims)
    except (ValueError, RecursionError):
        raise FormatError(_BAD, "EAR payload is not JSON") from None
    return EarResult.from_claims(claims, header["kid"])


def verify_ear(
    token: bytes,
    verifier_key: VerifyKey,
    clock: Clock,
    *,
    expected_key: bytes | None = None,
    expected_nonce: bytes | None = None,
    at: dt.datetime | None = None,
) -> EarResult:
    """Appraise an EAR token as a relying party does; raise AttestError when it must not be trusted.

    The checks and codes are those of :func:`~stagewarden.attest.result.verify_result`.
    """
    result = open_ear(token, verifier_key)
    check_result_use(result, at if at is not None else clock.now(), expected_key, expected_nonce)
    return result
