"""Writes to ClickHouse: a slice's partitions replaced from a stage table (REPLACE/DROP PARTITION,
never a mutation), after checking that the new rows lie inside the slice and that the partition
ids touched hold nothing else (see the package docstring)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from clickhouse_connect.driver.binding import format_str
from clickhouse_connect.driver.client import Client
from dagster import OutputContext, TableColumn, TableSchema
from dagster._core.storage.db_io_manager import TableSlice

from kingtavo_pipeline.io_managers.clickhouse.checks import check_types, check_values, conform
from kingtavo_pipeline.io_managers.clickhouse.ddl import PartitionLayoutError, create_table_ddl, table_info
from kingtavo_pipeline.io_managers.clickhouse.query import bucket_expr, slice_kinds, slice_where, table_ref
from kingtavo_pipeline.io_managers.slices import (
    DEFAULT_BATCH_ROWS,
    check_inside_slice,
    check_output_columns,
    describe_slice,
    rebatch,
    slice_buckets,
    slice_count_metadata,
    slice_name,
    tally,
)

STAGE_MARKER = "__stage_"

# Stage inserts may span any number of partitions; memory is bounded by batch_rows instead.
_STAGE_INSERT_SETTINGS = {"max_partitions_per_insert_block": 0}


def _distinct_partition_ids(client: Client, table: str, where: str | None = None) -> set[str]:
    query = f"SELECT DISTINCT _partition_id FROM {table}" + (f" WHERE {where}" if where else "")
    return {row[0] for row in client.query(query).result_rows}


def _ids_list(ids: set[str]) -> str:
    return ", ".join(format_str(i) for i in sorted(ids))


def write_arrow(
    context: OutputContext, table_slice: TableSlice, arrow: pa.Table, client: Client, batch_rows: int = DEFAULT_BATCH_ROWS
) -> dict[str, Any]:
    """Replace the slice's partitions with ``arrow`` (see the package docstring); returns output metadata."""
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
    (see the package docstring); returns output metadata. ``schema`` is ``None`` only for an output
    without parts."""
    name = slice_name(table_slice)
    info = table_info(client, table_slice.schema, table_slice.table)
    if info is None and schema is not None:
        client.command(create_table_ddl(context, table_slice, schema, client))
        info = table_info(client, table_slice.schema, table_slice.table)
        assert info is not None
    if info is None:  # no parts and no table: nothing to replace
        nothing = {"rows_written": 0, "partitions_replaced": 0, "partitions_dropped": 0}
        return {**nothing, **slice_count_metadata(context, table_slice, {})}
    if schema is not None:
        check_output_columns(name, schema.names, info.columns, "sql/clickhouse/")

    target = table_ref(table_slice)
    stage = table_ref(table_slice, f"{table_slice.table}{STAGE_MARKER}{uuid.uuid4().hex[:12]}")
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
                f"{bucket_expr(d.partition_expr, k, b)} AS _b{i}"
                for i, (d, k, b) in enumerate(zip(table_slice.partition_dimensions, kinds, buckets))
            ]
            group = ", ".join(f"_b{i}" for i in range(len(numbers)))
            rows = client.query(f"SELECT {', '.join(numbers)}, count() FROM {stage} GROUP BY {group}").result_rows
            counts, outside = tally(buckets, rows)
            check_inside_slice(name, table_slice, outside, written)
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
    return {**metadata, **slice_count_metadata(context, table_slice, counts)}
