"""How the prover scales: time and peak memory to verify a spec with every guarantee kind, for
S stages x R replicas with 10% of the workers malicious, and the prover against the brute-force
checker on a size the brute force can finish.

Run: ``python benchmarks/prover_scale.py [--sizes 8x1,64x1,...] [--crash N] [--timeout SECONDS]
[--baseline REF] [--skip IDS] [--out FILE]``. Each size runs in its own process (so peak memory is that size's
own); results print as a table and are written as JSON. A size ``live40`` is the liveness stress
case (40 stages, budget and standby 16). With ``--baseline REF`` every size is also verified by
the prover of git revision ``REF`` (checked out into a temporary worktree), the two alternating,
so that both sets of figures come from the same machine state.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SIZES = "8x1,8x8,64x1,64x8,256x1,256x8,1024x1,1024x8,live40,16384x8"
ROOT = Path(__file__).resolve().parent.parent
#: The spec language's limit on S x R x k + standby (``stagewarden.spec.limits.MAX_WORKERS``).
WORKER_LIMIT = 131_072
#: The project's top-level folders and the import packages they become (pyproject.toml).
PACKAGE_DIRS = ("spec", "prover", "attest", "runtime", "report")


def liveness_stress_text() -> str:
    """40 stages, budget 16 and 16 standby workers, and only liveness to prove."""
    return """version: 1
name: live40
topology: {stages: 40, replicas: 1, microbatches: 4, steps: 1000, standby: 16}
trust: {honest: [0, 39]}
adversary:
  max_malicious: 16
  capabilities: [tamper_activations, tamper_gradients, withhold]
  faults: {crash: 1}
defense:
  receipts: true
  checks:
    - scheme: spot_check
      rate: 0.05
  response: [rollback, eject]
guarantees:
  - {id: liveness, kind: liveness}
"""


def spec_text(stages: int, replicas: int, budget: str = '"10%"', crash: int = 1) -> str:
    """A spec with every guarantee kind: redundant_neighbour + 5% coordinator spot checks."""
    # One standby worker per replica, where the spec language's worker limit (S x R + standby
    # <= 131,072) leaves room: 16384x8 runs without standby workers.
    standby = replicas if (stages + 1) * replicas <= WORKER_LIMIT else 0
    return f"""version: 1
name: scale-{stages}x{replicas}
topology: {{stages: {stages}, replicas: {replicas}, microbatches: 4, steps: 1000, standby: {standby}}}
trust: {{honest: [0]}}
adversary:
  max_malicious: {budget}
  capabilities: [tamper_activations, tamper_gradients, equivocate, poison_data, false_accuse]
  faults: {{crash: {crash}}}
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


def run_one(size: str, timeout: float, crash: int, skip: frozenset[str] = frozenset()) -> dict[str, object]:
    """Verify one size in this process (every guarantee but those in ``skip``); report
    per-guarantee seconds and verdicts."""
    from stagewarden.prover import Limits, verify
    from stagewarden.spec import load_text

    if size == "live40":
        stages, replicas = 40, 1
        loaded = load_text(liveness_stress_text(), "live40.yaml")
    else:
        stages, replicas = (int(x) for x in size.split("x"))
        loaded = load_text(spec_text(stages, replicas, crash=crash), f"scale-{stages}x{replicas}.yaml")
    started = time.perf_counter()
    ids = [g.id for g in loaded.spec.guarantees if g.id not in skip]
    report = verify(loaded, ids, limits=Limits(timeout=timeout))
    total = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "size": size,
        "stages": stages,
        "replicas": replicas,
        "workers": loaded.spec.total_workers,
        "budget": loaded.spec.malicious_budget,
        "seconds": round(total, 3),
        "peak_mib": round(peak_kib / 1024, 1),
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
    return {
        "size": "5x2, budget 2",
        "brute_force_seconds": round(brute_s, 3),
        "prover_seconds": round(prover_s, 3),
        "verdicts_agree": agree,
        "verdicts": {g.id: g.verdict for g in report.guarantees},
    }


def baseline_tree(ref: str, into: Path) -> Path:
    """A checkout of ``ref`` laid out as an importable ``stagewarden`` package under ``into``;
    returns the folder to put on ``PYTHONPATH``."""
    checkout = into / "checkout"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(checkout), ref],
        check=True,
        capture_output=True,
    )
    package = into / "site"
    shutil.copytree(checkout / "stagewarden", package / "stagewarden")
    for name in PACKAGE_DIRS:
        # Older revisions keep the subpackages inside stagewarden/ (copied above).
        if not (package / "stagewarden" / name).exists():
            os.symlink(checkout / name, package / "stagewarden" / name)
    return package


def measure(size: str, args: argparse.Namespace, pythonpath: Path | None) -> dict[str, object]:
    """One size in a fresh process: this tree's prover, or the baseline's on ``pythonpath``."""
    env = dict(os.environ)
    cwd = None
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
        cwd = str(pythonpath)  # keep this checkout's own ``stagewarden`` folder off sys.path
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        size,
        "--timeout",
        str(args.timeout),
        "--crash",
        str(args.crash),
        "--skip",
        args.skip,
    ]
    proc = subprocess.run(
        command, capture_output=True, text=True, check=False, env=env, cwd=cwd, timeout=args.timeout * 10
    )
    if proc.returncode != 0:
        return {"size": size, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _line(label: str, row: dict[str, object]) -> str:
    if "error" in row:
        return f"{label:>18} failed: {row['error']}"
    guarantees = row["guarantees"]
    assert isinstance(guarantees, dict)
    per = ", ".join(f"{gid} {g['seconds']:.2f} {g['verdict'][0].upper()}" for gid, g in guarantees.items())
    return f"{label:>18} {row['workers']:>7} {row['budget']:>6} {row['seconds']:>8.2f} {row['peak_mib']:>8.1f}  {per}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated SxR sizes (and live40)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-guarantee limit in seconds")
    parser.add_argument("--crash", type=int, default=1, help="faults.crash of the generated specs")
    parser.add_argument("--baseline", help="git revision whose prover is measured alongside")
    parser.add_argument("--skip", default="", help="comma-separated guarantee ids to leave out (e.g. liveness)")
    parser.add_argument("--out", default="benchmarks/results/prover_scale.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        skip = frozenset(x for x in args.skip.split(",") if x)
        print(json.dumps(run_one(args.one, args.timeout, args.crash, skip)))
        return
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        base_path = baseline_tree(args.baseline, Path(scratch)) if args.baseline else None
        rows = []
        print(f"{'size':>18} {'workers':>7} {'budget':>6} {'total s':>8} {'peak MiB':>8}  per guarantee (s, verdict)")
        try:
            for size in args.sizes.split(","):
                row: dict[str, object] = {"size": size, "load_before": os.getloadavg()[0]}
                row["current"] = measure(size, args, None)
                print(_line(size, row["current"]), flush=True)  # type: ignore[arg-type]
                if base_path is not None:
                    row["baseline"] = measure(size, args, base_path)
                    print(_line(f"{size} ({args.baseline})", row["baseline"]), flush=True)  # type: ignore[arg-type]
                rows.append(row)
        finally:
            if base_path is not None:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(scratch) / "checkout")],
                    check=False,
                    capture_output=True,
                )
    comparison = brute_comparison()
    print(
        f"\nprover vs brute force ({comparison['size']}): prover {comparison['prover_seconds']} s, "
        f"brute force {comparison['brute_force_seconds']} s, verdicts agree: {comparison['verdicts_agree']}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    out.write_text(
        json.dumps(
            {
                "baseline": args.baseline,
                "crash": args.crash,
                "skipped": [x for x in args.skip.split(",") if x],
                "load_average_at_start": load_at_start,
                "load_average": load,
                "sizes": rows,
                "brute_force": comparison,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {out} (load average at the start: {load_at_start[0]:.1f}, at the end: {load[0]:.1f})")


if __name__ == "__main__":
    main()
