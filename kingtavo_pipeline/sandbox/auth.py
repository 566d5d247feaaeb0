"""Credentials and rate limits of the simulated APIs.

Salla's OAuth2 grant per merchant: access tokens expire, a refresh token is single-use and reusing
one revokes the merchant's grant (both tokens dead, every later refresh refused) -- all under one
lock, so two concurrent refreshes with the same token see exactly one success. Token times run on
the wall clock plus however far the sandbox clock was advanced, so ``Sandbox.advance(days=15)``
expires a 14-day token without waiting.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from kingtavo_pipeline.sandbox.data import rng_for


@dataclass
class _Grant:
    merchant_id: str
    refresh_token: str
    refresh_expires_at: float
    revoked: bool = False
    refreshes: int = 0


@dataclass(frozen=True)
class TokenResult:
    status: int
    body: dict


@dataclass
class SallaOAuth:
    client_id: str
    client_secret: str
    access_ttl: int
    refresh_ttl: int
    clock: Callable[[], float]
    _grants: dict[str, _Grant] = field(default_factory=dict)
    _access: dict[str, tuple[str, float]] = field(default_factory=dict)
    _refresh_owner: dict[str, str] = field(default_factory=dict)  # every refresh token ever issued
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, merchant_id: str, seed: int) -> tuple[str, str]:
        """The app is installed for a merchant: its first pair (derived from the seed, so a restarted
        sandbox accepts the tokens a demo stored before)."""
        rng = rng_for("salla-install", seed, merchant_id)
        access = f"sandbox-at-{rng.getrandbits(160):040x}"
        refresh = f"sandbox-rt-{rng.getrandbits(160):040x}"
        now = self.clock()
        with self._lock:
            self._grants[merchant_id] = _Grant(merchant_id, refresh, now + self.refresh_ttl)
            self._access[access] = (merchant_id, now + self.access_ttl)
            self._refresh_owner[refresh] = merchant_id
        return access, refresh

    def authenticate(self, access_token: str) -> tuple[str | None, str]:
        """(merchant id, "") for a live token, else (None, why)."""
        entry = self._access.get(access_token)
        if entry is None:
            return None, "The access token is invalid"
        merchant_id, expires_at = entry
        if self._grants[merchant_id].revoked:
            return None, "The access token has been revoked"
        if self.clock() >= expires_at:
            return None, "The access token has expired"
        return merchant_id, ""

    def refresh(self, client_id: str, client_secret: str, refresh_token: str) -> TokenResult:
        if client_id != self.client_id or client_secret != self.client_secret:
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        with self._lock:
            merchant_id = self._refresh_owner.get(refresh_token)
            if merchant_id is None:
                return _oauth_error(401, "invalid_grant", "The refresh token is invalid.")
            grant = self._grants[merchant_id]
            if grant.revoked:
                return _oauth_error(401, "invalid_grant", "The refresh token has been revoked.")
            if refresh_token != grant.refresh_token:
                # reuse of a spent refresh token: treated as theft, the whole grant is revoked
                grant.revoked = True
                return _oauth_error(
                    401, "invalid_grant", "The refresh token has already been used; the grant is revoked."
                )
            now = self.clock()
            if now >= grant.refresh_expires_at:
                return _oauth_error(401, "invalid_grant", "The refresh token has expired.")
            access = f"sandbox-at-{secrets.token_hex(20)}"
            refresh = f"sandbox-rt-{secrets.token_hex(20)}"
            grant.refresh_token = refresh
            grant.refresh_expires_at = now + self.refresh_ttl
            grant.refreshes += 1
            # the previous access token stays valid until its own expiry (it is not revoked)
            self._access[access] = (merchant_id, now + self.access_ttl)
            self._refresh_owner[refresh] = merchant_id
        return TokenResult(
            200,
            {
                "access_token": access,
                "refresh_token": refresh,
                "expires_in": self.access_ttl,
                "token_type": "bearer",
                "scope": "offline_access orders.read products.read customers.read",
            },
        )

    def revoke(self, merchant_id: str) -> None:
        with self._lock:
            self._grants[merchant_id].revoked = True

    def is_revoked(self, merchant_id: str) -> bool:
        return self._grants[merchant_id].revoked

    def refresh_count(self, merchant_id: str) -> int:
        return self._grants[merchant_id].refreshes


def _oauth_error(status: int, error: str, description: str) -> TokenResult:
    return TokenResult(status, {"error": error, "error_description": description, "message": description})


# ---------------------------------------------------------------- rate limits


@dataclass(frozen=True)
class LimitResult:
    allowed: bool
    limit: int
    remaining: int
    reset_epoch: int
    retry_after: int


class FixedWindowLimiter:
    """Salla style: N requests per window per key; the window starts with its first request."""

    def __init__(self, limit: int, window_seconds: float):
        self.limit = limit
        self.window = window_seconds
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> LimitResult:
        now = time.time()
        with self._lock:
            start, used = self._windows.get(key, (now, 0))
            if now >= start + self.window:
                start, used = now, 0
            allowed = used < self.limit
            if allowed:
                used += 1
            self._windows[key] = (start, used)
        reset = start + self.window
        return LimitResult(allowed, self.limit, self.limit - used, math.ceil(reset), max(1, math.ceil(reset - now)))


class SlidingWindowLimiter:
    """Printavo style: at most N requests in any window of W seconds per key."""

    def __init__(self, limit: int, window_seconds: float):
        self.limit = limit
        self.window = window_seconds
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> LimitResult:
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            allowed = len(hits) < self.limit
            if allowed:
                hits.append(now)
            wait = hits[0] + self.window - now if hits else 0.0
            remaining = self.limit - len(hits)
        return LimitResult(allowed, self.limit, remaining, math.ceil(time.time() + wait), max(1, math.ceil(wait)))
