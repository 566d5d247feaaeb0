"""Per-source request limits: a token-bucket rate limit and a source-IP allow-list. Pure logic."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address


class RateLimiter:
    """Token bucket: ``rate`` requests per second sustained, bursts up to ``burst`` (default one
    second's worth). Not thread-safe: the service calls it from its event loop only."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic):
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(rate, 1.0))
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def acquire(self) -> float:
        """0.0 when the request may pass (a token is taken), else seconds until one is available."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        """``Retry-After`` takes whole seconds; never 0 (that invites an immediate retry storm)."""
        return str(max(1, math.ceil(wait)))


class IpAllowList:
    def __init__(self, networks: Sequence[IPv4Network | IPv6Network]):
        self.networks = tuple(networks)

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        try:
            address = ip_address(host)
        except ValueError:
            return False
        if getattr(address, "ipv4_mapped", None) is not None:
            address = address.ipv4_mapped  # ::ffff:10.0.0.1 on a dual-stack socket is 10.0.0.1
        return any(address in network for network in self.networks)
