"""Runtime overhead: the training throughput of one fixed pipeline job under each security
configuration, as ratios against the same job without security, and the measured pipeline
bubble of GPipe and 1F1B against the ideal ``(S - 1) / (M + S - 1)``.

The job: 4 stages, 1F1B, 8 micro-batches of 8 sequences of 64 bytes, a GPT with 8 layers of
width 128 (two blocks per stage), seed 0, the default corpus, 12 steps. Throughput is the
tokens of steps 1.. divided by their summed step times from the run's ``metrics.csv``: process
start-up, admission and the first (warm-up) step are excluded. The configurations run in
alternation (A B C D, A B C D, ... for ``--repeat`` rounds) so that every ratio compares runs
made side by side; the printed ratio is the median over rounds.

Every run is ``1 + S`` processes on this machine (5 for 4 stages). On a machine with fewer
cores than processes the absolute tokens/s measure CPU sharing as much as the pipeline; only
the side-by-side ratios are meant to be read.

Run: ``python benchmarks/runtime_overhead.py [--repeat N] [--steps N] [--json FILE] [--batch-size B]
[--only KEYS] [--quick]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Spot-check rate of the spot-check configuration.
SPOT_CHECK_RATE = 0.05


@dataclasses.dataclass(frozen=True)
class Setting:
    """One security configuration of the job."""

    key: str
    label: str
    overrides: dict[str, Any]
    target: str
    minimum: float | None

    def available(self) -> str | None:
        """``None`` when the runtime supports this configuration, else why not."""
        from stagewarden.runtime import config as config_module

        fields = {f.name for f in dataclasses.fields(config_module.RunConfig)}
        for name in self.overrides:
            if name not in fields:
                return f"the run configuration has no field {name!r}"
        mode = self.overrides.get("verification", "none")
        modes = getattr(config_module, "VERIFICATION_MODES", ("none",))
        if mode not in modes:
            return f"verification mode {mode!r} is not in this runtime (it has: {', '.join(modes)})"
        return None


SETTINGS = (
    Setting(
        "none",
        "no security",
        {"receipts": False, "attestation": False, "verification": "none"},
        "1 (baseline)",
        None,
    ),
    Setting(
        "receipts",
        "receipts only",
        {"receipts": True, "attestation": False, "verification": "none"},
        ">= 0.98",
        0.98,
    ),
    Setting(
        "spot_check",
        f"receipts + attestation + spot_check p={SPOT_CHECK_RATE}",
        {"receipts": True, "attestation": True, "verification": "spot_check", "spot_check_rate": SPOT_CHECK_RATE},
        f">= 0.93 (limit 1/(1+p) = {1 / (1 + SPOT_CHECK_RATE):.3f})",
        0.93,
    ),
    Setting(
        "redundant_neighbour",
        "receipts + attestation + redundant_neighbour",
        {"receipts": True, "attestation": True, "verification": "redundant_neighbour"},
        "near 0.5 (expected)",
        None,
    ),
)


def job(quick: bool, steps: int, schedule: str = "1f1b", batch_size: int = 8, **overrides: Any) -> Any:
    """The benchmark job's run configuration (``quick``: a 2-stage toy for smoke tests;
    ``batch_size``: sequences per micro-batch of the full job)."""
    from stagewarden.runtime.config import RunConfig
    from stagewarden.runtime.model import GPTConfig

    if quick:
        model = GPTConfig(n_layer=2, n_embd=32, n_head=4, block_size=16)
        base: dict[str, Any] = dict(stages=2, microbatches=2, batch_size=2, max_bytes=64 * 1024)
    else:
        model = GPTConfig(n_layer=8, n_embd=128, n_head=4, block_size=64)
        base = dict(stages=4, microbatches=8, batch_size=batch_size)
    return RunConfig(model=model, steps=steps, schedule=schedule, seed=0, **base, **overrides)


def measure(config: Any, workdir: Path, name: str) -> dict[str, Any]:
    """Run ``config`` on this machine; return its throughput without start-up and warm-up, and its bubble."""
    from stagewarden.runtime.launch import launch_local

    run_dir = workdir / name
    result = launch_local(config, run_dir, timeout=max(600.0, 60.0 * config.steps))
    summary = result.summary
    if summary.get("status") != "completed":
        raise RuntimeError(f"run {name} ended with status {summary.get('status')!r}")
    with open(run_dir / "metrics.csv", encoding="utf-8", newline="") as f:
        seconds = [float(row["wall_seconds"]) for row in csv.DictReader(f)]
    timed = seconds[1:] if len(seconds) > 1 else seconds
    tokens_per_second = config.tokens_per_step * len(timed) / sum(timed)
    out: dict[str, Any] = {
        "tokens_per_second": round(tokens_per_second, 1),
        "step_seconds": [round(s, 4) for s in seconds],
        "run_seconds": round(result.seconds, 2),
        "detections": len(summary.get("detections", [])),
        "bubble": bubble(summary, sum(seconds)),
    }
    return out


def bubble(summary: dict[str, Any], train_seconds: float) -> float | None:
    """Measured idle share ``1 - busy / time`` per stage, averaged; ``None`` if the run does not report busy time.

    ``stage_busy_seconds`` is each stage's compute time over the training steps; the time it is
    compared with is the sum of the step times (start-up excluded).
    """
    busy = summary.get("stage_busy_seconds")
    if not busy or train_seconds <= 0:
        return None
    per_stage = [sum(b) if isinstance(b, list) else float(b) for b in busy]
    return round(statistics.mean(1.0 - b / train_seconds for b in per_stage), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of alternating runs (default 3)")
    parser.add_argument("--steps", type=int, default=12, help="steps per run, the first is warm-up (default 12)")
    parser.add_argument("--json", dest="json_path", help="write the results to this file (JSON)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: one round of two configurations on a toy 2-stage job"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="sequences of 64 bytes per micro-batch (default 8): larger units spread the per-unit costs",
    )
    parser.add_argument(
        "--only",
        help="comma-separated configurations to measure besides the baseline "
        f"({', '.join(s.key for s in SETTINGS[1:])}, gpipe); default: all",
    )
    args = parser.parse_args()
    keys = {s.key for s in SETTINGS[1:]} | {"gpipe"}
    only = None if args.only is None else {k.strip() for k in args.only.split(",") if k.strip()}
    if only is not None and not only <= keys:
        print(f"error: --only takes {', '.join(sorted(keys))}, not {', '.join(sorted(only - keys))}", file=sys.stderr)
        return 2
    if args.repeat < 1 or args.steps < 2 or args.batch_size < 1:
        print("error: --repeat and --batch-size must be at least 1 and --steps at least 2", file=sys.stderr)
        return 2
    rounds = 1 if args.quick else args.repeat
    steps = 3 if args.quick else args.steps
    settings = SETTINGS[:2] if args.quick else SETTINGS
    if only is not None:
        settings = tuple(s for s in settings if s.key == "none" or s.key in only)
    usable = [s for s in settings if s.available() is None]
    missing = {s.key: str(s.available()) for s in settings if s.available() is not None}

    probe = job(args.quick, steps, batch_size=args.batch_size)
    cpus = os.cpu_count() or 1
    print(f"machine: {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}")
    print(
        f"job: {probe.stages} stages, {probe.schedule}, M={probe.microbatches}, B={probe.batch_size}, "
        f"T={probe.model.block_size}, n_layer={probe.model.n_layer}, n_embd={probe.model.n_embd}, "
        f"{steps} steps (step 0 is warm-up and not timed), {rounds} round(s)"
    )
    processes = 1 + probe.stages
    if processes > cpus:
        print(
            f"note: each run is {processes} processes on {cpus} cores; absolute tokens/s mostly measure CPU "
            "sharing, the side-by-side ratios are what count"
        )

    runs: dict[str, list[dict[str, Any]]] = {s.key: [] for s in usable}
    bubble_runs: dict[str, list[dict[str, Any]]] = {"gpipe": [], "1f1b": []}
    measure_bubble: bool | None = None  # decided after the first run: does the summary report busy time?
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stagewarden-bench-") as tmp:
        workdir = Path(tmp)
        for r in range(rounds):
            for s in usable:
                name = f"r{r}-{s.key}"
                print(f"  round {r + 1}/{rounds}: {s.label} ...", end="", flush=True)
                result = measure(job(args.quick, steps, batch_size=args.batch_size, **s.overrides), workdir, name)
                runs[s.key].append(result)
                print(f" {result['tokens_per_second']:.0f} tokens/s")
                if s.key == "none":
                    if measure_bubble is None:
                        measure_bubble = result["bubble"] is not None
                    if measure_bubble:
                        bubble_runs["1f1b"].append(result)
            if measure_bubble and not args.quick and (only is None or "gpipe" in only):
                print(f"  round {r + 1}/{rounds}: no security, gpipe ...", end="", flush=True)
                result = measure(
                    job(args.quick, steps, schedule="gpipe", batch_size=args.batch_size, **SETTINGS[0].overrides),
                    workdir,
                    f"r{r}-gpipe",
                )
                bubble_runs["gpipe"].append(result)
                print(f" {result['tokens_per_second']:.0f} tokens/s")
    elapsed = time.monotonic() - started

    base = runs["none"]
    rows = []
    print(f"\n{'configuration':<48} {'tokens/s':>9} {'ratio':>7}  {'target':<34} verdict")
    for s in settings:
        if s.key in missing:
            print(f"{s.label:<48} {'-':>9} {'-':>7}  {s.target:<34} not available: {missing[s.key]}")
            rows.append({"key": s.key, "label": s.label, "target": s.target, "available": False, "why": missing[s.key]})
            continue
        ratios = [run["tokens_per_second"] / b["tokens_per_second"] for run, b in zip(runs[s.key], base, strict=True)]
        ratio = statistics.median(ratios)
        tps = statistics.median(run["tokens_per_second"] for run in runs[s.key])
        verdict = "-" if s.minimum is None else ("meets" if ratio >= s.minimum else "misses")
        print(f"{s.label:<48} {tps:>9.0f} {ratio:>7.3f}  {s.target:<34} {verdict}")
        rows.append(
            {
                "key": s.key,
                "label": s.label,
                "target": s.target,
                "available": True,
                "overrides": s.overrides,
                "median_tokens_per_second": round(tps, 1),
                "median_ratio": round(ratio, 4),
                "ratios": [round(x, 4) for x in ratios],
                "verdict": verdict,
                "runs": runs[s.key],
            }
        )

    from stagewarden.runtime.schedule import ideal_bubble

    ideal = ideal_bubble(probe.stages, probe.microbatches)
    bubbles: dict[str, Any] = {"ideal": round(ideal, 4)}
    print(f"\npipeline bubble (S={probe.stages}, M={probe.microbatches}): ideal (S-1)/(M+S-1) = {ideal:.3f}")
    if args.quick:
        print("  not measured in --quick mode")
        bubbles["measured"] = None
    elif not measure_bubble:
        print("  measured: unavailable (the run summary has no stage_busy_seconds in this runtime)")
        bubbles["measured"] = None
    else:
        bubbles["measured"] = {}
        for schedule, items in bubble_runs.items():
            values = [i["bubble"] for i in items]
            if not values:
                continue
            median = statistics.median(values)
            bubbles["measured"][schedule] = {"median": median, "rounds": values}
            print(
                f"  {schedule:<6} measured {median:.3f} "
                f"(1 - busy / step time per stage, averaged; median of {len(values)})"
            )
    print(f"\n{len(usable) * rounds + len(bubble_runs['gpipe'])} runs in {elapsed:.0f} s")

    if args.json_path:
        payload = {
            "benchmark": "runtime_overhead",
            "machine": {"arch": platform.machine(), "cpus": cpus, "python": platform.python_version()},
            "processes_per_run": processes,
            "job": {
                "stages": probe.stages,
                "schedule": probe.schedule,
                "microbatches": probe.microbatches,
                "batch_size": probe.batch_size,
                "block_size": probe.model.block_size,
                "n_layer": probe.model.n_layer,
                "n_embd": probe.model.n_embd,
                "steps": steps,
                "timed_steps": steps - 1,
                "seed": probe.seed,
            },
            "rounds": rounds,
            "quick": args.quick,
            "configurations": rows,
            "bubble": bubbles,
        }
        write_results(args.json_path, payload)
    return 0


def write_results(path: str, payload: dict[str, Any]) -> None:
    """Write a benchmark's results as JSON to ``path`` (atomically; its folder is created)."""
    from stagewarden.attest.files import atomic_write_text

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(f"written to {out}")


def run_cli(entry: Callable[[], int]) -> None:
    """Exit with ``entry()``'s code; a run that fails is reported in one line, not a traceback."""
    try:
        sys.exit(entry())
    except KeyboardInterrupt:
        print("\ninterrupted; every process of the run was stopped", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a failed run: one clear line, no traceback
        from stagewarden.runtime.errors import RuntimeSetupError

        if not isinstance(exc, RuntimeSetupError | RuntimeError):
            raise
        print(f"\nerror: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
