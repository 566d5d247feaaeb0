"""The warehouse: ClickHouse through clickhouse-connect, chDB in-process by default.

chDB opens a data path from one process at a time, so a client is opened late and closed at the
end of the step (:func:`open_clickhouse` is a context manager), and every warehouse step runs in
the ``clickhouse`` concurrency pool, limited to 1 in embedded mode (see ``dagster.yaml``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from kingtavo_pipeline.settings import Settings, check_clickhouse_database, get_settings
from kingtavo_pipeline.storage.errors import StoreUnavailableError, redact_url

log = logging.getLogger(__name__)

CLICKHOUSE_POOL = "clickhouse"
CHDB_BUSY_TIMEOUT_S = 600.0


def _chdb_path(dsn: str) -> Path | None:
    if not dsn.startswith("chdb:"):
        return None
    rest = dsn[len("chdb://") :] if dsn.startswith("chdb://") else dsn[len("chdb:") :]
    return Path(rest.split("?", 1)[0]) if rest and rest not in ("memory", ":memory:") else None


def _open(dsn: str, database: str) -> Client:
    client = clickhouse_connect.get_client(dsn=dsn)
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    client.database = database
    return client


def connect_clickhouse(dsn: str, database: str, *, busy_timeout: float = CHDB_BUSY_TIMEOUT_S) -> Client:
    """A client on ``database`` (created if missing). Caller closes it.

    A chDB path held by another process is waited for (up to ``busy_timeout`` seconds) rather than
    failed: the ``clickhouse`` pool already serialises warehouse steps, and this covers what the
    pool cannot see (a second Dagster instance, a notebook, the first slot claims of a new instance).
    """
    check_clickhouse_database(database)  # spliced into DDL below
    path = _chdb_path(dsn)
    if path is not None:
        where = f"the chDB data path {path}"
        hint = (
            "chDB opens a path from one process at a time: another process may hold it "
            "(run warehouse steps in the 'clickhouse' pool), and its log is in that folder"
        )
    else:
        where = f"ClickHouse at {redact_url(dsn)}"
        hint = "check KINGTAVO_CLICKHOUSE_URL and the server's log"
    deadline = time.monotonic() + busy_timeout
    delay = 0.2
    while True:
        try:
            if path is not None:
                path.mkdir(parents=True, exist_ok=True)
            return _open(dsn, database)
        except Exception as exc:  # noqa: BLE001 - one clear error instead of driver internals
            first = redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
            busy = path is not None and "EmbeddedServer" in str(exc)
            if busy and time.monotonic() < deadline:
                log.info("chDB path %s is busy in another process; retrying in %.1fs", path, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            raise StoreUnavailableError(f"cannot open {where}: {first}. {hint}") from exc


@contextmanager
def open_clickhouse(settings: Settings | None = None, *, migrate: bool = True) -> Iterator[Client]:
    """Open the configured warehouse for the duration of a step, migrated, and close it."""
    settings = settings or get_settings()
    client = connect_clickhouse(settings.clickhouse_dsn, settings.clickhouse_database)
    try:
        if migrate:
            from kingtavo_pipeline.storage.migrations import migrate_clickhouse

            migrate_clickhouse(client)
        yield client
    finally:
        client.close()
