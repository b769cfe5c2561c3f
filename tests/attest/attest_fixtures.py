"""Shared fixtures of the TEE attestation tests: a simulated vendor PKI built once per session, and builders
for verifiers, evidence and collateral with any part replaced (for the negative corpus)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from nacl.signing import SigningKey

from stagewarden.attest.clock import FixedClock
from stagewarden.attest.collateral import (
    Endorsements,
    ReferenceValues,
    TcbInfo,
    TcbLevel,
    sign_reference_values,
    sign_tcb_info,
)
from stagewarden.attest.evidence import build_evidence, measure_stage
from stagewarden.attest.pki import Issued, make_crl, make_device, make_intermediate, make_root, make_tcb_signer
from stagewarden.attest.policy import Policy
from stagewarden.attest.vendor import DEFAULT_TCB_LEVELS
from stagewarden.attest.verifier import Verifier

#: The instant every attestation test runs at (unless it moves its clock).
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
MODEL = "SWSIM-TEE-1"
DEVICE_ID = "gpu-node-0"
SVNS = (2, 2, 2, 2)
MEASUREMENT = measure_stage(b"def stage(x): return x", b'{"layers": 4}', b"\x00" * 64)


def tcb_signing_key(issued: Issued) -> SigningKey:
    """The nacl signing key of an Ed25519 ``Issued``."""
    assert isinstance(issued.key, ed25519.Ed25519PrivateKey)
    return SigningKey(issued.key.private_bytes_raw())


@dataclasses.dataclass
class AttestWorld:
    """A complete simulated attestation setup at :data:`T0`, with builders that replace any part."""

    root: Issued
    intermediate: Issued
    tcb_signer: Issued
    device: Issued
    rvp_key: SigningKey
    verifier_key: SigningKey
    worker_key: SigningKey

    @classmethod
    def create(cls) -> AttestWorld:
        """Generate every key once."""
        before = T0 - dt.timedelta(days=10)
        root = make_root(before)
        intermediate = make_intermediate(root, before)
        return cls(
            root=root,
            intermediate=intermediate,
            tcb_signer=make_tcb_signer(root, before),
            device=make_device(intermediate, DEVICE_ID, MODEL, before),
            rvp_key=SigningKey.generate(),
            verifier_key=SigningKey.generate(),
            worker_key=SigningKey.generate(),
        )

    @property
    def worker_pub(self) -> bytes:
        """The worker's receipt public key."""
        return bytes(self.worker_key.verify_key)

    def clock(self, at: dt.datetime = T0) -> FixedClock:
        """A fixed clock (at T0 by default)."""
        return FixedClock(at)

    def crls(
        self,
        now: dt.datetime = T0 - dt.timedelta(hours=1),
        revoked_devices: Sequence[int] = (),
        revoked_intermediates: Sequence[int] = (),
        lifetime: dt.timedelta = dt.timedelta(days=7),
        intermediate: Issued | None = None,
    ) -> tuple[x509.CertificateRevocationList, ...]:
        """The root CRL and the intermediate CRL."""
        return (
            make_crl(self.root, list(revoked_intermediates), now, lifetime),
            make_crl(intermediate or self.intermediate, list(revoked_devices), now, lifetime),
        )

    def tcb_info(
        self,
        levels: tuple[TcbLevel, ...] = DEFAULT_TCB_LEVELS,
        issue: dt.datetime = T0 - dt.timedelta(days=1),
        next_update: dt.datetime = T0 + dt.timedelta(days=30),
        key: SigningKey | None = None,
        model: str = MODEL,
    ) -> bytes:
        """A TCB info token (signed by the TCB signer unless ``key`` is given)."""
        return sign_tcb_info(TcbInfo(model, issue, next_update, levels), key or tcb_signing_key(self.tcb_signer))

    def references(
        self,
        measurements: Sequence[bytes] = (MEASUREMENT,),
        issued: dt.datetime = T0 - dt.timedelta(hours=1),
        expires: dt.datetime = T0 + dt.timedelta(days=1),
        key: SigningKey | None = None,
    ) -> bytes:
        """A reference values token (signed by the reference value provider unless ``key`` is given)."""
        named = tuple((f"stage-{i}", m) for i, m in enumerate(measurements))
        return sign_reference_values(ReferenceValues(issued, expires, named), key or self.rvp_key)

    def endorsements(
        self,
        crls: tuple[x509.CertificateRevocationList, ...] | None = None,
        tcb_infos: tuple[bytes, ...] | None = None,
        tcb_signing_cert: x509.Certificate | None = None,
        roots: tuple[x509.Certificate, ...] | None = None,
    ) -> Endorsements:
        """Endorsements with any part replaced."""
        return Endorsements(
            roots=roots if roots is not None else (self.root.cert,),
            crls=crls if crls is not None else self.crls(),
            tcb_signing_cert=tcb_signing_cert or self.tcb_signer.cert,
            tcb_infos=tcb_infos if tcb_infos is not None else (self.tcb_info(),),
        )

    def verifier(
        self,
        clock: FixedClock | None = None,
        policy: Policy | None = None,
        endorsements: Endorsements | None = None,
        references: bytes | None = None,
    ) -> Verifier:
        """A fresh verifier (its own nonce table) with any part replaced."""
        return Verifier(
            endorsements or self.endorsements(),
            references if references is not None else self.references(),
            self.rvp_key.verify_key,
            policy or Policy(),
            self.verifier_key,
            clock or self.clock(),
        )

    def evidence(
        self,
        nonce: bytes,
        pubkey: bytes | None = None,
        device: Issued | None = None,
        chain: Sequence[x509.Certificate] | None = None,
        svns: tuple[int, ...] = SVNS,
        debug: bool = False,
        measurement: bytes = MEASUREMENT,
        device_id: str = DEVICE_ID,
        model: str = MODEL,
        signing_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        """Evidence from the world's device (or ``device``), with any field replaced."""
        device = device or self.device
        key = signing_key or device.key
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return build_evidence(
            device_key=key,
            chain=tuple(chain) if chain is not None else (device.cert, self.intermediate.cert),
            hardware_model=model,
            device_id=device_id,
            svns=svns,
            measurement=measurement,
            nonce=nonce,
            pubkey=pubkey if pubkey is not None else self.worker_pub,
            debug=debug,
        )


@pytest.fixture(scope="session")
def attest_world() -> AttestWorld:
    """The simulated attestation setup, keys generated once per test session."""
    return AttestWorld.create()
