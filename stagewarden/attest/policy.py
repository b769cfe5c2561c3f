"""Appraisal policy: which non-terminal conditions are warnings rather than rejections, and lifetimes.

A policy file is a small JSON (``.json``) or YAML (``.yaml``/``.yml``) mapping::

    version: 1                          # required
    warn: [TCB_OUT_OF_DATE]             # conditions accepted with status "warning" (default: none)
    crl_near_next_update_seconds: 3600  # a CRL this close to nextUpdate raises CRL_NEAR_NEXT_UPDATE (0: off)
    result_lifetime_seconds: 3600       # how long an attestation result is valid
    nonce_lifetime_seconds: 300         # how long an issued nonce may be answered

Only ``TCB_OUT_OF_DATE`` and ``CRL_NEAR_NEXT_UPDATE`` may be warnings; a revoked TCB, a revoked
certificate, a stale CRL or anything else can never be. Unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

from .errors import ErrorCode, FormatError

#: The conditions a policy may turn into warnings. Everything else always rejects.
WARNABLE = frozenset({ErrorCode.TCB_OUT_OF_DATE, ErrorCode.CRL_NEAR_NEXT_UPDATE})
MAX_POLICY_BYTES = 64 * 1024
_KEYS = {"version", "warn", "crl_near_next_update_seconds", "result_lifetime_seconds", "nonce_lifetime_seconds"}
_BAD = ErrorCode.POLICY_MALFORMED


@dataclasses.dataclass(frozen=True)
class Policy:
    """The verifier's appraisal policy.

    Attributes:
        warn: conditions (from :data:`WARNABLE`) accepted with status ``warning``.
        crl_near_next_update_seconds: raise ``CRL_NEAR_NEXT_UPDATE`` for a CRL whose nextUpdate is
            at most this far away (0 disables the condition).
        result_lifetime_seconds: lifetime of the attestation results the verifier signs.
        nonce_lifetime_seconds: how long a nonce issued by the verifier may be answered.
    """

    warn: frozenset[ErrorCode] = frozenset()
    crl_near_next_update_seconds: int = 0
    result_lifetime_seconds: int = 3600
    nonce_lifetime_seconds: int = 300

    def __post_init__(self) -> None:
        illegal = set(self.warn) - WARNABLE
        if illegal:
            raise FormatError(
                _BAD, f"policy cannot accept {sorted(illegal)} as a warning; only {sorted(WARNABLE)} can be"
            )
        _bounded(self.crl_near_next_update_seconds, 0, 365 * 86400, "crl_near_next_update_seconds")
        _bounded(self.result_lifetime_seconds, 1, 7 * 86400, "result_lifetime_seconds")
        _bounded(self.nonce_lifetime_seconds, 1, 86400, "nonce_lifetime_seconds")

    def is_warning(self, code: ErrorCode) -> bool:
        """Whether ``code`` is accepted as a warning."""
        return code in self.warn

    def to_json(self) -> dict[str, Any]:
        """The policy as a JSON mapping (the file format)."""
        return {
            "version": 1,
            "warn": sorted(str(c) for c in self.warn),
            "crl_near_next_update_seconds": self.crl_near_next_update_seconds,
            "result_lifetime_seconds": self.result_lifetime_seconds,
            "nonce_lifetime_seconds": self.nonce_lifetime_seconds,
        }


def _bounded(value: Any, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise FormatError(_BAD, f"policy {what} must be an integer from {lo} to {hi}, not {value!r}")
    return value


def policy_from_mapping(data: Any) -> Policy:
    """Build a policy from a parsed mapping, strictly; raise
    :class:`~stagewarden.attest.errors.FormatError` (POLICY_MALFORMED)."""
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise FormatError(_BAD, "policy must be a mapping with string keys")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise FormatError(_BAD, f"policy has unknown keys {unknown}; known keys are {sorted(_KEYS)}")
    if "version" not in data or type(data["version"]) is not int or data["version"] != 1:
        raise FormatError(_BAD, "policy must have version: 1")
    warn_raw = data.get("warn", [])
    if not isinstance(warn_raw, list) or not all(isinstance(w, str) for w in warn_raw):
        raise FormatError(_BAD, "policy warn must be a list of error codes")
    warn = set()
    for item in warn_raw:
        try:
            warn.add(ErrorCode(item))
        except ValueError:
            raise FormatError(_BAD, f"policy warn names {item!r}, which is not an error code") from None
    return Policy(
        warn=frozenset(warn),
        crl_near_next_update_seconds=_bounded(
            data.get("crl_near_next_update_seconds", 0), 0, 365 * 86400, "crl_near_next_update_seconds"
        ),
        result_lifetime_seconds=_bounded(
            data.get("result_lifetime_seconds", 3600), 1, 7 * 86400, "result_lifetime_seconds"
        ),
        nonce_lifetime_seconds=_bounded(data.get("nonce_lifetime_seconds", 300), 1, 86400, "nonce_lifetime_seconds"),
    )


def parse_policy(data: bytes, yaml: bool = False) -> Policy:
    """Parse policy bytes (JSON, or YAML when ``yaml``); raise
    :class:`~stagewarden.attest.errors.FormatError` (POLICY_MALFORMED)."""
    return policy_from_mapping(load_policy_mapping(data, yaml, MAX_POLICY_BYTES))


def load_policy_mapping(data: bytes, yaml: bool, limit: int) -> Any:
    """The JSON (or, when ``yaml``, YAML) value in a policy file of at most ``limit`` bytes; raise
    :class:`~stagewarden.attest.errors.FormatError` (POLICY_MALFORMED) when it does not parse."""
    if len(data) > limit:
        raise FormatError(_BAD, f"policy is larger than {limit} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(_BAD, "policy is not UTF-8 text") from None
    if yaml:
        from ruamel.yaml import YAML

        try:
            return YAML(typ="safe", pure=True).load(io.StringIO(text))
        except Exception as exc:  # ruamel raises many error types for bad YAML
            raise FormatError(_BAD, f"policy is not valid YAML: {type(exc).__name__}") from None

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise FormatError(_BAD, f"policy is not valid JSON: {exc}") from None


def load_policy(path: str | Path) -> Policy:
    """Read a policy file (YAML when it ends in .yaml or .yml, JSON otherwise). OSError propagates."""
    target = Path(path)
    return parse_policy(target.read_bytes(), yaml=target.suffix.lower() in (".yaml", ".yml"))
