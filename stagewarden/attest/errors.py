"""Domain errors of the attestation and receipt layer, each with a stable error code.

Every rejection made by :mod:`stagewarden.attest` raises :class:`~stagewarden.attest.errors.AttestError` (or a subclass)
whose :attr:`~AttestError.code` is one of :class:`ErrorCode`. The codes are part of the public
interface: scripts may match on them, and they never change meaning between releases.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Stable codes for every way a piece of evidence, collateral, result, receipt or log is rejected.

    The appraisal codes are listed in the order in which the verifier runs its checks.
    """

    # 1. strict parse
    EVIDENCE_MALFORMED = "EVIDENCE_MALFORMED"
    EVIDENCE_VERSION = "EVIDENCE_VERSION"
    # 2. chain shape and pinned anchor
    CHAIN_SHAPE = "CHAIN_SHAPE"
    CHAIN_ANCHOR = "CHAIN_ANCHOR"
    # 3. each certificate
    CERT_ISSUER = "CERT_ISSUER"
    CERT_SIGNATURE = "CERT_SIGNATURE"
    CERT_CA_FLAGS = "CERT_CA_FLAGS"
    CERT_KEY_TYPE = "CERT_KEY_TYPE"
    CERT_NOT_YET_VALID = "CERT_NOT_YET_VALID"
    CERT_EXPIRED = "CERT_EXPIRED"
    CERT_CRITICAL_EXTENSION = "CERT_CRITICAL_EXTENSION"
    # 4. revocation
    CRL_INVALID = "CRL_INVALID"
    CRL_NOT_YET_VALID = "CRL_NOT_YET_VALID"
    CRL_STALE = "CRL_STALE"
    CRL_NEAR_NEXT_UPDATE = "CRL_NEAR_NEXT_UPDATE"
    CERT_REVOKED = "CERT_REVOKED"
    # 5. evidence signature
    EVIDENCE_SIGNATURE = "EVIDENCE_SIGNATURE"
    DEVICE_MISMATCH = "DEVICE_MISMATCH"
    # 6. nonce
    NONCE_UNKNOWN = "NONCE_UNKNOWN"
    NONCE_EXPIRED = "NONCE_EXPIRED"
    NONCE_REUSED = "NONCE_REUSED"
    # 7. key binding through report data
    KEY_BINDING = "KEY_BINDING"
    # 8. collateral validity
    TCB_INFO_INVALID = "TCB_INFO_INVALID"
    TCB_INFO_NOT_YET_VALID = "TCB_INFO_NOT_YET_VALID"
    TCB_INFO_EXPIRED = "TCB_INFO_EXPIRED"
    REFERENCE_INVALID = "REFERENCE_INVALID"
    REFERENCE_NOT_YET_VALID = "REFERENCE_NOT_YET_VALID"
    REFERENCE_EXPIRED = "REFERENCE_EXPIRED"
    # 9. TCB level
    TCB_UNKNOWN = "TCB_UNKNOWN"
    TCB_REVOKED = "TCB_REVOKED"
    TCB_OUT_OF_DATE = "TCB_OUT_OF_DATE"
    # 10. debug and reserved attributes
    DEBUG_ENABLED = "DEBUG_ENABLED"
    RESERVED_ATTRIBUTES = "RESERVED_ATTRIBUTES"
    # 11. measurements against reference values
    MEASUREMENT_MISMATCH = "MEASUREMENT_MISMATCH"
    MEASUREMENT_WRONG_STAGE = "MEASUREMENT_WRONG_STAGE"

    # Intel DCAP quotes (TDX and SGX), verified against Intel's PKI (see stagewarden.attest.dcap)
    DCAP_QUOTE_MALFORMED = "DCAP_QUOTE_MALFORMED"
    DCAP_COLLATERAL_NOT_YET_VALID = "DCAP_COLLATERAL_NOT_YET_VALID"
    DCAP_COLLATERAL_EXPIRED = "DCAP_COLLATERAL_EXPIRED"
    DCAP_COLLATERAL_INVALID = "DCAP_COLLATERAL_INVALID"
    DCAP_COLLATERAL_MISMATCH = "DCAP_COLLATERAL_MISMATCH"
    DCAP_CERT_CHAIN = "DCAP_CERT_CHAIN"
    DCAP_CERT_REVOKED = "DCAP_CERT_REVOKED"
    DCAP_QE_REPORT = "DCAP_QE_REPORT"
    DCAP_QUOTE_SIGNATURE = "DCAP_QUOTE_SIGNATURE"
    DCAP_TCB_NO_MATCH = "DCAP_TCB_NO_MATCH"
    DCAP_VERIFY_FAILED = "DCAP_VERIFY_FAILED"
    DCAP_TEE_TYPE = "DCAP_TEE_TYPE"
    DCAP_TCB_STATUS = "DCAP_TCB_STATUS"
    DCAP_DEBUG = "DCAP_DEBUG"
    DCAP_MEASUREMENT_MISMATCH = "DCAP_MEASUREMENT_MISMATCH"
    DCAP_FETCH_FAILED = "DCAP_FETCH_FAILED"
    DCAP_COLLATERAL_MISSING = "DCAP_COLLATERAL_MISSING"

    # attestation results (appraised by the relying party or the auditor)
    RESULT_MALFORMED = "RESULT_MALFORMED"
    RESULT_SIGNATURE = "RESULT_SIGNATURE"
    RESULT_NOT_YET_VALID = "RESULT_NOT_YET_VALID"
    RESULT_EXPIRED = "RESULT_EXPIRED"
    RESULT_STATUS = "RESULT_STATUS"
    RESULT_NONCE = "RESULT_NONCE"
    RESULT_KEY_MISMATCH = "RESULT_KEY_MISMATCH"
    RESULT_BINDING = "RESULT_BINDING"
    WORKER_NOT_ADMITTED = "WORKER_NOT_ADMITTED"
    DEVICE_SHARED = "DEVICE_SHARED"
    KEY_SHARED = "KEY_SHARED"

    # collateral files and the simulated vendor folder
    COLLATERAL_MALFORMED = "COLLATERAL_MALFORMED"
    VENDOR_MALFORMED = "VENDOR_MALFORMED"
    VENDOR_MISSING = "VENDOR_MISSING"
    POLICY_MALFORMED = "POLICY_MALFORMED"

    # evidence providers
    PROVIDER_UNAVAILABLE = "PROVIDER_UNAVAILABLE"
    PROVIDER_FAILED = "PROVIDER_FAILED"

    # receipts, signed headers and the receipt log
    RECEIPT_MALFORMED = "RECEIPT_MALFORMED"
    RECEIPT_VERSION = "RECEIPT_VERSION"
    RECEIPT_SIGNATURE = "RECEIPT_SIGNATURE"
    HEADER_MALFORMED = "HEADER_MALFORMED"
    HEADER_SIGNATURE = "HEADER_SIGNATURE"
    LOG_MALFORMED = "LOG_MALFORMED"
    LOG_TORN = "LOG_TORN"
    LOG_CHAIN = "LOG_CHAIN"
    LOG_DUPLICATE = "LOG_DUPLICATE"
    LOG_LOCKED = "LOG_LOCKED"

    # findings of the offline audit of a run directory (see stagewarden.attest.audit)
    RUNDIR_MALFORMED = "RUNDIR_MALFORMED"
    RUN_MISMATCH = "RUN_MISMATCH"
    WORKER_UNKNOWN = "WORKER_UNKNOWN"
    RECEIPT_CHAIN = "RECEIPT_CHAIN"
    RECEIPT_DROPPED = "RECEIPT_DROPPED"
    RECEIPT_REORDERED = "RECEIPT_REORDERED"
    RECEIPT_FORK = "RECEIPT_FORK"
    RECEIPT_CONFLICT = "RECEIPT_CONFLICT"
    RECEIPT_MISSING = "RECEIPT_MISSING"
    RECEIPT_FUTURE = "RECEIPT_FUTURE"
    LINK_MISMATCH = "LINK_MISMATCH"
    HEADER_MISMATCH = "HEADER_MISMATCH"
    HEADER_EQUIVOCATION = "HEADER_EQUIVOCATION"
    KEY_UNATTESTED = "KEY_UNATTESTED"
    VERIFIER_KEY_UNPINNED = "VERIFIER_KEY_UNPINNED"
    EVIDENCE_MISSING = "EVIDENCE_MISSING"
    EVIDENCE_RESULT_MISMATCH = "EVIDENCE_RESULT_MISMATCH"
    ATTESTATION_ABSENT = "ATTESTATION_ABSENT"
    RECEIPTS_ABSENT = "RECEIPTS_ABSENT"


class AttestError(Exception):
    """A rejection with a stable :class:`ErrorCode` and a message a user can act on."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class FormatError(AttestError):
    """Bytes that do not parse as the format they claim to be (truncated, trailing, wrong field)."""
