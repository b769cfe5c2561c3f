"""The calibration page of a report: the detection-calibration benchmark's predicted and observed
figures per scenario, with their confidence intervals, and one picture of them all."""

from __future__ import annotations

from stagewarden.report import rst, run_figures
from stagewarden.report.calibration import Calibration
from stagewarden.report.pages import Context


def _yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def calibration_page(ctx: Context, calibration: Calibration) -> str:
    """Per scenario, the benchmark's predicted and observed figures with their confidence
    intervals; one picture of them all; the multi-process runs when the file has them."""
    run_figures.calibration_plot(calibration, ctx.folder / "calibration.png")
    level = f"{calibration.confidence:.0%}"
    rows = [r for s in calibration.scenarios for r in s.rows]
    within = sum(r.within for r in rows)
    out = [
        rst.heading("Calibration", "="),
        f"From {rst.literal(calibration.path)}, written by ``benchmarks/detection_calibration.py``"
        + (f" (seed {calibration.seed}" if calibration.seed is not None else " (")
        + (f"; {rst.text(calibration.machine)})" if calibration.machine else ")")
        + ". Each trial drives the coordinator's spot-check sampling code step by step against an attacker who "
        "holds one stage and tampers with its first ``k`` units of every step from step ``s0`` on, until a "
        "tampered unit is sampled. The trials' detection latency ``L`` (steps from ``s0``) and undetected units "
        "``G`` are set beside the prover's closed forms: with ``q = (1 - p)^k``, ``Pr[L >= l] = q^l`` and "
        "``E[L] = q / (1 - q)``; ``G`` is geometric, ``E[G] = (1 - p) / p`` and "
        "``Pr[G >= K + 1] = (1 - p)^(K + 1)``.",
        "",
        f"**{within} of {len(rows)} predictions lie in their observed {level} interval** (means: normal "
        "approximation; quantiles: order statistics; probabilities: Wilson). At that confidence about one "
        f"prediction in {round(1 / (1 - calibration.confidence))} falls outside by chance alone.",
        "",
        rst.image("calibration.png", "observed figures over the predicted ones, with their confidence intervals"),
        "",
        f"Per figure and scenario: the observed value over the predicted one, with its {level} interval as a bar; "
        "a bar that crosses the line at 1 is a prediction the trials agree with. A figure predicted as 0 (a "
        "quantile of 0 steps) has no ratio and is in the tables only.",
        "",
    ]
    for scenario in calibration.scenarios:
        s = scenario.settings
        out += [
            rst.heading(f"Scenario {scenario.label}", "-"),
            rst.text(
                f"{s['stages']:g} stages, {s['microbatches']:g} micro-batches per step, spot-check rate "
                f"{s['rate']:g}; the attacker holds stage {s['stage']:g} and tampers with {s['per_step']:g} unit(s) "
                f"per step from step {s['start']:g}. {scenario.trials} trials, {scenario.censored} undetected within "
                f"{s['horizon']:g} steps (left out of L); K = {s['k_damage']:g}."
            ),
            "",
            rst.table(
                ["figure", "predicted", "observed", f"{level} interval", "prediction in it"],
                [
                    [
                        rst.text(r.figure),
                        rst.number(r.predicted),
                        rst.number(r.observed),
                        rst.text(f"[{r.low:.4g}, {r.high:.4g}]"),
                        _yes(r.within),
                    ]
                    for r in scenario.rows
                ],
                [34, 14, 14, 24, 14],
            ),
            "",
        ]
    real = calibration.real
    if real is not None:
        caught = [x for x in real["latencies"] if x is not None]
        out += [
            rst.heading("Multi-process runs", "-"),
            rst.text(
                f"{real['runs']} real training run(s) (launch_local) with stage 0 reversing its {real['per_step']} "
                f"activation(s) per step from step {real['start']}, spot-checked at rate {real['rate']:g} for "
                f"{real['steps']} steps: first detection {', '.join(map(str, caught)) or 'never'} step(s) after "
                f"the start ({real['censored']} never caught); predicted mean {real['predicted_mean_latency']:.3g}, "
                "observed mean "
                + (
                    f"{real['observed_mean_latency']:.3g}"
                    if real.get("observed_mean_latency") is not None
                    else "none (no run caught)"
                )
                + ". A handful of runs checks the wiring, not the law: the simulated trials above do that."
            ),
            "",
        ]
    return "\n".join(out)
