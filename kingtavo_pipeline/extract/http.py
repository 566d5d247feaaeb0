"""The one resilient HTTP layer every connector (feeds included) goes through.

A :class:`ResilientClient` wraps a sync ``httpx.Client`` with: connect/read timeouts; a response
size cap (the body is streamed and abandoned past the cap); retries with exponential backoff and
full jitter (tenacity) on network errors, timeouts, 408, 429 and 5xx, honouring ``Retry-After``
(seconds or HTTP-date, never sleeping less than it says, failing fast beyond ``max_retry_after``);
a circuit breaker per host; a token-bucket rate limiter per limiter key that also obeys
``X-RateLimit-*``; and an error taxonomy whose messages are one line naming the source, method,
redacted URL and status. Time comes from an injectable :class:`~.clock.Clock`.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
from collections.abc import Mapping
from datetime import timezone
from typing import Any

import httpx
import orjson
import pydantic
import tenacity
from prometheus_client import Counter

from ..storage.errors import redact_url
from .breaker import CircuitOpen, breaker_for
from .clock import SYSTEM_CLOCK, Clock
from .ratelimit import RateLimitWaitTooLong, limiter_for

__all__ = [
    "AuthError",
    "BadPayloadError",
    "CircuitOpenError",
    "HttpError",
    "HttpPolicy",
    "NotFoundError",
    "RateLimitedError",
    "ResilientClient",
    "RetryableError",
    "parse_retry_after",
    "redact",
]

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "kingtavo_http_requests_total",
    "HTTP requests sent, by source, host and outcome (2xx..5xx, network, timeout)",
    ["source", "host", "status_class"],
)
RETRIES = Counter("kingtavo_http_retries_total", "HTTP attempts retried, by source, host and reason", ["source", "host", "reason"])


class HttpPolicy(pydantic.BaseModel):
    """How one source talks HTTP. Every field has a default suitable for a public API."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    connect_timeout: float = pydantic.Field(5.0, gt=0)
    read_timeout: float = pydantic.Field(30.0, gt=0)
    max_response_bytes: int = pydantic.Field(50 * 2**20, gt=0)
    max_attempts: int = pydantic.Field(6, ge=1)
    backoff_initial: float = pydantic.Field(0.5, ge=0)
    backoff_max: float = pydantic.Field(30.0, ge=0)
    # a Retry-After (or a rate-limit reset) further away than this fails fast with RateLimitedError
    max_retry_after: float = pydantic.Field(120.0, ge=0)
    breaker_failures: int = pydantic.Field(5, ge=1)
    breaker_cooldown: float = pydantic.Field(30.0, ge=0)
    # client-side token bucket; None = unlimited until X-RateLimit-* headers say otherwise
    requests_per_second: float | None = pydantic.Field(None, gt=0)
    burst: int | None = pydantic.Field(None, ge=1)


# ---------------------------------------------------------------------------------------------
# Error taxonomy


class HttpError(Exception):
    """A request that did not produce a usable response. ``str(err)`` is one line without secrets."""

    kind = "http"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        url: str = "",
        method: str = "",
        source: str = "",
        host: str = "",
        kind: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.url = url  # redacted
        self.method = method
        self.source = source
        self.host = host
        if kind is not None:
            self.kind = kind
        self.retry_after = retry_after


class RetryableError(HttpError):
    """Transient: network error, timeout, 408, 5xx. Retried; raised once the attempts are spent."""

    kind = "retryable"
    # set when retrying is pointless (a Retry-After beyond max_retry_after)
    fail_fast = False


class AuthError(HttpError):
    """401/403: the credentials are wrong or lack a permission. Never retried."""

    kind = "auth"


class NotFoundError(HttpError):
    """404/410. Never retried."""

    kind = "not_found"


class BadPayloadError(HttpError):
    """Invalid JSON, a body over the size cap, or a 4xx the client caused. Never retried."""

    kind = "bad_payload"


class RateLimitedError(RetryableError):
    """429 (or a quota reset): retried after Retry-After; fails fast when that is too far away."""

    kind = "rate_limited"


class CircuitOpenError(RetryableError):
    """The host's circuit breaker is open: the request was not sent. Retried after the cool-down
    (``retry_after``: when the breaker lets a probe through) while attempts remain, so a long
    import waits out a bad minute of its source instead of failing; fails fast when the probe is
    further away than ``max_retry_after``."""

    kind = "circuit_open"


# ---------------------------------------------------------------------------------------------
# Helpers

# Query parameters whose values are secrets: redact_url's list plus signatures, client secrets,
# OAuth codes and any *key*/*token*/*auth* parameter.
_SECRET_PARAM = re.compile(r"token|secret|key|passw|pwd|sig|auth|credential|session", re.IGNORECASE)
_SECRET_HEADER = re.compile(r"authorization|token|key|secret|cookie|session|signature", re.IGNORECASE)


def redact(url: str) -> str:
    """A URL fit for messages: userinfo password and credential-like query values become ``***``.

    The query is redacted parameter by parameter (``redact_url`` on a whole query string can swallow
    the parameters after a secret one).
    """
    base, sep, query = str(url).partition("?")
    base = redact_url(base)
    if not sep:
        return base
    query, hash_sep, fragment = query.partition("#")
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        parts.append(f"{name}=***" if eq and _SECRET_PARAM.search(name) else part)
    return f"{base}?{'&'.join(parts)}{hash_sep}{fragment}"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date (``now`` = epoch)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


def _one_line(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


# ---------------------------------------------------------------------------------------------
# The client


class ResilientClient:
    """A sync HTTP client for one source. Thread-safe to share; cheap to create.

    ``name`` names the source in errors, logs and metrics. ``limiter_key`` (default ``name``) selects
    the process-wide rate limiter: use source + credential so that clients sharing a quota share it.
    ``clock`` and ``rng`` are injectable for tests.
    """

    def __init__(
        self,
        name: str,
        policy: HttpPolicy | None = None,
        *,
        base_url: str = "",
        headers: Mapping[str, str] | None = None,
        limiter_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        follow_redirects: bool = True,
    ) -> None:
        self.name = name
        self.policy = policy or HttpPolicy()
        self._clock = clock or SYSTEM_CLOCK
        self._rng = rng or random.Random()
        self.limiter_key = limiter_key or name
        self.limiter = limiter_for(self.limiter_key, self.policy.requests_per_second, self.policy.burst, self._clock)
        timeout = httpx.Timeout(
            connect=self.policy.connect_timeout,
            read=self.policy.read_timeout,
            write=self.policy.read_timeout,
            pool=self.policy.connect_timeout,
        )
        self._client = httpx.Client(
            base_url=base_url,
            headers=dict(headers or {}),
            timeout=timeout,
            transport=transport,
            follow_redirects=follow_redirects,
        )
        self._secrets = _secret_values(headers or {})

    # -- public API --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        json: Any = None,
        data: Any = None,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send with retries; return a fully read response (2xx/3xx) or raise an :class:`HttpError`."""
        method = method.upper()
        extra_secrets = _secret_values(headers or {})
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.policy.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, RetryableError) and not e.fail_fast),
            sleep=self._clock.sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._attempt(
                    method, url, attempt.retry_state.attempt_number, extra_secrets,
                    params=params, json=json, data=data, content=content, headers=headers,
                )
        raise AssertionError("unreachable: tenacity either returns or reraises")  # pragma: no cover

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("GET", url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.request("POST", url, **kw)

    def json(self, method: str, url: str, **kw: Any) -> Any:
        """``request`` and decode the body as JSON; invalid JSON raises :class:`BadPayloadError`."""
        return self.parse_json(self.request(method, url, **kw))

    def parse_json(self, response: httpx.Response) -> Any:
        """Decode a response from :meth:`request` (when its headers matter too, e.g. ``Link``)."""
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            method = response.request.method
            where = self._redact(str(response.request.url), is_url=True)
            content_type = response.headers.get("content-type", "no content-type")
            raise BadPayloadError(
                f"{self.name}: {method} {where} -> {response.status_code}: response is not valid JSON "
                f"({content_type}, {len(response.content)} bytes: {_one_line(str(exc), 120)})",
                status=response.status_code, url=where, method=method, source=self.name,
                host=response.request.url.netloc.decode("ascii", "replace"),
            ) from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ResilientClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one attempt -------------------------------------------------------------------------

    def _redact(self, text: str, *, is_url: bool = False) -> str:
        """No credentials: URL rules for URLs, ``redact_url`` for free text; header secrets scrubbed."""
        text = redact(text) if is_url else redact_url(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _attempt(
        self, method: str, url: str, attempt: int, extra_secrets: list[str], **kw: Any
    ) -> httpx.Response:
        request = self._client.build_request(method, url, **kw)
        host = request.url.netloc.decode("ascii", "replace")
        where = self._redact(str(request.url), is_url=True)
        for secret in extra_secrets:
            where = where.replace(secret, "***")
        policy = self.policy
        prefix = f"{self.name}: {method} {where}"
        ctx = {"url": where, "method": method, "source": self.name, "host": host}
        tries = f"(attempt {attempt}/{policy.max_attempts})"

        try:
            self.limiter.acquire(max_wait=policy.max_retry_after)
        except RateLimitWaitTooLong as exc:
            err = RateLimitedError(
                f"{prefix} -> rate limit quota exhausted for {exc.wait:.0f}s, more than max_retry_after "
                f"{policy.max_retry_after:g}s", retry_after=exc.wait, **ctx,
            )
            err.fail_fast = True
            raise err from None

        breaker = breaker_for(host, self._clock)
        try:
            breaker.before_request(policy.breaker_cooldown)
        except CircuitOpen as exc:
            err = CircuitOpenError(
                f"{prefix} -> not sent: circuit breaker for {host} is open after repeated failures "
                f"(next probe in {exc.retry_in:.0f}s)", retry_after=exc.retry_in, **ctx,
            )
            err.fail_fast = exc.retry_in > policy.max_retry_after
            raise err from None

        try:
            response = self._client.send(request, stream=True)
            try:
                self._read_capped(response, prefix, ctx)
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            breaker.record_failure(policy.breaker_failures)
            REQUESTS.labels(self.name, host, "timeout").inc()
            raise RetryableError(f"{prefix} -> timed out ({type(exc).__name__}) {tries}", kind="timeout", **ctx) from None
        except httpx.UnsupportedProtocol as exc:
            breaker.record_success()  # nothing reached the host; do not hold a half-open probe
            raise HttpError(f"{prefix} -> {self._redact(str(exc))}", kind="config", **ctx) from None
        except httpx.TransportError as exc:
            breaker.record_failure(policy.breaker_failures)
            REQUESTS.labels(self.name, host, "network").inc()
            detail = _one_line(self._redact(str(exc)) or type(exc).__name__, 160)
            raise RetryableError(
                f"{prefix} -> network error: {type(exc).__name__}: {detail} {tries}", kind="network", **ctx
            ) from None
        except BaseException:
            breaker.record_success()  # e.g. over the size cap: the host answered; free the probe
            raise

        self.limiter.observe(response.headers)
        status = response.status_code
        REQUESTS.labels(self.name, host, _status_class(status)).inc()
        status_text = f"{status} {response.reason_phrase}".strip()
        if status >= 500 or status == 408:
            if status >= 500:
                breaker.record_failure(policy.breaker_failures)
            else:
                breaker.record_success()
            raise self._retryable(response, f"{prefix} -> {status_text}", tries, "server_error", RetryableError, ctx)
        breaker.record_success()
        if status == 429:
            raise self._retryable(response, f"{prefix} -> {status_text}", tries, "rate_limited", RateLimitedError, ctx)
        if status in (401, 403):
            raise AuthError(
                f"{prefix} -> {status_text}: check the credentials and their permissions{self._excerpt(response)}",
                status=status, **ctx,
            )
        if status in (404, 410):
            raise NotFoundError(f"{prefix} -> {status_text}{self._excerpt(response)}", status=status, **ctx)
        if 400 <= status < 500:
            raise BadPayloadError(f"{prefix} -> {status_text}{self._excerpt(response)}", status=status, **ctx)
        return response

    def _read_capped(self, response: httpx.Response, prefix: str, ctx: dict[str, Any]) -> None:
        """Read the (decoded) body, abandoning it past ``max_response_bytes``."""
        cap = self.policy.max_response_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap and not response.headers.get("content-encoding"):
            raise BadPayloadError(
                f"{prefix} -> {response.status_code}: body of {declared} bytes exceeds max_response_bytes {cap}",
                status=response.status_code, **ctx,
            )
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > cap:
                raise BadPayloadError(
                    f"{prefix} -> {response.status_code}: body exceeds max_response_bytes {cap}",
                    status=response.status_code, **ctx,
                )
            chunks.append(chunk)
        # what Response.read() does: later .content/.text/.json() use it
        response._content = b"".join(chunks)

    def _retryable(
        self, response: httpx.Response, head: str, tries: str, kind: str, cls: type[RetryableError], ctx: dict[str, Any]
    ) -> RetryableError:
        retry_after = parse_retry_after(response.headers.get("retry-after"), self._clock.time())
        limit = self.policy.max_retry_after
        if retry_after is not None and retry_after > limit:
            err: RetryableError = RateLimitedError(
                f"{head}: Retry-After {retry_after:.0f}s exceeds max_retry_after {limit:g}s; giving up",
                status=response.status_code, retry_after=retry_after, **ctx,
            )
            err.fail_fast = True
            return err
        if retry_after is not None and response.status_code == 429:
            # the quota is shared by every client of this limiter key, not just this request
            self.limiter.pause(retry_after)
        hint = f", Retry-After {retry_after:g}s" if retry_after is not None else ""
        return cls(
            f"{head}{self._excerpt(response)}{hint} {tries}",
            status=response.status_code, kind=kind if cls is RetryableError else None, retry_after=retry_after, **ctx,
        )

    def _excerpt(self, response: httpx.Response) -> str:
        """A short, redacted, one-line excerpt of an error body (APIs explain 4xx there)."""
        try:
            text = response.content[:400].decode(response.encoding or "utf-8", "replace")
        except (LookupError, httpx.ResponseNotRead):
            return ""
        text = _one_line(self._redact(text))
        return f": {text}" if text else ""

    # -- tenacity hooks ------------------------------------------------------------------------

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Full jitter, ``uniform(0, min(max, initial * 2**n))``; never less than a Retry-After."""
        cap = min(self.policy.backoff_max, self.policy.backoff_initial * 2 ** (state.attempt_number - 1))
        wait = self._rng.uniform(0, cap)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        host = getattr(exc, "host", "")
        kind = getattr(exc, "kind", "error")
        RETRIES.labels(self.name, host, kind).inc()
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s; retrying in %.2fs", exc, wait)


def _secret_values(headers: Mapping[str, str]) -> list[str]:
    """Credential values from headers (the token of ``Bearer <token>`` too), to scrub from messages."""
    values: list[str] = []
    for name, value in headers.items():
        if not value or not _SECRET_HEADER.search(name):
            continue
        values.append(value)
        scheme, _, token = value.partition(" ")
        if token and len(token) >= 4:
            values.append(token.strip())
    return sorted(set(values), key=len, reverse=True)
