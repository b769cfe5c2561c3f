"""Evidence of the SIMULATED TEE: a versioned binary report signed by a device key, and its strict parser.

Layout (big-endian, fixed offsets up to the certificate chain)::

    offset  size  field
         0     8  magic b"SWSIMTEE" (stagewarden SIMulated TEE)
         8     2  version (u16, 1)
        10    16  hardware model (printable ASCII, NUL-padded)
        26    32  device id (ASCII [A-Za-z0-9._-], NUL-padded)
        58     8  TCB SVNs (4 x u16: bootloader, firmware, security monitor, TEE OS)
        66     8  attributes (u64; bit 0 debug, every other bit reserved and zero)
        74    32  launch measurement (see :func:`measure_stage`)
       106    64  report data (see :func:`report_data`)
       170     1  certificate count (1..4; the verifier wants exactly 2)
       171        per certificate: u16 length (1..4096) then DER
         .     2  signature length (u16, 1..144)
         .     .  signature: ECDSA-SHA256 (DER) by the device key over every byte before the signature length

No trailing byte is accepted. The chain is ``[device, intermediate]``; the root is pinned by the
verifier and must not be included.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from .errors import ErrorCode, FormatError

MAGIC = b"SWSIMTEE"
VERSION = 1
#: Name of the format; says that it comes from a simulation.
FORMAT_NAME = "stagewarden SIMULATED TEE evidence (SWSIMTEE v1)"
HARDWARE_MODEL_SIZE = 16
DEVICE_ID_SIZE = 32
SVN_COMPONENTS = ("bootloader", "firmware", "security_monitor", "tee_os")
ATTRIBUTE_DEBUG = 1 << 0
ATTRIBUTES_DEFINED = ATTRIBUTE_DEBUG
MEASUREMENT_SIZE = 32
REPORT_DATA_SIZE = 64
NONCE_SIZE = 32
PUBKEY_SIZE = 32
MAX_CERTS = 4
MAX_CERT_SIZE = 4096
MAX_SIGNATURE_SIZE = 144
HEADER_SIZE = 170
MAX_EVIDENCE_SIZE = HEADER_SIZE + 1 + MAX_CERTS * (2 + MAX_CERT_SIZE) + 2 + MAX_SIGNATURE_SIZE

REPORT_DATA_TAG = b"stagewarden/simulated-tee/report-data/v1\x00"
MEASURE_TAG = b"stagewarden/simulated-tee/measure/v1/"
_DEVICE_ID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def report_data(nonce: bytes, pubkey: bytes) -> bytes:
    """The 64 bytes of report data that bind a verifier nonce and a worker's Ed25519 receipt key.

    ``SHA-512(REPORT_DATA_TAG || nonce || pubkey)``, with a 32-byte nonce and a 32-byte key (so the
    concatenation is unambiguous).
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, not {len(nonce)}")
    if len(pubkey) != PUBKEY_SIZE:
        raise ValueError(f"receipt public key must be {PUBKEY_SIZE} bytes, not {len(pubkey)}")
    return hashlib.sha512(REPORT_DATA_TAG + nonce + pubkey).digest()


def measure_stage(code: bytes, config: bytes, weights: bytes) -> bytes:
    """The launch measurement of a stage: an extend chain over its code, model config and initial weights shard.

    ``m0 = 32 zero bytes``; for each component ``c`` named ``label`` in the order code, config,
    weights: ``m = SHA-256(m || SHA-256(MEASURE_TAG || label || 0x00 || c))``.
    """
    measurement = bytes(MEASUREMENT_SIZE)
    for label, component in ((b"code", code), (b"config", config), (b"weights", weights)):
        digest = hashlib.sha256(MEASURE_TAG + label + b"\x00" + component).digest()
        measurement = hashlib.sha256(measurement + digest).digest()
    return measurement


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is 1 to 32 characters of ``[A-Za-z0-9._-]``; raise ValueError otherwise."""
    raw = device_id.encode("ascii", "replace")
    if not device_id.isascii() or not 1 <= len(raw) <= DEVICE_ID_SIZE or not set(raw) <= _DEVICE_ID_CHARS:
        raise ValueError(f"device id must be 1 to {DEVICE_ID_SIZE} characters of A-Z a-z 0-9 . _ -, not {device_id!r}")
    return device_id


def check_hardware_model(model: str) -> str:
    """Return ``model`` if it is 1 to 16 printable ASCII characters; raise ValueError otherwise."""
    raw = model.encode("ascii", "replace")
    if not model.isascii() or not 1 <= len(raw) <= HARDWARE_MODEL_SIZE or not all(0x21 <= b <= 0x7E for b in raw):
        raise ValueError(f"hardware model must be 1 to {HARDWARE_MODEL_SIZE} printable ASCII characters, not {model!r}")
    return model


@dataclasses.dataclass(frozen=True)
class Evidence:
    """Parsed evidence. ``signed_bytes`` is exactly what the device key signed."""

    version: int
    hardware_model: str
    device_id: str
    svns: tuple[int, ...]
    attributes: int
    measurement: bytes
    report_data: bytes
    chain: tuple[x509.Certificate, ...]
    signature: bytes
    signed_bytes: bytes

    @property
    def debug(self) -> bool:
        """Whether the debug attribute (bit 0) is set."""
        return bool(self.attributes & ATTRIBUTE_DEBUG)

    @property
    def reserved_attributes(self) -> int:
        """The reserved attribute bits that are set (must be zero)."""
        return self.attributes & ~ATTRIBUTES_DEFINED

    def to_json(self) -> dict[str, object]:
        """A JSON-ready description (for display)."""
        return {
            "format": FORMAT_NAME,
            "simulated": True,
            "version": self.version,
            "hardware_model": self.hardware_model,
            "device_id": self.device_id,
            "svns": dict(zip(SVN_COMPONENTS, self.svns, strict=True)),
            "attributes": f"0x{self.attributes:016x}",
            "debug": self.debug,
            "reserved_attributes": f"0x{self.reserved_attributes:016x}",
            "measurement": self.measurement.hex(),
            "report_data": self.report_data.hex(),
            "chain": [
                {
                    "subject": c.subject.rfc4514_string(),
                    "issuer": c.issuer.rfc4514_string(),
                    "serial": f"{c.serial_number:x}",
                    "not_before": c.not_valid_before_utc.isoformat(),
                    "not_after": c.not_valid_after_utc.isoformat(),
                }
                for c in self.chain
            ],
            "signature": self.signature.hex(),
        }


def _fixed_text(raw: bytes, what: str) -> str:
    text = raw.rstrip(b"\x00")
    if not text or b"\x00" in text:
        raise FormatError(ErrorCode.EVIDENCE_MALFORMED, f"evidence {what} must be non-empty text padded with NUL bytes")
    return text.decode("latin-1")


def _touch_certificate(cert: x509.Certificate) -> None:
    """Decode every field the verifier will read, so that lazy decoding errors surface while parsing."""
    _ = (cert.issuer, cert.subject, cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc)
    _ = (cert.signature, cert.tbs_certificate_bytes, cert.signature_algorithm_oid, cert.public_key())
    for _ext in cert.extensions:
        pass
    if cert.public_bytes(Encoding.DER) is None:  # pragma: no cover - never None
        raise ValueError("no DER")


def parse_evidence(data: bytes) -> Evidence:
    """Parse evidence bytes strictly; raise :class:`~stagewarden.attest.errors.FormatError`
    (EVIDENCE_MALFORMED or EVIDENCE_VERSION).

    Every length is bounded, every field must be in range and no trailing byte is accepted. The
    signature and the certificates are not checked here (the verifier does that).
    """
    bad = ErrorCode.EVIDENCE_MALFORMED
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError(bad, "evidence must be bytes")
    data = bytes(data)
    if len(data) > MAX_EVIDENCE_SIZE:
        raise FormatError(bad, f"evidence is {len(data)} bytes, more than the {MAX_EVIDENCE_SIZE} allowed")
    if data[: len(MAGIC)] != MAGIC:
        raise FormatError(bad, f"evidence does not start with the magic {MAGIC!r} of the simulated TEE")
    if len(data) < len(MAGIC) + 2:
        raise FormatError(bad, "evidence is truncated before its version")
    (version,) = struct.unpack_from(">H", data, 8)
    if version != VERSION:
        raise FormatError(
            ErrorCode.EVIDENCE_VERSION, f"evidence version {version} is not supported (expected {VERSION})"
        )
    if len(data) < HEADER_SIZE + 1:
        raise FormatError(bad, f"evidence is truncated: {len(data)} bytes, the fixed header alone is {HEADER_SIZE + 1}")
    model = _fixed_text(data[10:26], "hardware model")
    device_id = _fixed_text(data[26:58], "device id")
    try:
        check_hardware_model(model)
        check_device_id(device_id)
    except ValueError as exc:
        raise FormatError(bad, f"evidence {exc}") from None
    svns = struct.unpack_from(">4H", data, 58)
    (attributes,) = struct.unpack_from(">Q", data, 66)
    measurement = data[74:106]
    rdata = data[106:170]
    count = data[170]
    if not 1 <= count <= MAX_CERTS:
        raise FormatError(bad, f"evidence certificate count {count} is not between 1 and {MAX_CERTS}")
    offset = HEADER_SIZE + 1
    chain: list[x509.Certificate] = []
    for index in range(count):
        if offset + 2 > len(data):
            raise FormatError(bad, f"evidence is truncated in the length of certificate {index}")
        (size,) = struct.unpack_from(">H", data, offset)
        offset += 2
        if not 1 <= size <= MAX_CERT_SIZE:
            raise FormatError(bad, f"evidence certificate {index} length {size} is not between 1 and {MAX_CERT_SIZE}")
        if offset + size > len(data):
            raise FormatError(bad, f"evidence is truncated in certificate {index}")
        der = data[offset : offset + size]
        offset += size
        try:
            cert = x509.load_der_x509_certificate(der)
            _touch_certificate(cert)
        except Exception as exc:  # cryptography raises ValueError and a few others for bad DER
            raise FormatError(
                bad, f"evidence certificate {index} is not a valid DER X.509 certificate ({type(exc).__name__})"
            ) from None
        chain.append(cert)
    signed = data[:offset]
    if offset + 2 > len(data):
        raise FormatError(bad, "evidence is truncated in the signature length")
    (sig_size,) = struct.unpack_from(">H", data, offset)
    offset += 2
    if not 1 <= sig_size <= MAX_SIGNATURE_SIZE:
        raise FormatError(bad, f"evidence signature length {sig_size} is not between 1 and {MAX_SIGNATURE_SIZE}")
    if offset + sig_size > len(data):
        raise FormatError(bad, "evidence is truncated in the signature")
    signature = data[offset : offset + sig_size]
    offset += sig_size
    if offset != len(data):
        raise FormatError(bad, f"evidence has {len(data) - offset} trailing bytes after the signature")
    return Evidence(
        version, model, device_id, tuple(svns), attributes, measurement, rdata, tuple(chain), signature, signed
    )


def encode_body(
    *,
    hardware_model: str,
    device_id: str,
    svns: tuple[int, ...],
    attributes: int,
    measurement: bytes,
    report_data: bytes,
    chain: tuple[x509.Certificate, ...] | list[x509.Certificate],
) -> bytes:
    """The signed part of evidence (everything before the signature length)."""
    check_hardware_model(hardware_model)
    check_device_id(device_id)
    if len(svns) != len(SVN_COMPONENTS) or not all(0 <= s <= 0xFFFF for s in svns):
        raise ValueError(f"svns must be {len(SVN_COMPONENTS)} integers from 0 to 65535")
    if not 0 <= attributes < 2**64:
        raise ValueError("attributes must fit in 64 bits")
    if len(measurement) != MEASUREMENT_SIZE or len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"measurement must be {MEASUREMENT_SIZE} bytes and report data {REPORT_DATA_SIZE}")
    if not 1 <= len(chain) <= MAX_CERTS:
        raise ValueError(f"the chain must hold 1 to {MAX_CERTS} certificates")
    out = bytearray(MAGIC)
    out += struct.pack(">H", VERSION)
    out += hardware_model.encode("ascii").ljust(HARDWARE_MODEL_SIZE, b"\x00")
    out += device_id.encode("ascii").ljust(DEVICE_ID_SIZE, b"\x00")
    out += struct.pack(">4H", *svns)
    out += struct.pack(">Q", attributes)
    out += measurement + report_data
    out.append(len(chain))
    for cert in chain:
        der = cert.public_bytes(Encoding.DER)
        if len(der) > MAX_CERT_SIZE:
            raise ValueError("certificate too large")
        out += struct.pack(">H", len(der)) + der
    return bytes(out)


def sign_body(body: bytes, device_key: ec.EllipticCurvePrivateKey) -> bytes:
    """Append the device key's ECDSA-SHA256 signature (length-prefixed) to ``body``."""
    signature = device_key.sign(body, ec.ECDSA(hashes.SHA256()))
    return body + struct.pack(">H", len(signature)) + signature


def build_evidence(
    *,
    device_key: ec.EllipticCurvePrivateKey,
    chain: tuple[x509.Certificate, ...] | list[x509.Certificate],
    hardware_model: str,
    device_id: str,
    svns: tuple[int, ...],
    measurement: bytes,
    nonce: bytes,
    pubkey: bytes,
    debug: bool = False,
) -> bytes:
    """Produce signed evidence as the simulated TEE does: report data binds ``nonce`` and ``pubkey``."""
    body = encode_body(
        hardware_model=hardware_model,
        device_id=device_id,
        svns=svns,
        attributes=ATTRIBUTE_DEBUG if debug else 0,
        measurement=measurement,
        report_data=report_data(nonce, pubkey),
        chain=chain,
    )
    return sign_body(body, device_key)
