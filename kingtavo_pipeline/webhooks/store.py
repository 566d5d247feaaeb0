"""Durable writes of webhook events: group commit over one psycopg async connection.

Requests :meth:`EventWriter.submit` a row and await its future; one writer task takes whatever is
queued (up to ``max_batch`` rows), inserts it with one ``INSERT ... SELECT FROM unnest(...) ON
CONFLICT (source_name, dedupe_key) DO NOTHING RETURNING`` in one transaction, commits, and only then
resolves the futures. No request is answered 2xx before its row (or the row it duplicates) is
committed. Batching is natural, not timed: while one batch commits, the next one queues, so a
single request waits for one commit and a burst shares commits.

When PostgreSQL is unreachable, the batch's requests fail with :class:`StoreUnavailable` (503 for
the sender, which retries), the connection is dropped, and for ``retry_interval`` seconds new
requests fail at once instead of queueing; then the next batch reconnects. If a commit's outcome is
unknown (connection lost during COMMIT), the requests get 503 and the sender's retry dedupes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from kingtavo_pipeline.storage.errors import describe_error, redact_url

log = logging.getLogger(__name__)

INSERT_SQL = """
INSERT INTO webhook_events (source_name, provider, event_type, dedupe_key, account, received_at, headers, payload)
SELECT s, p, e, d, a, to_timestamp(r), h::jsonb, b::jsonb
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], %b::text[], %b::text[])
    AS t(s, p, e, d, a, r, h, b)
ON CONFLICT (source_name, dedupe_key) DO NOTHING
RETURNING id, source_name, dedupe_key
"""

CONNECT_OPTIONS = "-c TimeZone=UTC -c jit=off -c statement_timeout=10000"


class StoreUnavailable(RuntimeError):
    """The event was not stored because PostgreSQL cannot take it now; the sender should retry."""


class UnstorableEvent(ValueError):
    """PostgreSQL refused this one row's data (e.g. a value it cannot represent); retrying won't help."""


@dataclass(slots=True)
class EventRow:
    source_name: str
    provider: str
    event_type: str | None
    dedupe_key: str
    account: str | None
    received_at: float  # Unix seconds
    headers_json: str
    payload_json: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.source_name, self.dedupe_key)


@dataclass(frozen=True, slots=True)
class WriteResult:
    id: int | None  # the new row's id; None for a duplicate
    duplicate: bool


@dataclass
class WriterStats:
    batches: int = 0
    rows: int = 0
    failures: int = 0
    reconnects: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # bounded: the last 1000


_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, OSError, asyncio.TimeoutError)


class EventWriter:
    """Group-committing writer of :class:`EventRow`s; create and use it inside one event loop."""

    def __init__(
        self,
        url: str,
        *,
        max_batch: int = 1000,
        max_queue: int = 20_000,
        connect_timeout: float = 3.0,
        batch_timeout: float = 15.0,
        retry_interval: float = 1.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.url = url
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.connect_timeout = connect_timeout
        self.batch_timeout = batch_timeout
        self.retry_interval = retry_interval
        self.on_batch = on_batch  # (rows, seconds) after each committed batch, for metrics
        self.stats = WriterStats()
        self._conn: psycopg.AsyncConnection | None = None
        self._queue: list[tuple[EventRow, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._down_until = 0.0
        self._last_error: str | None = None
        self._closing = False

    # --- requests' side --------------------------------------------------------------------

    async def submit(self, row: EventRow) -> WriteResult:
        """Store ``row`` (or find it stored already) and return once that is committed."""
        if self._closing:
            raise StoreUnavailable("the service is shutting down")
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"PostgreSQL is unavailable: {self._last_error}")
        if len(self._queue) >= self.max_queue:
            raise StoreUnavailable(f"{len(self._queue)} events are waiting for PostgreSQL")
        self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        self._queue.append((row, future))
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def available(self) -> bool:
        """False while the writer is backing off after a failed connection or batch."""
        return time.monotonic() >= self._down_until

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-event-writer")

    # --- the writer task -------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            try:
                await self._write(batch)
            except Exception as exc:  # noqa: BLE001 - never let the writer die; fail the batch
                log.exception("webhook writer failed a batch")
                _fail_all(batch, StoreUnavailable(describe_error(exc)))

    async def _connect(self) -> psycopg.AsyncConnection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(self.url, connect_timeout=max(1, int(self.connect_timeout)), options=CONNECT_OPTIONS),
            timeout=self.connect_timeout + 1,
        )
        self.stats.reconnects += 1
        self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), timeout=1)
            except Exception:  # noqa: BLE001 - it is broken already
                pass

    async def _write(self, batch: list[tuple[EventRow, asyncio.Future]]) -> None:
        started = time.perf_counter()
        rows = [row for row, _ in batch]
        try:
            conn = await self._connect()
            stored = await asyncio.wait_for(self._insert(conn, rows), timeout=self.batch_timeout)
        except _CONNECTION_ERRORS as exc:
            await self._unavailable(batch, exc)
            return
        except psycopg.DataError:
            # one row's value was refused (the whole statement rolled back): isolate it
            await self._write_one_by_one(batch)
            return
        except psycopg.Error as exc:
            await self._unavailable(batch, exc)
            return
        self._resolve(batch, stored)
        self._batch_done(len(batch), time.perf_counter() - started)

    async def _insert(self, conn: psycopg.AsyncConnection, rows: list[EventRow]) -> dict[tuple[str, str], int]:
        params = (
            [r.source_name for r in rows],
            [r.provider for r in rows],
            [r.event_type for r in rows],
            [r.dedupe_key for r in rows],
            [r.account for r in rows],
            [r.received_at for r in rows],
            [r.headers_json for r in rows],
            [r.payload_json for r in rows],
        )
        try:
            async with conn.transaction():
                cur = await conn.execute(INSERT_SQL, params)
                returned = await cur.fetchall()
        except BaseException:
            if conn.closed or conn.broken:
                await self._drop_connection()
            raise
        return {(source, key): row_id for row_id, source, key in returned}

    async def _write_one_by_one(self, batch: list[tuple[EventRow, asyncio.Future]]) -> None:
        started = time.perf_counter()
        for row, future in batch:
            try:
                conn = await self._connect()
                stored = await asyncio.wait_for(self._insert(conn, [row]), timeout=self.batch_timeout)
            except psycopg.DataError as exc:
                if not future.done():
                    future.set_exception(UnstorableEvent(describe_error(exc)))
                continue
            except (*_CONNECTION_ERRORS, psycopg.Error) as exc:
                await self._unavailable([(row, future)], exc)
                continue
            self._resolve([(row, future)], stored)
        self._batch_done(len(batch), time.perf_counter() - started)

    def _resolve(self, batch: list[tuple[EventRow, asyncio.Future]], stored: dict[tuple[str, str], int]) -> None:
        # a key repeated inside one batch was inserted once: its first request gets the id
        for row, future in batch:
            row_id = stored.pop(row.key, None)
            if not future.done():
                future.set_result(WriteResult(row_id, row_id is None))
        self._down_until = 0.0
        self._last_error = None

    def _batch_done(self, size: int, seconds: float) -> None:
        self.stats.batches += 1
        self.stats.rows += size
        sizes = self.stats.batch_sizes
        sizes.append(size)
        if len(sizes) > 1000:
            del sizes[:500]
        if self.on_batch is not None:
            self.on_batch(size, seconds)

    async def _unavailable(self, batch: list[tuple[EventRow, asyncio.Future]], exc: BaseException) -> None:
        self.stats.failures += 1
        self._last_error = redact_url(describe_error(exc) if isinstance(exc, Exception) else type(exc).__name__)
        log.warning("PostgreSQL cannot take webhook events (%s); answering 503 for %ss", self._last_error, self.retry_interval)
        await self._drop_connection()
        self._down_until = time.monotonic() + self.retry_interval
        _fail_all(batch, StoreUnavailable(f"PostgreSQL is unavailable: {self._last_error}"))

    # --- lifecycle -------------------------------------------------------------------------

    async def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued (its requests still get their answer), then close the connection."""
        self._closing = True
        if self._task is not None and not self._task.done():
            assert self._wakeup is not None
            self._wakeup.set()
            try:
                await asyncio.wait_for(self._task, timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        _fail_all(self._queue, StoreUnavailable("the service is shutting down"))
        self._queue = []
        await self._drop_connection()


def _fail_all(batch: list[tuple[EventRow, asyncio.Future]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


class StoreProbe:
    """A second, small connection for health checks and the pending-events gauge, so they never
    wait behind a large batch (and a slow probe never delays a commit)."""

    def __init__(self, url: str, *, timeout: float = 2.0):
        self.url = url
        self.timeout = timeout
        self._conn: psycopg.AsyncConnection | None = None
        self._lock: asyncio.Lock | None = None

    async def _query(self, sql: str) -> object:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await asyncio.wait_for(
                        psycopg.AsyncConnection.connect(
                            self.url, autocommit=True, connect_timeout=max(1, int(self.timeout)), options=CONNECT_OPTIONS
                        ),
                        timeout=self.timeout + 1,
                    )
                cur = await asyncio.wait_for(self._conn.execute(sql), timeout=self.timeout)
                row = await cur.fetchone()
                return row[0] if row else None
            except BaseException:
                conn, self._conn = self._conn, None
                if conn is not None:
                    try:
                        await asyncio.wait_for(conn.close(), timeout=1)
                    except Exception:  # noqa: BLE001
                        pass
                raise

    async def ping(self) -> None:
        await self._query("SELECT 1")

    async def pending_events(self) -> int:
        # index-only scan of webhook_events_status_idx: proportional to the backlog, not the table
        return int(await self._query("SELECT count(*) FROM webhook_events WHERE status = 'pending'") or 0)

    async def close(self) -> None:
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.close(), timeout=1)
            except Exception:  # noqa: BLE001
                pass
            self._conn = None
