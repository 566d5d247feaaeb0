"""ClickHouse IO manager on Dagster's ``DbIOManager`` framework: partition-scoped atomic replace.

Writing a slice never runs ``ALTER TABLE ... DELETE`` (a mutation). The type handler writes the new
rows into a fresh stage table (``CREATE TABLE <db>.<table>__stage_<hex> AS <db>.<table>``), checks
that they all lie inside the slice, then per ClickHouse partition id:

* ``ALTER TABLE target REPLACE PARTITION ID '<id>' FROM stage`` for every id the new rows fill
  (atomic per partition: readers see the old rows or the new ones, never a mix);
* ``ALTER TABLE target DROP PARTITION ID '<id>'`` for every id of the slice the new rows leave
  empty (REPLACE refuses an empty source).

Before touching anything it verifies that the target's rows in those partition ids all lie inside
the slice; if not, the table's ``PARTITION BY`` is coarser than the asset's partitions and the
write fails instead of destroying neighbouring data. The stage table is dropped in ``finally``
(a ``__stage_`` table left by a killed process is safe to drop).

The DbIOManager "schema" is the ClickHouse database (the IO manager's ``database`` config, or
asset metadata ``schema``), whatever the asset key prefix.

Tables come from our DDL: a table created by ``sql/clickhouse`` migrations is used as it is. A
missing one is created from the Arrow schema:

* ``ENGINE = ReplacingMergeTree(_version)``;
* ``ORDER BY`` from asset metadata ``order_by`` (a column list or one expression), **required** to
  create a table: it is the deduplication key of ReplacingMergeTree, so there is no safe default.
  The PARTITION BY expressions are put in front of it (``ORDER BY (toDate(day), shop, id)`` for
  ``order_by: [shop, id]``), because ``SELECT ... FINAL`` deduplicates *across* partitions: without
  them, rows of two days sharing ``(shop, id)`` would collapse into one. (A table that should
  deduplicate across partitions, like ``unified_items``, is created by a migration.);
* ``PARTITION BY`` following the asset's partitions: a daily (or coarser) time window ->
  ``toDate(expr)``, an hourly one -> ``toStartOfHour(expr)``; static/dynamic -> ``expr``;
  multi-dimensional -> a tuple of those; unpartitioned -> none;
* column types mapped from Arrow, ``Nullable`` where the field is nullable, except the ORDER BY
  and partition columns (ClickHouse keys cannot be Nullable); timestamps are stored as
  ``DateTime64(p, tz)`` with naive timestamps taken as UTC; structs and maps are stored as JSON text.

``_version UInt64`` is set to ``time.time_ns()`` on write when the output lacks it, and left out on
load unless the input's ``columns`` metadata asks for it. Loads read ``FINAL``.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.binding import format_str, quote_identifier
from clickhouse_connect.driver.client import Client
from dagster import (
    ConfigurableIOManagerFactory,
    InitResourceContext,
    InputContext,
    MultiPartitionsDefinition,
    OutputContext,
    TableColumn,
    TableSchema,
    TimeWindowPartitionsDefinition,
)
from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.storage.db_io_manager import DbClient, DbIOManager, DbTypeHandler, TableSlice
from pydantic import Field

from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.clickhouse import connect_clickhouse
from kingtavo_pipeline.storage.migrations import migrate_clickhouse
from kingtavo_pipeline.storage.postgres import to_arrow

VERSION_COLUMN = "_version"
STAGE_MARKER = "__stage_"

_PLAIN_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FINAL_ENGINES = re.compile(r"^(Shared|Replicated)?(Replacing|Collapsing|VersionedCollapsing|Aggregating|Summing)MergeTree$")


class PartitionLayoutError(ValueError):
    """The table's PARTITION BY cannot hold the asset's partitions apart."""


def _q(identifier: str) -> str:
    return quote_identifier(identifier)


def _table(table_slice: TableSlice, table: str | None = None) -> str:
    return f"{_q(table_slice.schema)}.{_q(table or table_slice.table)}"


def _plain(expr: str) -> str | None:
    name = expr.strip().strip("`")
    return name if _PLAIN_COLUMN.match(name) else None


# --- slices ------------------------------------------------------------------------------------


def _utc_literal(value: datetime) -> str:
    value = value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return f"toDateTime64('{value.strftime('%Y-%m-%d %H:%M:%S.%f')}', 6, 'UTC')"


def slice_where(table_slice: TableSlice) -> str | None:
    """The WHERE condition selecting the slice (time windows in UTC, keys escaped), or ``None``."""
    conditions = []
    for dim in table_slice.partition_dimensions or []:
        expr = f"({dim.partition_expr})"
        if isinstance(dim.partitions, TimeWindow):
            conditions.append(
                f"{expr} >= {_utc_literal(dim.partitions.start)} AND {expr} < {_utc_literal(dim.partitions.end)}"
            )
        else:
            keys = [format_str(str(k)) for k in dim.partitions]
            conditions.append(f"{expr} IN ({', '.join(keys)})" if keys else "0")
    return " AND ".join(f"({c})" for c in conditions) if conditions else None


def _describe_slice(table_slice: TableSlice) -> str:
    parts = []
    for dim in table_slice.partition_dimensions or []:
        if isinstance(dim.partitions, TimeWindow):
            parts.append(f"{dim.partition_expr} in [{dim.partitions.start.isoformat()}, {dim.partitions.end.isoformat()})")
        else:
            parts.append(f"{dim.partition_expr} in {list(dim.partitions)}")
    return " and ".join(parts) or "the whole table"


def _select(table_slice: TableSlice, columns: Sequence[str] | None, final: bool = True) -> str:
    select_list = ", ".join(_q(c) for c in columns) if columns else "*"
    query = f"SELECT {select_list} FROM {_table(table_slice)}{' FINAL' if final else ''}"
    where = slice_where(table_slice)
    return f"{query} WHERE {where}" if where else query


# --- Arrow -> ClickHouse DDL -------------------------------------------------------------------


def clickhouse_type(arrow_type: pa.DataType, nullable: bool = True) -> str:
    """The ClickHouse column type for an Arrow type (``Nullable`` when ``nullable``)."""
    t = arrow_type
    if pa.types.is_dictionary(t):
        return f"LowCardinality({clickhouse_type(t.value_type, nullable)})"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"Array({clickhouse_type(t.value_type, t.value_field.nullable)})"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        base = "String"  # JSON text
    elif pa.types.is_boolean(t):
        base = "Bool"
    elif pa.types.is_integer(t):
        base = f"{'Int' if pa.types.is_signed_integer(t) else 'UInt'}{t.bit_width}"
    elif pa.types.is_floating(t):
        base = "Float64" if t.bit_width == 64 else "Float32"
    elif pa.types.is_decimal(t):
        if t.precision > 76:
            raise TypeError(f"decimal precision {t.precision} is more than ClickHouse's 76")
        base = f"Decimal({t.precision}, {t.scale})"
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        base = "String"
    elif getattr(pa.types, "is_string_view", lambda _t: False)(t):
        base = "String"
    elif pa.types.is_null(t):
        base = "String"
    elif pa.types.is_fixed_size_binary(t):
        base = f"FixedString({t.byte_width})"
    elif pa.types.is_timestamp(t):
        precision = {"s": 0, "ms": 3, "us": 6, "ns": 9}[t.unit]
        base = f"DateTime64({precision}, {format_str(t.tz or 'UTC')})"
    elif pa.types.is_date(t):
        base = "Date32"
    else:
        raise TypeError(f"no ClickHouse type for Arrow type {t}; cast the column before returning it")
    return f"Nullable({base})" if nullable else base


def _partitions_defs(context: OutputContext) -> list[Any]:
    pdef = context.asset_partitions_def if context.has_asset_partitions else None
    if isinstance(pdef, MultiPartitionsDefinition):
        return [d.partitions_def for d in pdef.partitions_defs]
    return [pdef]


def _time_bucket(expr: str, pdef: Any, schema: pa.Schema) -> str:
    step = timedelta(days=1)
    tz = "UTC"
    if isinstance(pdef, TimeWindowPartitionsDefinition):
        window = pdef.time_window_for_partition_key(pdef.get_first_partition_key())
        step = window.end - window.start
        tz = pdef.timezone or "UTC"
    column = _plain(expr)
    is_datetime = column is not None and column in schema.names and pa.types.is_timestamp(schema.field(column).type)
    if step >= timedelta(days=1):
        if is_datetime and tz not in ("UTC", "Etc/UTC"):
            return f"toDate({expr}, {format_str(tz)})"
        return f"toDate({expr})"
    if step >= timedelta(hours=1):
        return f"toStartOfHour({expr})"
    raise PartitionLayoutError(
        f"partitions shorter than an hour ({step}) are not supported for generated tables; "
        "create the table with a migration in sql/clickhouse/"
    )


def partition_buckets(context: OutputContext, table_slice: TableSlice, schema: pa.Schema) -> list[str]:
    """One PARTITION BY expression per partition dimension of the asset (none when unpartitioned)."""
    dims = list(table_slice.partition_dimensions or [])
    if not dims:
        return []
    pdefs = _partitions_defs(context)
    if len(pdefs) != len(dims):
        pdefs = [None] * len(dims)
    exprs = []
    for dim, pdef in zip(dims, pdefs):
        if isinstance(dim.partitions, TimeWindow) or isinstance(pdef, TimeWindowPartitionsDefinition):
            exprs.append(_time_bucket(dim.partition_expr, pdef, schema))
        else:
            exprs.append(dim.partition_expr)
    return exprs


def _tuple(exprs: Sequence[str]) -> str:
    return exprs[0] if len(exprs) == 1 else f"({', '.join(exprs)})"


def order_by_columns(metadata: Mapping[str, Any], table: str) -> list[str]:
    order_by = metadata.get("order_by")
    if isinstance(order_by, str):
        order_by = [order_by]
    if not order_by:
        raise ValueError(
            f"{table} does not exist and the asset has no 'order_by' metadata. Creating a "
            "ReplacingMergeTree table needs its ORDER BY (the deduplication key): set e.g. "
            'metadata={"order_by": ["source_type", "source_name", "external_id"]}, or create the table '
            "in a migration under sql/clickhouse/."
        )
    return [str(c) for c in order_by]


def create_table_ddl(context: OutputContext, table_slice: TableSlice, schema: pa.Schema) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the slice's table from the Arrow schema of the output."""
    name = f"{table_slice.schema}.{table_slice.table}"
    order_by = order_by_columns(context.definition_metadata or {}, name)
    buckets = partition_buckets(context, table_slice, schema)
    keys = {c for c in (_plain(e) for e in order_by) if c}
    keys |= {c for c in (_plain(d.partition_expr) for d in table_slice.partition_dimensions or []) if c}
    unknown = [c for c in keys if c not in schema.names]
    if unknown:
        raise ValueError(f"{name}: order_by/partition_expr name column(s) {unknown} that the output does not have")
    columns = [
        f"{_q(f.name)} {clickhouse_type(f.type, f.nullable and f.name not in keys)}"
        for f in schema
        if f.name != VERSION_COLUMN
    ]
    columns.append(f"{_q(VERSION_COLUMN)} UInt64")
    ddl = (
        f"CREATE TABLE IF NOT EXISTS {_table(table_slice)} (\n    "
        + ",\n    ".join(columns)
        + f"\n) ENGINE = ReplacingMergeTree({_q(VERSION_COLUMN)})"
    )
    if buckets:
        ddl += f"\nPARTITION BY {_tuple(buckets)}"
    # SELECT ... FINAL deduplicates across partitions by the sorting key, so the partition
    # buckets lead the key: rows of different partitions are never taken for versions of each other.
    ordering = [b for b in buckets if b not in order_by] + [_q(c) if _plain(c) else c for c in order_by]
    ddl += f"\nORDER BY {_tuple(ordering)}"
    return ddl


# --- introspection -----------------------------------------------------------------------------


def table_info(client: Client, database: str, table: str) -> tuple[dict[str, str], str, str] | None:
    """``({column: type}, engine, partition_key)`` or ``None`` when the table does not exist."""
    rows = client.query(
        "SELECT engine, partition_key FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": table},
    ).result_rows
    if not rows:
        return None
    columns = client.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} ORDER BY position",
        parameters={"db": database, "t": table},
    ).result_rows
    return {name: typ for name, typ in columns}, rows[0][0], rows[0][1]


def _json_column(column: pa.ChunkedArray) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v, default=str) for v in column.to_pylist()], pa.string())


def conform(arrow: pa.Table, columns: Mapping[str, str], version: int) -> pa.Table:
    """Shape the output for the table: ``_version`` added, JSON for nested values in String columns."""
    out_columns, names = [], []
    for field, column in zip(arrow.schema, arrow.columns):
        target = columns[field.name]
        t = field.type
        if (pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            "String" in target and "Array" not in target
        ):
            column = _json_column(column)
        elif pa.types.is_null(t):
            column = pa.nulls(len(column), pa.string())
        elif pa.types.is_date64(t):
            column = pc.cast(column, pa.date32())
        elif field.name == VERSION_COLUMN and t != pa.uint64():
            column = pc.cast(column, pa.uint64())
        out_columns.append(column)
        names.append(field.name)
    if VERSION_COLUMN in columns and VERSION_COLUMN not in names:
        out_columns.append(pa.array(np.full(arrow.num_rows, version, dtype=np.uint64)))
        names.append(VERSION_COLUMN)
    return pa.table(out_columns, names=names)


# --- the DbClient ------------------------------------------------------------------------------


class ClickHouseDbClient(DbClient[Client]):
    """Opens the warehouse late for one output or input, migrated, and closes it (chDB: one process at a time)."""

    def __init__(self, clickhouse_url: str | None = None, database: str | None = None):
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
        finally:
            client.close()

    @staticmethod
    def ensure_schema_exists(context: OutputContext, table_slice: TableSlice, connection: Client) -> None:
        connection.command(f"CREATE DATABASE IF NOT EXISTS {_q(table_slice.schema)}")

    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection: Client) -> None:
        """Nothing: the type handler replaces the slice's partitions atomically (no mutations)."""

    @staticmethod
    def get_select_statement(table_slice: TableSlice) -> str:
        return _select(table_slice, table_slice.columns)

    @staticmethod
    def get_table_name(table_slice: TableSlice) -> str:
        return f"{table_slice.schema}.{table_slice.table}"


# --- type handlers -----------------------------------------------------------------------------


class ClickHouseArrowTypeHandler(DbTypeHandler[pa.Table]):
    """Writes and loads ``pyarrow.Table`` slices."""

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pa.Table]

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pa.Table, connection: Client
    ) -> Mapping[str, Any]:
        return write_arrow(context, table_slice, to_arrow(obj), connection)

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: Client) -> pa.Table:
        return read_arrow(table_slice, connection)


class ClickHousePandasTypeHandler(DbTypeHandler[pd.DataFrame]):
    """Writes and loads ``pandas.DataFrame`` slices, through Arrow (the index is not stored)."""

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pd.DataFrame]

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pd.DataFrame, connection: Client
    ) -> Mapping[str, Any]:
        return write_arrow(context, table_slice, to_arrow(obj), connection)

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: Client) -> pd.DataFrame:
        return read_arrow(table_slice, connection).to_pandas()


def _distinct_partition_ids(client: Client, table: str, where: str | None = None) -> set[str]:
    query = f"SELECT DISTINCT _partition_id FROM {table}" + (f" WHERE {where}" if where else "")
    return {row[0] for row in client.query(query).result_rows}


def _ids_list(ids: set[str]) -> str:
    return ", ".join(format_str(i) for i in sorted(ids))


def write_arrow(context: OutputContext, table_slice: TableSlice, arrow: pa.Table, client: Client) -> dict[str, Any]:
    """Replace the slice's partitions with ``arrow`` (see the module docstring); returns output metadata."""
    name = f"{table_slice.schema}.{table_slice.table}"
    info = table_info(client, table_slice.schema, table_slice.table)
    if info is None:
        client.command(create_table_ddl(context, table_slice, arrow.schema))
        info = table_info(client, table_slice.schema, table_slice.table)
        assert info is not None
    columns, engine, partition_key = info
    extra = [c for c in arrow.column_names if c not in columns]
    if extra:
        raise ValueError(
            f"{name} has no column(s) {extra}; the IO manager does not add columns. Add them with a "
            f"migration in sql/clickhouse/, or drop them from the output. Table columns: {list(columns)}"
        )
    arrow = conform(arrow, columns, time.time_ns())

    target = _table(table_slice)
    stage = _table(table_slice, f"{table_slice.table}{STAGE_MARKER}{uuid.uuid4().hex[:12]}")
    where = slice_where(table_slice)
    client.command(f"CREATE TABLE {stage} AS {target}")
    try:
        if arrow.num_rows:
            client.insert_arrow(stage, arrow)
        if where:
            outside = client.query(f"SELECT count() FROM {stage} WHERE NOT ifNull({where}, 0)").result_rows[0][0]
            if outside:
                raise ValueError(
                    f"{outside} of {arrow.num_rows} rows written to {name} lie outside the partition(s) being "
                    f"written ({_describe_slice(table_slice)}); filter them out or fix partition_expr."
                )
        new_ids = _distinct_partition_ids(client, stage)
        old_ids = _distinct_partition_ids(client, target, where)
        touched = new_ids | old_ids
        if where and touched:
            foreign = client.query(
                f"SELECT count() FROM {target} WHERE _partition_id IN ({_ids_list(touched)}) AND NOT ifNull({where}, 0)"
            ).result_rows[0][0]
            if foreign:
                raise PartitionLayoutError(
                    f"{name} is partitioned more coarsely (PARTITION BY {partition_key or 'tuple()'}) than the "
                    f"asset's partitions: partition id(s) {sorted(touched)} also hold {foreign} row(s) outside "
                    f"{_describe_slice(table_slice)}, which replacing the partition would destroy. Re-create the "
                    "table with a PARTITION BY at least as fine as the asset's partitions (e.g. toDate(<partition_expr>) "
                    "for daily partitions)."
                )
        for pid in sorted(new_ids):
            client.command(f"ALTER TABLE {target} REPLACE PARTITION ID {format_str(pid)} FROM {stage}")
        dropped = sorted(old_ids - new_ids)
        for pid in dropped:
            client.command(f"ALTER TABLE {target} DROP PARTITION ID {format_str(pid)}")
    finally:
        client.command(f"DROP TABLE IF EXISTS {stage} SYNC")

    final = " FINAL" if _FINAL_ENGINES.match(engine) else ""
    row_count = client.query(f"SELECT count() FROM {target}{final}").result_rows[0][0]
    metadata: dict[str, Any] = {
        "dagster/row_count": int(row_count),
        "dagster/column_schema": TableSchema(columns=[TableColumn(name=c, type=t) for c, t in columns.items()]),
        "partitions_replaced": len(new_ids),
        "partitions_dropped": len(dropped),
    }
    if table_slice.partition_dimensions:
        metadata["dagster/partition_row_count"] = arrow.num_rows
    return metadata


def read_arrow(table_slice: TableSlice, client: Client) -> pa.Table:
    """SELECT the slice ``FINAL`` as Arrow (strings as strings; ``_version`` only when asked for)."""
    name = f"{table_slice.schema}.{table_slice.table}"
    info = table_info(client, table_slice.schema, table_slice.table)
    if info is None:
        raise ValueError(f"{name} does not exist; materialize its asset first")
    columns, engine, _ = info
    wanted = list(table_slice.columns or [c for c in columns if c != VERSION_COLUMN])
    unknown = [c for c in wanted if c not in columns]
    if unknown:
        raise ValueError(f"{name} has no column(s) {unknown}; it has {list(columns)}")
    query = _select(table_slice, wanted, final=bool(_FINAL_ENGINES.match(engine)))
    return client.query_arrow(query, use_strings=True)


# --- the IO manager ----------------------------------------------------------------------------


class ClickHouseIOManager(ConfigurableIOManagerFactory):
    """Stores pandas DataFrames and Arrow tables in the ClickHouse warehouse, one table per asset,
    replacing the asset's partitions atomically (REPLACE/DROP PARTITION from a stage table).

    Asset metadata: ``partition_expr`` (column or expression per partition dimension), ``order_by``
    (needed to create a table), ``schema`` (another database), ``columns`` on inputs.
    """

    clickhouse_url: str | None = Field(
        default=None,
        description="http(s):// ClickHouse URL or chdb:///path; unset uses KINGTAVO_CLICKHOUSE_URL, else chDB under KINGTAVO_HOME.",
    )
    database: str | None = Field(
        default=None,
        description="Database for the tables (asset metadata 'schema' overrides it); unset uses KINGTAVO_CLICKHOUSE_DATABASE.",
    )

    @staticmethod
    def type_handlers() -> Sequence[DbTypeHandler]:
        return [ClickHousePandasTypeHandler(), ClickHouseArrowTypeHandler()]

    @staticmethod
    def default_load_type() -> type | None:
        return pd.DataFrame

    def create_io_manager(self, context: InitResourceContext | None = None) -> DbIOManager:
        database = self.database or Settings().clickhouse_database
        return DbIOManager(
            type_handlers=self.type_handlers(),
            db_client=ClickHouseDbClient(self.clickhouse_url, database),
            database=database,
            schema=database,
            io_manager_name="ClickHouseIOManager",
            default_load_type=self.default_load_type(),
        )


__all__ = [
    "STAGE_MARKER",
    "VERSION_COLUMN",
    "ClickHouseArrowTypeHandler",
    "ClickHouseDbClient",
    "ClickHouseIOManager",
    "ClickHousePandasTypeHandler",
    "PartitionLayoutError",
]
