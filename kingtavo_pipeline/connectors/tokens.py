"""OAuth2 access tokens that refresh themselves, safely across threads and processes.

Salla's refresh tokens are single-use: presenting one a second time is answered ``invalid_grant``
and revokes the merchant's grant until the app is reinstalled. So a refresh is a small protocol
around a :class:`TokenStore` (the PostgreSQL one lives in ``storage/credentials.py``):

1. take the credential's exclusive lock (PostgreSQL: ``SELECT ... FOR UPDATE`` in its own
   transaction), so one refresher at a time rotates the pair;
2. re-read the current pair under the lock: if another process has refreshed meanwhile, use its
   access token and do not refresh;
3. POST the token URL (``grant_type=refresh_token``) exactly once, never retried after the request
   may have reached the provider (a blind retry would reuse the token);
4. write the new pair (encrypted by the store) and COMMIT; only then hand the access token out.

``invalid_grant`` marks the row revoked (committed) and raises :class:`CredentialRevokedError`.
If the provider issued a pair but the commit fails, the old refresh token is already spent and the
new pair lives only in this process: :meth:`TokenManager.refresh` re-persists it under a fresh lock
(a few attempts; a commit whose acknowledgement was lost is recognised), keeps it in memory and
retries before any later refresh, and raises :class:`TokenPersistError` if it still cannot be saved.
Until it is saved no other process can refresh this merchant without revoking the grant.

Pure: no database and no Dagster imports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import httpx

from ..extract.http import AuthError, HttpError, RetryableError
from ..storage.errors import redact_url

log = logging.getLogger(__name__)

ACTIVE = "active"
REVOKED = "revoked"

# refresh this long before the recorded expiry, so a token never expires in flight
DEFAULT_EXPIRY_SKEW = timedelta(seconds=60)
# Salla: "the refresh token is valid for one month" when the response does not say
DEFAULT_REFRESH_TTL = timedelta(days=30)
PERSIST_ATTEMPTS = 3


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CredentialKey:
    """Which credential row: ``("salla", "salla", "<merchant id>")``."""

    source_type: str
    source_name: str
    account_id: str

    def __str__(self) -> str:
        return f"{self.source_type} account {self.account_id} (source {self.source_name!r})"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str | None
    access_expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None

    def __repr__(self) -> str:  # never print a token
        return f"TokenPair(access_expires_at={self.access_expires_at}, refresh_expires_at={self.refresh_expires_at})"

    def access_valid(self, now: datetime, skew: timedelta = DEFAULT_EXPIRY_SKEW) -> bool:
        """False when the recorded expiry is near; unknown expiry counts as valid (the API will say)."""
        return self.access_expires_at is None or self.access_expires_at - skew > now


@dataclass(frozen=True)
class StoredCredential:
    pair: TokenPair
    status: str = ACTIVE
    refreshed_count: int = 0
    status_reason: str | None = None


class LockedCredential(Protocol):
    """A credential held under its exclusive lock; changes commit when the ``locked`` block exits."""

    @property
    def current(self) -> StoredCredential | None: ...

    def replace(self, pair: TokenPair) -> None:
        """Store a freshly issued pair (refreshed_count + 1, status active)."""
        ...

    def revoke(self, reason: str) -> None: ...


class TokenStore(Protocol):
    """Durable, encrypted token pairs with a per-credential exclusive lock."""

    def load(self, key: CredentialKey) -> StoredCredential | None: ...

    def locked(self, key: CredentialKey) -> AbstractContextManager[LockedCredential]:
        """Lock the credential in its own transaction; commit on normal exit, roll back on error."""
        ...


# --- errors ------------------------------------------------------------------------------------


class MissingCredentialError(AuthError):
    """No credential row: the account was never connected."""


class CredentialRevokedError(AuthError):
    """The provider revoked the grant (or it was marked revoked earlier): the app must be reinstalled."""


class TokenPersistError(RuntimeError):
    """The provider issued a new pair but it could not be stored: the old refresh token is spent."""


class _InvalidGrant(Exception):
    def __init__(self, description: str):
        super().__init__(description)
        self.description = description


def _auth_error(cls: type[AuthError], message: str, url: str, status: int | None = None) -> AuthError:
    return cls(message, status=status, url=url)


# --- the token endpoint ------------------------------------------------------------------------


@dataclass
class TokenEndpoint:
    """The OAuth2 token URL and this app's client credentials (``grant_type=refresh_token``)."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    refresh_ttl: timedelta = DEFAULT_REFRESH_TTL
    transport: httpx.BaseTransport | None = None
    # requests the provider certainly never received (connection refused) are safe to resend
    connect_attempts: int = 3

    def refresh(self, refresh_token: str, *, now: datetime, label: str) -> TokenPair:
        """One refresh: the new pair, or :class:`_InvalidGrant`, :class:`AuthError`, :class:`RetryableError`."""
        url = redact_url(self.token_url)
        form = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "refresh_token": refresh_token,
        }
        timeout = httpx.Timeout(self.read_timeout, connect=self.connect_timeout)
        with httpx.Client(timeout=timeout, transport=self.transport) as client:
            for attempt in range(1, self.connect_attempts + 1):
                try:
                    response = client.post(self.token_url, data=form, headers={"Accept": "application/json"})
                    break
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    if attempt == self.connect_attempts:
                        raise RetryableError(
                            f"{label}: token endpoint POST {url} unreachable ({type(exc).__name__})",
                            status=None,
                            url=url,
                        ) from exc
                    time.sleep(0.5 * attempt)
                except httpx.HTTPError as exc:
                    # the request may have reached the provider and spent the refresh token: never resend it
                    raise RetryableError(
                        f"{label}: token endpoint POST {url} failed after the request was sent "
                        f"({type(exc).__name__}); if the provider rotated the token, the next refresh will "
                        "be answered invalid_grant",
                        status=None,
                        url=url,
                    ) from exc
        return self._parse(response, now=now, label=label, url=url)

    def _parse(self, response: httpx.Response, *, now: datetime, label: str, url: str) -> TokenPair:
        try:
            body: Any = response.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        status = response.status_code
        if status == 200 and isinstance(body.get("access_token"), str) and body["access_token"]:
            return _pair_from_response(body, now=now, refresh_ttl=self.refresh_ttl)
        error = str(body.get("error") or "")
        description = str(body.get("error_description") or body.get("message") or error or f"HTTP {status}")
        if error == "invalid_grant":
            raise _InvalidGrant(description)
        if status in (400, 401, 403):
            raise _auth_error(
                AuthError,
                f"{label}: token endpoint POST {url} rejected the refresh ({status} {error or 'error'}: "
                f"{description[:200]}); check the app's client id and secret",
                url,
                status,
            )
        if status == 429 or status >= 500:
            raise RetryableError(
                f"{label}: token endpoint POST {url} answered {status}; retry later", status=status, url=url
            )
        raise RetryableError(
            f"{label}: token endpoint POST {url} answered {status} without an access token", status=status, url=url
        )


def _pair_from_response(body: dict[str, Any], *, now: datetime, refresh_ttl: timedelta) -> TokenPair:
    expires_in = _seconds(body.get("expires_in"))
    refresh_in = _seconds(body.get("refresh_token_expires_in"))
    return TokenPair(
        access_token=body["access_token"],
        refresh_token=body.get("refresh_token") or None,
        access_expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
        refresh_expires_at=now + (timedelta(seconds=refresh_in) if refresh_in is not None else refresh_ttl),
    )


def _seconds(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# --- the refresh protocol ----------------------------------------------------------------------


class TokenManager:
    """Hands out a valid access token for one credential, refreshing it under the store's lock.

    Thread-safe; one per connector is fine (they coordinate through the store's lock). The access
    token is cached in memory until it nears its expiry or the API rejects it.
    """

    def __init__(
        self,
        store: TokenStore,
        key: CredentialKey,
        endpoint: TokenEndpoint,
        *,
        skew: timedelta = DEFAULT_EXPIRY_SKEW,
        clock: Callable[[], datetime] = utcnow,
        label: str | None = None,
    ):
        self.store = store
        self.key = key
        self.endpoint = endpoint
        self.skew = skew
        self.clock = clock
        self.label = label or str(key)
        self._cached: TokenPair | None = None
        # (spent refresh token, issued pair) whose commit failed; saved before anything else
        self._pending: tuple[str | None, TokenPair] | None = None
        self._lock = threading.Lock()

    def access_token(self) -> str:
        """A current access token: from memory, else the store, refreshed first when it is expiring."""
        with self._lock:
            cached = self._cached
        if cached is not None and cached.access_valid(self.clock(), self.skew):
            return cached.access_token
        stored = self.store.load(self.key)
        self._check_usable(stored)
        assert stored is not None
        if stored.pair.access_valid(self.clock(), self.skew) and self._pending is None:
            with self._lock:
                self._cached = stored.pair
            return stored.pair.access_token
        return self.refresh(stale_access_token=None)

    def refresh(self, stale_access_token: str | None = None) -> str:
        """Rotate the pair unless another refresher already has; returns the access token to use.

        ``stale_access_token``: the token the API just rejected (a 401); any other stored token is
        taken as someone else's fresh one. ``None``: refresh only if the stored one is expiring.
        """
        with self._lock:
            self._cached = None
            if self._pending is not None:
                self._persist_issued(*self._pending)
        spent: str | None = None
        issued: TokenPair | None = None
        revoked: _InvalidGrant | None = None
        try:
            with self.store.locked(self.key) as row:
                current = row.current
                self._check_usable(current)
                assert current is not None
                if self._already_refreshed(current.pair, stale_access_token):
                    pair = current.pair
                else:
                    if not current.pair.refresh_token:
                        raise _auth_error(
                            MissingCredentialError,
                            f"{self.label}: the access token was rejected and no refresh token is stored; "
                            "store new tokens with `kingtavo credentials set`",
                            redact_url(self.endpoint.token_url),
                        )
                    spent = current.pair.refresh_token
                    try:
                        issued = self.endpoint.refresh(spent, now=self.clock(), label=self.label)
                    except _InvalidGrant as exc:
                        revoked = exc
                        row.revoke(f"invalid_grant: {exc.description[:200]}")
                    else:
                        if issued.refresh_token is None:  # providers that do not rotate keep the old one
                            issued = TokenPair(
                                issued.access_token, spent, issued.access_expires_at, issued.refresh_expires_at
                            )
                        row.replace(issued)
                    pair = issued
        except (HttpError, _InvalidGrant):
            raise
        except Exception as exc:
            if issued is None:
                raise
            # The dangerous case: the provider rotated the pair, our commit did not happen (or its
            # acknowledgement was lost). The old refresh token is dead; the new pair is only here.
            log.critical(
                "%s: the token endpoint issued a new token pair but storing it failed (%s); "
                "retrying under a fresh lock. Until it is stored, a refresh elsewhere would revoke the grant.",
                self.label,
                type(exc).__name__,
            )
            with self._lock:
                self._persist_issued(spent, issued)
            pair = issued
        if revoked is not None:
            raise _auth_error(
                CredentialRevokedError,
                f"{self.label}: the provider revoked the OAuth grant (invalid_grant: {revoked.description[:200]}); "
                f"merchant {self.key.account_id} must reinstall the app, then store the new tokens with "
                "`kingtavo credentials set`",
                redact_url(self.endpoint.token_url),
                401,
            )
        assert pair is not None
        with self._lock:
            self._cached = pair
        return pair.access_token

    def _already_refreshed(self, pair: TokenPair, stale: str | None) -> bool:
        if not pair.access_valid(self.clock(), self.skew):
            return False
        return stale is None or pair.access_token != stale

    def _persist_issued(self, spent: str | None, issued: TokenPair) -> None:
        """Store a pair whose first commit failed; caller holds ``self._lock``."""
        last: Exception | None = None
        for attempt in range(1, PERSIST_ATTEMPTS + 1):
            try:
                with self.store.locked(self.key) as row:
                    current = row.current
                    stored_refresh = current.pair.refresh_token if current else None
                    if (
                        stored_refresh == issued.refresh_token
                        and current
                        and current.pair.access_token == issued.access_token
                    ):
                        pass  # the first commit did happen; only its acknowledgement was lost
                    elif current is None or stored_refresh == spent:
                        row.replace(issued)
                    else:
                        raise TokenPersistError(
                            f"{self.label}: a token pair issued by the provider could not be stored and the stored "
                            "pair changed meanwhile; the grant is likely revoked (reinstall the app)"
                        )
                self._pending = None
                log.warning("%s: the newly issued token pair is stored (attempt %d)", self.label, attempt)
                return
            except TokenPersistError:
                self._pending = None
                raise
            except Exception as exc:  # noqa: BLE001 - any store failure: try again, then give up loudly
                last = exc
                time.sleep(0.2 * 2**attempt)
        self._pending = (spent, issued)
        raise TokenPersistError(
            f"{self.label}: the provider issued a new token pair but it could not be stored after "
            f"{PERSIST_ATTEMPTS} attempts ({type(last).__name__}); it is kept in this process and stored "
            "before the next refresh. If this process exits first, the grant is lost: reinstall the app."
        ) from last

    def _check_usable(self, stored: StoredCredential | None) -> None:
        url = redact_url(self.endpoint.token_url)
        if stored is None:
            raise _auth_error(
                MissingCredentialError,
                f"{self.label}: no stored credentials; store them with `kingtavo credentials set`",
                url,
            )
        if stored.status == REVOKED:
            reason = f" ({stored.status_reason})" if stored.status_reason else ""
            raise _auth_error(
                CredentialRevokedError,
                f"{self.label}: the OAuth grant is revoked{reason}; merchant {self.key.account_id} must "
                "reinstall the app, then store the new tokens with `kingtavo credentials set`",
                url,
                401,
            )
