"""What sealing the run record costs: the offline audit's throughput and the training throughput
of this tree against a baseline tree (a checkout of an earlier release, for example one made with
``git worktree add --detach /tmp/baseline <commit>``), measured side by side in alternating rounds.

Run: ``python benchmarks/seal_overhead.py --baseline /tmp/baseline [--rounds 3] [--audit-steps 150]
[--train-steps 20] [--out FILE]``.

- **Audit**: each tree writes a synthetic run of ``--audit-steps`` steps (4 stages x 4 micro-batches,
  signed headers; this tree's run is sealed) with its own writer, then audits it with its own
  auditor (both keys pinned where the tree has a coordinator key); receipts per second, best of
  three audits per round.
- **Training**: each tree trains ``stagewarden train --stages 4 --steps N --verification
  spot_check --no-attestation`` (receipts on, so this tree signs and cosigns a step head per step);
  steps per second of the median step past the first two (``metrics.csv``).

The ratio this tree / baseline is taken round by round (a pair of runs back to back), and the
median and the worst round are printed; figures and the machine's load go to ``--out`` (JSON).
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

HERE = Path(__file__).resolve().parents[1]


def _audit(steps: int) -> dict[str, float]:
    """In a tree's interpreter: write a synthetic run and audit it; receipts per second, best of three."""
    import time

    from stagewarden.attest.audit import audit_run_dir
    from stagewarden.attest.synthetic import synthetic_run

    run = synthetic_run("bench", stages=4, micro_batches=4, steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        path = run.write(Path(tmp) / "run")
        pinned = {"coordinator_key": run.coordinator_key} if hasattr(run, "coordinator_key") else {}
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            report = audit_run_dir(path, run.verifier_key, **pinned)
            best = min(best, time.perf_counter() - started)
        if not report.clean:
            raise SystemExit(f"the benchmark's run does not audit clean: {report.errors[:1]}")
    return {"receipts": report.receipts, "seconds": best, "receipts_per_s": report.receipts / best}


def _train(steps: int) -> dict[str, float]:
    """In a tree's interpreter: train the benchmark's run; tokens per second of its summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [
            sys.executable,
            "-m",
            "stagewarden.cli",
            "train",
            "--stages",
            "4",
            "--steps",
            str(steps),
            "--verification",
            "spot_check",
            "--no-attestation",
            "--out",
            str(out),
        ]
        subprocess.run(command, check=True, capture_output=True, env=dict(os.environ))
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        rows = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()[1:]
    # the median step, past the first two (which warm up), is what a transient load spike moves least
    seconds = statistics.median(float(row.split(",")[3]) for row in rows[2:])
    return {
        "steps_per_s": 1 / seconds,
        "median_step_s": seconds,
        "tokens_per_s": float(summary["tokens_per_second"]),
        "wall_s": float(summary["wall_seconds"]),
    }


def _in_tree(tree: Path, what: str, steps: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = f"import sys; sys.path.insert(0, {str(HERE / 'benchmarks')!r}); import seal_overhead as b, json; "
    code += f"print(json.dumps(b._{what}({steps})))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=tree)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, type=Path, help="a checkout of the release to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--audit-steps", type=int, default=150)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results" / "seal_overhead.json")
    args = parser.parse_args()
    result: dict[str, object] = {"load_before": _load(), "cpus": os.cpu_count(), "rounds": []}
    rounds: list[dict[str, object]] = []
    for r in range(args.rounds):
        row: dict[str, object] = {}
        for what, steps, key in (
            ("audit", args.audit_steps, "receipts_per_s"),
            ("train", args.train_steps, "steps_per_s"),
        ):
            order = [("new", HERE), ("old", args.baseline)] if r % 2 == 0 else [("old", args.baseline), ("new", HERE)]
            got = {name: _in_tree(tree, what, steps) for name, tree in order}
            row[what] = {**got, "ratio": got["new"][key] / got["old"][key]}
            print(
                f"round {r + 1} {what}: new {got['new'][key]:.1f}, old {got['old'][key]:.1f} {key}, "
                f"ratio {got['new'][key] / got['old'][key]:.3f}",
                flush=True,
            )
        rounds.append(row)
    result["rounds"] = rounds
    result["load_after"] = _load()
    for what in ("audit", "train"):
        ratios = [r[what]["ratio"] for r in rounds]  # type: ignore[index]
        result[what] = {"median_ratio": statistics.median(ratios), "worst_ratio": min(ratios)}
        print(f"{what}: this tree / baseline, median {statistics.median(ratios):.3f}, worst {min(ratios):.3f}")
    print(f"load: {result['load_before']} before, {result['load_after']} after")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
