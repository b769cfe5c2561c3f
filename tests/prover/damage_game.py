"""The bounded_damage game solved exactly: the adversary's best probability that more than K
tampered units stay in the model undetected, by dynamic programming over every strategy.

This is the test suite's reference for the closed forms of docs/semantics.rst (``bounded_damage``).
It knows nothing of checks or placements: a *try* is a list of unit groups, each a pass
probability ``q = 1 - d`` and a count of units, and the response decides what a detection does.
The adversary moves one tampered unit at a time, chooses which try and which unit after seeing
every earlier outcome, and may stop whenever it likes.

Reading: the adversary may tamper with a try's units in any order it likes (the page's "its best
order is weakest units first"); the time order of the units within a step is not modelled.
Reading: a detection under ``rollback`` undoes the convict's own tampered units only (the page
speaks of "a convict's tampered units"), not those of other tries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

__all__ = ["Mode", "Try", "best_probability", "mode_of"]

#: One try: ``(pass probability, units)`` groups, every probability in (0, 1].
Try = tuple[tuple[Fraction, int], ...]


@dataclass(frozen=True)
class Mode:
    """What a detection does to the convict: undo its tampered units (``rollback``), remove it
    (``eject``)."""

    undo: bool
    remove: bool


def mode_of(response: set[str]) -> Mode:
    """The game of a response: rollback undoes, eject removes; skip_stage and restart do neither."""
    return Mode(undo="rollback" in response, remove="eject" in response)


def _normalise(tries: Sequence[Try]) -> tuple[tuple[tuple[tuple[Fraction, int], ...], int], ...]:
    """Each try as (risky groups merged by probability, free units); units that are always
    detected (q = 0) are dropped, as tampering with them only ever helps the defender."""
    out = []
    for groups in tries:
        merged: dict[Fraction, int] = {}
        free = 0
        for q, units in groups:
            if units <= 0 or q == 0:
                continue
            if q == 1:
                free += units
            else:
                merged[q] = merged.get(q, 0) + units
        out.append((tuple(sorted(merged.items())), free))
    return tuple(sorted(out))


def best_probability(tries: Sequence[Try], max_undetected: int, mode: Mode) -> Fraction:
    """The adversary's best ``Pr[more than max_undetected tampered units stay undetected]``.

    A try's units that pass with certainty are tampered with at the end (under ``rollback`` a
    later detection of the same try would undo them; otherwise their order does not matter), so
    they enter only the final count: they count when the try was never removed, or when nothing
    is undone (they could have gone first).
    """
    target = max_undetected + 1
    shaped = _normalise(tries)
    probabilities = tuple(tuple(q for q, _ in risky) for risky, _ in shaped)
    free = tuple(units for _, units in shaped)

    # A try's state: (units left per risky group, undetected units that still count, alive).
    TryState = tuple[tuple[int, ...], int, bool]

    def final(states: tuple[TryState, ...]) -> Fraction:
        count = 0
        for index, (_, pending, alive) in enumerate(states):
            count += pending
            if alive or not mode.undo:
                count += free[index]
        return Fraction(1) if count >= target else Fraction(0)

    @cache
    def value(states: tuple[TryState, ...]) -> Fraction:
        best = final(states)
        if best == 1:
            return best
        for index, (left, pending, alive) in enumerate(states):
            if not alive:
                continue
            for group, units in enumerate(left):
                if units == 0:
                    continue
                q = probabilities[index][group]
                rest = left[:group] + (units - 1,) + left[group + 1 :]
                passed = (rest, min(pending + 1, target), True)
                caught = (rest, 0 if mode.undo else pending, not mode.remove)
                after_pass = states[:index] + (passed,) + states[index + 1 :]
                after_catch = states[:index] + (caught,) + states[index + 1 :]
                candidate = q * value(after_pass) + (1 - q) * value(after_catch)
                if candidate > best:
                    best = candidate
        return best

    start = tuple((tuple(units for _, units in risky), 0, True) for risky, _ in shaped)
    return value(start)
