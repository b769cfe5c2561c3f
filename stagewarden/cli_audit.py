"""``stagewarden audit``: offline check of a run directory's receipts and attestation."""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape
from rich.table import Table

from stagewarden.cli_common import EXIT_OK, EXIT_VIOLATED, BadInput, make_console


def _parse_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise BadInput("--verifier-key must be 64 hex digits (the verifier's 32-byte Ed25519 public key)")
    return key


@click.command()
@click.argument("run_dir", type=click.Path())
@click.option(
    "--verifier-key",
    "verifier_key",
    metavar="HEX",
    help="Pin the verifier's Ed25519 public key (64 hex digits). Without it the key in "
    "RUN_DIR/attestation/verifier.pub is used, with a warning.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Print findings as a table or as a versioned JSON object.",
)
def audit(run_dir: str, verifier_key: str | None, fmt: str) -> None:
    """Audit RUN_DIR offline: signatures, hash chains, cross-stage digest links and attestation.

    Every receipt and signed header must carry a valid signature by a key that a result token
    (signed by the verifier key) attested for that worker and that was valid when the record was
    signed; every worker's receipt chain must be complete and in order; adjacent stages must agree
    on the activations and gradients they exchanged. Each finding says what is wrong, where, and
    which worker it implicates.

    Exit codes: 0 clean (warnings allowed), 1 findings, 2 unreadable run directory or bad flag.
    """
    from stagewarden.attest.audit import audit_run_dir
    from stagewarden.attest.errors import AttestError

    key = _parse_key(verifier_key) if verifier_key is not None else None
    try:
        report = audit_run_dir(run_dir, key)
    except AttestError as exc:
        raise BadInput(exc.message) from None
    except OSError as exc:
        raise BadInput(f"cannot read {run_dir}: {exc.strerror or exc}") from None
    if fmt == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        console = make_console()
        if report.findings:
            table = Table(title=f"audit of {escape(report.run_dir)}", show_lines=True)
            table.add_column("severity", no_wrap=True)
            table.add_column("code", no_wrap=True)
            table.add_column("workers", overflow="fold")
            table.add_column("where", overflow="fold")
            table.add_column("finding", ratio=1)
            for f in report.findings:
                colour = "red" if f.severity == "error" else "yellow"
                table.add_row(
                    f"[{colour}]{f.severity}[/]",
                    str(f.code),
                    escape(", ".join(f.workers) or "-"),
                    escape(f.where or "-"),
                    escape(f.message),
                )
            console.print(table)
        errors = len(report.errors)
        warnings = len(report.findings) - errors
        verdict = "[green]clean[/]" if report.clean else f"[red]{errors} error finding(s)[/]"
        pinned = "pinned" if report.verifier_key_pinned else "read from the run directory"
        console.print(
            f"run {escape(report.run_id)}: {report.receipts} receipts, {report.headers} signed headers, "
            f"verifier key {report.verifier_key[:16]} ({pinned}): {verdict}"
            + (f", {warnings} warning(s)" if warnings else "")
        )
    sys.exit(EXIT_OK if report.clean else EXIT_VIOLATED)
