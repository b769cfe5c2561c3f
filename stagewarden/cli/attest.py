"""``stagewarden attest``: make, inspect and verify SIMULATED TEE evidence files by hand.

A thin shell over :mod:`stagewarden.attest`. ``verify`` exits 0 when the evidence is accepted,
1 when it is rejected (with the failed check's code), 2 for usage errors and missing or
unreadable files; the other commands exit 2 for any bad input.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from stagewarden.cli.common import (
    EXIT_OK,
    EXIT_VIOLATED,
    FORMAT_OPTION,
    POLICY_OPTION,
    VERIFIER_KEY_OPTION,
    BadInput,
    load_verifier_key,
    make_console,
    os_error_message,
    parse_hex,
    print_rows,
)

SIMULATED_NOTE = "SIMULATED TEE (a software model, not real hardware)"
_NOW = click.option(
    "--now",
    metavar="ISO8601",
    default=None,
    help="Use this fixed instant instead of the system clock (UTC if no zone is given).",
)


def _clock(now: str | None) -> Any:
    from stagewarden.attest.clock import FixedClock, SystemClock

    if now is None:
        return SystemClock()
    try:
        instant = dt.datetime.fromisoformat(now)
    except ValueError:
        raise click.BadParameter(f"--now must be an ISO 8601 date and time, got {now!r}") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.UTC)
    return FixedClock(instant)


def _svns(value: str) -> tuple[int, ...]:
    from stagewarden.attest.evidence import SVN_COMPONENTS

    parts = value.split(",")
    try:
        svns = tuple(int(p) for p in parts)
    except ValueError:
        svns = ()
    if len(svns) != len(SVN_COMPONENTS) or not all(0 <= s <= 0xFFFF for s in svns):
        raise click.BadParameter(
            f"--svn must be {len(SVN_COMPONENTS)} comma-separated integers 0..65535 ({', '.join(SVN_COMPONENTS)})"
        )
    return svns


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _load_vendor(directory: str) -> Any:
    from stagewarden.attest.errors import AttestError
    from stagewarden.attest.vendor import load_vendor

    try:
        return load_vendor(directory)
    except AttestError as exc:
        raise BadInput(str(exc)) from None


@click.group()
def attest() -> None:
    """Work with attestation evidence: simulated TEE evidence (a software model) and real Intel TDX/SGX quotes."""


@attest.command()
@click.option(
    "--out", type=click.Path(dir_okay=False), default=None, help="Write the secret key (hex seed, mode 0600) here."
)
def keygen(out: str | None) -> None:
    """Make an Ed25519 receipt key pair; print the public key in hex (32 bytes)."""
    from nacl.signing import SigningKey

    from stagewarden.attest.files import atomic_write_text

    key = SigningKey.generate()
    if out is not None:
        try:
            atomic_write_text(out, bytes(key).hex() + "\n")
        except OSError as exc:
            raise BadInput(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(bytes(key.verify_key).hex())


@attest.command()
def nonce() -> None:
    """Print a fresh random 32-byte nonce in hex."""
    import secrets

    click.echo(secrets.token_hex(32))


@attest.command("init-vendor")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--hardware-model", default="SWSIM-TEE-1", show_default=True, help="Hardware model of the simulated devices."
)
@_NOW
def init_vendor(directory: str, hardware_model: str, now: str | None) -> None:
    """Create a SIMULATED TEE vendor in DIRECTORY: root and intermediate CAs, CRLs, signed TCB info."""
    from stagewarden.attest.errors import AttestError
    from stagewarden.attest.vendor import init_vendor as init

    try:
        vendor = init(directory, _clock(now), hardware_model)
    except AttestError as exc:
        raise BadInput(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except OSError as exc:
        raise BadInput(f"cannot create {directory}: {exc.strerror or exc}") from None
    console = make_console()
    console.print(f"Created a {SIMULATED_NOTE} vendor in {vendor.path}", markup=False)
    console.print(f"  root CA:  {vendor.root.cert.subject.rfc4514_string()}", markup=False)
    console.print(f"  hardware model: {vendor.hardware_model}", markup=False)
    console.print("  private keys are unencrypted, mode 0600; see README.txt", markup=False)


@attest.command("make-evidence")
@click.option(
    "--vendor", "vendor_dir", required=True, type=click.Path(file_okay=False), help="The simulated vendor folder."
)
@click.option(
    "--device-id", required=True, help="Device id (1-32 of A-Z a-z 0-9 . _ -); its certificate is issued on first use."
)
@click.option(
    "--key",
    "key_hex",
    required=True,
    metavar="PUBKEY_HEX",
    help="The worker's Ed25519 receipt public key (32 bytes hex).",
)
@click.option("--nonce", "nonce_hex", required=True, metavar="HEX", help="The verifier's nonce (32 bytes hex).")
@click.option(
    "--measurement",
    "measurement_hex",
    required=True,
    metavar="HEX",
    help="The stage's launch measurement (32 bytes hex).",
)
@click.option("--debug", is_flag=True, help="Claim that the simulated TEE runs in debug mode.")
@click.option(
    "--svn",
    "svn_text",
    default="2,2,2,2",
    show_default=True,
    help="TCB SVNs: bootloader,firmware,security_monitor,tee_os.",
)
@click.option("--hardware-model", default=None, help="Hardware model (default: the vendor's).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the evidence.")
@_NOW
def make_evidence(
    vendor_dir: str,
    device_id: str,
    key_hex: str,
    nonce_hex: str,
    measurement_hex: str,
    debug: bool,
    svn_text: str,
    hardware_model: str | None,
    out: str,
    now: str | None,
) -> None:
    """Write SIMULATED TEE evidence binding NONCE and KEY, signed by a simulated device."""
    from stagewarden.attest.errors import AttestError
    from stagewarden.attest.files import atomic_write_bytes
    from stagewarden.attest.vendor import make_evidence as make

    pubkey = parse_hex(key_hex, 32, "--key")
    nonce_raw = parse_hex(nonce_hex, 32, "--nonce")
    measurement = parse_hex(measurement_hex, 32, "--measurement")
    svns = _svns(svn_text)
    clock = _clock(now)
    vendor = _load_vendor(vendor_dir)
    try:
        data = make(
            vendor,
            device_id,
            pubkey,
            nonce_raw,
            measurement,
            debug=debug,
            svns=svns,
            clock=clock,
            hardware_model=hardware_model,
        )
    except AttestError as exc:
        raise BadInput(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except OSError as exc:  # issuing the device's certificate writes to the vendor folder
        raise BadInput(f"cannot update the vendor folder {vendor_dir}: {os_error_message(exc)}") from None
    try:
        atomic_write_bytes(out, data)
    except OSError as exc:
        raise BadInput(f"cannot write {out}: {exc.strerror or exc}") from None
    make_console().print(
        f"Wrote {len(data)} bytes of {SIMULATED_NOTE} evidence from device {device_id} to {out}", markup=False
    )


@attest.command()
@click.argument("file", type=click.Path(dir_okay=False))
@FORMAT_OPTION
def show(file: str, fmt: str) -> None:
    """Show the SIMULATED TEE evidence in FILE in readable form (without verifying it)."""
    from stagewarden.attest.errors import AttestError
    from stagewarden.attest.evidence import SVN_COMPONENTS, parse_evidence

    data = _read_file(file, "evidence")
    try:
        evidence = parse_evidence(data)
    except AttestError as exc:
        raise BadInput(str(exc)) from None
    info = evidence.to_json()
    if fmt == "json":
        info["note"] = f"evidence from the {SIMULATED_NOTE}; shown, not verified"
        click.echo(json.dumps(info, indent=2))
        return
    console = make_console()
    console.print(f"{info['format']}: evidence from the {SIMULATED_NOTE}; shown, not verified", markup=False)
    rows: list[tuple[str, str]] = [
        (field, str(info[field]))
        for field in ("version", "hardware_model", "device_id", "attributes", "debug", "measurement", "report_data")
    ]
    rows.append(("svns", ", ".join(f"{k}={v}" for k, v in zip(SVN_COMPONENTS, evidence.svns, strict=True))))
    for index, cert in enumerate(evidence.chain):
        rows.append(
            (
                f"chain[{index}]",
                f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:x}, "
                f"valid {cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()})",
            )
        )
    rows.append(("signature", evidence.signature.hex()))
    print_rows(console, rows)


@attest.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--vendor",
    "vendor_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The simulated vendor folder (its root is pinned).",
)
@click.option(
    "--nonce", "nonce_hex", required=True, metavar="HEX", help="The nonce the evidence must answer (32 bytes hex)."
)
@click.option(
    "--key",
    "key_hex",
    required=True,
    metavar="PUBKEY_HEX",
    help="The receipt key the evidence must bind (32 bytes hex).",
)
@click.option(
    "--reference",
    "references",
    required=True,
    multiple=True,
    metavar="MEASUREMENT_HEX",
    help="An accepted launch measurement (repeatable).",
)
@POLICY_OPTION
@VERIFIER_KEY_OPTION
@click.option(
    "--result-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the signed attestation result token here.",
)
@FORMAT_OPTION
@_NOW
def verify(
    file: str,
    vendor_dir: str,
    nonce_hex: str,
    key_hex: str,
    references: tuple[str, ...],
    policy_file: str | None,
    verifier_key_file: str | None,
    result_out: str | None,
    fmt: str,
    now: str | None,
) -> None:
    """Appraise the SIMULATED TEE evidence in FILE; print the attestation result.

    Exit code 0 when the evidence is accepted, 1 when it is rejected (the failed check's code is
    printed), 2 for usage errors and missing or unreadable files. The nonce is taken as issued by
    this verifier, and the --reference measurements are trusted as given.
    """

    from stagewarden.attest.errors import AttestError, ErrorCode
    from stagewarden.attest.policy import Policy, parse_policy
    from stagewarden.attest.vendor import load_vendor, local_verifier

    nonce_raw = parse_hex(nonce_hex, 32, "--nonce")
    pubkey = parse_hex(key_hex, 32, "--key")
    measurements = [parse_hex(r, 32, "--reference") for r in references]
    clock = _clock(now)
    data = _read_file(file, "evidence")
    policy_bytes = _read_file(policy_file, "policy") if policy_file else None
    signing_key = None
    if verifier_key_file is not None:
        signing_key = load_verifier_key(verifier_key_file, _read_file(verifier_key_file, "verifier key"))
    try:
        vendor = load_vendor(vendor_dir)
    except AttestError as exc:
        if exc.code is ErrorCode.VENDOR_MISSING:
            raise BadInput(str(exc)) from None
        _rejected(exc, fmt)
    try:
        policy = (
            parse_policy(policy_bytes, yaml=str(policy_file).lower().endswith((".yaml", ".yml")))
            if policy_bytes is not None
            else Policy()
        )
        verifier = local_verifier(vendor, measurements, policy, clock, signing_key)
        verifier.register_nonce(nonce_raw)
        appraisal = verifier.appraise_evidence(data, pubkey, nonce_raw)
    except AttestError as exc:
        _rejected(exc, fmt)
    if result_out is not None:
        from stagewarden.attest.files import atomic_write_bytes

        try:
            atomic_write_bytes(result_out, appraisal.token + b"\n")
        except OSError as exc:
            raise BadInput(f"cannot write {result_out}: {exc.strerror or exc}") from None
    verifier_public = bytes(verifier.verify_key).hex()
    if fmt == "json":
        payload = {
            "simulated": True,
            "note": f"evidence from the {SIMULATED_NOTE}",
            "accepted": True,
            "status": str(appraisal.result.status),
            "claims": appraisal.result.claims(),
            "token": appraisal.token.decode("ascii"),
            "verifier_public_key": verifier_public,
        }
        click.echo(json.dumps(payload, indent=2))
        sys.exit(EXIT_OK)
    result = appraisal.result
    console = make_console()
    console.print(f"ACCEPTED: evidence from the {SIMULATED_NOTE}, status {result.status}", markup=False)
    rows = [
        ("device", f"{result.device_id} ({result.hardware_model})"),
        ("TCB status", result.tcb_status),
        ("measurement", result.measurement),
        ("attested key", result.attested_key.hex()),
        ("valid", f"{result.issued_at.isoformat()} .. {result.expires_at.isoformat()}"),
    ]
    rows += [(f"check {name}", outcome) for name, outcome in result.checks]
    rows.append(("verifier key", verifier_public + ("" if signing_key else " (ephemeral)")))
    print_rows(console, rows)
    console.print("attestation result token:", markup=False)
    click.echo(appraisal.token.decode("ascii"))
    sys.exit(EXIT_OK)


def _rejected(exc: Any, fmt: str) -> NoReturn:
    if fmt == "json":
        payload = {
            "simulated": True,
            "note": f"evidence from the {SIMULATED_NOTE}",
            "accepted": False,
            "code": str(exc.code),
            "message": exc.message,
        }
        click.echo(json.dumps(payload, indent=2))
    else:
        console = make_console()
        console.print(f"REJECTED: evidence from the {SIMULATED_NOTE}", markup=False)
        console.print(f"{exc.code}: {exc.message}", markup=False)
    sys.exit(EXIT_VIOLATED)


@attest.command()
@click.option(
    "--vendor", "vendor_dir", required=True, type=click.Path(file_okay=False), help="The simulated vendor folder."
)
@click.option("--device-id", required=True, help="The device whose certificate to revoke.")
@_NOW
def revoke(vendor_dir: str, device_id: str, now: str | None) -> None:
    """Revoke a simulated device: add its certificate to the intermediate CRL."""
    from stagewarden.attest.errors import AttestError
    from stagewarden.attest.vendor import revoke_device

    vendor = _load_vendor(vendor_dir)
    try:
        revoke_device(vendor, device_id, _clock(now))
    except AttestError as exc:
        raise BadInput(str(exc)) from None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except OSError as exc:
        raise BadInput(f"cannot update the vendor folder {vendor_dir}: {os_error_message(exc)}") from None
    make_console().print(
        f"Revoked {SIMULATED_NOTE} device {device_id} in {vendor.path / 'intermediate.crl'}", markup=False
    )
