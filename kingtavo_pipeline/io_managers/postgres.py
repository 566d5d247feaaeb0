"""PostgreSQL IO manager on Dagster's ``DbIOManager`` framework.

One output is one transaction: ``DbIOManager.handle_output`` opens :meth:`PostgresDbClient.connect`
(a psycopg connection inside :meth:`PostgresStore.transaction`), deletes the slice, and the type
handler COPYs the new rows; both commit together, so a failure anywhere leaves the old rows.

Asset definition metadata the IO manager reads:

``partition_expr``
    SQL expression (usually a column) holding the partition value; a ``{dimension: expr}`` mapping
    for multi-partitioned assets. Time windows compare as ``expr >= start AND expr < end`` with
    UTC timestamps (every session runs in ``TimeZone=UTC``, so ``date`` columns compare right);
    static and dynamic keys as ``expr IN ('a', 'b')``.
``schema``
    Overrides the IO manager's ``schema`` config for this asset.
``columns`` (on an input)
    Load only these columns.
``write_mode``
    ``"replace"`` (default): delete the slice, COPY the rows. ``"upsert"``: no delete; rows go
    through :func:`kingtavo_pipeline.storage.upsert.upsert` keyed on ``upsert_keys`` (required),
    guarded by ``version_column`` (default ``"updated_at"``; ``None`` for no version guard), so an
    older version never overwrites a newer one.

A missing table is created from the Arrow schema (plus an index on the partition columns, and in
upsert mode a unique constraint on the keys). Columns are never added: an output with columns the
table lacks fails with an error naming them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
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
from dagster._core.storage.db_io_manager import DbClient, DbIOManager, DbTypeHandler, TableSlice
from psycopg import sql
from pydantic import Field

from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.postgres import (
    PostgresStore,
    copy_arrow,
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


# --- slices ------------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def slice_where(table_slice: TableSlice) -> sql.Composable | None:
    """The WHERE condition selecting the slice, or ``None`` for an unpartitioned asset.

    ``partition_expr`` is trusted code from the asset definition (a column or an expression);
    partition values are always literals escaped by psycopg.
    """
    conditions: list[sql.Composable] = []
    for dim in table_slice.partition_dimensions or []:
        expr = sql.SQL("({})").format(sql.SQL(dim.partition_expr))
        if isinstance(dim.partitions, TimeWindow):
            conditions.append(
                sql.SQL("{e} >= {start} AND {e} < {end}").format(
                    e=expr, start=sql.Literal(_utc(dim.partitions.start)), end=sql.Literal(_utc(dim.partitions.end))
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


def _select(table_slice: TableSlice, select_list: sql.Composable | None = None) -> sql.Composable:
    if select_list is None:
        select_list = (
            sql.SQL(", ").join(sql.Identifier(c) for c in table_slice.columns) if table_slice.columns else sql.SQL("*")
        )
    query = sql.SQL("SELECT {} FROM {}").format(select_list, _target(table_slice))
    where = slice_where(table_slice)
    if where is not None:
        query = sql.SQL("{} WHERE {}").format(query, where)
    return query


def rows_outside_slice(arrow: pa.Table, table_slice: TableSlice) -> int:
    """Rows of ``arrow`` that cannot belong to the slice, judged on plain-column ``partition_expr``s.

    Such rows would escape the slice delete on the next run of the partition and be duplicated.
    Dimensions on SQL expressions (or on columns of types Arrow cannot compare here) are not judged.
    """
    inside = None
    for dim in table_slice.partition_dimensions or []:
        name = dim.partition_expr.strip().strip('"')
        if not _PLAIN_COLUMN.match(name) or name not in arrow.column_names:
            continue
        column = arrow.column(name)
        try:
            if isinstance(dim.partitions, TimeWindow):
                t = column.type
                if pa.types.is_date(t):
                    column = pc.cast(column, pa.timestamp("us", "UTC"))
                elif pa.types.is_timestamp(t):
                    column = pc.cast(column, pa.timestamp(t.unit, "UTC")) if t.tz is None else column
                else:
                    continue
                start = pa.scalar(_utc(dim.partitions.start), column.type)
                end = pa.scalar(_utc(dim.partitions.end), column.type)
                ok = pc.and_(pc.greater_equal(column, start), pc.less(column, end))
            else:
                ok = pc.is_in(pc.cast(column, pa.string()), value_set=pa.array([str(k) for k in dim.partitions], pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError):
            continue
        ok = pc.fill_null(ok, False)
        inside = ok if inside is None else pc.and_(inside, ok)
    if inside is None:
        return 0
    return arrow.num_rows - pc.sum(pc.cast(inside, pa.int64())).as_py() if arrow.num_rows else 0


def _describe_slice(table_slice: TableSlice) -> str:
    parts = []
    for dim in table_slice.partition_dimensions or []:
        if isinstance(dim.partitions, TimeWindow):
            parts.append(f"{dim.partition_expr} in [{_utc(dim.partitions.start).isoformat()}, {_utc(dim.partitions.end).isoformat()})")
        else:
            parts.append(f"{dim.partition_expr} in {list(dim.partitions)}")
    return " and ".join(parts) or "the whole table"


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


class PostgresDbClient(DbClient[psycopg.Connection]):
    """Connections, schemas and slice deletes for :class:`PostgresIOManager`."""

    def __init__(self, postgres_url: str | None = None):
        self.postgres_url = postgres_url

    def store(self) -> PostgresStore:
        """The configured store (started and migrated on first use in the process)."""
        return get_store(Settings(postgres_url=self.postgres_url) if self.postgres_url else Settings())

    @contextmanager
    def connect(self, context: OutputContext | InputContext, table_slice: TableSlice) -> Iterator[psycopg.Connection]:
        with self.store().transaction() as conn:
            yield conn

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
        where = slice_where(table_slice)
        if where is not None:
            statement = sql.SQL("{} WHERE {}").format(statement, where)
        connection.execute(statement)

    @staticmethod
    def get_select_statement(table_slice: TableSlice) -> str:
        return _select(table_slice).as_string()

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


def write_arrow(
    context: OutputContext, table_slice: TableSlice, arrow: pa.Table, conn: psycopg.Connection
) -> dict[str, Any]:
    """Write ``arrow`` into the slice inside the caller's transaction; returns the output metadata."""
    metadata = _metadata(context)
    mode = write_mode(metadata)
    name = f"{table_slice.schema}.{table_slice.table}"
    keys: list[str] = []
    version_column: str | None = None
    if mode == WRITE_MODE_UPSERT:
        keys, version_column = upsert_options(metadata, name)

    columns = table_columns(conn, table_slice.schema, table_slice.table)
    if columns is None:
        create_table(conn, table_slice, arrow.schema, unique=keys)
        columns = table_columns(conn, table_slice.schema, table_slice.table) or {}
    extra = [c for c in arrow.column_names if c not in columns]
    if extra:
        raise ValueError(
            f"{name} has no column(s) {extra}; the IO manager does not add columns. "
            f"Add them with a migration in sql/postgres/, or drop them from the output. Table columns: {list(columns)}"
        )

    result_metadata: dict[str, Any] = {"write_mode": mode}
    if mode == WRITE_MODE_UPSERT:
        result = upsert(conn, name, arrow, keys, version_column=version_column)
        result_metadata.update(
            {"rows_inserted": result.inserted, "rows_updated": result.updated, "rows_unchanged": result.unchanged}
        )
    else:
        outside = rows_outside_slice(arrow, table_slice)
        if outside:
            raise ValueError(
                f"{outside} of {arrow.num_rows} rows written to {name} lie outside the partition(s) being "
                f"written ({_describe_slice(table_slice)}). Rows outside the slice would escape the next "
                "re-run's delete and be duplicated; filter them out or fix partition_expr."
            )
        if arrow.num_rows:
            copy_arrow(conn, _target(table_slice), arrow, arrow.column_names)

    (row_count,) = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_target(table_slice))).fetchone()
    result_metadata["dagster/row_count"] = row_count
    if table_slice.partition_dimensions:
        result_metadata["dagster/partition_row_count"] = arrow.num_rows
    result_metadata["dagster/column_schema"] = TableSchema(
        columns=[TableColumn(name=c, type=t) for c, t in columns.items()]
    )
    return result_metadata


def read_arrow(table_slice: TableSlice, conn: psycopg.Connection) -> pa.Table:
    """SELECT the slice into Arrow through ``COPY ... TO STDOUT (FORMAT CSV)`` with typed parsing.

    Types: integers, floats, booleans, dates, ``numeric(p, s)`` (decimal), ``timestamp`` (naive),
    ``timestamptz`` (UTC), ``time`` and ``bytea`` keep their type; unconstrained ``numeric``
    becomes a decimal sized to the data; ``json``/``jsonb``/arrays come back as JSON text, and
    anything else as text.
    """
    columns = table_columns(conn, table_slice.schema, table_slice.table)
    name = f"{table_slice.schema}.{table_slice.table}"
    if columns is None:
        raise ValueError(f"{name} does not exist; materialize its asset first")
    wanted = list(table_slice.columns or columns)
    unknown = [c for c in wanted if c not in columns]
    if unknown:
        raise ValueError(f"{name} has no column(s) {unknown}; it has {list(columns)}")
    specs = {c: _read_spec(c, columns[c]) for c in wanted}
    query = _select(table_slice, sql.SQL(", ").join(spec[0] for spec in specs.values()))
    conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
    buf = io.BytesIO()
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT CSV)").format(query)) as copy:
        for chunk in copy:
            buf.write(chunk)
    schema = pa.schema([(c, specs[c][1]) for c in wanted])
    if buf.tell() == 0:
        arrow = schema.empty_table()
    else:
        buf.seek(0)
        arrow = pacsv.read_csv(
            buf,
            read_options=pacsv.ReadOptions(column_names=wanted, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=schema,
                null_values=[""],
                true_values=["t"],
                false_values=["f"],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    for c in wanted:
        post = specs[c][2]
        if post is None:
            continue
        i = arrow.column_names.index(c)
        column = arrow.column(i)
        if post == "utc":
            column = pc.cast(column, pa.timestamp("us", "UTC"))
        elif post == "decimal":
            values = [None if v is None else Decimal(v) for v in column.to_pylist()]
            column = pa.array(values) if any(v is not None for v in values) else pa.array(values, pa.decimal128(38, 9))
        elif post == "bytea":
            column = pa.array([None if v is None else bytes.fromhex(v[2:]) for v in column.to_pylist()], pa.binary())
        arrow = arrow.set_column(i, c, column)
    return arrow


# --- the IO manager ----------------------------------------------------------------------------


class PostgresIOManager(ConfigurableIOManagerFactory):
    """Stores pandas DataFrames and Arrow tables in PostgreSQL, one table per asset.

    A partition is replaced in one transaction (DELETE of the slice + COPY); with asset metadata
    ``write_mode: "upsert"`` rows are upserted on ``upsert_keys`` instead. See the module docstring
    for the metadata conventions (``partition_expr``, ``schema``, ``columns``, ``write_mode``,
    ``upsert_keys``, ``version_column``).
    """

    postgres_url: str | None = Field(
        default=None,
        description="postgresql:// URL; unset uses the configured store (KINGTAVO_POSTGRES_URL, else the embedded server).",
    )
    schema_: str | None = Field(
        default="public",
        alias="schema",
        description="Schema for the tables (asset metadata 'schema' overrides it); null uses the asset key prefix.",
    )

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return [PostgresPandasTypeHandler(), PostgresArrowTypeHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        return pd.DataFrame

    def create_io_manager(self, context: InitResourceContext | None = None) -> DbIOManager:
        return DbIOManager(
            type_handlers=self.type_handlers(),
            db_client=PostgresDbClient(self.postgres_url),
            database=_database_name(self.postgres_url),
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
]
