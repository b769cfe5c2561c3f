"""How the prover scales: time and peak memory to verify a spec with every guarantee kind, for
S stages x R replicas with 10% of the workers malicious, and the prover against the brute-force
checker on a size the brute force can finish.

Run: ``python benchmarks/prover_scale.py [--sizes 8x1,64x1,...] [--timeout SECONDS] [--out FILE]``.
Each size runs in its own process (so peak memory is that size's own); results print as a table
and are written as JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SIZES = "8x1,8x8,64x1,64x8,256x1,256x8,1024x1,1024x8"


def spec_text(stages: int, replicas: int, budget: str = '"10%"') -> str:
    """A spec with every guarantee kind: redundant_neighbour + 5% coordinator spot checks."""
    return f"""version: 1
name: scale-{stages}x{replicas}
topology: {{stages: {stages}, replicas: {replicas}, microbatches: 4, steps: 1000, standby: {replicas}}}
trust: {{honest: [0]}}
adversary:
  max_malicious: {budget}
  capabilities: [tamper_activations, tamper_gradients, equivocate, poison_data, false_accuse]
defense:
  receipts: true
  attestation: true
  data_commitment: true
  checks:
    - scheme: redundant_neighbour
    - scheme: spot_check
      rate: 0.05
  response: [eject, rollback]
guarantees:
  - {{id: detection, kind: detection, probability: 0.5}}
  - {{id: damage, kind: bounded_damage, max_undetected: 100, probability: 0.999}}
  - {{id: framing, kind: no_framing}}
  - {{id: liveness, kind: liveness}}
  - {{id: data, kind: data_integrity}}
  - {{id: cost, kind: overhead, max_compute: 1.5}}
"""


def run_one(stages: int, replicas: int, timeout: float) -> dict[str, object]:
    """Verify one size in this process; report per-guarantee seconds and verdicts."""
    from stagewarden.prover import Limits, verify
    from stagewarden.spec import load_text

    loaded = load_text(spec_text(stages, replicas), f"scale-{stages}x{replicas}.yaml")
    started = time.perf_counter()
    report = verify(loaded, limits=Limits(timeout=timeout))
    total = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "stages": stages, "replicas": replicas, "workers": loaded.spec.total_workers,
        "budget": loaded.spec.malicious_budget, "seconds": round(total, 3), "peak_mib": round(peak_kib / 1024, 1),
        "guarantees": {g.id: {"verdict": g.verdict, "seconds": round(g.seconds, 3)} for g in report.guarantees},
    }


def brute_comparison() -> dict[str, object]:
    """Prover vs brute force on the largest size the brute force handles here (S=5, R=2, budget 2)."""
    root = Path(__file__).resolve().parent.parent
    sys.path[:0] = [str(root / "tests" / "prover"), str(root / "tests")]
    from bruteforce import brute_force

    from stagewarden.prover import verify
    from stagewarden.spec import load_text

    loaded = load_text(spec_text(5, 2, budget="2"), "brute-5x2.yaml")
    started = time.perf_counter()
    expected = brute_force(loaded.spec)
    brute_s = time.perf_counter() - started
    started = time.perf_counter()
    report = verify(loaded)
    prover_s = time.perf_counter() - started
    agree = all(expected[g.id].verdict == g.verdict for g in report.guarantees)
    return {"size": "5x2, budget 2", "brute_force_seconds": round(brute_s, 3), "prover_seconds": round(prover_s, 3),
            "verdicts_agree": agree, "verdicts": {g.id: g.verdict for g in report.guarantees}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated SxR sizes")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-guarantee limit in seconds")
    parser.add_argument("--out", default="benchmarks/results/prover_scale.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        stages, replicas = (int(x) for x in args.one.split("x"))
        print(json.dumps(run_one(stages, replicas, args.timeout)))
        return
    rows = []
    print(f"{'size':>8} {'workers':>7} {'budget':>6} {'total s':>8} {'peak MiB':>8}  per guarantee (s, verdict)")
    for size in args.sizes.split(","):
        proc = subprocess.run([sys.executable, __file__, "--one", size, "--timeout", str(args.timeout)],
                              capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        per = ", ".join(f"{gid} {g['seconds']:.2f} {g['verdict']}" for gid, g in row["guarantees"].items())
        print(f"{size:>8} {row['workers']:>7} {row['budget']:>6} {row['seconds']:>8.2f} {row['peak_mib']:>8.1f}  {per}", flush=True)
    comparison = brute_comparison()
    print(f"\nprover vs brute force ({comparison['size']}): prover {comparison['prover_seconds']} s, "
          f"brute force {comparison['brute_force_seconds']} s, verdicts agree: {comparison['verdicts_agree']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sizes": rows, "brute_force": comparison}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
