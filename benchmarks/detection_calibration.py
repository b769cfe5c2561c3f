"""Detection calibration: the spot-check sampler's observed detection latency and undetected damage
beside the prover's closed forms, with confidence intervals.

Each trial drives the coordinator's sampling code (:mod:`stagewarden.runtime.spotcheck`) step by
step exactly as :meth:`Coordinator.verify_step` does: a secret is committed, the step's receipts
are digested, the commitment is opened with the revealed secret, the randomness is derived and
:func:`sample_units` picks from the coordinator's canonical list of units (forward and backward of
every micro-batch, update of every stage). The receipts are stand-ins (digests of the unit's
coordinates), and the secret is derived from the trial seed instead of the operating system's
random source, so a run of the benchmark is reproducible; everything else is the runtime's code.

The attacker holds one stage and, from step ``s0`` on, tampers with the first ``k`` of its units
(in that canonical order) at every step. A trial ends at the first step in which a tampered unit
is sampled. It records the detection latency ``L`` (steps from ``s0`` to that step), the tampered
units before the first sampled one ``G`` (the prover's count: units in order, each checked with
probability ``p``), and the units of the steps before the detected step (what stays in the model
when the detected step is recomputed). The predictions, with ``q = (1 - p)^k``:

* ``Pr[L >= l] = q^l``, so ``E[L] = q / (1 - q)``;
* ``G`` is geometric: ``E[G] = (1 - p) / p`` and ``Pr[G >= K + 1] = (1 - p)^(K + 1)``, which the
  prover computes as :func:`stagewarden.prover.probability.negbin_tail` with one worker (the
  ``eject`` case) and :func:`~stagewarden.prover.probability.rollback_damage` (``rollback``).

Run: ``python benchmarks/detection_calibration.py [--trials N] [--seed S] [--real N] [--json PATH]``.
``--real N`` also runs ``N`` small multi-process training runs (``launch_local``) with a tensor
attack and compares their first detection step with the same prediction.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import blake3

from stagewarden.confidence import binomial_cdf, normal_quantile, wilson
from stagewarden.prover.probability import negbin_tail, rollback_damage
from stagewarden.report.calibration import CalibrationRow
from stagewarden.runtime.spotcheck import SampleSeed, receipts_digest, sample_units, sampling_randomness

#: Confidence of every interval printed.
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A pipeline, a sampling rate and an attacker.

    Attributes:
        stages: Pipeline stages ``S``.
        microbatches: Micro-batches ``M`` per step.
        rate: The spot-check rate ``p``.
        stage: The attacker's stage.
        per_step: Units ``k`` the attacker tampers with per step (at most ``2M + 1``).
        start: First step of the attack ``s0``.
        k_damage: The ``K`` of the reported ``Pr[G >= K + 1]``.
        horizon: Steps after ``s0`` after which a trial stops undetected (censored).
    """

    stages: int
    microbatches: int
    rate: float
    stage: int
    per_step: int
    start: int = 3
    k_damage: int = 20
    horizon: int = 10_000

    @property
    def label(self) -> str:
        """A short name."""
        return f"S={self.stages} M={self.microbatches} p={self.rate} k={self.per_step}"


SCENARIOS = (
    Scenario(4, 4, 0.05, 1, 1, k_damage=20),
    Scenario(4, 4, 0.05, 1, 4, k_damage=20),
    Scenario(4, 4, 0.1, 2, 9, k_damage=10),
    Scenario(8, 2, 0.2, 5, 2, k_damage=5),
)


def coordinator_units(stages: int, microbatches: int) -> list[tuple[int, int, str]]:
    """The units the coordinator samples from, in its order (see ``Coordinator.verify_step``)."""
    return [
        (s, m, kind)
        for s in range(stages)
        for m in range(microbatches)
        for kind in ("forward", "backward", "update")
        if kind != "update" or m == 0
    ]


@dataclasses.dataclass(frozen=True)
class Trial:
    """One trial's outcome: latency ``L`` in steps, ``G`` units before the first sampled tampered
    unit, and the units of the undetected steps; ``L`` is ``None`` when censored at the horizon."""

    latency: int | None
    before_first: int
    kept: int


def run_trial(scenario: Scenario, seed: int, trial: int) -> Trial:
    """One trial, sampling with the coordinator's code (see the module docstring)."""
    units = coordinator_units(scenario.stages, scenario.microbatches)
    mine = [u for u in units if u[0] == scenario.stage][: scenario.per_step]
    before = 0
    for offset in range(scenario.horizon):
        step = scenario.start + offset
        secret = blake3.blake3(f"calibration/{seed}/{trial}/{step}".encode()).digest()
        published = SampleSeed(step, secret).commitment  # published before the step
        digests = [blake3.blake3(f"receipt/{seed}/{trial}/{step}/{u}".encode()).digest() for u in units]
        committed = receipts_digest(digests)
        randomness = sampling_randomness(published, step, secret, committed)  # after the reveal
        sampled = set(sample_units(units, scenario.rate, randomness))
        for i, unit in enumerate(mine):
            if unit in sampled:
                return Trial(offset, before + i, offset * len(mine))
        before += len(mine)
    return Trial(None, before, before)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The closed-form figures of a scenario."""

    mean_latency: float
    mean_before_first: float
    mean_kept: float
    tail_before_first: float
    tail_rollback: float

    def latency_quantile(self, q_level: float, per_step_miss: float) -> int:
        """The smallest ``l`` with ``Pr[L <= l] >= q_level``."""
        if per_step_miss <= 0.0:
            return 0
        return max(0, math.ceil(math.log1p(-q_level) / math.log(per_step_miss) - 1 - 1e-12))


def predict(scenario: Scenario) -> Prediction:
    """The prover's closed forms for a scenario (see the module docstring)."""
    p = Fraction(str(scenario.rate))
    miss = (1 - float(p)) ** scenario.per_step
    k = scenario.k_damage
    return Prediction(
        mean_latency=miss / (1 - miss),
        mean_before_first=float((1 - p) / p),
        mean_kept=scenario.per_step * miss / (1 - miss),
        tail_before_first=negbin_tail(1, p, k).value,
        tail_rollback=rollback_damage([(p, 1)], k).value,
    )


def mean_interval(values: list[int], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The mean and its normal-approximation interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, -math.inf, math.inf
    half = normal_quantile(1 - (1 - confidence) / 2) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def quantile_interval(values: list[int], level: float, confidence: float = CONFIDENCE) -> tuple[int, int, int]:
    """The empirical ``level`` quantile and a distribution-free interval for it from order statistics:
    the ranks ``j < l`` around ``n * level`` with ``Pr[j <= Bin(n, level) < l] >= confidence``."""
    ordered = sorted(values)
    n = len(ordered)
    point = ordered[min(n - 1, max(0, math.ceil(level * n) - 1))]
    tail = (1 - confidence) / 2
    low = 0
    while low + 1 < n and binomial_cdf(low, n, level) < tail:
        low += 1
    high = n - 1
    while high > 0 and binomial_cdf(high - 1, n, level) > 1 - tail:
        high -= 1
    return point, ordered[max(0, low - 1)], ordered[high]


def compare(scenario: Scenario, trials: list[Trial]) -> list[CalibrationRow]:
    """The observed figures of ``trials`` beside the prediction."""
    pred = predict(scenario)
    done = [t for t in trials if t.latency is not None]
    latencies = [t.latency for t in done if t.latency is not None]
    rows = []
    mean, low, high = mean_interval(latencies)
    rows.append(CalibrationRow("mean latency L (steps)", pred.mean_latency, mean, low, high))
    miss = (1 - scenario.rate) ** scenario.per_step
    for level in (0.5, 0.9):
        point, qlow, qhigh = quantile_interval(latencies, level)
        rows.append(
            CalibrationRow(f"{level:.0%} quantile of L", pred.latency_quantile(level, miss), point, qlow, qhigh)
        )
    before = [t.before_first for t in trials]
    mean, low, high = mean_interval(before)
    rows.append(CalibrationRow("mean undetected units G", pred.mean_before_first, mean, low, high))
    kept = [t.kept for t in trials]
    mean, low, high = mean_interval(kept)
    rows.append(CalibrationRow("mean units of undetected steps", pred.mean_kept, mean, low, high))
    hits = sum(1 for g in before if g >= scenario.k_damage + 1)
    low, high = wilson(hits, len(before), CONFIDENCE)
    rows.append(
        CalibrationRow(f"Pr[G >= {scenario.k_damage + 1}]", pred.tail_before_first, hits / len(before), low, high)
    )
    return rows


def simulate(scenario: Scenario, trials: int, seed: int) -> list[Trial]:
    """``trials`` independent trials of a scenario."""
    return [run_trial(scenario, seed, i) for i in range(trials)]


def real_runs(count: int, rate: float, start: int, steps: int) -> dict[str, Any]:
    """``count`` two-stage multi-process runs in which stage 0 reverses every activation from
    ``start`` on (``k = M = 2`` units per step), spot-checked at ``rate``; the first detection
    step of each, against ``Pr[L >= l] = q^l``."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))
    from distributed_helpers import tiny_config  # the test suite's tiny run

    from stagewarden.runtime.attacks import AttackPlan
    from stagewarden.runtime.launch import LaunchError, launch_local

    plan = AttackPlan.from_cli("reverse", "0", 1.0, start).to_json()
    config = tiny_config(steps=steps, verification="spot_check", spot_check_rate=rate, response="restart", attack=plan)
    latencies: list[int | None] = []
    seconds = []
    with tempfile.TemporaryDirectory(prefix="stagewarden-calibration-") as tmp:
        for i in range(count):
            began = time.perf_counter()
            try:
                result = launch_local(config, Path(tmp) / f"run{i}")
                summary = result.summary
            except LaunchError as exc:
                raise SystemExit(f"real run {i} failed: {exc}") from None
            seconds.append(time.perf_counter() - began)
            found = [d["step"] for d in summary.get("detections", [])]
            latencies.append(min(found) - start if found else None)
    miss = (1 - rate) ** config.microbatches
    observed = [x for x in latencies if x is not None]
    return {
        "runs": count,
        "rate": rate,
        "per_step": config.microbatches,
        "start": start,
        "steps": steps,
        "latencies": latencies,
        "censored": sum(1 for x in latencies if x is None),
        "predicted_mean_latency": miss / (1 - miss),
        "observed_mean_latency": statistics.fmean(observed) if observed else None,
        "seconds_per_run": statistics.fmean(seconds) if seconds else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000, help="trials per scenario (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the trials' secrets (default 0)")
    parser.add_argument("--real", type=int, default=0, help="also run N multi-process training runs (default 0)")
    parser.add_argument("--json", dest="json_path", help="write the results to this file (JSON)")
    args = parser.parse_args()
    if args.trials < 10 or args.real < 0:
        print("error: --trials must be at least 10 and --real at least 0", file=sys.stderr)
        return 2
    print(f"machine: {platform.machine()}, Python {platform.python_version()}; {args.trials} trials per scenario")
    print(f"intervals: {CONFIDENCE:.0%} (means: normal; quantiles: order statistics; probabilities: Wilson)")
    results: list[dict[str, Any]] = []
    for scenario in SCENARIOS:
        began = time.perf_counter()
        trials = simulate(scenario, args.trials, args.seed)
        seconds = time.perf_counter() - began
        rows = compare(scenario, trials)
        censored = sum(1 for t in trials if t.latency is None)
        print(f"\n{scenario.label} (attacker stage {scenario.stage}, from step {scenario.start}; {seconds:.1f} s)")
        print(f"  {'figure':34} {'predicted':>10} {'observed':>10}   {'95% interval':>20}  ok")
        for r in rows:
            print(
                f"  {r.figure:34} {r.predicted:10.4g} {r.observed:10.4g}   [{r.low:8.4g}, {r.high:8.4g}]  "
                f"{'yes' if r.within else 'NO'}"
            )
        if censored:
            print(f"  {censored} trial(s) undetected within {scenario.horizon} steps (left out of L)")
        results.append(
            {
                "scenario": dataclasses.asdict(scenario),
                "trials": args.trials,
                "censored": censored,
                "seconds": seconds,
                "rows": [r.to_json() for r in rows],
            }
        )
    real = None
    if args.real:
        real = real_runs(args.real, rate=0.2, start=1, steps=12)
        print(
            f"\nreal runs: {real['runs']} x launch_local, stage 0 reverses k={real['per_step']} activations per step "
            f"from step {real['start']}, p={real['rate']}: first detection {real['latencies']} steps after the "
            f"start (predicted mean {real['predicted_mean_latency']:.3g}); {real['seconds_per_run']:.0f} s per run"
        )
    within = sum(r["within"] for s in results for r in s["rows"])
    total = sum(len(s["rows"]) for s in results)
    print(f"\n{within} of {total} predictions lie in their observed {CONFIDENCE:.0%} interval")
    if args.json_path:
        out = {
            "benchmark": "detection_calibration",
            "machine": {"arch": platform.machine(), "python": platform.python_version()},
            "seed": args.seed,
            "confidence": CONFIDENCE,
            "scenarios": results,
            "real": real,
        }
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
