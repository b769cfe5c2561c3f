"""Fault injection: how fast a fault is found, how long recovery takes, and what it costs.

Runs one small training job per scenario on this machine (gloo on 127.0.0.1) and injects one
fault into each: a stage worker killed (SIGKILL) or stopped (SIGSTOP), a worker that withholds
its activations, a worker that sends the coordinator garbage, the coordinator killed (and its
receipt log and events torn) followed by ``resume``, and a worker killed with no standby followed
by ``resume``. For each it prints the seconds from the fault to the coordinator's verdict
(``worker_fault`` event; a fault injected from outside is timed from just before the signal, one
a worker commits itself from the end of the step before), the seconds until training resumed,
whether the run completed, the verified steps lost (newest checkpoint written before the fault
minus the step resumed from) and whether the final weights equal those of the same job without
faults.

Usage::

    python benchmarks/fault_injection.py [--heartbeat-timeout 4] [--json benchmarks/results/fault_injection.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagewarden.attest.run_record import SUMMARY_FILE, RunRecord
from stagewarden.runtime.config import RunConfig
from stagewarden.runtime.launch import LaunchError, launch_local
from stagewarden.runtime.model import GPTConfig
from stagewarden.runtime.worker import HOSTILE_ENV

MODEL = GPTConfig(n_layer=4, n_embd=32, block_size=16, n_head=4)
CORPUS = str(Path(__file__).resolve().parents[1] / "stagewarden" / "runtime" / "model.py")


def _config(args: argparse.Namespace, **overrides: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        stages=3,
        microbatches=2,
        steps=5,
        model=MODEL,
        batch_size=4,
        data=(CORPUS,),
        heartbeat_timeout=args.heartbeat_timeout,
        silence_timeout=args.silence_timeout,
        timeout=args.silence_timeout * 4,
    )
    base.update(overrides)
    return RunConfig(**base)


def _events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _when(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["time"]).timestamp()


def _lost(events: list[dict[str, Any]]) -> int:
    lost, newest = 0, 0
    for e in events:
        if e["event"] == "checkpoint":
            newest = max(newest, e["step"])
        elif e["event"] == "run_resumed":
            lost += newest - e["from_step"]
            newest = e["from_step"]
    return lost


def _signal_at(run_dir: Path, step: int, role: str, stage: int | None, sig: int, fired: list[float]) -> Callable:
    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step" and event.get("step") == step and not fired:
            rows = json.loads((run_dir / "workers.json").read_text(encoding="utf-8"))["workers"]
            pid = next(int(r["pid"]) for r in rows if r["role"] == role and r["stage"] == stage)
            fired.append(time.time())
            fired.append(pid)
            os.kill(pid, sig)

    return on_event


def _reference_digests(config: RunConfig, folder: Path) -> list[str | None]:
    result = launch_local(config, folder / "reference")
    return list(result.record.require_training().final_weights.stages)


def scenario(name: str, args: argparse.Namespace, work: Path, reference: list[str | None]) -> dict[str, Any]:
    run_dir = work / name
    fired: list[Any] = []
    started = time.time()
    outcome = "completed"
    try:
        if name == "worker killed, standby":
            config = _config(args, standby=1)
            launch_local(config, run_dir, on_event=_signal_at(run_dir, 1, "stage", 1, signal.SIGKILL, fired))
        elif name == "worker stopped, standby":
            config = _config(args, standby=1)
            try:
                launch_local(config, run_dir, on_event=_signal_at(run_dir, 1, "stage", 1, signal.SIGSTOP, fired))
            finally:
                if len(fired) > 1:
                    with contextlib.suppress(ProcessLookupError):  # the launcher stops it at the end
                        os.kill(int(fired[1]), signal.SIGKILL)
        elif name == "worker withholds, standby":
            config = _config(args, standby=1, attack={"kind": "withhold", "stages": [1], "start": 2})
            launch_local(config, run_dir)
        elif name == "worker sends garbage, standby":
            config = _config(args, standby=1)
            launch_local(config, run_dir, env={HOSTILE_ENV: "1:2:garbage"})
        elif name == "worker killed, no standby, resume":
            config = _config(args, standby=0)
            try:
                launch_local(config, run_dir, on_event=_signal_at(run_dir, 1, "stage", 1, signal.SIGKILL, fired))
            except LaunchError as exc:
                assert exc.resumable, exc
            launch_local(config, run_dir, resume=True)
        elif name == "coordinator killed, torn files, resume":
            config = _config(args, standby=0)
            try:
                launch_local(
                    config, run_dir, on_event=_signal_at(run_dir, 2, "coordinator", None, signal.SIGKILL, fired)
                )
            except LaunchError as exc:
                assert exc.resumable, exc
            with open(run_dir / "receipts.log", "ab") as log:
                log.write(b"\x40\x00\x00\x00\x01" + b"\x07" * 20)
            with open(run_dir / "events.jsonl", "ab") as events:
                events.write(b'{"event": "step", "step": 9')
            launch_local(config, run_dir, resume=True)
        else:
            raise ValueError(name)
    except LaunchError as exc:
        outcome = f"failed: {exc}"
    run = RunRecord.from_json(run_dir / SUMMARY_FILE).require_training()
    events = _events(run_dir)
    fault = next((e for e in events if e["event"] == "worker_fault"), None)
    resumed = next((e for e in events if e["event"] == "run_resumed"), None)
    if fired:  # injected from outside: from the signal
        t0 = float(fired[0])
    else:  # injected by the worker itself (withholding, garbage): from the end of the step before
        before = [e for e in events if e["event"] == "step" and (fault is None or _when(e) <= _when(fault))]
        t0 = _when(before[-1]) if before else started
    return {
        "scenario": name,
        "outcome": outcome if run.status == "completed" else f"{outcome} ({run.status})",
        "cause": fault["cause"] if fault else "-",
        "blamed": fault["worker"] if fault else "-",
        "detect_s": round(_when(fault) - t0, 2) if fault else None,
        "resume_s": round(_when(resumed) - t0, 2) if resumed else None,
        "verified_steps_lost": _lost(events),
        "weights_equal_reference": run.final_weights.stages == reference,
        "wall_s": round(time.time() - started, 1),
    }


SCENARIOS = (
    "worker killed, standby",
    "worker stopped, standby",
    "worker withholds, standby",
    "worker sends garbage, standby",
    "worker killed, no standby, resume",
    "coordinator killed, torn files, resume",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heartbeat-timeout", type=float, default=4.0)
    parser.add_argument("--silence-timeout", type=float, default=10.0)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stagewarden-faults-") as tmp:
        work = Path(tmp)
        reference = _reference_digests(_config(args), work)
        rows = [scenario(name, args, work, reference) for name in SCENARIOS]
    header = (
        "scenario",
        "outcome",
        "cause",
        "blamed",
        "detect_s",
        "resume_s",
        "verified_steps_lost",
        "weights_equal_reference",
    )
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row[k]) for k in header))
    print(
        f"faults injected: {len(rows)}; runs completed: {sum(r['outcome'] == 'completed' for r in rows)}; "
        f"verified steps lost: {sum(r['verified_steps_lost'] for r in rows)}; "
        f"final weights equal to the fault-free run: {sum(r['weights_equal_reference'] for r in rows)}/{len(rows)}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r["outcome"] == "completed" and r["verified_steps_lost"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
