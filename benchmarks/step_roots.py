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

It first times, in this tree, the coordinator's checks of one worker's commitment of a step (8
micro-batches) both ways, and projects them to S = 1024 x R = 8 (``--unit-only`` stops there).

Run: ``python benchmarks/step_roots.py --baseline /tmp/baseline [--rounds 2] [--stages 2,4,8,16]
[--steps 6] [--out FILE] [--unit-only]``.
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


def unit_costs(micro_batches: int = 8, repeats: int = 200) -> dict[str, float]:
    """The coordinator's CPU for one worker's commitment of a step, in this tree, timed on the
    records of a middle stage of a synthetic run (``micro_batches`` forward and backward receipts,
    the headers it sent, its step root): checking every record's own signature, against checking
    the root's one signature and hashing the records. Also one signature check alone (the update
    receipt and the head's cosignature each cost one, either way). Microseconds, best of
    ``repeats``."""
    import time

    from stagewarden.attest.headers import SignedHeader, encode_header, parse_header, verify_header
    from stagewarden.attest.receipts import Receipt, UnitKind, encode_receipt, parse_receipt, verify_receipt
    from stagewarden.attest.step_roots import StepRoot, leaf_hash, parse_root
    from stagewarden.attest.synthetic import synthetic_run

    run = synthetic_run("bench", stages=3, micro_batches=micro_batches, steps=1)
    worker, key = "s1r0", bytes(run.keys["s1r0"].verify_key)
    receipts = [
        encode_receipt(e)
        for e in run.entries
        if isinstance(e, Receipt) and e.worker_id == worker and e.kind is not UnitKind.UPDATE
    ]
    headers = [encode_header(e) for e in run.entries if isinstance(e, SignedHeader) and e.sender == worker]
    root = next(e for e in run.entries if isinstance(e, StepRoot) and e.worker_id == worker).encode()

    def each() -> None:
        for raw in receipts:
            verify_receipt(parse_receipt(raw), key)
        for raw in headers:
            verify_header(parse_header(raw), key)

    def by_root() -> None:
        parsed = parse_root(root)
        parsed.verify(key)
        if parsed.receipt_leaves != tuple(leaf_hash(raw) for raw in receipts):
            raise AssertionError("the root does not cover the receipts")
        sent = frozenset(parsed.header_leaves)
        for raw in receipts:
            parse_receipt(raw)
        for raw in headers:
            parse_header(raw)
            if leaf_hash(raw) not in sent:
                raise AssertionError("the root does not list a header")

    def one() -> None:
        verify_receipt(parse_receipt(receipts[0]), key)

    def best(fn: Any) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return 1e6 * min(times)

    return {
        "records": len(receipts) + len(headers),
        "each_us": best(each),
        "by_root_us": best(by_root),
        "one_signature_us": best(one),
    }


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
    parser.add_argument(
        "--baseline", type=Path, default=Path("/tmp/baseline"), help="a checkout of the release to compare with"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stages", default="2,4,8,16")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE / "benchmarks" / "results" / "step_roots.json")
    parser.add_argument("--unit-only", action="store_true", help="time one commitment's checks and project; no runs")
    args = parser.parse_args()
    unit = unit_costs()
    fixed = 2 * unit["one_signature_us"]  # the update receipt and the head's cosignature, either way
    workers = 1024 * 8
    print(
        f"one worker's commitment (M = 8, {unit['records']} records): {unit['each_us']:.0f} us checking every "
        f"signature, {unit['by_root_us']:.0f} us by its step root; one signature {unit['one_signature_us']:.0f} us"
    )
    print(
        f"projected coordinator CPU a step at S = 1024 x R = 8 ({workers} workers): "
        f"{workers * (unit['each_us'] + fixed) / 1e6:.1f} s checking every signature, "
        f"{workers * (unit['by_root_us'] + fixed) / 1e6:.1f} s by step roots"
    )
    if args.unit_only:
        return
    counts = [int(x) for x in args.stages.split(",")]
    trees = {"new": HERE, "old": args.baseline.resolve()}
    result: dict[str, Any] = {
        "load_before": _load(),
        "cpus": os.cpu_count(),
        "stages": counts,
        "unit_costs_us": unit,
        "rounds": [],
    }
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
