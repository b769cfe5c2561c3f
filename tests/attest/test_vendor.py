"""Tests of the simulated vendor folder: creation, permissions, loading errors, device reuse and revocation."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from attest_fixtures import MEASUREMENT, T0
from nacl.signing import SigningKey

from stagewarden.attest.clock import FixedClock
from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.evidence import parse_evidence
from stagewarden.attest.policy import Policy
from stagewarden.attest.vendor import (
    device_identity,
    init_vendor,
    load_vendor,
    local_verifier,
    make_evidence,
    revoke_device,
)

PUB = bytes(SigningKey(b"\x05" * 32).verify_key)


@pytest.fixture
def vendor_dir(tmp_path: Path) -> Path:
    """A fresh vendor folder made at T0."""
    init_vendor(tmp_path / "vendor", FixedClock(T0))
    return tmp_path / "vendor"


def test_layout_and_permissions(vendor_dir: Path) -> None:
    """init-vendor writes every file, private keys with mode 0600, and a README that says SIMULATION."""
    names = {p.name for p in vendor_dir.iterdir()}
    assert names >= {
        "README.txt",
        "vendor.json",
        "root.crt",
        "root.key",
        "intermediate.crt",
        "intermediate.key",
        "tcb-signing.crt",
        "tcb-signing.key",
        "root.crl",
        "intermediate.crl",
        "tcb-info.jwt",
        "devices",
    }
    for key in vendor_dir.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "SIMULATION" in (vendor_dir / "README.txt").read_text()
    assert not [p for p in vendor_dir.parent.iterdir() if p.name.startswith(".")]


def test_refuses_to_overwrite(vendor_dir: Path) -> None:
    """init-vendor refuses a non-empty folder."""
    with pytest.raises(AttestError) as caught:
        init_vendor(vendor_dir, FixedClock(T0))
    assert caught.value.code is ErrorCode.VENDOR_MALFORMED


def test_load_errors(vendor_dir: Path, tmp_path: Path) -> None:
    """A missing folder or file is VENDOR_MISSING, a corrupt file VENDOR_MALFORMED."""
    with pytest.raises(AttestError) as caught:
        load_vendor(tmp_path / "nowhere")
    assert caught.value.code is ErrorCode.VENDOR_MISSING
    (vendor_dir / "root.crl").unlink()
    with pytest.raises(AttestError) as caught:
        load_vendor(vendor_dir)
    assert caught.value.code is ErrorCode.VENDOR_MISSING
    (vendor_dir / "root.crl").write_text("garbage")
    with pytest.raises(AttestError) as caught:
        load_vendor(vendor_dir)
    assert caught.value.code is ErrorCode.VENDOR_MALFORMED


def test_mismatched_key_is_malformed(vendor_dir: Path) -> None:
    """A private key that does not belong to its certificate is VENDOR_MALFORMED."""
    (vendor_dir / "root.key").write_bytes((vendor_dir / "intermediate.key").read_bytes())
    with pytest.raises(AttestError) as caught:
        load_vendor(vendor_dir)
    assert caught.value.code is ErrorCode.VENDOR_MALFORMED


def test_device_reused_and_evidence_accepted(vendor_dir: Path) -> None:
    """A device certificate is issued once and reused; its evidence is accepted by a verifier of that vendor."""
    vendor, clock = load_vendor(vendor_dir), FixedClock(T0)
    first = device_identity(vendor, "gpu-0", clock)
    assert device_identity(vendor, "gpu-0", clock).cert == first.cert
    assert stat.S_IMODE((vendor_dir / "devices" / "gpu-0.key").stat().st_mode) == 0o600
    verifier = local_verifier(vendor, [MEASUREMENT], Policy(), clock)
    nonce = verifier.issue_nonce()
    data = make_evidence(vendor, "gpu-0", PUB, nonce, MEASUREMENT, clock=clock)
    assert parse_evidence(data).chain[0] == first.cert
    verifier.appraise_evidence(data, PUB, nonce)


def test_revoked_device_is_rejected(vendor_dir: Path) -> None:
    """After revoke_device the device's evidence is rejected with CERT_REVOKED."""
    clock = FixedClock(T0)
    vendor = load_vendor(vendor_dir)
    device_identity(vendor, "gpu-0", clock)
    vendor = revoke_device(vendor, "gpu-0", clock)
    verifier = local_verifier(vendor, [MEASUREMENT], Policy(), clock)
    nonce = verifier.issue_nonce()
    with pytest.raises(AttestError) as caught:
        verifier.appraise_evidence(make_evidence(vendor, "gpu-0", PUB, nonce, MEASUREMENT, clock=clock), PUB, nonce)
    assert caught.value.code is ErrorCode.CERT_REVOKED
