"""Robust aggregation against a pipeline attack: does a federated-learning defence (a robust rule
over data-parallel replicas) protect a model when one stage of one replica negates what it sends?

Lu et al. (ICML 2024 position paper, arXiv 2312.00843) argue that robust aggregation does not carry
over to pipeline parallelism: one malicious stage corrupts everything its replica computes, and a
single pipeline has nothing to aggregate against. This script measures both halves of that claim on
this machine. A model of 3 stages is trained by ``R`` data-parallel replicas (``--replicas``, 5 by
default, so that ``median`` and ``trimmed_mean`` mask 2 corrupted contributions and ``krum`` 1),
each stage's replicas combining their gradients with one rule (``mean``, ``median``,
``trimmed_mean``, ``krum``), under

* no attack (the clean baseline), and
* the paper's ``reverse`` attack by stage 1 (the middle stage) of replica 1 only, on its forward
  activations or its backward gradients, at rate 1 from step 0, with verification ``none``;

plus the paper's own setting, one pipeline (``R = 1``), clean and attacked alike, each with seeds
``0 .. --seeds - 1`` (a seed sets the initial weights and the data order). Every run trains
``--steps`` updates; its final weights (the checkpoint after the last update) are loaded into
single-process stages and evaluated, without any attack, on a fixed set of held-out validation
micro-batches. The damage of an attack at a seed is the attacked run's validation loss minus the
clean run's of the same seed and rule; a row's damage is its mean over the seeds. It is *within
noise* when its size is at most the spread (max minus min) of the clean runs' validation losses
over the seeds for the same rule and replica count: what changing only the seed does.

Usage::

    python benchmarks/robust_aggregation.py [--steps 80] [--replicas 5] [--rules all]
        [--directions forward,backward] [--seeds 2] [--no-single] [--quick]
        [--out benchmarks/results/robust_aggregation.json]

``--quick`` is a smoke run (3 replicas, ``median``, forward, 2 steps, one seed). The JSON
holds every run (losses, validation loss, seconds, load) and one row per rule and direction.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from stagewarden.attest.files import atomic_write_text
from stagewarden.attest.run_record import SUMMARY_FILE, RunDirError, RunRecord, TrainingRecord
from stagewarden.runtime.aggregation import AGGREGATION_RULES, check_rule, tolerated
from stagewarden.runtime.attacks import AttackPlan
from stagewarden.runtime.checkpoint import CheckpointError, load_checkpoint
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.data import Batches, default_corpus
from stagewarden.runtime.launch import LaunchError, LaunchInterrupted, launch_local
from stagewarden.runtime.model import GPTConfig, StageModule, build_stages
from stagewarden.runtime.units import deterministic

#: The model: 3 blocks of width 32, one per stage.
MODEL = GPTConfig(n_layer=3, n_embd=32, n_head=4, block_size=32)
STAGES, MICROBATCHES, BATCH, MAX_BYTES = 3, 2, 4, 256 * 1024
#: The attacker: the middle stage of replica (pipeline) 1; pipeline 0 when there is one.
MALICIOUS_STAGE, ATTACKING_REPLICA = 1, 1
DIRECTIONS = ("forward", "backward")
#: The held-out evaluation: this many micro-batches of ``VALIDATION_BATCH`` windows of the
#: validation split, drawn with ``VALIDATION_SEED`` whatever the run's seed, so every run is
#: evaluated on the same windows.
VALIDATION_MICROBATCHES, VALIDATION_BATCH, VALIDATION_SEED = 32, 16, 12345


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training run of the experiment (``direction`` ``None``: no attack)."""

    replicas: int
    rule: str
    direction: str | None
    seed: int

    @property
    def name(self) -> str:
        return f"R{self.replicas}-{self.rule}-{self.direction or 'clean'}-seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run: the replicated design for ``rules``, and the single pipeline unless ``single`` is off."""

    steps: int = 80
    replicas: int = 5
    rules: tuple[str, ...] = AGGREGATION_RULES
    directions: tuple[str, ...] = DIRECTIONS
    seeds: int = 2
    single: bool = True


def settings(options: Options) -> list[Setting]:
    """Every run, seed by seed (so that a change in the machine's load falls on all alike): each
    rule clean and under each attack, then the single pipeline."""
    groups = [(options.replicas, rule) for rule in options.rules]
    if options.single:
        groups.append((1, "mean"))  # one pipeline: every rule is the identity, nothing to aggregate against
    directions: list[str | None] = [None, *options.directions]
    return [Setting(r, rule, d, seed) for seed in range(options.seeds) for r, rule in groups for d in directions]


def run_config(setting: Setting, steps: int) -> RunConfig:
    """The run of ``setting``: ``steps + 1`` steps, so that the checkpoint of step ``steps`` holds
    the weights after ``steps`` updates (a checkpoint is written only before the last step)."""
    attack = None
    if setting.direction is not None:
        pipeline = ATTACKING_REPLICA if setting.replicas > 1 else 0
        plan = AttackPlan.from_cli(
            "reverse", str(MALICIOUS_STAGE), 1.0, 0, direction=setting.direction, pipelines=str(pipeline)
        )
        attack = plan.to_json()
    return RunConfig(
        stages=STAGES,
        replicas=setting.replicas,
        aggregation=setting.rule,
        microbatches=MICROBATCHES,
        steps=steps + 1,
        model=MODEL,
        batch_size=BATCH,
        max_bytes=MAX_BYTES,
        seed=setting.seed,
        receipts=False,
        attestation=False,
        verification="none",
        checkpoint_every=steps,
        attack=attack,
    )


def validation_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed held-out micro-batches every final model is evaluated on, each ``(B, T)`` pairs."""
    batches = Batches(default_corpus(MAX_BYTES), MODEL.block_size, VALIDATION_BATCH, 1, VALIDATION_SEED)
    return [batches.microbatch(step, 0, split="val") for step in range(VALIDATION_MICROBATCHES)]


def validation_loss(stages: Sequence[StageModule], batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The mean loss of the honest pipeline ``stages`` over ``batches`` (no attack at evaluation)."""
    losses = []
    with deterministic(1), torch.no_grad():
        for x, y in batches:
            activation = x  # (B, T) ids, then (B, T, C), then (B, T, V)
            for stage in stages:
                activation = stage(activation)
            losses.append(stages[-1].loss(activation, y))
    return float(torch.stack(losses).mean())


def final_stages(run_dir: Path, steps: int, seed: int) -> list[StageModule]:
    """The stages of the run in ``run_dir`` with the weights of its checkpoint after ``steps`` updates."""
    checkpoint = load_checkpoint(run_dir / "checkpoints", steps)
    stages = build_stages(MODEL, STAGES, seed)
    for stage in stages:
        stage.load_state_dict(checkpoint.stage_states[stage.index])
        stage.eval()
    return stages


def _step_seconds(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()[1:] if (run_dir / "metrics.csv").exists() else []
    return [float(line.split(",")[3]) for line in lines if line.strip()]


def run_one(
    setting: Setting, steps: int, scratch: Path, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, Any]:
    """Train ``setting``, evaluate its final model and return the run's record for the JSON."""
    run_dir = scratch / setting.name
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    error = None
    run: TrainingRecord | None = None
    try:
        run = launch_local(run_config(setting, steps), run_dir).record.training
    except LaunchInterrupted:
        raise KeyboardInterrupt from None  # Ctrl-C stops the benchmark, not just this run
    except LaunchError as exc:
        error = str(exc)
        with contextlib.suppress(RunDirError):
            run = RunRecord.from_json(run_dir / SUMMARY_FILE).training
    wall = time.perf_counter() - started
    val = None
    if run is not None and run.status == "completed":
        try:
            val = validation_loss(final_stages(run_dir, steps, setting.seed), batches)
        except CheckpointError as exc:
            error = f"final checkpoint unreadable: {exc}"
    losses = list(run.losses) if run is not None else []
    return {
        "name": setting.name,
        "replicas": setting.replicas,
        "rule": setting.rule,
        "direction": setting.direction,
        "seed": setting.seed,
        "status": run.status if run is not None else "failed",
        "error": error or (run.stop_reason if run is not None else None),
        "detections": len(run.detections) if run is not None else 0,
        # the loss of step ``steps`` is computed with the final weights (before its own update)
        "final_train_loss": losses[steps] if len(losses) > steps else None,
        "first_train_loss": losses[0] if losses else None,
        "train_losses": losses,
        "validation_loss": val,
        "wall_seconds": wall,
        "training_seconds": sum(_step_seconds(run_dir)),
        "load_average": [load_before, os.getloadavg()[0]],
    }


def _by_seed(runs: list[dict[str, Any]], replicas: int, rule: str, direction: str | None, key: str) -> dict[int, Any]:
    """Seed to ``key`` of the runs of one configuration (``None`` where the value is missing)."""
    return {
        r["seed"]: r[key] for r in runs if (r["replicas"], r["rule"], r["direction"]) == (replicas, rule, direction)
    }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per attacked configuration (replicas, rule, direction): mean clean and attacked
    validation loss, the damage at each seed (attacked minus clean of the same seed) and its mean,
    the clean runs' spread over the seeds (the noise) and whether the mean damage is within it.
    Seeds where either run has no validation loss (a failed run) are left out of the means."""
    configurations = dict.fromkeys((r["replicas"], r["rule"], r["direction"]) for r in runs if r["direction"])
    rows = []
    for replicas, rule, direction in configurations:
        clean = _by_seed(runs, replicas, rule, None, "validation_loss")
        attacked = _by_seed(runs, replicas, rule, direction, "validation_loss")
        paired = sorted(s for s in attacked if attacked[s] is not None and clean.get(s) is not None)
        damages = [attacked[s] - clean[s] for s in paired]
        clean_values = [v for v in clean.values() if v is not None]
        noise = max(clean_values) - min(clean_values) if len(clean_values) >= 2 else None
        damage = _mean(damages)
        clean_train = _by_seed(runs, replicas, rule, None, "final_train_loss")
        attacked_train = _by_seed(runs, replicas, rule, direction, "final_train_loss")
        rows.append(
            {
                "replicas": replicas,
                "rule": rule,
                "tolerated": tolerated(rule, replicas),
                "direction": direction,
                "seeds": paired,
                "clean_validation_loss": _mean([clean[s] for s in paired]),
                "attacked_validation_loss": _mean([attacked[s] for s in paired]),
                "damage": damage,
                "damage_per_seed": damages,
                "noise": noise,
                "within_noise": abs(damage) <= noise if damage is not None and noise is not None else None,
                "clean_final_train_loss": _mean([clean_train[s] for s in paired if clean_train[s] is not None]),
                "attacked_final_train_loss": _mean(
                    [attacked_train[s] for s in paired if attacked_train[s] is not None]
                ),
            }
        )
    return rows


def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def table_rst(rows: list[dict[str, Any]]) -> str:
    """The rows as a reStructuredText list-table."""
    header = [
        "replicas",
        "rule (masks)",
        "attack",
        "validation loss, clean",
        "validation loss, attacked",
        "damage (per seed)",
        "noise (clean spread)",
        "within noise",
        "final training loss, clean / attacked",
    ]
    lines = [".. list-table::", "   :header-rows: 1", ""]
    lines += [("   * - " if i == 0 else "     - ") + h for i, h in enumerate(header)]
    for row in rows:
        within = {True: "yes", False: "**no**", None: "-"}[row["within_noise"]]
        cells = [
            str(row["replicas"]),
            f"``{row['rule']}`` ({row['tolerated']})",
            row["direction"],
            _fmt(row["clean_validation_loss"]),
            _fmt(row["attacked_validation_loss"]),
            f"{_fmt(row['damage'], sign=True)} ({', '.join(_fmt(d, sign=True) for d in row['damage_per_seed'])})",
            _fmt(row["noise"]),
            within,
            f"{_fmt(row['clean_final_train_loss'])} / {_fmt(row['attacked_final_train_loss'])}",
        ]
        lines += [("   * - " if i == 0 else "     - ") + c for i, c in enumerate(cells)]
    return "\n".join(lines) + "\n"


def run_benchmark(options: Options, command: str, progress: bool = True) -> dict[str, Any]:
    """Run every setting of ``options`` and return the JSON payload."""
    load_at_start = list(os.getloadavg())
    started = time.perf_counter()
    batches = validation_batches()
    runs = []
    with tempfile.TemporaryDirectory(prefix="robust-aggregation-") as scratch:
        for setting in settings(options):
            run = run_one(setting, options.steps, Path(scratch), batches)
            runs.append(run)
            if progress:
                print(
                    f"{setting.name:32s} {run['status']:9s} validation {_fmt(run['validation_loss'])}, "
                    f"final training {_fmt(run['final_train_loss'])}, {run['wall_seconds']:.0f} s, "
                    f"load {run['load_average'][1]:.1f}",
                    flush=True,
                )
    slowest = max(runs, key=lambda r: r["wall_seconds"])
    return {
        "format": "stagewarden.robust_aggregation",
        "version": 1,
        "command": command,
        "torch": torch.__version__,
        "steps": options.steps,
        "replicas": options.replicas,
        "rules": list(options.rules),
        "directions": list(options.directions),
        "seeds": options.seeds,
        "single_pipeline": options.single,
        "model": dataclasses.asdict(MODEL),
        "stages": STAGES,
        "microbatches": MICROBATCHES,
        "batch_size": BATCH,
        "malicious_stage": MALICIOUS_STAGE,
        "attacking_replica": ATTACKING_REPLICA,
        "validation": {"microbatches": VALIDATION_MICROBATCHES, "batch": VALIDATION_BATCH, "seed": VALIDATION_SEED},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": list(os.getloadavg()),
        },
        "total_seconds": time.perf_counter() - started,
        "slowest_run": {"name": slowest["name"], "wall_seconds": slowest["wall_seconds"]},
        "rows": summarise(runs),
        "runs": runs,
    }


def _names(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def parse_options(argv: list[str] | None) -> tuple[Options, Path]:
    """The options and the output path; :class:`ValueError` with one line for bad input."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="updates per run (default 80)")
    parser.add_argument("--replicas", type=int, default=None, help="replicas R of the aggregated runs (default 5)")
    parser.add_argument("--rules", default=None, help="comma-separated aggregation rules, or all")
    parser.add_argument("--directions", default=None, help="comma-separated attack directions (forward,backward)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 of every configuration (default 2)")
    parser.add_argument("--no-single", action="store_true", help="leave out the single pipeline (R = 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: R 3, median, forward, 2 steps, seed 0")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/robust_aggregation.json"))
    args = parser.parse_args(argv)
    base = Options(replicas=3, rules=("median",), directions=("forward",), steps=2, seeds=1)
    base = base if args.quick else Options()
    rules = base.rules if args.rules is None else AGGREGATION_RULES if args.rules == "all" else _names(args.rules)
    options = Options(
        steps=base.steps if args.steps is None else args.steps,
        replicas=base.replicas if args.replicas is None else args.replicas,
        rules=rules,
        directions=base.directions if args.directions is None else _names(args.directions),
        seeds=base.seeds if args.seeds is None else args.seeds,
        single=not args.no_single,
    )
    if options.steps < 1 or options.seeds < 1:
        raise ValueError("--steps and --seeds must be at least 1")
    if options.replicas < 2:
        raise ValueError(f"--replicas must be at least 2 (replica {ATTACKING_REPLICA} attacks), got {options.replicas}")
    bad = [d for d in options.directions if d not in DIRECTIONS]
    if bad or not options.directions:
        raise ValueError(f"unknown attack direction(s) {', '.join(bad) or '(none)'}; known: {', '.join(DIRECTIONS)}")
    if not options.rules:
        raise ValueError("--rules names no rule")
    for rule in options.rules:
        problem = check_rule(rule, options.replicas)
        if problem is not None:
            raise ValueError(problem)
    return options, args.out


def main(argv: list[str] | None = None) -> int:
    try:
        options, out = parse_options(argv)
    except ValueError as exc:
        print(f"robust_aggregation: {exc}", file=sys.stderr)
        return 2
    if not out.parent.is_dir():
        print(f"robust_aggregation: the output folder {out.parent} does not exist", file=sys.stderr)
        return 2
    command = " ".join(["benchmarks/robust_aggregation.py", *(argv if argv is not None else sys.argv[1:])])
    payload = run_benchmark(options, command)
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(table_rst(payload["rows"]))
    print(
        f"wrote {out}: {payload['total_seconds']:.0f} s in all, slowest run {payload['slowest_run']['name']} "
        f"{payload['slowest_run']['wall_seconds']:.0f} s, load {payload['machine']['load_average_at_start'][0]:.1f} "
        f"to {payload['machine']['load_average_at_end'][0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
