"""The run pages of a report: every run on one loss plot, throughput and overhead, predicted
against observed detection, and one page per run with its attestation table, receipt audit,
spot-check counts and detection timeline."""

from __future__ import annotations

from pathlib import Path

from stagewarden.attest.errors import ErrorCode
from stagewarden.report import rst, run_figures
from stagewarden.report.attestation_kinds import AttestationKind, run_attestation_kind
from stagewarden.report.latency import Latency, observed_latency
from stagewarden.report.pages import Context
from stagewarden.report.runs import RunData
from stagewarden.report.sweeps import detection_at_rate
from stagewarden.run_outcome import attack_outcome, status_line


def _status(run: RunData) -> str:
    """The status with why a run stopped, or that an attack went undetected (never a bare
    ``completed`` beside one), and the steps completed."""
    said = status_line(run.training, attack_outcome(run.path, run.record))
    return f"{said}; {run.training.steps_completed} steps"


def overview_page(ctx: Context, runs: list[RunData], pages: list[str]) -> str:
    """Every run side by side: loss curves, throughput and overhead, predicted vs observed detection."""
    run_figures.loss_curves(runs, ctx.folder / "loss.png")
    out = (
        [
            rst.heading("Runs", "="),
            "The run directories given to the report: each run's name (its directory's), its attack and its defence.",
            "",
            rst.table(
                ["run", "attack", "defence", "status", "detections", "directory"],
                [
                    [
                        f":doc:`{rst.text(r.short_name)} <{p}>`",
                        rst.text(r.attack_text),
                        rst.text(r.defence_text),
                        rst.text(_status(r)),
                        str(len(r.detections)),
                        rst.literal(r.path),
                    ]
                    for r, p in zip(runs, pages, strict=True)
                ],
                [12, 18, 22, 12, 8, 28],
            ),
            "",
            ".. toctree::",
            "   :maxdepth: 1",
            "",
        ]
        + [f"   {p}" for p in pages]
        + [""]
    )
    out += [
        rst.heading("Loss curves", "-"),
        rst.image("loss.png", "training loss of every run"),
        "",
        "The training loss per step of every run on one plot; a cross marks a step with a detection.",
        "",
    ]
    out += _coinciding(runs)
    out += _pinning(runs) + _throughput(runs) + _detection(ctx, runs)
    return "\n".join(out)


def _coinciding(runs: list[RunData]) -> list[str]:
    """A note for each pair of runs whose loss curves lie on top of each other, saying why."""
    out = []
    for i, first in enumerate(runs):
        for second in runs[i + 1 :]:
            start = run_figures.coinciding_losses(first, second)
            if start is None:
                continue
            if start == 0:
                why = (
                    "they record the same loss at every step: the same seed, data and model, and no tampered "
                    "computation reached the weights of either run"
                )
            else:
                why = (
                    f"from step {start} on they record the same loss at every step: the later run went back to "
                    "a state both share (a verified checkpoint) and trained on from there as the other did"
                )
            out += [
                f"*Note:* the curves of {rst.literal(first.short_name)} and {rst.literal(second.short_name)} "
                f"coincide ({rst.literal(second.short_name)} is drawn on top); {why}.",
                "",
            ]
    return out


def _pinning(runs: list[RunData]) -> list[str]:
    """Once for the whole report: what an audit with the verifier key read from the run directory
    shows, and how to pin the key (the run pages then leave that warning out)."""
    unpinned = [
        r
        for r in runs
        if r.audit.report is not None and r.audit.report.verifier_key and not r.audit.report.verifier_key_pinned
    ]
    if not unpinned:
        return []
    return [
        ".. _pin-verifier-key:",
        "",
        rst.heading("The verifier key these audits trust", "-"),
        "Each run's receipt audit checks the attestation results against the verifier's public key. "
        "This report read that key from the run directory itself (``attestation/verifier.pub``), so the audits "
        "show that each run is consistent with the key it ships, no more: whoever wrote a run directory could "
        "have written a key of their own there and signed attestation results for any worker with it. "
        "For a run you trained yourself that is no risk. For a run someone else gives you, get the verifier's "
        "public key from the verifier's operator over a channel the run's author does not control, and audit "
        "with it pinned:",
        "",
        ".. code-block:: console",
        "",
        "   $ stagewarden audit RUN_DIR --verifier-key VERIFIER_PUBLIC_KEY_HEX",
        "",
        "Each such audit reports this as the warning ``VERIFIER_KEY_UNPINNED``; it is explained here once "
        "and left out of the run pages' findings. The same holds for the coordinator's public key, which the "
        "run's signed step heads are checked against (``coordinator.pub``, warning ``COORDINATOR_KEY_UNPINNED``; "
        "pin it with ``--coordinator-key``, and pass a worker's witness file with ``--witness`` to check the "
        "record against what that worker kept).",
        "",
    ]


def _throughput(runs: list[RunData]) -> list[str]:
    baseline = next((r for r in runs if not r.secured and r.training.status == "completed"), None)
    rows = []
    for run in runs:
        tps = run.training.tokens_per_second
        overhead = "\\-"
        if baseline is not None and tps and run is not baseline:
            base = baseline.training.tokens_per_second
            overhead = f"{base / tps - 1:+.1%}" if base else "\\-"
        elif run is baseline:
            overhead = "baseline"
        busy = run.training.stage_busy_seconds
        rows.append(
            [
                rst.text(run.short_name),
                rst.number(tps),
                rst.number(run.training.wall_seconds),
                rst.text(", ".join(f"{b:.3g}" for b in busy) or "-"),
                overhead,
            ]
        )
    out = [
        rst.heading("Throughput and overhead", "-"),
        rst.table(["run", "tokens per second", "wall seconds", "busy seconds per stage", "overhead"], rows),
        "",
    ]
    if baseline is None:
        out += [
            "No completed run without security (receipts, attestation and verification off) was given, so the "
            "overhead is not measured; give one with another ``--run`` to see it.",
            "",
        ]
    else:
        out += [
            f"Overhead is the extra time per token relative to {rst.literal(baseline.name)}, the run without "
            "security: baseline tokens per second over the run's, minus one. Short runs on a shared machine "
            "are noisy; the benchmarks give repeatable figures.",
            "",
        ]
    return out


def _detection(ctx: Context, runs: list[RunData]) -> list[str]:
    out = [rst.heading("Predicted vs observed detection", "-")]
    latencies: list[Latency] = []
    reasons = []
    for run in runs:
        rate = run.config.get("spot_check_rate")
        if run.config.get("verification") != "spot_check" or not isinstance(rate, int | float):
            reasons.append(f"{run.name}: the run does not spot-check")
            continue
        p = detection_at_rate(ctx.loaded, float(rate))
        if p is None:
            reasons.append(f"{run.name}: the prover gives no detection figure (no worker can be malicious)")
            continue
        result = observed_latency(run, p)
        if isinstance(result, str):
            reasons.append(f"{run.name}: {result}")
        else:
            latencies.append(result)
    if latencies:
        run_figures.latency_plot(latencies, ctx.folder / "latency.png")
        rows = [
            [
                rst.text(lat.run),
                rst.number(lat.p),
                rst.number(lat.mean),
                str(lat.observed) if lat.observed is not None else f"not caught in {lat.tampered}",
                rst.number(lat.cdf),
            ]
            for lat in latencies
        ]
        out += [
            "For each spot-checked run under attack: the per-unit detection probability ``p`` the prover gives for "
            "the spec at the run's spot-check rate, the predicted mean latency ``1/p`` in tampered units, the "
            "observed latency (tampered units up to and including the first caught one), and where it falls in "
            "the predicted geometric law: ``Pr[L <= observed]`` (for a run never caught, ``Pr[L > tampered]``, "
            "the chance of that).",
            "",
            rst.table(["run", "p (prover)", "predicted mean", "observed latency", "predicted probability"], rows),
            "",
            rst.image("latency.png", "predicted geometric distribution and observed latencies"),
            "",
            "One run is one sample: it can sit anywhere in the distribution without contradicting the proof; "
            "many runs are needed to test the law itself.",
            "",
        ]
    else:
        out += ["No spot-checked run under attack was given, so there is no observed latency to compare.", ""]
    out += [f"* {rst.text(r)}" for r in reasons] + [""]
    return out


def run_page(ctx: Context, run: RunData, index: int) -> str:
    """One run: configuration, attestation table, receipt audit, spot-check counts, detection timeline."""
    out = [
        rst.heading(f"Run {index}: {run.name}", "="),
        (f"**Role:** {rst.text(run.title)}. " if run.title else "")
        + f"**Attack:** {rst.text(run.attack_text)}. **Defence:** {rst.text(run.defence_text)}.",
        "",
    ]
    outcome = attack_outcome(run.path, run.record)
    if outcome is not None:
        out += [f"**Injected attack:** {rst.text(outcome.line())}.", ""]
    out += [
        rst.table(
            ["run id", "status", "workers", "micro-batches", "directory"],
            [
                [
                    rst.literal(run.record.run_id),
                    rst.text(_status(run)),
                    rst.text(len(run.record.workers)),
                    rst.text(run.record.micro_batches),
                    rst.literal(run.path),
                ]
            ],
        ),
        "",
    ]
    out += [
        rst.heading("Attestation", "-"),
        "Each worker's latest attestation result, read from ``attestation/`` (the results' signatures are "
        "checked against ``attestation/verifier.pub``, the key the run ships; the audit below judges each "
        f"result at the time it was used). {_evidence_source(run)}",
        "",
    ]
    rows = [
        [
            rst.text(a.worker),
            rst.literal(a.device_id),
            rst.literal(a.measurement[:16] + "..." if a.measurement else ""),
            rst.text(a.tcb_status or "-"),
            rst.text(f"{a.status}; signature {a.signature}"),
            rst.text(a.expires_at.isoformat() if a.expires_at else "-"),
        ]
        for a in run.attestations
    ]
    out += [
        rst.table(["worker", "device id", "measurement", "TCB status", "result", "expires"], rows)
        if rows
        else "The run directory holds no attestation evidence or results.",
        "",
    ]
    out += _audit(run) + _spot_checks(run)
    name = f"timeline-{rst.label(run.name)}-{index}.png"
    run_figures.timeline(run, ctx.folder / name)
    out += [rst.heading("Detection timeline", "-"), rst.image(name, f"detection timeline of {run.name}"), ""]
    rows = [
        [
            rst.text(d.step),
            rst.text(d.microbatch),
            rst.text(d.worker),
            rst.text(d.check),
            rst.text(d.unit_kind),
            rst.text(d.message),
        ]
        for d in run.detections
    ]
    out += [
        rst.table(["step", "micro-batch", "worker", "check", "unit", "message"], rows, caption="Detections")
        if rows
        else "No detection.",
        "",
    ]
    for r in run.training.responses:
        plan = r.plan
        said = {
            "response": plan.response,
            "convict": plan.convict,
            "ejected": plan.ejected,
            "standby": plan.standby,
            "stage": plan.stage,
            "checkpoint_step": plan.checkpoint_step,
            "fallback_from": plan.fallback_from,
        }
        out += ["* response: " + rst.text(", ".join(f"{k} {v}" for k, v in said.items() if v is not None))]
    out += [""]
    return "\n".join(out)


def _evidence_source(run: RunData) -> str:
    """What the run's verified results show its workers attested with (never what its summary claims)."""
    kind = run_attestation_kind(run)
    if kind is AttestationKind.DCAP:
        said = (
            "The evidence is Intel TDX/SGX quotes, verified against Intel's PKI with dcap-qvl and appraised "
            "under the run's DCAP policy; the results are EAR tokens, and every one verifies."
        )
    elif kind is AttestationKind.SIMULATED:
        said = "The evidence and the verifier are the simulated TEE."
    elif kind is AttestationKind.UNVERIFIED:
        said = (
            "The results name Intel TDX/SGX quotes (EAR tokens), but not every worker holds one that verifies "
            "and that the audit accepts (see the table and the audit below), so this report does not say the "
            "workers were admitted with Intel quotes."
        )
    else:
        said = "No worker holds an attestation result."
    if run.config.get("attestation_kind") == "dcap" and kind is not AttestationKind.DCAP:
        said += (
            " The run's summary.json names the dcap kind; nothing checks that field, so the report goes by the results."
        )
    return said


def _audit(run: RunData) -> list[str]:
    out = [rst.heading("Receipt audit", "-")]
    report = run.audit.report
    if report is None:
        return out + [f"The audit could not run: {rst.text(run.audit.error)}", ""]
    verdict = "clean" if report.clean else "**failed**"
    # the unpinned verifier key is explained once, on the runs page, not repeated on every run
    explained = (ErrorCode.VERIFIER_KEY_UNPINNED, ErrorCode.COORDINATOR_KEY_UNPINNED)
    findings = [f for f in report.findings if f.code not in explained]
    warnings = len(findings) - len(report.errors)
    if not report.verifier_key:
        key = "of a run trained without attestation"
    elif report.verifier_key_pinned:
        key = "against the pinned verifier key"
    else:
        key = "against the verifier key in the run directory (see :ref:`pin-verifier-key`)"
    out += [
        f"The offline audit of the receipt log (``stagewarden audit``), {key}, is {verdict}: {report.records} "
        f"records, {report.receipts} receipts, {report.headers} signed headers, {report.step_heads} step heads "
        f"({'sealed by a final head' if report.sealed else 'no final head: not sealed'}), "
        f"{len(report.errors)} error(s), {warnings} warning(s).",
        "",
    ]
    rows = [
        [
            rst.text(f.severity),
            rst.literal(f.code),
            rst.text(f.where),
            rst.text(", ".join(f.workers) or "-"),
            rst.text(f.message),
        ]
        for f in findings[:50]
    ]
    if rows:
        out += [
            rst.table(
                ["severity", "code", "where", "workers", "message"],
                rows,
                [8, 15, 17, 10, 50],
                caption="Findings" + (" (the first 50)" if len(findings) > 50 else ""),
            ),
            "",
        ]
    return out


def _spot_checks(run: RunData) -> list[str]:
    out = [rst.heading("Spot checks", "-")]
    spot = run.training.spot_check
    if run.config.get("verification") != "spot_check" or spot is None:
        return out + ["The run does not spot-check.", ""]
    reveals = [e for e in run.events if e.get("event") == "spot_check_reveal"]
    sampled = sum(len(e.get("sampled", [])) for e in reveals)
    units = run.training.units
    total = units.forward + units.backward + units.update
    rows = [
        [
            rst.number(spot.rate),
            rst.text(spot.units_sampled),
            rst.text(spot.units_checked),
            rst.text(spot.recomputations),
            str(len(reveals)),
            str(sampled),
            str(total),
            str(len(run.detections)),
            rst.text(run.training.false_alarms),
        ]
    ]
    out += [
        rst.table(
            [
                "rate",
                "sampled",
                "checked",
                "recomputations",
                "reveals (events)",
                "sampled (events)",
                "units computed",
                "detections",
                "false alarms",
            ],
            rows,
        ),
        "",
        "Commit-then-sample: each step's receipts are committed before the sample is revealed "
        "(``spot_check_commitment`` and ``spot_check_reveal`` in ``events.jsonl``).",
        "",
    ]
    return out


def page_names(runs: list[RunData]) -> list[str]:
    """The document name of each run's page, in order."""
    return [f"run-{i}" for i in range(1, len(runs) + 1)]


def write_runs(ctx: Context, runs: list[RunData]) -> list[str]:
    """Write the run pages; return the top-level document name(s) to list in the contents."""
    pages = []
    for i, (run, name) in enumerate(zip(runs, page_names(runs), strict=True), start=1):
        Path(ctx.folder / f"{name}.rst").write_text(run_page(ctx, run, i), encoding="utf-8")
        pages.append(name)
    (ctx.folder / "runs.rst").write_text(overview_page(ctx, runs, pages), encoding="utf-8")
    return ["runs"]
