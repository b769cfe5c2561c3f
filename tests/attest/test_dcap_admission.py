"""Admission with real quotes: a TDX guest's configfs-tsm provider and the coordinator's DCAP verifier."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dcap_samples import AT, PCK_CRL_NEXT_UPDATE, collateral, instant, quote
from nacl.signing import SigningKey

from stagewarden.attest.clock import FixedClock
from stagewarden.attest.collateral_cache import CollateralCache
from stagewarden.attest.dcap import dcap_report_data
from stagewarden.attest.dcap_policy import DcapPolicy
from stagewarden.attest.dcap_verifier import DcapVerifier
from stagewarden.attest.errors import AttestError, ErrorCode
from stagewarden.attest.providers import ConfigfsTsmProvider, TsmFilesystem

E = ErrorCode


class FakeTdxGuest(TsmFilesystem):
    """A configfs-tsm report tree on disk, filled the way the TDX guest driver fills it.

    Creating an entry makes its ``provider`` (tdx_guest) and ``generation`` files; writing
    ``inblob`` bumps the generation and puts the quote in ``outblob``. The quote is a fixed real one
    (no TDX module is at hand), so its REPORTDATA is not the inblob: exactly a quote made for
    someone else, replayed.
    """

    def __init__(self, quote: bytes) -> None:
        self.quote = quote
        self.inblobs: list[bytes] = []

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        (path / "provider").write_text("tdx_guest\n")
        (path / "generation").write_text("0\n")

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        if path.name == "inblob":
            self.inblobs.append(data)
            generation = int((path.parent / "generation").read_text()) + 1
            (path.parent / "generation").write_text(f"{generation}\n")
            (path.parent / "outblob").write_bytes(self.quote)

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        os.rmdir(path)


@pytest.fixture
def guest(tmp_path: Path) -> tuple[ConfigfsTsmProvider, FakeTdxGuest, Path]:
    root = tmp_path / "tsm" / "report"
    root.mkdir(parents=True)
    fs = FakeTdxGuest(quote())
    return ConfigfsTsmProvider(root, expected_provider="tdx_guest", fs=fs), fs, root


def _verifier(at: int = AT, source: object = None) -> DcapVerifier:
    return DcapVerifier(source or collateral(), DcapPolicy(), SigningKey.generate(), FixedClock(instant(at)))  # type: ignore[arg-type]


def test_provider_writes_the_dcap_binding_and_cleans_up(guest: tuple[ConfigfsTsmProvider, FakeTdxGuest, Path]) -> None:
    """The worker's provider asks for REPORTDATA = dcap_report_data(nonce, key), returns outblob, removes its entry."""
    provider, fs, root = guest
    nonce, key = os.urandom(32), bytes(SigningKey.generate().verify_key)
    assert provider.get_evidence(nonce, key) == quote()
    assert fs.inblobs == [dcap_report_data(nonce, key)]
    assert list(root.iterdir()) == []


def test_replayed_quote_is_refused_with_the_binding_code(
    guest: tuple[ConfigfsTsmProvider, FakeTdxGuest, Path],
) -> None:
    """A genuine UpToDate quote whose REPORTDATA binds no key of ours: KEY_BINDING, and the nonce is spent."""
    provider, _, _ = guest
    verifier = _verifier()
    key = bytes(SigningKey.generate().verify_key)
    nonce = verifier.issue_nonce()
    evidence = provider.get_evidence(nonce, key)
    with pytest.raises(AttestError) as info:
        verifier.appraise_evidence(evidence, key, nonce)
    assert info.value.code is E.KEY_BINDING
    with pytest.raises(AttestError) as again:
        verifier.appraise_evidence(evidence, key, nonce)
    assert again.value.code is E.NONCE_REUSED


def test_forged_quote_does_not_burn_the_nonce() -> None:
    """A quote with a changed byte fails its signature before the nonce is touched: the nonce stays answerable."""
    verifier = _verifier()
    key, nonce = b"\x22" * 32, verifier.issue_nonce()
    forged = bytearray(quote())
    forged[200] ^= 0x01
    with pytest.raises(AttestError) as info:
        verifier.appraise_evidence(bytes(forged), key, nonce)
    assert info.value.code is E.DCAP_QUOTE_SIGNATURE
    with pytest.raises(AttestError) as info:
        verifier.appraise_evidence(quote(), key, nonce)
    assert info.value.code is E.KEY_BINDING


def test_nonce_not_issued_and_stale_collateral() -> None:
    """A nonce the verifier never issued is NONCE_UNKNOWN; a verifier whose clock passed the collateral's
    nextUpdate refuses with DCAP_COLLATERAL_EXPIRED."""
    with pytest.raises(AttestError) as info:
        _verifier().appraise_evidence(quote(), b"\x22" * 32, b"\x01" * 32)
    assert info.value.code is E.NONCE_UNKNOWN
    stale = _verifier(PCK_CRL_NEXT_UPDATE)
    with pytest.raises(AttestError) as info:
        stale.appraise_evidence(quote(), b"\x22" * 32, stale.issue_nonce())
    assert info.value.code is E.DCAP_COLLATERAL_EXPIRED


def test_verifier_takes_collateral_from_a_cache(tmp_path: Path) -> None:
    """With a cache, the verifier finds the quote's bundle by platform; an empty cache is DCAP_COLLATERAL_MISSING."""
    cache = CollateralCache(tmp_path / "cache")
    empty = _verifier(source=cache)
    with pytest.raises(AttestError) as info:
        empty.appraise_evidence(quote(), b"\x22" * 32, empty.issue_nonce())
    assert info.value.code is E.DCAP_COLLATERAL_MISSING
    path = cache.store(quote(), collateral())
    assert path.name == "tdx-B0C06F000000-platform.json"
    verifier = _verifier(source=cache)
    with pytest.raises(AttestError) as info:
        verifier.appraise_evidence(quote(), b"\x22" * 32, verifier.issue_nonce())
    assert info.value.code is E.KEY_BINDING
