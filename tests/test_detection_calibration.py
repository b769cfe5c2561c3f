"""The detection-calibration benchmark's core: the coordinator's sampler against the prover's closed forms."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from detection_calibration import Scenario, coordinator_units, predict, run_trial, simulate  # noqa: E402


def test_units_are_the_coordinators() -> None:
    """The sampled units are forward and backward per micro-batch and one update per stage, in the
    coordinator's order."""
    from stagewarden.run_history import eligible_units

    assert coordinator_units(3, 2) == eligible_units(3, 2, None)
    assert len(coordinator_units(4, 4)) == 4 * 9


def test_predictions_match_the_closed_forms() -> None:
    """The predicted figures are the geometric means and the prover's (1 - p)^(K + 1)."""
    pred = predict(Scenario(4, 4, 0.05, 1, 4, k_damage=20))
    q = 0.95**4
    assert pred.mean_latency == pytest.approx(q / (1 - q))
    assert pred.mean_before_first == pytest.approx(19.0)
    assert pred.tail_before_first == pytest.approx(0.95**21) and pred.tail_rollback == pytest.approx(0.95**21)


def test_trials_are_reproducible_and_respect_the_attack_window() -> None:
    """A trial depends only on its seed and index, and never reports more undetected units than it tampered with."""
    scenario = Scenario(4, 2, 0.1, 1, 3, start=2)
    first = [run_trial(scenario, 7, i) for i in range(20)]
    assert first == [run_trial(scenario, 7, i) for i in range(20)]
    for t in first:
        assert t.latency is not None
        assert t.latency * 3 <= t.before_first < (t.latency + 1) * 3 and t.kept == t.latency * 3


def test_observed_mean_latency_matches_the_prediction() -> None:
    """Over 400 trials the mean latency and mean undetected units lie within five standard errors of the prediction."""
    scenario = Scenario(4, 4, 0.1, 2, 2, k_damage=10)
    trials = simulate(scenario, 400, seed=1)
    pred = predict(scenario)
    latencies = [t.latency for t in trials if t.latency is not None]
    assert len(latencies) == 400
    q = 0.9**2
    sd_latency = math.sqrt(q) / (1 - q)  # standard deviation of a geometric number of failures
    assert abs(statistics.fmean(latencies) - pred.mean_latency) < 5 * sd_latency / math.sqrt(400)
    sd_units = math.sqrt(0.9) / 0.1
    before = [t.before_first for t in trials]
    assert abs(statistics.fmean(before) - pred.mean_before_first) < 5 * sd_units / math.sqrt(400)
