"""Shared helpers for the IO manager tests: sample rows, output/input round trips, both stores
behind one interface, and threads whose failures reach the test."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import pandas as pd
import pyarrow as pa
from dagster import (
    DagsterInstance,
    DailyPartitionsDefinition,
    PythonObjectDagsterType,
    StaticPartitionsDefinition,
    build_init_resource_context,
    build_input_context,
    build_output_context,
)

from kingtavo_pipeline.io_managers import ClickHouseIOManager, PostgresIOManager
from kingtavo_pipeline.resources import ClickHouseResource, PostgresResource

DAILY = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-01")
SHOPS = StaticPartitionsDefinition(["north", "o'brien", "south"])


@cache
def instance() -> DagsterInstance:
    """One in-memory instance for every context built here (building one per context is slow)."""
    return DagsterInstance.ephemeral()


def rows(day: str, n: int, tag: str = "v1", shop: str | None = None) -> pd.DataFrame:
    d = dt.date.fromisoformat(day)
    return pd.DataFrame(
        {
            "day": [d] * n,
            "shop": [shop or "north"] * n,
            "id": list(range(n)),
            "value": [float(i) / 2 for i in range(n)],
            "tag": [tag] * n,
            "updated_at": [pd.Timestamp(d, tz="UTC") + pd.Timedelta(hours=i) for i in range(n)],
        }
    )


def write(iom, key, obj, *, partition_key=None, key_range=None, pdef=None, metadata=None) -> dict[str, Any]:
    """handle_output for one asset; returns the metadata it logged, as plain values."""
    context = build_output_context(
        instance=instance(),
        asset_key=key,
        partition_key=partition_key,
        asset_partition_key_range=key_range,
        asset_partitions_def=pdef,
        definition_metadata=metadata or {},
    )
    iom.handle_output(context, obj)
    return {k: getattr(v, "value", v) for k, v in context.get_logged_metadata().items()}


def load(iom, key, typ=pd.DataFrame, *, partition_key=None, key_range=None, pdef=None, metadata=None, columns=None):
    upstream = build_output_context(asset_key=key, definition_metadata=metadata or {}, instance=instance())
    context = build_input_context(
        instance=instance(),
        asset_key=key,
        partition_key=partition_key,
        asset_partition_key_range=key_range,
        asset_partitions_def=pdef,
        upstream_output=upstream,
        definition_metadata={"columns": columns} if columns else None,
        dagster_type=PythonObjectDagsterType(typ),
    )
    return iom.load_input(context)


def sorted_table(table: pa.Table, by: list[str] | None = None) -> pa.Table:
    """``table`` in a deterministic row order, as one chunk (for equality checks)."""
    return table.sort_by([(c, "ascending") for c in by or table.column_names]).combine_chunks()


# --- both stores -------------------------------------------------------------------------------

TEST_SCHEMA = "io_test"  # PostgreSQL schema / ClickHouse database of the IO manager tests


@dataclass
class Backend:
    """One store under test: its IO manager (configurable) and SQL access to what it stored."""

    name: str
    factory: Callable[..., Any]  # IO manager config -> ConfigurableIOManagerFactory
    fetch: Callable[[str], list[tuple]]  # SQL -> rows
    final: str  # what follows a table name to read it deduplicated (" FINAL" in ClickHouse)

    def iom(self, **config: Any) -> Any:
        return self.factory(**config).create_io_manager(build_init_resource_context())

    def table(self, name: str) -> str:
        return f"{TEST_SCHEMA}.{name}{self.final}"


def make_backend(request: Any) -> Backend:
    """The ``backend`` fixture's value for ``request.param`` ("postgres" or "clickhouse")."""
    if request.param == "postgres":
        store = request.getfixturevalue("store")
        url = request.getfixturevalue("postgres_url")
        return Backend(
            "postgres", lambda **c: PostgresIOManager(postgres=PostgresResource(postgres_url=url), schema=TEST_SCHEMA, **c), store.fetch_all, ""
        )
    client = request.getfixturevalue("clickhouse")
    dsn = request.getfixturevalue("clickhouse_dsn")
    return Backend(
        "clickhouse",
        lambda **c: ClickHouseIOManager(clickhouse=ClickHouseResource(clickhouse_url=dsn, database=TEST_SCHEMA), **c),
        lambda query: client.query(query).result_rows,
        " FINAL",
    )


# --- threads and waiting -----------------------------------------------------------------------


class Worker(threading.Thread):
    """Runs ``fn(*args, **kwargs)``; :meth:`join_and_raise` re-raises its exception in the caller."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        super().__init__(daemon=True)
        self._call = (fn, args, kwargs)
        self.error: BaseException | None = None

    def run(self) -> None:
        fn, args, kwargs = self._call
        try:
            fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def join_and_raise(self, timeout: float = 60.0) -> None:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"{self.name} did not finish within {timeout}s")
        if self.error is not None:
            raise self.error


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
