"""Pictures of the run side of a report: loss curves of every run on one plot, each run's
detection timeline, the observed detection latency against the predicted geometric law, and the
calibration benchmark's observed figures against the predicted ones."""

from __future__ import annotations

import math
import re
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from stagewarden.report.calibration import Calibration, CalibrationRow
from stagewarden.report.figures import CATCHES, TAMPER, save
from stagewarden.report.latency import Latency, geometric_pmf
from stagewarden.report.runs import RunData


def _losses(run: RunData) -> tuple[list[float], list[float]]:
    rows = [r for r in run.metrics if "step" in r and "loss" in r]
    if rows:
        return [r["step"] for r in rows], [r["loss"] for r in rows]
    losses = list(run.training.losses)
    return [float(i) for i in range(len(losses))], losses


def coinciding_losses(first: RunData, second: RunData) -> int | None:
    """The step from which two runs record the same loss at every step to the end of both (at
    least the last two steps), or None: from there their loss curves lie on top of each other."""
    steps_a, losses_a = _losses(first)
    steps_b, losses_b = _losses(second)
    if len(losses_a) < 2 or steps_a != steps_b or losses_a[-1] != losses_b[-1]:
        return None
    start = len(losses_a) - 1
    while start > 0 and losses_a[start - 1] == losses_b[start - 1]:
        start -= 1
    return int(steps_a[start]) if start <= len(losses_a) - 2 else None


def loss_curves(runs: list[RunData], path: Path) -> Path:
    """Every run's training loss per step on one plot, labelled by run name and attack; a cross
    marks each run's detections. Runs whose curves coincide are told apart by line style and
    marker (the page says where they coincide)."""
    fig = Figure(figsize=(9, 4.2))
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(runs):
        steps, losses = _losses(run)
        if not losses:
            ax.plot([], [], label=f"{run.legend_label} (no steps)")
            continue
        (line,) = ax.plot(
            steps,
            losses,
            label=run.legend_label,
            lw=1.8 + 1.2 * (len(runs) - 1 - i),  # earlier runs drawn wider, so a coinciding later one shows on top
            ls=styles[i % len(styles)],
            marker="os^dv"[i % 5],
            ms=3 + 1.5 * (len(runs) - 1 - i),
            alpha=0.9,
        )
        by_step = dict(zip(steps, losses, strict=True))
        hits = sorted({float(d.step) for d in run.detections})
        ax.plot(
            hits,
            [by_step.get(s, losses[-1]) for s in hits],
            ls="none",
            marker="X",
            ms=9,
            color=line.get_color(),
            mec="black",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.15), frameon=False)
    return save(fig, path)


def attack_windows(run: RunData, steps: int) -> list[tuple[int, float, float]]:
    """``(stage, first, last)`` in plot coordinates for each attacking stage: from the attack's
    first step until the step its stage was first caught (a rollback's ejection names the step it
    restored, which can precede the attack, so detections decide), or the run's end. Every window
    is at least one step wide; an attack whose first step lies past the run's end has none."""
    attack = run.attack
    if attack is None:
        return []
    start = attack.get("start", 0)
    start = start if isinstance(start, int) and start >= 0 else 0
    if start >= steps:
        return []
    ejected = {
        e["stage"]: e["from_step"]
        for e in run.events
        if e.get("event") == "ejected" and isinstance(e.get("stage"), int) and isinstance(e.get("from_step"), int)
    }
    windows = []
    for stage in attack.get("stages", []):
        if not isinstance(stage, int):
            continue
        caught = [d.step for d in run.detections if d.stage == stage and d.step >= start]
        if caught:
            last = min(caught)
        elif stage in ejected and ejected[stage] >= start:
            last = ejected[stage]
        else:
            last = steps - 1
        windows.append((stage, start - 0.5, max(last, start) + 0.5))
    return windows


def timeline(run: RunData, path: Path) -> Path:
    """One run over its steps: units sampled by the spot checks (dots, by stage), the attack's
    window (red band), detections (crosses), ejections and restored checkpoints (vertical lines)."""
    stages = run.record.stages
    steps = max(1, run.training.steps_completed)
    fig = Figure(figsize=(9, 1.2 + 0.45 * stages))
    ax = fig.add_subplot()
    attack = run.attack
    for stage, begin, end in attack_windows(run, steps):
        ax.plot(
            [begin, end],
            [stage, stage],
            color=TAMPER,
            lw=6,
            alpha=0.25,
            solid_capstyle="butt",
            label=f"attacker active ({attack.get('kind') if attack else '?'}) until caught or the end",
        )
    xs, ys = [], []
    for event in run.events:
        if event.get("event") == "spot_check_reveal":
            for unit in event.get("sampled", []):
                if isinstance(unit, dict) and isinstance(unit.get("stage"), int):
                    xs.append(float(event.get("step", 0)))
                    ys.append(unit["stage"] + {"forward": -0.15, "backward": 0.0}.get(str(unit.get("kind")), 0.15))
    if xs:
        ax.plot(xs, ys, ls="none", marker=".", ms=4, color="#555555", label="unit sampled by a spot check")
    hits = run.detections
    if hits:
        ax.plot(
            [d.step for d in hits],
            [d.stage for d in hits],
            ls="none",
            marker="X",
            ms=11,
            color=CATCHES,
            mec="black",
            label="detection",
        )
    for event in run.events:
        kind = event.get("event")
        if kind == "ejected" and isinstance(event.get("from_step"), int):
            ax.axvline(event["from_step"], color="#9467bd", ls="--", lw=1)
            ax.annotate(
                f"{event.get('worker')} ejected, {event.get('standby')} takes over",
                (event["from_step"], -0.6),
                fontsize=7,
                color="#9467bd",
            )
        elif kind == "restored_checkpoint" and isinstance(event.get("step"), int):
            ax.axvline(event["step"], color="#8c564b", ls=":", lw=1)
    ax.set_yticks(range(stages), [f"stage {s}" for s in range(stages)], fontsize=8)
    ax.set_ylim(stages - 0.4, -0.9)
    ax.set_xlim(-0.5, steps - 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        ax.legend(
            unique.values(),
            unique.keys(),
            fontsize=9,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.25),
            ncol=3,
            frameon=False,
        )
    return save(fig, path)


def latency_plot(latencies: list[Latency], path: Path) -> Path:
    """The predicted distribution of the detection latency (probability mass and cumulative), and
    each run's observation as a vertical line (dotted and marked censored when it was never caught)."""
    fig = Figure(figsize=(9, 3.8))
    ax = fig.add_subplot()
    twin = ax.twinx()
    for p in sorted({lat.p for lat in latencies}):
        upto = max([int(4 / p)] + [lat.observed or lat.tampered for lat in latencies if lat.p == p]) + 1
        pmf = geometric_pmf(p, upto)
        ks = list(range(1, upto + 1))
        ax.bar(ks, pmf, width=1.0, alpha=0.35, label=f"predicted Pr[L = k], p = {p:g}")
        cdf, total = [], 0.0
        for value in pmf:
            total += value
            cdf.append(total)
        twin.plot(ks, cdf, lw=1.2, label=f"predicted Pr[L <= k], p = {p:g}")
        ax.axvline(1 / p, color="#555555", ls=":", lw=1)
    for lat in latencies:
        if lat.observed is not None:
            ax.axvline(lat.observed, color=TAMPER, lw=2, label=f"{lat.run}: caught after {lat.observed}")
        else:
            ax.axvline(lat.tampered, color=TAMPER, lw=2, ls="--", label=f"{lat.run}: not caught in {lat.tampered}")
    ax.set_xlabel("tampered units up to and including the first caught one (L)")
    ax.set_ylabel("probability")
    twin.set_ylabel("cumulative probability")
    twin.set_ylim(0, 1.02)
    handles = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(
        handles[0] + more[0],
        handles[1] + more[1],
        fontsize=9,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=2,
        frameon=False,
    )
    return save(fig, path)


def figure_kind(row: CalibrationRow) -> str:
    """The figure a row compares, with the scenario's own ``K`` left out (``Pr[G >= K + 1]``)."""
    return re.sub(r">= \d+", ">= K + 1", row.figure)


def calibration_plot(calibration: Calibration, path: Path) -> Path:
    """Every compared figure relative to its prediction: per figure (mean latency, its quantiles,
    undetected units, the damage tail) and scenario, the observed value over the predicted one with
    its confidence interval as an error bar; a bar that crosses 1 is a prediction the trials agree
    with. Rows predicted as 0 (a quantile of 0 steps) have no ratio and are left out."""
    kinds: list[str] = []
    for scenario in calibration.scenarios:
        kinds += [k for k in map(figure_kind, scenario.rows) if k not in kinds]
    count = len(calibration.scenarios)
    fig = Figure(figsize=(max(9.0, 1.5 * len(kinds)), 4.2))
    ax = fig.add_subplot()
    ax.axhline(1.0, color="black", lw=1)
    width = 0.7 / max(1, count)
    for j, scenario in enumerate(calibration.scenarios):
        xs, ys, below, above = [], [], [], []
        for i, kind in enumerate(kinds):
            row = next((r for r in scenario.rows if figure_kind(r) == kind), None)
            if row is None or row.predicted <= 0:
                continue
            ratio = row.observed / row.predicted
            xs.append(i + (j - (count - 1) / 2) * width)
            ys.append(ratio)
            below.append(max(0.0, ratio - row.low / row.predicted) if math.isfinite(row.low) else 0.0)
            above.append(max(0.0, row.high / row.predicted - ratio) if math.isfinite(row.high) else 0.0)
        ax.errorbar(xs, ys, yerr=[below, above], fmt="o", ms=4, capsize=3, label=scenario.label)
    ax.set_xticks(range(len(kinds)), kinds, fontsize=8, rotation=15, ha="right")
    ax.set_xlim(-0.5, len(kinds) - 0.5)
    ax.set_ylabel(f"observed / predicted ({calibration.confidence:.0%} interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(4, count), frameon=False)
    return save(fig, path)
