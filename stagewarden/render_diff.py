"""Text rendering of a verdict diff for people: one row per guarantee, then the new attack for
every guarantee that got worse."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from stagewarden.prover.diff import ADDED, CHANGED, IMPROVED, REGRESSED, REMOVED, UNCHANGED, DiffResult
from stagewarden.render import trace_lines

_STYLE = {
    REGRESSED: "bold red",
    IMPROVED: "green",
    CHANGED: "yellow",
    ADDED: "cyan",
    REMOVED: "magenta",
    UNCHANGED: "dim",
}


def print_diff(console: Console, diff: DiffResult) -> None:
    """The comparison: both versions, a table of every guarantee, and the attacks that are new."""
    console.print(Text(f"old: {diff.old.spec_file} ('{diff.old.spec_name}')", style="bold"))
    console.print(Text(f"new: {diff.new.spec_file} ('{diff.new.spec_name}')", style="bold"))
    table = Table(show_edge=False, pad_edge=False)
    for column in ("guarantee", "kind", "old", "new", "change"):
        table.add_column(column)
    for entry in diff.entries:
        label = entry.change + (" (regression)" if entry.change == ADDED and entry.regression else "")
        table.add_row(
            entry.id,
            entry.kind,
            entry.old_verdict or "-",
            entry.new_verdict or "-",
            Text(label, style=_STYLE[entry.change]),
        )
    console.print(table)
    for entry in diff.changes:
        console.print()
        mark = "✘" if entry.regression else "•"
        line = Text(
            f"{mark} {entry.id} {entry.change}: {entry.old_verdict or 'absent'} -> {entry.new_verdict or 'absent'}",
            style=_STYLE[entry.change],
        )
        console.print(line)
        if entry.new is not None:
            console.print(Text(f"    new: {entry.new.summary}"))
        elif entry.old is not None:
            console.print(Text(f"    was: {entry.old.summary}"))
        if entry.trace is not None:
            console.print(Text("    attack trace:" if entry.kind != "overhead" else "    cost breakdown:"))
            for trace_line in trace_lines(entry.trace):
                console.print(Text(f"      {trace_line}"))
        if entry.new is not None and entry.new.reason and entry.new_verdict != entry.old_verdict:
            console.print(Text(f"    reason: {entry.new.reason}"))
    console.print()
    counts = [f"{len(diff.of(c))} {c}" for c in (REGRESSED, IMPROVED, CHANGED, ADDED, REMOVED, UNCHANGED) if diff.of(c)]
    verdict = (
        "no guarantee got worse"
        if not diff.regressions
        else f"{len(diff.regressions)} regression{'s' if len(diff.regressions) != 1 else ''}"
    )
    console.print(
        Text(
            f"{', '.join(counts) or 'no guarantees'}: {verdict}", style="bold red" if diff.regressions else "bold green"
        )
    )
