"""Time as a dependency: the HTTP layer reads clocks and sleeps only through a :class:`Clock`, so
tests of backoff, breakers and rate limits can advance time instead of waiting for it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic clock (intervals, cool-downs, token refills)."""
        ...

    def time(self) -> float:
        """Wall-clock epoch seconds (``Retry-After`` HTTP-dates, ``X-RateLimit-Reset``)."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
