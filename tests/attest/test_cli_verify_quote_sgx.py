"""``stagewarden attest verify-quote`` (and ``fetch-collateral``) on the real Intel SGX sample, in process.

The measurements are compared with the hex read from the quote bytes at the SGX report body's
offsets (test_dcap_sgx checks the constants against those bytes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dcap_samples import (
    COLLATERAL,
    SGX_ADVISORIES,
    SGX_AT,
    SGX_COLLATERAL,
    SGX_FIRST_NEXT_UPDATE,
    SGX_FMSPC,
    SGX_MRENCLAVE,
    SGX_MRSIGNER,
    SGX_QUOTE,
    SGX_REPORT_DATA,
    SGX_STATUS,
    SWAP_AT,
    collateral_fields,
    sgx_collateral_fields,
)
from test_cli_verify_quote import _PCCS, run, serving, written_ear

ALLOW = ("--allow-status", SGX_STATUS)


def verify(
    *args: str, quote: Path = SGX_QUOTE, collateral: Path = SGX_COLLATERAL, at: int = SGX_AT
) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, out = run(
        "verify-quote", str(quote), "--collateral", str(collateral), "--at", str(at), "--format", "json", *args
    )
    return code, json.loads(out)


def test_default_policy_rejects_the_status_and_shows_the_advisories() -> None:
    """UpToDate only by default: exit 1, DCAP_TCB_STATUS, the status and both advisories printed."""
    code, out = verify()
    assert code == 1 and out["accepted"] is False and out["code"] == "DCAP_TCB_STATUS"
    assert out["tee"] == "sgx" and out["status"] == SGX_STATUS and out["advisories"] == list(SGX_ADVISORIES)
    assert all(advisory in out["reasons"][0] for advisory in SGX_ADVISORIES)
    assert "ear" not in out


def test_default_policy_text_output() -> None:
    """The text form says REJECTED for the SGX quote, the code, the status and the advisories."""
    code, out = run("verify-quote", str(SGX_QUOTE), "--collateral", str(SGX_COLLATERAL), "--at", str(SGX_AT))
    assert code == 1
    lines = out.strip().splitlines()
    assert lines[0] == "REJECTED: Intel SGX quote" and lines[1].startswith("DCAP_TCB_STATUS: ")
    assert lines[-1] == f"TCB status {SGX_STATUS}, advisories: {', '.join(SGX_ADVISORIES)}"


def test_allowing_the_status_accepts_with_the_measurements() -> None:
    """--allow-status ConfigurationAndSWHardeningNeeded: exit 0, sgx, the status, both advisories, MRENCLAVE,
    MRSIGNER and REPORTDATA as the quote bytes hold them, and a warning EAR."""
    code, out = verify(*ALLOW)
    assert code == 0, out
    assert out["tee"] == "sgx" and out["status"] == SGX_STATUS and out["accepted"] is True
    assert out["advisories"] == list(SGX_ADVISORIES) and out["reasons"] == [] and out["code"] is None
    assert out["measurements"] == {"mrenclave": SGX_MRENCLAVE, "mrsigner": SGX_MRSIGNER}
    assert out["report_data"] == SGX_REPORT_DATA.hex() and out["debug"] is False
    assert out["ear"]["status"] == "warning"
    assert out["ear"]["trust_vector"] == {
        "instance-identity": 2,
        "configuration": 32,
        "runtime-opaque": 2,
        "hardware": 32,
    }


def test_allowed_text_output() -> None:
    """The text form of an accepted SGX quote: ACCEPTED, status, advisories, FMSPC, MRENCLAVE and MRSIGNER."""
    args = ("verify-quote", str(SGX_QUOTE), "--collateral", str(SGX_COLLATERAL), "--at", str(SGX_AT), *ALLOW)
    code, out = run(*args)
    assert code == 0 and out.startswith("ACCEPTED: Intel SGX quote verified against Intel's PKI")
    for text in (SGX_STATUS, ", ".join(SGX_ADVISORIES), SGX_FMSPC, SGX_MRENCLAVE, SGX_MRSIGNER):
        assert text in out


def test_policy_file_allowing_the_status(tmp_path: Path) -> None:
    """A policy file that allows the status accepts it; a strict one (UpToDate only) refuses it."""
    for statuses, expected in ((["UpToDate", SGX_STATUS], 0), (["UpToDate"], 1)):
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps({"version": 1, "allow_status": statuses}))
        assert verify("--policy", str(policy))[0] == expected


@pytest.mark.parametrize(
    ("at", "code"),
    [(SGX_AT - 1, "DCAP_COLLATERAL_NOT_YET_VALID"), (SGX_FIRST_NEXT_UPDATE, "DCAP_COLLATERAL_EXPIRED")],
)
def test_times_outside_the_collateral(at: int, code: str) -> None:
    """One second before the TCB info's issue, or at the QE identity's nextUpdate: exit 1 with the time code,
    even with the status allowed."""
    status, out = verify(*ALLOW, at=at)
    assert status == 1 and out["code"] == code and out["status"] is None


def test_flipped_byte_of_the_enclave_report_is_rejected(tmp_path: Path) -> None:
    """One bit of MRENCLAVE changed: exit 1, DCAP_QUOTE_SIGNATURE; the claimed (forged) MRENCLAVE is shown."""
    forged = bytearray(SGX_QUOTE.read_bytes())
    forged[48 + 64] ^= 0x01
    path = tmp_path / "forged"
    path.write_bytes(bytes(forged))
    code, out = verify(*ALLOW, quote=path)
    assert code == 1 and out["code"] == "DCAP_QUOTE_SIGNATURE" and out["status"] is None
    assert out["measurements"]["mrenclave"] != SGX_MRENCLAVE


@pytest.mark.parametrize(
    ("part", "code"), [("tcb_info", "DCAP_COLLATERAL_MISMATCH"), ("qe_identity", "DCAP_COLLATERAL_MISMATCH")]
)
def test_tdx_signed_collateral_swapped_in_is_rejected(tmp_path: Path, part: str, code: str) -> None:
    """The TDX bundle's Intel-signed TCB info or QE identity (with its signature) in the SGX bundle: exit 1."""
    tdx = collateral_fields()
    fields = sgx_collateral_fields() | {part: tdx[part], f"{part}_signature": tdx[f"{part}_signature"]}
    path = tmp_path / "swapped.json"
    path.write_text(json.dumps(fields))
    status, out = verify(*ALLOW, collateral=path, at=SWAP_AT)
    assert status == 1 and out["code"] == code


def test_flipped_collateral_signature_is_rejected(tmp_path: Path) -> None:
    """One byte of the TCB info signature changed: exit 1, DCAP_COLLATERAL_INVALID."""
    fields = sgx_collateral_fields()
    signature = bytearray(bytes.fromhex(fields["tcb_info_signature"]))
    signature[5] ^= 0xFF
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(fields | {"tcb_info_signature": signature.hex()}))
    status, out = verify(*ALLOW, collateral=path)
    assert status == 1 and out["code"] == "DCAP_COLLATERAL_INVALID"


def test_the_tdx_bundle_for_the_sgx_quote_is_rejected() -> None:
    """The whole TDX collateral given for the SGX quote, at a time both are valid: exit 1."""
    status, out = verify(*ALLOW, collateral=COLLATERAL, at=SWAP_AT)
    assert status == 1 and out["code"] in ("DCAP_COLLATERAL_MISMATCH", "DCAP_CERT_CHAIN")


def test_binding_is_refused() -> None:
    """--nonce/--key: the sample's REPORTDATA is "Hello, world!", so exit 1 with KEY_BINDING (with or without
    the status allowed); the quote itself verified, its status is shown."""
    for extra in ((), ALLOW):
        code, out = verify("--nonce", "11" * 32, "--key", "22" * 32, *extra)
        assert code == 1 and out["code"] == "KEY_BINDING" and out["status"] == SGX_STATUS
        assert out["key_bound"] is False


def test_reference_values_and_stage(tmp_path: Path) -> None:
    """A policy with the sample's MRENCLAVE and MRSIGNER for stage 0 accepts it as stage 0; --stage 1 (another
    MRSIGNER) refuses it with DCAP_MEASUREMENT_MISMATCH."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"version: 1\nallow_status: [{SGX_STATUS}]\nreference_values:\n"
        f"  '0':\n    - {{mrenclave: {SGX_MRENCLAVE}, mrsigner: {SGX_MRSIGNER}}}\n"
        f"  '1':\n    - {{mrsigner: {'ab' * 32}}}\n"
    )
    code, out = verify("--policy", str(policy))
    assert code == 0 and out["stage"] == "0" and out["measurements_appraised"] is True
    assert out["ear"]["trust_vector"]["executables"] == 2
    code, out = verify("--policy", str(policy), "--stage", "1")
    assert code == 1 and out["code"] == "DCAP_MEASUREMENT_MISMATCH"


def test_result_out_writes_a_verifiable_ear(tmp_path: Path) -> None:
    """--result-out writes an EAR naming the SGX quote's measurements, verifiable under --verifier-key."""
    result = written_ear(tmp_path, SGX_QUOTE, SGX_COLLATERAL, SGX_AT, *ALLOW)
    assert result.tee == "sgx" and result.measurement == SGX_MRENCLAVE and result.tcb_status == SGX_STATUS


def test_fetch_sgx_collateral_into_a_cache_then_verify(tmp_path: Path) -> None:
    """fetch-collateral asks the SGX paths for the SGX quote and files the bundle under sgx-FMSPC-processor;
    verify-quote --cache then gives the same verdict as with the file."""
    cache = tmp_path / "cache"
    with serving(sgx_collateral_fields()) as url:
        code, out = run(
            "fetch-collateral", str(SGX_QUOTE), "--pccs-url", url, "--cache", str(cache), "--format", "json"
        )
    assert code == 0, out
    fetched = json.loads(out)
    assert fetched["fmspc"] == SGX_FMSPC and fetched["tcb"] == "SGX"
    assert (cache / f"sgx-{SGX_FMSPC}-processor.json").is_file()
    assert "/sgx/certification/v4/tcb" in _PCCS.paths and not any(p.startswith("/tdx/") for p in _PCCS.paths)
    args = ("verify-quote", str(SGX_QUOTE), "--cache", str(cache), "--at", str(SGX_AT), "--format", "json")
    code, out = run(*args, *ALLOW)
    assert code == 0 and json.loads(out)["measurements"]["mrenclave"] == SGX_MRENCLAVE
