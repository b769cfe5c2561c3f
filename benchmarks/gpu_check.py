"""GPU check: train the pipeline on one GPU, measure the receipts' cost there, and re-execute units bitwise.

Three checks on one CUDA device (``--device cpu`` runs the same code on the CPU, for tests):

1. Re-execution: the forward and backward units of both stages of a two-stage split, run
   ``--repeats`` times from the same weights and micro-batch under
   ``torch.use_deterministic_algorithms(True)`` (``CUBLAS_WORKSPACE_CONFIG=:4096:8``), must give
   bitwise the same outputs, input gradients and parameter gradients. Whether the GPU's digests
   equal the CPU's is reported, not checked (they are not expected to).
2. Training: ``--rounds`` rounds of two runs of the job (2 stages, 1F1B, every stage process
   sharing the GPU through gloo), one with receipts and one without, in alternating order. Every
   run must complete, and reproduce bitwise the losses of the same training in one process on the
   same device; every run with receipts must pass the audit.
3. Receipt overhead: each round's throughput with receipts over the one without (tokens of steps
   1.. over their summed step times from ``metrics.csv``: start-up and the warm-up step 0 are left
   out); the median over rounds is reported, with no target.

Rounds stop early when the next one would end after ``--budget`` seconds (at least one runs).

Run: ``benchmarks/gpu_check.sh [RESULT.json]`` or
``python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--rounds N] [--json FILE]``
(``--json`` defaults to ``$OUT/gpu_check.json`` when ``OUT`` is set).
Exit codes: 0 every check passed, 1 a check failed, 2 no CUDA for ``--device cuda`` or bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: cuBLAS's setting for deterministic matrix products (read when the first cuBLAS handle is made).
CUBLAS_WORKSPACE = ":4096:8"
#: Exit codes.
EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE = 0, 1, 2
#: Signals received; a run stopped by one ends the check instead of counting as a failed run.
_TERMINATED: list[int] = []


class Unavailable(Exception):
    """The check cannot run here (no CUDA, bad arguments); the message says why."""


def job(device: str, quick: bool, steps: int | None = None, **overrides: Any) -> Any:
    """The run configuration trained by the check (``quick``: a toy for the CPU tests)."""
    from stagewarden.runtime.config import RunConfig
    from stagewarden.runtime.model import GPTConfig

    if quick:
        model = GPTConfig(n_layer=2, n_embd=32, n_head=4, block_size=16)
        base: dict[str, Any] = dict(microbatches=2, batch_size=2, max_bytes=64 * 1024, steps=3)
    else:
        model = GPTConfig(n_layer=8, n_embd=256, n_head=4, block_size=128)
        base = dict(microbatches=4, batch_size=16, max_bytes=1024 * 1024, steps=12)
    if steps is not None:
        base["steps"] = steps
    return RunConfig(stages=2, schedule="1f1b", model=model, seed=0, device=device, backend="gloo", **base, **overrides)


def _batches(config: Any) -> Any:
    from stagewarden.runtime.data import Batches, default_corpus

    corpus = default_corpus(config.max_bytes)
    return Batches(corpus, config.model.block_size, config.batch_size, config.microbatches, config.seed)


def describe(device: str) -> dict[str, Any]:
    """The machine and software the check ran on (the card's name on CUDA)."""
    import torch

    info: dict[str, Any] = {
        "device": device,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }
    if device == "cuda":
        info.update(card=torch.cuda.get_device_name(0), cuda=torch.version.cuda, gpus=torch.cuda.device_count())
    return info


def unit_digests(config: Any, device: str, batches: Any) -> dict[str, str]:
    """Digests of every forward and backward unit of micro-batch 0 of step 0, both stages, on ``device``."""
    from stagewarden.attest.tensor_digest import digest_tensor, gradients_digest
    from stagewarden.runtime.model import build_stages
    from stagewarden.runtime.units import deterministic, stage_backward, stage_forward

    def digest(tensor: Any) -> str:
        value: bytes = digest_tensor(tensor.detach().cpu())
        return value.hex()

    def grads(module: Any) -> str:
        value: bytes = gradients_digest([p.grad for p in module.parameters() if p.grad is not None])
        return value.hex()

    x, y = batches.microbatch(0, 0)  # (B, T) each
    with deterministic(config.train.threads):
        first, last = (s.to(device) for s in build_stages(config.model, 2, config.seed))
        head = stage_forward(first, x.to(device), config.microbatches)  # output (B, T, C)
        tail = stage_forward(last, head.output.detach(), config.microbatches, targets=y.to(device))
        grad_in = stage_backward(tail)  # (B, T, C), to stage 0
        assert grad_in is not None and tail.loss is not None
        stage_backward(head, grad_in)
        return {
            "forward.s0": digest(head.output),
            "forward.s1": digest(tail.output) + ":" + float(tail.loss.detach()).hex(),
            "backward.s1": digest(grad_in) + ":" + grads(last),
            "backward.s0": grads(first),
        }


def reexecution(config: Any, device: str, repeats: int) -> dict[str, Any]:
    """Re-execute the units ``repeats`` times on ``device``; bitwise when every repeat has the same digests."""
    batches = _batches(config)
    runs = [unit_digests(config, device, batches) for _ in range(repeats)]
    out: dict[str, Any] = {
        "repeats": repeats,
        "units": sorted(runs[0]),
        "bitwise": all(r == runs[0] for r in runs),
        "differing_units": sorted({u for r in runs for u in r if r[u] != runs[0][u]}),
    }
    if device != "cpu":
        cpu = unit_digests(config, "cpu", batches)
        out["equal_to_cpu"] = sorted(u for u in cpu if cpu[u] == runs[0][u])
    return out


def reference_losses(config: Any, device: str) -> list[float]:
    """The losses of the same training in one process on ``device`` (the pipeline must equal them bitwise)."""
    from stagewarden.runtime.model import build_stages
    from stagewarden.runtime.reference import reference_step
    from stagewarden.runtime.units import deterministic, make_optimizer

    batches = _batches(config)
    with deterministic(config.train.threads):
        stages = [s.to(device) for s in build_stages(config.model, config.stages, config.seed)]
        optimizers = [make_optimizer(s, config.train) for s in stages]
        return [
            reference_step(stages, optimizers, [(x.to(device), y.to(device)) for x, y in batches.batch(t)])
            for t in range(config.steps)
        ]


def train(config: Any, workdir: Path, name: str) -> dict[str, Any]:
    """Run ``config`` with :func:`launch_local`; its status, losses, throughput and (receipts on) audit."""
    from stagewarden.attest.audit import audit_run_dir
    from stagewarden.runtime.launch import LaunchError, launch_local

    run_dir = workdir / name
    began = time.monotonic()
    try:
        result = launch_local(config, run_dir, timeout=300.0)
    except LaunchError as exc:
        if _TERMINATED:
            raise KeyboardInterrupt from None
        return {"name": name, "receipts": config.receipts, "status": "failed", "error": str(exc)}
    with open(run_dir / "metrics.csv", encoding="utf-8", newline="") as f:
        seconds = [float(row["wall_seconds"]) for row in csv.DictReader(f)]
    timed = seconds[1:] or seconds
    summary = result.summary
    out: dict[str, Any] = {
        "name": name,
        "receipts": config.receipts,
        "status": summary.get("status"),
        "steps_completed": summary.get("steps_completed"),
        "losses": summary.get("losses"),
        "tokens_per_second": round(config.tokens_per_step * len(timed) / sum(timed), 1),
        "step_seconds": [round(s, 4) for s in seconds],
        "run_seconds": round(time.monotonic() - began, 2),
    }
    if config.receipts:
        report = audit_run_dir(run_dir)
        out["audit_clean"] = report.clean
        out["audit_errors"] = [f.message for f in report.errors][:5]
    return out


def check(device: str, quick: bool, rounds: int, repeats: int, budget: float, steps: int | None) -> dict[str, Any]:
    """Run the three checks and return the results (``passed``: every check passed)."""
    import torch

    started = time.monotonic()
    if device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # the workers inherit it
        if not torch.cuda.is_available():
            raise Unavailable("CUDA is not available on this machine (torch.cuda.is_available() is False)")
    base = job(device, quick, steps)
    results: dict[str, Any] = {"check": "gpu_check", "machine": describe(device), "quick": quick}
    results["job"] = {k: v for k, v in base.to_json().items() if k not in ("format", "version", "attack")}
    results["reexecution"] = reexecution(base, device, repeats)
    reference = reference_losses(base, device)
    runs: list[dict[str, Any]] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="stagewarden-gpu-check-") as tmp:
        for r in range(rounds):
            round_began = time.monotonic()
            order = (True, False) if r % 2 == 0 else (False, True)
            pair = {
                on: train(dataclasses.replace(base, receipts=on), Path(tmp), f"r{r}-{'receipts' if on else 'plain'}")
                for on in order
            }
            runs += [pair[on] for on in order]
            if all(p["status"] == "completed" for p in pair.values()):
                ratios.append(round(pair[True]["tokens_per_second"] / pair[False]["tokens_per_second"], 4))
            spent = time.monotonic() - started
            if r + 1 < rounds and spent + (time.monotonic() - round_began) > budget:
                results["stopped_early"] = f"round {r + 1} would end after the {budget:.0f} s budget"
                break
    for run in runs:
        run["equals_reference"] = run.get("losses") == reference
    results["reference_losses"] = reference
    results["runs"] = runs
    results["overhead"] = {
        "ratios": ratios,
        "median_ratio": statistics.median(ratios) if ratios else None,
        "with_receipts_tokens_per_second": [p["tokens_per_second"] for p in runs if p["receipts"] and "error" not in p],
        "without_tokens_per_second": [p["tokens_per_second"] for p in runs if not p["receipts"] and "error" not in p],
    }
    results["checks"] = {
        "reexecution_bitwise": results["reexecution"]["bitwise"],
        "runs_completed": bool(runs) and all(p["status"] == "completed" for p in runs),
        "runs_equal_reference": bool(runs) and all(p["equals_reference"] for p in runs),
        "audits_clean": all(p.get("audit_clean", False) for p in runs if p["receipts"]),
    }
    results["passed"] = all(results["checks"].values())
    results["seconds"] = round(time.monotonic() - started, 1)
    return results


def render(results: dict[str, Any]) -> str:
    """The results as a few lines of text."""
    m, rx, o = results["machine"], results["reexecution"], results["overhead"]
    lines = [f"device: {m.get('card', m['device'])} (torch {m['torch']}, CUDA {m.get('cuda', '-')})"]
    lines.append(
        f"re-execution: {rx['repeats']} repeats of {len(rx['units'])} units: "
        + ("bitwise identical" if rx["bitwise"] else f"DIFFER in {', '.join(rx['differing_units'])}")
    )
    if "equal_to_cpu" in rx:
        lines.append(f"  units bitwise equal to the CPU's: {', '.join(rx['equal_to_cpu']) or 'none'}")
    for run in results["runs"]:
        if "error" in run:
            lines.append(f"run {run['name']}: FAILED: {run['error']}")
            continue
        audit = "" if not run["receipts"] else ("  audit clean" if run["audit_clean"] else "  AUDIT FAILED")
        same = "equals reference" if run["equals_reference"] else "DIFFERS from reference"
        lines.append(
            f"run {run['name']}: {run['status']}, {run['steps_completed']} steps, "
            f"{run['tokens_per_second']:.0f} tokens/s, {same}{audit}"
        )
    median = o["median_ratio"]
    lines.append(
        f"receipt overhead: throughput ratio with/without receipts {o['ratios']}, median "
        + ("-" if median is None else f"{median:.3f}")
    )
    if "stopped_early" in results:
        lines.append(f"stopped early: {results['stopped_early']}")
    failed = [name for name, ok in results["checks"].items() if not ok]
    lines.append(f"checks: {'all passed' if not failed else 'FAILED ' + ', '.join(failed)} ({results['seconds']} s)")
    return "\n".join(lines)


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    _TERMINATED.append(signum)
    raise KeyboardInterrupt  # the launcher stops its processes on the way out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="where to run (default cuda)")
    parser.add_argument("--quick", action="store_true", help="a toy job (for the CPU tests)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of runs with and without receipts (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="re-executions of each unit (default 3)")
    parser.add_argument("--steps", type=int, help="steps per run (default 12, quick 3; step 0 is not timed)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds after which no round starts (480)")
    parser.add_argument("--json", dest="json_path", help="write the results here (default $OUT/gpu_check.json)")
    args = parser.parse_args(argv)
    json_path = args.json_path or (str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else None)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        if args.rounds < 1 or args.repeats < 2 or (args.steps is not None and args.steps < 2):
            raise Unavailable("--rounds must be at least 1, --repeats at least 2 and --steps at least 2")
        results = check(args.device, args.quick, args.rounds, args.repeats, args.budget, args.steps)
    except Unavailable as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        print("gpu_check: interrupted; every process of the check was stopped", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render(results))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"results: {json_path}")
    return EXIT_OK if results["passed"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
