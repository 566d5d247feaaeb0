"""ClickHouse tables for the IO manager: Arrow types as column types, the PARTITION BY and ORDER BY
of a table created for an asset (see the package docstring), and what an existing table has."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import pyarrow as pa
from clickhouse_connect.driver.binding import format_str
from clickhouse_connect.driver.client import Client
from dagster import MultiPartitionsDefinition, OutputContext, TimeWindowPartitionsDefinition
from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.storage.db_io_manager import TableSlice

from kingtavo_pipeline.io_managers.clickhouse.query import (
    plain_column,
    quoted,
    referenced_columns,
    slice_kinds,
    table_ref,
)
from kingtavo_pipeline.io_managers.slices import KIND_DATE, KIND_INSTANT, KIND_YYYYMMDD, slice_name

VERSION_COLUMN = "_version"


class PartitionLayoutError(ValueError):
    """The table's PARTITION BY cannot hold the asset's partitions apart."""


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
        return f"toDate({expr})" if kind == KIND_DATE and plain_column(expr) else expr
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


MAX_PARTS_TO_MERGE_AT_ONCE = 10


def create_table_ddl(context: OutputContext, table_slice: TableSlice, schema: pa.Schema, client: Client) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the slice's table from the Arrow schema of the output.

    The partition expressions' types (a timestamp, a date, a ``YYYYMMDD`` integer) are asked of
    the server over ``null('<structure>')``, so they are known before the table exists.
    """
    name = slice_name(table_slice)
    order_by = order_by_columns(context.definition_metadata or {}, name)
    dims = list(table_slice.partition_dimensions or [])
    plain = {c for c in (plain_column(e) for e in [*order_by, *(d.partition_expr for d in dims)]) if c}
    unknown = [c for c in plain if c not in schema.names]
    if unknown:
        raise ValueError(f"{name}: order_by/partition_expr name column(s) {unknown} that the output does not have")
    keys: set[str] = set()
    for expr in [*order_by, *(d.partition_expr for d in dims)]:
        keys |= referenced_columns(expr, schema.names)
    types = {f.name: clickhouse_type(f.type, f.nullable and f.name not in keys) for f in schema if f.name != VERSION_COLUMN}
    types[VERSION_COLUMN] = "UInt64"
    structure = ", ".join(f"{quoted(c)} {t}" for c, t in types.items())
    kinds = slice_kinds(client, table_slice, source=f"null({format_str(structure)})")
    buckets = partition_buckets(context, table_slice, kinds)
    ddl = (
        f"CREATE TABLE IF NOT EXISTS {table_ref(table_slice)} (\n    "
        + ",\n    ".join(f"{quoted(c)} {t}" for c, t in types.items())
        + f"\n) ENGINE = ReplacingMergeTree({quoted(VERSION_COLUMN)})"
    )
    if buckets:
        ddl += f"\nPARTITION BY {_tuple(buckets)}"
    # SELECT ... FINAL deduplicates across partitions by the sorting key, so the partition
    # buckets lead the key: rows of different partitions are never taken for versions of each other.
    ordering = [b for b in buckets if b not in order_by] + [quoted(c) if plain_column(c) else c for c in order_by]


    ddl += f"\nORDER BY {_tuple(ordering)}"
    # merges join few parts at a time: their read buffers live in whichever process has chDB open
    # (see sql/clickhouse/0004_merge_width.sql)
    ddl += f"\nSETTINGS max_parts_to_merge_at_once = {MAX_PARTS_TO_MERGE_AT_ONCE}"
    return ddl


# --- introspection -----------------------------------------------------------------------------


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
