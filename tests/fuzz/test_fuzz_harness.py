"""The fuzz harness itself: the wall-clock limit interrupts a hang (even one inside ``except
Exception``) and leaves pytest-timeout's timer as it was; budgets follow the active profile."""

from __future__ import annotations

import signal
import time

import pytest
from fuzzing import bounded
from hypothesis import settings
from strategies import budget, fuzz_settings


def test_a_sleeping_call_is_reported_as_a_hang() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match="did not return within 0.2 s"):
        bounded(time.sleep, 30, limit=0.2)
    assert time.monotonic() - started < 5


def test_a_spinning_call_that_swallows_exceptions_is_still_interrupted() -> None:
    def spin() -> str:
        while True:
            try:
                sum(range(1000))
            except Exception:  # noqa: BLE001 - what a careless parser might do
                return "swallowed"

    with pytest.raises(AssertionError, match="did not return"):
        bounded(spin, limit=0.2)


def test_a_call_in_time_returns_its_value_and_keeps_the_outer_timer() -> None:
    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    outer = signal.setitimer(signal.ITIMER_REAL, 100)  # pytest-timeout's own timer, if any, is put back below
    try:
        assert bounded(sum, [1, 2, 3], limit=1) == 6
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 90 < left <= 100
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer[0]:
            signal.setitimer(signal.ITIMER_REAL, *outer)


def test_budgets_follow_the_profile() -> None:
    assert budget() == settings.default.max_examples
    assert budget(0.5) == max(1, round(settings.default.max_examples / 2))
    assert fuzz_settings(2.0).max_examples == budget(2.0) and fuzz_settings().deadline is None
