"""Start-up time of local runs: processes forked from the fork server against ``python -m`` subprocesses.

Runs the tests' tiny job (3 stages, GPipe, 2 micro-batches of 4 sequences of 16 bytes, a GPT
with 4 layers of width 32, 2 steps, on ``runtime/model.py``) ``--runs`` times in a row with
:func:`~stagewarden.runtime.launch.launch_local`, first with every process a subprocess
(``start_method="subprocess"``, as ``STAGEWARDEN_START_METHOD=subprocess`` does), then forked
from the fork server. For each run it prints the wall time of ``launch_local``, the time until the
coordinator reported ``run_started`` and until the last worker was admitted (every process up and
attested), and the machine's load average. The first forked run includes starting the fork server
(one torch import), as every ``stagewarden train`` command pays; the later ones show what a program
that launches several runs (the tests, the benchmarks) pays per run.

On a machine shared with other work the figures move with the load; compare runs made side by side.

Run: ``python benchmarks/launch_start.py [--runs N] [--stages S] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stagewarden.runtime.processes import StartMethod

ROOT = Path(__file__).resolve().parents[1]
#: The start methods compared, in the order they run.
METHODS: tuple[StartMethod, ...] = ("subprocess", "forkserver")


def _config(stages: int) -> Any:
    from stagewarden.runtime.config import RunConfig
    from stagewarden.runtime.model import GPTConfig

    model = GPTConfig(n_layer=4, n_embd=32, block_size=16, n_head=4)
    data = (str(ROOT / "stagewarden" / "runtime" / "model.py"),)
    return RunConfig(stages=stages, microbatches=2, steps=2, schedule="gpipe", model=model, batch_size=4, data=data)


def _one_run(config: Any, method: StartMethod, folder: Path) -> dict[str, Any]:
    from stagewarden.runtime.launch import launch_local

    marks: dict[str, float] = {}
    started = time.monotonic()

    def on_event(event: dict[str, Any]) -> None:
        name = event.get("event")
        if name == "run_started":
            marks.setdefault("run_started", time.monotonic() - started)
        elif name == "admitted":
            marks["admitted"] = time.monotonic() - started

    load = os.getloadavg()[0]
    result = launch_local(config, folder / "run", on_event=on_event, start_method=method)
    return {
        "method": result.start_method,
        "seconds": round(time.monotonic() - started, 2),
        "run_started": round(marks.get("run_started", float("nan")), 2),
        "admitted": round(marks.get("admitted", float("nan")), 2),
        "load": round(load, 2),
        "status": result.summary["status"],
        "weights": result.summary["final_weights"]["stages"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="consecutive runs per start method (default 3)")
    parser.add_argument("--stages", type=int, default=3, help="pipeline stages (default 3)")
    parser.add_argument("--json", dest="json_path", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    config = _config(args.stages)
    rows: dict[str, list[dict[str, Any]]] = {}
    print(f"{args.runs} runs per start method, {config.world_size} processes per run, {os.cpu_count()} CPUs")
    print(f"{'method':<11} {'run':>3} {'wall s':>7} {'started s':>9} {'admitted s':>10} {'load':>5}")
    for method in METHODS:
        rows[method] = []
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="stagewarden-launch-bench-") as tmp:
                row = _one_run(config, method, Path(tmp))
            rows[method].append(row)
            print(
                f"{row['method']:<11} {i + 1:>3} {row['seconds']:>7.2f} {row['run_started']:>9.2f} "
                f"{row['admitted']:>10.2f} {row['load']:>5.2f}",
                flush=True,
            )
    digests = {json.dumps(r["weights"]) for rs in rows.values() for r in rs}
    print(f"final weights identical across all runs: {len(digests) == 1}")
    for method, rs in rows.items():
        walls = [r["seconds"] for r in rs]
        later = walls[1:] or walls
        print(f"{method:<11} first {walls[0]:.2f} s, later runs median {statistics.median(later):.2f} s")
    if args.json_path:
        out = Path(args.json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"runs": rows, "cpus": os.cpu_count()}, indent=2) + "\n", encoding="utf-8")
        print(f"written to {out}")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every process of the run was stopped", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a failed run: one clear line, no traceback
        from stagewarden.runtime.errors import RuntimeSetupError

        if not isinstance(exc, RuntimeSetupError):
            raise
        print(f"\nerror: {exc}", file=sys.stderr)
        sys.exit(1)
