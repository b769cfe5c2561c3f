"""Text rendering of prover reports for people: a summary table, then each guarantee with the
assumptions it rests on or the attack that breaks it."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from stagewarden.prover import GuaranteeResult, Report
from stagewarden.prover.probability import format_probability

_STYLE = {"holds": "green", "violated": "bold red", "unknown": "yellow", "vacuous": "bold magenta"}
_MARK = {"holds": "✔", "violated": "✘", "unknown": "?", "vacuous": "!"}


def _figure_text(result: GuaranteeResult) -> str:
    fig = result.figure
    if fig is None:
        return ""
    return f"{format_probability(fig.value) if fig.bound <= 1 else fig.value} (needs {fig.relation} {format_probability(fig.bound)})"


def summary_table(report: Report) -> Table:
    """One row per guarantee: id, kind, verdict, the computed figure against its bound."""
    table = Table(title=None, show_edge=False, pad_edge=False)
    table.add_column("guarantee")
    table.add_column("kind")
    table.add_column("verdict")
    table.add_column("figure")
    for result in report.guarantees:
        verdict = Text(f"{_MARK[result.verdict]} {result.verdict}", style=_STYLE[result.verdict])
        if result.trivially:
            verdict.append(" (trivially)")
        table.add_row(result.id, result.kind, verdict, _figure_text(result))
    return table


def trace_lines(trace: dict[str, Any]) -> list[str]:
    """A counterexample trace as indented lines."""
    lines = []
    malicious = trace.get("malicious") or []
    if malicious:
        lines.append("malicious: " + ", ".join(f"{m['worker']} ({m['role']})" for m in malicious))
    for state in trace.get("states", []):
        where = []
        if state.get("step") is not None:
            where.append(f"step {state['step']}")
        if state.get("microbatch") is not None:
            where.append(f"micro-batch {state['microbatch']}")
        prefix = ", ".join(where)
        head = f"{prefix}: " if prefix else ""
        if "detail" in state:
            lines.append(f"{head}{state.get('worker', '')} {state['action']}: {state['detail']}".replace("  ", " "))
            continue
        unit = state.get("unit", "")
        count = state.get("count")
        amount = f" x{count}" if count else ""
        lines.append(f"{head}{state['worker']} {state['action']} on its {unit} unit{amount} "
                     f"(detected with probability {state.get('detection_probability', '?')})")
        for check in state.get("checks", []):
            label = check["check"] or "no check"
            by = f" by {check['checker']}" if check.get("checker") else ""
            lines.append(f"    {label}{by}: {check['result']} - {check['why']}")
    for cost in trace.get("costs", []):
        lines.append(f"{cost['location']}: {cost['item']}: +{cost['compute']:.3g} compute, +{cost['memory']:.3g} memory")
    meta = trace.get("#meta", {})
    if meta.get("description"):
        lines.append(f"=> {meta['description']}")
    return lines


def guarantee_block(result: GuaranteeResult) -> Group:
    """Details of one guarantee: summary, then assumptions or trace or reason."""
    parts: list[Any] = []
    head = Text(f"{_MARK[result.verdict]} {result.id} ", style=_STYLE[result.verdict])
    head.append(f"({result.kind}) ", style="dim")
    head.append(result.summary)
    parts.append(head)
    for note in result.notes:
        parts.append(Text(f"    note: {note}", style="yellow"))
    if result.verdict in ("holds", "vacuous") and result.assumptions:
        label = "rests on" if result.verdict == "holds" else "contradictory assumptions"
        if result.kind == "overhead":
            label = "cost items"
        parts.append(Text(f"    {label}:"))
        width = max(len(a.location) for a in result.assumptions)
        for a in result.assumptions:
            parts.append(Text(f"      {a.location.ljust(width)}  {a.text}"))
    if result.trace is not None:
        parts.append(Text("    attack trace:" if result.kind != "overhead" else "    cost breakdown:"))
        for line in trace_lines(result.trace):
            parts.append(Text(f"      {line}"))
    if result.verdict == "unknown" and result.reason:
        parts.append(Text(f"    reason: {result.reason}"))
    return Group(*parts)


def print_report(console: Console, report: Report) -> None:
    """The whole report: header, summary table and every guarantee's details."""
    console.print(Text(f"{report.spec_file}: '{report.spec_name}'", style="bold"))
    console.print(summary_table(report))
    for result in report.guarantees:
        console.print()
        console.print(guarantee_block(result))
    counts: dict[str, int] = {}
    for result in report.guarantees:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
    console.print()
    console.print(", ".join(f"{n} {v}" for v, n in counts.items()))
