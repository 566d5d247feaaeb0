"""Connectors built from the sources file: credentials from the environment (or, for Salla's
OAuth tokens, from ``source_credentials``), the HTTP policy from the source's ``http`` settings.

A connector sees only a base URL and credentials, so the same code pulls the real API, the
sandbox, or any server that speaks the API.
"""

from __future__ import annotations

import os

from kingtavo_pipeline.connectors.base import Connector
from kingtavo_pipeline.extract.http import HttpPolicy
from kingtavo_pipeline.sources.config import (
    HttpSettings,
    PrintavoSource,
    RestSource,
    SallaSource,
    SourceConfigError,
    StrapiSource,
)
from kingtavo_pipeline.storage.postgres import PostgresStore


def http_policy(settings: HttpSettings, *, requests_per_second: float | None = None, burst: int | None = None) -> HttpPolicy:
    return HttpPolicy(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_response_bytes=settings.max_response_mib * 2**20,
        max_attempts=settings.max_attempts,
        backoff_initial=settings.backoff_initial,
        backoff_max=settings.backoff_max,
        max_retry_after=settings.max_retry_after,
        breaker_failures=settings.breaker_failures,
        breaker_cooldown=settings.breaker_cooldown,
        requests_per_second=requests_per_second,
        burst=burst,
    )


def env(source_name: str, variable: str) -> str:
    """A credential from the environment, or one line saying which variable to set."""
    value = os.environ.get(variable, "").strip()
    if not value:
        raise SourceConfigError(f"source {source_name!r}: set the environment variable {variable} (its credential)")
    return value


def connector_for(source, entity: str, merchant_id: str, store: PostgresStore) -> Connector:
    """The connector that pulls ``entity`` of ``source`` (for one merchant where the API has many)."""
    if isinstance(source, StrapiSource):
        from kingtavo_pipeline.connectors.strapi import StrapiConnector

        return StrapiConnector(source.base_url, env(source.name, source.token_env), dict(source.collections),
                               version=source.version, page_size=source.page_size,
                               policy=http_policy(source.http), name=source.name)
    if isinstance(source, RestSource):
        from kingtavo_pipeline.connectors.rest import RestConnector

        credentials = {source.auth.env: env(source.name, source.auth.env)} if source.auth.env else {}
        return RestConnector(source, credentials, policy=http_policy(source.http))
    if isinstance(source, PrintavoSource):
        return _printavo(source)
    if isinstance(source, SallaSource):
        return _salla(source, merchant_id, store)
    raise SourceConfigError(f"source {source.name!r}: no connector for {type(source).__name__}")


def _printavo(source: PrintavoSource) -> Connector:
    from kingtavo_pipeline.connectors.printavo import PrintavoConnector

    # the connector's own token bucket keeps any window under the documented limit
    return PrintavoConnector(base_url=source.base_url, email=env(source.name, source.email_env),
                             token=env(source.name, source.token_env), source_name=source.name,
                             policy=http_policy(source.http), page_size=source.page_size,
                             rescan_days=source.rescan_days,
                             rate_limit=(source.requests_per_window, source.window_seconds))


def _salla(source: SallaSource, merchant_id: str, store: PostgresStore) -> Connector:
    from kingtavo_pipeline.connectors.salla import SallaConnector
    from kingtavo_pipeline.storage.credentials import PostgresTokenStore

    if not merchant_id:
        raise SourceConfigError(f"source {source.name!r}: Salla pulls run per merchant (a merchant partition)")
    # a merchant's plan limit per minute, spread evenly (burst 1 never exceeds it in any minute);
    # X-RateLimit-* headers hold every client of the merchant when the store's budget runs out
    policy = http_policy(source.http, requests_per_second=source.requests_per_minute / 60.0, burst=1)
    return SallaConnector(merchant_id, base_url=source.base_url, token_url=source.token_url,
                          client_id=env(source.name, source.client_id_env),
                          client_secret=env(source.name, source.client_secret_env),
                          tokens=PostgresTokenStore(store), source_name=source.name,
                          page_size=source.page_size, policy=policy)
