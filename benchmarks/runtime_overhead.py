"""Runtime overhead: stagewarden's training throughput against the trainers a user would pick
instead, and the cost of its security settings across model sizes, each measured side by side in
alternating rounds of one run.

Baselines (``--parts baselines``), on one job (4 stages, 1F1B, 8 micro-batches of 8 sequences of
64 bytes, a GPT with 8 layers of width 128, seed 0, the default corpus): stagewarden without
security, with its ``stagewarden train`` defaults (receipts and attestation, a verified
checkpoint after every step), each also with ``checkpoint_every = 0``; PyTorch's own pipelining
(``Schedule1F1B`` over gloo, one process per stage, :mod:`overhead_baselines`); and one process
training the whole model on the same micro-batches. One run of each per round.

Sweep (``--parts sweep``, or its groups ``width`` and ``stages`` apart): model width 128, 256,
512 (``--widths``) by micro-batch size 8, 32 (4 stages of one block each, 4 micro-batches), and
2, 4, 8, 16 stages of a 16-layer model of width 128 (B = 8,
M = 4); at each point no security, receipts only and spot check ``p = 0.05`` (with receipts and
attestation) alternate, one run each per round. Each point also compares the CPU the security
settings add (process CPU time of every rank, with against without) with the idle-priced CPU of
the operations the protocol performs (:mod:`overhead_limit`).

Throughput is the tokens of steps 1 to N-1 over their wall time, between the run's own ``step``
events (stagewarden) or between two barriers (PyTorch, one process): start-up, admission and the
warm-up step 0 are left out, the work between steps is in. A ratio is taken within a round and
the median over rounds is reported with the slowest round. The coordinator's barrier, CPU times
and the gaps between steps come from :mod:`overhead_probe`.

Run from a clean checkout (the attestation measures the runtime's source files, and a tree edited
while the benchmark runs refuses its own workers): ``python benchmarks/runtime_overhead.py
[--parts baselines,sweep] [--widths 128,256,512] [--rounds N] [--baseline-rounds N] [--json FILE] [--figure FILE]
[--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead_baselines import Job, run_baseline  # noqa: E402
from overhead_summary import PYTORCH_TARGET, plot, ratio_summary, round_order, slowest, sweep_row  # noqa: E402

#: Spot-check rate of the spot-check setting.
SPOT_CHECK_RATE = 0.05

NO_SECURITY: dict[str, Any] = {"receipts": False, "attestation": False, "verification": "none"}
RECEIPTS: dict[str, Any] = {"receipts": True, "attestation": False, "verification": "none"}
SPOT_CHECK: dict[str, Any] = {
    "receipts": True,
    "attestation": True,
    "verification": "spot_check",
    "spot_check_rate": SPOT_CHECK_RATE,
}
#: The security settings of the sweep, by key.
SWEEP_SETTINGS = {"none": NO_SECURITY, "receipts": RECEIPTS, "spot_check": SPOT_CHECK}

#: The baselines' rows: key, label, stagewarden overrides (``None``: a non-stagewarden trainer).
BASELINE_ROWS: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("sw_none", "stagewarden, no security", NO_SECURITY),
    ("sw_none_ckpt0", "stagewarden, no security, --checkpoint-every 0", {**NO_SECURITY, "checkpoint_every": 0}),
    ("sw_default", "stagewarden train defaults (receipts, attestation)", {}),
    ("sw_default_ckpt0", "stagewarden train defaults, --checkpoint-every 0", {"checkpoint_every": 0}),
    ("pytorch_1f1b", "PyTorch pipelining, Schedule1F1B (gloo)", None),
    ("one_process", "one process, whole model", None),
)

BASE_JOB = Job(stages=4, n_layer=8, n_embd=128, microbatches=8, batch_size=8, steps=12)
QUICK_JOB = Job(stages=2, n_layer=2, n_embd=32, microbatches=2, batch_size=2, steps=3, max_bytes=64 * 1024)


def timed_steps(job: Job) -> int:
    """Timed steps for a sweep point: about ten of the baseline job's step's work, 3 to 10."""
    work = job.n_layer * job.microbatches * job.batch_size * job.n_embd**2
    base = BASE_JOB.n_layer * BASE_JOB.microbatches * BASE_JOB.batch_size * BASE_JOB.n_embd**2
    return max(3, min(10, round(10 * base / work)))


def sweep_points(quick: bool, widths: tuple[int, ...] = (128, 256, 512)) -> list[tuple[str, Job]]:
    """The sweep's jobs, each with its group (``width`` or ``stages``); ``widths`` are the width
    group's model widths."""
    if quick:
        small = dict(microbatches=2, batch_size=2, steps=3, max_bytes=64 * 1024)
        return [
            ("width", Job(stages=2, n_layer=2, n_embd=32, **small)),
            ("stages", Job(stages=2, n_layer=4, n_embd=32, **small)),
        ]
    points: list[tuple[str, Job]] = []
    for width in widths:
        for batch in (8, 32):
            job = Job(stages=4, n_layer=4, n_embd=width, microbatches=4, batch_size=batch, steps=2)
            points.append(("width", dataclasses.replace(job, steps=1 + timed_steps(job))))
    for stages in (2, 4, 8, 16):
        job = Job(stages=stages, n_layer=16, n_embd=128, microbatches=4, batch_size=8, steps=2)
        points.append(("stages", dataclasses.replace(job, steps=1 + timed_steps(job))))
    return points


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (``uptime``)."""
    return [round(x, 2) for x in os.getloadavg()]


class Runner:
    """Runs the measurements in one scratch folder, numbering the runs."""

    def __init__(self, folder: Path, clean_env: dict[str, str]) -> None:
        self.folder = folder
        self.clean_env = clean_env
        self.count = 0

    def stagewarden(self, job: Job, overrides: dict[str, Any]) -> dict[str, Any]:
        from overhead_probe import measure_stagewarden

        self.count += 1
        return measure_stagewarden(job.run_config(**overrides), self.folder / f"run{self.count}")

    def baseline(self, kind: str, job: Job) -> dict[str, Any]:
        self.count += 1
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.clean_env)  # the baselines' processes are not probed
        try:
            result = run_baseline(kind, job)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return dataclasses.asdict(result)


def run_baselines(runner: Runner, job: Job, rounds: int) -> dict[str, Any]:
    """The baselines' rows on ``job``, alternating, and the ratios of no-security stagewarden to each."""
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in BASELINE_ROWS}
    labels = {key: label for key, label, _ in BASELINE_ROWS}
    overrides = {key: o for key, _, o in BASELINE_ROWS}
    for r in range(rounds):
        for key in round_order(list(runs), r):
            print(f"  baselines round {r + 1}/{rounds}: {labels[key]} ...", end="", flush=True)
            o = overrides[key]
            result = runner.baseline(key, job) if o is None else runner.stagewarden(job, o)
            runs[key].append(result)
            print(f" {result['tokens_per_second']:.0f} tokens/s")
    rows = []
    for key in runs:
        tps = [x["tokens_per_second"] for x in runs[key]]
        barrier = [x["barrier_seconds_median"] for x in runs[key] if x.get("barrier_seconds_median") is not None]
        gaps = [x["gap_seconds_median"] for x in runs[key] if x.get("gap_seconds_median") is not None]
        rows.append(
            {
                "key": key,
                "label": labels[key],
                "tokens_per_second_median": statistics.median(tps),
                "tokens_per_second_slowest": min(tps),
                "against_sw_none": ratio_summary(
                    [x / b for x, b in zip(tps, (y["tokens_per_second"] for y in runs["sw_none"]), strict=True)]
                ),
                "cpu_seconds_per_step_median": statistics.median(x["cpu_seconds_per_step"] for x in runs[key])
                if all(x.get("cpu_seconds_per_step") is not None for x in runs[key])
                else None,
                "barrier_ms_median": None if not barrier else 1000 * statistics.median(barrier),
                "gap_ms_median": None if not gaps else 1000 * statistics.median(gaps),
                "runs": runs[key],
            }
        )
    ratios = {}
    for base in ("sw_none", "sw_none_ckpt0"):
        for other in ("pytorch_1f1b", "one_process"):
            ratios[f"{base}/{other}"] = ratio_summary(
                [a["tokens_per_second"] / b["tokens_per_second"] for a, b in zip(runs[base], runs[other], strict=True)]
            )
    losses_agree = all(
        runs[k][0]["losses"][: job.steps] == runs["one_process"][0]["losses"] for k in runs if k != "one_process"
    )
    return {
        "job": dataclasses.asdict(job),
        "rounds": rounds,
        "rows": rows,
        "ratios": ratios,
        "losses_agree": losses_agree,
    }


def run_sweep(runner: Runner, points: list[tuple[str, Job]], rounds: int) -> list[dict[str, Any]]:
    """Every sweep point: its settings alternating, the ratios, the added CPU against the limit."""
    from overhead_limit import IdlePrices, limit_seconds, receipt_operations, spot_check_operations

    out = []
    for group, job in points:
        runs: dict[str, list[dict[str, Any]]] = {key: [] for key in SWEEP_SETTINGS}
        for r in range(rounds):
            for key in round_order(list(SWEEP_SETTINGS), r):
                print(f"  sweep {group} {job.label()} round {r + 1}/{rounds}: {key} ...", end="", flush=True)
                result = runner.stagewarden(job, SWEEP_SETTINGS[key])
                runs[key].append(result)
                print(f" {result['tokens_per_second']:.0f} tokens/s")
        prices = IdlePrices(job)
        shape = prices.shape()
        receipts_limit = limit_seconds(receipt_operations(shape), prices)
        spot_limit = limit_seconds(spot_check_operations(shape, SPOT_CHECK_RATE), prices)
        point: dict[str, Any] = {
            "group": group,
            "job": dataclasses.asdict(job),
            "targets": job.n_embd == 512,
            "runs": runs,
        }
        point["limits_ms"] = {
            "receipts": {k: 1000 * v for k, v in receipts_limit.items()},
            "spot_check_extra": {k: 1000 * v for k, v in spot_limit.items()},
        }
        point["rows"] = [
            sweep_row(point, "receipts", 1000 * receipts_limit["total"]),
            sweep_row(point, "spot_check", 1000 * (receipts_limit["total"] + spot_limit["total"])),
        ]
        point["barrier_ms_median"] = {
            key: _median_or_none([x["barrier_seconds_median"] for x in runs[key]], 1000) for key in runs
        }
        point["cpu_ms_per_step_median"] = {
            key: _median_or_none([x["cpu_seconds_per_step"] for x in runs[key]], 1000) for key in runs
        }
        out.append(point)
        for row in point["rows"]:
            added = row["added_cpu_ms_per_step"]
            print(
                f"    {row['setting']}: ratio {row['ratio']['median']:.3f} (slowest {row['ratio']['slowest']:.3f}), "
                f"added CPU {'-' if added is None else f'{added:.0f}'} ms a step, "
                f"limit {row['limit_ms_per_step']:.0f} ms"
            )
    return out


def _median_or_none(values: list[float | None], scale: float) -> float | None:
    present = [v for v in values if v is not None]
    return None if not present else scale * statistics.median(present)


def print_baselines(result: dict[str, Any]) -> None:
    job = Job(**result["job"])
    print(f"\nbaselines on {job.label()}, M={job.microbatches} (median of {result['rounds']} rounds):")
    print(f"{'trainer':<55} {'tokens/s':>9} {'slowest':>8} {'vs no-sec':>9} {'barrier':>8} {'gap':>6}")
    for row in result["rows"]:
        barrier = "-" if row["barrier_ms_median"] is None else f"{row['barrier_ms_median']:.1f}"
        gap = "-" if row["gap_ms_median"] is None else f"{row['gap_ms_median']:.1f}"
        print(
            f"{row['label']:<55} {row['tokens_per_second_median']:>9.0f} {row['tokens_per_second_slowest']:>8.0f} "
            f"{row['against_sw_none']['median']:>9.3f} {barrier:>8} {gap:>6}"
        )
    for name, r in result["ratios"].items():
        target = f" (target >= {PYTORCH_TARGET})" if name == "sw_none/pytorch_1f1b" else ""
        print(f"  {name}: median {r['median']:.3f}, slowest round {r['slowest']:.3f}{target}")
    print(f"  every trainer's losses equal the one-process losses: {result['losses_agree']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts",
        default="baselines,sweep",
        help="comma-separated: baselines, sweep, or the sweep's width and stages groups (default baselines,sweep)",
    )
    parser.add_argument("--widths", default="128,256,512", help="model widths of the width group (default 128,256,512)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds at each sweep point (default 2)")
    parser.add_argument(
        "--baseline-rounds", type=int, default=3, help="alternating rounds of the baselines (default 3)"
    )
    parser.add_argument("--json", dest="json_path", help="write the results to this file (JSON)")
    parser.add_argument("--figure", help="draw the sweep's ratios to this image file (PNG)")
    parser.add_argument("--quick", action="store_true", help="smoke test: toy jobs, one round, three steps")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or not parts <= {"baselines", "sweep", "width", "stages"}:
        print(f"error: --parts takes baselines, sweep, width and stages, not {args.parts!r}", file=sys.stderr)
        return 2
    if "sweep" in parts:
        parts |= {"width", "stages"}
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        widths = ()
    if not widths or any(w < 4 or w % 4 for w in widths):
        print(f"error: --widths takes multiples of 4 (the heads), not {args.widths!r}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.baseline_rounds < 1:
        print("error: --rounds and --baseline-rounds must be at least 1", file=sys.stderr)
        return 2
    rounds, baseline_rounds = (1, 1) if args.quick else (args.rounds, args.baseline_rounds)
    from overhead_probe import install_probe

    import stagewarden
    from stagewarden.runtime.measure import code_digest

    load_start = load_average()
    cpus = os.cpu_count() or 1
    print(f"machine: {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}; load {load_start}")
    started = time.monotonic()
    payload: dict[str, Any] = {
        "benchmark": "runtime_overhead",
        "machine": {"arch": platform.machine(), "cpus": cpus, "python": platform.python_version()},
        "stagewarden": {"path": str(Path(stagewarden.__file__).parent), "runtime_code_digest": code_digest().hex()},
        "quick": args.quick,
        "load_average_start": load_start,
    }
    with tempfile.TemporaryDirectory(prefix="stagewarden-overhead-") as tmp:
        runner = Runner(Path(tmp), install_probe(Path(tmp) / "probe"))
        if "baselines" in parts:
            payload["baselines"] = run_baselines(runner, QUICK_JOB if args.quick else BASE_JOB, baseline_rounds)
            print_baselines(payload["baselines"])
        points = [(g, j) for g, j in sweep_points(args.quick, widths) if g in parts]
        if points:
            payload["sweep"] = run_sweep(runner, points, rounds)
    payload["load_average_end"] = load_average()
    payload["elapsed_seconds"] = round(time.monotonic() - started, 1)
    print(f"\n{runner.count} runs in {payload['elapsed_seconds']:.0f} s; load at the end {payload['load_average_end']}")
    if "sweep" in payload:
        worst = slowest([row for p in payload["sweep"] for row in p["rows"]])
        if worst is not None:
            print(f"slowest round of the sweep: {worst['setting']} at {worst['ratio']['slowest']:.3f}")
        if args.figure:
            note = (
                f"{'quick ' if args.quick else ''}{rounds} round(s) a point; load {load_start[0]} at start, "
                f"{payload['load_average_end'][0]} at end ({cpus} CPUs)"
            )
            plot(payload["sweep"], Path(args.figure), note)
            print(f"figure written to {args.figure}")
    if args.json_path:
        write_results(args.json_path, payload)
    return 0


# -- shared with benchmarks/security_cpu.py ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """One security configuration of the fixed job of ``security_cpu.py``."""

    key: str
    overrides: dict[str, Any]


SETTINGS = (Setting("none", NO_SECURITY), Setting("receipts", RECEIPTS), Setting("spot_check", SPOT_CHECK))


def job(quick: bool, steps: int, schedule: str = "1f1b", batch_size: int = 8, **overrides: Any) -> Any:
    """The baseline job's run configuration (``quick``: the 2-stage toy), with ``steps`` steps."""
    base = QUICK_JOB if quick else dataclasses.replace(BASE_JOB, batch_size=batch_size)
    return dataclasses.replace(base, steps=steps).run_config(schedule=schedule, **overrides)


def write_results(path: str, payload: dict[str, Any]) -> None:
    """Write a benchmark's results as JSON to ``path`` (atomically; its folder is created)."""
    from stagewarden.attest.files import atomic_write_text

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(f"written to {out}")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_cli(entry: Callable[[], int]) -> None:
    """Exit with ``entry()``'s code; a run that fails is reported in one line, not a traceback.
    A termination signal stops like Ctrl-C, so that every process of the run in progress is
    stopped (a baseline's processes are the benchmark's own children)."""
    signal.signal(signal.SIGTERM, _interrupt)
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
