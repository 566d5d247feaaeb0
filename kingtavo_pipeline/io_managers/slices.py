"""What both IO managers share, whatever the store: how a partition slice's time windows compare
(by the partition expression's type), per-partition row counts and their metadata, the checks of
an output against its table and its slice, and the Arrow plumbing of streamed inputs and outputs
(empty results, readers that release their connection, re-batching, the parts of an output).

How a slice is written in a store's SQL is :mod:`kingtavo_pipeline.io_managers.dialect`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import pyarrow as pa
from dagster import (
    InputContext,
    MetadataValue,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    OutputContext,
    TimeWindowPartitionsDefinition,
)
from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.storage.db_io_manager import TableSlice

DEFAULT_BATCH_ROWS = 100_000


def slice_id(table_slice: TableSlice) -> tuple:
    return (table_slice.schema, table_slice.table, tuple(d.partition_expr for d in table_slice.partition_dimensions or []))


def slice_name(table_slice: TableSlice) -> str:
    """``schema.table``, as errors and Dagster's ``dagster/table_name`` name the slice's table."""
    return f"{table_slice.schema}.{table_slice.table}"


# --- partition slices -----------------------------------

# How a time window compares with a partition expression, decided by the expression's type.
KIND_DATE = "date"  # dates, against the window's dates in the partitions' time zone
KIND_INSTANT = "instant"  # zoned timestamps, as instants (also when the type is unknown)
KIND_NAIVE = "naive"  # PostgreSQL ``timestamp`` without zone, taken as UTC
KIND_YYYYMMDD = "yyyymmdd"  # integers such as ClickHouse toYYYYMMDD(ts)


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def boundary_date(value: datetime) -> date:
    """The first date whose midnight, in ``value``'s own time zone, is at or after ``value``.

    Dagster's windows carry the partitions definition's time zone, so the day partition
    2024-01-01 of America/New_York gives ``[2024-01-01, 2024-01-02)`` whatever UTC says.
    """
    return value.date() if value.time() == time(0) else value.date() + timedelta(days=1)


def boundary(kind: str | None, value: datetime) -> Any:
    """A window boundary as the value a partition expression of ``kind`` is compared with."""
    if kind == KIND_DATE:
        return boundary_date(value)
    if kind == KIND_YYYYMMDD:
        return int(boundary_date(value).strftime("%Y%m%d"))
    if kind == KIND_NAIVE:
        return _utc(value).replace(tzinfo=None)
    return _utc(value)


def slice_kinds(table_slice: TableSlice, kinds_of: Callable[[list[str]], Iterable[str]]) -> list[str | None]:
    """Per partition dimension, how its time window compares; ``None`` for key dimensions.

    ``kinds_of`` asks the store for the kinds of the time dimensions' partition expressions (by
    their result types, without reading rows); it is not called when no dimension is a window.
    """
    dims = list(table_slice.partition_dimensions or [])
    kinds: list[str | None] = [None] * len(dims)
    timed = [i for i, d in enumerate(dims) if isinstance(d.partitions, TimeWindow)]
    if timed:
        for i, kind in zip(timed, kinds_of([dims[i].partition_expr for i in timed])):
            kinds[i] = kind
    return kinds


def describe_slice(table_slice: TableSlice) -> str:
    parts = []
    for dim in table_slice.partition_dimensions or []:
        if isinstance(dim.partitions, TimeWindow):
            parts.append(f"{dim.partition_expr} in [{dim.partitions.start.isoformat()}, {dim.partitions.end.isoformat()})")
        else:
            parts.append(f"{dim.partition_expr} in {list(dim.partitions)}")
    return " and ".join(parts) or "the whole table"


@dataclass(frozen=True)
class Buckets:
    """One partition dimension of a written slice, as buckets a row's value falls into.

    Time windows: ``thresholds`` are the sorted window boundaries and bucket ``i`` is
    ``[thresholds[i-1], thresholds[i])`` (PostgreSQL's ``width_bucket`` numbering: 0 and
    ``len(thresholds)`` lie outside); static keys: bucket ``i`` is ``keys[i-1]``, 0 is none.
    """

    name: str | None
    keys: tuple[str, ...]
    thresholds: tuple[datetime, ...] | None = None
    bucket_keys: Mapping[int, str] | None = None

    def key(self, bucket: int | None) -> str | None:
        """The partition key of a bucket; ``None`` outside the slice, ``""`` in a gap between windows."""
        if bucket is None:
            return None
        if self.thresholds is None:
            return self.keys[bucket - 1] if 1 <= bucket <= len(self.keys) else None
        if not 1 <= bucket < len(self.thresholds):
            return None
        return (self.bucket_keys or {}).get(bucket, "")


def dimension_keys(context: OutputContext | InputContext) -> list[tuple[str | None, Any, list[str]]]:
    """Per partition dimension (in ``TableSlice`` order): its name (multi-partitions only), its
    partitions definition and the distinct keys of the context's partitions along it."""
    pdef = context.asset_partitions_def
    keys = list(context.asset_partition_keys)
    if not isinstance(pdef, MultiPartitionsDefinition):
        return [(None, pdef, list(dict.fromkeys(str(k) for k in keys)))]
    multi = [k if isinstance(k, MultiPartitionKey) else pdef.get_partition_key_from_str(k) for k in keys]
    return [
        (d.name, d.partitions_def, list(dict.fromkeys(k.keys_by_dimension[d.name] for k in multi)))
        for d in pdef.partitions_defs
    ]


def slice_buckets(context: OutputContext) -> list[Buckets]:
    """Per partition dimension of the output (in ``TableSlice`` order), its buckets."""
    out = []
    for name, dim_def, unique in dimension_keys(context):
        if not isinstance(dim_def, TimeWindowPartitionsDefinition):
            out.append(Buckets(name, tuple(unique)))
            continue
        windows = {k: dim_def.time_window_for_partition_key(k) for k in unique}
        thresholds = sorted({t for w in windows.values() for t in (w.start, w.end)})
        position = {t: i for i, t in enumerate(thresholds)}
        bucket_keys = {position[w.end]: k for k, w in windows.items()}
        out.append(Buckets(name, tuple(unique), tuple(thresholds), bucket_keys))
    return out


def tally(buckets: Sequence[Buckets], rows: Iterable[Sequence[Any]]) -> tuple[dict[str, int], int]:
    """``({partition key: rows}, rows outside the slice)`` from ``(bucket, ..., count)`` rows."""
    counts: dict[str, int] = {}
    outside = 0
    for *numbers, n in rows:
        keys = [b.key(None if v is None else int(v)) for b, v in zip(buckets, numbers)]
        if any(k is None for k in keys):
            outside += int(n)
        elif all(keys):  # not in a gap between windows (partitions excluded from the definition)
            key = keys[0] if len(keys) == 1 else MultiPartitionKey({b.name: k for b, k in zip(buckets, keys)})
            counts[str(key)] = counts.get(str(key), 0) + int(n)
    return counts, outside


def partition_count_metadata(context: OutputContext, counts: Mapping[str, int]) -> dict[str, Any]:
    """``dagster/partition_row_count`` of each written partition, each on its own materialization.

    One partition: in the output's metadata. A range (single-run backfill): output metadata is
    copied to every partition's materialization, so each count goes in as partition-scoped asset
    metadata through the step (the mechanism behind ``AssetExecutionContext.add_asset_metadata(...,
    partition_key=...)``; IO managers have no public API for it). Without a step (a direct
    ``handle_output`` call) the counts come back as ``partition_row_counts`` {key: rows}.
    """
    keys = [str(k) for k in context.asset_partition_keys]
    if len(keys) == 1:
        return {"dagster/partition_row_count": int(counts.get(keys[0], 0))}
    per_key = {k: int(counts.get(k, 0)) for k in keys}
    try:
        step = context.step_context
        for key in keys:
            step.add_asset_metadata(
                {"dagster/partition_row_count": per_key[key]}, asset_key=context.asset_key, partition_key=key
            )
        return {}
    except DagsterInvariantViolationError:
        return {"partition_row_counts": MetadataValue.json(per_key)}


def slice_count_metadata(context: OutputContext, table_slice: TableSlice, counts: Mapping[str, int]) -> dict[str, Any]:
    """:func:`partition_count_metadata` of a partitioned slice; nothing for an unpartitioned one."""
    return partition_count_metadata(context, counts) if table_slice.partition_dimensions else {}


# --- checks of an output and an input against the table ---------------------------------------


def check_output_columns(name: str, names: Iterable[str], columns: Iterable[str], migrations: str) -> None:
    """Refuse an output with columns the table lacks, naming them: the IO managers never add
    columns (``migrations`` is where the store's migrations live)."""
    columns = list(columns)
    extra = [c for c in names if c not in columns]
    if extra:
        raise ValueError(
            f"{name} has no column(s) {extra}; the IO manager does not add columns. Add them with a "
            f"migration in {migrations}, or drop them from the output. Table columns: {columns}"
        )


def check_input_columns(name: str, wanted: Iterable[str], columns: Iterable[str]) -> None:
    """Refuse an input's ``columns`` that the table lacks, naming them."""
    columns = list(columns)
    unknown = [c for c in wanted if c not in columns]
    if unknown:
        raise ValueError(f"{name} has no column(s) {unknown}; it has {columns}")


def check_inside_slice(name: str, table_slice: TableSlice, outside: int, written: int, why: str = "") -> None:
    """Refuse a write of which ``outside`` of the ``written`` rows lie outside the slice being
    written (``why`` says what they would do there)."""
    if outside > 0:
        raise ValueError(
            f"{outside} of {written} rows written to {name} lie outside the partition(s) being "
            f"written ({describe_slice(table_slice)}){why}; filter them out or fix partition_expr."
        )


# --- Arrow plumbing ------------------------------------------------------------------------------


def empty_arrow(table_slice: TableSlice) -> pa.Table:
    """The load of a table that does not exist yet: no rows; the asked-for columns, typed null."""
    return pa.schema([(c, pa.null()) for c in table_slice.columns or []]).empty_table()


def closing_reader(batches: Iterator[Any]) -> pa.RecordBatchReader:
    """A reader over a started generator that yields its schema first, then its batches.

    ``RecordBatchReader.from_batches`` keeps its iterator until the reader is garbage-collected;
    handed on through the Arrow C stream interface, the iterator is released by ``close()``, so
    the generator's ``finally`` (closing its connection) runs on close as well as at the end.
    """
    schema = next(batches)
    return pa.RecordBatchReader.from_stream(pa.RecordBatchReader.from_batches(schema, batches))


def empty_reader(schema: pa.Schema) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(schema, [])


def rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The same rows in batches of ``rows`` (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch = batch.slice(take)
            count += take
            if count == rows:
                yield _concat(pending)
                pending, count = [], 0
    if count:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def output_parts(obj: Any) -> tuple[pa.Schema | None, Iterator[pa.Table]]:
    """The schema and the parts of a streamed output: a ``RecordBatchReader``, or an iterator of
    ``RecordBatch``/``Table`` sharing one schema. ``(None, empty)`` for an iterator with no parts."""
    if isinstance(obj, pa.RecordBatchReader):
        return obj.schema, (pa.Table.from_batches([b]) for b in obj)
    parts = iter(obj)
    first = next(parts, None)
    if first is None:
        return None, iter(())

    def as_table(part: Any, i: int) -> pa.Table:
        if isinstance(part, pa.RecordBatch):
            return pa.Table.from_batches([part])
        if isinstance(part, pa.Table):
            return part
        raise TypeError(f"part {i} of the output is a {type(part).__name__}; stream pyarrow RecordBatches or Tables")

    head = as_table(first, 1)

    def rest() -> Iterator[pa.Table]:
        yield head
        for i, part in enumerate(parts, 2):
            table = as_table(part, i)
            if not table.schema.equals(head.schema):
                raise ValueError(f"part {i} of the output has schema\n{table.schema}\nnot the first part's\n{head.schema}")
            yield table

    return head.schema, rest()
