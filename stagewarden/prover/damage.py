"""The damage a set of tries leaves in the final model (docs/semantics.rst, ``bounded_damage``).

A *try* is one malicious worker in one position over a stretch of the run: an original malicious
occupant, or a malicious standby worker that entered the position. Each try has a detection
level per unit kind it tampers with and, per kind, the units the horizon gives its position.
The response decides how tries add up:

* ``rollback`` and ``eject``: one attempt per try (a convict is undone and removed);
* ``rollback`` alone: a convict is undone but stays, and retries until the horizon ends;
* ``eject`` alone: a try tampers until it is caught, and what passed stays;
* neither: every tamper is an independent trial.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from fractions import Fraction

from stagewarden.prover.probability import Prob, eject_damage, rollback_damage, skip_damage
from stagewarden.spec import Spec

#: Largest ``K + 1`` for which the pass counts of tries are convolved unit by unit; above it the
#: uncapped negative-binomial bound is used.
CONVOLVE_LIMIT = 20_000
#: Beyond this many summed units, a try's pass-count distribution is convolved in floating
#: point (log-space inputs) instead of exact rationals.
EXACT_TERMS = 400


def units_per_kind(spec: Spec) -> dict[str, int]:
    """Units of each kind one position computes over the horizon: ``H*M`` forward and backward,
    ``H-1`` updates a later forward pass exposes, and the last update."""
    steps, micro = spec.topology.steps, spec.topology.microbatches
    return {"F": steps * micro, "B": steps * micro, "U": steps - 1, "L": 1}


@dataclass(frozen=True)
class Try:
    """One malicious worker in one position: its detection level per unit kind it tampers with."""

    worker: str
    levels: dict[str, Fraction]
    units: dict[str, int]

    @property
    def weakest(self) -> Fraction:
        """The lowest detection level over its kinds."""
        return min(self.levels.values())

    @property
    def single_level(self) -> bool:
        """Whether every kind it can get past a check has the same detection level."""
        return len({d for d in self.levels.values() if d < 1}) <= 1

    def live_units(self) -> int:
        """Units it can tamper with that a check does not catch with certainty."""
        return sum(self.units[k] for k, d in self.levels.items() if d < 1)

    def weakest_units(self) -> int:
        """Units at its weakest level."""
        low = self.weakest
        return sum(self.units[k] for k, d in self.levels.items() if d == low)

    def passes_in_order(self) -> list[tuple[Fraction, int]]:
        """(pass probability, units) runs, weakest units first: the order that maximises the
        units that pass before the first detection."""
        runs = sorted(
            ((1 - d, self.units[k]) for k, d in self.levels.items() if d < 1 and self.units[k] > 0), reverse=True
        )
        return runs


@dataclass(frozen=True)
class Damage:
    """Pr[more than K tampered units stay undetected] for a set of tries; ``tight`` is false when
    the value is an upper bound that a strategy may not attain (the verdict is then ``unknown``
    unless the bound itself is within the guarantee), with ``lower`` a value that is attained."""

    prob: Prob
    tight: bool = True
    lower: Prob | None = None


def damage(tries: list[Try], response: Collection[str], k: int) -> Damage:
    """The best adversary's damage probability for the tries under the response."""
    tries = [t for t in tries if t.levels]
    if not tries:
        return Damage(Prob.of(Fraction(0)))
    if "rollback" in response and "eject" in response:
        return _one_attempt(tries, k)
    if "rollback" in response:
        return _retries(tries, k)
    if "eject" in response:
        return _until_caught(tries, k)
    trials = [(d, t.units[kind]) for t in tries for kind, d in t.levels.items()]
    return Damage(skip_damage(trials, k))


#: Largest ``K + 1`` for which strategies of several tries taking turns under rollback and eject
#: are searched for a better attained value.
ADAPTIVE_LIMIT = 2_000


def _one_attempt(tries: list[Try], k: int) -> Damage:
    """A convict is removed and the model returns to the checkpoint before its first tampered
    unit: what passed before that stays, its own units and everything after are undone.

    One try: ``(1-d)^(k+1)``, attained when it has ``k+1`` units at its weakest level. Several
    tries can bank units one after the other and go back to an earlier try when a later one is
    caught, which no closed form captures: the prover bounds them by the passes each try gets
    before its first detection (what eject alone allows) and reports the best strategy shown to
    exist, tries taking turns (``_adaptive_banking``)."""
    if sum(t.live_units() for t in tries) < k + 1:
        return Damage(Prob.of(Fraction(0)))
    able = [t for t in tries if t.weakest_units() >= k + 1]
    if len(tries) == 1:
        form = _one_attempt_form(tries, k)
        if able:
            return Damage(form)
        return Damage(form, tight=False, lower=Prob.of(Fraction(0)))
    lower = _one_attempt_form(able, k) if able else Prob.of(Fraction(0))
    upper = _until_caught(tries, k).prob
    if k + 1 <= ADAPTIVE_LIMIT and len({t.weakest for t in tries}) == 1 and able:
        turns = _adaptive_banking(len(tries), k + 1, 1 - float(tries[0].weakest), min(t.live_units() for t in able))
        if turns > lower.value:
            lower = Prob(turns)
    return Damage(upper, tight=False, lower=lower)


def _adaptive_banking(lives: int, need: int, passes: float, cap: int) -> float:
    """The best chance to bank ``need`` passes with ``lives`` tries taking turns, each of which
    chooses how many units to tamper with (at most ``cap``), keeps them if all pass and is lost
    otherwise (a strategy that exists under rollback and eject; not the best one).

    ``V(l, m) = max_n [p^n V(l-1, m-n) + (1 - p^n) V(l-1, m)]``, ``V(1, m) = p^m`` (0 past
    ``cap``)."""
    power = [passes**n for n in range(need + 1)]
    value = [power[m] if m <= cap else 0.0 for m in range(need + 1)]
    for _ in range(lives - 1):
        nxt = [1.0] + [0.0] * need
        for m in range(1, need + 1):
            top = min(m, cap)
            fail_keep = value[m]
            nxt[m] = max(power[n] * value[m - n] + (1.0 - power[n]) * fail_keep for n in range(1, top + 1))
        if nxt == value:
            # A fixed point of the recurrence: every further life gives the same values (in
            # floating point they settle after a few dozen lives, where budgets give thousands).
            break
        value = nxt
    return min(1.0, value[need])


def _one_attempt_form(tries: list[Try], k: int) -> Prob:
    counts: dict[Fraction, int] = {}
    for t in tries:
        counts[t.weakest] = counts.get(t.weakest, 0) + 1
    return rollback_damage(counts.items(), k)


def _retries(tries: list[Try], k: int) -> Damage:
    """Each try retries after every rollback until it stops with a run of passes since its last
    detection; the runs the tries stop with add up to more than ``k``.

    Upper bound: the runs add up to ``k+1`` only if some try's longest run reaches
    ``ceil((k+1)/f)`` for ``f`` tries. Attained strategies: every try aims at its share of
    ``k+1`` and stops there, or any single try aims at ``k+1`` alone."""
    need = k + 1
    share = -(-need // len(tries))
    upper = _combine([run_bounds(t.live_units(), t.weakest, share)[1] for t in tries])
    alone = _combine([run_bounds(t.weakest_units(), t.weakest, need)[0] for t in tries])
    if len(tries) == 1:
        low, high = run_bounds(tries[0].live_units(), tries[0].weakest, need)
        if tries[0].single_level and low == high:
            return Damage(high)
        return Damage(high, tight=False, lower=alone)
    base, extra = divmod(need, len(tries))
    shares = [base + 1] * extra + [base] * (len(tries) - extra)
    split = Prob.of(Fraction(1))
    for t, part in zip(sorted(tries, key=lambda t: -t.weakest_units()), shares, strict=True):
        split = _product(split, run_bounds(t.weakest_units(), t.weakest, part)[0])
    lower = split if split.value > alone.value else alone
    return Damage(upper, tight=False, lower=lower)


def _product(a: Prob, b: Prob) -> Prob:
    if a.exact is not None and b.exact is not None:
        return Prob.of(a.exact * b.exact)
    return Prob(a.value * b.value)


def _combine(values: list[Prob]) -> Prob:
    """``1 - prod(1 - p)`` over independent tries."""
    if all(v.exact is not None for v in values):
        keep = Fraction(1)
        for v in values:
            assert v.exact is not None
            keep *= 1 - v.exact
        return Prob.of(1 - keep)
    log_keep = 0.0
    for v in values:
        if v.value >= 1:
            return Prob(1.0)
        log_keep += math.log1p(-v.value)
    return Prob(-math.expm1(log_keep))


#: Largest number of trials for which the run probability is computed by its recurrence; above
#: it the prover uses the bounds of :func:`run_bounds`.
RUN_RECURRENCE_LIMIT = 2_000_000


def run_probability(trials: int, detection: Fraction, run: int) -> Prob:
    """Pr[``run`` consecutive undetected units occur among ``trials`` independent ones, each
    undetected with probability ``1 - detection``].

    With ``g(n)`` that probability for ``n`` trials: ``g(n) = g(n-1) + d q^run (1 - g(n-run-1))``
    (the first run completes exactly at trial ``n``: a detection at ``n-run``, ``run`` passes
    after it, and no run before), with ``g(run) = q^run``. Time grows with ``trials`` and memory
    with ``run``; callers bound ``trials`` by ``RUN_RECURRENCE_LIMIT`` (see :func:`run_bounds`)."""
    if trials < run or detection >= 1:
        return Prob.of(Fraction(0))
    if detection == 0:
        return Prob.of(Fraction(1))
    q = 1 - detection
    if (trials - run) * (q.denominator.bit_length() * run) <= 200_000 and trials <= 5_000:
        exact_g = [Fraction(0)] * (trials + 1)
        first = q**run
        exact_g[run] = first
        step = detection * first
        for n in range(run + 1, trials + 1):
            exact_g[n] = exact_g[n - 1] + step * (1 - exact_g[n - run - 1])
        return Prob.of(exact_g[trials])
    first_f = math.exp(run * math.log(float(q)))
    step_f = float(detection) * first_f
    # g(n - run - 1) .. g(n - 1) in a ring of run + 1 values: g(n) needs g(n-1) and g(n-run-1).
    ring = [0.0] * (run + 1)
    ring[run % (run + 1)] = first_f
    for n in range(run + 1, trials + 1):
        ring[n % (run + 1)] = ring[(n - 1) % (run + 1)] + step_f * (1.0 - ring[n % (run + 1)])
    return Prob(min(1.0, ring[trials % (run + 1)]))


def run_bounds(trials: int, detection: Fraction, run: int) -> tuple[Prob, Prob]:
    """(lower, upper) bounds on :func:`run_probability`, equal where it is computed.

    Beyond ``RUN_RECURRENCE_LIMIT`` trials: at most the union bound over the places a run can
    start (``(trials - run + 1) q^run``), and at least the chance that one of the
    ``trials // run`` disjoint blocks passes whole (``1 - (1 - q^run)^(trials // run)``)."""
    if trials <= RUN_RECURRENCE_LIMIT or trials < run or detection in (0, 1):
        value = run_probability(trials, detection, run)
        return value, value
    log_first = run * math.log1p(-float(detection))
    upper = min(1.0, math.exp(math.log(trials - run + 1) + log_first))
    first = math.exp(log_first)
    lower = -math.expm1((trials // run) * math.log1p(-first)) if first < 1 else 1.0
    return Prob(lower), Prob(upper)


def _until_caught(tries: list[Try], k: int) -> Damage:
    """Each try tampers, weakest units first, until its first detection; passes add up."""
    need = k + 1
    if sum(sum(u for _, u in t.passes_in_order()) for t in tries) < need:
        return Damage(Prob.of(Fraction(0)))
    single = all(t.single_level for t in tries)
    if single and all(t.weakest == 0 or t.live_units() >= need for t in tries):
        # One level per try and units enough: the reference negative-binomial form.
        return Damage(_uncapped(tries, need))
    if need > CONVOLVE_LIMIT:
        return Damage(_uncapped(tries, need), tight=False, lower=Prob.of(Fraction(0)))
    return Damage(_convolved(tries, need))


def _uncapped(tries: list[Try], need: int) -> Prob:
    """Every try at its weakest level, tampering without a cap until caught (an upper bound,
    exact when each try has one level and at least ``need`` units)."""
    certain = sum(t.live_units() for t in tries if t.weakest == 0)
    counts: dict[Fraction, int] = {}
    for t in tries:
        if 0 < t.weakest < 1:
            counts[t.weakest] = counts.get(t.weakest, 0) + 1
    return eject_damage(counts.items(), certain, need - 1)


def _convolved(tries: list[Try], need: int) -> Prob:
    """Exact: the tries' pass counts convolved, truncated at ``need``."""
    total_terms = sum(min(need, sum(u for _, u in t.passes_in_order())) for t in tries)
    exact = total_terms <= EXACT_TERMS and all(
        q.denominator.bit_length() < 64 for t in tries for q, _ in t.passes_in_order()
    )
    one: Fraction | float = Fraction(1) if exact else 1.0
    zero: Fraction | float = Fraction(0) if exact else 0.0
    # pmf over the total passes, truncated: index ``need`` holds "need or more".
    pmf: list[Fraction | float] = [one] + [zero] * need
    for t in tries:
        if not t.passes_in_order():
            continue  # never passes a unit: its distribution is all at 0 and changes nothing
        dist = _passes_distribution(t, need, exact)
        out: list[Fraction | float] = [zero] * (need + 1)
        for i, a in enumerate(pmf):
            if a == 0:
                continue
            for j, b in enumerate(dist):
                if b == 0:
                    continue
                out[min(need, i + j)] += a * b
        pmf = out
    tail = pmf[need]
    if exact:
        assert isinstance(tail, Fraction)
        return Prob.of(tail)
    return Prob(min(1.0, max(0.0, float(tail))))


def _passes_distribution(t: Try, need: int, exact: bool) -> list[Fraction | float]:
    """P[passes = j] for j < need, and P[passes >= need] at index ``need``: ``P[X >= j]`` is the
    product of the first ``j`` pass probabilities in the try's order, 0 past its units."""
    survive: list[Fraction | float] = []  # survive[j] = P[X >= j]
    acc: Fraction | float = Fraction(1) if exact else 1.0
    survive.append(acc)
    for q, units in t.passes_in_order():
        factor: Fraction | float = q if exact else float(q)
        for _ in range(units):
            if len(survive) > need:
                break
            acc = acc * factor
            survive.append(acc)
        if len(survive) > need:
            break
    zero: Fraction | float = Fraction(0) if exact else 0.0
    while len(survive) <= need:
        survive.append(zero)
    dist = [survive[j] - survive[j + 1] for j in range(need)]
    dist.append(survive[need])
    return dist
