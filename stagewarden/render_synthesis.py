"""Text rendering of a synthesis result for people: the ``defense:`` block ready to paste, its
cost and its proof; or why no defence in the space works, guarantee by guarantee."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from stagewarden.prover.synthesis import CONTRADICTORY, FOUND, NO_DEFENCE, SynthesisResult
from stagewarden.render import guarantee_block, print_report


def print_synthesis(console: Console, result: SynthesisResult, written: str | None = None) -> None:
    """The whole synthesis result; ``written`` is the file the spec with the defence was written to."""
    plural = "s" if result.candidates_tried != 1 else ""
    effort = f"{result.candidates_tried} candidate{plural} tried in {result.seconds:.1f} s"
    head = Text(f"{result.spec_file}: '{result.spec_name}'", style="bold")
    if result.status == FOUND and result.candidate is not None:
        cand = result.candidate
        head.append(f": the cheapest defence under which every guarantee holds ({effort})", style="")
        console.print(head)
        console.print()
        console.print(Text(result.yaml_block or "", style="cyan"), end="")
        console.print()
        console.print(
            Text(
                f"cost: +{float(cand.compute):.3g} compute, +{float(cand.memory):.3g} memory (the overhead cost model)"
            )
        )
        if result.costs:
            width = max(len(c.location) for c in result.costs)
            for item in result.costs:
                extra = f"+{float(item.compute):.3g} compute, +{float(item.memory):.3g} memory"
                console.print(Text(f"  {item.location.ljust(width)}  {item.item}: {extra}"))
        for note in result.notes:
            console.print(Text(f"note: {note}", style="yellow"))
        console.print()
        lines = result.defense_lines
        where = f", defense: at lines {lines[0]}-{lines[1]}" if lines else ""
        place = f", written to {written}{where}" if written is not None else f" ({result.proof_file}{where})"
        console.print(Text(f"proof: the spec with this defence in place{place}", style="bold"))
        if result.report is not None:
            print_report(console, result.report)
        return
    if result.status == NO_DEFENCE:
        head.append(f": no defence in the search space makes every guarantee hold ({effort})", style="bold red")
    elif result.status == CONTRADICTORY:
        head.append(f": the spec's assumptions contradict each other ({effort})", style="bold magenta")
    else:
        head.append(f": the search gave up ({effort})", style="yellow")
    console.print(head)
    if result.reason:
        console.print(Text(f"reason: {result.reason}"))
    for note in result.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    for obstacle in result.obstacles:
        console.print()
        console.print(Text(f"{obstacle.id} ({obstacle.kind}): {obstacle.message}"))
        if obstacle.result is not None:
            console.print(guarantee_block(obstacle.result))
