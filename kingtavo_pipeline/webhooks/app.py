"""The webhook ingress: a Starlette app that verifies, limits and durably stores inbound webhooks.

``POST /webhooks/{name}`` per configured source; ``GET /health`` (503 when PostgreSQL does not
answer); ``GET /metrics`` (Prometheus text). Checks run cheapest first: unknown source (404), IP
allow-list (403), rate limit (429 + Retry-After), size (413: Content-Length, then while reading),
signature over the raw body (401), body shape (400), then the group-committed INSERT; the answer
is 200 only after the row (or the row it duplicates) is committed, else 503 so the sender retries.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kingtavo_pipeline.storage.errors import describe_error

from .config import WebhookSource, WebhooksConfig, source_secrets
from .events import PayloadError, audit_headers, parse_event
from .limits import IpAllowList, RateLimiter
from .metrics import IngressMetrics, SourceMetrics
from .schemes import VerificationError, Verifier
from .store import EventRow, EventWriter, StoreProbe, StoreUnavailable, UnstorableEvent

log = logging.getLogger(__name__)

PENDING_GAUGE_MAX_AGE_S = 1.0


class _TooLarge(Exception):
    pass


@dataclass
class _Source:
    """A configured source, ready for requests: verifier, limits and metrics built once."""

    config: WebhookSource
    verifier: Verifier
    limiter: RateLimiter | None
    allow: IpAllowList | None
    metrics: SourceMetrics
    drop_headers: tuple[str, ...]


def _json(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class Ingress:
    """What the routes share: sources, the writer, the probe and the metrics (``app.state.ingress``)."""

    def __init__(
        self,
        config: WebhooksConfig,
        postgres_url: str,
        *,
        environ: Mapping[str, str] | None = None,
        writer_options: Mapping[str, Any] | None = None,
    ):
        self.config = config
        self.metrics = IngressMetrics(w.name for w in config.webhooks)
        self.writer = EventWriter(postgres_url, on_batch=self.metrics.observe_batch, **dict(writer_options or {}))
        self.probe = StoreProbe(postgres_url)
        self.sources: dict[str, _Source] = {}
        for w in config.webhooks:
            verifier = Verifier(
                w.provider, source_secrets(w, environ), tolerance_seconds=w.tolerance_seconds, hmac_options=w.hmac_options
            )
            self.sources[w.name] = _Source(
                config=w,
                verifier=verifier,
                limiter=RateLimiter(w.rate_limit_per_second) if w.rate_limit_per_second else None,
                allow=IpAllowList(w.allow_ips) if w.allow_ips is not None else None,
                metrics=self.metrics.for_source(w.name),
                drop_headers=verifier.signature_headers,
            )
        self._pending_at = 0.0
        if not self.sources:
            log.warning("webhook ingress has no sources configured (set KINGTAVO_WEBHOOKS_FILE); every POST gets 404")

    # --- POST /webhooks/{name} ---------------------------------------------------------------

    async def receive(self, request: Request) -> Response:
        started = time.perf_counter()
        source = self.sources.get(request.path_params["name"])
        if source is None:
            self.metrics.unknown.received.inc()
            self.metrics.unknown.rejected("unknown_source")
            return _json(404, {"error": "unknown webhook source"})
        source.metrics.received.inc()
        try:
            return await self._receive(source, request)
        finally:
            source.metrics.latency.observe(time.perf_counter() - started)

    def _reject(
        self, source: _Source, status: int, reason: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Response:
        source.metrics.rejected(reason)
        # rate-limited floods would drown the log; the metric counts them
        level = logging.DEBUG if reason == "rate_limited" else logging.INFO
        log.log(level, "webhook %s rejected (%s): %s", source.config.name, reason, message)
        return _json(status, {"error": message, "reason": reason}, headers)

    async def _receive(self, source: _Source, request: Request) -> Response:
        cfg = source.config
        if source.allow is not None:
            host = request.client.host if request.client else None
            if not source.allow.allows(host):
                return self._reject(source, 403, "forbidden_ip", f"source address {host} is not allowed")
        if source.limiter is not None:
            wait = source.limiter.acquire()
            if wait > 0:
                return self._reject(
                    source, 429, "rate_limited", "rate limit exceeded", {"Retry-After": RateLimiter.retry_after(wait)}
                )
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return self._reject(source, 400, "bad_payload", "Content-Length is not a number")
            if size > cfg.max_body_bytes:
                return self._reject(source, 413, "too_large", f"body over {cfg.max_body_bytes} bytes")
        try:
            body = await _read_body(request, cfg.max_body_bytes)
        except _TooLarge:
            return self._reject(source, 413, "too_large", f"body over {cfg.max_body_bytes} bytes")
        headers = request.headers
        try:
            source.verifier.verify(headers, body)
        except VerificationError as exc:
            return self._reject(source, 401, exc.reason, str(exc))
        source.metrics.verified.inc()
        try:
            event = parse_event(
                cfg.provider, headers, body, id_header=cfg.id_header, event_header=cfg.event_header
            )
        except PayloadError as exc:
            return self._reject(source, 400, "bad_payload", str(exc))
        row = EventRow(
            source_name=cfg.name,
            provider=cfg.provider,
            event_type=event.event_type,
            dedupe_key=event.dedupe_key,
            account=event.account,
            received_at=time.time(),
            headers_json=orjson.dumps(audit_headers(headers.items(), source.drop_headers)).decode(),
            payload_json=event.payload_json,
        )
        try:
            result = await self.writer.submit(row)
        except StoreUnavailable as exc:
            retry = str(max(1, int(self.writer.retry_interval)))
            return self._reject(source, 503, "unavailable", str(exc), {"Retry-After": retry})
        except UnstorableEvent as exc:
            return self._reject(source, 400, "bad_payload", f"PostgreSQL refused the payload: {exc}")
        if result.duplicate:
            source.metrics.duplicates.inc()
            return _json(200, {"status": "duplicate", "dedupe_key": row.dedupe_key})
        source.metrics.stored.inc()
        return _json(200, {"status": "stored", "id": result.id, "dedupe_key": row.dedupe_key})

    # --- GET /health, GET /metrics -----------------------------------------------------------

    async def health(self, request: Request) -> Response:
        try:
            await self.probe.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot take events"
            self.metrics.database_up.set(0)
            return _json(503, {"status": "unavailable", "database": describe_error(exc), "sources": list(self.sources)})
        self.metrics.database_up.set(1)
        return _json(
            200,
            {"status": "ok", "database": "ok", "sources": list(self.sources), "queued": self.writer.pending},
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        now = time.monotonic()
        if now - self._pending_at >= PENDING_GAUGE_MAX_AGE_S:
            self._pending_at = now
            try:
                self.metrics.pending.set(await self.probe.pending_events())
                self.metrics.database_up.set(1)
            except Exception:  # noqa: BLE001 - the scrape still reports everything else
                self.metrics.database_up.set(0)
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    async def close(self) -> None:
        await self.writer.close()
        await self.probe.close()


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes whatever Content-Length said (chunked)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_app(
    config: WebhooksConfig,
    postgres_url: str,
    *,
    environ: Mapping[str, str] | None = None,
    writer_options: Mapping[str, Any] | None = None,
) -> Starlette:
    """The ingress app for ``config``, storing into the (migrated) database at ``postgres_url``.

    Secrets are read from ``environ`` (default ``os.environ``) now: a source without one is a
    :class:`~kingtavo_pipeline.webhooks.config.WebhookConfigError`. ``writer_options`` go to
    :class:`~kingtavo_pipeline.webhooks.store.EventWriter` (``max_batch``, ``retry_interval``, ...).
    """
    ingress = Ingress(config, postgres_url, environ=environ, writer_options=writer_options)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await ingress.close()

    app = Starlette(
        routes=[
            Route("/webhooks/{name}", ingress.receive, methods=["POST"]),
            Route("/health", ingress.health, methods=["GET"]),
            Route("/metrics", ingress.metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.ingress = ingress
    return app


def app_from_settings(config_path: str | None = None, settings: Any = None) -> Starlette:
    """The app for this environment: config from ``config_path`` or ``$KINGTAVO_WEBHOOKS_FILE``
    (none: no sources), the operational store from ``KINGTAVO_POSTGRES_URL`` or the embedded server
    (migrated now, so ``webhook_events`` exists before the first request)."""
    from kingtavo_pipeline.settings import get_settings
    from kingtavo_pipeline.storage.postgres import get_store

    from .config import load_webhooks, webhooks_path

    path = webhooks_path(config_path)
    config = load_webhooks(path) if path is not None else WebhooksConfig()
    store = get_store(settings or get_settings())
    return create_app(config, store.url)


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def serve(host: str, port: int, config_path: str | None) -> None:
    """Run the ingress under uvicorn until interrupted (``kingtavo serve``); blocking.

    Uses httptools and uvloop when installed (both are: they roughly double requests/s).
    """
    import uvicorn

    from kingtavo_pipeline.serving import check_free

    check_free(host, port, "webhook ingress")
    app = app_from_settings(config_path)
    names = ", ".join(app.state.ingress.sources) or "none (set KINGTAVO_WEBHOOKS_FILE)"
    log.warning("webhook ingress on http://%s:%s, sources: %s", host, port, names)
    uvicorn.run(
        app,
        host=host,
        port=port,
        http="httptools" if _installed("httptools") else "h11",
        loop="uvloop" if _installed("uvloop") else "asyncio",
        access_log=False,  # one line per webhook at thousands/s; metrics and rejection logs instead
        server_header=False,
        log_level="info",
        timeout_graceful_shutdown=10,
    )


@contextlib.contextmanager
def serving(app: Starlette, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 15.0) -> Iterator[str]:
    """Serve the ingress under uvicorn in a background thread until the block ends (``kingtavo demo``,
    the freshness benchmark); yields the base URL. Port 0 picks a free port. The lifespan runs, so
    the writer is flushed and closed on exit."""
    from kingtavo_pipeline.serving import serve_in_thread

    with serve_in_thread(app, host, port, name="webhook ingress", startup_timeout=startup_timeout,
                         lifespan="on", graceful_shutdown=2) as base_url:
        yield base_url