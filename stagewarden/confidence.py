"""Confidence intervals for a binomial proportion, computed with the standard library only.

Two intervals: :func:`clopper_pearson`, exact (it inverts the binomial tails, so its coverage is
at least the confidence asked for), which the conformance check uses; and :func:`wilson`, the
score interval, which is cheaper and closer to nominal coverage, for benchmarks that report many
proportions. :func:`binomial_cdf` and :func:`normal_quantile` are the pieces they rest on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

#: Relative precision of the continued fraction of the incomplete beta function.
_EPS = 1e-15
#: Smallest magnitude kept in the continued fraction (modified Lentz), to avoid dividing by zero.
_TINY = 1e-300
#: Most terms of the continued fraction; it needs about sqrt(max(a, b)) terms.
_MAX_TERMS = 100_000


def normal_quantile(probability: float) -> float:
    """The standard normal quantile: ``normal_quantile(0.975)`` is about 1.96."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"a quantile needs a probability in (0, 1), got {probability}")
    return NormalDist().inv_cdf(probability)


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (converges fast for ``x < (a + 1) / (a + b + 2)``)."""
    front = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (front if abs(front) > _TINY else _TINY)
    c, total = 1.0, d
    for m in range(1, _MAX_TERMS):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            total *= c * d
        if abs(c * d - 1.0) < _EPS:
            return total
    raise ArithmeticError(f"the incomplete beta function did not converge for a={a}, b={b}, x={x}")


def regularized_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0`` and ``x`` in [0, 1]."""
    if a <= 0 or b <= 0:
        raise ValueError(f"the beta function needs a, b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``Pr[Bin(n, p) <= k]``."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return regularized_beta(n - k, k + 1, 1.0 - p)


def _check(successes: int, trials: int, confidence: float) -> None:
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"the confidence must be in (0, 1), got {confidence}")


def _solve(increasing: bool, target: float, function: Callable[[float], float]) -> float:
    """The ``p`` in [0, 1] where the monotone ``function(p)`` crosses ``target`` (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if (function(mid) < target) == increasing:
            low = mid
        else:
            high = mid
        if high - low < 1e-14:
            break
    return (low + high) / 2.0


def clopper_pearson(successes: int, trials: int, confidence: float = 0.999) -> tuple[float, float]:
    """The exact two-sided Clopper-Pearson interval for a binomial proportion.

    The lower end is the ``p`` at which ``Pr[Bin(n, p) >= k] = alpha / 2`` (0 when ``k = 0``),
    the upper end the ``p`` at which ``Pr[Bin(n, p) <= k] = alpha / 2`` (1 when ``k = n``), with
    ``alpha = 1 - confidence``. A rate outside the interval is rejected by the exact two-sided
    binomial test at level ``alpha``.
    """
    _check(successes, trials, confidence)
    half = (1.0 - confidence) / 2.0
    k, n = successes, trials
    lower = 0.0 if k == 0 else _solve(True, half, lambda p: 1.0 - binomial_cdf(k - 1, n, p))
    upper = 1.0 if k == n else _solve(False, half, lambda p: binomial_cdf(k, n, p))
    return lower, upper


def wilson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion."""
    _check(successes, trials, confidence)
    z = normal_quantile(1.0 - (1.0 - confidence) / 2.0)
    n, phat = trials, successes / trials
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
