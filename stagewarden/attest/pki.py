"""A SIMULATED hardware vendor PKI: root CA, intermediate CA, device and TCB-signing certificates, and CRLs.

Everything here stands in for the certificate hierarchy that a real TEE vendor runs; every name it
issues says ``SIMULATED``. Key types are fixed per role and the verifier checks them:

* root and intermediate CAs: ECDSA on P-384, certificates signed with ECDSA-SHA384;
* device keys (they sign evidence): ECDSA on P-256;
* the TCB-signing key (it signs TCB info): Ed25519, certified by the root.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

#: Organisation name on every certificate and CRL of the simulated vendor.
VENDOR_ORG = "stagewarden SIMULATED TEE vendor"
ROOT_CN = "stagewarden SIMULATED TEE Root CA"
INTERMEDIATE_CN = "stagewarden SIMULATED TEE Intermediate CA"
TCB_SIGNING_CN = "stagewarden SIMULATED TEE TCB Signing"
DEVICE_CN_PREFIX = "stagewarden SIMULATED TEE Device "

#: Curve of CA keys and of device keys.
CA_CURVE: type[ec.EllipticCurve] = ec.SECP384R1
DEVICE_CURVE: type[ec.EllipticCurve] = ec.SECP256R1

ROOT_LIFETIME = dt.timedelta(days=3650)
INTERMEDIATE_LIFETIME = dt.timedelta(days=1825)
TCB_SIGNING_LIFETIME = dt.timedelta(days=730)
DEVICE_LIFETIME = dt.timedelta(days=365)
CRL_LIFETIME = dt.timedelta(days=30)
#: Certificates are backdated by this much, so that clocks a little behind still accept them.
BACKDATE = dt.timedelta(minutes=5)

CaKey = ec.EllipticCurvePrivateKey


@dataclasses.dataclass(frozen=True)
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def name(common_name: str, **extra: str) -> x509.Name:
    """A subject name of the simulated vendor: organisation, optional unit and serial number, common name."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, VENDOR_ORG)]
    if "unit" in extra:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, extra["unit"]))
    if "serial" in extra:
        attributes.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, extra["serial"]))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    issuer_public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    lifetime: dt.timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def make_root(now: dt.datetime, lifetime: dt.timedelta = ROOT_LIFETIME, common_name: str = ROOT_CN) -> Issued:
    """A self-signed root CA (P-384)."""
    key = ec.generate_private_key(CA_CURVE())
    subject = name(common_name)
    cert = (
        _builder(subject, subject, key.public_key(), key.public_key(), now, lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, hashes.SHA384())
    )
    return Issued(cert, key)


def make_intermediate(
    root: Issued,
    now: dt.datetime,
    lifetime: dt.timedelta = INTERMEDIATE_LIFETIME,
    common_name: str = INTERMEDIATE_CN,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Issued:
    """An intermediate CA (P-384) issued by ``root``; it issues device certificates.

    ``extensions`` adds (extension, critical) pairs, which only negative tests want.
    """
    key = ec.generate_private_key(CA_CURVE())
    assert isinstance(root.key, ec.EllipticCurvePrivateKey)
    builder = (
        _builder(name(common_name), root.cert.subject, key.public_key(), root.key.public_key(), now, lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return Issued(builder.sign(root.key, hashes.SHA384()), key)


def make_tcb_signer(
    root: Issued,
    now: dt.datetime,
    lifetime: dt.timedelta = TCB_SIGNING_LIFETIME,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Issued:
    """The Ed25519 TCB-signing certificate, issued by ``root``; its key signs TCB info.

    ``extensions`` adds (extension, critical) pairs, which only negative tests want.
    """
    key = ed25519.Ed25519PrivateKey.generate()
    assert isinstance(root.key, ec.EllipticCurvePrivateKey)
    builder = (
        _builder(name(TCB_SIGNING_CN), root.cert.subject, key.public_key(), root.key.public_key(), now, lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_usage(), critical=True)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return Issued(builder.sign(root.key, hashes.SHA384()), key)


def make_device(
    issuer: Issued,
    device_id: str,
    hardware_model: str,
    now: dt.datetime,
    lifetime: dt.timedelta = DEVICE_LIFETIME,
    key: ec.EllipticCurvePrivateKey | None = None,
    ca: bool = False,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> Issued:
    """A device certificate (P-256) naming the device id (subject serialNumber) and hardware model (unit).

    ``ca=True`` makes a (wrong) CA-flagged leaf and ``extensions`` adds (extension, critical)
    pairs, which only negative tests want.
    """
    key = key if key is not None else ec.generate_private_key(DEVICE_CURVE())
    assert isinstance(issuer.key, ec.EllipticCurvePrivateKey)
    subject = name(DEVICE_CN_PREFIX + device_id, unit=hardware_model, serial=device_id)
    builder = _builder(subject, issuer.cert.subject, key.public_key(), issuer.key.public_key(), now, lifetime)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(_ca_usage(), critical=True)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(_leaf_usage(), critical=True)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def make_crl(
    issuer: Issued,
    revoked_serials: list[int],
    now: dt.datetime,
    lifetime: dt.timedelta = CRL_LIFETIME,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``issuer`` with thisUpdate ``now`` and nextUpdate ``now + lifetime``."""
    assert isinstance(issuer.key, ec.EllipticCurvePrivateKey)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now)
        .next_update(now + lifetime)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(issuer.key, hashes.SHA384())


def name_attribute(subject: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    """The single value of ``oid`` in ``subject`` (None when absent or repeated)."""
    values = subject.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        return None
    return values[0].value
