"""Client-side rate limiting: a token bucket per limiter key (source + credential), shared by every
client in the process, that also obeys the server's ``X-RateLimit-*`` headers."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping

from prometheus_client import Counter

from .clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

RATE_LIMIT_WAITS = Counter("kingtavo_http_rate_limit_waits_total", "Requests delayed by the client-side rate limiter", ["limiter"])
RATE_LIMIT_WAIT_SECONDS = Counter(
    "kingtavo_http_rate_limit_wait_seconds_total", "Seconds spent waiting for the client-side rate limiter", ["limiter"]
)

# An X-RateLimit-Reset below this is a number of seconds from now, not an epoch (some APIs send that).
_EPOCH_FLOOR = 1_000_000_000


class RateLimitWaitTooLong(Exception):
    def __init__(self, key: str, wait: float) -> None:
        super().__init__(f"rate limiter {key!r} would wait {wait:.1f}s")
        self.key = key
        self.wait = wait


class RateLimiter:
    """Token bucket (``rate`` tokens/second, up to ``burst``) plus a block until the server's reset.

    ``rate=None`` leaves the bucket unlimited: only ``X-RateLimit-Remaining: 0`` makes callers wait.
    """

    def __init__(self, key: str, clock: Clock = SYSTEM_CLOCK, rate: float | None = None, burst: int | None = None) -> None:
        self.key = key
        self._clock = clock
        self._lock = threading.Lock()
        self._blocked_until = 0.0  # monotonic
        self.rate: float | None = None
        self.burst = 1
        self._tokens = 0.0
        self._stamp = clock.monotonic()
        self.configure(rate, burst)

    def configure(self, rate: float | None, burst: int | None = None) -> None:
        with self._lock:
            if rate is not None and rate <= 0:
                raise ValueError(f"requests_per_second must be > 0, got {rate}")
            self.rate = rate
            # default burst: one second's worth (at least one request)
            self.burst = max(1, burst if burst is not None else int(rate or 1))
            self._tokens = float(self.burst)
            self._stamp = self._clock.monotonic()

    def _reserve(self, max_wait: float | None) -> float:
        """Take a token (possibly on credit) and return how long the caller must wait for it."""
        with self._lock:
            now = self._clock.monotonic()
            wait = max(0.0, self._blocked_until - now)
            if self.rate is not None:
                self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                wait = max(wait, (1.0 - self._tokens) / self.rate if self._tokens < 1.0 else 0.0)
            if max_wait is not None and wait > max_wait:
                raise RateLimitWaitTooLong(self.key, wait)
            if self.rate is not None:
                # a negative balance is the queue of callers already promised a later slot
                self._tokens -= 1.0
            return wait

    def acquire(self, max_wait: float | None = None) -> float:
        """Block until a request may be sent; return the seconds waited.

        Raises :class:`RateLimitWaitTooLong` (without taking a token) if the wait exceeds ``max_wait``.
        """
        wait = self._reserve(max_wait)
        if wait > 0:
            RATE_LIMIT_WAITS.labels(limiter=self.key).inc()
            RATE_LIMIT_WAIT_SECONDS.labels(limiter=self.key).inc(wait)
            self._clock.sleep(wait)
        return wait

    def observe(self, headers: Mapping[str, str]) -> None:
        """Adapt to ``X-RateLimit-Remaining``/``X-RateLimit-Reset``: at 0 remaining, wait until the reset."""
        remaining = _number(headers.get("x-ratelimit-remaining"))
        reset = _number(headers.get("x-ratelimit-reset"))
        if remaining is None or remaining > 0 or reset is None:
            return
        wall = self._clock.time()
        seconds = reset - wall if reset >= _EPOCH_FLOOR else reset
        seconds = max(0.0, seconds)
        with self._lock:
            until = self._clock.monotonic() + seconds
            if until > self._blocked_until:
                self._blocked_until = until
                log.info("rate limiter %r: server quota exhausted, pausing %.1fs until its reset", self.key, seconds)

    def pause(self, seconds: float) -> None:
        """Hold every caller of this key for ``seconds`` (a 429's Retry-After applies to the whole quota)."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock.monotonic() + max(0.0, seconds))

    def blocked_for(self) -> float:
        """Seconds until the server's quota resets (0 when not blocked)."""
        with self._lock:
            return max(0.0, self._blocked_until - self._clock.monotonic())


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_LIMITERS: dict[str, RateLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def limiter_for(key: str, rate: float | None = None, burst: int | None = None, clock: Clock = SYSTEM_CLOCK) -> RateLimiter:
    """The process-wide limiter of ``key``. A client that states a rate (re)configures the bucket;
    one that states none leaves the existing bucket as it is."""
    with _REGISTRY_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = RateLimiter(key, clock, rate, burst)
            return limiter
    if rate is not None and (rate != limiter.rate or (burst is not None and burst != limiter.burst)):
        limiter.configure(rate, burst)
    return limiter


def reset_limiters() -> None:
    with _REGISTRY_LOCK:
        _LIMITERS.clear()
