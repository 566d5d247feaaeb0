"""A circuit breaker per host, shared by every client in the process.

Closed: requests pass; ``failures`` consecutive failures open it. Open: requests fail fast until
``cooldown`` has passed, then it is half-open and lets exactly one probe through. The probe's
success closes it; its failure opens it again for another cool-down.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge

from .clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
_STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

BREAKER_STATE = Gauge(
    "kingtavo_http_circuit_state", "Circuit breaker state per host (0 closed, 1 half-open, 2 open)", ["host"]
)
BREAKER_TRANSITIONS = Counter(
    "kingtavo_http_circuit_transitions_total", "Circuit breaker state changes per host", ["host", "state"]
)


class CircuitOpen(Exception):
    """Raised by :meth:`CircuitBreaker.before_request` while the breaker refuses requests."""

    def __init__(self, host: str, retry_in: float) -> None:
        super().__init__(f"circuit open for {host}; next probe in {retry_in:.1f}s")
        self.host = host
        self.retry_in = retry_in


class CircuitBreaker:
    def __init__(self, host: str, clock: Clock = SYSTEM_CLOCK) -> None:
        self.host = host
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        BREAKER_STATE.labels(host=host).set(0)

    def _set(self, state: str, reason: str) -> None:
        if state == self.state:
            return
        level = logging.WARNING if state == OPEN else logging.INFO
        log.log(level, "circuit breaker for %s: %s -> %s (%s)", self.host, self.state, state, reason)
        self.state = state
        BREAKER_STATE.labels(host=self.host).set(_STATE_VALUE[state])
        BREAKER_TRANSITIONS.labels(host=self.host, state=state).inc()

    def before_request(self, cooldown: float) -> None:
        """Let the request through, or raise :class:`CircuitOpen`."""
        with self._lock:
            if self.state == CLOSED:
                return
            now = self._clock.monotonic()
            if self.state == OPEN:
                remaining = self._opened_at + cooldown - now
                if remaining > 0:
                    raise CircuitOpen(self.host, remaining)
                self._set(HALF_OPEN, f"cool-down of {cooldown:g}s elapsed, letting one probe through")
            # half-open: one probe at a time; everyone else keeps failing fast
            if self._probe_in_flight:
                raise CircuitOpen(self.host, 0.0)
            self._probe_in_flight = True

    def record_success(self) -> None:
        with self._lock:
            self.consecutive_failures = 0
            self._probe_in_flight = False
            if self.state != CLOSED:
                self._set(CLOSED, "probe succeeded")

    def record_failure(self, threshold: int) -> None:
        with self._lock:
            self.consecutive_failures += 1
            self._probe_in_flight = False
            if self.state == HALF_OPEN:
                self._opened_at = self._clock.monotonic()
                self._set(OPEN, "probe failed")
            elif self.state == CLOSED and self.consecutive_failures >= threshold:
                self._opened_at = self._clock.monotonic()
                self._set(OPEN, f"{self.consecutive_failures} consecutive failures")


_BREAKERS: dict[str, CircuitBreaker] = {}
_REGISTRY_LOCK = threading.Lock()


def breaker_for(host: str, clock: Clock = SYSTEM_CLOCK) -> CircuitBreaker:
    """The process-wide breaker of ``host`` (``host:port``); created with the first caller's clock."""
    with _REGISTRY_LOCK:
        breaker = _BREAKERS.get(host)
        if breaker is None:
            breaker = _BREAKERS[host] = CircuitBreaker(host, clock)
        return breaker


def reset_breakers() -> None:
    """Forget every breaker (tests; a process that wants a clean slate)."""
    with _REGISTRY_LOCK:
        _BREAKERS.clear()
