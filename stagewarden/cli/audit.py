"""``stagewarden audit``: offline check of a run directory's receipts and attestation."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stagewarden.cli.common import EXIT_OK, EXIT_VIOLATED, BadInput, format_option, make_console
from stagewarden.cli.spec_input import load_spec_or_example

if TYPE_CHECKING:
    from stagewarden.attest.audit import AuditReport
    from stagewarden.conformance import ConformanceReport
    from stagewarden.spec import LoadedSpec


def _parse_key(text: str, flag: str = "--verifier-key", whose: str = "verifier") -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise BadInput(f"{flag} must be 64 hex digits (the {whose}'s 32-byte Ed25519 public key)")
    return key


def _load_roots(path_text: str) -> list[Any]:
    """The root certificates in a PEM file (or in ``DIR/root.crt`` of a vendor folder)."""
    from cryptography import x509

    from stagewarden.attest.run_record import RunDirError, read_bounded

    path = Path(path_text)
    if path.is_dir():
        path = path / "root.crt"
    try:
        data = read_bounded(path, "--vendor-root", 1 << 20)
    except RunDirError as exc:
        raise BadInput(exc.message) from None
    try:
        roots = x509.load_pem_x509_certificates(data)
    except ValueError:
        roots = []
    if not roots:
        raise BadInput(f"--vendor-root {path} holds no PEM certificate")
    return roots


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
    "--vendor-root",
    "vendor_root",
    type=click.Path(),
    metavar="FILE",
    help="Pin the simulated vendor's root certificate (PEM file, or a vendor folder's root.crt): every "
    "stored evidence must chain to it. Without it evidence is checked against its results only.",
)
@click.option(
    "--coordinator-key",
    "coordinator_key",
    metavar="HEX",
    help="Pin the coordinator's Ed25519 public key (64 hex digits) that every step head must verify under. "
    "Without it the key in RUN_DIR/coordinator.pub is used, with a warning.",
)
@click.option(
    "--witness",
    "witnesses",
    multiple=True,
    type=click.Path(),
    metavar="FILE",
    help="A worker's witness file (RUN_DIR/witness/WORKER.jsonl, or where the worker kept it); repeatable. "
    "A step head it holds that the log lacks or contradicts is a finding, even if the log's heads were re-signed.",
)
@format_option("Print findings as a table or as a versioned JSON object.")
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(),
    help="Also check the run against this threat-model spec: its configuration, attestation, spot-check "
    "rate, responses, and every guarantee the prover says holds.",
)
@click.option(
    "--max-records",
    "max_records",
    type=click.IntRange(min=1),
    metavar="N",
    help="Read at most N receipt-log records (default 50,000) and 640 bytes of log per record; a longer "
    "log is refused. The audit needs about 2.3 KB of memory per record.",
)
def audit(
    run_dir: str,
    verifier_key: str | None,
    vendor_root: str | None,
    coordinator_key: str | None,
    witnesses: tuple[str, ...],
    fmt: str,
    spec_path: str | None,
    max_records: int | None,
) -> None:
    """Audit RUN_DIR offline: signatures, hash chains, cross-stage digest links and attestation.

    Every receipt and signed header must carry a valid signature by a key that a result token
    (signed by the verifier key) attested for that worker and that was valid when the record was
    signed; every worker's receipt chain must be complete and in order; adjacent stages must agree
    on the activations and gradients they exchanged. The coordinator's signed step heads must cover
    the log, events.jsonl and summary.json exactly, and the final head must be cosigned by every
    worker serving a stage at the end; with --witness, each worker's kept heads must be in the log.
    Each finding says what is wrong, where, and which worker it implicates.

    With --spec the run is also checked against the spec (see "Checking a run against its spec"
    in the docs): settings that depart from it, workers without attestation when it requires
    attestation, a spot-check rate outside a 99.9% Clopper-Pearson interval of the spec's rate,
    detections not answered by a response it lists, and guarantees the prover says hold that the
    run breaks.

    Exit codes: 0 clean (warnings allowed), 1 findings, 2 unreadable run directory, bad spec or bad flag.
    """
    from stagewarden.attest.audit import audit_run_dir
    from stagewarden.attest.errors import AttestError, ErrorCode
    from stagewarden.attest.run_limits import MAX_LOG_RECORDS

    key = _parse_key(verifier_key) if verifier_key is not None else None
    ckey = _parse_key(coordinator_key, "--coordinator-key", "coordinator") if coordinator_key is not None else None
    for witness in witnesses:  # a path that names nothing is a mistake of the caller, not a witness's fault
        if not os.path.lexists(witness):
            raise BadInput(f"--witness {witness} does not exist")
    roots = _load_roots(vendor_root) if vendor_root is not None else None
    loaded = load_spec_or_example(spec_path, None) if spec_path is not None else None
    try:
        report = audit_run_dir(
            run_dir,
            key,
            vendor_roots=roots,
            max_records=max_records or MAX_LOG_RECORDS,
            coordinator_key=ckey,
            witnesses=witnesses,
        )
        conformance = _conformance(run_dir, loaded, report) if loaded is not None else None
    except AttestError as exc:
        raise BadInput(exc.message) from None
    except OSError as exc:
        raise BadInput(f"cannot read {run_dir}: {exc.strerror or exc}") from None
    except MemoryError:  # a limit too high for this machine (--max-records), never a traceback
        raise BadInput(f"cannot audit {run_dir}: out of memory") from None
    clean = report.clean and (conformance is None or conformance.clean)
    if fmt == "json":
        data = report.to_json()
        if conformance is not None:
            data = _merge_json(data, conformance)
        click.echo(json.dumps(data, indent=2))
    else:
        console = make_console()
        # the unpinned key is explained once, below the verdict, instead of as a row of the table
        explained = (ErrorCode.VERIFIER_KEY_UNPINNED, ErrorCode.COORDINATOR_KEY_UNPINNED)
        findings = [f for f in report.findings if f.code not in explained]
        if findings:
            table = Table(title=f"audit of {escape(report.run_dir)}", show_lines=True)
            table.add_column("severity", no_wrap=True)
            table.add_column("code", no_wrap=True)
            table.add_column("workers", overflow="fold")
            table.add_column("where", overflow="fold")
            table.add_column("finding", ratio=1)
            for f in findings:
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
        warnings = len(findings) - errors
        verdict = "[green]clean[/]" if report.clean else f"[red]{errors} error finding(s)[/]"
        if report.clean and any(f.code == ErrorCode.RECEIPTS_ABSENT for f in findings):
            verdict = "[yellow]nothing to check (the run kept no receipts)[/]"
        if not report.verifier_key:
            key_text = "no attestation to check"
        elif report.verifier_key_pinned:
            key_text = f"verifier key {report.verifier_key[:16]} (pinned)"
        else:
            key_text = f"verifier key {report.verifier_key[:16]} (read from the run directory, not pinned: see below)"
        console.print(
            f"run {escape(report.run_id)}: {report.receipts} receipts, {report.headers} signed headers, "
            f"{key_text}: {verdict}" + (f", {warnings} warning(s)" if warnings else "")
        )
        if report.receipts or report.step_heads:
            console.print(_seal_line(report))
        if report.verifier_key and not report.verifier_key_pinned:
            _explain_unpinned(console, run_dir)
        if conformance is not None:
            _print_conformance(console, conformance)
    sys.exit(EXIT_OK if clean else EXIT_VIOLATED)


def _seal_line(report: AuditReport) -> str:
    """One line on the record's seal: its step heads, the coordinator key and the witnesses."""
    if not report.coordinator_key:
        return "[red]the record is not sealed[/]: no coordinator key to check step heads with"
    pinned = "pinned" if report.coordinator_key_pinned else "read from the run directory, not pinned"
    state = "sealed by a final step head" if report.sealed else "[red]not sealed[/] (no final step head)"
    witnessed = f", {report.witness_heads} witness head(s) compared" if report.witness_heads else ""
    return (
        f"record: {report.step_heads} step head(s), {state}, coordinator key {report.coordinator_key[:16]} "
        f"({pinned}){witnessed}"
    )


def _explain_unpinned(console: Console, run_dir: str) -> None:
    """What an audit against the run directory's own verifier key shows, and how to pin the key
    (``VERIFIER_KEY_UNPINNED`` in the JSON report)."""
    console.print(
        "[yellow]note (VERIFIER_KEY_UNPINNED):[/] the verifier's public key was read from the run directory "
        f"({escape(str(Path(run_dir) / 'attestation' / 'verifier.pub'))}), so this audit shows the run is "
        "consistent with the key it ships, not that your verifier attested its workers: whoever wrote the "
        "directory could have written that key too. For a run you trained yourself that is no risk; for a "
        "run from someone else, pin the key you got from the verifier's operator:",
        markup=True,
    )
    console.print(f"  stagewarden audit {escape(run_dir)} --verifier-key <64 hex digits>", markup=False)


def _conformance(run_dir: str, loaded: LoadedSpec, report: AuditReport) -> ConformanceReport:
    from stagewarden.conformance import ConformanceError, check_conformance

    try:
        return check_conformance(run_dir, loaded, report)
    except ConformanceError as exc:
        raise BadInput(str(exc)) from None


def _merge_json(data: dict[str, Any], conformance: ConformanceReport) -> dict[str, Any]:
    """The audit's JSON report with the conformance findings added to ``findings`` and ``counts``,
    ``clean`` covering both, and a ``conformance`` object."""
    found = [f.to_json() for f in conformance.findings]
    errors = len(conformance.errors)
    counts = dict(data["counts"])
    counts["errors"] += errors
    counts["warnings"] += len(found) - errors
    return {
        **data,
        "clean": data["clean"] and conformance.clean,
        "counts": counts,
        "findings": data["findings"] + found,
        "conformance": conformance.to_json(),
    }


def _print_conformance(console: Console, conformance: ConformanceReport) -> None:
    """The conformance findings, the guarantee table and a verdict line."""
    if conformance.findings:
        table = Table(title=f"conformance to {escape(conformance.spec_file)}", show_lines=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("code", no_wrap=True)
        table.add_column("where", overflow="fold")
        table.add_column("finding", ratio=1)
        for f in conformance.findings:
            colour = "red" if str(f.severity) == "error" else "yellow"
            table.add_row(f"[{colour}]{f.severity}[/]", str(f.code), escape(f.where or "-"), escape(f.message))
        console.print(table)
    guarantees = Table(title="guarantees against the run", show_lines=False)
    guarantees.add_column("guarantee", no_wrap=True)
    guarantees.add_column("prover", no_wrap=True)
    guarantees.add_column("run", no_wrap=True)
    guarantees.add_column("why", ratio=1)
    colours = {"consistent": "green", "broken": "red", "not checkable": "yellow", "not promised": "dim"}
    for g in conformance.guarantees:
        guarantees.add_row(
            f"{escape(g.id)} ({g.kind})", g.verdict, f"[{colours[g.outcome]}]{g.outcome}[/]", escape(g.detail)
        )
    console.print(guarantees)
    rate = conformance.rate
    if rate is not None:
        low, high = rate.interval
        console.print(
            f"spot checks: {rate.sampled} of {rate.eligible} eligible units (rate {rate.rate:.4g}, "
            f"{rate.confidence:.1%} interval [{low:.4g}, {high:.4g}], spec {rate.expected})"
        )
    errors = len(conformance.errors)
    verdict = "[green]conforms[/]" if conformance.clean else f"[red]{errors} error finding(s)[/]"
    console.print(f"conformance to spec {escape(conformance.spec_name)}: {verdict}")
