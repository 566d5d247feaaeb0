"""PostgreSQL IO manager on Dagster's ``DbIOManager`` framework.

One output is one transaction: ``DbIOManager.handle_output`` opens :meth:`PostgresDbClient.connect`
(a psycopg connection inside :meth:`PostgresStore.transaction`), deletes the slice, and the type
handler COPYs the new rows; both commit together, so a failure anywhere leaves the old rows.

Types: pandas ``DataFrame``, ``pyarrow.Table`` and, for slices too large to hold at once,
``pyarrow.RecordBatchReader``. An input annotated ``pa.RecordBatchReader`` streams the slice out
through ``COPY ... TO STDOUT`` in batches of at most ``batch_rows`` rows (IO manager config), on a
connection of its own that is released when the reader is exhausted or closed. An output may be
a ``RecordBatchReader`` or any iterator of ``pa.RecordBatch``/``pa.Table`` (one schema): each part
is COPYed as it comes, in the one transaction. (Return a generator as ``dg.Output(generator)``:
Dagster takes a bare returned generator for a stream of events.)

Asset definition metadata the IO manager reads:

``partition_expr``
    SQL expression (usually a column) holding the partition value; a ``{dimension: expr}`` mapping
    for multi-partitioned assets. A time window is compared according to the expression's type:
    a ``date`` against the window's dates in the partitions' time zone (the day 2024-01-01 of a
    partitions definition in America/New_York is ``date '2024-01-01'``), ``timestamptz`` as
    instants, ``timestamp`` (no zone) as UTC, an integer as ``YYYYMMDD``. Static and dynamic keys
    compare as ``expr IN ('a', 'b')``. An expression such as ``(event_time::date)`` works as well
    as a column.
``schema``
    Overrides the IO manager's ``schema`` config for this asset.
``columns`` (on an input)
    Load only these columns.
``write_mode``
    ``"replace"`` (default): delete the slice, COPY the rows. ``"upsert"``: no delete; rows go
    through :func:`kingtavo_pipeline.storage.upsert.upsert` keyed on ``upsert_keys`` (required),
    guarded by ``version_column`` (default ``"updated_at"``; ``None`` for no version guard), so an
    older version never overwrites a newer one.

A missing table is created from the Arrow schema (plus an index on plain partition columns, and in
upsert mode a unique constraint on the keys). Columns are never added: an output with columns the
table lacks fails with an error naming them. Loading a table that does not exist yet (the first
partition of an asset that reads its own previous partition) gives an empty result: no rows, and
the input's ``columns`` (typed ``null``) if it names any, else no columns.

Output metadata: ``dagster/partition_row_count`` is each partition's own row count, counted in
the written slice inside the transaction (see :func:`partition_count_metadata` for ranges);
``dagster/row_count`` is reported only where it is free and exact (an unpartitioned replace:
the rows written). Elsewhere counting the table would cost a scan on every write, so
``row_count_estimate`` carries PostgreSQL's planner estimate (``pg_class.reltuples``) once the
table has been analyzed.
"""

from __future__ import annotations

import collections.abc
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from dagster import (
    ConfigurableIOManagerFactory,
    InitResourceContext,
    InputContext,
    OutputContext,
    TableColumn,
    TableSchema,
)
from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.storage.db_io_manager import (
    DbClient,
    DbIOManager,
    DbTypeHandler,
    TableSlice,
)
from psycopg import sql
from pydantic import Field

from kingtavo_pipeline.io_managers.slices import (
    DEFAULT_BATCH_ROWS,
    KIND_DATE,
    KIND_INSTANT,
    KIND_NAIVE,
    KIND_YYYYMMDD,
    Buckets,
    boundary,
    closing_reader,
    describe_slice,
    empty_arrow,
    empty_reader,
    output_parts,
    partition_count_metadata,
    rebatch,
    slice_buckets,
    slice_id,
    tally,
)
from kingtavo_pipeline.resources import PostgresResource
from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.postgres import (
    PostgresStore,
    copy_arrow,
    copy_csv_options,
    copy_out_batches,
    copy_out_chunks,
    get_store,
    qualified,
    to_arrow,
)
from kingtavo_pipeline.storage.upsert import upsert

WRITE_MODE_REPLACE = "replace"
WRITE_MODE_UPSERT = "upsert"
DEFAULT_VERSION_COLUMN = "updated_at"

_PLAIN_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- asset metadata ----------------------------------------------------------------------------


def write_mode(metadata: Mapping[str, Any] | None) -> str:
    mode = (metadata or {}).get("write_mode", WRITE_MODE_REPLACE) or WRITE_MODE_REPLACE
    if mode not in (WRITE_MODE_REPLACE, WRITE_MODE_UPSERT):
        raise ValueError(f"write_mode must be {WRITE_MODE_REPLACE!r} or {WRITE_MODE_UPSERT!r}, not {mode!r}")
    return mode


def upsert_options(metadata: Mapping[str, Any] | None, table: str) -> tuple[list[str], str | None]:
    """``(upsert_keys, version_column)`` from asset metadata; the keys are required."""
    metadata = metadata or {}
    keys = metadata.get("upsert_keys")
    if isinstance(keys, str):
        keys = [keys]
    if not keys:
        raise ValueError(
            f"{table}: write_mode 'upsert' needs 'upsert_keys' metadata naming the unique key columns, "
            'e.g. metadata={"write_mode": "upsert", "upsert_keys": ["source_type", "source_name", "external_id"]}'
        )
    version = metadata.get("version_column", DEFAULT_VERSION_COLUMN)
    return [str(k) for k in keys], (str(version) if version else None)


def _metadata(context: OutputContext | InputContext) -> Mapping[str, Any]:
    return context.definition_metadata or {}


# --- slices in PostgreSQL ----------------------------------------------------------------------

_OID_KINDS = {1082: KIND_DATE, 1184: KIND_INSTANT, 1114: KIND_NAIVE, 20: KIND_YYYYMMDD, 21: KIND_YYYYMMDD, 23: KIND_YYYYMMDD}
_ARRAY_TYPES = {KIND_DATE: "date[]", KIND_NAIVE: "timestamp[]", KIND_YYYYMMDD: "bigint[]", KIND_INSTANT: "timestamptz[]"}


def slice_kinds(conn: psycopg.Connection, table_slice: TableSlice) -> list[str | None]:
    """Per partition dimension, how its time window compares (from the expression's result type,
    asked of the server without reading rows); ``None`` for key dimensions. The table must exist."""
    dims = list(table_slice.partition_dimensions or [])
    kinds: list[str | None] = [None] * len(dims)
    timed = [i for i, d in enumerate(dims) if isinstance(d.partitions, TimeWindow)]
    if not timed:
        return kinds
    query = sql.SQL("SELECT {} FROM {} LIMIT 0").format(
        sql.SQL(", ").join(sql.SQL("({})").format(sql.SQL(dims[i].partition_expr)) for i in timed), _target(table_slice)
    )
    with conn.cursor() as cur:
        cur.execute(query)
        for i, column in zip(timed, cur.description or []):
            kinds[i] = _OID_KINDS.get(column.type_code, KIND_INSTANT)
    return kinds


def slice_where(table_slice: TableSlice, kinds: Sequence[str | None] | None = None) -> sql.Composable | None:
    """The WHERE condition selecting the slice, or ``None`` for an unpartitioned asset.

    ``kinds`` (from :func:`slice_kinds`) says how each time window compares; without it windows
    compare as instants. ``partition_expr`` is trusted code from the asset definition (a column or
    an expression); partition values are always literals escaped by psycopg.
    """
    conditions: list[sql.Composable] = []
    for i, dim in enumerate(table_slice.partition_dimensions or []):
        expr = sql.SQL("({})").format(sql.SQL(dim.partition_expr))
        if isinstance(dim.partitions, TimeWindow):
            kind = kinds[i] if kinds else None
            conditions.append(
                sql.SQL("{e} >= {start} AND {e} < {end}").format(
                    e=expr,
                    start=sql.Literal(boundary(kind, dim.partitions.start)),
                    end=sql.Literal(boundary(kind, dim.partitions.end)),
                )
            )
        else:
            keys = list(dim.partitions)
            if not keys:
                conditions.append(sql.SQL("false"))
            else:
                conditions.append(
                    sql.SQL("{} IN ({})").format(expr, sql.SQL(", ").join(sql.Literal(str(k)) for k in keys))
                )
    if not conditions:
        return None
    return sql.SQL(" AND ").join(sql.SQL("({})").format(c) for c in conditions)


def _target(table_slice: TableSlice) -> sql.Composable:
    return qualified(table_slice.table, table_slice.schema)


def _select(
    table_slice: TableSlice, select_list: sql.Composable | None = None, kinds: Sequence[str | None] | None = None
) -> sql.Composable:
    if select_list is None:
        select_list = (
            sql.SQL(", ").join(sql.Identifier(c) for c in table_slice.columns) if table_slice.columns else sql.SQL("*")
        )
    query = sql.SQL("SELECT {} FROM {}").format(select_list, _target(table_slice))
    where = slice_where(table_slice, kinds)
    if where is not None:
        query = sql.SQL("{} WHERE {}").format(query, where)
    return query


def count_slice(
    conn: psycopg.Connection, table_slice: TableSlice, kinds: Sequence[str | None], buckets: Sequence[Buckets]
) -> tuple[dict[str, int], int]:
    """``({partition key: rows}, rows)`` of the slice as it stands in this transaction: one
    ``GROUP BY`` over the slice's rows only (``width_bucket`` finds a row's window)."""
    numbers: list[sql.Composable] = []
    params: list[Any] = []
    for dim, kind, b in zip(table_slice.partition_dimensions or [], kinds, buckets):
        expr = sql.SQL("({})").format(sql.SQL(dim.partition_expr))
        if b.thresholds is not None:
            array_type = sql.SQL(_ARRAY_TYPES.get(kind or "", "timestamptz[]"))
            numbers.append(sql.SQL("width_bucket({}, %s::{})").format(expr, array_type))
            params.append([boundary(kind, t) for t in b.thresholds])
        else:
            numbers.append(sql.SQL("array_position(%s::text[], ({})::text)").format(expr))
            params.append(list(b.keys))
    query = sql.SQL("SELECT {}, count(*) FROM {} WHERE {} GROUP BY {}").format(
        sql.SQL(", ").join(numbers),
        _target(table_slice),
        slice_where(table_slice, kinds),
        sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(numbers))),
    )
    rows = conn.execute(query, params).fetchall()
    counts, _ = tally(buckets, rows)
    return counts, sum(int(r[-1]) for r in rows)


# --- Arrow <-> PostgreSQL types ----------------------------------------------------------------


def postgres_type(arrow_type: pa.DataType) -> str:
    """The PostgreSQL column type for an Arrow type (nested values are stored as ``jsonb``)."""
    t = arrow_type
    if pa.types.is_dictionary(t):
        return postgres_type(t.value_type)
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_uint64(t):
        return "numeric(20, 0)"
    if pa.types.is_integer(t):
        return "bigint"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_decimal(t):
        return f"numeric({t.precision}, {t.scale})" if t.precision <= 1000 else "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) or _is_string_view(t):
        return "text"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytea"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_time(t):
        return "time"
    if pa.types.is_duration(t):
        return "interval"
    if pa.types.is_nested(t):
        return "jsonb"
    raise TypeError(f"no PostgreSQL type for Arrow type {t}; cast the column before returning it")


def _is_string_view(t: pa.DataType) -> bool:
    return getattr(pa.types, "is_string_view", lambda _t: False)(t)


def _read_spec(name: str, pg_type: str) -> tuple[sql.Composable, pa.DataType, str | None]:
    """(select expression, Arrow type to parse the CSV text as, post-processing) for one column."""
    ident = sql.Identifier(name)
    base = pg_type.split("(")[0].strip()
    if pg_type.endswith("[]"):
        return sql.SQL("to_json({})::text").format(ident), pa.string(), None
    if base in ("bigint",):
        return ident, pa.int64(), None
    if base == "integer":
        return ident, pa.int32(), None
    if base == "smallint":
        return ident, pa.int16(), None
    if base == "double precision":
        return ident, pa.float64(), None
    if base == "real":
        return ident, pa.float32(), None
    if base == "boolean":
        return ident, pa.bool_(), None
    if base == "numeric":
        match = re.match(r"numeric\((\d+),\s*(\d+)\)", pg_type)
        if match:
            precision, scale = int(match.group(1)), int(match.group(2))
            return ident, (pa.decimal128 if precision <= 38 else pa.decimal256)(precision, scale), None
        return ident, pa.string(), "decimal"
    if base == "date":
        return ident, pa.date32(), None
    if pg_type.startswith("timestamp") and pg_type.endswith("with time zone"):
        return sql.SQL("({} AT TIME ZONE 'UTC')").format(ident), pa.timestamp("us"), "utc"
    if pg_type.startswith("timestamp"):
        return ident, pa.timestamp("us"), None
    if pg_type.startswith("time") and pg_type.endswith("without time zone"):
        return ident, pa.time64("us"), None
    if base == "bytea":
        return ident, pa.string(), "bytea"
    return ident, pa.string(), None


def table_columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str] | None:
    """``{column: formatted type}`` in table order, or ``None`` if the table does not exist."""
    rows = conn.execute(
        """SELECT a.attname, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
              AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum""",
        (schema, table),
    ).fetchall()
    if not rows:
        exists = conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            (schema, table),
        ).fetchone()
        return {} if exists else None
    return {name: typ for name, typ in rows}


def _lock(conn: psycopg.Connection, what: str) -> None:
    """A transaction-scoped advisory lock, so concurrent first writes create a schema/table once."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"kingtavo_io_manager:{what}",))


def create_table(conn: psycopg.Connection, table_slice: TableSlice, schema: pa.Schema, unique: Sequence[str] = ()) -> None:
    """CREATE the slice's table from an Arrow schema (if nobody did meanwhile), indexed on the partition columns."""
    _lock(conn, f"table:{table_slice.schema}.{table_slice.table}")
    if table_columns(conn, table_slice.schema, table_slice.table) is not None:
        return
    definitions = [
        sql.SQL("{} {}{}").format(
            sql.Identifier(f.name), sql.SQL(postgres_type(f.type)), sql.SQL("" if f.nullable else " NOT NULL")
        )
        for f in schema
    ]
    if unique:
        definitions.append(sql.SQL("UNIQUE ({})").format(sql.SQL(", ").join(sql.Identifier(k) for k in unique)))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(_target(table_slice), sql.SQL(", ").join(definitions)))
    # Expression partition_exprs get no index: date casts of timestamptz are not immutable.
    index_columns = [
        dim.partition_expr.strip().strip('"')
        for dim in table_slice.partition_dimensions or []
        if _PLAIN_COLUMN.match(dim.partition_expr.strip().strip('"')) and dim.partition_expr.strip().strip('"') in schema.names
    ]
    if index_columns:
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier(f"{table_slice.table}_partition_idx"[:63]),
                _target(table_slice),
                sql.SQL(", ").join(sql.Identifier(c) for c in index_columns),
            )
        )


# --- the DbClient ------------------------------------------------------------------------------


def store_for(postgres_url: str | None) -> PostgresStore:
    """The store for a URL, or the configured one (started and migrated on first use in the process)."""
    return get_store(Settings(postgres_url=postgres_url) if postgres_url else Settings())


class PostgresDbClient(DbClient[psycopg.Connection]):
    """Connections, schemas and slice deletes for :class:`PostgresIOManager`."""

    def __init__(self, postgres_url: str | None = None):
        self.postgres_url = postgres_url
        # per table: how its time windows compared in the last write, for the "Query" metadata
        self._written_kinds: dict[tuple, list[str | None]] = {}

    def store(self) -> PostgresStore:
        """The configured store (started and migrated on first use in the process)."""
        return store_for(self.postgres_url)

    @contextmanager
    def connect(self, context: OutputContext | InputContext, table_slice: TableSlice) -> Iterator[psycopg.Connection]:
        with self.store().transaction() as conn:
            yield conn
            if isinstance(context, OutputContext) and table_columns(conn, table_slice.schema, table_slice.table) is not None:
                self._written_kinds[slice_id(table_slice)] = slice_kinds(conn, table_slice)

    @staticmethod
    def ensure_schema_exists(context: OutputContext, table_slice: TableSlice, connection: psycopg.Connection) -> None:
        exists = "SELECT 1 FROM pg_namespace WHERE nspname = %s"
        if connection.execute(exists, (table_slice.schema,)).fetchone():
            return
        _lock(connection, f"schema:{table_slice.schema}")
        if not connection.execute(exists, (table_slice.schema,)).fetchone():
            connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(table_slice.schema)))

    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection: psycopg.Connection) -> None:
        """DELETE the slice's rows (all rows when unpartitioned); nothing in upsert mode or without a table.

        Replacing writers of one table take turns (a transaction-scoped advisory lock): two runs
        replacing overlapping slices at once would otherwise each miss the other's uncommitted
        rows in their DELETE and leave both copies.
        """
        if write_mode(_metadata(context)) == WRITE_MODE_UPSERT:
            return
        _lock(connection, f"write:{table_slice.schema}.{table_slice.table}")
        if table_columns(connection, table_slice.schema, table_slice.table) is None:
            return
        statement = sql.SQL("DELETE FROM {}").format(_target(table_slice))
        where = slice_where(table_slice, slice_kinds(connection, table_slice))
        if where is not None:
            statement = sql.SQL("{} WHERE {}").format(statement, where)
        connection.execute(statement)

    def get_select_statement(self, table_slice: TableSlice) -> str:
        return _select(table_slice, kinds=self._written_kinds.get(slice_id(table_slice))).as_string()

    @staticmethod
    def get_table_name(table_slice: TableSlice) -> str:
        return f"{table_slice.schema}.{table_slice.table}"


# --- type handlers -----------------------------------------------------------------------------


class PostgresArrowTypeHandler(DbTypeHandler[pa.Table]):
    """Writes and loads ``pyarrow.Table`` slices (COPY in, COPY out)."""

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pa.Table]

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pa.Table, connection: psycopg.Connection
    ) -> Mapping[str, Any]:
        return write_arrow(context, table_slice, to_arrow(obj), connection)

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: psycopg.Connection) -> pa.Table:
        return read_arrow(table_slice, connection)


class PostgresPandasTypeHandler(DbTypeHandler[pd.DataFrame]):
    """Writes and loads ``pandas.DataFrame`` slices, through Arrow (the index is not stored)."""

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pd.DataFrame]

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pd.DataFrame, connection: psycopg.Connection
    ) -> Mapping[str, Any]:
        return write_arrow(context, table_slice, to_arrow(obj), connection)

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: psycopg.Connection) -> pd.DataFrame:
        return read_arrow(table_slice, connection).to_pandas()


class PostgresStreamTypeHandler(DbTypeHandler[pa.RecordBatchReader]):
    """Streams: loads a ``pyarrow.RecordBatchReader`` of at most ``batch_rows`` rows per batch, on a
    connection of its own (the IO manager's closes when ``load_input`` returns); writes a
    ``RecordBatchReader`` or an iterator of ``RecordBatch``/``Table``, part by part."""

    def __init__(self, postgres_url: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS):
        self.postgres_url = postgres_url
        self.batch_rows = batch_rows

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pa.RecordBatchReader, collections.abc.Iterator]

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: Any, connection: psycopg.Connection
    ) -> Mapping[str, Any]:
        schema, parts = output_parts(obj)
        return write_parts(context, table_slice, schema, parts, connection)

    def load_input(
        self, context: InputContext, table_slice: TableSlice, connection: psycopg.Connection
    ) -> pa.RecordBatchReader:
        return stream_arrow(table_slice, connection, store_for(self.postgres_url), self.batch_rows)


def write_arrow(
    context: OutputContext, table_slice: TableSlice, arrow: pa.Table, conn: psycopg.Connection
) -> dict[str, Any]:
    """Write ``arrow`` into the slice inside the caller's transaction; returns the output metadata."""
    return write_parts(context, table_slice, arrow.schema, iter([arrow]), conn)


def write_parts(
    context: OutputContext,
    table_slice: TableSlice,
    schema: pa.Schema | None,
    parts: Iterator[pa.Table],
    conn: psycopg.Connection,
) -> dict[str, Any]:
    """Write the parts into the slice inside the caller's transaction (COPY or upsert part by part),
    then count the slice's partitions; returns the output metadata. ``schema`` is ``None`` only
    for an output without parts."""
    metadata = _metadata(context)
    mode = write_mode(metadata)
    name = f"{table_slice.schema}.{table_slice.table}"
    keys: list[str] = []
    version_column: str | None = None
    if mode == WRITE_MODE_UPSERT:
        keys, version_column = upsert_options(metadata, name)

    columns = table_columns(conn, table_slice.schema, table_slice.table)
    if columns is None and schema is not None:
        create_table(conn, table_slice, schema, unique=keys)
        columns = table_columns(conn, table_slice.schema, table_slice.table) or {}
    if schema is not None:
        extra = [c for c in schema.names if c not in (columns or {})]
        if extra:
            raise ValueError(
                f"{name} has no column(s) {extra}; the IO manager does not add columns. Add them with a "
                f"migration in sql/postgres/, or drop them from the output. Table columns: {list(columns or {})}"
            )

    written = inserted = updated = 0
    for arrow in parts:
        if mode == WRITE_MODE_UPSERT:
            result = upsert(conn, name, arrow, keys, version_column=version_column)
            inserted += result.inserted
            updated += result.updated
        elif arrow.num_rows:
            copy_arrow(conn, _target(table_slice), arrow, arrow.column_names)
        written += arrow.num_rows

    result_metadata: dict[str, Any] = {"write_mode": mode, "rows_written": written}
    if mode == WRITE_MODE_UPSERT:
        result_metadata.update(
            {"rows_inserted": inserted, "rows_updated": updated, "rows_unchanged": written - inserted - updated}
        )
    if columns is None:  # no parts and no table: nothing was created, nothing replaced
        if table_slice.partition_dimensions:
            result_metadata.update(partition_count_metadata(context, {}))
        return result_metadata

    if table_slice.partition_dimensions:
        kinds = slice_kinds(conn, table_slice)
        counts, in_slice = count_slice(conn, table_slice, kinds, slice_buckets(context))
        # The slice was emptied by the DELETE (and replacing writers take turns), so every row
        # written that the slice does not hold lies outside it: it would escape the next
        # re-run's delete and be duplicated.
        if mode == WRITE_MODE_REPLACE and in_slice < written:
            raise ValueError(
                f"{written - in_slice} of {written} rows written to {name} lie outside the partition(s) being "
                f"written ({describe_slice(table_slice)}). Rows outside the slice would escape the next "
                "re-run's delete and be duplicated; filter them out or fix partition_expr."
            )
        result_metadata.update(partition_count_metadata(context, counts))
    elif mode == WRITE_MODE_REPLACE:
        result_metadata["dagster/row_count"] = written
    estimate = conn.execute(
        "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", (_target(table_slice).as_string(conn),)
    ).fetchone()
    if estimate and estimate[0] >= 0 and "dagster/row_count" not in result_metadata:
        result_metadata["row_count_estimate"] = int(estimate[0])
    result_metadata["dagster/column_schema"] = TableSchema(
        columns=[TableColumn(name=c, type=t) for c, t in columns.items()]
    )
    return result_metadata


# --- reads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ReadPlan:
    query: sql.Composable
    names: list[str]
    parse_schema: pa.Schema
    post: dict[str, str]


def _read_plan(table_slice: TableSlice, conn: psycopg.Connection) -> _ReadPlan | None:
    """The COPY query and parsing of a slice, or ``None`` when the table does not exist."""
    columns = table_columns(conn, table_slice.schema, table_slice.table)
    if columns is None:
        return None
    name = f"{table_slice.schema}.{table_slice.table}"
    wanted = list(table_slice.columns or columns)
    unknown = [c for c in wanted if c not in columns]
    if unknown:
        raise ValueError(f"{name} has no column(s) {unknown}; it has {list(columns)}")
    specs = {c: _read_spec(c, columns[c]) for c in wanted}
    query = _select(table_slice, sql.SQL(", ").join(spec[0] for spec in specs.values()), slice_kinds(conn, table_slice))
    return _ReadPlan(
        query=query,
        names=wanted,
        parse_schema=pa.schema([(c, specs[c][1]) for c in wanted]),
        post={c: specs[c][2] for c in wanted if specs[c][2]},
    )


def _copy_out(conn: psycopg.Connection, plan: _ReadPlan):
    """The chunks of ``COPY (<plan's query>) TO STDOUT (FORMAT CSV)``, as the server sends them."""
    return copy_out_chunks(conn, plan.query)


def _csv_options(plan: _ReadPlan) -> dict[str, Any]:
    return copy_csv_options(plan.parse_schema)


def _copy_batches(conn: psycopg.Connection, plan: _ReadPlan, block_size: int) -> Iterator[pa.RecordBatch]:
    """The slice as parsed CSV batches (about ``block_size`` bytes each), parsed as it arrives."""
    return copy_out_batches(conn, plan.query, plan.parse_schema, block_size=block_size)


# The stream's schema is fixed before any row is read, so an unconstrained numeric gets a fixed
# decimal type there (the whole-table read sizes it to the data).
STREAM_DECIMAL = pa.decimal128(38, 9)


def _post_process(arrow: pa.Table, post: Mapping[str, str], streaming: bool) -> pa.Table:
    for c, how in post.items():
        i = arrow.column_names.index(c)
        column = arrow.column(i)
        if how == "utc":
            column = pc.cast(column, pa.timestamp("us", "UTC"))
        elif how == "decimal" and streaming:
            column = pc.cast(column, STREAM_DECIMAL)
        elif how == "decimal":
            values = [None if v is None else Decimal(v) for v in column.to_pylist()]
            column = pa.array(values) if any(v is not None for v in values) else pa.array(values, pa.decimal128(38, 9))
        elif how == "bytea":
            column = pa.array([None if v is None else bytes.fromhex(v[2:]) for v in column.to_pylist()], pa.binary())
        arrow = arrow.set_column(i, c, column)
    return arrow


def _stream_schema(plan: _ReadPlan) -> pa.Schema:
    types = {"utc": pa.timestamp("us", "UTC"), "decimal": STREAM_DECIMAL, "bytea": pa.binary()}
    return pa.schema([(f.name, types[plan.post[f.name]] if f.name in plan.post else f.type) for f in plan.parse_schema])


def read_arrow(table_slice: TableSlice, conn: psycopg.Connection) -> pa.Table:
    """SELECT the slice into Arrow through ``COPY ... TO STDOUT (FORMAT CSV)`` with typed parsing.

    Types: integers, floats, booleans, dates, ``numeric(p, s)`` (decimal), ``timestamp`` (naive),
    ``timestamptz`` (UTC), ``time`` and ``bytea`` keep their type; unconstrained ``numeric``
    becomes a decimal sized to the data; ``json``/``jsonb``/arrays come back as JSON text, and
    anything else as text. A table that does not exist yet gives :func:`empty_arrow`.
    """
    plan = _read_plan(table_slice, conn)
    if plan is None:
        return empty_arrow(table_slice)
    buf = io.BytesIO()
    with _copy_out(conn, plan) as chunks:
        for chunk in chunks:
            buf.write(chunk)
    if buf.tell() == 0:
        arrow = plan.parse_schema.empty_table()
    else:  # all of it at once: the multi-threaded parser
        buf.seek(0)
        read_options = pacsv.ReadOptions(column_names=plan.names, block_size=1 << 24)
        arrow = pacsv.read_csv(buf, read_options=read_options, **_csv_options(plan))
    return _post_process(arrow, plan.post, streaming=False)


def stream_arrow(
    table_slice: TableSlice, conn: psycopg.Connection, store: PostgresStore, batch_rows: int
) -> pa.RecordBatchReader:
    """The slice as a reader of batches of at most ``batch_rows`` rows, as :func:`read_arrow` types
    them (but see :data:`STREAM_DECIMAL`). The plan is made on ``conn``; the rows come through a
    transaction of the reader's own, closed when it is exhausted or closed."""
    plan = _read_plan(table_slice, conn)
    if plan is None:
        return empty_reader(empty_arrow(table_slice).schema)
    schema = _stream_schema(plan)

    def batches() -> Iterator[Any]:
        with store.transaction() as own:
            yield schema
            parsed = _copy_batches(own, plan, block_size=1 << 20)
            typed = (
                b for raw in parsed for b in _post_process(pa.Table.from_batches([raw]), plan.post, True).to_batches()
            )
            try:
                yield from rebatch(typed, batch_rows)
            finally:
                parsed.close()  # end the COPY before the transaction ends (a reader closed early)

    return closing_reader(batches())


# --- the IO manager ----------------------------------------------------------------------------


class PostgresIOManager(ConfigurableIOManagerFactory):
    """Stores pandas DataFrames and Arrow tables in PostgreSQL, one table per asset, and streams
    ``pyarrow.RecordBatchReader`` in and out.

    A partition is replaced in one transaction (DELETE of the slice + COPY); with asset metadata
    ``write_mode: "upsert"`` rows are upserted on ``upsert_keys`` instead. See the module docstring
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


__all__ = [
    "DEFAULT_VERSION_COLUMN",
    "WRITE_MODE_REPLACE",
    "WRITE_MODE_UPSERT",
    "PostgresArrowTypeHandler",
    "PostgresDbClient",
    "PostgresIOManager",
    "PostgresPandasTypeHandler",
    "PostgresStreamTypeHandler",
]
