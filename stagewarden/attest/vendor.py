"""The SIMULATED TEE vendor on disk: a folder with the vendor PKI, CRLs, TCB info and issued device identities.

Layout of a vendor folder (private keys are PEM PKCS#8, mode 0600; the folder itself 0700)::

    README.txt            says that everything here is a simulation
    vendor.json           format marker and the hardware model (written last by init)
    root.crt root.key     the root CA (P-384), the verifier's pinned anchor
    intermediate.crt .key the intermediate CA (P-384) that issues device certificates
    tcb-signing.crt .key  the Ed25519 key that signs TCB info, certified by the root
    root.crl              the root's CRL (revokes intermediates and the TCB signer)
    intermediate.crl      the intermediate's CRL (revokes devices)
    tcb-info.jwt          signed TCB info for the hardware model
    devices/ID.crt .key   device certificates and keys, issued on first use

:func:`init_vendor` builds the folder in a temporary sibling and renames it into place, so a
crash never leaves half a vendor behind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from nacl.signing import SigningKey

from .clock import Clock, SystemClock
from .collateral import (
    Endorsements,
    ReferenceValues,
    TcbInfo,
    TcbLevel,
    TcbStatus,
    sign_reference_values,
    sign_tcb_info,
)
from .errors import AttestError, ErrorCode
from .evidence import check_device_id, check_hardware_model
from .files import atomic_write_bytes
from .nonces import NonceRegistry
from .pki import Issued, make_crl, make_device, make_intermediate, make_root, make_tcb_signer, name_attribute
from .policy import Policy
from .providers import DeviceIdentity, SimulatedProvider
from .verifier import Verifier

DEFAULT_HARDWARE_MODEL = "SWSIM-TEE-1"
#: SVNs of a device that is up to date under the default TCB info.
DEFAULT_SVNS = (2, 2, 2, 2)
#: Default TCB levels, newest first.
DEFAULT_TCB_LEVELS = (
    TcbLevel((2, 2, 2, 2), TcbStatus.UP_TO_DATE),
    TcbLevel((1, 1, 1, 1), TcbStatus.OUT_OF_DATE),
    TcbLevel((0, 0, 0, 0), TcbStatus.REVOKED),
)
TCB_INFO_LIFETIME = dt.timedelta(days=30)
VENDOR_FORMAT = "stagewarden-simulated-tee-vendor"
README = """\
SIMULATION - NOT A REAL TEE VENDOR

This folder holds a SIMULATED hardware vendor made by `stagewarden attest init-vendor`:
a root CA, an intermediate CA, device certificates, CRLs and signed TCB info for the
stagewarden SIMULATED TEE. None of it comes from real hardware, and evidence it signs
proves nothing about a real machine. The private keys are stored unencrypted (mode 0600)
so that tests and demos can issue evidence; never reuse them for anything else.
"""


@dataclasses.dataclass(frozen=True)
class Vendor:
    """A loaded simulated vendor folder."""

    path: Path
    hardware_model: str
    root: Issued
    intermediate: Issued
    tcb_signer: Issued
    root_crl: x509.CertificateRevocationList
    intermediate_crl: x509.CertificateRevocationList
    tcb_info: bytes

    def endorsements(self) -> Endorsements:
        """What a verifier trusts from this vendor: the root (pinned), the CRLs, the TCB signer and TCB info."""
        return Endorsements(
            roots=(self.root.cert,),
            crls=(self.root_crl, self.intermediate_crl),
            tcb_signing_cert=self.tcb_signer.cert,
            tcb_infos=(self.tcb_info,),
        )


def _pem_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)  # mkstemp creates the file with mode 0600
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    os.chmod(path, 0o644)


def _tcb_signing_key(issued: Issued) -> SigningKey:
    assert isinstance(issued.key, ed25519.Ed25519PrivateKey)
    return SigningKey(issued.key.private_bytes_raw())


def init_vendor(
    directory: str | Path, clock: Clock | None = None, hardware_model: str = DEFAULT_HARDWARE_MODEL
) -> Vendor:
    """Create a simulated vendor in ``directory`` (which must not exist or be empty) and return it.

    Raises:
        AttestError: VENDOR_MALFORMED when ``directory`` exists and is not an empty folder.
        ValueError: for a bad hardware model.
    """
    check_hardware_model(hardware_model)
    clock = clock or SystemClock()
    now = clock.now().replace(microsecond=0)
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise AttestError(
            ErrorCode.VENDOR_MALFORMED, f"{target} already exists and is not an empty folder; refusing to overwrite it"
        )
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        what = f"{parent} is not a folder" if parent.exists() else f"folder {parent} does not exist"
        raise AttestError(ErrorCode.VENDOR_MISSING, f"cannot create {target}: {what}")
    root = make_root(now)
    intermediate = make_intermediate(root, now)
    tcb_signer = make_tcb_signer(root, now)
    info = TcbInfo(hardware_model, now, now + TCB_INFO_LIFETIME, DEFAULT_TCB_LEVELS)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    try:
        _write_public(staging / "README.txt", README.encode("utf-8"))
        for stem, issued in (("root", root), ("intermediate", intermediate), ("tcb-signing", tcb_signer)):
            _write_private(staging / f"{stem}.key", _pem_key(issued.key))
            _write_public(staging / f"{stem}.crt", _pem_cert(issued.cert))
        _write_public(staging / "root.crl", make_crl(root, [], now).public_bytes(serialization.Encoding.PEM))
        _write_public(
            staging / "intermediate.crl", make_crl(intermediate, [], now).public_bytes(serialization.Encoding.PEM)
        )
        _write_public(staging / "tcb-info.jwt", sign_tcb_info(info, _tcb_signing_key(tcb_signer)))
        os.mkdir(staging / "devices", 0o700)
        meta = {"format": VENDOR_FORMAT, "version": 1, "simulated": True, "hardware_model": hardware_model}
        _write_public(staging / "vendor.json", (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        if target.exists():
            target.rmdir()
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_vendor(target)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AttestError(ErrorCode.VENDOR_MISSING, f"vendor file {path} is missing") from None
    except OSError as exc:
        raise AttestError(
            ErrorCode.VENDOR_MISSING, f"vendor file {path} cannot be read: {exc.strerror or exc}"
        ) from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise AttestError(ErrorCode.VENDOR_MALFORMED, f"{path} is not a PEM certificate") from None


def _load_key(path: Path) -> Any:
    data = _read(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise AttestError(ErrorCode.VENDOR_MALFORMED, f"{path} is not an unencrypted PEM private key") from None


def _load_pair(folder: Path, stem: str, kind: type) -> Issued:
    cert = _load_cert(folder / f"{stem}.crt")
    key = _load_key(folder / f"{stem}.key")
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)) or not isinstance(key, kind):
        raise AttestError(ErrorCode.VENDOR_MALFORMED, f"{folder / (stem + '.key')} is not a key of the expected type")
    if cert.public_key() != key.public_key():
        raise AttestError(
            ErrorCode.VENDOR_MALFORMED, f"{folder / (stem + '.key')} does not match {folder / (stem + '.crt')}"
        )
    return Issued(cert, key)


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl(_read(path))
    except ValueError:
        raise AttestError(ErrorCode.VENDOR_MALFORMED, f"{path} is not a PEM CRL") from None


def load_vendor(directory: str | Path) -> Vendor:
    """Load a vendor folder made by :func:`init_vendor`.

    Raises:
        AttestError: VENDOR_MISSING for a missing folder or file, VENDOR_MALFORMED for bad content.
    """
    folder = Path(directory)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise AttestError(ErrorCode.VENDOR_MISSING, f"vendor folder {folder} {what}")
    try:
        meta = json.loads(_read(folder / "vendor.json").decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise AttestError(ErrorCode.VENDOR_MALFORMED, f"{folder / 'vendor.json'} is not JSON") from None
    if (
        not isinstance(meta, dict)
        or meta.get("format") != VENDOR_FORMAT
        or meta.get("version") != 1
        or meta.get("simulated") is not True
        or not isinstance(meta.get("hardware_model"), str)
    ):
        raise AttestError(
            ErrorCode.VENDOR_MALFORMED, f"{folder / 'vendor.json'} is not a simulated vendor description (version 1)"
        )
    try:
        model = check_hardware_model(meta["hardware_model"])
    except ValueError as exc:
        raise AttestError(ErrorCode.VENDOR_MALFORMED, f"{folder / 'vendor.json'}: {exc}") from None
    return Vendor(
        path=folder,
        hardware_model=model,
        root=_load_pair(folder, "root", ec.EllipticCurvePrivateKey),
        intermediate=_load_pair(folder, "intermediate", ec.EllipticCurvePrivateKey),
        tcb_signer=_load_pair(folder, "tcb-signing", ed25519.Ed25519PrivateKey),
        root_crl=_load_crl(folder / "root.crl"),
        intermediate_crl=_load_crl(folder / "intermediate.crl"),
        tcb_info=_read(folder / "tcb-info.jwt").strip(),
    )


def device_identity(
    vendor: Vendor, device_id: str, clock: Clock | None = None, hardware_model: str | None = None
) -> DeviceIdentity:
    """The identity of device ``device_id``: reused from ``devices/`` when valid now, else issued and stored."""
    check_device_id(device_id)
    model = check_hardware_model(hardware_model or vendor.hardware_model)
    clock = clock or SystemClock()
    now = clock.now()
    folder = vendor.path / "devices"
    cert_path, key_path = folder / f"{device_id}.crt", folder / f"{device_id}.key"
    if cert_path.exists() and key_path.exists():
        issued = _load_pair(folder, device_id, ec.EllipticCurvePrivateKey)
        cert = issued.cert
        if (
            cert.issuer == vendor.intermediate.cert.subject
            and name_attribute(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == model
            and cert.not_valid_before_utc <= now < cert.not_valid_after_utc
        ):
            assert isinstance(issued.key, ec.EllipticCurvePrivateKey)
            return DeviceIdentity(device_id, model, issued.key, cert, vendor.intermediate.cert)
    folder.mkdir(mode=0o700, exist_ok=True)
    issued = make_device(vendor.intermediate, device_id, model, now.replace(microsecond=0))
    _write_private(key_path, _pem_key(issued.key))
    _write_public(cert_path, _pem_cert(issued.cert))
    assert isinstance(issued.key, ec.EllipticCurvePrivateKey)
    return DeviceIdentity(device_id, model, issued.key, issued.cert, vendor.intermediate.cert)


def make_evidence(
    vendor: Vendor,
    device_id: str,
    pubkey: bytes,
    nonce: bytes,
    measurement: bytes,
    debug: bool = False,
    svns: tuple[int, ...] = DEFAULT_SVNS,
    clock: Clock | None = None,
    hardware_model: str | None = None,
) -> bytes:
    """SIMULATED TEE evidence from device ``device_id`` of ``vendor`` (issuing its certificate if needed)."""
    device = device_identity(vendor, device_id, clock, hardware_model)
    return SimulatedProvider(device, measurement, svns, debug).get_evidence(nonce, pubkey)


def revoke_device(vendor: Vendor, device_id: str, clock: Clock | None = None) -> Vendor:
    """Add device ``device_id``'s certificate to the intermediate CRL (re-issued now); return the reloaded vendor."""
    check_device_id(device_id)
    cert = _load_cert(vendor.path / "devices" / f"{device_id}.crt")
    revoked = [entry.serial_number for entry in vendor.intermediate_crl] + [cert.serial_number]
    now = (clock or SystemClock()).now().replace(microsecond=0)
    _write_public(
        vendor.path / "intermediate.crl",
        make_crl(vendor.intermediate, revoked, now).public_bytes(serialization.Encoding.PEM),
    )
    return load_vendor(vendor.path)


def refresh_crls(vendor: Vendor, clock: Clock | None = None) -> Vendor:
    """Re-issue both CRLs now with the same revoked serials (a vendor does this before nextUpdate)."""
    now = (clock or SystemClock()).now().replace(microsecond=0)
    for stem, issuer, crl in (
        ("root", vendor.root, vendor.root_crl),
        ("intermediate", vendor.intermediate, vendor.intermediate_crl),
    ):
        fresh = make_crl(issuer, [entry.serial_number for entry in crl], now)
        _write_public(vendor.path / f"{stem}.crl", fresh.public_bytes(serialization.Encoding.PEM))
    return load_vendor(vendor.path)


def local_verifier(
    vendor: Vendor,
    measurements: Sequence[bytes] | Mapping[str, bytes],
    policy: Policy,
    clock: Clock,
    signing_key: SigningKey | None = None,
    reference_lifetime: dt.timedelta = dt.timedelta(days=1),
    nonces: NonceRegistry | None = None,
) -> Verifier:
    """A verifier that trusts ``vendor`` (its root pinned) and takes ``measurements`` as the reference values.

    ``measurements`` is either a list of measurements valid for any stage, or a mapping from stage
    label (:func:`~stagewarden.attest.binding.stage_label`) to the one measurement of that stage:
    then a worker appraised for one stage is refused another stage's measurement.

    The reference values are signed on the spot by a throw-away reference value provider key, valid
    from now for ``reference_lifetime``: the caller vouches for them. Without ``signing_key`` the
    verifier's own key is ephemeral too. ``nonces``: the issued nonces to share with an earlier verifier.
    """
    now = clock.now().replace(microsecond=0)
    provider_key = SigningKey.generate()
    if isinstance(measurements, Mapping):
        staged = sorted(measurements.items())
        named = tuple((f"stage-{stage}", value) for stage, value in staged)
        values = ReferenceValues(now, now + reference_lifetime, named, tuple(stage for stage, _ in staged))
    else:
        named = tuple((f"reference-{index}", value) for index, value in enumerate(dict.fromkeys(measurements)))
        values = ReferenceValues(now, now + reference_lifetime, named)
    token = sign_reference_values(values, provider_key)
    return Verifier(
        vendor.endorsements(),
        token,
        provider_key.verify_key,
        policy,
        signing_key or SigningKey.generate(),
        clock,
        nonces,
    )
