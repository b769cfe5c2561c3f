"""The summary table ``stagewarden train`` prints when a run ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from stagewarden.attest.run_record import RunRecord, TrainingRecord
from stagewarden.run_outcome import attack_outcome, responses_line, status_line


def summary_table(config: Any, record: RunRecord, run: TrainingRecord, target: Path) -> Table:
    """The table of a finished run: how it ended, its shape, what it checked and found."""
    table = Table(title=f"run {escape(record.run_id)}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    losses = run.losses
    outcome = attack_outcome(target, record)
    rows = [
        ("status", escape(status_line(run, outcome))),
        ("stages x micro-batches", f"{record.stages} x {record.micro_batches} ({config.schedule})"),
        *([("replicas", f"{config.replicas} ({config.aggregation} aggregation)")] if config.replicas > 1 else []),
        ("steps", str(run.steps_completed)),
        ("loss", f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "-"),
        ("throughput", f"{run.tokens_per_second:.0f} tokens/s"),
        ("receipts / headers", f"{run.receipts} / {run.headers}"),
        ("attestation", "on" if config.attestation else "off"),
        ("verification", _verification_row(config, run)),
        ("attack", escape(outcome.line()) if outcome is not None else "-"),
        ("detections", str(len(run.detections))),
        ("responses", escape(responses_line(run.responses))),
        (
            "worker faults",
            ", ".join(f"{f.worker} ({f.cause}) at step {f.step}" for f in run.faults) or "-",
        ),
        ("resumes", str(len(run.resumes))),
        ("run directory", escape(str(target))),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _verification_row(config: Any, run: TrainingRecord) -> str:
    """The verification mode and what it checked, for the summary table."""
    if config.verification == "spot_check":
        checked = run.spot_check.units_checked if run.spot_check is not None else 0
        compared = "" if config.spot_check_compare == "bitwise" else f", {config.spot_check_compare}"
        return f"spot_check p={config.spot_check_rate:g}{compared}: {checked} units re-executed"
    if config.verification == "redundant_neighbour":
        n = run.redundant_neighbour
        if n is None:
            return f"redundant_neighbour via {config.input_via}: no counts recorded"
        return (
            f"redundant_neighbour via {config.input_via}: {n.units_checked} units recomputed, "
            f"{n.mismatches_reported} reported, {n.false_accusations} false accusations"
        )
    if config.verification == "replicate":
        return f"replicate: {config.replicate_factor} copies of every unit, {config.replicate_resolve} decides"
    return "none"
