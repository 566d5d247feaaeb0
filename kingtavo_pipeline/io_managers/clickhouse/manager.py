"""The ClickHouse IO manager: its DbClient (a migrated client opened late and closed, databases),
its type handlers and the configurable factory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import pyarrow as pa
from clickhouse_connect.driver.client import Client
from dagster import ConfigurableIOManagerFactory, InitResourceContext, InputContext, OutputContext
from dagster._core.storage.db_io_manager import DbIOManager, DbTypeHandler, TableSlice
from pydantic import Field

from kingtavo_pipeline.io_managers.clickhouse.ddl import table_info
from kingtavo_pipeline.io_managers.clickhouse.query import quoted, select_slice, slice_kinds
from kingtavo_pipeline.io_managers.clickhouse.read import read_arrow, stream_arrow
from kingtavo_pipeline.io_managers.clickhouse.write import write_parts
from kingtavo_pipeline.io_managers.framework import (
    ArrowTypeHandler,
    PandasTypeHandler,
    SliceDbClient,
    SliceOperations,
    StreamTypeHandler,
)
from kingtavo_pipeline.io_managers.slices import DEFAULT_BATCH_ROWS
from kingtavo_pipeline.resources import ClickHouseResource
from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.clickhouse import connect_clickhouse
from kingtavo_pipeline.storage.migrations import migrate_clickhouse

# --- the DbClient ------------------------------------------------------------------------------


class ClickHouseDbClient(SliceDbClient[Client]):
    """Opens the warehouse late for one output or input, migrated, and closes it (chDB: one process at a time)."""

    def __init__(self, clickhouse_url: str | None = None, database: str | None = None):
        super().__init__()
        self.clickhouse_url = clickhouse_url
        self.database = database

    def resolved(self) -> tuple[str, str]:
        settings = Settings()
        return self.clickhouse_url or settings.clickhouse_dsn, self.database or settings.clickhouse_database

    @contextmanager
    def connect(self, context: OutputContext | InputContext, table_slice: TableSlice) -> Iterator[Client]:
        dsn, database = self.resolved()
        client = connect_clickhouse(dsn, database)
        try:
            migrate_clickhouse(client)
            yield client
            if isinstance(context, OutputContext) and table_info(client, table_slice.schema, table_slice.table):
                self.remember_kinds(table_slice, slice_kinds(client, table_slice))
        finally:
            client.close()

    @staticmethod
    def ensure_schema_exists(context: OutputContext, table_slice: TableSlice, connection: Client) -> None:
        connection.command(f"CREATE DATABASE IF NOT EXISTS {quoted(table_slice.schema)}")

    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection: Client) -> None:
        """Nothing: the type handler replaces the slice's partitions atomically (no mutations)."""

    def get_select_statement(self, table_slice: TableSlice) -> str:
        return select_slice(table_slice, table_slice.columns, kinds=self.written_kinds(table_slice))


# --- type handlers -----------------------------------------------------------------------------


class ClickHouseOperations(SliceOperations):
    """The ClickHouse side of the type handlers: stage and replace, ``SELECT ... FINAL``, and a
    stream of it one partition at a time on a client of the stream's own."""

    clickhouse_url: str | None = None
    database: str | None = None

    def __init__(self, batch_rows: int = DEFAULT_BATCH_ROWS):
        self.batch_rows = batch_rows

    def write_parts(self, context, table_slice, schema, parts, connection) -> dict[str, Any]:
        return write_parts(context, table_slice, schema, parts, connection, self.batch_rows)

    def read_arrow(self, context, table_slice, connection) -> pa.Table:
        return read_arrow(table_slice, connection)

    def stream_arrow(self, context, table_slice, connection) -> pa.RecordBatchReader:
        dsn, database = ClickHouseDbClient(self.clickhouse_url, self.database).resolved()
        return stream_arrow(context, table_slice, connection, dsn, database, self.batch_rows)


class ClickHouseArrowTypeHandler(ClickHouseOperations, ArrowTypeHandler):
    """Writes and loads ``pyarrow.Table`` slices."""


class ClickHousePandasTypeHandler(ClickHouseOperations, PandasTypeHandler):
    """Writes and loads ``pandas.DataFrame`` slices, through Arrow (the index is not stored)."""


class ClickHouseStreamTypeHandler(ClickHouseOperations, StreamTypeHandler):
    """Streams: loads a ``pyarrow.RecordBatchReader`` (batches of at most ``batch_rows`` rows, one
    partition of the slice queried at a time, on a client of its own since the IO manager's closes
    when ``load_input`` returns); writes a ``RecordBatchReader`` or an iterator of
    ``RecordBatch``/``Table`` into the stage part by part."""

    def __init__(self, clickhouse_url: str | None = None, database: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS):
        super().__init__(batch_rows)
        self.clickhouse_url = clickhouse_url
        self.database = database


# --- the IO manager ----------------------------------------------------------------------------


class ClickHouseIOManager(ConfigurableIOManagerFactory):
    """Stores pandas DataFrames and Arrow tables in the ClickHouse warehouse, one table per asset,
    replacing the asset's partitions atomically (REPLACE/DROP PARTITION from a stage table), and
    streams ``pyarrow.RecordBatchReader`` in and out.

    Asset metadata: ``partition_expr`` (column or expression per partition dimension), ``order_by``
    (needed to create a table), ``schema`` (another database), ``columns`` on inputs.
    """

    clickhouse: ClickHouseResource = Field(
        description="The warehouse (the `clickhouse` resource): its URL and database are configured there, once; "
        "asset metadata 'schema' names another database.",
    )

    batch_rows: int = Field(
        default=DEFAULT_BATCH_ROWS,
        gt=0,
        description="Rows per insert into the stage table, and per batch of an input loaded as pyarrow.RecordBatchReader.",
    )

    def type_handlers(self) -> Sequence[DbTypeHandler]:
        return [
            ClickHousePandasTypeHandler(self.batch_rows),
            ClickHouseArrowTypeHandler(self.batch_rows),
            ClickHouseStreamTypeHandler(self.clickhouse.clickhouse_url, self.clickhouse.database, self.batch_rows),
        ]

    @staticmethod
    def default_load_type() -> type | None:
        return pd.DataFrame

    def create_io_manager(self, context: InitResourceContext | None = None) -> DbIOManager:
        database = self.clickhouse.database or Settings().clickhouse_database
        return DbIOManager(
            type_handlers=self.type_handlers(),
            db_client=ClickHouseDbClient(self.clickhouse.clickhouse_url, database),
            database=database,
            schema=database,
            io_manager_name="ClickHouseIOManager",
            default_load_type=self.default_load_type(),
        )
