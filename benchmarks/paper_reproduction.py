"""The seed paper's experiment on this machine: training under a malicious middle stage, without a
defence, with the paper's defence (redundant neighbour + skip_stage) and with its baseline
(redundant neighbour + restart), against the clean run.

Lu et al. (ICML 2024 position paper, arXiv 2312.00843) report that both attacks (a stage that
negates its forward output, ``reverse``, or replaces it with noise, ``random``) visibly harm
convergence, that with the robust framework training ends comparable to the attack-free run, and
that it beats the restart baseline. This script runs the demo model (4 attested stages of one
block of width 32, 4 micro-batches, the demo's corpus and sizes) under every combination of

* attack: ``reverse`` and ``random``, forward and backward, on stage 1, at rates 0.5 and 1.0;
* defence: none, ``redundant_neighbour`` + ``skip_stage``, ``redundant_neighbour`` + ``restart``;

plus the clean run, each over ``--seeds`` seeds (run seed and attack seed) for ``--steps`` steps.
The rate is the paper's, per training iteration (``--per step``: one draw per computation of a
step decides whether the attacker tampers with that computation; a recomputation draws again),
unless ``--per unit`` draws for each unit. ``restart`` may recompute a step up to
:data:`RESTART_RECOMPUTATIONS` times (the paper's baseline restarts until an iteration is clean;
at rate 0.5 a step then stops the run with probability 2**-21).
It writes JSON (every run's losses, per-step seconds, status, detections and responses), one
figure of the mean loss against step and against wall-clock time, and a table (final loss
against clean, detections, skipped or restarted steps, wall time) as reStructuredText.

Usage::

    python benchmarks/paper_reproduction.py [--steps 200] [--seeds 3] [--configs all] [--per step]
        [--out benchmarks/results/paper_reproduction] [--continue]

Runs go seed by seed through the configurations (so that a change in the machine's load falls
on every configuration alike), and the JSON is rewritten after every run (``"partial": true``
until the last); ``--continue`` keeps the runs of an earlier partial JSON with the same settings
and runs only the missing ones.

``--configs`` takes comma-separated names (``clean``, ``reverse-forward-0.5-none``,
``reverse-forward-0.5-skip_stage``, ``random-backward-1.0-restart``, ...) or ``all`` (25).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stagewarden.attest.files import atomic_write_text
from stagewarden.attest.run_record import SUMMARY_FILE, RunDirError, RunRecord, TrainingRecord
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.launch import LaunchError, LaunchInterrupted, launch_local
from stagewarden.runtime.model import GPTConfig

#: The demo's model and sizes (``stagewarden demo``).
MODEL = GPTConfig(n_layer=4, n_embd=32, n_head=4, block_size=32)
STAGES, MICROBATCHES, BATCH, MAX_BYTES = 4, 4, 4, 256 * 1024
MALICIOUS_STAGE = 1
KINDS = ("reverse", "random")
DIRECTIONS = ("forward", "backward")
RATES = (0.5, 1.0)
DEFENCES = ("none", "skip_stage", "restart")
#: How often ``restart`` may recompute one step before the run stops.
RESTART_RECOMPUTATIONS = 20


@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration of the experiment (the clean run has no attack)."""

    kind: str | None = None
    direction: str = "forward"
    rate: float = 1.0
    defence: str = "none"

    @property
    def name(self) -> str:
        if self.kind is None:
            return "clean"
        return f"{self.kind}-{self.direction}-{self.rate:g}-{self.defence}"


def all_settings() -> list[Setting]:
    """The clean run and the 24 attacked ones."""
    return [Setting()] + [
        Setting(kind, direction, rate, defence)
        for kind in KINDS
        for direction in DIRECTIONS
        for rate in RATES
        for defence in DEFENCES
    ]


def run_config(setting: Setting, seed: int, steps: int, receipts: bool, per: str = "step") -> RunConfig:
    """The run configuration of ``setting`` with run and attack seed ``seed``; ``per`` is what one
    draw of the attack's rate decides (``step`` or ``unit``)."""
    settings: dict[str, Any] = {}
    if setting.kind is not None:
        plan = AttackPlan.from_cli(
            setting.kind, str(MALICIOUS_STAGE), setting.rate, 0, direction=setting.direction, seed=seed, per=per
        )
        settings["attack"] = plan.to_json()
    if setting.defence != "none":
        settings.update(verification="redundant_neighbour", response=setting.defence)
    if setting.defence == "restart":
        settings["max_recomputations"] = RESTART_RECOMPUTATIONS
    return RunConfig(
        stages=STAGES,
        microbatches=MICROBATCHES,
        steps=steps,
        model=MODEL,
        batch_size=BATCH,
        max_bytes=MAX_BYTES,
        seed=seed,
        receipts=receipts,
        attestation=receipts,
        checkpoint_every=0,
        **settings,
    )


def _metrics(run_dir: Path) -> list[float]:
    """Seconds of each step, from ``metrics.csv``."""
    lines = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[3]) for line in lines if line.strip()]


def run_one(setting: Setting, seed: int, steps: int, receipts: bool, scratch: Path, per: str) -> dict[str, Any]:
    """Train one configuration and return what the table and the figure need."""
    run_dir = scratch / f"{setting.name}-seed{seed}"
    started = time.perf_counter()
    error = None
    run: TrainingRecord | None = None
    try:
        run = launch_local(run_config(setting, seed, steps, receipts, per), run_dir).record.training
    except LaunchInterrupted:
        raise KeyboardInterrupt from None  # Ctrl-C stops the benchmark, not just this run
    except LaunchError as exc:
        error = str(exc)
        with contextlib.suppress(RunDirError):  # what the run recorded before it failed
            run = RunRecord.from_json(run_dir / SUMMARY_FILE).training
    wall = time.perf_counter() - started
    responses = run.responses if run is not None else []
    return {
        "setting": setting.name,
        "seed": seed,
        "status": run.status if run is not None else "failed",
        "stop_reason": (run.stop_reason if run is not None else None) or error,
        "losses": list(run.losses) if run is not None else [],
        "step_seconds": _metrics(run_dir) if (run_dir / "metrics.csv").exists() else [],
        "wall_seconds": wall,
        "detections": len(run.detections) if run is not None else 0,
        "recomputed_steps": len({r.step for r in responses}),
        "responses": len(responses),
        "computations": computations(run),
        "load_average": os.getloadavg()[0],
    }


def computations(run: TrainingRecord | None) -> int:
    """How often a step was computed: every completed step, one more for every response (around
    the attacker for ``skip_stage``), and the last computation of a run that stopped on it."""
    if run is None:
        return 0
    return len(run.losses) + len(run.responses) + (1 if run.status == "stopped" and run.detections else 0)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def aggregate(runs: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """One row per setting: means over seeds, final loss against the clean run's."""
    names = list(dict.fromkeys(r["setting"] for r in runs))
    clean = [r["losses"][-1] for r in runs if r["setting"] == "clean" and r["losses"]]
    clean_final = _mean(clean)
    rows = []
    for name in names:
        mine = [r for r in runs if r["setting"] == name]
        finals = [r["losses"][-1] for r in mine if r["losses"]]
        final = _mean(finals)
        rows.append(
            {
                "setting": name,
                "seeds": len(mine),
                "completed": sum(r["status"] == "completed" and len(r["losses"]) == steps for r in mine),
                "final_loss": final,
                "final_loss_sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "vs_clean_percent": 100.0 * (final - clean_final) / clean_final if clean else None,
                "steps_reached": _mean([float(len(r["losses"])) for r in mine]),
                "detections": _mean([float(r["detections"]) for r in mine]),
                "recomputed_steps": _mean([float(r["recomputed_steps"]) for r in mine]),
                "computations": _mean([float(r["computations"]) for r in mine]),
                "training_seconds": _mean([sum(r["step_seconds"]) for r in mine]),
                "wall_seconds": _mean([r["wall_seconds"] for r in mine]),
            }
        )
    return rows


def table_rst(rows: list[dict[str, Any]]) -> str:
    """The table as a reStructuredText list-table."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - configuration",
        "     - completed / seeds",
        "     - steps reached",
        "     - final loss (sd)",
        "     - vs clean",
        "     - detections",
        "     - skipped or restarted steps",
        "     - step computations",
        "     - training time (s)",
        "     - wall time (s)",
    ]
    for row in rows:
        vs = "-" if row["vs_clean_percent"] is None or row["setting"] == "clean" else f"{row['vs_clean_percent']:+.1f}%"
        if math.isnan(row["final_loss"]):  # no step completed in any seed
            vs = "no step completed"
        lines += [
            f"   * - ``{row['setting']}``",
            f"     - {row['completed']} / {row['seeds']}",
            f"     - {row['steps_reached']:.0f}",
            f"     - {row['final_loss']:.3f} ({row['final_loss_sd']:.3f})",
            f"     - {vs}",
            f"     - {row['detections']:.1f}",
            f"     - {row['recomputed_steps']:.1f}",
            f"     - {row['computations']:.1f}",
            f"     - {row['training_seconds']:.0f}",
            f"     - {row['wall_seconds']:.0f}",
        ]
    return "\n".join(lines) + "\n"


def figure(runs: list[dict[str, Any]], path: Path) -> None:
    """Mean loss against step and against wall-clock time, one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"none": "--", "skip_stage": "-", "restart": ":"}
    for name in dict.fromkeys(r["setting"] for r in runs):
        mine = [r for r in runs if r["setting"] == name and r["losses"]]
        if not mine:
            continue
        length = min(len(r["losses"]) for r in mine)
        loss = [_mean([r["losses"][t] for r in mine]) for t in range(length)]
        elapsed, total = [], 0.0
        for t in range(length):
            total += _mean([r["step_seconds"][t] for r in mine if len(r["step_seconds"]) > t])
            elapsed.append(total)
        style = "-" if name == "clean" else styles.get(name.rsplit("-", 1)[-1], "-")
        width = 2.5 if name == "clean" else 1.2
        color = "black" if name == "clean" else None
        by_step.plot(range(length), loss, style, linewidth=width, color=color, label=name)
        by_time.plot(elapsed, loss, style, linewidth=width, color=color, label=name)
    by_step.set_xlabel("step")
    by_time.set_xlabel("training seconds (sum of step times)")
    for ax in (by_step, by_time):
        ax.set_ylabel("loss (mean over seeds)")
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=7, loc="upper right")
    fig.suptitle("Malicious stage 1 of 4: no defence (dashed), skip_stage (solid), restart (dotted)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _payload(
    args: argparse.Namespace,
    argv: list[str] | None,
    runs: list[dict[str, Any]],
    partial: bool,
    elapsed: float,
    load_at_start: list[float],
) -> dict[str, Any]:
    return {
        "format": "stagewarden.paper_reproduction",
        "version": 1,
        "partial": partial,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "steps": args.steps,
        "seeds": args.seeds,
        "per": args.per,
        "restart_recomputations": RESTART_RECOMPUTATIONS,
        "receipts": not args.no_receipts,
        "model": dataclasses.asdict(MODEL),
        "stages": STAGES,
        "microbatches": MICROBATCHES,
        "malicious_stage": MALICIOUS_STAGE,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "total_seconds": elapsed,
        "rows": aggregate(runs, args.steps),
        "runs": runs,
    }


def _earlier_runs(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The runs of an earlier JSON at ``path`` made with the same settings (``--continue``)."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    same = all(earlier.get(k) == v for k, v in (("steps", args.steps), ("per", args.per)))
    if not same or earlier.get("receipts") != (not args.no_receipts):
        print(f"{path} was made with other settings; starting afresh", file=sys.stderr)
        return []
    runs: list[dict[str, Any]] = earlier.get("runs", [])
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--configs", default="all", help="comma-separated configuration names, or all")
    parser.add_argument(
        "--per", choices=("step", "unit"), default="step", help="one draw of the rate per step computation or per unit"
    )
    parser.add_argument("--no-receipts", action="store_true", help="train without receipts and attestation")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/paper_reproduction"))
    parser.add_argument(
        "--continue", dest="resume", action="store_true", help="keep the runs of an earlier partial JSON"
    )
    args = parser.parse_args(argv)
    known = {s.name: s for s in all_settings()}
    wanted = list(known) if args.configs == "all" else [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in known]
    if unknown or args.steps < 1 or args.seeds < 1:
        print(
            f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(known)}"
            if unknown
            else "--steps and --seeds must be at least 1",
            file=sys.stderr,
        )
        return 2
    if "clean" not in wanted:
        wanted.insert(0, "clean")  # every row is compared with it
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "paper_reproduction.json"
    runs = _earlier_runs(json_path, args) if args.resume else []
    done = {(r["setting"], r["seed"]) for r in runs}
    load_at_start = list(os.getloadavg())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="paper-reproduction-") as scratch:
        for seed in range(args.seeds):
            for name in wanted:
                if (name, seed) in done:
                    continue
                result = run_one(known[name], seed, args.steps, not args.no_receipts, Path(scratch), args.per)
                runs.append(result)
                last = result["losses"][-1] if result["losses"] else float("nan")
                print(
                    f"{name:32s} seed {seed}: {result['status']:9s} {len(result['losses']):4d} steps, "
                    f"final loss {last:.4f}, {result['detections']} detections, {result['wall_seconds']:.0f} s, "
                    f"load {result['load_average']:.1f}",
                    flush=True,
                )
                payload = _payload(args, argv, runs, True, time.perf_counter() - started, load_at_start)
                atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    order = {name: i for i, name in enumerate(wanted)}
    runs.sort(key=lambda r: (order.get(r["setting"], len(order)), r["seed"]))
    payload = _payload(args, argv, runs, False, time.perf_counter() - started, load_at_start)
    rows = payload["rows"]
    atomic_write_text(json_path, json.dumps(payload, indent=2) + "\n")
    (args.out / "table.rst").write_text(table_rst(rows))
    figure(runs, args.out / "paper_reproduction.png")
    print(table_rst(rows))
    print(f"wrote {json_path}, table.rst and paper_reproduction.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
