"""Properties of the exact bounded_damage game (:mod:`damage_game`) that the dynamics simulator
relies on: closed forms where the best strategy is known, and monotonicity."""

from __future__ import annotations

from fractions import Fraction

from damage_game import Mode, Try, best_probability
from hypothesis import given, settings
from hypothesis import strategies as st

LEVELS = [Fraction(0), Fraction(1, 4), Fraction(1, 2), Fraction(3, 4), Fraction(1)]
groups = st.lists(st.tuples(st.sampled_from(LEVELS), st.integers(0, 3)), min_size=1, max_size=3).map(tuple)
tries = st.lists(groups, min_size=1, max_size=2)
modes = st.builds(Mode, undo=st.booleans(), remove=st.booleans())
ks = st.integers(0, 3)


def _count_tail(distributions: list[list[Fraction]], k: int) -> Fraction:
    """Pr[sum of independent counts >= k + 1], each count given by its distribution."""
    total = [Fraction(1)]
    for dist in distributions:
        out = [Fraction(0)] * (len(total) + len(dist) - 1)
        for i, a in enumerate(total):
            for j, b in enumerate(dist):
                out[i + j] += a * b
        total = out
    return sum(total[k + 1 :], Fraction(0))


def _units(one: Try) -> list[Fraction]:
    """A try's pass probabilities, one per unit, largest first."""
    return sorted((q for q, n in one for _ in range(n)), reverse=True)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(tries, ks)
def test_neither_tampers_with_every_unit(game: list[Try], k: int) -> None:
    """Without undo or removal every unit is an independent trial: a sum of Bernoullis."""
    bernoullis = [[1 - q, q] for one in game for q in _units(one)]
    assert best_probability(game, k, Mode(undo=False, remove=False)) == _count_tail(bernoullis, k)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(tries, ks)
def test_eject_alone_goes_weakest_first(game: list[Try], k: int) -> None:
    """Eject without rollback: each try passes units weakest first until its first detection."""
    distributions = []
    for one in game:
        units, reach, dist = _units(one), Fraction(1), []
        for q in units:
            dist.append(reach * (1 - q))
            reach *= q
        distributions.append(dist + [reach])
    assert best_probability(game, k, Mode(undo=False, remove=True)) == _count_tail(distributions, k)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(groups, ks)
def test_one_try_with_rollback_and_eject_has_one_attempt(one: Try, k: int) -> None:
    """One try under rollback and eject: its K+1 weakest units all pass, or nothing counts."""
    units = _units(one)
    expected = Fraction(0)
    if len(units) > k:
        expected = Fraction(1)
        for q in units[: k + 1]:
            expected *= q
    assert best_probability([one], k, Mode(undo=True, remove=True)) == expected


@settings(max_examples=150, derandomize=True, deadline=None)
@given(tries, groups, ks, modes)
def test_more_tries_never_help_the_defender(game: list[Try], extra: Try, k: int, mode: Mode) -> None:
    """The adversary may leave a try idle, so another try never lowers its best probability."""
    assert best_probability([*game, extra], k, mode) >= best_probability(game, k, mode)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(tries, ks, modes, st.data())
def test_weaker_detection_never_helps_the_defender(game: list[Try], k: int, mode: Mode, data: st.DataObject) -> None:
    """Raising one group's pass probability never lowers the adversary's best probability."""
    which = data.draw(st.integers(0, len(game) - 1))
    group = data.draw(st.integers(0, len(game[which]) - 1))
    q, n = game[which][group]
    higher = data.draw(st.sampled_from([x for x in LEVELS if x >= q]))
    raised = list(game)
    raised[which] = game[which][:group] + ((higher, n),) + game[which][group + 1 :]
    assert best_probability(raised, k, mode) >= best_probability(game, k, mode)
