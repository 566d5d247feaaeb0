"""Reads from ClickHouse: a slice ``SELECT``ed ``FINAL`` (for the engines that collapse rows) as
Arrow, whole (:func:`read_arrow`) or streamed one partition of the slice at a time on a client of
the reader's own (:func:`stream_arrow`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from clickhouse_connect.driver.client import Client
from dagster import InputContext, TimeWindowPartitionsDefinition
from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.storage.db_io_manager import TableSlice

from kingtavo_pipeline.io_managers.clickhouse.ddl import VERSION_COLUMN, table_info
from kingtavo_pipeline.io_managers.clickhouse.query import select_slice, slice_kinds
from kingtavo_pipeline.io_managers.slices import (
    check_input_columns,
    closing_reader,
    dimension_keys,
    empty_arrow,
    empty_reader,
    rebatch,
    slice_name,
)
from kingtavo_pipeline.storage.clickhouse import connect_clickhouse

_FINAL_ENGINES = re.compile(r"^(Shared|Replicated)?(Replacing|Collapsing|VersionedCollapsing|Aggregating|Summing)MergeTree$")


def _read_query(table_slice: TableSlice, client: Client) -> tuple[str, list[str | None], bool, list[str]] | None:
    """``(query, kinds, final, columns)`` for the slice, or ``None`` when the table does not exist."""
    info = table_info(client, table_slice.schema, table_slice.table)
    if info is None:
        return None
    wanted = list(table_slice.columns or [c for c in info.columns if c != VERSION_COLUMN])
    check_input_columns(slice_name(table_slice), wanted, info.columns)
    kinds = slice_kinds(client, table_slice)
    final = bool(_FINAL_ENGINES.match(info.engine))
    return select_slice(table_slice, wanted, final=final, kinds=kinds), kinds, final, wanted


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
    queries = [select_slice(piece, wanted, final=final, kinds=kinds) for piece in slice_pieces(context, table_slice)]

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
