"""Slices in PostgreSQL SQL: how each time window compares (asked of the server), the WHERE and
SELECT of a slice, and its per-partition row counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from dagster._core.storage.db_io_manager import TableSlice
from psycopg import sql

from kingtavo_pipeline.io_managers.dialect import Dialect
from kingtavo_pipeline.io_managers.slices import (
    KIND_DATE,
    KIND_INSTANT,
    KIND_NAIVE,
    KIND_YYYYMMDD,
    Buckets,
    boundary,
    tally,
)
from kingtavo_pipeline.io_managers.slices import slice_kinds as _slice_kinds
from kingtavo_pipeline.storage.postgres import qualified

_OID_KINDS = {1082: KIND_DATE, 1184: KIND_INSTANT, 1114: KIND_NAIVE, 20: KIND_YYYYMMDD, 21: KIND_YYYYMMDD, 23: KIND_YYYYMMDD}
_ARRAY_TYPES = {KIND_DATE: "date[]", KIND_NAIVE: "timestamp[]", KIND_YYYYMMDD: "bigint[]", KIND_INSTANT: "timestamptz[]"}

# Partition values are always literals escaped by psycopg.
POSTGRES: Dialect[sql.Composable] = Dialect(
    text=sql.SQL,
    format=lambda template, *pieces: sql.SQL(template).format(*pieces),
    join=lambda separator, pieces: sql.SQL(separator).join(pieces),
    identifier=sql.Identifier,
    boundary=lambda kind, value: sql.Literal(boundary(kind, value)),
    key=sql.Literal,
    false="false",
)


def target_table(table_slice: TableSlice) -> sql.Composable:
    """The slice's table, schema-qualified."""
    return qualified(table_slice.table, table_slice.schema)


def slice_kinds(conn: psycopg.Connection, table_slice: TableSlice) -> list[str | None]:
    """Per partition dimension, how its time window compares (from the expression's result type,
    asked of the server without reading rows); ``None`` for key dimensions. The table must exist."""

    def kinds_of(exprs: list[str]) -> list[str]:
        query = sql.SQL("SELECT {} FROM {} LIMIT 0").format(
            sql.SQL(", ").join(POSTGRES.expr(e) for e in exprs), target_table(table_slice)
        )
        with conn.cursor() as cur:
            cur.execute(query)
            return [_OID_KINDS.get(column.type_code, KIND_INSTANT) for column in cur.description or []]

    return _slice_kinds(table_slice, kinds_of)


def slice_where(table_slice: TableSlice, kinds: Sequence[str | None] | None = None) -> sql.Composable | None:
    """The WHERE condition selecting the slice, or ``None`` for an unpartitioned asset.

    ``kinds`` (from :func:`slice_kinds`) says how each time window compares; without it windows
    compare as instants. ``partition_expr`` is trusted code from the asset definition (a column or
    an expression); partition values are always literals escaped by psycopg.
    """
    return POSTGRES.where(table_slice, kinds)


def select_slice(
    table_slice: TableSlice, select_list: sql.Composable | None = None, kinds: Sequence[str | None] | None = None
) -> sql.Composable:
    """``SELECT`` of the slice: ``select_list``, else the slice's ``columns``, else ``*``."""
    return POSTGRES.select(table_slice, target_table(table_slice), select_list, kinds)


def count_slice(
    conn: psycopg.Connection, table_slice: TableSlice, kinds: Sequence[str | None], buckets: Sequence[Buckets]
) -> tuple[dict[str, int], int]:
    """``({partition key: rows}, rows)`` of the slice as it stands in this transaction: one
    ``GROUP BY`` over the slice's rows only (``width_bucket`` finds a row's window)."""
    numbers: list[sql.Composable] = []
    params: list[Any] = []
    for dim, kind, b in zip(table_slice.partition_dimensions or [], kinds, buckets):
        expr = POSTGRES.expr(dim.partition_expr)
        if b.thresholds is not None:
            array_type = sql.SQL(_ARRAY_TYPES.get(kind or "", "timestamptz[]"))
            numbers.append(sql.SQL("width_bucket({}, %s::{})").format(expr, array_type))
            params.append([boundary(kind, t) for t in b.thresholds])
        else:
            numbers.append(sql.SQL("array_position(%s::text[], ({})::text)").format(expr))
            params.append(list(b.keys))
    query = sql.SQL("SELECT {}, count(*) FROM {} WHERE {} GROUP BY {}").format(
        sql.SQL(", ").join(numbers),
        target_table(table_slice),
        slice_where(table_slice, kinds),
        sql.SQL(", ").join(sql.SQL(str(i + 1)) for i in range(len(numbers))),
    )
    rows = conn.execute(query, params).fetchall()
    counts, _ = tally(buckets, rows)
    return counts, sum(int(r[-1]) for r in rows)
