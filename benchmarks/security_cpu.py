"""Where the cost of receipts goes: the CPU time each security operation takes in the runtime-overhead
job, per step, summed over the run's processes, with receipts on and off.

The job is ``runtime_overhead.py``'s (4 stages, 1F1B, 8 micro-batches of 8 sequences of 64
bytes, a GPT with 8 layers of width 128). It runs without security and with receipts only,
alternating, for ``--repeat`` rounds. Every process of a run is started as a subprocess whose
``PYTHONPATH`` begins with a temporary folder holding a ``sitecustomize`` module (written by this
script). That module wraps the operations below and adds up the CPU time of the calling thread
(``time.thread_time``: a thread blocked in a receive counts nothing) and the calls; an operation
that runs inside another wrapped one counts in the outer one only (the signature and digest of
a signed send count as the send). Each process writes its totals when it exits (the module wraps
``os._exit`` too, which ends a run's processes).

Operations:

* ``Transport.send_signed`` / ``recv_signed``: a signed transfer's sending side (digest unless
  the receipt's is passed, header signature, framing) and receiving side (header parsing and
  signature check, the tensor's digest); without receipts the tensor goes alone.
* ``gradients_digest``: the gradient digests (every stage's gradient trace, stage 0's backward
  receipts).
* ``tensor_digest`` / ``digest_tensor`` / ``digest_state_dict``: the other digests (a unit's
  committed output, the weights and optimizer state).
* Ed25519 ``sign`` and ``verify`` outside the transfers: receipts, and the coordinator's checks
  of receipts and committed headers.
* ``ReceiptLog`` appends and sync: the coordinator's receipt log.

The figures are per step over the whole run (admission and the warm-up step included: they add a
few signatures). The sum of the differences is CPU time; compare it with the step's CPU (at most
the cores times the step time) rather than with the step time. Printed: per operation, the
median over rounds of its CPU milliseconds per step with and without receipts and the difference.

Run: ``python benchmarks/security_cpu.py [--repeat N] [--steps N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime_overhead import SETTINGS, job, run_cli, write_results  # noqa: E402

#: Written as ``sitecustomize.py`` into a folder put first on the children's ``PYTHONPATH``.
PROBE = r"""
import os

if os.environ.get("SECURITY_CPU_OUT"):
    import atexit
    import functools
    import importlib
    import json
    import threading
    import time

    _totals = {}
    _inside = threading.local()

    def _wrap(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if getattr(_inside, "active", False):
                return original(*args, **kwargs)
            _inside.active = True
            began = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                _inside.active = False
                calls, seconds = _totals.get(label, (0, 0.0))
                _totals[label] = (calls + 1, seconds + time.thread_time() - began)

        setattr(owner, name, timed)

    def _dump():
        out = os.path.join(os.environ["SECURITY_CPU_OUT"], "cpu-%s.json" % os.environ.get("RANK", "x"))
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"rank": os.environ.get("RANK"), "operations": _totals}, f)

    atexit.register(_dump)
    _exit = os._exit

    def _dump_and_exit(code):  # a process of a run ends with os._exit, past atexit
        _dump()
        _exit(code)

    os._exit = _dump_and_exit
    import nacl.signing

    _wrap(nacl.signing.SigningKey, "sign", "Ed25519 sign")
    _wrap(nacl.signing.VerifyKey, "verify", "Ed25519 verify")
    _digests = importlib.import_module("stagewarden.attest.tensor_digest")
    for _name in ("tensor_digest", "digest_tensor", "gradients_digest", "digest_state_dict"):
        _wrap(_digests, _name, _name)
    _log = importlib.import_module("stagewarden.attest.receipt_log").ReceiptLog
    for _name in dir(_log):
        if _name.startswith("append") or _name == "sync":
            _wrap(_log, _name, "ReceiptLog." + _name)
    _transport = importlib.import_module("stagewarden.runtime.transport").Transport
    for _name in ("send_signed", "recv_signed"):
        _wrap(_transport, _name, "Transport." + _name)
"""

CONFIGS = ("none", "receipts")


def run_once(key: str, steps: int, probe_dir: Path, workdir: Path) -> dict[str, Any]:
    """One run of the job under ``key``'s configuration; the operations' totals, per step."""
    from stagewarden.runtime.launch import launch_local

    setting = next(s for s in SETTINGS if s.key == key)
    out = workdir / f"{key}-cpu"
    out.mkdir()
    path = os.pathsep.join(p for p in (str(probe_dir), os.environ.get("PYTHONPATH", "")) if p)
    run_dir = workdir / key
    result = launch_local(
        job(False, steps, **setting.overrides),
        run_dir,
        env={"PYTHONPATH": path, "SECURITY_CPU_OUT": str(out)},
        start_method="subprocess",
        timeout=max(600.0, 60.0 * steps),
    )
    if result.summary.get("status") != "completed":
        raise RuntimeError(f"the {key} run ended with status {result.summary.get('status')!r}")
    files = sorted(out.glob("cpu-*.json"))
    if len(files) != 5:
        raise RuntimeError(f"expected a CPU record from each of the 5 processes, found {len(files)}")
    per_op: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    coordinator: dict[str, float] = collections.defaultdict(float)
    for f in files:
        record = json.loads(f.read_text(encoding="utf-8"))
        for label, (n, seconds) in record["operations"].items():
            per_op[label] += seconds * 1000 / steps
            calls[label] += n
            if record["rank"] == "0":
                coordinator[label] += seconds * 1000 / steps
    with open(run_dir / "metrics.csv", encoding="utf-8", newline="") as f:
        seconds = [float(row["wall_seconds"]) for row in csv.DictReader(f)][1:]
    return {
        "cpu_ms_per_step": dict(per_op),
        "coordinator_cpu_ms_per_step": dict(coordinator),
        "calls_per_step": {k: v / steps for k, v in calls.items()},
        "step_ms": 1000 * sum(seconds) / len(seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="rounds of alternating runs (default 2)")
    parser.add_argument("--steps", type=int, default=13, help="steps per run, the first is warm-up (default 13)")
    parser.add_argument("--json", dest="json_path", help="write the results to this file (JSON)")
    args = parser.parse_args()
    if args.repeat < 1 or args.steps < 2:
        print("error: --repeat must be at least 1 and --steps at least 2", file=sys.stderr)
        return 2
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in CONFIGS}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stagewarden-cpu-") as tmp:
        probe_dir = Path(tmp) / "probe"
        probe_dir.mkdir()
        (probe_dir / "sitecustomize.py").write_text(PROBE, encoding="utf-8")
        for r in range(args.repeat):
            for key in CONFIGS:
                print(f"  round {r + 1}/{args.repeat}: {key} ...", end="", flush=True)
                workdir = Path(tmp) / f"r{r}"
                workdir.mkdir(exist_ok=True)
                result = run_once(key, args.steps, probe_dir, workdir)
                runs[key].append(result)
                print(f" {result['step_ms']:.0f} ms a step")
    labels = sorted({label for rs in runs.values() for r in rs for label in r["cpu_ms_per_step"]})

    def median(key: str, label: str, field: str = "cpu_ms_per_step") -> float:
        return statistics.median(r[field].get(label, 0.0) for r in runs[key])

    rows = []
    for label in labels:
        on, off = median("receipts", label), median("none", label)
        rows.append(
            {
                "operation": label,
                "receipts_ms": round(on, 2),
                "none_ms": round(off, 2),
                "added_ms": round(on - off, 2),
                "receipts_calls": round(median("receipts", label, "calls_per_step"), 1),
                "coordinator_receipts_ms": round(median("receipts", label, "coordinator_cpu_ms_per_step"), 2),
            }
        )
    rows.sort(key=lambda row: -row["added_ms"])
    print(f"\nCPU ms a step, summed over the 5 processes (median of {args.repeat} round(s)):")
    print(f"{'operation':<30} {'receipts':>9} {'none':>7} {'added':>7} {'calls':>7} {'coord.':>7}")
    for row in rows:
        print(
            f"{row['operation']:<30} {row['receipts_ms']:>9.1f} {row['none_ms']:>7.1f} {row['added_ms']:>7.1f} "
            f"{row['receipts_calls']:>7.1f} {row['coordinator_receipts_ms']:>7.1f}"
        )
    added = sum(row["added_ms"] for row in rows)
    step_on = statistics.median(r["step_ms"] for r in runs["receipts"])
    step_off = statistics.median(r["step_ms"] for r in runs["none"])
    print(f"{'sum':<30} {'':>9} {'':>7} {added:>7.1f}")
    print(f"\nstep time: {step_off:.0f} ms without security, {step_on:.0f} ms with receipts (medians)")
    print(f"{len(CONFIGS) * args.repeat} runs in {time.monotonic() - started:.0f} s")
    if args.json_path:
        payload = {
            "benchmark": "security_cpu",
            "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "steps": args.steps,
            "rounds": args.repeat,
            "operations": rows,
            "added_ms_per_step": round(added, 2),
            "step_ms": {"none": round(step_off, 1), "receipts": round(step_on, 1)},
            "runs": runs,
        }
        write_results(args.json_path, payload)
    return 0


if __name__ == "__main__":
    run_cli(main)
