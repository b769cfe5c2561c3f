"""What one signed step root per worker and step saves the coordinator, over the number of
stages: this tree against a baseline tree that checks every receipt and header signature itself
(a checkout made with ``git worktree add --detach /tmp/baseline <commit>``), side by side in
alternating rounds.

For 2, 4, 8 and 16 stages of a 16-layer GPT of width 64 (1F1B, 8 micro-batches of 8 sequences of
64 bytes), each tree trains the job with no security and with receipts only (no attestation, no
verification), one run of each per round. For every run the probe of :mod:`overhead_probe`
gives the coordinator's process CPU per timed step (rank 0, every thread) and the throughput of
the timed steps. Reported per stage count and tree, medians over rounds with the slowest round:
the coordinator's CPU a step with receipts, the CPU receipts add to it (against no security in
the same round), and the throughput of receipts only against no security.

Run: ``python benchmarks/step_roots.py --baseline /tmp/baseline [--rounds 2] [--stages 2,4,8,16]
[--steps 6] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, dict[str, Any]] = {
    "none": {"receipts": False, "attestation": False, "verification": "none"},
    "receipts": {"receipts": True, "attestation": False, "verification": "none"},
}


def _measure(stages: int, setting: str, steps: int) -> dict[str, float]:
    """In a tree's interpreter: one probed run of the job; its throughput and the coordinator's CPU."""
    from overhead_baselines import Job
    from overhead_probe import install_probe, measure_stagewarden

    job = Job(stages=stages, n_layer=16, n_embd=64, microbatches=8, batch_size=8, steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        install_probe(Path(tmp) / "probe")
        got = measure_stagewarden(job.run_config(**SETTINGS[setting]), Path(tmp) / "run")
    cpu = got["rank_cpu_seconds_per_step"]
    if cpu is None:
        raise SystemExit("the probe could not measure the run's processes")
    return {"tokens_per_second": got["tokens_per_second"], "coordinator_cpu_ms": 1000 * cpu["0"]}


def _in_tree(tree: Path, stages: int, setting: str, steps: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = f"import sys; sys.path.insert(0, {str(HERE / 'benchmarks')!r}); import step_roots as b, json; "
    code += f"print(json.dumps(b._measure({stages}, {setting!r}, {steps})))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"the run in {tree} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _summary(rounds: list[dict[str, Any]], stages: int, tree: str) -> dict[str, Any]:
    runs = [r[str(stages)][tree] for r in rounds]
    cpu = [x["receipts"]["coordinator_cpu_ms"] for x in runs]
    added = [x["receipts"]["coordinator_cpu_ms"] - x["none"]["coordinator_cpu_ms"] for x in runs]
    ratio = [x["receipts"]["tokens_per_second"] / x["none"]["tokens_per_second"] for x in runs]
    return {
        "coordinator_cpu_ms": {"median": statistics.median(cpu), "slowest": max(cpu)},
        "added_cpu_ms": {"median": statistics.median(added), "slowest": max(added)},
        "receipts_ratio": {"median": statistics.median(ratio), "slowest": min(ratio)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, type=Path, help="a checkout of the release to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stages", default="2,4,8,16")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results" / "step_roots.json")
    args = parser.parse_args()
    counts = [int(x) for x in args.stages.split(",")]
    trees = {"new": HERE, "old": args.baseline.resolve()}
    result: dict[str, Any] = {"load_before": _load(), "cpus": os.cpu_count(), "stages": counts, "rounds": []}
    for r in range(args.rounds):
        row: dict[str, Any] = {}
        for stages in counts:
            names = ["new", "old"] if r % 2 == 0 else ["old", "new"]
            row[str(stages)] = {}
            for name in names:
                got = {s: _in_tree(trees[name], stages, s, args.steps) for s in SETTINGS}
                row[str(stages)][name] = got
                on, off = got["receipts"], got["none"]
                print(
                    f"round {r + 1} S={stages} {name}: coordinator {on['coordinator_cpu_ms']:.0f} ms/step with "
                    f"receipts, {off['coordinator_cpu_ms']:.0f} without; receipts/none "
                    f"{on['tokens_per_second'] / off['tokens_per_second']:.3f} (load {_load()[0]})",
                    flush=True,
                )
        result["rounds"].append(row)
    result["load_after"] = _load()
    result["summary"] = {str(s): {t: _summary(result["rounds"], s, t) for t in trees} for s in counts}
    print(f"{'stages':>6} {'tree':>4} {'coord ms/step':>14} {'added ms':>9} {'receipts/none':>14} (slowest)")
    for s in counts:
        for t in trees:
            x = result["summary"][str(s)][t]
            print(
                f"{s:>6} {t:>4} {x['coordinator_cpu_ms']['median']:>8.0f} ({x['coordinator_cpu_ms']['slowest']:.0f})"
                f" {x['added_cpu_ms']['median']:>9.0f} {x['receipts_ratio']['median']:>8.3f} "
                f"({x['receipts_ratio']['slowest']:.3f})"
            )
    print(f"load: {result['load_before']} before, {result['load_after']} after")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
