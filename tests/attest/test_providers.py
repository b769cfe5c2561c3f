"""Tests of the evidence providers: the simulated TEE and configfs-tsm against a fake kernel in a tmp folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from attest_fixtures import DEVICE_ID, MEASUREMENT, MODEL, AttestWorld
from cryptography.hazmat.primitives.asymmetric import ec

from stagewarden.attest.dcap import dcap_report_data
from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.providers import (
    ConfigfsTsmProvider,
    DeviceIdentity,
    EvidenceProvider,
    SimulatedProvider,
    TsmFilesystem,
)


class FakeTsmKernel(TsmFilesystem):
    """A fake configfs-tsm kernel over a real tmp folder.

    mkdir populates the attribute files like the kernel does; a write to inblob bumps generation and
    fills outblob with a fake quote (a prefix and the inblob). ``racer`` simulates another writer by
    bumping generation when outblob is read.
    """

    def __init__(self, provider: str = "fake_guest", racer: bool = False, empty: bool = False) -> None:
        self.provider, self.racer, self.empty = provider, racer, empty
        self.entries: list[Path] = []

    def mkdir(self, path: Path) -> None:
        super().mkdir(path)
        self.entries.append(path)
        (path / "generation").write_text("0\n")
        (path / "provider").write_text(self.provider + "\n")
        (path / "outblob").write_bytes(b"")

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        if path.name == "inblob":
            generation = int((path.parent / "generation").read_text()) + 1
            (path.parent / "generation").write_text(f"{generation}\n")
            (path.parent / "outblob").write_bytes(b"" if self.empty else b"FAKEQUOTE" + data)

    def read(self, path: Path, limit: int) -> bytes:
        data = super().read(path, limit)
        if self.racer and path.name == "outblob":
            generation = int((path.parent / "generation").read_text()) + 1
            (path.parent / "generation").write_text(f"{generation}\n")
        return data

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        super().rmdir(path)


def test_simulated_provider_is_an_evidence_provider(attest_world: AttestWorld) -> None:
    """The simulated provider satisfies the protocol and its evidence is accepted by the verifier."""
    assert isinstance(attest_world.device.key, ec.EllipticCurvePrivateKey)
    device = DeviceIdentity(
        DEVICE_ID, MODEL, attest_world.device.key, attest_world.device.cert, attest_world.intermediate.cert
    )
    provider = SimulatedProvider(device, MEASUREMENT)
    assert isinstance(provider, EvidenceProvider) and provider.name == "simulated"
    v = attest_world.verifier()
    nonce = v.issue_nonce()
    v.appraise_evidence(provider.get_evidence(nonce, attest_world.worker_pub), attest_world.worker_pub, nonce)


def test_configfs_tsm_round_trip(tmp_path: Path) -> None:
    """The provider writes the report data to inblob, returns outblob and removes its entry."""
    kernel = FakeTsmKernel()
    provider = ConfigfsTsmProvider(tmp_path, expected_provider="fake_guest", fs=kernel)
    assert isinstance(provider, EvidenceProvider)
    quote = provider.get_evidence(b"\x01" * 32, b"\x02" * 32)
    assert quote == b"FAKEQUOTE" + dcap_report_data(b"\x01" * 32, b"\x02" * 32)
    assert len(kernel.entries) == 1 and not kernel.entries[0].exists() and list(tmp_path.iterdir()) == []


def test_configfs_tsm_missing_root(tmp_path: Path) -> None:
    """Without the report folder the provider is unavailable."""
    provider = ConfigfsTsmProvider(tmp_path / "absent")
    assert not provider.available()
    with pytest.raises(AttestError) as caught:
        provider.get_evidence(b"\x01" * 32, b"\x02" * 32)
    assert caught.value.code is ErrorCode.PROVIDER_UNAVAILABLE


def test_configfs_tsm_concurrent_writer(tmp_path: Path) -> None:
    """A generation change between the reads is reported as PROVIDER_FAILED, and the entry is removed."""
    with pytest.raises(AttestError) as caught:
        ConfigfsTsmProvider(tmp_path, fs=FakeTsmKernel(racer=True)).get_evidence(b"\x01" * 32, b"\x02" * 32)
    assert caught.value.code is ErrorCode.PROVIDER_FAILED and "concurrently" in caught.value.message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kernel", [FakeTsmKernel(empty=True), FakeTsmKernel(provider="sev_guest")], ids=["empty", "provider"]
)
def test_configfs_tsm_bad_answers(tmp_path: Path, kernel: FakeTsmKernel) -> None:
    """An empty outblob or an unexpected provider is PROVIDER_FAILED."""
    with pytest.raises(AttestError) as caught:
        ConfigfsTsmProvider(tmp_path, expected_provider="fake_guest", fs=kernel).get_evidence(
            b"\x01" * 32, b"\x02" * 32
        )
    assert caught.value.code is ErrorCode.PROVIDER_FAILED


def test_configfs_tsm_plain_folder_fails_cleanly(tmp_path: Path) -> None:
    """A plain folder (no kernel behind it) gives PROVIDER_FAILED, not an OSError."""
    with pytest.raises(AttestError) as caught:
        ConfigfsTsmProvider(tmp_path).get_evidence(b"\x01" * 32, b"\x02" * 32)
    assert caught.value.code is ErrorCode.PROVIDER_FAILED
