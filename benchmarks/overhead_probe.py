"""One measured stagewarden run: throughput from the run's own timestamps, and, from a probe in
every process, the process CPU time of each rank and the coordinator's per-step barrier.

The probe is a ``sitecustomize`` module in a folder put first on ``PYTHONPATH`` by
:func:`install_probe` in the benchmark's own environment before its first run, so that the fork
server the runs' processes are forked from (or each process, where they are started as
subprocesses) loads it. It wraps two methods of :class:`stagewarden.runtime.transport.Transport`:

* ``send_json`` and ``recv_json``: the coordinator's first ``step`` message of step 1 (sent) or a
  worker's (received) marks the start of the timed steps, the ``release`` message their end; at
  both the process notes ``time.process_time()`` (every thread of the process).
* ``_recv``, every receive: the coordinator notes when its last receive (of any kind, on any
  thread) ended; when it sends the first ``step`` message of a step, the time since then is that
  step's *barrier*: the coordinator's own work between the last worker message it needed and
  the next step's start (its checks, log sync, summary and metrics files, checkpoint hand-off),
  while every worker waits.

A runtime without these methods runs unprobed: CPU and barrier are then reported as unavailable.
Each process writes its record when it exits (the probe also wraps ``os._exit``, which ends a
run's processes).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import statistics
from pathlib import Path
from typing import Any

#: Written as ``sitecustomize.py`` into a folder put first on the children's ``PYTHONPATH``.
PROBE = r"""
import os

if os.environ.get("STAGEWARDEN_OVERHEAD_PROBE"):
    import atexit
    import importlib
    import json
    import threading
    import time

    _record = {"rank": None, "start_cpu": None, "end_cpu": None, "barriers": [], "probed": False}
    _state = {"last_recv": None, "last_step": None}
    _lock = threading.Lock()

    def _dump():  # read at exit: a process forked from a probed fork server gets its own environment
        rank = os.environ.get("RANK")
        if rank is None or not os.environ.get("STAGEWARDEN_OVERHEAD_PROBE"):
            return
        _record["rank"] = rank
        out = os.path.join(os.environ["STAGEWARDEN_OVERHEAD_PROBE"], "probe-%s.json" % rank)
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            json.dump(_record, f)
        os.replace(out + ".tmp", out)

    atexit.register(_dump)
    _exit = os._exit

    def _dump_and_exit(code):
        _dump()
        _exit(code)

    os._exit = _dump_and_exit

    def _mark(kind):
        if _record[kind] is None:
            _record[kind] = time.process_time()

    def _install():
        transport = importlib.import_module("stagewarden.runtime.transport").Transport
        send_json, recv_json, recv = transport.send_json, transport.recv_json, transport._recv

        def probed_send_json(self, dst, message):
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "step":
                step = message.get("step")
                with _lock:
                    if step != _state["last_step"]:
                        _state["last_step"] = step
                        if _state["last_recv"] is not None:
                            _record["barriers"].append([step, time.monotonic() - _state["last_recv"]])
                if step == 1:
                    _mark("start_cpu")
            elif kind == "release":
                _mark("end_cpu")
            return send_json(self, dst, message)

        def probed_recv_json(self, src, expect=None):
            message = recv_json(self, src, expect)
            kind = message.get("type")
            if kind == "step" and message.get("step") == 1:
                _mark("start_cpu")
            elif kind == "release":
                _mark("end_cpu")
            return message

        def probed_recv(self, src, tensor):
            result = recv(self, src, tensor)
            with _lock:
                _state["last_recv"] = time.monotonic()
            return result

        transport.send_json, transport.recv_json, transport._recv = probed_send_json, probed_recv_json, probed_recv
        _record["probed"] = True

    try:
        _install()
    except (ImportError, AttributeError):
        pass
"""

PROBE_ENV = "STAGEWARDEN_OVERHEAD_PROBE"


def install_probe(folder: Path) -> dict[str, str]:
    """Write the probe as ``folder/sitecustomize.py`` and put it first on this process's
    ``PYTHONPATH``, for every run started from now on; return the environment without it (for
    processes that should not be probed)."""
    clean = dict(os.environ)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(PROBE, encoding="utf-8")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    os.environ[PROBE_ENV] = str(folder / "unused")  # a run's processes are given their own folder
    return clean


def _event_time(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def step_timings(events: list[dict[str, Any]]) -> dict[str, Any]:
    """From a run's events: the wall time of steps 1 to N-1 (between the ``step`` events of step
    0 and the last step), the summed timed ``seconds`` of those steps, and the gaps between steps.

    A ``step`` event is written when a step ends, after its timer stops; ``seconds`` is the step's
    own time (from its start to its last message and checks). The gap before step ``n`` is the
    time from step ``n - 1``'s event to step ``n``'s start (its event time less its seconds): the
    coordinator's work between steps (summary and metrics files, a checkpoint's hand-off).
    A recomputed step's events are not expected here (the benchmark's runs are honest).
    """
    steps = [e for e in events if e.get("event") == "step"]
    if len(steps) < 2:
        raise ValueError("a timed run needs at least two step events")
    times = [_event_time(e["time"]) for e in steps]
    seconds = [float(e["seconds"]) for e in steps]
    gaps = [times[n] - seconds[n] - times[n - 1] for n in range(1, len(steps))]
    return {
        "wall_seconds": times[-1] - times[0],
        "step_seconds": seconds,
        "timed_steps": len(steps) - 1,
        "gaps_seconds": gaps,
    }


def read_probe(folder: Path, processes: int, timed_steps: int) -> dict[str, Any]:
    """The probe records of a run: every rank's CPU over the timed steps, per step, and the
    coordinator's barriers of the timed steps (``None`` where the probe could not run)."""
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("probe-*.json"))]
    complete = [r for r in records if r.get("probed") and r["start_cpu"] is not None and r["end_cpu"] is not None]
    if len(records) != processes or len(complete) != processes:
        return {"cpu_seconds_per_step": None, "rank_cpu_seconds_per_step": None, "barrier_seconds": None}
    by_rank = {str(r["rank"]): (r["end_cpu"] - r["start_cpu"]) / timed_steps for r in complete}
    coordinator = next(r for r in complete if str(r["rank"]) == "0")
    barriers = [b for step, b in coordinator["barriers"] if isinstance(step, int) and step >= 1]
    return {
        "cpu_seconds_per_step": sum(by_rank.values()),
        "rank_cpu_seconds_per_step": dict(sorted(by_rank.items(), key=lambda kv: int(kv[0]))),
        "barrier_seconds": barriers,
    }


def measure_stagewarden(config: Any, run_dir: Path, timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``config`` in ``run_dir`` (probed once :func:`install_probe` has run); its throughput,
    CPU and barrier figures.

    Throughput is the tokens of steps 1 to N-1 over their wall time from the run's own ``step``
    events (start-up, admission and the warm-up step 0 are left out; the work between steps is
    in).
    """
    from stagewarden.runtime.launch import launch_local

    out = run_dir.parent / f"{run_dir.name}-probe"
    out.mkdir(parents=True)
    result = launch_local(config, run_dir, env={PROBE_ENV: str(out)}, timeout=timeout)
    if result.summary.get("status") != "completed":
        raise RuntimeError(f"run {run_dir.name} ended with status {result.summary.get('status')!r}")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    timings = step_timings(events)
    probe = read_probe(out, config.world_size, timings["timed_steps"])
    with open(run_dir / "metrics.csv", encoding="utf-8", newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    sampled = [len(e.get("sampled", [])) for e in events if e.get("event") == "spot_check_reveal"]
    barriers = probe["barrier_seconds"]
    return {
        "tokens_per_second": config.tokens_per_step * timings["timed_steps"] / timings["wall_seconds"],
        "wall_seconds": timings["wall_seconds"],
        "step_seconds": timings["step_seconds"],
        "gap_seconds_median": statistics.median(timings["gaps_seconds"]),
        "barrier_seconds_median": None if not barriers else statistics.median(barriers),
        "barrier_seconds": barriers,
        "cpu_seconds_per_step": probe["cpu_seconds_per_step"],
        "rank_cpu_seconds_per_step": probe["rank_cpu_seconds_per_step"],
        "detections": len(result.summary.get("detections", [])),
        "units_sampled_per_step": None if not sampled else statistics.mean(sampled[1:] or sampled),
        "losses": losses,
    }
