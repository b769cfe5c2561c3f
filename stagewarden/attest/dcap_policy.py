"""Appraisal policy for DCAP quotes, and the appraisal of a verified quote under it.

A policy file is a small JSON (``.json``) or YAML (``.yaml``/``.yml``) mapping::

    version: 1                                # required
    allow_status: [UpToDate]                  # TCB statuses accepted (default: UpToDate only)
    tee: [tdx, sgx]                           # TEE types accepted (default: both)
    reference_values:                         # accepted measurements, by stage (default: none)
      "0":
        - {mrtd: <96 hex>, rtmr0: <96 hex>, rtmr1: <96 hex>, rtmr2: <96 hex>, rtmr3: <96 hex>}
      "1":
        - {mrenclave: <64 hex>, mrsigner: <64 hex>}
    result_lifetime_seconds: 3600             # how long an attestation result is valid
    nonce_lifetime_seconds: 300               # how long an issued nonce may be answered

A reference set matches when every measurement it names equals the quote's; a TDX set must name
``mrtd`` and an SGX set ``mrenclave`` or ``mrsigner``. ``Revoked`` can never be allowed. Unknown
keys are rejected.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
from pathlib import Path
from typing import Any

from .dcap import Collateral, QuoteReport, Tee, VerifiedQuote, dcap_report_data, parse_quote, verify_quote
from .errors import AttestError, ErrorCode, FormatError
from .policy import _bounded, load_policy_mapping

#: TCB statuses a policy may allow (Intel's names; ``Revoked`` is never allowed).
KNOWN_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "TDRelaunchAdvised",
        "TDRelaunchAdvisedConfigurationNeeded",
    }
)
#: Measurement names a TDX reference set may name, and their size in bytes.
TDX_MEASUREMENTS = {
    name: 48
    for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam", "mrconfigid", "mrowner", "mrownerconfig")
}
#: Measurement names an SGX reference set may name, and their size in bytes.
SGX_MEASUREMENTS = {"mrenclave": 32, "mrsigner": 32}
MAX_POLICY_BYTES = 256 * 1024
_KEYS = {"version", "allow_status", "tee", "reference_values", "result_lifetime_seconds", "nonce_lifetime_seconds"}
_BAD = ErrorCode.POLICY_MALFORMED


@dataclasses.dataclass(frozen=True)
class ReferenceSet:
    """One accepted combination of measurements (hex by name) for a TEE type."""

    tee: Tee
    measurements: tuple[tuple[str, str], ...]

    def matches(self, report: QuoteReport) -> bool:
        """Whether every measurement named here equals the report's."""
        if report.tee != self.tee:
            return False
        return all(hmac.compare_digest(report.measurements.get(name, ""), value) for name, value in self.measurements)


@dataclasses.dataclass(frozen=True)
class DcapPolicy:
    """How DCAP quotes are appraised once ``dcap-qvl`` has verified them.

    Attributes:
        allow_status: the TCB statuses accepted.
        tees: the TEE types accepted.
        reference_values: accepted reference sets by stage name (empty: measurements are not appraised).
        result_lifetime_seconds: lifetime of the attestation results issued on this policy.
        nonce_lifetime_seconds: how long a nonce issued by the verifier may be answered.
    """

    allow_status: frozenset[str] = frozenset({"UpToDate"})
    tees: frozenset[str] = frozenset({"tdx", "sgx"})
    reference_values: tuple[tuple[str, tuple[ReferenceSet, ...]], ...] = ()
    result_lifetime_seconds: int = 3600
    nonce_lifetime_seconds: int = 300

    def __post_init__(self) -> None:
        unknown = sorted(set(self.allow_status) - KNOWN_STATUSES)
        if unknown:
            raise FormatError(_BAD, f"policy allows unknown TCB statuses {unknown}; known are {sorted(KNOWN_STATUSES)}")
        if not set(self.tees) <= {"tdx", "sgx"} or not self.tees:
            raise FormatError(_BAD, "policy tee must list tdx, sgx or both")
        _bounded(self.result_lifetime_seconds, 1, 7 * 86400, "result_lifetime_seconds")
        _bounded(self.nonce_lifetime_seconds, 1, 86400, "nonce_lifetime_seconds")

    def with_statuses(self, statuses: tuple[str, ...]) -> DcapPolicy:
        """This policy with ``statuses`` also allowed."""
        return dataclasses.replace(self, allow_status=self.allow_status | frozenset(statuses))

    def stages(self) -> tuple[str, ...]:
        """The stage names that have reference values."""
        return tuple(name for name, _ in self.reference_values)

    def to_json(self) -> dict[str, Any]:
        """The policy as a JSON mapping (the file format)."""
        return {
            "version": 1,
            "allow_status": sorted(self.allow_status),
            "tee": sorted(self.tees),
            "reference_values": {stage: [dict(s.measurements) for s in sets] for stage, sets in self.reference_values},
            "result_lifetime_seconds": self.result_lifetime_seconds,
            "nonce_lifetime_seconds": self.nonce_lifetime_seconds,
        }


def _reference_set(raw: Any, where: str) -> ReferenceSet:
    if (
        not isinstance(raw, dict)
        or not raw
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items())
    ):
        raise FormatError(_BAD, f"policy {where} must be a mapping of measurement names to hex strings")
    names = set(raw)
    if names <= set(TDX_MEASUREMENTS):
        tee: Tee = "tdx"
        sizes = TDX_MEASUREMENTS
        if "mrtd" not in names:
            raise FormatError(_BAD, f"policy {where} is a TDX reference set without mrtd")
    elif names <= set(SGX_MEASUREMENTS):
        tee, sizes = "sgx", SGX_MEASUREMENTS
    else:
        raise FormatError(
            _BAD,
            f"policy {where} names {sorted(map(str, names))}: a set names TDX measurements {sorted(TDX_MEASUREMENTS)} "
            f"or SGX ones {sorted(SGX_MEASUREMENTS)}, not both or others",
        )
    pairs = []
    for name in sorted(names):
        value = raw[name].lower()
        try:
            size = len(bytes.fromhex(value))
        except ValueError:
            size = -1
        if size != sizes[name] or len(value) != 2 * sizes[name]:
            raise FormatError(_BAD, f"policy {where}.{name} must be {sizes[name]} bytes of hex")
        pairs.append((name, value))
    return ReferenceSet(tee, tuple(pairs))


def policy_from_mapping(data: Any) -> DcapPolicy:
    """Build a policy from a parsed mapping, strictly; raise FormatError (POLICY_MALFORMED)."""
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise FormatError(_BAD, "policy must be a mapping with string keys")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise FormatError(_BAD, f"policy has unknown keys {unknown}; known keys are {sorted(_KEYS)}")
    if type(data.get("version")) is not int or data["version"] != 1:
        raise FormatError(_BAD, "policy must have version: 1")
    statuses = data.get("allow_status", ["UpToDate"])
    tees = data.get("tee", ["tdx", "sgx"])
    for what, value in (("allow_status", statuses), ("tee", tees)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise FormatError(_BAD, f"policy {what} must be a list of strings")
    raw_references = data.get("reference_values", {})
    if not isinstance(raw_references, dict):
        raise FormatError(_BAD, "policy reference_values must map stage names to lists of reference sets")
    references = []
    for stage, sets in raw_references.items():
        if not isinstance(sets, list) or not sets:
            raise FormatError(_BAD, f"policy reference_values.{stage} must be a non-empty list of reference sets")
        references.append(
            (stage, tuple(_reference_set(s, f"reference_values.{stage}[{i}]") for i, s in enumerate(sets)))
        )
    return DcapPolicy(
        allow_status=frozenset(statuses),
        tees=frozenset(tees),
        reference_values=tuple(references),
        result_lifetime_seconds=data.get("result_lifetime_seconds", 3600),
        nonce_lifetime_seconds=data.get("nonce_lifetime_seconds", 300),
    )


def parse_dcap_policy(data: bytes, yaml: bool = False) -> DcapPolicy:
    """Parse policy bytes (JSON, or YAML when ``yaml``); raise FormatError (POLICY_MALFORMED)."""
    return policy_from_mapping(load_policy_mapping(data, yaml, MAX_POLICY_BYTES))


def load_dcap_policy(path: str | Path) -> DcapPolicy:
    """Read a policy file (YAML when it ends in .yaml or .yml, JSON otherwise). OSError propagates."""
    target = Path(path)
    return parse_dcap_policy(target.read_bytes(), yaml=target.suffix.lower() in (".yaml", ".yml"))


@dataclasses.dataclass(frozen=True)
class Binding:
    """The nonce and receipt key a quote's REPORTDATA must bind."""

    nonce: bytes
    receipt_key: bytes


@dataclasses.dataclass(frozen=True)
class QuoteAppraisal:
    """The outcome of appraising one quote.

    Attributes:
        report: what the quote claims (None when it does not even parse).
        verified: the verification by ``dcap-qvl`` (None when it failed).
        accepted: whether every check passed.
        failures: each failed check as ``(code, message)``, the deciding one first.
        stage: the stage whose reference values matched (None when not appraised or none matched).
        key_bound: whether REPORTDATA was checked against a nonce and receipt key and matched.
        measurements_appraised: whether reference values were checked.
    """

    report: QuoteReport | None
    verified: VerifiedQuote | None
    accepted: bool
    failures: tuple[tuple[ErrorCode, str], ...]
    stage: str | None
    key_bound: bool
    measurements_appraised: bool

    @property
    def code(self) -> ErrorCode | None:
        """The code of the deciding failure (None when accepted)."""
        return self.failures[0][0] if self.failures else None

    def reasons(self) -> list[str]:
        """Each failure as ``CODE: message``."""
        return [f"{code}: {message}" for code, message in self.failures]

    def to_json(self) -> dict[str, Any]:
        """The appraisal as the JSON that ``stagewarden attest verify-quote`` prints."""
        report = self.report
        return {
            "tee": report.tee if report else None,
            "status": self.verified.status if self.verified else None,
            "advisories": list(self.verified.advisories) if self.verified else [],
            "measurements": dict(report.measurements) if report else {},
            "report_data": report.report_data.hex() if report else None,
            "debug": report.debug if report else None,
            "accepted": self.accepted,
            "code": str(self.code) if self.code else None,
            "reasons": self.reasons(),
            "stage": self.stage,
            "key_bound": self.key_bound,
            "measurements_appraised": self.measurements_appraised,
        }


def appraise_verified(
    verified: VerifiedQuote, policy: DcapPolicy, binding: Binding | None = None, stage: str | None = None
) -> QuoteAppraisal:
    """Appraise a quote that ``dcap-qvl`` verified: TEE type, TCB status, debug, key binding, reference values.

    Every check runs, so that all reasons are reported; the first failure decides the code.
    ``stage`` restricts the reference values to one stage's; without it any stage's set may match.
    """
    report = verified.report
    failures: list[tuple[ErrorCode, str]] = []
    if report.tee not in policy.tees:
        failures.append(
            (ErrorCode.DCAP_TEE_TYPE, f"the quote is {report.tee}; the policy accepts {sorted(policy.tees)}")
        )
    key_bound = False
    if binding is not None:
        expected = dcap_report_data(binding.nonce, binding.receipt_key)
        key_bound = hmac.compare_digest(expected, report.report_data)
        if not key_bound:
            failures.append(
                (
                    ErrorCode.KEY_BINDING,
                    "REPORTDATA does not bind this nonce and receipt key (the quote answers another nonce "
                    "or was made for another key)",
                )
            )
    if verified.status not in policy.allow_status:
        advisories = ", ".join(verified.advisories) or "none"
        failures.append(
            (
                ErrorCode.DCAP_TCB_STATUS,
                f"TCB status {verified.status} is not allowed (allowed: {', '.join(sorted(policy.allow_status))}; "
                f"advisories: {advisories})",
            )
        )
    if report.debug:
        failures.append(
            (ErrorCode.DCAP_DEBUG, f"the {report.tee} debug attribute is set, so its memory is open to the host")
        )
    matched: str | None = None
    appraised = bool(policy.reference_values)
    if appraised:
        candidates = [(name, sets) for name, sets in policy.reference_values if stage is None or name == stage]
        matched = next((name for name, sets in candidates if any(s.matches(report) for s in sets)), None)
        if matched is None:
            where = f"stage {stage}'s reference values" if stage is not None else "any stage's reference values"
            if stage is not None and not candidates:
                where = f"reference values (the policy has none for stage {stage})"
            failures.append((ErrorCode.DCAP_MEASUREMENT_MISMATCH, f"the measurements match none of {where}"))
    return QuoteAppraisal(report, verified, not failures, tuple(failures), matched, key_bound, appraised)


def appraise_quote(
    quote: bytes,
    collateral: Collateral,
    policy: DcapPolicy,
    at: dt.datetime,
    binding: Binding | None = None,
    stage: str | None = None,
) -> QuoteAppraisal:
    """Verify ``quote`` with ``dcap-qvl`` and appraise it under ``policy``; never raises for a rejection."""
    try:
        report: QuoteReport | None = parse_quote(quote)
    except AttestError as exc:
        return QuoteAppraisal(None, None, False, ((exc.code, exc.message),), None, False, False)
    try:
        verified = verify_quote(quote, collateral, at)
    except AttestError as exc:
        return QuoteAppraisal(report, None, False, ((exc.code, exc.message),), None, False, False)
    return appraise_verified(verified, policy, binding, stage)
