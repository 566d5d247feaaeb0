"""Reads from PostgreSQL: a slice through ``COPY (SELECT ...) TO STDOUT (FORMAT CSV)`` parsed by
Arrow with types from the table's columns, whole (:func:`read_arrow`) or streamed in batches on a
transaction of the reader's own (:func:`stream_arrow`)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from dagster._core.storage.db_io_manager import TableSlice
from psycopg import sql

from kingtavo_pipeline.io_managers.postgres.ddl import table_columns
from kingtavo_pipeline.io_managers.postgres.query import select_slice, slice_kinds
from kingtavo_pipeline.io_managers.slices import (
    check_input_columns,
    closing_reader,
    empty_arrow,
    empty_reader,
    rebatch,
    slice_name,
)
from kingtavo_pipeline.storage.errors import row_data_kept_out
from kingtavo_pipeline.storage.postgres import PostgresStore, copy_csv_options, copy_out_batches, copy_out_chunks


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
    wanted = list(table_slice.columns or columns)
    check_input_columns(slice_name(table_slice), wanted, columns)
    specs = {c: _read_spec(c, columns[c]) for c in wanted}
    select_list = sql.SQL(", ").join(spec[0] for spec in specs.values())
    query = select_slice(table_slice, select_list, slice_kinds(conn, table_slice))
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
        # read by the consuming asset, after load_input returned: a database error leaves as
        # DatabaseError here too (no row values in Dagster's log)
        with row_data_kept_out(), store.transaction() as own:
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

