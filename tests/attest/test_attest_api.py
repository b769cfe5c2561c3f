"""The public API of stagewarden.attest: pinned so that additions and removals are deliberate."""

from __future__ import annotations

import subprocess
import sys

import stagewarden.attest

PUBLIC_NAMES = sorted(
    """
    Admission AttestError AttestationResult AuditReport Appraisal CHECKS Clock ConfigfsTsmProvider DeviceIdentity
    EAR_PROFILE Endorsements EnvFlag ErrorCode Evidence EvidenceProvider ExecutionEnv FORMAT_NAME Finding FixedClock
    FormatError Issued LogProblem LogRecord LogScan Policy Receipt ReceiptLog RecordType ReferenceValues
    RelyingParty RunDir RunDirError RunDirWriter RunRecord SVN_COMPONENTS Severity SignedHeader SimulatedProvider
    Status SyntheticRun SystemClock TcbInfo TcbLevel TcbStatus TensorDigest TransferKind TsmFilesystem UnitKind
    TrainingRecord
    Vendor Verifier WARNABLE WorkerInfo atomic_write_bytes atomic_write_text audit_run_dir build_evidence
    canonical_json chain_genesis device_identity digest_state_dict digest_tensor digest_tensors encode_header
    gradient_trace_digest gradients_digest last_forward_output_digest
    encode_receipt header_digest init_vendor key_id load_policy load_vendor local_verifier make_crl make_device
    make_evidence make_intermediate make_root make_tcb_signer measure_stage open_reference_values open_tcb_info
    open_token parse_evidence parse_header parse_policy parse_receipt parse_reference_values parse_result_unverified
    parse_tcb_info read_log receipt_digest recover_torn_tail refresh_crls report_data revoke_device scan_log
    sign_header sign_receipt sign_reference_values sign_result sign_tcb_info sign_token synthetic_run tensor_digest
    update_input_digest update_output_digest verify_header verify_receipt verify_result
    Binding Collateral CollateralCache DcapPolicy DcapVerifier EarAppraisal EarResult QuoteAppraisal QuoteReport
    VerifiedQuote appraise_quote dcap_report_data fetch_collateral load_dcap_policy open_ear parse_collateral
    parse_dcap_policy sign_ear verify_ear verify_quote
    """.split()
)


def test_all_is_pinned() -> None:
    """``__all__`` is exactly the pinned list, and every name in it exists."""
    assert sorted(stagewarden.attest.__all__) == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert hasattr(stagewarden.attest, name), name


def test_import_does_not_load_torch() -> None:
    """Importing the attestation package stays light: torch is loaded only when a tensor is digested."""
    code = "import sys, stagewarden.attest; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
