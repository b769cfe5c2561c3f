"""TEE-style remote attestation (a software model of a SIMULATED TEE), signed computation receipts,
the crash-safe receipt log and the offline auditor.

The attestation side follows the roles of IETF RATS (RFC 9334): a simulated hardware vendor
(endorser) issues device certificates and TCB information, a reference value provider signs the
accepted measurements, workers (attesters) produce evidence that binds their Ed25519 receipt key,
the :class:`Verifier` appraises it and signs an attestation result, and the
:class:`RelyingParty` admits workers on that result.

Real evidence is the second kind: Intel TDX and SGX quotes (fetched on a TEE guest by
:class:`ConfigfsTsmProvider`) are verified against Intel's PKI with ``dcap-qvl``
(:func:`verify_quote`), appraised under a :class:`DcapPolicy` by :class:`DcapVerifier`, and their
results are issued as EAR JWTs (:class:`EarResult`).
"""

from __future__ import annotations

from stagewarden.attest.audit import AuditReport, Finding, Severity, audit_run_dir
from stagewarden.attest.clock import Clock, FixedClock, SystemClock
from stagewarden.attest.collateral import (
    Endorsements,
    ReferenceValues,
    TcbInfo,
    TcbLevel,
    TcbStatus,
    open_reference_values,
    open_tcb_info,
    parse_reference_values,
    parse_tcb_info,
    sign_reference_values,
    sign_tcb_info,
)
from stagewarden.attest.collateral_cache import CollateralCache, fetch_collateral
from stagewarden.attest.dcap import (
    Collateral,
    QuoteReport,
    VerifiedQuote,
    dcap_report_data,
    parse_collateral,
    verify_quote,
)
from stagewarden.attest.dcap_policy import (
    Binding,
    DcapPolicy,
    QuoteAppraisal,
    appraise_quote,
    load_dcap_policy,
    parse_dcap_policy,
)
from stagewarden.attest.dcap_verifier import DcapVerifier, EarAppraisal
from stagewarden.attest.ear import EarResult, open_ear, sign_ear, verify_ear
from stagewarden.attest.errors import AttestError, ErrorCode, FormatError
from stagewarden.attest.evidence import (
    FORMAT_NAME,
    SVN_COMPONENTS,
    Evidence,
    build_evidence,
    measure_stage,
    parse_evidence,
    report_data,
)
from stagewarden.attest.files import atomic_write_bytes, atomic_write_text
from stagewarden.attest.headers import (
    SignedHeader,
    TransferKind,
    encode_header,
    header_digest,
    parse_header,
    sign_header,
    verify_header,
)
from stagewarden.attest.pki import Issued, make_crl, make_device, make_intermediate, make_root, make_tcb_signer
from stagewarden.attest.policy import WARNABLE, Policy, load_policy, parse_policy
from stagewarden.attest.providers import (
    ConfigfsTsmProvider,
    DeviceIdentity,
    EvidenceProvider,
    SimulatedProvider,
    TsmFilesystem,
)
from stagewarden.attest.receipt_log import (
    LogProblem,
    LogRecord,
    LogScan,
    ReceiptLog,
    RecordType,
    read_log,
    recover_torn_tail,
    scan_log,
)
from stagewarden.attest.receipts import (
    EnvFlag,
    ExecutionEnv,
    Receipt,
    UnitKind,
    chain_genesis,
    encode_receipt,
    parse_receipt,
    receipt_digest,
    sign_receipt,
    verify_receipt,
)
from stagewarden.attest.relying_party import Admission, RelyingParty
from stagewarden.attest.result import (
    EAR_PROFILE,
    AttestationResult,
    Status,
    parse_result_unverified,
    sign_result,
    verify_result,
)
from stagewarden.attest.run_record import RunDirError, RunRecord, TrainingRecord
from stagewarden.attest.run_record_parts import WorkerInfo
from stagewarden.attest.rundir import RunDir, RunDirWriter
from stagewarden.attest.synthetic import SyntheticRun, synthetic_run
from stagewarden.attest.tensor_digest import (
    TensorDigest,
    digest_state_dict,
    digest_tensor,
    digest_tensors,
    gradient_trace_digest,
    gradients_digest,
    last_forward_output_digest,
    tensor_digest,
    update_input_digest,
    update_output_digest,
)
from stagewarden.attest.token import canonical_json, key_id, open_token, sign_token
from stagewarden.attest.vendor import (
    Vendor,
    device_identity,
    init_vendor,
    load_vendor,
    local_verifier,
    make_evidence,
    refresh_crls,
    revoke_device,
)
from stagewarden.attest.verifier import CHECKS, Appraisal, Verifier

__all__ = [
    "Binding",
    "Collateral",
    "CollateralCache",
    "DcapPolicy",
    "DcapVerifier",
    "EarAppraisal",
    "EarResult",
    "QuoteAppraisal",
    "QuoteReport",
    "VerifiedQuote",
    "appraise_quote",
    "dcap_report_data",
    "fetch_collateral",
    "load_dcap_policy",
    "open_ear",
    "parse_collateral",
    "parse_dcap_policy",
    "sign_ear",
    "verify_ear",
    "verify_quote",
    "Admission",
    "Appraisal",
    "AttestError",
    "AttestationResult",
    "AuditReport",
    "CHECKS",
    "Clock",
    "ConfigfsTsmProvider",
    "DeviceIdentity",
    "EAR_PROFILE",
    "Endorsements",
    "EnvFlag",
    "ErrorCode",
    "Evidence",
    "EvidenceProvider",
    "ExecutionEnv",
    "FORMAT_NAME",
    "Finding",
    "FixedClock",
    "FormatError",
    "Issued",
    "LogProblem",
    "LogRecord",
    "LogScan",
    "Policy",
    "Receipt",
    "ReceiptLog",
    "RecordType",
    "ReferenceValues",
    "RelyingParty",
    "RunDir",
    "RunDirError",
    "RunDirWriter",
    "RunRecord",
    "TrainingRecord",
    "SVN_COMPONENTS",
    "Severity",
    "SignedHeader",
    "SimulatedProvider",
    "Status",
    "SyntheticRun",
    "SystemClock",
    "TcbInfo",
    "TcbLevel",
    "TcbStatus",
    "TensorDigest",
    "TransferKind",
    "TsmFilesystem",
    "UnitKind",
    "Vendor",
    "Verifier",
    "WARNABLE",
    "WorkerInfo",
    "atomic_write_bytes",
    "atomic_write_text",
    "audit_run_dir",
    "build_evidence",
    "canonical_json",
    "chain_genesis",
    "device_identity",
    "digest_state_dict",
    "digest_tensor",
    "digest_tensors",
    "gradient_trace_digest",
    "last_forward_output_digest",
    "gradients_digest",
    "encode_header",
    "encode_receipt",
    "header_digest",
    "init_vendor",
    "key_id",
    "load_policy",
    "load_vendor",
    "local_verifier",
    "make_crl",
    "make_device",
    "make_evidence",
    "make_intermediate",
    "make_root",
    "make_tcb_signer",
    "measure_stage",
    "open_reference_values",
    "open_tcb_info",
    "open_token",
    "parse_evidence",
    "parse_header",
    "parse_policy",
    "parse_receipt",
    "parse_reference_values",
    "parse_result_unverified",
    "parse_tcb_info",
    "read_log",
    "receipt_digest",
    "recover_torn_tail",
    "refresh_crls",
    "report_data",
    "revoke_device",
    "scan_log",
    "sign_header",
    "sign_receipt",
    "sign_reference_values",
    "sign_result",
    "sign_tcb_info",
    "sign_token",
    "synthetic_run",
    "tensor_digest",
    "update_input_digest",
    "update_output_digest",
    "verify_header",
    "verify_receipt",
    "verify_result",
]
