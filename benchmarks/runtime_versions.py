"""The runtime's throughput without security against an earlier version of itself, side by side.

Runs the runtime-overhead benchmark's job (4 stages, 1F1B, 8 micro-batches of 8 sequences of 64
bytes, a GPT with 8 layers of width 128, seed 0, the default corpus) with no receipts, no
attestation, no verification and no checkpoints, alternately on this checkout and on a git
worktree of ``--baseline`` (each run in its own process, with ``PYTHONPATH`` at its tree), and
reports each version's tokens per second of steps 1 to N-1 (from the run's own ``step`` events)
and the ratio per round: the median and the slowest round.

    python benchmarks/runtime_versions.py --baseline REF [--rounds N] [--steps N] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead_probe import step_timings  # noqa: E402

#: Tokens a step of the job trains on: 8 micro-batches of 8 sequences of 64 bytes.
TOKENS_PER_STEP = 8 * 8 * 64

#: The program each run executes in its own tree: the job, then the package it imported.
DRIVER = """
import sys
from pathlib import Path
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.launch import launch_local
from stagewarden.runtime.model import GPTConfig

if __name__ == "__main__":
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    model = GPTConfig(n_layer=8, n_embd=128, n_head=4, block_size=64)
    config = RunConfig(model=model, stages=4, microbatches=8, batch_size=8, steps=steps, schedule="1f1b",
                       seed=0, receipts=False, attestation=False, verification="none", checkpoint_every=0)
    launch_local(config, out)
    print(__import__("stagewarden").__file__)
"""


def _run(tree: Path, folder: Path, steps: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(folder), str(steps)],
        cwd=folder.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the run in {tree} failed: {proc.stderr.strip().splitlines()[-1:]}")
    module = proc.stdout.strip().splitlines()[-1]
    if not module.startswith(str(tree)):
        raise RuntimeError(f"the run meant for {tree} imported {module}")
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    timings = step_timings(events)
    return TOKENS_PER_STEP * timings["timed_steps"] / timings["wall_seconds"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "runtime_versions.json")
    args = parser.parse_args(argv)
    load_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="sw-versions-") as tmp:
        base_tree = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            trees = {"current": ROOT, "baseline": base_tree}
            runs: dict[str, list[float]] = {"current": [], "baseline": []}
            for r in range(args.rounds):
                for name in ("current", "baseline") if r % 2 == 0 else ("baseline", "current"):
                    tps = _run(trees[name], Path(tmp) / f"r{r}-{name}", args.steps)
                    runs[name].append(tps)
                    print(f"  round {r + 1}/{args.rounds}: {name}: {tps:.0f} tokens/s")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)],
                check=False,
                capture_output=True,
            )
    ratios = [c / b for c, b in zip(runs["current"], runs["baseline"], strict=True)]
    result = {
        "baseline": args.baseline,
        "steps": args.steps,
        "rounds": args.rounds,
        "load_start": load_start,
        "load_end": [round(v, 2) for v in os.getloadavg()],
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tokens_per_second": runs,
        "ratio_median": statistics.median(ratios),
        "ratio_slowest": min(ratios),
    }
    print(
        f"current / {args.baseline}: median {result['ratio_median']:.3f}, slowest round {result['ratio_slowest']:.3f}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    partial = args.json.with_suffix(".tmp")
    partial.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    partial.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
