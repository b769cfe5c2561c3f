"""Closed-form probabilities of the prover, computed with rational arithmetic where the numbers stay
small enough and in log space otherwise (never with floating-point solver reals).

Independence assumptions: each check samples each unit independently of every other unit and
check; a worker's units are independent trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

#: Largest denominator size, in bits, kept exact; above it the value is computed in log space.
EXACT_BITS = 60_000


@dataclass(frozen=True)
class Prob:
    """A probability: exact when ``exact`` is set, otherwise ``value`` computed in log space."""

    value: float
    exact: Fraction | None = None

    @classmethod
    def of(cls, fraction: Fraction) -> Prob:
        """An exact probability."""
        return cls(float(fraction), fraction)

    def compare(self, bound: Fraction) -> int | None:
        """-1, 0 or 1 as the probability is below, equal to or above ``bound``; None when a
        log-space value is too close to the bound to tell."""
        if self.exact is not None:
            return (self.exact > bound) - (self.exact < bound)
        b = float(bound)
        if math.isclose(self.value, b, rel_tol=1e-9, abs_tol=1e-300):
            return None
        return 1 if self.value > b else -1

    def __str__(self) -> str:
        return format_probability(self.value)


def format_probability(value: float) -> str:
    """Render a probability compactly: ``0``, ``1``, ``0.05``, ``1.97e-07``."""
    if value == 0:
        return "0"
    if value == 1:
        return "1"
    if 1e-3 <= value <= 0.999:
        return f"{value:.4g}"
    if value > 0.999:
        return f"1 - {1 - value:.3g}"
    return f"{value:.3g}"


def _bits(fraction: Fraction) -> int:
    return fraction.denominator.bit_length()


def detection_probability(values: Iterable[Fraction]) -> Fraction:
    """``1 - prod(1 - d_i)`` for independent checks."""
    miss = Fraction(1)
    for value in values:
        miss *= 1 - value
    return 1 - miss


def rollback_damage(tries: Iterable[tuple[Fraction, int]], k: int) -> Prob:
    """Pr[more than ``k`` undetected units survive] with rollback.

    ``tries`` lists ``(d, count)``: ``count`` malicious workers whose weakest unit is detected with
    probability ``d``; each gets one try of ``k + 1`` undetected units:
    ``1 - prod (1 - (1 - d)^(k+1))^count``.
    """
    groups = [(d, c) for d, c in tries if c > 0 and d < 1]
    if not groups:
        return Prob.of(Fraction(0))
    estimate = sum(c * (k + 1) * _bits(d) for d, c in groups)
    if estimate <= EXACT_BITS:
        keep = Fraction(1)
        for d, count in groups:
            keep *= (1 - (1 - d) ** (k + 1)) ** count
        return Prob.of(1 - keep)
    log_keep = 0.0
    for d, count in groups:
        log_q = (k + 1) * math.log1p(-float(d)) if d > 0 else 0.0
        q = math.exp(log_q)
        log_keep += count * (math.log1p(-q) if q < 1 else -math.inf)
    return Prob(-math.expm1(log_keep))


def negbin_tail(f: int, p: Fraction, k: int) -> Prob:
    """``Pr[NegBin(f, p) >= k + 1] = sum_{j<f} C(k+f, j) p^j (1-p)^(k+f-j)``: the chance that
    ``f`` workers, each tampering until its first detection (probability ``p`` per unit), leave
    more than ``k`` undetected units."""
    if f <= 0:
        return Prob.of(Fraction(0))
    if p == 0:
        return Prob.of(Fraction(1))
    if p == 1:
        return Prob.of(Fraction(0))
    n = k + f
    if n * _bits(p) <= EXACT_BITS:
        a, b = p.numerator, p.denominator
        return Prob.of(Fraction(_binomial_head(n, a, b - a, f), b**n))
    log_p, log_q = math.log(float(p)), math.log1p(-float(p))
    logs = [_log_comb(n, j) + j * log_p + (n - j) * log_q for j in range(f)]
    return Prob(min(1.0, math.exp(_logsumexp(logs))))


def binomial_tail(n: int, q: Fraction, k: int) -> Prob:
    """``Pr[Bin(n, q) >= k + 1]``."""
    if k + 1 > n:
        return Prob.of(Fraction(0))
    if q == 0:
        return Prob.of(Fraction(0))
    if q == 1:
        return Prob.of(Fraction(1))
    if n * _bits(q) <= EXACT_BITS:
        a, b = q.numerator, q.denominator
        return Prob.of(1 - Fraction(_binomial_head(n, a, b - a, k + 1), b**n))
    log_p, log_q = math.log(float(q)), math.log1p(-float(q))
    logs = [_log_comb(n, j) + j * log_p + (n - j) * log_q for j in range(k + 1)]
    return Prob(max(0.0, -math.expm1(_logsumexp(logs))))


def eject_damage(groups: Iterable[tuple[Fraction, int]], certain_units: int, k: int) -> Prob:
    """Pr[more than ``k`` undetected units stay] with ejection.

    ``groups`` lists ``(d, count)`` for workers with ``0 < d < 1`` (each tampers until caught);
    ``certain_units`` counts the units of workers that are never caught (``d = 0``).
    """
    need = k + 1 - certain_units
    if need <= 0:
        return Prob.of(Fraction(1))
    live = [(d, c) for d, c in groups if c > 0 and d < 1]
    if not live:
        return Prob.of(Fraction(0))
    if len(live) == 1:
        d, count = live[0]
        return negbin_tail(count, d, need - 1)
    # Several detection levels: convolve the NegBin distributions, truncated at ``need``.
    pmf = [1.0] + [0.0] * (need - 1)
    for d, count in live:
        pmf = _convolve(pmf, _negbin_pmf(count, float(d), need))
    return Prob(max(0.0, 1.0 - math.fsum(pmf)))


def skip_damage(trials: Iterable[tuple[Fraction, int]], k: int) -> Prob:
    """Pr[more than ``k`` of independent tampers go undetected]; ``trials`` lists
    ``(d, units)`` pairs (units tampered, each detected with probability ``d``)."""
    merged: dict[Fraction, int] = {}
    for d, units in trials:
        if units > 0 and d < 1:
            merged[d] = merged.get(d, 0) + units
    if not merged:
        return Prob.of(Fraction(0))
    if len(merged) == 1:
        ((d, units),) = merged.items()
        return binomial_tail(units, 1 - d, k)
    need = k + 1
    pmf = [1.0] + [0.0] * (need - 1)
    for d, units in merged.items():
        pmf = _convolve(pmf, _binomial_pmf(units, 1 - float(d), need))
    return Prob(max(0.0, 1.0 - math.fsum(pmf)))


def _binomial_head(n: int, a: int, c: int, terms: int) -> int:
    """``sum_{j < terms} C(n, j) a^j c^(n-j)`` in integers, by Horner's rule in ``c`` (each term
    from the last by small factors: a sum of thousands of terms of tens of thousands of bits
    each, where computing every power and coefficient afresh takes seconds)."""
    if terms <= 0:
        return 0
    terms = min(terms, n + 1)
    # sum_{j < t} C(n, j) a^j c^(t-1-j), then times c^(n-t+1).
    total = 0
    coefficient, a_power = 1, 1  # C(n, j), a^j
    for j in range(terms):
        total = total * c + coefficient * a_power
        coefficient = coefficient * (n - j) // (j + 1)
        a_power *= a
    power: int = c ** (n - terms + 1)  # a non-negative exponent: an int
    return total * power


def _log_comb(n: int, j: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)


def _logsumexp(logs: list[float]) -> float:
    top = max(logs)
    if top == -math.inf:
        return -math.inf
    return top + math.log(math.fsum(math.exp(x - top) for x in logs))


def _negbin_pmf(f: int, p: float, size: int) -> list[float]:
    """P[X = x] for x < size, X the failures before the f-th success."""
    log_p, log_q = math.log(p), math.log1p(-p)
    return [math.exp(_log_comb(x + f - 1, x) + f * log_p + x * log_q) for x in range(size)]


def _binomial_pmf(n: int, q: float, size: int) -> list[float]:
    if q == 1.0:
        return [1.0 if x == n else 0.0 for x in range(size)]
    log_p, log_q = math.log(q), math.log1p(-q)
    return [math.exp(_log_comb(n, x) + x * log_p + (n - x) * log_q) if x <= n else 0.0 for x in range(size)]


def _convolve(a: list[float], b: list[float]) -> list[float]:
    size = len(a)
    out = [0.0] * size
    for i, x in enumerate(a):
        if x == 0.0:
            continue
        for j in range(size - i):
            out[i + j] += x * b[j]
    return out
