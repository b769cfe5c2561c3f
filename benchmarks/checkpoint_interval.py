"""What a verified checkpoint costs, and the interval that keeps that cost under 2% of training.

On the runtime-overhead benchmark's job (4 stages, 1F1B, 8 micro-batches of 8 sequences of 64
bytes, a GPT with 8 layers of width 128), with ``stagewarden train``'s settings (receipts and
attestation, no verification), runs with a checkpoint after every step (``checkpoint_every =
1``), every ``N`` steps for each candidate interval, and none (``0``) alternate in each round. The
cost of one checkpoint is the extra wall time per step of ``checkpoint_every = 1`` over ``0``;
its share of training at interval ``N`` is that cost over ``N`` steps of the run without
checkpoints (its slowest round), and each candidate interval is also measured directly. The
default interval (:data:`stagewarden.runtime.defaults.DEFAULT_CHECKPOINT_EVERY`) is the smallest
candidate whose predicted cost stays under :data:`TARGET`. The CPU a step of every run (all its
processes) is reported too: a shared machine's load moves it far less than the wall time.

Run from a clean checkout (the attestation measures the runtime's source files, and a tree edited
while the benchmark runs refuses its own workers)::

    python benchmarks/checkpoint_interval.py [--rounds N] [--json FILE] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead_baselines import Job  # noqa: E402
from overhead_probe import install_probe, measure_stagewarden  # noqa: E402

#: The largest share of training time the checkpoints of the default interval may take.
TARGET = 0.02
#: The intervals measured besides 1 (every step) and 0 (none).
CANDIDATES = (5, 10, 20)
JOB = Job(stages=4, n_layer=8, n_embd=128, microbatches=8, batch_size=8, steps=41)
QUICK_JOB = Job(stages=2, n_layer=2, n_embd=32, microbatches=2, batch_size=2, steps=6, max_bytes=64 * 1024)


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def measure(job: Job, intervals: list[int], rounds: int, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each interval's throughput (tokens per second of steps 1 to N-1) and CPU a step (every
    process of the run, over the same steps) per round, alternating the intervals within a round
    and rotating their order from round to round."""
    install_probe(folder / "probe")
    runs: dict[int, list[float]] = {n: [] for n in intervals}
    cpu: dict[int, list[float]] = {n: [] for n in intervals}
    for r in range(rounds):
        order = intervals[r % len(intervals) :] + intervals[: r % len(intervals)]
        for n in order:
            config = job.run_config(checkpoint_every=n, verification="none")
            result = measure_stagewarden(config, folder / f"r{r}-every{n}")
            runs[n].append(result["tokens_per_second"])
            cpu[n].append(result.get("cpu_seconds_per_step") or float("nan"))
            print(
                f"  round {r + 1}/{rounds}: checkpoint_every {n}: {result['tokens_per_second']:.0f} tokens/s, "
                f"{cpu[n][-1] * 1000:.0f} ms CPU a step"
            )
    return {str(n): v for n, v in runs.items()}, {str(n): v for n, v in cpu.items()}


def summarise(runs: dict[str, list[float]], cpu: dict[str, list[float]], candidates: list[int]) -> dict[str, Any]:
    """Per interval, its cost against no checkpoints (``1 - throughput ratio``) per round: the
    median and the slowest round; its added CPU a step as a share of the CPU a step without
    checkpoints (median over rounds, which a shared machine's load disturbs far less than wall
    time); the cost of one checkpoint as a share of a step; and the smallest candidate whose
    predicted cost is under :data:`TARGET`: the slowest round's cost of a checkpoint after every
    step, divided by the interval (a direct measurement of a long interval is within the noise
    of a shared machine; it is reported beside the prediction)."""
    base = runs["0"]
    cpu_cost = {
        n: statistics.median(v / b - 1 for v, b in zip(values, cpu["0"], strict=True))
        for n, values in cpu.items()
        if n != "0"
    }
    costs: dict[str, dict[str, float]] = {}
    for n, values in runs.items():
        if n == "0":
            continue
        per_round = [1 - v / b for v, b in zip(values, base, strict=True)]
        costs[n] = {"median": statistics.median(per_round), "slowest": max(per_round)}
    # the direct measurement of a long interval drowns in a shared machine's noise; one
    # checkpoint's cost, measured at interval 1, divides over the steps of the interval
    per_checkpoint = costs["1"]["slowest"]
    predicted = {str(n): per_checkpoint / n for n in candidates}
    chosen = next((n for n in candidates if predicted[str(n)] < TARGET), None)
    return {
        "cost": costs,
        "cpu_cost": cpu_cost,
        "predicted_cost": predicted,
        "checkpoint_share_of_a_step": costs["1"]["median"] / max(1e-9, 1 - costs["1"]["median"]),
        "chosen_interval": chosen,
        "target": TARGET,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "checkpoint_interval.json")
    parser.add_argument("--quick", action="store_true", help="a toy job, one round (smoke test)")
    parser.add_argument("--summarise", type=Path, help="recompute the summary of a saved JSON file, run nothing")
    parser.add_argument("--intervals", type=lambda s: [int(v) for v in s.split(",")], help="candidate intervals")
    args = parser.parse_args(argv)
    if args.summarise is not None:
        saved = json.loads(args.summarise.read_text(encoding="utf-8"))
        candidates = sorted(int(n) for n in saved["tokens_per_second"] if n not in ("0", "1"))
        saved.update(summarise(saved["tokens_per_second"], saved["cpu_seconds_per_step"], candidates))
        args.summarise.write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")
        print(json.dumps({k: saved[k] for k in ("cost", "cpu_cost", "predicted_cost", "chosen_interval")}, indent=2))
        return 0
    job = QUICK_JOB if args.quick else JOB
    candidates = args.intervals or ([2] if args.quick else list(CANDIDATES))
    rounds = 1 if args.quick else args.rounds
    load_start = _load()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; load {load_start}; job {job.label()}")
    with tempfile.TemporaryDirectory(prefix="sw-ckpt-") as tmp:
        runs, cpu = measure(job, [0, 1, *candidates], rounds, Path(tmp))
    summary = summarise(runs, cpu, candidates)
    result = {
        "job": job.label(),
        "steps": job.steps,
        "rounds": rounds,
        "load_start": load_start,
        "load_end": _load(),
        "cpus": os.cpu_count(),
        "tokens_per_second": runs,
        "cpu_seconds_per_step": cpu,
        **summary,
    }
    for n, cost in summary["cost"].items():
        print(
            f"checkpoint_every {n}: cost {cost['median']:.1%} (slowest round {cost['slowest']:.1%}), "
            f"added CPU {summary['cpu_cost'][n]:.1%}"
        )
    for n, cost in summary["predicted_cost"].items():
        print(f"checkpoint_every {n}: predicted cost {cost:.1%} (the slowest round's cost at 1, over {n})")
    print(f"smallest interval under {TARGET:.0%}: {summary['chosen_interval']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".tmp")
    tmp_json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp_json.replace(args.json)
    print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
