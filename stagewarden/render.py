"""Text rendering of prover reports for people: a summary table, then each guarantee with the
assumptions it rests on or the attack that breaks it."""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from stagewarden.prover import GuaranteeResult, Report
from stagewarden.prover.figure_text import format_figure

_STYLE = {"holds": "green", "violated": "bold red", "unknown": "yellow", "vacuous": "bold magenta"}
_MARK = {"holds": "✔", "violated": "✘", "unknown": "?", "vacuous": "!"}
#: Order of the verdict counts at the end of a report: the ones that need attention first.
_COUNT_ORDER = ("vacuous", "violated", "unknown", "holds")


class _Hanging:
    """Text whose wrapped lines keep an indent (``rest``), the first line indented by ``first``.

    A console in soft-wrap mode (the CLI's: the terminal wraps) gets the text on one line.
    """

    def __init__(self, text: Text, first: int, rest: int) -> None:
        self.text, self.first, self.rest = text, first, rest

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if options.no_wrap or options.overflow == "ignore":
            yield Text(" " * self.first) + self.text
            return
        text, width = self.text, options.max_width
        rest = min(self.rest, max(self.first, width // 2))  # a deep hanging indent only where it fits
        head = text.wrap(console, max(1, width - self.first))[0]
        offset = len(head.plain)
        while offset < len(text.plain) and text.plain[offset] == " ":
            offset += 1
        lines = [Text(" " * self.first) + head]
        if offset < len(text.plain):
            lines += [Text(" " * rest) + line for line in text[offset:].wrap(console, max(1, width - rest))]
        yield Text("\n").join(lines)


def _line(text: str | Text, indent: int, extra: int = 2) -> _Hanging:
    """An indented line of a guarantee's details; wrapped lines go ``extra`` further in."""
    body = text if isinstance(text, Text) else Text(text)
    return _Hanging(body, indent, indent + extra)


def _figure_text(result: GuaranteeResult) -> str:
    """The figure beside its bound, with the digits it takes to tell them apart: a probability
    compactly, a cost to three significant digits or more."""
    fig = result.figure
    if fig is None:
        return ""
    value_text, bound_text = format_figure(fig)
    return f"{value_text} (needs {fig.relation} {bound_text})"


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


def _where(state: dict[str, Any]) -> str:
    """``step 3, micro-batch 1: `` for a state that names them, else empty."""
    parts = []
    if state.get("step") is not None:
        parts.append(f"step {state['step']}")
    if state.get("microbatch") is not None:
        parts.append(f"micro-batch {state['microbatch']}")
    return ", ".join(parts) + ": " if parts else ""


def _check_line(check: dict[str, Any]) -> str:
    """What one check makes of a tampered unit: its probability when it catches it, else why not."""
    label = check.get("check") or "no check"
    by = f" by {check['checker']}" if check.get("checker") else ""
    if check.get("result") == "catches":
        probability = check.get("probability", "?")
        outcome = "catches it with certainty" if probability == "1" else f"catches it with probability {probability}"
    else:
        outcome = f"{check.get('result', '?')} - {check.get('why', '')}"
    return f"    {label}{by}: {outcome}"


def _state_lines(state: dict[str, Any]) -> list[str]:
    """One state of a trace: an action, then (for a tampered unit) what each check makes of it."""
    where = _where(state)
    worker = state.get("worker") or (f"replica {state['replica']}" if state.get("replica") is not None else "")
    action = state.get("action", "?")
    if "detail" in state:
        return [f"{where}{worker} {action}: {state['detail']}".strip()]
    unit = state.get("unit", "")
    probability = state.get("detection_probability", "?")
    if "units_available" in state:
        # A bounded_damage strategy: which units the worker tampers with from the given point on.
        count, available = state.get("count"), state["units_available"]
        amount = f"{count} consecutive {unit} units" if count else f"every {unit} unit"
        start = f"from {where[:-2]}: " if where else ""
        return [
            f"{start}{worker} uses {action} on {amount}, each detected with probability {probability} "
            f"({available} of its units over the horizon are checked that weakly)"
        ]
    lines = [f"{where}{worker} uses {action} on its {unit} unit (detected with probability {probability})"]
    lines += [_check_line(c) for c in state.get("checks", [])]
    return lines


#: The role a trace gives a malicious worker that takes no action in it.
IDLE_ROLE = "idle"
#: How the prover's note begins when a proof holds but its minimal assumptions were not found.
_NOT_ISOLATED = "could not be isolated"


def acting_malicious(trace: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The malicious workers of a trace that act (any role but idle), and how many others are
    malicious but idle (the adversary controls them; the attack does not need them to act)."""
    malicious = [m for m in trace.get("malicious") or [] if isinstance(m, dict)]
    acting = [m for m in malicious if m.get("role") != IDLE_ROLE]
    return acting, len(malicious) - len(acting)


def malicious_line(trace: dict[str, Any]) -> str:
    """``malicious: 1:0 (tamperer); 24 more malicious workers are idle`` (empty when none)."""
    acting, idle = acting_malicious(trace)
    parts = [", ".join(f"{m.get('worker')} ({m.get('role')})" for m in acting)] if acting else []
    if idle:
        others = "more " if acting else ""
        parts.append(f"{idle} {others}malicious worker{'s' if idle != 1 else ''} {'are' if idle != 1 else 'is'} idle")
    return "malicious: " + "; ".join(parts) if parts else ""


def listed_assumptions(result: GuaranteeResult) -> list[Any]:
    """The assumptions to show under a verdict: none for a verdict that holds but whose note says
    its assumptions could not be isolated (a partial list after that note would read as the
    complete one)."""
    if result.verdict == "holds" and any(_NOT_ISOLATED in note for note in result.notes):
        return []
    return list(result.assumptions)


def trace_lines(trace: dict[str, Any]) -> list[str]:
    """A counterexample trace as indented lines; malicious workers that do not act are counted,
    not listed."""
    lines = []
    malicious = malicious_line(trace)
    if malicious:
        lines.append(malicious)
    for state in trace.get("states", []):
        lines += _state_lines(state)
    for cost in trace.get("costs", []):
        extra = f"+{cost['compute']:.3g} compute, +{cost['memory']:.3g} memory"
        lines.append(f"{cost['location']}: {cost['item']}: {extra}")
    meta = trace.get("#meta", {})
    if meta.get("description"):
        lines.append(f"=> {meta['description']}")
    return lines


def guarantee_block(result: GuaranteeResult) -> Group:
    """Details of one guarantee: summary, then assumptions or trace or reason."""
    parts: list[Any] = []
    head = Text(f"{_MARK[result.verdict]} {result.id} ", style=_STYLE[result.verdict])
    head.append(f"({result.kind}) ", style="dim")
    summary = result.summary
    if not summary.startswith(result.verdict):
        summary = f"{result.verdict}: {summary}"
    head.append(summary)
    parts.append(_Hanging(head, 0, 4))
    for note in result.notes:
        parts.append(_line(Text(f"note: {note}", style="yellow"), 4))
    assumptions = listed_assumptions(result)
    if result.verdict in ("holds", "vacuous") and assumptions:
        label = "rests on" if result.verdict == "holds" else "contradictory assumptions"
        if result.kind == "overhead":
            label = "cost items"
        parts.append(_line(f"{label}:", 4))
        width = max(len(a.location) for a in assumptions)
        for a in assumptions:
            parts.append(_line(f"{a.location.ljust(width)}  {a.text}", 6, width + 2))
    if result.trace is not None:
        parts.append(_line("attack trace:" if result.kind != "overhead" else "cost breakdown:", 4))
        for line in trace_lines(result.trace):
            stripped = line.lstrip(" ")
            parts.append(_line(stripped, 6 + len(line) - len(stripped), 4))
    if result.verdict == "unknown" and result.reason and result.reason not in result.summary:
        parts.append(_line(f"reason: {result.reason}", 4))
    return Group(*parts)


def verdict_counts(report: Report) -> str:
    """``2 violated, 1 holds``: how many guarantees got each verdict, the ones to act on first."""
    counts: dict[str, int] = {}
    for result in report.guarantees:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
    return ", ".join(f"{counts[v]} {v}" for v in _COUNT_ORDER if v in counts)


def print_report(console: Console, report: Report) -> None:
    """The whole report: header, summary table and every guarantee's details."""
    console.print(Text(f"{report.spec_file}: '{report.spec_name}'", style="bold"))
    for note in report.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    console.print(summary_table(report))
    for result in report.guarantees:
        console.print()
        console.print(guarantee_block(result))
    console.print()
    console.print(verdict_counts(report))
