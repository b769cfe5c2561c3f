"""Evidence providers (the attester's side): where a worker gets evidence for a nonce and its receipt key.

* :class:`SimulatedProvider` produces SIMULATED TEE evidence with a device key from the simulated vendor.
* :class:`ConfigfsTsmProvider` asks the Linux configfs-tsm interface (``/sys/kernel/config/tsm/report``)
  for a hardware quote (TDX, SEV-SNP, ...) whose REPORTDATA is
  :func:`~stagewarden.attest.dcap.dcap_report_data`. It returns the raw quote; Intel TDX and SGX
  quotes are appraised by :class:`~stagewarden.attest.dcap_verifier.DcapVerifier`.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from .dcap import dcap_report_data
from .errors import AttestError, ErrorCode
from .evidence import MEASUREMENT_SIZE, REPORT_DATA_SIZE, SVN_COMPONENTS, build_evidence


@runtime_checkable
class EvidenceProvider(Protocol):
    """Something that produces evidence binding a verifier nonce and a worker's receipt key."""

    @property
    def name(self) -> str:
        """A short name of the provider (``simulated``, ``configfs-tsm``, ...)."""
        ...

    def get_evidence(self, nonce: bytes, pubkey: bytes) -> bytes:
        """Evidence whose report data is ``report_data(nonce, pubkey)``."""
        ...


@dataclasses.dataclass(frozen=True)
class DeviceIdentity:
    """A simulated device: its id, hardware model, P-256 key and certificate chain ``[device, intermediate]``."""

    device_id: str
    hardware_model: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    intermediate: x509.Certificate

    @property
    def chain(self) -> tuple[x509.Certificate, x509.Certificate]:
        """The chain carried in evidence."""
        return (self.cert, self.intermediate)


class SimulatedProvider:
    """Evidence from the SIMULATED TEE: the device signs the stage measurement and the report data.

    Args:
        device: the device identity issued by the simulated vendor.
        measurement: the stage's launch measurement (see :func:`~stagewarden.attest.evidence.measure_stage`).
        svns: the device's TCB SVNs.
        debug: whether the simulated TEE runs in debug mode.
    """

    name = "simulated"

    def __init__(
        self, device: DeviceIdentity, measurement: bytes, svns: tuple[int, ...] = (2, 2, 2, 2), debug: bool = False
    ) -> None:
        if len(measurement) != MEASUREMENT_SIZE:
            raise ValueError(f"measurement must be {MEASUREMENT_SIZE} bytes")
        if len(svns) != len(SVN_COMPONENTS):
            raise ValueError(f"svns must have {len(SVN_COMPONENTS)} components")
        self.device = device
        self.measurement = measurement
        self.svns = tuple(svns)
        self.debug = debug

    def get_evidence(self, nonce: bytes, pubkey: bytes) -> bytes:
        """Signed SWSIMTEE evidence for ``nonce`` and ``pubkey``."""
        return build_evidence(
            device_key=self.device.key,
            chain=self.device.chain,
            hardware_model=self.device.hardware_model,
            device_id=self.device.device_id,
            svns=self.svns,
            measurement=self.measurement,
            nonce=nonce,
            pubkey=pubkey,
            debug=self.debug,
        )


#: Where the kernel mounts the configfs-tsm report interface.
TSM_REPORT_ROOT = "/sys/kernel/config/tsm/report"
MAX_OUTBLOB = 1 << 20


class TsmFilesystem:
    """The file operations :class:`ConfigfsTsmProvider` performs; replaced by a fake kernel in tests."""

    def mkdir(self, path: Path) -> None:
        """Create a report entry (the kernel populates its attribute files)."""
        os.mkdir(path)

    def write(self, path: Path, data: bytes) -> None:
        """Write an attribute file in one write call."""
        with open(path, "wb", buffering=0) as handle:
            written = handle.write(data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")

    def read(self, path: Path, limit: int) -> bytes:
        """Read an attribute file (at most ``limit`` bytes)."""
        with open(path, "rb") as handle:
            return handle.read(limit + 1)

    def rmdir(self, path: Path) -> None:
        """Remove a report entry."""
        os.rmdir(path)


class ConfigfsTsmProvider:
    """Hardware evidence through Linux configfs-tsm.

    For each request: create a report entry, write the 64 bytes of report data to ``inblob``, read
    ``generation``, ``provider`` and ``outblob``, read ``generation`` again (a change means another
    writer used the entry concurrently, so the quote may answer someone else's inblob), remove the entry.

    Args:
        root: the report folder (``/sys/kernel/config/tsm/report`` on a real system).
        expected_provider: when given, the ``provider`` the kernel must report (``tdx_guest``, ``sev_guest``).
        fs: the file operations (a fake kernel in tests).
    """

    name = "configfs-tsm"

    def __init__(
        self, root: str | Path = TSM_REPORT_ROOT, expected_provider: str | None = None, fs: TsmFilesystem | None = None
    ) -> None:
        self.root = Path(root)
        self.expected_provider = expected_provider
        self.fs = fs if fs is not None else TsmFilesystem()

    def available(self) -> bool:
        """Whether the report folder exists."""
        return self.root.is_dir()

    def get_evidence(self, nonce: bytes, pubkey: bytes) -> bytes:
        """The raw hardware quote whose report data is ``dcap_report_data(nonce, pubkey)``."""
        inblob = dcap_report_data(nonce, pubkey)
        assert len(inblob) == REPORT_DATA_SIZE
        if not self.available():
            raise AttestError(
                ErrorCode.PROVIDER_UNAVAILABLE,
                f"configfs-tsm report folder {self.root} does not exist (no TEE guest support)",
            )
        entry = self.root / f"stagewarden-{secrets.token_hex(8)}"
        try:
            self.fs.mkdir(entry)
        except OSError as exc:
            raise AttestError(
                ErrorCode.PROVIDER_UNAVAILABLE, f"cannot create a report entry in {self.root}: {exc.strerror or exc}"
            ) from None
        try:
            return self._request(entry, inblob)
        finally:
            try:
                self.fs.rmdir(entry)
            except OSError:
                pass

    def _request(self, entry: Path, inblob: bytes) -> bytes:
        try:
            self.fs.write(entry / "inblob", inblob)
            before = self._generation(entry)
            provider = self.fs.read(entry / "provider", 256).decode("ascii", "replace").strip()
            outblob = self.fs.read(entry / "outblob", MAX_OUTBLOB)
            after = self._generation(entry)
        except OSError as exc:
            raise AttestError(
                ErrorCode.PROVIDER_FAILED, f"configfs-tsm request in {entry} failed: {exc.strerror or exc}"
            ) from None
        if before != after:
            raise AttestError(
                ErrorCode.PROVIDER_FAILED,
                f"report entry {entry} was written concurrently (generation {before} became {after})",
            )
        if self.expected_provider is not None and provider != self.expected_provider:
            raise AttestError(
                ErrorCode.PROVIDER_FAILED, f"configfs-tsm provider is {provider!r}, expected {self.expected_provider!r}"
            )
        if not outblob:
            raise AttestError(ErrorCode.PROVIDER_FAILED, "configfs-tsm returned an empty outblob")
        if len(outblob) > MAX_OUTBLOB:
            raise AttestError(ErrorCode.PROVIDER_FAILED, f"configfs-tsm outblob is larger than {MAX_OUTBLOB} bytes")
        return outblob

    def _generation(self, entry: Path) -> int:
        text = self.fs.read(entry / "generation", 32).decode("ascii", "replace").strip()
        if not text.isdigit():
            raise AttestError(ErrorCode.PROVIDER_FAILED, f"configfs-tsm generation {text!r} is not a number")
        return int(text)
