"""The one clock the terminal reads local time from, so tests can move time."""
from __future__ import annotations

from datetime import datetime, timedelta

__all__ = ["SystemClock", "FixedClock"]


class SystemClock:
    """Local wall-clock time (naive datetime), any thread."""

    def now(self) -> datetime:
        return datetime.now().replace(microsecond=0)


class FixedClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start: datetime):
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
