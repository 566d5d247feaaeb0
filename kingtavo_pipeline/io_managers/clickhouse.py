"""ClickHouse IO manager on Dagster's ``DbIOManager`` framework: partition-scoped atomic replace.

Writing a slice never runs ``ALTER TABLE ... DELETE`` (a mutation). The type handler writes the new
rows into a fresh stage table (``CREATE TABLE <db>.<table>__stage_<hex> AS <db>.<table>``) in
inserts of at most ``batch_rows`` rows, counts them per partition of the slice (one ``GROUP BY``
over the stage, which also finds rows outside the slice), then per ClickHouse partition id:

* ``ALTER TABLE target REPLACE PARTITION ID '<id>' FROM stage`` for every id the new rows fill
  (atomic per partition: readers see the old rows or the new ones, never a mix);
* ``ALTER TABLE target DROP PARTITION ID '<id>'`` for every id of the slice the new rows leave
  empty (REPLACE refuses an empty source).

Before touching anything it verifies that the target's rows in those partition ids all lie inside
the slice; if not, the table's ``PARTITION BY`` is coarser than the asset's partitions and the
write fails instead of destroying neighbouring data. The stage table is dropped in ``finally``
(a ``__stage_`` table left by a killed process is safe to drop). An insert into the stage may span
any number of partitions (``max_partitions_per_insert_block`` is lifted for it: a single-run
backfill of 400 days is one slice, and the stage is private until the checks pass); memory stays
bounded by ``batch_rows``, not by the number of partitions.

Before the stage is written, the output's columns are checked against the table's types: a
value ClickHouse would turn into NULL or a default (text into ``Int64``, a timestamp into an
integer, a fractional float into an integer, NULL into a non-Nullable ORDER BY/PARTITION BY
column) fails the write with an error naming the columns, and the old partitions stay.

Types: pandas ``DataFrame``, ``pyarrow.Table`` and ``pyarrow.RecordBatchReader``. An input
annotated ``pa.RecordBatchReader`` is read one partition of the slice at a time (through
``query_arrow_stream``, which streams from a server; chDB hands each query over whole) in batches
of at most ``batch_rows`` rows, on a client of its own that is closed when the reader is exhausted
or closed. An output may be a ``RecordBatchReader`` or any iterator of ``RecordBatch``/``Table``
(a generator returned as ``dg.Output(generator)``): each part goes into the stage as it comes.

The DbIOManager "schema" is the ClickHouse database (the IO manager's ``database`` config, or
asset metadata ``schema``), whatever the asset key prefix.

``partition_expr`` is a column or an SQL expression (``toDate(event_time)``,
``toYYYYMMDD(ts)``). A time window compares by the expression's type: ``Date``/``Date32`` against
the window's dates in the partitions' time zone, ``DateTime``/``DateTime64`` as instants, an
integer as ``YYYYMMDD``.

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
  ``toDate(expr)`` (``toDate(expr, '<tz>')`` for a timestamp; the expression itself when it is
  already a ``YYYYMMDD`` integer), an hourly one -> ``toStartOfHour(expr, '<tz>')``;
  static/dynamic -> ``expr``; multi-dimensional -> a tuple of those; unpartitioned -> none;
* column types mapped from Arrow, ``Nullable`` where the field is nullable, except the columns
  that ORDER BY and ``partition_expr`` name or their expressions use (ClickHouse keys cannot be
  Nullable); timestamps are stored as ``DateTime64(p, tz)`` with naive timestamps taken as UTC;
  structs and maps are stored as JSON text.

``_version UInt64`` is set to ``time.time_ns()`` on write when the output lacks it, and left out on
load unless the input's ``columns`` metadata asks for it. Loads read ``FINAL``; loading a table
that does not exist yet gives an empty result (the input's ``columns``, typed null, if it names
any, else no columns).

Output metadata: ``dagster/partition_row_count`` is each partition's rows written (see
:func:`~kingtavo_pipeline.io_managers.postgres.partition_count_metadata` for ranges);
``dagster/row_count`` is the rows stored in the table's active parts (``system.parts``), read
without scanning: duplicates that ``FINAL`` would collapse are still counted.
"""

from __future__ import annotations

import collections.abc
import json
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, NamedTuple

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
from dagster._core.storage.db_io_manager import (
    DbClient,
    DbIOManager,
    DbTypeHandler,
    TableSlice,
)
from pydantic import Field

from kingtavo_pipeline.io_managers.slices import (
    DEFAULT_BATCH_ROWS,
    KIND_DATE,
    KIND_INSTANT,
    KIND_YYYYMMDD,
    Buckets,
    boundary,
    closing_reader,
    describe_slice,
    dimension_keys,
    empty_arrow,
    empty_reader,
    output_parts,
    partition_count_metadata,
    rebatch,
    slice_buckets,
    slice_id,
    tally,
)
from kingtavo_pipeline.resources import ClickHouseResource
from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.clickhouse import connect_clickhouse
from kingtavo_pipeline.storage.migrations import migrate_clickhouse
from kingtavo_pipeline.storage.postgres import to_arrow

VERSION_COLUMN = "_version"
STAGE_MARKER = "__stage_"

_PLAIN_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FINAL_ENGINES = re.compile(r"^(Shared|Replicated)?(Replacing|Collapsing|VersionedCollapsing|Aggregating|Summing)MergeTree$")
# Stage inserts may span any number of partitions; memory is bounded by batch_rows instead.
_STAGE_INSERT_SETTINGS = {"max_partitions_per_insert_block": 0}


class PartitionLayoutError(ValueError):
    """The table's PARTITION BY cannot hold the asset's partitions apart."""


class ColumnTypeError(TypeError):
    """Output columns whose values the table's column types cannot hold."""


def _q(identifier: str) -> str:
    return quote_identifier(identifier)


def _table(table_slice: TableSlice, table: str | None = None) -> str:
    return f"{_q(table_slice.schema)}.{_q(table or table_slice.table)}"


def _plain(expr: str) -> str | None:
    name = expr.strip().strip("`")
    return name if _PLAIN_COLUMN.match(name) else None


def referenced_columns(expr: str, names: Iterable[str]) -> set[str]:
    """The columns among ``names`` that an expression (or a plain column name) mentions."""
    text = re.sub(r"'(?:[^'\\]|\\.)*'", " ", expr)  # string literals ('UTC') name no column
    tokens = {quoted or bare for quoted, bare in re.findall(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)", text)}
    return tokens & set(names)


def _unwrap(ch_type: str) -> str:
    """A ClickHouse type without ``Nullable(...)``/``LowCardinality(...)`` around it."""
    t = ch_type.strip()
    while True:
        match = re.fullmatch(r"(?:Nullable|LowCardinality)\((.*)\)", t)
        if not match:
            return t
        t = match.group(1).strip()


# --- slices ------------------------------------------------------------------------------------


def _kind(ch_type: str) -> str:
    base = _unwrap(ch_type)
    if base in ("Date", "Date32"):
        return KIND_DATE
    if re.fullmatch(r"U?Int\d+", base):
        return KIND_YYYYMMDD
    return KIND_INSTANT


def expression_types(client: Client, exprs: Sequence[str], source: str) -> list[str]:
    """The ClickHouse types of expressions over ``source`` (a table, or ``null('<structure>')``),
    asked of the server without reading rows."""
    select = ", ".join(f"({e}) AS _e{i}" for i, e in enumerate(exprs))
    return [row[1] for row in client.query(f"DESCRIBE TABLE (SELECT {select} FROM {source})").result_rows]


def slice_kinds(client: Client, table_slice: TableSlice, source: str | None = None) -> list[str | None]:
    """Per partition dimension, how its time window compares (by the expression's type); ``None``
    for key dimensions. ``source`` defaults to the slice's table, which must exist."""
    dims = list(table_slice.partition_dimensions or [])
    kinds: list[str | None] = [None] * len(dims)
    timed = [i for i, d in enumerate(dims) if isinstance(d.partitions, TimeWindow)]
    if timed:
        types = expression_types(client, [dims[i].partition_expr for i in timed], source or _table(table_slice))
        for i, t in zip(timed, types):
            kinds[i] = _kind(t)
    return kinds


def _literal(kind: str | None, value: datetime) -> str:
    """A window boundary as a ClickHouse literal for an expression of ``kind``."""
    b = boundary(kind, value)
    if kind == KIND_DATE:
        return f"toDate32('{b.isoformat()}')"
    if kind == KIND_YYYYMMDD:
        return str(b)
    return f"toDateTime64('{b.strftime('%Y-%m-%d %H:%M:%S.%f')}', 6, 'UTC')"


def slice_where(table_slice: TableSlice, kinds: Sequence[str | None] | None = None) -> str | None:
    """The WHERE condition selecting the slice, or ``None``. ``kinds`` (from :func:`slice_kinds`)
    says how each time window compares; without it windows compare as instants. Keys are escaped."""
    conditions = []
    for i, dim in enumerate(table_slice.partition_dimensions or []):
        expr = f"({dim.partition_expr})"
        if isinstance(dim.partitions, TimeWindow):
            kind = kinds[i] if kinds else None
            conditions.append(
                f"{expr} >= {_literal(kind, dim.partitions.start)} AND {expr} < {_literal(kind, dim.partitions.end)}"
            )
        else:
            keys = [format_str(str(k)) for k in dim.partitions]
            conditions.append(f"{expr} IN ({', '.join(keys)})" if keys else "0")
    return " AND ".join(f"({c})" for c in conditions) if conditions else None


def _select(
    table_slice: TableSlice, columns: Sequence[str] | None, final: bool = True, kinds: Sequence[str | None] | None = None
) -> str:
    select_list = ", ".join(_q(c) for c in columns) if columns else "*"
    query = f"SELECT {select_list} FROM {_table(table_slice)}{' FINAL' if final else ''}"
    where = slice_where(table_slice, kinds)
    return f"{query} WHERE {where}" if where else query


def _bucket_expr(expr: str, kind: str | None, buckets: Buckets) -> str:
    """A row's bucket number (see :class:`Buckets`) as ClickHouse SQL."""
    e = f"({expr})"
    if buckets.thresholds is not None:
        literals = [_literal(kind, t) for t in buckets.thresholds]
        return "multiIf(" + ", ".join(f"{e} < {lit}, {i}" for i, lit in enumerate(literals)) + f", {len(literals)})"
    keys = ", ".join(format_str(k) for k in buckets.keys)
    numbers = ", ".join(str(i + 1) for i in range(len(buckets.keys)))
    return f"ifNull(transform(toString({e}), [{keys}], [{numbers}], 0), 0)"


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


def _time_bucket(expr: str, pdef: Any, kind: str | None) -> str:
    step = timedelta(days=1)
    tz = "UTC"
    if isinstance(pdef, TimeWindowPartitionsDefinition):
        window = pdef.time_window_for_partition_key(pdef.get_first_partition_key())
        step = window.end - window.start
        tz = pdef.timezone or "UTC"
    if kind in (KIND_DATE, KIND_YYYYMMDD):
        # a date or a YYYYMMDD integer already names one day (a Date32 column still gets toDate)
        return f"toDate({expr})" if kind == KIND_DATE and _plain(expr) else expr
    if step >= timedelta(days=1):
        return f"toDate({expr}, {format_str(tz)})" if kind == KIND_INSTANT else f"toDate({expr})"
    if step >= timedelta(hours=1):
        return f"toStartOfHour({expr}, {format_str(tz)})" if kind == KIND_INSTANT else f"toStartOfHour({expr})"
    raise PartitionLayoutError(
        f"partitions shorter than an hour ({step}) are not supported for generated tables; "
        "create the table with a migration in sql/clickhouse/"
    )


def partition_buckets(context: OutputContext, table_slice: TableSlice, kinds: Sequence[str | None]) -> list[str]:
    """One PARTITION BY expression per partition dimension of the asset (none when unpartitioned)."""
    dims = list(table_slice.partition_dimensions or [])
    if not dims:
        return []
    pdefs = _partitions_defs(context)
    if len(pdefs) != len(dims):
        pdefs = [None] * len(dims)
    exprs = []
    for dim, pdef, kind in zip(dims, pdefs, kinds):
        if isinstance(dim.partitions, TimeWindow) or isinstance(pdef, TimeWindowPartitionsDefinition):
            exprs.append(_time_bucket(dim.partition_expr, pdef, kind))
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


def create_table_ddl(context: OutputContext, table_slice: TableSlice, schema: pa.Schema, client: Client) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the slice's table from the Arrow schema of the output.

    The partition expressions' types (a timestamp, a date, a ``YYYYMMDD`` integer) are asked of
    the server over ``null('<structure>')``, so they are known before the table exists.
    """
    name = f"{table_slice.schema}.{table_slice.table}"
    order_by = order_by_columns(context.definition_metadata or {}, name)
    dims = list(table_slice.partition_dimensions or [])
    plain = {c for c in (_plain(e) for e in [*order_by, *(d.partition_expr for d in dims)]) if c}
    unknown = [c for c in plain if c not in schema.names]
    if unknown:
        raise ValueError(f"{name}: order_by/partition_expr name column(s) {unknown} that the output does not have")
    keys: set[str] = set()
    for expr in [*order_by, *(d.partition_expr for d in dims)]:
        keys |= referenced_columns(expr, schema.names)
    types = {f.name: clickhouse_type(f.type, f.nullable and f.name not in keys) for f in schema if f.name != VERSION_COLUMN}
    types[VERSION_COLUMN] = "UInt64"
    structure = ", ".join(f"{_q(c)} {t}" for c, t in types.items())
    kinds = slice_kinds(client, table_slice, source=f"null({format_str(structure)})")
    buckets = partition_buckets(context, table_slice, kinds)
    ddl = (
        f"CREATE TABLE IF NOT EXISTS {_table(table_slice)} (\n    "
        + ",\n    ".join(f"{_q(c)} {t}" for c, t in types.items())
        + f"\n) ENGINE = ReplacingMergeTree({_q(VERSION_COLUMN)})"
    )
    if buckets:
        ddl += f"\nPARTITION BY {_tuple(buckets)}"
    # SELECT ... FINAL deduplicates across partitions by the sorting key, so the partition
    # buckets lead the key: rows of different partitions are never taken for versions of each other.
    ordering = [b for b in buckets if b not in order_by] + [_q(c) if _plain(c) else c for c in order_by]
    ddl += f"\nORDER BY {_tuple(ordering)}"
    return ddl


# --- introspection and output checks -----------------------------------------------------------


class TableInfo(NamedTuple):
    columns: dict[str, str]  # name -> ClickHouse type, in table order
    engine: str
    partition_key: str
    key_columns: frozenset[str]  # in the sorting or partition key


def table_info(client: Client, database: str, table: str) -> TableInfo | None:
    """The table's columns, engine and keys, or ``None`` when it does not exist."""
    rows = client.query(
        "SELECT engine, partition_key FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": table},
    ).result_rows
    if not rows:
        return None
    columns = client.query(
        "SELECT name, type, is_in_sorting_key OR is_in_partition_key FROM system.columns "
        "WHERE database = {db:String} AND table = {t:String} ORDER BY position",
        parameters={"db": database, "t": table},
    ).result_rows
    return TableInfo(
        {name: typ for name, typ, _ in columns}, rows[0][0], rows[0][1], frozenset(name for name, _, key in columns if key)
    )


def _ch_category(ch_type: str) -> str | None:
    base = _unwrap(ch_type)
    for pattern, category in (
        (r"U?Int\d+", "int"),
        (r"B?Float\d+", "float"),
        (r"Decimal(\d+)?\(.*\)", "decimal"),
        (r"String|FixedString\(\d+\)", "string"),
        (r"Bool", "bool"),
        (r"Date(32)?", "date"),
        (r"DateTime(64)?(\(.*\))?", "datetime"),
        (r"Array\(.*\)", "array"),
        (r"Enum(8|16)?\(.*\)", "enum"),
        (r"UUID", "uuid"),
    ):
        if re.fullmatch(pattern, base):
            return category
    return None  # Map, Tuple, JSON, IPv4, ...: not judged here


def _arrow_category(t: pa.DataType) -> str | None:
    if pa.types.is_dictionary(t):
        return _arrow_category(t.value_type)
    if pa.types.is_null(t):
        return None
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_decimal(t):
        return "decimal"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _t: False)(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "binary"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "datetime"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return "array"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return "nested"
    return "other"


# Arrow categories each ClickHouse category takes without turning values into NULLs or defaults
# (lists and structs go into String as JSON, see conform; floats into integers only when whole;
# a timestamp into a date keeps its date, as pandas often holds dates as timestamps).
_FITS = {
    "int": {"int", "bool", "float"},
    "float": {"int", "float", "decimal"},
    "decimal": {"int", "float", "decimal"},
    "string": {"string", "binary", "array", "nested"},
    "bool": {"bool", "int"},
    "date": {"date", "datetime"},
    "datetime": {"datetime", "date"},
    "array": {"array"},
    "enum": {"string", "int"},
    "uuid": {"string", "binary"},
}


def _type_error(name: str, misfits: Sequence[tuple[str, str, Any]], why: str) -> ColumnTypeError:
    listed = "; ".join(f"{c}: {ch} in ClickHouse, {a} in the output" for c, ch, a in misfits)
    return ColumnTypeError(
        f"{name}: column(s) {[c for c, _, _ in misfits]} of the output do not fit the table ({listed}). {why} "
        "Cast them in the asset, or change the table with a migration in sql/clickhouse/. Nothing was written."
    )


def check_types(name: str, schema: pa.Schema, info: TableInfo) -> None:
    """Refuse output columns whose Arrow type the table's column cannot hold: ClickHouse would
    store NULLs or defaults in their place (text into ``Int64`` becomes NULL)."""
    misfits = []
    for field in schema:
        ch_type = info.columns.get(field.name)
        if ch_type is None:
            continue
        target, source = _ch_category(ch_type), _arrow_category(field.type)
        if target is None or source is None:
            continue
        if source not in _FITS[target]:
            misfits.append((field.name, ch_type, field.type))
    if misfits:
        raise _type_error(name, misfits, "ClickHouse would store NULLs or defaults instead of these values.")


def check_values(name: str, arrow: pa.Table, info: TableInfo) -> None:
    """Refuse values that fit the types but not the columns: NULL in a non-Nullable key column
    (stored as a default value) and fractional floats for an integer column (truncated)."""
    null_keys = [
        c
        for c in arrow.column_names
        if c in info.key_columns and not info.columns[c].startswith("Nullable(") and arrow.column(c).null_count
    ]
    if null_keys:
        raise ValueError(
            f"{name}: key column(s) {null_keys} (ORDER BY/PARTITION BY, not Nullable) hold NULLs, which ClickHouse "
            "would store as default values. Fill or filter them in the asset. Nothing was written."
        )
    fractional = []
    for field, column in zip(arrow.schema, arrow.columns):
        if pa.types.is_floating(field.type) and _ch_category(info.columns.get(field.name, "")) == "int":
            if pc.any(pc.not_equal(pc.floor(column), column)).as_py():
                fractional.append((field.name, info.columns[field.name], field.type))
    if fractional:
        raise _type_error(name, fractional, "They hold fractional values ClickHouse would truncate.")


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
        # per table: how its time windows compared in the last write, for the "Query" metadata
        self._written_kinds: dict[tuple, list[str | None]] = {}

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
                self._written_kinds[slice_id(table_slice)] = slice_kinds(client, table_slice)
        finally:
            client.close()

    @staticmethod
    def ensure_schema_exists(context: OutputContext, table_slice: TableSlice, connection: Client) -> None:
        connection.command(f"CREATE DATABASE IF NOT EXISTS {_q(table_slice.schema)}")

    @staticmethod
    def delete_table_slice(context: OutputContext, table_slice: TableSlice, connection: Client) -> None:
        """Nothing: the type handler replaces the slice's partitions atomically (no mutations)."""

    def get_select_statement(self, table_slice: TableSlice) -> str:
        return _select(table_slice, table_slice.columns, kinds=self._written_kinds.get(slice_id(table_slice)))

    @staticmethod
    def get_table_name(table_slice: TableSlice) -> str:
        return f"{table_slice.schema}.{table_slice.table}"


# --- type handlers -----------------------------------------------------------------------------


class ClickHouseArrowTypeHandler(DbTypeHandler[pa.Table]):
    """Writes and loads ``pyarrow.Table`` slices."""

    def __init__(self, batch_rows: int = DEFAULT_BATCH_ROWS):
        self.batch_rows = batch_rows

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pa.Table]

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pa.Table, connection: Client
    ) -> Mapping[str, Any]:
        return write_arrow(context, table_slice, to_arrow(obj), connection, self.batch_rows)

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: Client) -> pa.Table:
        return read_arrow(table_slice, connection)


class ClickHousePandasTypeHandler(DbTypeHandler[pd.DataFrame]):
    """Writes and loads ``pandas.DataFrame`` slices, through Arrow (the index is not stored)."""

    def __init__(self, batch_rows: int = DEFAULT_BATCH_ROWS):
        self.batch_rows = batch_rows

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pd.DataFrame]

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: pd.DataFrame, connection: Client
    ) -> Mapping[str, Any]:
        return write_arrow(context, table_slice, to_arrow(obj), connection, self.batch_rows)

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: Client) -> pd.DataFrame:
        return read_arrow(table_slice, connection).to_pandas()


class ClickHouseStreamTypeHandler(DbTypeHandler[pa.RecordBatchReader]):
    """Streams: loads a ``pyarrow.RecordBatchReader`` (batches of at most ``batch_rows`` rows, one
    partition of the slice queried at a time, on a client of its own since the IO manager's closes
    when ``load_input`` returns); writes a ``RecordBatchReader`` or an iterator of
    ``RecordBatch``/``Table`` into the stage part by part."""

    def __init__(self, clickhouse_url: str | None = None, database: str | None = None, batch_rows: int = DEFAULT_BATCH_ROWS):
        self.clickhouse_url = clickhouse_url
        self.database = database
        self.batch_rows = batch_rows

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pa.RecordBatchReader, collections.abc.Iterator]

    def handle_output(
        self, context: OutputContext, table_slice: TableSlice, obj: Any, connection: Client
    ) -> Mapping[str, Any]:
        schema, parts = output_parts(obj)
        return write_parts(context, table_slice, schema, parts, connection, self.batch_rows)

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: Client) -> pa.RecordBatchReader:
        dsn, database = ClickHouseDbClient(self.clickhouse_url, self.database).resolved()
        return stream_arrow(context, table_slice, connection, dsn, database, self.batch_rows)


def _distinct_partition_ids(client: Client, table: str, where: str | None = None) -> set[str]:
    query = f"SELECT DISTINCT _partition_id FROM {table}" + (f" WHERE {where}" if where else "")
    return {row[0] for row in client.query(query).result_rows}


def _ids_list(ids: set[str]) -> str:
    return ", ".join(format_str(i) for i in sorted(ids))


def write_arrow(
    context: OutputContext, table_slice: TableSlice, arrow: pa.Table, client: Client, batch_rows: int = DEFAULT_BATCH_ROWS
) -> dict[str, Any]:
    """Replace the slice's partitions with ``arrow`` (see the module docstring); returns output metadata."""
    return write_parts(context, table_slice, arrow.schema, iter([arrow]), client, batch_rows)


def write_parts(
    context: OutputContext,
    table_slice: TableSlice,
    schema: pa.Schema | None,
    parts: Iterator[pa.Table],
    client: Client,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict[str, Any]:
    """Replace the slice's partitions with the parts, each inserted into the stage as it comes
    (see the module docstring); returns output metadata. ``schema`` is ``None`` only for an output
    without parts."""
    name = f"{table_slice.schema}.{table_slice.table}"
    info = table_info(client, table_slice.schema, table_slice.table)
    if info is None and schema is not None:
        client.command(create_table_ddl(context, table_slice, schema, client))
        info = table_info(client, table_slice.schema, table_slice.table)
        assert info is not None
    if info is None:  # no parts and no table: nothing to replace
        metadata: dict[str, Any] = {"rows_written": 0, "partitions_replaced": 0, "partitions_dropped": 0}
        if table_slice.partition_dimensions:
            metadata.update(partition_count_metadata(context, {}))
        return metadata
    if schema is not None:
        extra = [c for c in schema.names if c not in info.columns]
        if extra:
            raise ValueError(
                f"{name} has no column(s) {extra}; the IO manager does not add columns. Add them with a "
                f"migration in sql/clickhouse/, or drop them from the output. Table columns: {list(info.columns)}"
            )

    target = _table(table_slice)
    stage = _table(table_slice, f"{table_slice.table}{STAGE_MARKER}{uuid.uuid4().hex[:12]}")
    kinds = slice_kinds(client, table_slice)
    where = slice_where(table_slice, kinds)
    version = time.time_ns()
    written = 0
    counts: dict[str, int] = {}
    client.command(f"CREATE TABLE {stage} AS {target}")
    # Its parts are moved whole into the target: merging them first is wasted work, and in chDB
    # (in-process) the merges' memory grew with the rows written.
    client.command(f"SYSTEM STOP MERGES {stage}")
    try:
        for arrow in parts:
            if not arrow.num_rows:
                continue  # an empty frame's column types say nothing (pandas makes them float64)
            if not written:
                check_types(name, arrow.schema, info)
            check_values(name, arrow, info)
            for batch in rebatch(conform(arrow, info.columns, version).to_batches(), batch_rows):
                client.insert_arrow(stage, pa.Table.from_batches([batch]), settings=_STAGE_INSERT_SETTINGS)
            written += arrow.num_rows
        if table_slice.partition_dimensions:
            buckets = slice_buckets(context)
            numbers = [
                f"{_bucket_expr(d.partition_expr, k, b)} AS _b{i}"
                for i, (d, k, b) in enumerate(zip(table_slice.partition_dimensions, kinds, buckets))
            ]
            group = ", ".join(f"_b{i}" for i in range(len(numbers)))
            rows = client.query(f"SELECT {', '.join(numbers)}, count() FROM {stage} GROUP BY {group}").result_rows
            counts, outside = tally(buckets, rows)
            if outside:
                raise ValueError(
                    f"{outside} of {written} rows written to {name} lie outside the partition(s) being "
                    f"written ({describe_slice(table_slice)}); filter them out or fix partition_expr."
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
                    f"{name} is partitioned more coarsely (PARTITION BY {info.partition_key or 'tuple()'}) than the "
                    f"asset's partitions: partition id(s) {sorted(touched)} also hold {foreign} row(s) outside "
                    f"{describe_slice(table_slice)}, which replacing the partition would destroy. Re-create the "
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

    # Rows in the active parts: free to read, but not deduplicated as FINAL would.
    (stored,) = client.query(
        "SELECT sum(rows) FROM system.parts WHERE database = {db:String} AND table = {t:String} AND active",
        parameters={"db": table_slice.schema, "t": table_slice.table},
    ).result_rows[0]
    metadata = {
        "dagster/row_count": int(stored or 0),
        "dagster/column_schema": TableSchema(columns=[TableColumn(name=c, type=t) for c, t in info.columns.items()]),
        "rows_written": written,
        "partitions_replaced": len(new_ids),
        "partitions_dropped": len(dropped),
    }
    if table_slice.partition_dimensions:
        metadata.update(partition_count_metadata(context, counts))
    return metadata


# --- reads -------------------------------------------------------------------------------------


def _read_query(table_slice: TableSlice, client: Client) -> tuple[str, list[str | None], bool, list[str]] | None:
    """``(query, kinds, final, columns)`` for the slice, or ``None`` when the table does not exist."""
    name = f"{table_slice.schema}.{table_slice.table}"
    info = table_info(client, table_slice.schema, table_slice.table)
    if info is None:
        return None
    wanted = list(table_slice.columns or [c for c in info.columns if c != VERSION_COLUMN])
    unknown = [c for c in wanted if c not in info.columns]
    if unknown:
        raise ValueError(f"{name} has no column(s) {unknown}; it has {list(info.columns)}")
    kinds = slice_kinds(client, table_slice)
    final = bool(_FINAL_ENGINES.match(info.engine))
    return _select(table_slice, wanted, final=final, kinds=kinds), kinds, final, wanted


def read_arrow(table_slice: TableSlice, client: Client) -> pa.Table:
    """SELECT the slice ``FINAL`` as Arrow (strings as strings; ``_version`` only when asked for);
    :func:`empty_arrow` when the table does not exist yet."""
    plan = _read_query(table_slice, client)
    if plan is None:
        return empty_arrow(table_slice)
    return client.query_arrow(plan[0], use_strings=True)


def slice_pieces(context: InputContext, table_slice: TableSlice) -> list[TableSlice]:
    """The slice cut along its first partition dimension, one partition per piece (time windows
    cut at each partition's boundaries, gaps included, so the pieces cover the slice exactly)."""
    dims = list(table_slice.partition_dimensions or [])
    if not dims or not context.has_asset_partitions:
        return [table_slice]
    first = dims[0]
    if not isinstance(first.partitions, TimeWindow):
        return [
            table_slice._replace(partition_dimensions=[first._replace(partitions=[k]), *dims[1:]]) for k in first.partitions
        ]
    _, dim_def, keys = dimension_keys(context)[0]
    if not isinstance(dim_def, TimeWindowPartitionsDefinition):
        return [table_slice]
    window = first.partitions
    cuts = {window.start, window.end}
    for key in keys:
        w = dim_def.time_window_for_partition_key(key)
        cuts |= {t for t in (w.start, w.end) if window.start < t < window.end}
    bounds = sorted(cuts)
    return [
        table_slice._replace(partition_dimensions=[first._replace(partitions=TimeWindow(a, b)), *dims[1:]])
        for a, b in zip(bounds, bounds[1:])
    ]


def stream_arrow(
    context: InputContext, table_slice: TableSlice, client: Client, dsn: str, database: str, batch_rows: int
) -> pa.RecordBatchReader:
    """The slice as a reader of batches of at most ``batch_rows`` rows, typed as :func:`read_arrow`
    types them. The plan and the schema come from ``client``; the rows from a client of the
    reader's own, one query per piece of :func:`slice_pieces`."""
    plan = _read_query(table_slice, client)
    if plan is None:
        return empty_reader(empty_arrow(table_slice).schema)
    query, kinds, final, wanted = plan
    schema = client.query_arrow(f"{query} LIMIT 0", use_strings=True).schema
    queries = [_select(piece, wanted, final=final, kinds=kinds) for piece in slice_pieces(context, table_slice)]

    def batches() -> Iterator[Any]:
        own = connect_clickhouse(dsn, database)
        try:
            yield schema

            def fetched() -> Iterator[pa.RecordBatch]:
                for q in queries:
                    with own.query_arrow_stream(q, use_strings=True) as stream:
                        for block in stream:
                            table = block if isinstance(block, pa.Table) else pa.Table.from_batches([block])
                            if not table.schema.equals(schema):
                                table = table.cast(schema)
                            yield from table.to_batches()

            blocks = fetched()
            try:
                yield from rebatch(blocks, batch_rows)
            finally:
                blocks.close()  # end the open stream before its client closes (a reader closed early)
        finally:
            own.close()

    return closing_reader(batches())


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


__all__ = [
    "STAGE_MARKER",
    "VERSION_COLUMN",
    "ClickHouseArrowTypeHandler",
    "ClickHouseDbClient",
    "ClickHouseIOManager",
    "ClickHousePandasTypeHandler",
    "ClickHouseStreamTypeHandler",
    "ColumnTypeError",
    "PartitionLayoutError",
]
