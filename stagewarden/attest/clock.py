"""Injectable clocks, so that every validity window can be tested at any instant."""

from __future__ import annotations

import datetime as dt
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time as an aware UTC datetime."""

    def now(self) -> dt.datetime:
        """The current instant (timezone-aware, UTC)."""
        ...


class SystemClock:
    """The machine's wall clock."""

    def now(self) -> dt.datetime:
        """The current instant from the system clock."""
        return dt.datetime.now(dt.UTC)


class FixedClock:
    """A clock that stands still until it is moved; for tests and reproducible runs."""

    def __init__(self, instant: dt.datetime) -> None:
        if instant.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._instant = instant.astimezone(dt.UTC)

    def now(self) -> dt.datetime:
        """The instant the clock was set to."""
        return self._instant

    def advance(self, delta: dt.timedelta) -> None:
        """Move the clock forward (or back, with a negative delta)."""
        self._instant = self._instant + delta
