"""The closed-form probabilities: the reference formulas of the design, exact arithmetic, and a
Monte Carlo simulation of the spot-check processes they summarise."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from stagewarden.prover.probability import (
    Prob,
    binomial_tail,
    detection_probability,
    eject_damage,
    negbin_tail,
    rollback_damage,
    skip_damage,
)


def test_rollback_reference_one_worker() -> None:
    """One worker under rollback gets K+1 units through with probability (1-p)^(K+1), exactly."""
    assert rollback_damage([(Fraction(1, 20), 1)], 300).exact == Fraction(19, 20) ** 301


def test_negbin_reference() -> None:
    """Pr[NegBin(f, p) >= K+1] equals the design's sum over j < f, exactly."""
    p, f, k = Fraction(1, 20), 3, 300
    expected = sum(math.comb(k + f, j) * p**j * (1 - p) ** (k + f - j) for j in range(f))
    assert negbin_tail(f, p, k).exact == expected


def test_log_space_agrees_with_exact() -> None:
    """Where the numbers grow too large for exact arithmetic the log-space result agrees with it."""
    p = Fraction(1, 20)
    exact = negbin_tail(40, p, 2000)
    assert exact.exact is not None
    from stagewarden.prover import probability

    saved = probability.EXACT_BITS
    probability.EXACT_BITS = 0
    try:
        approx = negbin_tail(40, p, 2000)
        approx_binom = binomial_tail(5000, Fraction(1, 3), 1700)
    finally:
        probability.EXACT_BITS = saved
    assert approx.exact is None and math.isclose(approx.value, float(exact.exact), rel_tol=1e-9)
    assert math.isclose(approx_binom.value, binomial_tail(5000, Fraction(1, 3), 1700).value, rel_tol=1e-9)


def test_prob_compare() -> None:
    """Exact probabilities compare exactly; log-space ones refuse to decide when too close to call."""
    assert Prob.of(Fraction(1, 3)).compare(Fraction(1, 3)) == 0
    assert Prob.of(Fraction(1, 3)).compare(Fraction(1, 4)) == 1
    assert Prob(0.25).compare(Fraction(1, 4)) is None
    assert Prob(0.2).compare(Fraction(1, 4)) == -1


def test_detection_combines_independent_checks() -> None:
    """A unit's detection probability is 1 - prod(1 - d_i)."""
    assert detection_probability([Fraction(1, 2), Fraction(1, 3)]) == Fraction(2, 3)
    assert detection_probability([]) == 0


def test_eject_with_never_caught_workers() -> None:
    """Workers that are never caught contribute their units outright."""
    assert eject_damage([], certain_units=5, k=4).exact == 1
    assert eject_damage([], certain_units=4, k=4).exact == 0


def _interval(hits: int, trials: int, expected: float) -> bool:
    """Whether ``expected`` lies in the 99.9% normal interval around the observed frequency."""
    freq = hits / trials
    sigma = math.sqrt(max(expected * (1 - expected), 1e-12) / trials)
    return abs(freq - expected) <= 3.3 * sigma + 1e-9


@pytest.mark.parametrize(("p", "k", "f"), [(0.2, 3, 1), (0.2, 3, 2), (0.1, 5, 3)])
def test_monte_carlo_rollback(p: float, k: int, f: int) -> None:
    """Simulated rollback: each worker in turn tampers until K+1 units pass or it is caught (its try undone)."""
    rng = random.Random(1234 + f)
    trials, hits = 20_000, 0
    for _ in range(trials):
        for _worker in range(f):
            passed = 0
            while passed <= k and rng.random() >= p:
                passed += 1
            if passed > k:
                hits += 1
                break
    expected = rollback_damage([(Fraction(str(p)), f)], k).value
    assert _interval(hits, trials, expected)


@pytest.mark.parametrize(("p", "k", "f"), [(0.2, 6, 1), (0.15, 10, 2), (0.3, 4, 3)])
def test_monte_carlo_eject(p: float, k: int, f: int) -> None:
    """Simulated ejection: every worker tampers until caught; its undetected units stay."""
    rng = random.Random(99 + f)
    trials, hits = 20_000, 0
    for _ in range(trials):
        undetected = 0
        for _worker in range(f):
            while rng.random() >= p:
                undetected += 1
        if undetected > k:
            hits += 1
    expected = negbin_tail(f, Fraction(str(p)), k).value
    assert _interval(hits, trials, expected)


def test_monte_carlo_skip() -> None:
    """Simulated skip_stage: every tamper is an independent trial; two detection levels combine."""
    rng = random.Random(7)
    trials, hits, k = 20_000, 0, 6
    plan = [(0.5, 8), (0.8, 10)]
    for _ in range(trials):
        undetected = sum(1 for d, n in plan for _ in range(n) if rng.random() >= d)
        if undetected > k:
            hits += 1
    expected = skip_damage([(Fraction(str(d)), n) for d, n in plan], k).value
    assert _interval(hits, trials, expected)


def test_monte_carlo_detection_of_combined_checks() -> None:
    """Simulated independent checks catch a unit with probability 1 - prod(1 - d_i)."""
    rng = random.Random(3)
    rates = [0.05, 0.3, 0.1]
    trials = 40_000
    hits = sum(1 for _ in range(trials) if any(rng.random() < r for r in rates))
    assert _interval(hits, trials, float(detection_probability(Fraction(str(r)) for r in rates)))
