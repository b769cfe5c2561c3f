"""The damage probabilities of the brute-force checker (:mod:`bruteforce`): Pr[more than K
tampered units get through] for a profile of tries, under rollback, eject or neither, summed
exactly (or in floating point for long series).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

__all__ = ["EXACT_K_LIMIT", "eject_probability", "independent_probability", "rollback_probability"]

#: Above this ``max_undetected`` the damage series are summed in floating point.
EXACT_K_LIMIT = 60

#: A probability: exact, or a float where the series are long.
Prob = Fraction | float
#: A distribution of a count on 0..top, the last entry meaning ">= top".
Dist = list[Any]


def _truncated_convolve(a: Dist, b: Dist, top: int) -> Dist:
    """Distribution of X + Y for X ~ a and Y ~ b on 0..top, where index ``top`` means ">= top"."""
    zero = a[0] * 0
    out = [zero] * (top + 1)
    for i, pa in enumerate(a):
        for j, pb in enumerate(b):
            out[min(i + j, top)] += pa * pb
    return out


def _point(value: int, top: int, one: Prob) -> Dist:
    dist = [one * 0] * (top + 1)
    dist[min(value, top)] = one
    return dist


def rollback_probability(profile: list[tuple[Fraction, int]], K: int) -> Fraction:
    """``1 - prod_w (1 - (1 - d_w)^(K+1))``, and 0 when ``sum_w U_w < K + 1``."""
    if sum(units for _, units in profile) < K + 1:
        return Fraction(0)
    keep = Fraction(1)
    for d, _ in profile:
        keep *= 1 - (1 - d) ** (K + 1)
    return 1 - keep


def eject_probability(profile: list[tuple[Fraction, int]], K: int) -> Fraction | float:
    """``Pr[sum_w G_w >= K+1]``, G_w the failures before the first success of probability d_w
    (``U_w`` for d_w = 0), by explicit truncated convolution."""
    top = K + 1
    exact = K <= EXACT_K_LIMIT
    one: Fraction | float = Fraction(1) if exact else 1.0
    total = _point(0, top, one)
    for d, units in profile:
        dd: Fraction | float = d if exact else float(d)
        if d == 0:
            dist = _point(units, top, one)
        else:
            dist = [(1 - dd) ** g * dd for g in range(top)] + [(1 - dd) ** top]
        total = _truncated_convolve(total, dist, top)
    result: Prob = total[top]
    return result


def _binomial_truncated(n: int, q: Prob, top: int, exact: bool) -> Dist:
    """Bin(n, q) on 0..top with the tail lumped at ``top``."""
    if exact:
        exact_pmf = [
            Fraction(math.comb(n, j)) * Fraction(q) ** j * (1 - Fraction(q)) ** (n - j) if j <= n else Fraction(0)
            for j in range(top)
        ]
        return exact_pmf + [1 - sum(exact_pmf, Fraction(0))]
    qf = float(q)
    pmf: list[float] = []
    for j in range(top):
        if j > n:
            pmf.append(0.0)
        elif qf == 0.0:
            pmf.append(1.0 if j == 0 else 0.0)
        elif qf == 1.0:
            pmf.append(1.0 if j == n else 0.0)
        else:
            log = (
                math.lgamma(n + 1)
                - math.lgamma(j + 1)
                - math.lgamma(n - j + 1)
                + j * math.log(qf)
                + (n - j) * math.log1p(-qf)
            )
            pmf.append(math.exp(log))
    return pmf + [max(0.0, 1.0 - sum(pmf))]


def independent_probability(profile: list[tuple[Fraction, int]], K: int) -> Fraction | float:
    """``Pr[sum_w Bin(U_w, 1 - d_w) >= K+1]``."""
    top = K + 1
    exact = K <= EXACT_K_LIMIT
    one: Fraction | float = Fraction(1) if exact else 1.0
    total = _point(0, top, one)
    for d, units in profile:
        total = _truncated_convolve(total, _binomial_truncated(units, 1 - d, top, exact), top)
    result: Prob = total[top]
    return result


# -- the guarantees ------------------------------------------------------------------------
