"""The coordinator's DCAP verifier given the real SGX quote as a worker's evidence.

Workers fetch quotes through configfs-tsm, which serves confidential VMs (TDX) and has no SGX
provider; the verifier itself takes any DCAP quote, so an SGX quote a worker hands over is appraised
like a TDX one. The sample binds "Hello, world!", no nonce and key of ours: exactly a quote made for
someone else, replayed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dcap_samples import (
    SGX_AT,
    SGX_FIRST_NEXT_UPDATE,
    SGX_FMSPC,
    SGX_MRENCLAVE,
    SGX_SIGNED_LENGTH,
    SGX_STATUS,
    instant,
    sgx_collateral,
    sgx_quote,
)
from nacl.signing import SigningKey

from stagewarden.attest.clock import FixedClock
from stagewarden.attest.collateral_cache import CollateralCache
from stagewarden.attest.dcap import Collateral
from stagewarden.attest.dcap_policy import DcapPolicy
from stagewarden.attest.dcap_verifier import DcapVerifier
from stagewarden.attest.errors import AttestError, ErrorCode

E = ErrorCode
KEY = b"\x22" * 32


def _verifier(
    at: int = SGX_AT, source: Collateral | CollateralCache | None = None, policy: DcapPolicy | None = None
) -> DcapVerifier:
    return DcapVerifier(
        source or sgx_collateral(),
        policy or DcapPolicy(),
        SigningKey.generate(),
        FixedClock(instant(at)),
    )


def _refusal(verifier: DcapVerifier, evidence: bytes, nonce: bytes, stage: str | None = None) -> ErrorCode:
    with pytest.raises(AttestError) as info:
        verifier.appraise_evidence(evidence, KEY, nonce, stage)
    return info.value.code


@pytest.mark.parametrize("policy", [DcapPolicy(), DcapPolicy().with_statuses((SGX_STATUS,))])
def test_replayed_sgx_quote_is_refused_with_the_binding_code(policy: DcapPolicy) -> None:
    """A genuine SGX quote whose REPORTDATA binds no key of ours: KEY_BINDING (ahead of its status, whether
    the policy allows that status or not), and the nonce is spent."""
    verifier = _verifier(policy=policy)
    nonce = verifier.issue_nonce()
    assert _refusal(verifier, sgx_quote(), nonce) is E.KEY_BINDING
    assert _refusal(verifier, sgx_quote(), nonce) is E.NONCE_REUSED


def test_forged_sgx_quote_does_not_burn_the_nonce() -> None:
    """A changed byte of the enclave report fails the signature before the nonce is touched."""
    verifier = _verifier()
    nonce = verifier.issue_nonce()
    forged = bytearray(sgx_quote())
    forged[SGX_SIGNED_LENGTH - 100] ^= 0x01  # a byte of REPORTDATA
    assert _refusal(verifier, bytes(forged), nonce) is E.DCAP_QUOTE_SIGNATURE
    assert _refusal(verifier, sgx_quote(), nonce) is E.KEY_BINDING


def test_stale_and_early_collateral() -> None:
    """A verifier whose clock passed the QE identity's nextUpdate, or is before the TCB info's issue: refused."""
    stale = _verifier(SGX_FIRST_NEXT_UPDATE)
    assert _refusal(stale, sgx_quote(), stale.issue_nonce()) is E.DCAP_COLLATERAL_EXPIRED
    early = _verifier(SGX_AT - 60)
    assert _refusal(early, sgx_quote(), early.issue_nonce()) is E.DCAP_COLLATERAL_NOT_YET_VALID


def test_verifier_takes_sgx_collateral_from_a_cache(tmp_path: Path) -> None:
    """The cache files the SGX bundle under the quote's platform (sgx, FMSPC, PCK CA); a cache with only the
    TDX bundle has none for it."""
    cache = CollateralCache(tmp_path / "cache")
    empty = _verifier(source=cache)
    assert _refusal(empty, sgx_quote(), empty.issue_nonce()) is E.DCAP_COLLATERAL_MISSING
    path = cache.store(sgx_quote(), sgx_collateral())
    assert path.name == "sgx-00A067110000-processor.json"
    verifier = _verifier(source=cache)
    assert _refusal(verifier, sgx_quote(), verifier.issue_nonce()) is E.KEY_BINDING


def test_verifier_from_files_with_sgx_reference_values(tmp_path: Path) -> None:
    """A verifier built from the SGX collateral file and an SGX policy file reads both (the platform, the
    stages' MRENCLAVE sets) and refuses the replayed quote with KEY_BINDING at either stage."""
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps(
            {
                "version": 1,
                "allow_status": [SGX_STATUS],
                "reference_values": {"0": [{"mrenclave": "00" * 32}], "1": [{"mrenclave": SGX_MRENCLAVE}]},
            }
        )
    )
    bundle = tmp_path / "sgx.json"
    bundle.write_text(sgx_collateral().to_json())
    verifier = DcapVerifier.from_files(bundle, policy, SigningKey.generate(), FixedClock(instant(SGX_AT)))
    assert isinstance(verifier.collateral, Collateral) and verifier.collateral.fmspc == SGX_FMSPC
    assert verifier.policy.stages() == ("0", "1") and SGX_STATUS in verifier.policy.allow_status
    for stage in ("0", "1"):
        assert _refusal(verifier, sgx_quote(), verifier.issue_nonce(), stage) is E.KEY_BINDING
