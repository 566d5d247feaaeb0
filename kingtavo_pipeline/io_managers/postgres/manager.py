"""The PostgreSQL IO manager: its DbClient (connections, schemas, the DELETE of a slice), its type
handlers and the configurable factory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
from dagster import ConfigurableIOManagerFactory, InitResourceContext, InputContext, OutputContext
from dagster._core.storage.db_io_manager import DbIOManager, DbTypeHandler, TableSlice
from psycopg import sql
from pydantic import Field

from kingtavo_pipeline.io_managers.framework import (
    ArrowTypeHandler,
    PandasTypeHandler,
    SliceDbClient,
    SliceOperations,
    StreamTypeHandler,
)
from kingtavo_pipeline.io_managers.postgres.ddl import advisory_lock, table_columns
from kingtavo_pipeline.io_managers.postgres.query import POSTGRES, select_slice, slice_kinds, target_table
from kingtavo_pipeline.io_managers.postgres.read import read_arrow, stream_arrow
from kingtavo_pipeline.io_managers.postgres.write import WRITE_MODE_UPSERT, asset_metadata, write_mode, write_parts
from kingtavo_pipeline.io_managers.slices import DEFAULT_BATCH_ROWS
from kingtavo_pipeline.resources import PostgresResource
from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.postgres import PostgresStore, get_store

# --- the DbClient ------------------------------------------------------------------------------


def store_for(postgres_url: str | None) -> PostgresStore:
    """The store for a URL, or the configured one (started and migrated on first use in the process)."""
    return get_store(Settings(postgres_url=postgres_url) if postgres_url else Settings())


class PostgresDbClient(SliceDbClient[psycopg.Connection]):
    """Connections, schemas and slice deletes for :class:`PostgresIOManager`."""

    def __init__(self, postgres_url: str | None = None):
        super().__init__()
        self.postgres_url = postgres_url

    def store(self) -> PostgresStore:
        """The configured store (started and migrated on first use in the process)."""
        return store_for(self.postgres_url)

    @contextmanager
    def connect(self, context: OutputContext | InputContext, table_slice: TableSlice) -> Iterator[psycopg.Connection]:
        with self.store().transaction() as conn:
            yield conn
            if isinstance(context, OutputContext) and table_columns(conn, table_slice.schema, table_slice.table) is not None:
                self.remember_kinds(table_slice, slice_kinds(conn, table_slice))

    @staticmethod
    def ensure_schema_exists(context: OutputContext, table_slice: TableSlice, connection: psycopg.Connection) -> None:
        exists = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
        if connection.execute(exists, (table_slice.schema,)).fetchone():
            return
        advisory_lock(connection, f"schema:{table_slice.schema}")
        if not connection.execute(exists, (table_slice.schema,)).fetchone():
            connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table_slice.schema)))

    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection: psycopg.Connection) -> None:
        """DELETE the slice's rows (all rows when unpartitioned); nothing in upsert mode or without a table.

        Replacing writers of one table take turns (a transaction-scoped advisory lock): two runs
        replacing overlapping slices at once would otherwise each miss the other's uncommitted
        rows in their DELETE and leave both copies.
        """
        if write_mode(asset_metadata(context)) == WRITE_MODE_UPSERT:
            return
        advisory_lock(connection, f"write:{table_slice.schema}.{table_slice.table}")
        if table_columns(connection, table_slice.schema, table_slice.table) is None:
            return
        statement = sql.SQL("DELETE FROM {}").format(target_table(table_slice))
        connection.execute(POSTGRES.filtered(statement, table_slice, slice_kinds(connection, table_slice)))

    def get_select_statement(self, table_slice: TableSlice) -> str:
        return select_slice(table_slice, kinds=self.written_kinds(table_slice)).as_string()


# --- type handlers -----------------------------------------------------------------------------


class PostgresOperations(SliceOperations):
    """The PostgreSQL side of the type handlers: COPY in (or upsert), COPY out, streamed COPY out
    on a connection of the stream's own."""

    def __init__(self, postgres_url: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS):
        self.postgres_url = postgres_url
        self.batch_rows = batch_rows

    def write_parts(self, context, table_slice, schema, parts, connection) -> dict[str, Any]:
        return write_parts(context, table_slice, schema, parts, connection)

    def read_arrow(self, context, table_slice, connection) -> pa.Table:
        return read_arrow(table_slice, connection)

    def stream_arrow(self, context, table_slice, connection) -> pa.RecordBatchReader:
        return stream_arrow(table_slice, connection, store_for(self.postgres_url), self.batch_rows)


class PostgresArrowTypeHandler(PostgresOperations, ArrowTypeHandler):
    """Writes and loads ``pyarrow.Table`` slices (COPY in, COPY out)."""


class PostgresPandasTypeHandler(PostgresOperations, PandasTypeHandler):
    """Writes and loads ``pandas.DataFrame`` slices, through Arrow (the index is not stored)."""


class PostgresStreamTypeHandler(PostgresOperations, StreamTypeHandler):
    """Streams: loads a ``pyarrow.RecordBatchReader`` of at most ``batch_rows`` rows per batch, on a
    connection of its own (the IO manager's closes when ``load_input`` returns); writes a
    ``RecordBatchReader`` or an iterator of ``RecordBatch``/``Table``, part by part."""


# --- the IO manager ----------------------------------------------------------------------------


class PostgresIOManager(ConfigurableIOManagerFactory):
    """Stores pandas DataFrames and Arrow tables in PostgreSQL, one table per asset, and streams
    ``pyarrow.RecordBatchReader`` in and out.

    A partition is replaced in one transaction (DELETE of the slice + COPY); with asset metadata
    ``write_mode: "upsert"`` rows are upserted on ``upsert_keys`` instead. See the package docstring
    for the metadata conventions (``partition_expr``, ``schema``, ``columns``, ``write_mode``,
    ``upsert_keys``, ``version_column``).
    """

    postgres: PostgresResource = Field(
        description="The operational store (the `postgres` resource): its URL is configured there, once.",
    )
    schema_: str | None = Field(
        default="public",
        alias="schema",
        description="Schema for the tables (asset metadata 'schema' overrides it); null uses the asset key prefix.",
    )

    batch_rows: int = Field(
        default=DEFAULT_BATCH_ROWS,
        gt=0,
        description="Rows per batch of an input loaded as pyarrow.RecordBatchReader.",
    )

    def type_handlers(self) -> Sequence[DbTypeHandler]:
        return [
            PostgresPandasTypeHandler(),
            PostgresArrowTypeHandler(),
            PostgresStreamTypeHandler(self.postgres.postgres_url, self.batch_rows),
        ]

    @staticmethod
    def default_load_type() -> type | None:
        return pd.DataFrame

    def create_io_manager(self, context: InitResourceContext | None = None) -> DbIOManager:
        return DbIOManager(
            type_handlers=self.type_handlers(),
            db_client=PostgresDbClient(self.postgres.postgres_url),
            database=_database_name(self.postgres.postgres_url),
            schema=self.schema_,
            io_manager_name="PostgresIOManager",
            default_load_type=self.default_load_type(),
        )


def _database_name(url: str | None) -> str:
    """The database named in the URL (for display only; nothing connects here)."""
    url = url or Settings().postgres_url
    if not url:
        from kingtavo_pipeline.storage.postgres import EMBEDDED_DATABASE

        return EMBEDDED_DATABASE
    try:
        return psycopg.conninfo.conninfo_to_dict(url).get("dbname") or "postgres"
    except psycopg.ProgrammingError:
        return "postgres"
