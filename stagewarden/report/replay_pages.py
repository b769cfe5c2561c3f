"""The replays page of a report: each replayed counterexample with its prediction, the table of
its two runs (the spec's defence and the proposed one) and the proposed defence block."""

from __future__ import annotations

from pygments.lexers import get_lexer_by_name
from pygments.token import Error

from stagewarden.report import rst
from stagewarden.report.pages import Context
from stagewarden.report.replays import ReplayData, ReplayRun


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _language(text: str) -> str:
    """``yaml`` when Pygments lexes ``text`` as YAML without an error (else Sphinx would warn)."""
    tokens = get_lexer_by_name("yaml").get_tokens(text)
    return "text" if any(kind in Error for kind, _ in tokens) else "yaml"


def _row(what: str, outcome: str, replay_run: ReplayRun, docs: dict[int, str]) -> list[str]:
    run = replay_run.run
    counts = replay_run.counts
    return [
        f":doc:`{rst.text(run.name)} <{docs[id(run)]}>`",
        what,
        outcome,
        *(str(counts[k]) for k in ("tampered", "undetected", "in_model", "framed", "detections")),
    ]


def _replay(ctx: Context, replay: ReplayData, docs: dict[int, str]) -> list[str]:
    out = [
        f".. _replay-{rst.label(replay.path.parent.name)}-{rst.label(replay.guarantee)}:",
        "",
        rst.heading(f"{replay.guarantee} ({replay.kind}), replayed", "-"),
        f"From {rst.literal(replay.path)}; spec {rst.literal(replay.spec)}.",
        "",
    ]
    if replay.spec != ctx.loaded.file:
        out += [
            f".. note:: The replay was made from {rst.literal(replay.spec)}, not from this report's spec "
            f"{rst.literal(ctx.loaded.file)}; its trace and prediction are that spec's.",
            "",
        ]
    if any(g.id == replay.guarantee for g in ctx.report.guarantees):
        out += [
            f"The guarantee in this report: :ref:`{rst.text(replay.guarantee)} <guarantee-"
            f"{rst.label(replay.guarantee)}>`.",
            "",
        ]
    out += [
        f"**Trace.** {rst.text(replay.trace or 'the trace has no description')}",
        "",
        f"**Prediction.** A run under the spec's defence shows: {rst.text(replay.prediction)}.",
        "",
        "**Mapping.** How the trace became a run configuration:",
        "",
        *[f"* {rst.text(note)}" for note in replay.mapping],
        "",
    ]
    rows = [_row("the spec's", f"shows the prediction: {_yes(replay.attack.outcome)}", replay.attack, docs)]
    if replay.defended is not None:
        rows.append(_row("proposed", f"stops the attack: {_yes(replay.defended.outcome)}", replay.defended, docs))
    out += [
        rst.table(
            ["run", "defence", "outcome", "tampered", "undetected", "in model", "framed", "detections"],
            rows,
            [16, 9, 21, 9, 10, 9, 8, 10],
            caption="The same attack under two defences",
        ),
        "",
        "*Tampered*: units the attack plan tampered with (its firing rule replayed over the computations "
        "``events.jsonl`` records); *undetected*: those no check caught; *in model*: those left in the final "
        "model; *framed*: detections blaming a stage the attack does not control.",
        "",
        f"* the spec's defence: {rst.text(replay.attack.detail)}",
    ]
    if replay.defended is not None:
        out += [f"* proposed defence: {rst.text(replay.defended.detail)}"]
    out += [""]
    if replay.defence is not None:
        block = replay.defence.rstrip("\n") or "(empty)"
        out += [
            "**Proposed defence.** The cheapest defence ``stagewarden synthesize`` finds under which this guarantee "
            "holds (the spec's other guarantees left out of the search):",
            "",
            f".. code-block:: {_language(block)}",
            "",
            *[f"   {line}" if line.strip() else "" for line in block.splitlines()],
            "",
        ]
    else:
        out += ["No proposed defence was run (``stagewarden replay --no-defence``).", ""]
    return out


def replays_page(ctx: Context, replays: list[ReplayData], docs: dict[int, str]) -> str:
    """A section per replay: trace, prediction, mapping, the table of its two runs and the proposed
    defence. ``docs`` maps each run (by ``id``) to the name of its run page."""
    out = [
        rst.heading("Replays", "="),
        "``stagewarden replay`` mounts the prover's counterexample of a violated guarantee as a live attack in the "
        "multi-process runtime, under the spec's own defence and then under a defence ``stagewarden synthesize`` "
        "proposes. The first run should show what the trace predicts; the second should stop the attack. Both "
        "runs are also on the :doc:`runs` page, with their loss curves, attestation, audit and detection "
        "timelines.",
        "",
    ]
    for replay in replays:
        out += _replay(ctx, replay, docs)
    return "\n".join(out)
