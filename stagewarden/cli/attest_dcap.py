"""``stagewarden attest verify-quote`` and ``fetch-collateral``: real Intel TDX and SGX quotes.

A thin shell over :mod:`stagewarden.attest.dcap_policy` and :mod:`stagewarden.attest.collateral_cache`.
``verify-quote`` exits 0 when the quote is accepted, 1 when it is rejected (the failed check's code
is printed), 2 for bad input (unreadable files, a collateral file or policy that does not parse, bad
flags). ``fetch-collateral`` exits 0 when the bundle was written, 1 when it could not be fetched,
2 for bad input.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
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


def _read(path: str, what: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {what} {path}: {os_error_message(exc)}") from None
    if len(data) > limit:
        raise BadInput(f"{what} {path} is larger than {limit} bytes")
    return data


@click.command("verify-quote")
@click.argument("quote_file", metavar="QUOTE", type=click.Path(dir_okay=False))
@click.option(
    "--collateral",
    "collateral_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Collateral bundle (JSON: CRLs, TCB info, QE identity and their issuer chains).",
)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Collateral cache folder to take the quote's bundle from (instead of --collateral).",
)
@click.option(
    "--at",
    "at_seconds",
    type=click.IntRange(0, 253_402_300_799),
    default=None,
    metavar="UNIX_TIME",
    help="Verify at this instant (seconds since 1970, UTC) instead of now.",
)
@POLICY_OPTION
@click.option(
    "--allow-status",
    "statuses",
    multiple=True,
    metavar="STATUS",
    help="Also accept this TCB status (repeatable), e.g. SWHardeningNeeded.",
)
@click.option("--stage", default=None, help="Appraise against this stage's reference values only.")
@click.option(
    "--nonce", "nonce_hex", default=None, metavar="HEX", help="The nonce REPORTDATA must bind (32 bytes hex)."
)
@click.option(
    "--key", "key_hex", default=None, metavar="PUBKEY", help="The receipt key REPORTDATA must bind (32 bytes hex)."
)
@VERIFIER_KEY_OPTION
@click.option(
    "--result-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the signed EAR attestation result (JWT) here when the quote is accepted.",
)
@FORMAT_OPTION
def verify_quote(
    quote_file: str,
    collateral_file: str | None,
    cache_dir: str | None,
    at_seconds: int | None,
    policy_file: str | None,
    statuses: tuple[str, ...],
    stage: str | None,
    nonce_hex: str | None,
    key_hex: str | None,
    verifier_key_file: str | None,
    result_out: str | None,
    fmt: str,
) -> None:
    """Verify a real Intel TDX or SGX QUOTE against Intel's PKI (dcap-qvl) and appraise it.

    The quote must chain to Intel's SGX root CA under the collateral, valid at --at; its TCB status
    must be allowed (UpToDate unless the policy or --allow-status allows more; the advisory ids are
    shown either way); debug mode is refused; with a policy, its measurements must match a stage's
    reference values; with --nonce and --key, REPORTDATA must bind them. Exit 0 accepted, 1 rejected,
    2 bad input.
    """
    from nacl.signing import SigningKey

    from stagewarden.attest.collateral_cache import CollateralCache
    from stagewarden.attest.dcap import MAX_COLLATERAL_BYTES, MAX_QUOTE_BYTES, parse_collateral
    from stagewarden.attest.dcap_policy import KNOWN_STATUSES, Binding, DcapPolicy, appraise_quote, parse_dcap_policy
    from stagewarden.attest.ear import ear_from_appraisal, sign_ear
    from stagewarden.attest.errors import AttestError, FormatError
    from stagewarden.attest.files import atomic_write_bytes

    if (collateral_file is None) == (cache_dir is None):
        raise click.UsageError("give exactly one of --collateral FILE and --cache DIR")
    if (nonce_hex is None) != (key_hex is None):
        raise click.UsageError("--nonce and --key go together")
    binding = None
    if nonce_hex is not None and key_hex is not None:
        binding = Binding(parse_hex(nonce_hex, 32, "--nonce"), parse_hex(key_hex, 32, "--key"))
    unknown = sorted(set(statuses) - KNOWN_STATUSES)
    if unknown:
        raise click.BadParameter(
            f"unknown TCB status {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_STATUSES))}",
            param_hint="--allow-status",
        )
    quote = _read(quote_file, "quote", MAX_QUOTE_BYTES)
    signing_key = None
    if verifier_key_file is not None:
        signing_key = load_verifier_key(verifier_key_file, _read(verifier_key_file, "verifier key", 1024))
    try:
        policy = DcapPolicy()
        if policy_file is not None:
            yaml = policy_file.lower().endswith((".yaml", ".yml"))
            policy = parse_dcap_policy(_read(policy_file, "policy", 256 * 1024), yaml=yaml)
        policy = policy.with_statuses(statuses)
        if collateral_file is not None:
            collateral = parse_collateral(_read(collateral_file, "collateral", MAX_COLLATERAL_BYTES))
        else:
            collateral = CollateralCache(str(cache_dir)).collateral_for(quote)
    except FormatError as exc:
        raise BadInput(str(exc)) from None
    except AttestError as exc:  # the quote names no platform, or the cache has no bundle for it
        _report_rejection(fmt, {"accepted": False, "code": str(exc.code), "reasons": [f"{exc.code}: {exc.message}"]})
    at = dt.datetime.fromtimestamp(at_seconds if at_seconds is not None else int(time.time()), dt.UTC)
    appraisal = appraise_quote(quote, collateral, policy, at, binding, stage)
    payload = appraisal.to_json()
    payload["verified_at"] = int(at.timestamp())
    if not appraisal.accepted:
        _report_rejection(fmt, payload)
    key = signing_key or SigningKey.generate()
    result = ear_from_appraisal(
        appraisal,
        policy,
        key.verify_key,
        at,
        binding.nonce if binding else None,
        binding.receipt_key if binding else None,
    )
    token = sign_ear(result, key)
    if result_out is not None:
        try:
            atomic_write_bytes(result_out, token + b"\n")
        except OSError as exc:
            raise BadInput(f"cannot write {result_out}: {os_error_message(exc)}") from None
    payload["ear"] = {
        "status": str(result.status),
        "trust_vector": result.trust_vector,
        "token": token.decode("ascii"),
        "verifier_public_key": bytes(key.verify_key).hex(),
    }
    if fmt == "json":
        click.echo(json.dumps(payload, indent=2))
        sys.exit(EXIT_OK)
    console = make_console()
    report = appraisal.report
    assert report is not None and appraisal.verified is not None
    console.print(f"ACCEPTED: Intel {report.tee.upper()} quote verified against Intel's PKI", markup=False)
    rows = [
        ("TCB status", appraisal.verified.status),
        ("advisories", ", ".join(appraisal.verified.advisories) or "none"),
        ("FMSPC", appraisal.verified.fmspc),
    ]
    rows += [(name, value) for name, value in report.measurements.items()]
    rows.append(("report data", report.report_data.hex()))
    rows.append(("key binding", "checked" if appraisal.key_bound else "not checked (no --nonce/--key)"))
    matched = f"stage {appraisal.stage}" if appraisal.stage is not None else ""
    rows.append(("measurements", f"match {matched}" if matched else "not appraised (no reference values)"))
    rows.append(("EAR status", f"{result.status} {result.trust_vector}"))
    rows.append(("verifier key", bytes(key.verify_key).hex() + ("" if signing_key else " (ephemeral)")))
    print_rows(console, rows)
    console.print("EAR attestation result (JWT):", markup=False)
    click.echo(token.decode("ascii"))
    sys.exit(EXIT_OK)


def _report_rejection(fmt: str, payload: dict[str, Any]) -> NoReturn:
    if fmt == "json":
        click.echo(json.dumps(payload, indent=2))
    else:
        console = make_console()
        tee = payload.get("tee")
        console.print(f"REJECTED: {'Intel ' + tee.upper() + ' ' if tee else ''}quote", markup=False)
        for reason in payload["reasons"]:
            console.print(reason, markup=False)
        if payload.get("status"):
            advisories = ", ".join(payload.get("advisories") or []) or "none"
            console.print(f"TCB status {payload['status']}, advisories: {advisories}", markup=False)
    sys.exit(EXIT_VIOLATED)


@click.command("fetch-collateral")
@click.argument("quote_file", metavar="QUOTE", type=click.Path(dir_okay=False))
@click.option(
    "--pccs-url",
    default=None,
    metavar="URL",
    help="Base URL of a PCCS, or of Intel's PCS (the default: https://api.trustedservices.intel.com).",
)
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None, help="Store the bundle here.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the bundle to this file.")
@click.option(
    "--timeout", type=click.FloatRange(0.1, 600), default=30.0, show_default=True, help="Seconds to wait for it."
)
@FORMAT_OPTION
def fetch_collateral(
    quote_file: str, pccs_url: str | None, cache_dir: str | None, out: str | None, timeout: float, fmt: str
) -> None:
    """Download the collateral QUOTE needs (CRLs, TCB info, QE identity) into a cache folder or a file."""
    from stagewarden.attest.collateral_cache import INTEL_PCS_URL, CollateralCache
    from stagewarden.attest.collateral_cache import fetch_collateral as fetch
    from stagewarden.attest.dcap import MAX_QUOTE_BYTES
    from stagewarden.attest.errors import AttestError, FormatError
    from stagewarden.attest.files import atomic_write_text

    if cache_dir is None and out is None:
        raise click.UsageError("give --cache DIR, --out FILE or both")
    quote = _read(quote_file, "quote", MAX_QUOTE_BYTES)
    url = pccs_url or INTEL_PCS_URL
    try:
        collateral = fetch(quote, url, timeout)
    except FormatError as exc:
        _fetch_failed(fmt, str(exc))
    except AttestError as exc:
        if str(exc.code) == "DCAP_QUOTE_MALFORMED":
            raise BadInput(str(exc)) from None
        _fetch_failed(fmt, str(exc))
    written = []
    try:
        if cache_dir is not None:
            written.append(str(CollateralCache(cache_dir).store(quote, collateral)))
        if out is not None:
            atomic_write_text(out, collateral.to_json())
            written.append(out)
    except OSError as exc:
        raise BadInput(f"cannot write the collateral: {os_error_message(exc)}") from None
    windows = {w.what: [w.issued.isoformat(), w.next_update.isoformat()] for w in collateral.windows}
    if fmt == "json":
        payload: dict[str, Any] = {
            "source": url,
            "fmspc": collateral.fmspc,
            "tcb": collateral.tcb_id,
            "written": written,
        }
        payload["validity"] = windows
        click.echo(json.dumps(payload, indent=2))
        return
    console = make_console()
    console.print(f"Fetched {collateral.tcb_id} collateral for FMSPC {collateral.fmspc} from {url}", markup=False)
    print_rows(console, [(what, f"{start} .. {end}") for what, (start, end) in windows.items()])
    for path in written:
        console.print(f"  wrote {Path(path)}", markup=False)


def _fetch_failed(fmt: str, message: str) -> NoReturn:
    if fmt == "json":
        click.echo(json.dumps({"fetched": False, "reason": message}, indent=2))
    else:
        make_console().print(f"FAILED: {message}", markup=False)
    sys.exit(EXIT_VIOLATED)
