"""Intel DCAP quotes (TDX and SGX) verified against Intel's PKI by ``dcap-qvl``, returned as typed data.

:func:`verify_quote` first checks the collateral's validity windows itself (so that a bundle past
its nextUpdate, or not yet issued, is refused with a code of its own), then hands the quote and the
collateral to ``dcap-qvl``. That library checks the PCK certificate chain up to Intel's SGX root CA,
the root and PCK CRLs, the signatures on the TCB info and the QE identity, the quoting enclave's
report, the quote signature over the header and the report body, and matches the platform's TCB
level. Its errors are mapped onto stable :class:`~stagewarden.attest.errors.ErrorCode` values.
Nothing here parses quotes or certificates by hand: the report fields come from ``dcap-qvl``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from typing import Any, Literal

from cryptography import x509

from .errors import AttestError, ErrorCode, FormatError

#: The domain tag of the report data that binds a nonce and a receipt key in DCAP quotes.
DCAP_REPORT_DATA_TAG = b"stagewarden/dcap/report-data/v1\x00"
#: Largest quote accepted, in bytes (real quotes are about 5 KB).
MAX_QUOTE_BYTES = 64 * 1024
#: Largest collateral bundle accepted, in bytes.
MAX_COLLATERAL_BYTES = 2 * 1024 * 1024
#: The fields of a collateral bundle (the JSON form of ``dcap_qvl.QuoteCollateralV3``).
COLLATERAL_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
_OPTIONAL_FIELDS = frozenset({"pck_certificate_chain"})
_NONCE_SIZE = 32
_PUBKEY_SIZE = 32

Tee = Literal["tdx", "sgx"]


def dcap_report_data(nonce: bytes, pubkey: bytes) -> bytes:
    """The 64 bytes of REPORTDATA that bind a verifier nonce and a worker's Ed25519 receipt key in a quote.

    ``SHA-512(DCAP_REPORT_DATA_TAG || nonce || pubkey)``: the construction of the simulated evidence
    with a tag of its own, so that report data made for one kind of evidence never answers the other.
    """
    if len(nonce) != _NONCE_SIZE:
        raise ValueError(f"nonce must be {_NONCE_SIZE} bytes, not {len(nonce)}")
    if len(pubkey) != _PUBKEY_SIZE:
        raise ValueError(f"receipt public key must be {_PUBKEY_SIZE} bytes, not {len(pubkey)}")
    return hashlib.sha512(DCAP_REPORT_DATA_TAG + nonce + pubkey).digest()


@dataclasses.dataclass(frozen=True)
class ValidityWindow:
    """When one piece of collateral may be used: ``[issued, next_update)``."""

    what: str
    issued: dt.datetime
    next_update: dt.datetime


@dataclasses.dataclass(frozen=True)
class Collateral:
    """A collateral bundle for one platform: CRLs, TCB info and QE identity with their issuer chains.

    Attributes:
        fields: the bundle as ``dcap-qvl`` reads it (the nine :data:`COLLATERAL_FIELDS`, and the
            PCK certificate chain when the fetcher added it).
        windows: the validity windows of the TCB info, the QE identity and the two CRLs.
        fmspc: the platform family the TCB info describes (hex, upper case).
        tcb_id: the TEE the TCB info describes (``TDX`` or ``SGX``).
    """

    fields: dict[str, str]
    windows: tuple[ValidityWindow, ...]
    fmspc: str
    tcb_id: str

    def to_json(self) -> str:
        """The bundle as JSON text (the collateral file format)."""
        return json.dumps(self.fields, indent=2, sort_keys=True) + "\n"

    def check_window(self, at: dt.datetime) -> None:
        """Refuse the bundle unless ``at`` lies in every window (DCAP_COLLATERAL_NOT_YET_VALID or _EXPIRED)."""
        for window in self.windows:
            if at < window.issued:
                raise AttestError(
                    ErrorCode.DCAP_COLLATERAL_NOT_YET_VALID,
                    f"the {window.what} is issued for {window.issued.isoformat()}, it is {at.isoformat()}",
                )
            if at >= window.next_update:
                raise AttestError(
                    ErrorCode.DCAP_COLLATERAL_EXPIRED,
                    f"the {window.what} passed its nextUpdate at {window.next_update.isoformat()}, "
                    f"it is {at.isoformat()}; fetch fresh collateral",
                )


def _utc(text: Any, what: str) -> dt.datetime:
    if not isinstance(text, str):
        raise FormatError(ErrorCode.COLLATERAL_MALFORMED, f"collateral {what} is not a date string")
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FormatError(ErrorCode.COLLATERAL_MALFORMED, f"collateral {what} {text!r} is not a date") from None
    if when.tzinfo is None:
        raise FormatError(ErrorCode.COLLATERAL_MALFORMED, f"collateral {what} {text!r} has no time zone")
    return when.astimezone(dt.UTC)


def _signed_json(fields: dict[str, str], name: str) -> dict[str, Any]:
    try:
        body = json.loads(fields[name])
    except (ValueError, RecursionError):
        raise FormatError(ErrorCode.COLLATERAL_MALFORMED, f"collateral {name} is not JSON") from None
    if not isinstance(body, dict):
        raise FormatError(ErrorCode.COLLATERAL_MALFORMED, f"collateral {name} is not a JSON object")
    return body


def _crl_window(fields: dict[str, str], name: str, what: str) -> ValidityWindow:
    try:
        crl = x509.load_der_x509_crl(bytes.fromhex(fields[name]))
    except ValueError:
        raise FormatError(ErrorCode.COLLATERAL_MALFORMED, f"collateral {name} is not a hex DER CRL") from None
    if crl.next_update_utc is None:
        raise FormatError(ErrorCode.COLLATERAL_MALFORMED, f"collateral {name} has no nextUpdate")
    return ValidityWindow(what, crl.last_update_utc, crl.next_update_utc)


def parse_collateral(data: bytes) -> Collateral:
    """Parse a collateral file (the JSON of ``dcap_qvl.QuoteCollateralV3``); raise
    :class:`~stagewarden.attest.errors.FormatError` (COLLATERAL_MALFORMED) if it is not one.

    Only the shape and the dates are read here; every signature is checked by :func:`verify_quote`.
    """
    bad = ErrorCode.COLLATERAL_MALFORMED
    if len(data) > MAX_COLLATERAL_BYTES:
        raise FormatError(bad, f"collateral is larger than {MAX_COLLATERAL_BYTES} bytes")
    try:
        loaded = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(bad, f"collateral is not JSON: {exc}") from None
    if not isinstance(loaded, dict):
        raise FormatError(bad, "collateral must be a JSON object")
    missing = [name for name in COLLATERAL_FIELDS if name not in loaded]
    unknown = sorted(set(loaded) - set(COLLATERAL_FIELDS) - _OPTIONAL_FIELDS)
    if missing or unknown:
        raise FormatError(bad, f"collateral fields differ from the bundle's (missing {missing}, unknown {unknown})")
    if not all(isinstance(value, str) for value in loaded.values()):
        raise FormatError(bad, "every collateral field must be a string")
    fields: dict[str, str] = dict(loaded)
    tcb_info = _signed_json(fields, "tcb_info")
    qe_identity = _signed_json(fields, "qe_identity")
    windows = (
        ValidityWindow(
            "TCB info",
            _utc(tcb_info.get("issueDate"), "TCB info issueDate"),
            _utc(tcb_info.get("nextUpdate"), "TCB info nextUpdate"),
        ),
        ValidityWindow(
            "QE identity",
            _utc(qe_identity.get("issueDate"), "QE identity issueDate"),
            _utc(qe_identity.get("nextUpdate"), "QE identity nextUpdate"),
        ),
        _crl_window(fields, "root_ca_crl", "root CA CRL"),
        _crl_window(fields, "pck_crl", "PCK CRL"),
    )
    fmspc, tcb_id = tcb_info.get("fmspc"), tcb_info.get("id", "SGX")
    if not isinstance(fmspc, str) or not isinstance(tcb_id, str):
        raise FormatError(bad, "collateral TCB info lacks its fmspc or id")
    try:
        import dcap_qvl

        dcap_qvl.QuoteCollateralV3.from_json(json.dumps(fields))
    except (ValueError, TypeError) as exc:
        raise FormatError(bad, f"collateral is not accepted by dcap-qvl: {exc}") from None
    return Collateral(fields, windows, fmspc.upper(), tcb_id)


@dataclasses.dataclass(frozen=True)
class QuoteReport:
    """The attested fields of a quote's report body.

    Attributes:
        tee: ``tdx`` or ``sgx``.
        measurements: hex digests by name: ``mrtd`` and ``rtmr0`` to ``rtmr3`` (with ``mrseam``,
            ``mrconfigid``, ``mrowner`` and ``mrownerconfig``) for TDX; ``mrenclave`` and ``mrsigner`` for SGX.
        report_data: the 64 bytes of REPORTDATA.
        attributes: the TD attributes (TDX, 8 bytes) or enclave attributes (SGX, 16 bytes).
        debug: whether the TD or enclave runs in debug mode (its memory is open to the host).
    """

    tee: Tee
    measurements: dict[str, str]
    report_data: bytes
    attributes: bytes
    debug: bool


#: TDX TDATTRIBUTES bit 0 (DEBUG); SGX ATTRIBUTES.FLAGS bit 1 (DEBUG). Both fields are little endian.
_TDX_DEBUG_BIT = 0
_SGX_DEBUG_BIT = 1


def report_from_body(tee: Tee, body: Any) -> QuoteReport:
    """Build a :class:`QuoteReport` from a report body as ``dcap-qvl`` parses it (TD report or enclave report)."""
    if tee == "tdx":
        measurements = {
            "mrtd": bytes(body.mr_td).hex(),
            "rtmr0": bytes(body.rt_mr0).hex(),
            "rtmr1": bytes(body.rt_mr1).hex(),
            "rtmr2": bytes(body.rt_mr2).hex(),
            "rtmr3": bytes(body.rt_mr3).hex(),
            "mrseam": bytes(body.mr_seam).hex(),
            "mrconfigid": bytes(body.mr_config_id).hex(),
            "mrowner": bytes(body.mr_owner).hex(),
            "mrownerconfig": bytes(body.mr_owner_config).hex(),
        }
        attributes = bytes(body.td_attributes)
        bit = _TDX_DEBUG_BIT
    else:
        measurements = {"mrenclave": bytes(body.mr_enclave).hex(), "mrsigner": bytes(body.mr_signer).hex()}
        attributes = bytes(body.attributes)
        bit = _SGX_DEBUG_BIT
    flags = int.from_bytes(attributes[:8], "little")
    return QuoteReport(tee, measurements, bytes(body.report_data), attributes, bool(flags >> bit & 1))


def parse_quote(quote: bytes) -> QuoteReport:
    """The report body of ``quote``, parsed by ``dcap-qvl`` but NOT verified (for display and for
    reading what a quote claims); raise AttestError (DCAP_QUOTE_MALFORMED) when it does not parse."""
    import dcap_qvl

    if len(quote) > MAX_QUOTE_BYTES:
        raise AttestError(ErrorCode.DCAP_QUOTE_MALFORMED, f"quote is larger than {MAX_QUOTE_BYTES} bytes")
    try:
        parsed = dcap_qvl.parse_quote(quote)
        tee: Tee = "tdx" if parsed.is_tdx() else "sgx"
        return report_from_body(tee, parsed.report)
    except (ValueError, TypeError, AttributeError) as exc:
        raise AttestError(ErrorCode.DCAP_QUOTE_MALFORMED, f"the quote does not parse: {_first_line(exc)}") from None
    except BaseException as exc:  # a Rust panic surfaces as pyo3's PanicException, a BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise AttestError(ErrorCode.DCAP_QUOTE_MALFORMED, "the quote does not parse (the parser panicked)") from None


@dataclasses.dataclass(frozen=True)
class VerifiedQuote:
    """A quote whose signatures chain to Intel's root CA under the given collateral.

    Attributes:
        report: the attested report body.
        status: the TCB status ``dcap-qvl`` matched (``UpToDate``, ``SWHardeningNeeded``, ...).
        advisories: the Intel security advisory ids of that TCB level.
        fmspc: the platform family (from the collateral whose FMSPC the quote's PCK certificate matched).
        verified_at: the instant the quote was verified at.
    """

    report: QuoteReport
    status: str
    advisories: tuple[str, ...]
    fmspc: str
    verified_at: dt.datetime


# dcap-qvl's error texts, first match wins: more specific phrases come before the general ones.
_DCAP_ERRORS: tuple[tuple[str, ErrorCode], ...] = (
    ("Failed to decode quote", ErrorCode.DCAP_QUOTE_MALFORMED),
    ("Unsupported DCAP", ErrorCode.DCAP_QUOTE_MALFORMED),
    ("Invalid TEE type", ErrorCode.DCAP_QUOTE_MALFORMED),
    ("Invalid QE auth data length", ErrorCode.DCAP_QUOTE_MALFORMED),
    # an undecodable TCB info or QE identity: the cause lists every status name, "Revoked" among them
    ("Failed to decode TcbInfo", ErrorCode.DCAP_COLLATERAL_INVALID),
    ("Failed to decode QeIdentity", ErrorCode.DCAP_COLLATERAL_INVALID),
    ("issue date is in the future", ErrorCode.DCAP_COLLATERAL_NOT_YET_VALID),
    ("TCB status is invalid", ErrorCode.DCAP_TCB_STATUS),
    ("Revoked", ErrorCode.DCAP_CERT_REVOKED),
    ("certificate chain", ErrorCode.DCAP_CERT_CHAIN),
    ("PCK certificate", ErrorCode.DCAP_CERT_CHAIN),
    ("Failed to parse certificate", ErrorCode.DCAP_CERT_CHAIN),
    ("TCBInfo expired", ErrorCode.DCAP_COLLATERAL_EXPIRED),
    ("Collateral expired", ErrorCode.DCAP_COLLATERAL_EXPIRED),
    ("QE Identity expired", ErrorCode.DCAP_COLLATERAL_EXPIRED),
    ("revocation list expired", ErrorCode.DCAP_COLLATERAL_EXPIRED),
    ("Fmspc mismatch", ErrorCode.DCAP_COLLATERAL_MISMATCH),
    ("with non-", ErrorCode.DCAP_COLLATERAL_MISMATCH),
    ("for the quote TEE type", ErrorCode.DCAP_COLLATERAL_MISMATCH),
    ("for tcb_info", ErrorCode.DCAP_COLLATERAL_INVALID),
    ("for qe_identity", ErrorCode.DCAP_COLLATERAL_INVALID),
    ("CRL", ErrorCode.DCAP_COLLATERAL_INVALID),
    ("TCB Info", ErrorCode.DCAP_COLLATERAL_INVALID),
    ("QE Identity", ErrorCode.DCAP_COLLATERAL_INVALID),
    ("qe_report", ErrorCode.DCAP_QE_REPORT),
    ("QE report", ErrorCode.DCAP_QE_REPORT),
    ("QE vendor", ErrorCode.DCAP_QE_REPORT),
    ("QE MRSIGNER", ErrorCode.DCAP_QE_REPORT),
    ("QE ISVPRODID", ErrorCode.DCAP_QE_REPORT),
    ("ISV enclave report signature", ErrorCode.DCAP_QUOTE_SIGNATURE),
    ("No matching TCB level", ErrorCode.DCAP_TCB_NO_MATCH),
)


def classify_dcap_error(message: str) -> ErrorCode:
    """The stable code of a ``dcap-qvl`` verification error (DCAP_VERIFY_FAILED when none matches)."""
    for phrase, code in _DCAP_ERRORS:
        if phrase in message:
            return code
    return ErrorCode.DCAP_VERIFY_FAILED


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().removeprefix("Verification failed: ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "Caused by:"]
    return "; ".join(lines)[:300] or type(exc).__name__


def verify_quote(quote: bytes, collateral: Collateral, at: dt.datetime) -> VerifiedQuote:
    """Verify ``quote`` against Intel's PKI with ``collateral`` at instant ``at``.

    Raises:
        AttestError: DCAP_QUOTE_MALFORMED, DCAP_COLLATERAL_NOT_YET_VALID or _EXPIRED, or the code of
            the check ``dcap-qvl`` failed (see :func:`classify_dcap_error`).
    """
    import dcap_qvl

    report = parse_quote(quote)
    collateral.check_window(at)
    seconds = int(at.timestamp())
    try:
        verified = dcap_qvl.verify(quote, dcap_qvl.QuoteCollateralV3.from_json(json.dumps(collateral.fields)), seconds)
    except (ValueError, RuntimeError, TypeError) as exc:
        message = _first_line(exc)
        raise AttestError(classify_dcap_error(str(exc)), f"dcap-qvl refused the quote: {message}") from None
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise AttestError(ErrorCode.DCAP_VERIFY_FAILED, "dcap-qvl panicked while verifying the quote") from None
    return VerifiedQuote(
        report=report,
        status=str(verified.status),
        advisories=tuple(str(a) for a in verified.advisory_ids),
        fmspc=collateral.fmspc,
        verified_at=at,
    )
