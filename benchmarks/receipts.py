"""Receipt costs: making and verifying a receipt for 1 MiB and 64 MiB float32 activations (tensor
digest + Ed25519 signature), a check that digesting makes no copy of the tensor, and the offline
audit's throughput on a generated run directory of at least 20,000 receipts.

Run: ``python benchmarks/receipts.py [--repeat N] [--steps N] [--out FILE]``. Figures print as a
table and are written as JSON (default ``benchmarks/results/receipts.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024


def receipt_costs(mib: int, repeat: int) -> dict[str, object]:
    """Median and best seconds to make (digest output + sign) and verify (re-digest + check signature) one receipt."""
    import torch
    from nacl.signing import SigningKey

    from stagewarden.attest.receipts import (
        ExecutionEnv,
        Receipt,
        UnitKind,
        chain_genesis,
        sign_receipt,
        verify_receipt,
    )
    from stagewarden.attest.tensor_digest import digest_tensor

    activation = torch.randn(mib * MIB // 4)  # (N,) float32
    key = SigningKey.generate()
    env = ExecutionEnv.capture()
    inp, weights = bytes(32), bytes(32)

    def make() -> Receipt:
        return sign_receipt(
            Receipt(
                run_id="bench",
                worker_id="s0r0",
                stage=0,
                replica=0,
                step=0,
                micro_batch=0,
                kind=UnitKind.FORWARD,
                input_digest=inp,
                output_digest=digest_tensor(activation),
                weights_digest=weights,
                env=env,
                signed_at=dt.datetime.now(dt.UTC),
                prev_digest=chain_genesis("bench", "s0r0"),
            ),
            key,
        )

    def check(receipt: Receipt) -> None:
        assert digest_tensor(activation) == receipt.output_digest
        verify_receipt(receipt)

    receipt = make()
    make_s, verify_s = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        receipt = make()
        make_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        check(receipt)
        verify_s.append(time.perf_counter() - started)
    size = activation.numel() * 4
    return {
        "mib": mib,
        "make_median_ms": round(statistics.median(make_s) * 1e3, 3),
        "make_best_ms": round(min(make_s) * 1e3, 3),
        "make_gb_per_s": round(size / statistics.median(make_s) / 1e9, 2),
        "make_best_gb_per_s": round(size / min(make_s) / 1e9, 2),
        "verify_median_ms": round(statistics.median(verify_s) * 1e3, 3),
        "verify_gb_per_s": round(size / statistics.median(verify_s) / 1e9, 2),
    }


def copy_check(contiguous: bool) -> dict[str, object]:
    """Peak-RSS growth and Python-heap peak while digesting a 64 MiB tensor (run in a fresh process)."""
    import resource
    import tracemalloc

    import torch

    from stagewarden.attest.tensor_digest import digest_tensor

    t = torch.randn(64 * MIB // 4) if contiguous else torch.randn(64 * MIB // 4 // 2, 2).t()
    digest_tensor(torch.randn(16))  # warm up imports and thread pools
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    digest_tensor(t)
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "contiguous": contiguous,
        "tensor_mib": 64,
        "peak_rss_growth_mib": round((after - before) / 1024, 2),
        "python_heap_peak_kib": round(heap_peak / 1024, 1),
    }


def audit_throughput(steps: int, headers: bool) -> dict[str, object]:
    """Make a synthetic 4-stage x 2-replica run with 8 micro-batches per step (with or without signed headers) and
    audit it three times; report the best."""
    from stagewarden.attest.audit import audit_run_dir
    from stagewarden.attest.receipt_log import ReceiptLog, read_log
    from stagewarden.attest.synthetic import synthetic_run

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run = synthetic_run("bench", stages=4, replicas=2, micro_batches=8, steps=steps, headers=headers)
        path = run.write(Path(tmp) / "run")
        made = time.perf_counter() - started
        size = (path / "receipts.log").stat().st_size
        log_path = path / "receipts.log"
        started = time.perf_counter()
        records = len(read_log(log_path).records)
        read_s = time.perf_counter() - started
        started = time.perf_counter()
        with ReceiptLog.open(log_path, sync="none") as log:
            assert len(log) == records
        open_s = time.perf_counter() - started
        best = None
        for _ in range(3):
            report = audit_run_dir(path, run.verifier_key)
            assert report.clean, report.findings[:3]
            best = report.seconds if best is None else min(best, report.seconds)
        assert best is not None
    return {
        "receipts": report.receipts,
        "headers": report.headers,
        "log_mib": round(size / MIB, 1),
        "make_seconds": round(made, 2),
        "audit_seconds": round(best, 3),
        "log_read_records_per_s": int(records / read_s),
        "log_open_indexed_records_per_s": int(records / open_s),
        "receipts_per_s": int(report.receipts / best),
        "records_per_s": int(report.records / best),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="repetitions per receipt measurement")
    parser.add_argument("--steps", type=int, default=150, help="steps of the audited run (136 receipts per step)")
    parser.add_argument("--out", default="benchmarks/results/receipts.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(copy_check(args.one == "contiguous")))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    rows = [receipt_costs(mib, args.repeat) for mib in (1, 64)]
    print(
        f"\n{'activation':>10} {'make ms':>9} {'make GB/s':>10} {'best GB/s':>10} {'verify ms':>10} {'verify GB/s':>12}"
    )
    for r in rows:
        print(
            f"{str(r['mib']) + ' MiB':>10} {r['make_median_ms']:>9} {r['make_gb_per_s']:>10} "
            f"{r['make_best_gb_per_s']:>10} {r['verify_median_ms']:>10} {r['verify_gb_per_s']:>12}"
        )
    copies = []
    for mode in ("contiguous", "non-contiguous"):
        proc = subprocess.run([sys.executable, __file__, "--one", mode], capture_output=True, text=True, check=True)
        copies.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print("\ncopy check (64 MiB tensor): peak RSS growth / Python heap peak while digesting")
    for c in copies:
        kind = "contiguous" if c["contiguous"] else "non-contiguous (copy expected)"
        print(f"  {kind:<32} {c['peak_rss_growth_mib']:>7} MiB {c['python_heap_peak_kib']:>8} KiB")
    audits = [audit_throughput(args.steps, headers) for headers in (True, False)]
    print()
    for audit in audits:
        print(
            f"audit: {audit['receipts']} receipts + {audit['headers']} signed headers ({audit['log_mib']} MiB log) in "
            f"{audit['audit_seconds']} s: {audit['receipts_per_s']} receipts/s, {audit['records_per_s']} records/s"
        )
        print(
            f"  log reading: {audit['log_read_records_per_s']} records/s checked, "
            f"{audit['log_open_indexed_records_per_s']} records/s opened with the index"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"cpus": os.cpu_count(), "receipt": rows, "copy_check": copies, "audit": audits}, indent=2) + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
