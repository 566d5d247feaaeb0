"""Prometheus metrics of the webhook ingress, on a registry per app (two apps in one process, as in
tests, never collide). Label children are bound once per source: the request path only increments."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

UNKNOWN_SOURCE = "(unknown)"
REJECT_REASONS = (
    "unknown_source",
    "forbidden_ip",
    "rate_limited",
    "too_large",
    "missing_signature",
    "malformed_signature",
    "bad_signature",
    "stale_timestamp",
    "bad_payload",
    "unavailable",
)
# webhook latency in seconds: a request is a verify plus (usually) one shared commit
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SourceMetrics:
    """The children of every per-source metric for one source."""

    def __init__(self, metrics: IngressMetrics, source: str):
        self.received = metrics.received.labels(source)
        self.verified = metrics.verified.labels(source)
        self.stored = metrics.stored.labels(source)
        self.duplicates = metrics.duplicates.labels(source)
        self.latency = metrics.latency.labels(source)
        self._rejected = {reason: metrics.rejected.labels(source, reason) for reason in REJECT_REASONS}
        self._metrics = metrics
        self._source = source

    def rejected(self, reason: str) -> None:
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self._metrics.rejected.labels(self._source, reason)
        child.inc()


class IngressMetrics:
    def __init__(self, sources: Iterable[str]):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("kingtavo_webhook_received", "Webhook requests received", ["source"], registry=r)
        self.verified = Counter("kingtavo_webhook_verified", "Webhook requests whose signature verified", ["source"], registry=r)
        self.rejected = Counter(
            "kingtavo_webhook_rejected", "Webhook requests rejected, by reason", ["source", "reason"], registry=r
        )
        self.stored = Counter("kingtavo_webhook_stored", "Webhook events committed (new rows)", ["source"], registry=r)
        self.duplicates = Counter(
            "kingtavo_webhook_duplicates", "Redelivered webhook events acknowledged without a new row", ["source"], registry=r
        )
        self.latency = Histogram(
            "kingtavo_webhook_request_seconds",
            "Time from request start to response for webhook requests",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "kingtavo_webhook_events_pending", "webhook_events rows with status 'pending' (sensor backlog)", registry=r
        )
        self.batch_rows = Histogram(
            "kingtavo_webhook_commit_batch_rows",
            "Rows per group commit",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "kingtavo_webhook_commit_seconds", "Duration of one group commit", buckets=LATENCY_BUCKETS, registry=r
        )
        self.database_up = Gauge("kingtavo_webhook_database_up", "1 when PostgreSQL answered the last probe", registry=r)
        self.sources = {name: SourceMetrics(self, name) for name in sources}
        self.unknown = SourceMetrics(self, UNKNOWN_SOURCE)

    def for_source(self, name: str | None) -> SourceMetrics:
        return self.sources.get(name or "", self.unknown)

    def observe_batch(self, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
