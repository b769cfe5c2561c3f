"""The proof pages of a report: index with the summary table, guarantees with traces and
assumptions, the spec with line anchors, topology, sensitivity, taxonomy and modelling assumptions.

Each writer returns reStructuredText and writes the pictures it needs into the project folder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stagewarden._version import __version__
from stagewarden.prover import GuaranteeResult, Report, check_graph
from stagewarden.prover.figure_text import format_figure
from stagewarden.render import acting_malicious, listed_assumptions
from stagewarden.report import figures, rst, sweeps
from stagewarden.report.modelling import ASSUMPTIONS
from stagewarden.report.taxonomy import FAMILIES, classify
from stagewarden.spec import BoundedDamageGuarantee, DetectionGuarantee, LoadedSpec, probability_fraction

SPEC_FILE = "spec.txt"
VERDICT_MARK = {"holds": "holds", "violated": "**violated**", "unknown": "*unknown*", "vacuous": "**vacuous**"}


@dataclasses.dataclass
class Context:
    """What every page writer needs."""

    loaded: LoadedSpec
    report: Report
    folder: Path  # the Sphinx source folder

    @property
    def spec_lines(self) -> list[str]:
        """The spec's source lines."""
        return self.loaded.text.splitlines()


def line_of(location: str) -> int | None:
    """The line number of a ``file:line`` location, when it has one."""
    tail = location.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def line_ref(ctx: Context, location: str) -> str:
    """A link to the spec line of ``location`` (plain text when it names no line of this spec)."""
    line = line_of(location)
    if line is None or not 1 <= line <= len(ctx.spec_lines):
        return rst.text(location)
    return f":ref:`line {line} <spec-line-{line}>`"


def referenced_lines(ctx: Context) -> dict[int, list[str]]:
    """Every spec line some holding guarantee rests on, with those guarantees' ids."""
    lines: dict[int, list[str]] = {}
    for g in ctx.report.guarantees:
        for a in listed_assumptions(g):
            line = line_of(a.location)
            if line is not None and 1 <= line <= len(ctx.spec_lines) and g.id not in lines.setdefault(line, []):
                lines[line].append(g.id)
    return lines


def _bound(g: GuaranteeResult) -> str:
    f = g.figure
    if f is None:
        return "trivially (no worker can be malicious)" if g.trivially else "\\-"
    value, bound = format_figure(f)  # as many digits as it takes to tell them apart
    return f"achieved {rst.text(value)}, needs {rst.text(f.relation)} {rst.text(bound)}"


def _rests_on(ctx: Context, g: GuaranteeResult) -> str:
    if g.verdict != "holds":
        return "\\-"
    parts = [f"{rst.text(a.text)} ({line_ref(ctx, a.location)})" for a in listed_assumptions(g)]
    return "; ".join(parts) or "\\-"


def index_page(
    ctx: Context,
    runs: list[str],
    pages: list[str],
    replays: Sequence[str] = (),
    calibration: str | None = None,
    headline: Sequence[str] = (),
) -> str:
    """The report's front page: spec description, what the report was built from, the summary
    table, the headline of the runs (``headline``, reStructuredText lines) and the contents. The
    TEE notice is above every page, this one included, so the page does not repeat it."""
    spec = ctx.loaded.spec
    title = f"Security report: {spec.name}"
    out = [rst.heading(title, "=")]
    if spec.description.strip():
        out += [rst.text(spec.description), ""]
    counts = {
        v: sum(1 for g in ctx.report.guarantees if g.verdict == v) for v in ("holds", "violated", "unknown", "vacuous")
    }
    tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    out += [
        f"Spec {rst.literal(ctx.loaded.file)} ({rst.text(tally)}), checked by stagewarden {rst.text(__version__)}; "
        + (
            f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}: " + ", ".join(rst.literal(r) for r in runs)
            if runs
            else "no run directory was given apart from the replays' runs"
            if replays
            else "no run directory was given, so this report shows the proof only"
        )
        + ".",
        "",
    ]
    if replays:
        out += [
            f"{len(replays)} :doc:`replay{'' if len(replays) == 1 else 's'} <replays>` of a counterexample: "
            + ", ".join(rst.literal(r) for r in replays)
            + ".",
            "",
        ]
    if calibration is not None:
        out += [f"The detection :doc:`calibration <calibration>` benchmark's result: {rst.literal(calibration)}.", ""]
    out += ["The verdicts as JSON: :download:`verdicts.json <verdicts.json>`.", ""]
    rows = []
    for g in ctx.report.guarantees:
        rows.append(
            [
                f":ref:`{rst.text(g.id)} <guarantee-{rst.label(g.id)}>`",
                rst.text(g.kind),
                VERDICT_MARK.get(g.verdict, g.verdict),
                _bound(g),
                _rests_on(ctx, g),
            ]
        )
    out += list(headline)
    out += [
        rst.heading("Summary", "-"),
        rst.table(
            ["guarantee", "kind", "verdict", "bound vs achieved", "rests on (spec assumptions)"],
            rows,
            [12, 10, 8, 20, 50],
        ),
        "",
    ]
    out += [".. toctree::", "   :maxdepth: 2", "   :caption: Contents", ""] + [f"   {p}" for p in pages] + [""]
    (ctx.folder / "verdicts.json").write_text(json.dumps(ctx.report.to_json(), indent=2) + "\n", encoding="utf-8")
    return "\n".join(out)


def _trace_rows(trace: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = [v for v in trace.get("vars", []) if v != "checks"]
    has_checks = "checks" in trace.get("vars", [])
    header = names + (["checks"] if has_checks else [])
    rows = []
    for state in trace.get("states", []):
        row = [rst.text("" if state.get(v) is None else state.get(v)) for v in names]
        if has_checks:
            checks = [
                f"{c.get('check') or 'none'} by {c.get('checker') or '-'}: {c.get('result')} "
                f"(p={c.get('probability')}); {c.get('why', '')}"
                for c in state.get("checks", [])
            ]
            row.append(rst.text(" | ".join(checks)))
        rows.append(row)
    return header, rows


def _violated(ctx: Context, g: GuaranteeResult, out: list[str]) -> None:
    trace = g.trace or {}
    meta = trace.get("#meta", {})
    if meta.get("description"):
        what = "Cost" if g.kind == "overhead" else "Attack"
        out += [f"**{what}.** {rst.text(meta['description'])}", ""]
    acting, idle = acting_malicious(trace)
    if acting:
        rows = [
            [rst.text(m.get("worker")), rst.text(m.get("role")), rst.text(", ".join(m.get("capabilities", [])))]
            for m in acting
        ]
        out += [rst.table(["malicious worker", "role", "capabilities"], rows, caption="Who the attack uses"), ""]
    if idle:
        out += [
            f"{idle} further malicious worker{'s' if idle != 1 else ''} (within the adversary's budget) "
            f"take{'s' if idle == 1 else ''} no action in this attack.",
            "",
        ]
    states = trace.get("states", [])
    if states:
        header, rows = _trace_rows(trace)
        out += [rst.table(header, rows, caption="The attack trace, state by state"), ""]
        name = f"trace-{rst.label(g.id)}.png"
        figures.swimlane(trace, ctx.loaded.spec, ctx.folder / name)
        out += [
            rst.image(name, f"swimlane of the attack on {g.id}"),
            "",
            "Lanes are workers, columns the units of the step (forward and backward per micro-batch, then the "
            "update). Filled cells are what the malicious workers do; arrows are the checks of the tampered unit, "
            "from the checker, green when it catches, grey dashed when it passes.",
            "",
        ]
    costs = trace.get("costs", [])
    if costs:
        rows = [
            [
                rst.text(c.get("item")),
                line_ref(ctx, str(c.get("location", ""))),
                rst.number(c.get("compute")),
                rst.number(c.get("memory")),
            ]
            for c in costs
        ]
        out += [rst.table(["cost item", "spec line", "extra compute", "extra memory"], rows), ""]
    outcome = trace.get("outcome")
    if outcome:
        out += ["**Outcome.** " + rst.text(outcome_text(outcome)) + ".", ""]
    name = f"trace-{rst.label(g.id)}.json"
    (ctx.folder / name).write_text(json.dumps(trace, indent=2) + "\n", encoding="utf-8")
    out += [f"The trace as JSON (replayable by the runtime): :download:`{name} <{name}>`.", ""]


#: Words for the keys of a trace's ``outcome``.
_OUTCOME_WORDS = {
    "compute": "extra compute",
    "memory": "extra memory",
    "max_compute": "allowed extra compute",
    "max_memory": "allowed extra memory",
    "detection_probability": "detection probability",
    "required": "required",
}


def outcome_text(outcome: dict[str, Any]) -> str:
    """A trace's ``outcome`` in words: ``extra compute 0.833, allowed extra compute 0.25, allowed
    extra memory: no bound`` (numbers to 4 significant digits)."""
    parts = []
    for key, value in outcome.items():
        name = _OUTCOME_WORDS.get(key, key.replace("_", " "))
        if value is None:
            parts.append(f"{name}: no bound" if key.startswith("max_") else f"{name}: none")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            parts.append(f"{name} {value}")
        else:
            parts.append(f"{name} {value:.4g}")
    return ", ".join(parts)


def _holds(ctx: Context, g: GuaranteeResult, out: list[str]) -> None:
    if g.trivially:
        out += ["It holds *trivially*: the assumptions below leave the adversary no worker to control.", ""]
    if not listed_assumptions(g):
        return
    rows = []
    for a in listed_assumptions(g):
        line = line_of(a.location)
        source = ctx.spec_lines[line - 1].strip() if line and 1 <= line <= len(ctx.spec_lines) else ""
        rows.append([rst.text(a.text), line_ref(ctx, a.location), rst.literal(source) or "\\-", rst.literal(a.key)])
    caption = (
        "The cost items" if g.kind == "overhead" else "The assumptions the proof needs (drop any one and it fails)"
    )
    out += [rst.table(["assumption", "spec line", "source", "key"], rows, [40, 10, 35, 15], caption=caption), ""]


def guarantees_page(ctx: Context) -> str:
    """One section per guarantee: verdict and figure; the trace (table and swimlane) of a
    violated one; the assumptions, linked to spec lines, of one that holds."""
    out = [rst.heading("Guarantees", "="), "Every guarantee of the spec with the prover's verdict.", ""]
    for g in ctx.report.guarantees:
        out += [
            f".. _guarantee-{rst.label(g.id)}:",
            "",
            rst.heading(f"{g.id} ({g.kind}): {g.verdict}", "-"),
            rst.text(g.summary),
            "",
        ]
        if g.figure is not None:
            out += [
                f"**{rst.text(g.figure.name)}**: {_bound(g)}"
                + (f" (exactly {rst.literal(g.figure.exact)})" if g.figure.exact else "")
                + ".",
                "",
            ]
        if g.verdict == "violated":
            _violated(ctx, g, out)
        elif g.verdict == "holds":
            _holds(ctx, g, out)
        if g.reason:
            out += [f"**Reason.** {rst.text(g.reason)}", ""]
        for note in g.notes:
            out += [f"* {rst.text(note)}"]
        out += [""]
    return "\n".join(out)


def spec_page(ctx: Context) -> str:
    """The spec with line numbers (lines some proof rests on emphasised) and an anchor per such line."""
    (ctx.folder / SPEC_FILE).write_text(
        ctx.loaded.text if ctx.loaded.text.endswith("\n") else ctx.loaded.text + "\n", encoding="utf-8"
    )
    lines = referenced_lines(ctx)
    language = "json" if ctx.loaded.file.endswith(".json") else "yaml"
    out = [
        rst.heading("The spec", "="),
        f"{rst.literal(ctx.loaded.file)}, as the prover read it. Highlighted lines are "
        "assumptions some proof rests on; each has an anchor below.",
        "",
        f".. literalinclude:: {SPEC_FILE}",
        f"   :language: {language}",
        "   :linenos:",
    ]
    if lines:
        out.append("   :emphasize-lines: " + ",".join(str(n) for n in sorted(lines)))
    out += ["", rst.heading("Lines the proofs rest on", "-")]
    if not lines:
        out += ["No proof rests on a line of this spec.", ""]
    for line in sorted(lines):
        users = ", ".join(f":ref:`{rst.text(gid)} <guarantee-{rst.label(gid)}>`" for gid in lines[line])
        texts = sorted({a.text for g in ctx.report.guarantees for a in g.assumptions if line_of(a.location) == line})
        out += [
            f".. _spec-line-{line}:",
            "",
            rst.heading(f"Line {line}", "~"),
            f".. literalinclude:: {SPEC_FILE}",
            "   :language: text",
            f"   :lines: {line}",
            f"   :lineno-start: {line}",
            "",
            f"Rests on it: {users}. It states: " + "; ".join(rst.text(t) for t in texts) + ".",
            "",
        ]
    return "\n".join(out)


def topology_page(ctx: Context) -> str:
    """The pipeline and the who-checks-whom graph, as a picture and as a table."""
    spec = ctx.loaded.spec
    t = spec.topology
    figures.topology(spec, ctx.folder / "topology.png")
    graph = check_graph(spec)
    rows = [
        [rst.text(u), rst.text(v), rst.text(d["scheme"])]
        for u, v, d in graph.edges(data=True)
        if d["scheme"] != "dataflow"
    ]
    out = [
        rst.heading("Topology and checks", "="),
        rst.text(
            f"{t.stages} stages x {t.replicas} replica(s), {t.microbatches} micro-batches per step, "
            f"{t.steps} steps, {t.standby} standby worker(s), {spec.total_workers} workers the adversary could "
            f"occupy; budget {spec.malicious_budget} malicious worker(s)."
        ),
        "",
        rst.image("topology.png", "topology and who-checks-whom graph"),
        "",
        "Nodes are slots ``stage:replica`` (and the verifiers the checks use); black arrows are the data flow, "
        "coloured arrows go from a checker to the slot it checks.",
        "",
    ]
    if any(c.scheme == "robust_aggregation" for c in spec.defense.checks):
        out += ["``robust_aggregation`` draws no edge: it masks corrupted updates and detects nothing.", ""]
    out += [
        rst.table(["checker", "checked", "scheme"], rows, caption="Who checks whom")
        if rows
        else "No check: nobody checks anybody.",
        "",
    ]
    return "\n".join(out)


def _sweep_section(ctx: Context, sweep: sweeps.Sweep, name: str) -> list[str]:
    spec = ctx.loaded.spec
    det = next((g for g in spec.guarantees if g.id == sweep.detection_id), None)
    dam = next((g for g in spec.guarantees if g.id == sweep.damage_id), None)
    det_bound = float(probability_fraction(det.probability)) if isinstance(det, DetectionGuarantee) else None
    dam_bound = float(1 - probability_fraction(dam.probability)) if isinstance(dam, BoundedDamageGuarantee) else None
    figures.sensitivity(sweep, det_bound, dam_bound, ctx.folder / name)
    out = [rst.image(name, f"detection and damage probability against {sweep.parameter}"), ""]
    notes = []
    if "detection" in sweep.probes:
        notes.append(
            "the spec has no detection guarantee; the left curve is that of a probe guarantee "
            "(every tampering capability, P = 1) added for this sweep only"
        )
    if "bounded_damage" in sweep.probes:
        notes.append(
            "the spec has no bounded_damage guarantee; the right curve is that of a probe with K = 0 "
            "(the probability that any tampered unit stays undetected), added for this sweep only"
        )
    if sweep.note:
        notes.append(sweep.note)
    notes.append("a point without a detection figure is one where no worker can be malicious")
    out += [f"* {rst.text(n)}" for n in notes] + [""]
    rows = [
        [
            rst.number(p.x),
            rst.number(p.detection),
            rst.text(p.detection_verdict),
            rst.number(p.damage),
            rst.text(p.damage_verdict),
        ]
        for p in sweep.points
    ]
    out += [
        rst.table(
            [
                rst.text(sweep.parameter),
                "detection probability",
                f"verdict ({rst.text(sweep.detection_id)})",
                f"Pr[more than {sweep.damage_k} undetected]",
                f"verdict ({rst.text(sweep.damage_id)})",
            ],
            rows,
        ),
        "",
    ]
    return out


def sensitivity_page(ctx: Context) -> str:
    """Detection and damage probability against the spot-check rate and the adversary's budget."""
    out = [
        rst.heading("Sensitivity", "="),
        "How the worst-case per-unit detection probability and the probability that more than K tampered units "
        "stay undetected change with the spot-check rate and with the adversary's budget. Every point is the "
        "prover's own figure for a copy of the spec with that one value changed (its closed forms, see the "
        "modelling assumptions); the star marks this spec.",
        "",
    ]
    rate = sweeps.rate_sweep(ctx.loaded)
    out += [rst.heading("Against the spot-check rate", "-")]
    if rate is None:
        out += ["The spec has no spot check, so the rate is not one of its parameters.", ""]
    else:
        out += _sweep_section(ctx, rate, "sensitivity-rate.png")
    out += [rst.heading("Against the adversary's budget", "-")]
    out += _sweep_section(ctx, sweeps.budget_sweep(ctx.loaded), "sensitivity-budget.png")
    return "\n".join(out)


def taxonomy_page(ctx: Context) -> str:
    """The paper's threat families with the spec's capabilities and what covers them."""
    threats = classify(ctx.loaded.spec, ctx.report)
    out = [
        rst.heading("Threat taxonomy", "="),
        "Lu et al. (ICML 2024) sort the threats to pipeline-parallel decentralized training into three families: "
        "hardware, data and model. Each threat below is marked with whether this spec's adversary has it, the "
        "defences of the spec that act on it, and the guarantees that speak about it (with their verdicts). The "
        "verdicts are the authority; the defences column only names mechanisms.",
        "",
    ]
    for family, description, _ in FAMILIES:
        rows = []
        for threat in (t for t in threats if t.family == family):
            rows.append(
                [
                    rst.literal(threat.name),
                    "yes" if threat.in_spec else "no",
                    rst.text(", ".join(threat.defences) or "none"),
                    rst.text(", ".join(f"{gid}: {v}" for gid, v in threat.guarantees) or "none"),
                ]
            )
        out += [
            rst.heading(f"{family.capitalize()} threats", "-"),
            rst.text(description) + ".",
            "",
            rst.table(
                ["threat", "in the spec", "defences acting on it", "guarantees (verdict)"], rows, [20, 10, 35, 35]
            ),
            "",
        ]
    return "\n".join(out)


def modelling_page(notice: str) -> str:
    """The modelling assumptions behind every verdict, led by ``notice``: what the runs' attestation
    is (plain text, as the banner states it)."""
    out = [
        rst.heading("Modelling assumptions", "="),
        "Beyond the spec lines each proof names, every verdict of this report rests on the prover's model. "
        "Where the world differs from it, so may the conclusion.",
        "",
        f"1. {rst.text(notice)} (documentation: attestation)",
        "",
    ]
    for number, (statement, source) in enumerate(ASSUMPTIONS, start=2):
        out += [f"{number}. {statement} (documentation: {rst.text(source)})", ""]
    return "\n".join(out)
