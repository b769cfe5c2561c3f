"""The verifier (RFC 9334 role): appraises SIMULATED TEE evidence and signs attestation results.

:meth:`Verifier.appraise_evidence` runs its checks in a fixed order and fails closed: the first
failed check raises :class:`~stagewarden.attest.errors.AttestError` with its code. Conditions that the policy accepts as
warnings are recorded in the result instead. Nonces are single use and are consumed when
appraisal reaches the nonce check, that is, once the evidence is known to be signed by a
genuine, unrevoked device: forged bytes cannot burn an honest worker's nonce, and evidence that a
device did sign for a nonce cannot be replayed later, whatever the later checks say.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID
from nacl.signing import SigningKey, VerifyKey

from .clock import Clock
from .collateral import Endorsements, ReferenceValues, TcbInfo, TcbStatus, open_reference_values, open_tcb_info
from .errors import AttestError, ErrorCode
from .evidence import PUBKEY_SIZE, Evidence, parse_evidence, report_data
from .nonces import NonceRegistry
from .pki import CA_CURVE, DEVICE_CURVE, name_attribute
from .policy import Policy
from .result import AttestationResult, Status, sign_result
from .token import key_id

#: Names of the appraisal checks, in the order they run (the ``checks`` claim of a result).
CHECKS = (
    "parse",
    "chain",
    "certificates",
    "revocation",
    "evidence_signature",
    "nonce",
    "key_binding",
    "collateral",
    "tcb_level",
    "attributes",
    "measurement",
)
#: Signature algorithms accepted on certificates and CRLs (the simulated vendor uses ECDSA).
_SIGNATURE_OIDS = frozenset(
    {
        SignatureAlgorithmOID.ECDSA_WITH_SHA256,
        SignatureAlgorithmOID.ECDSA_WITH_SHA384,
        SignatureAlgorithmOID.ECDSA_WITH_SHA512,
    }
)
#: Extensions this verifier processes; any other extension marked critical makes it refuse the
#: certificate (RFC 5280, 4.2: a critical extension that is not understood must be rejected).
KNOWN_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)
_E = ErrorCode


@dataclasses.dataclass(frozen=True)
class Appraisal:
    """What :meth:`Verifier.appraise_evidence` returns: the result and the signed token of it."""

    result: AttestationResult
    token: bytes


def _fail(code: ErrorCode, message: str) -> AttestError:
    return AttestError(code, message)


def _describe(cert: x509.Certificate) -> str:
    cn = name_attribute(cert.subject, NameOID.COMMON_NAME)
    return repr(cn) if cn else repr(cert.subject.rfc4514_string())


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def _aki(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes | None:
    try:
        return obj.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def check_vendor_chain(
    evidence: Evidence, roots: Sequence[x509.Certificate], now: dt.datetime
) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """Check the evidence's chain against the pinned ``roots`` at ``now``; return root, intermediate, device.

    Runs the ``chain`` and ``certificates`` checks (without revocation, which needs CRLs).
    """
    root, intermediate, device = _check_chain(evidence, roots)
    for issuer, cert, is_ca in ((root, root, True), (root, intermediate, True), (intermediate, device, False)):
        _check_certificate(cert, issuer, is_ca, now, self_signed=cert is issuer)
    return root, intermediate, device


def _check_chain(
    evidence: Evidence, roots: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    chain = evidence.chain
    if len(chain) != 2:
        raise _fail(
            _E.CHAIN_SHAPE,
            f"the chain must be [device, intermediate] (2 certificates, no root), found {len(chain)}",
        )
    device, intermediate = chain
    for cert in chain:
        if cert.issuer == cert.subject:
            raise _fail(
                _E.CHAIN_SHAPE,
                f"the chain carries a self-signed certificate {_describe(cert)}; the root is pinned, not sent",
            )
    aki = _aki(intermediate)
    for root in roots:
        if intermediate.issuer == root.subject and aki is not None and aki == _ski(root):
            return root, intermediate, device
    raise _fail(
        _E.CHAIN_ANCHOR,
        f"the intermediate {_describe(intermediate)} is not issued by a pinned root (issuer name and key identifier)",
    )


def check_critical_extensions(cert: x509.Certificate, what: str) -> None:
    """Raise CERT_CRITICAL_EXTENSION when ``cert`` carries a critical extension not in :data:`KNOWN_EXTENSIONS`."""
    try:
        extensions = list(cert.extensions)
    except ValueError as exc:  # cryptography refuses duplicate or undecodable known extensions
        raise _fail(_E.CERT_CRITICAL_EXTENSION, f"{what} has extensions that do not decode: {exc}") from None
    for extension in extensions:
        if extension.critical and extension.oid not in KNOWN_EXTENSIONS:
            raise _fail(
                _E.CERT_CRITICAL_EXTENSION,
                f"{what} carries critical extension {extension.oid.dotted_string}, which this verifier does not "
                "process (a critical extension that is not understood must be refused)",
            )


def _check_certificate(
    cert: x509.Certificate, issuer: x509.Certificate, is_ca: bool, now: dt.datetime, self_signed: bool
) -> None:
    what = f"certificate {_describe(cert)}"
    check_critical_extensions(cert, what)
    if not self_signed:
        if cert.issuer != issuer.subject:
            raise _fail(
                _E.CERT_ISSUER,
                f"{what} names issuer {cert.issuer.rfc4514_string()!r}, "
                f"but the next certificate up is {issuer.subject.rfc4514_string()!r}",
            )
        if cert.signature_algorithm_oid not in _SIGNATURE_OIDS:
            raise _fail(_E.CERT_SIGNATURE, f"{what} is signed with an algorithm this verifier does not accept")
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
            raise _fail(_E.CERT_SIGNATURE, f"{what} signature does not verify under {_describe(issuer)}") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise _fail(_E.CERT_CA_FLAGS, f"{what} lacks basicConstraints or keyUsage") from None
    if is_ca:
        if not constraints.ca or not usage.key_cert_sign or not usage.crl_sign:
            raise _fail(_E.CERT_CA_FLAGS, f"{what} is used as a CA but is not a CA with keyCertSign and cRLSign")
    elif constraints.ca or usage.key_cert_sign or usage.crl_sign or not usage.digital_signature:
        raise _fail(
            _E.CERT_CA_FLAGS,
            f"{what} is used as the device (end-entity) certificate but is flagged as a CA or lacks digitalSignature",
        )
    key = cert.public_key()
    curve = CA_CURVE if is_ca else DEVICE_CURVE
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
        raise _fail(_E.CERT_KEY_TYPE, f"{what} key must be ECDSA {curve.name}")
    if now < cert.not_valid_before_utc:
        raise _fail(
            _E.CERT_NOT_YET_VALID,
            f"{what} is valid from {cert.not_valid_before_utc.isoformat()}, it is {now.isoformat()}",
        )
    if now >= cert.not_valid_after_utc:
        raise _fail(
            _E.CERT_EXPIRED, f"{what} expired at {cert.not_valid_after_utc.isoformat()}, it is {now.isoformat()}"
        )


def check_evidence_signature(evidence: Evidence, device: x509.Certificate) -> None:
    """Check the device key's signature over ``evidence`` and that the evidence names the device of ``device``."""
    key = device.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # checked by _check_certificate
    try:
        key.verify(evidence.signature, evidence.signed_bytes, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise _fail(
            _E.EVIDENCE_SIGNATURE,
            f"the evidence signature does not verify under the device key of {_describe(device)}",
        ) from None
    if name_attribute(device.subject, NameOID.SERIAL_NUMBER) != evidence.device_id:
        raise _fail(
            _E.DEVICE_MISMATCH,
            f"evidence names device {evidence.device_id!r}, its certificate is for another device",
        )
    if name_attribute(device.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) != evidence.hardware_model:
        raise _fail(
            _E.DEVICE_MISMATCH,
            f"evidence names hardware model {evidence.hardware_model!r}, its certificate another",
        )


def _check_measurement(references: ReferenceValues, measurement: bytes, stage: str | None) -> str | None:
    """Appraise ``measurement`` against the reference values of ``stage``; return the stage the result names."""
    if references.name_of(measurement, stage) is not None:
        if stage is not None:
            return stage
        bound = references.stages_of(measurement)
        return bound[0] if len(bound) == 1 else None
    elsewhere = references.stages_of(measurement)
    if elsewhere:
        raise _fail(
            _E.MEASUREMENT_WRONG_STAGE,
            f"measurement {measurement.hex()} is a reference value of stage {', '.join(elsewhere)}, "
            f"not of stage {stage}",
        )
    raise _fail(_E.MEASUREMENT_MISMATCH, f"measurement {measurement.hex()} is not among the reference values")


class Verifier:
    """Appraises evidence against pinned roots, endorsements, reference values and a policy.

    Args:
        endorsements: pinned roots, CRLs, the TCB-signing certificate and TCB info tokens.
        reference_values: the reference values token.
        reference_key: the pinned Ed25519 key of the reference value provider.
        policy: the appraisal policy.
        signing_key: the verifier's own Ed25519 key; it signs attestation results.
        clock: the verifier's clock.
        nonces: the registry of issued nonces to share (a verifier rebuilt with fresh endorsements
            keeps accepting the nonces its predecessor issued); default: a new one.
    """

    def __init__(
        self,
        endorsements: Endorsements,
        reference_values: bytes,
        reference_key: VerifyKey,
        policy: Policy,
        signing_key: SigningKey,
        clock: Clock,
        nonces: NonceRegistry | None = None,
    ) -> None:
        if not endorsements.roots:
            raise ValueError("a verifier needs at least one pinned root")
        self.endorsements = endorsements
        self.reference_values = reference_values
        self.reference_key = reference_key
        self.policy = policy
        self.signing_key = signing_key
        self.clock = clock
        self._nonces = nonces or NonceRegistry(clock, policy.nonce_lifetime_seconds)

    @property
    def verify_key(self) -> VerifyKey:
        """The public key relying parties pin to check results."""
        return self.signing_key.verify_key

    @property
    def nonces(self) -> NonceRegistry:
        """The nonces this verifier issued and those already answered."""
        return self._nonces

    # -- nonces -------------------------------------------------------------------------------

    def issue_nonce(self) -> bytes:
        """A fresh 32-byte nonce, valid for the policy's nonce lifetime and usable once."""
        return self._nonces.issue()

    def register_nonce(self, nonce: bytes) -> None:
        """Record ``nonce`` as issued by this verifier now (for a nonce handed out by another channel)."""
        self._nonces.register(nonce)

    def _consume_nonce(self, nonce: bytes, now: dt.datetime) -> None:
        self._nonces.consume(nonce, now)

    # -- appraisal ----------------------------------------------------------------------------

    def appraise_evidence(
        self,
        data: bytes,
        expected_key: bytes,
        nonce: bytes,
        *,
        stage: str | None = None,
        run_id: str | None = None,
        worker: str | None = None,
    ) -> Appraisal:
        """Appraise evidence that should bind ``nonce`` (issued by this verifier) and ``expected_key``.

        Args:
            data: the evidence bytes.
            expected_key: the worker's 32-byte Ed25519 receipt public key.
            nonce: the nonce this verifier issued to the worker.
            stage: the stage the worker is to hold (see :func:`~stagewarden.attest.binding.stage_label`):
                the measurement must be a reference value of that stage (or of no stage in
                particular), and the result names it. Without it, any stage's reference value
                matches and the result names the stage the matching value is bound to, if any.
            run_id: the run the worker joins, named in the result.
            worker: the worker's id, named in the result.

        Returns:
            The attestation result and its signed token.

        Raises:
            AttestError: the first failed check, with its code (see :data:`CHECKS`).
        """
        if len(expected_key) != PUBKEY_SIZE:
            raise ValueError(f"the expected receipt key is {PUBKEY_SIZE} bytes, not {len(expected_key)}")
        now = self.clock.now()
        outcomes: list[tuple[str, str]] = []

        evidence = parse_evidence(data)
        outcomes.append(("parse", "pass"))
        root, intermediate, device = _check_chain(evidence, self.endorsements.roots)
        outcomes.append(("chain", "pass"))
        for issuer, cert, is_ca in ((root, root, True), (root, intermediate, True), (intermediate, device, False)):
            _check_certificate(cert, issuer, is_ca, now, self_signed=cert is issuer)
        outcomes.append(("certificates", "pass"))
        warnings = self._check_revocation(((root, intermediate), (intermediate, device)), now)
        outcomes.append(("revocation", warnings or "pass"))
        check_evidence_signature(evidence, device)
        outcomes.append(("evidence_signature", "pass"))
        self._consume_nonce(nonce, now)
        outcomes.append(("nonce", "pass"))
        expected = report_data(nonce, expected_key)
        if not hmac.compare_digest(expected, evidence.report_data):
            raise _fail(
                _E.KEY_BINDING,
                "report data does not bind this nonce and receipt key "
                "(the evidence answers another nonce or was made for another key)",
            )
        outcomes.append(("key_binding", "pass"))
        tcb_info, references = self._check_collateral(root, evidence, now)
        outcomes.append(("collateral", "pass"))
        level = tcb_info.level_for(evidence.svns)
        tcb_outcome = "pass"
        if level is None:
            raise _fail(
                _E.TCB_UNKNOWN, f"SVNs {list(evidence.svns)} are below every TCB level of {evidence.hardware_model}"
            )
        if level.status is TcbStatus.REVOKED:
            raise _fail(
                _E.TCB_REVOKED, f"SVNs {list(evidence.svns)} are at a revoked TCB level (minimum {list(level.svns)})"
            )
        if level.status is TcbStatus.OUT_OF_DATE:
            if not self.policy.is_warning(_E.TCB_OUT_OF_DATE):
                raise _fail(
                    _E.TCB_OUT_OF_DATE,
                    f"SVNs {list(evidence.svns)} are at an out-of-date TCB level and the policy rejects it",
                )
            tcb_outcome = str(_E.TCB_OUT_OF_DATE)
        outcomes.append(("tcb_level", tcb_outcome))
        if evidence.debug:
            raise _fail(_E.DEBUG_ENABLED, "the TEE runs in debug mode, so its memory is open to the host")
        if evidence.reserved_attributes:
            raise _fail(
                _E.RESERVED_ATTRIBUTES, f"reserved attribute bits are set: 0x{evidence.reserved_attributes:016x}"
            )
        outcomes.append(("attributes", "pass"))
        bound_stage = _check_measurement(references, evidence.measurement, stage)
        outcomes.append(("measurement", "pass"))

        issued = now.replace(microsecond=0)
        result = AttestationResult(
            status=Status.WARNING if any(o != "pass" for _, o in outcomes) else Status.AFFIRMING,
            checks=tuple(outcomes),
            attested_key=bytes(expected_key),
            nonce=bytes(nonce),
            issued_at=issued,
            expires_at=issued + dt.timedelta(seconds=self.policy.result_lifetime_seconds),
            device_id=evidence.device_id,
            hardware_model=evidence.hardware_model,
            measurement=evidence.measurement.hex(),
            tcb_status=str(level.status),
            verifier_id=key_id(self.verify_key),
            run_id=run_id,
            worker=worker,
            stage=bound_stage,
        )
        return Appraisal(result, sign_result(result, self.signing_key))

    # -- the checks ---------------------------------------------------------------------------

    def _crl_for(self, issuer: x509.Certificate, now: dt.datetime) -> x509.CertificateRevocationList:
        candidates = [crl for crl in self.endorsements.crls if crl.issuer == issuer.subject]
        if not candidates:
            raise _fail(_E.CRL_INVALID, f"no CRL from {_describe(issuer)}; revocation cannot be checked")
        public_key = issuer.public_key()
        genuine = []
        for crl in candidates:
            if crl.signature_algorithm_oid in _SIGNATURE_OIDS and _aki(crl) in (None, _ski(issuer)):
                try:
                    # An issuer key that cannot sign (X25519, X448) makes this raise TypeError, caught below.
                    if crl.is_signature_valid(public_key):  # type: ignore[arg-type]
                        genuine.append(crl)
                except (TypeError, ValueError, UnsupportedAlgorithm):
                    continue
        if not genuine:
            raise _fail(_E.CRL_INVALID, f"the CRL of {_describe(issuer)} is not signed by it")
        # The newest CRL already issued decides: an older one (still within its nextUpdate) may
        # predate a revocation, so whoever supplies the endorsements must not get to pick it.
        issued = [crl for crl in genuine if crl.last_update_utc <= now]
        return max(issued or genuine, key=lambda crl: crl.last_update_utc)

    def _check_revocation(self, pairs: Sequence[tuple[x509.Certificate, x509.Certificate]], now: dt.datetime) -> str:
        warnings: list[str] = []
        margin = dt.timedelta(seconds=self.policy.crl_near_next_update_seconds)
        for issuer, cert in pairs:
            crl = self._crl_for(issuer, now)
            what = f"the CRL of {_describe(issuer)}"
            if now < crl.last_update_utc:
                raise _fail(
                    _E.CRL_NOT_YET_VALID,
                    f"{what} is issued for {crl.last_update_utc.isoformat()}, it is {now.isoformat()}",
                )
            next_update = crl.next_update_utc
            if next_update is None or now >= next_update:
                when = next_update.isoformat() if next_update else "(no nextUpdate)"
                raise _fail(_E.CRL_STALE, f"{what} is stale: nextUpdate {when}, it is {now.isoformat()}")
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise _fail(
                    _E.CERT_REVOKED,
                    f"certificate {_describe(cert)} (serial {cert.serial_number:x}) is revoked by {_describe(issuer)}",
                )
            if margin and next_update - now <= margin:
                if not self.policy.is_warning(_E.CRL_NEAR_NEXT_UPDATE):
                    raise _fail(
                        _E.CRL_NEAR_NEXT_UPDATE,
                        f"{what} reaches nextUpdate at {next_update.isoformat()}, within the policy's margin",
                    )
                if str(_E.CRL_NEAR_NEXT_UPDATE) not in warnings:
                    warnings.append(str(_E.CRL_NEAR_NEXT_UPDATE))
        return ",".join(warnings)

    def _check_collateral(
        self, root: x509.Certificate, evidence: Evidence, now: dt.datetime
    ) -> tuple[TcbInfo, ReferenceValues]:
        signer = self.endorsements.tcb_signing_cert
        self._check_tcb_signer(signer, root, now)
        signer_key = signer.public_key()
        assert isinstance(signer_key, ed25519.Ed25519PublicKey)
        tcb_key = VerifyKey(signer_key.public_bytes_raw())
        infos = [open_tcb_info(token, tcb_key) for token in self.endorsements.tcb_infos]
        matching = [info for info in infos if info.hardware_model == evidence.hardware_model]
        if not matching:
            raise _fail(_E.TCB_UNKNOWN, f"no TCB info for hardware model {evidence.hardware_model!r}")
        # The newest TCB info already issued decides, as for CRLs: an older one may rate a level
        # that a later TCB recovery marked out of date or revoked.
        issued = [info for info in matching if info.issue_date <= now]
        tcb_info = max(issued or matching, key=lambda info: info.issue_date)
        if now < tcb_info.issue_date:
            raise _fail(
                _E.TCB_INFO_NOT_YET_VALID,
                f"TCB info is issued for {tcb_info.issue_date.isoformat()}, it is {now.isoformat()}",
            )
        if now >= tcb_info.next_update:
            raise _fail(_E.TCB_INFO_EXPIRED, f"TCB info passed its next update at {tcb_info.next_update.isoformat()}")
        references = open_reference_values(self.reference_values, self.reference_key)
        if now < references.issued_at:
            raise _fail(
                _E.REFERENCE_NOT_YET_VALID, f"reference values are valid from {references.issued_at.isoformat()}"
            )
        if now >= references.expires_at:
            raise _fail(_E.REFERENCE_EXPIRED, f"reference values expired at {references.expires_at.isoformat()}")
        return tcb_info, references

    def _check_tcb_signer(self, signer: x509.Certificate, root: x509.Certificate, now: dt.datetime) -> None:
        bad = _E.TCB_INFO_INVALID
        what = f"TCB-signing certificate {_describe(signer)}"
        check_critical_extensions(signer, what)
        if signer.issuer != root.subject or _aki(signer) != _ski(root):
            raise _fail(bad, f"{what} is not issued by the pinned root that anchors the evidence")
        try:
            signer.verify_directly_issued_by(root)
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
            raise _fail(bad, f"{what} signature does not verify under the root") from None
        try:
            constraints = signer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            raise _fail(bad, f"{what} lacks basicConstraints") from None
        if constraints.ca or not isinstance(signer.public_key(), ed25519.Ed25519PublicKey):
            raise _fail(bad, f"{what} must be an Ed25519 end-entity certificate")
        if not signer.not_valid_before_utc <= now < signer.not_valid_after_utc:
            raise _fail(bad, f"{what} is not valid at {now.isoformat()}")
        crl = self._crl_for(root, now)
        if crl.get_revoked_certificate_by_serial_number(signer.serial_number) is not None:
            raise _fail(bad, f"{what} is revoked")
