"""Slices in ClickHouse SQL: names and types, how each time window compares (asked of the
server), the WHERE and SELECT of a slice, and a row's bucket for the per-partition counts."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime

from clickhouse_connect.driver.binding import format_str, quote_identifier
from clickhouse_connect.driver.client import Client
from dagster._core.storage.db_io_manager import TableSlice

from kingtavo_pipeline.io_managers.dialect import Dialect
from kingtavo_pipeline.io_managers.slices import KIND_DATE, KIND_INSTANT, KIND_YYYYMMDD, Buckets, boundary
from kingtavo_pipeline.io_managers.slices import slice_kinds as _slice_kinds

_PLAIN_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quoted(identifier: str) -> str:
    return quote_identifier(identifier)


def table_ref(table_slice: TableSlice, table: str | None = None) -> str:
    """The slice's table (or another in its database), quoted and database-qualified."""
    return f"{quoted(table_slice.schema)}.{quoted(table or table_slice.table)}"


def plain_column(expr: str) -> str | None:
    """The column an expression is, when it is just a (possibly quoted) column name."""
    name = expr.strip().strip("`")
    return name if _PLAIN_COLUMN.match(name) else None


def referenced_columns(expr: str, names: Iterable[str]) -> set[str]:
    """The columns among ``names`` that an expression (or a plain column name) mentions."""
    text = re.sub(r"'(?:[^'\\]|\\.)*'", " ", expr)  # string literals ('UTC') name no column
    tokens = {backticked or bare for backticked, bare in re.findall(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)", text)}
    return tokens & set(names)


def unwrap_type(ch_type: str) -> str:
    """A ClickHouse type without ``Nullable(...)``/``LowCardinality(...)`` around it."""
    t = ch_type.strip()
    while True:
        match = re.fullmatch(r"(?:Nullable|LowCardinality)\((.*)\)", t)
        if not match:
            return t
        t = match.group(1).strip()


# --- slices ------------------------------------------------------------------------------------


def _kind(ch_type: str) -> str:
    base = unwrap_type(ch_type)
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
    return _slice_kinds(
        table_slice, lambda exprs: [_kind(t) for t in expression_types(client, exprs, source or table_ref(table_slice))]
    )


def _literal(kind: str | None, value: datetime) -> str:
    """A window boundary as a ClickHouse literal for an expression of ``kind``."""
    b = boundary(kind, value)
    if kind == KIND_DATE:
        return f"toDate32('{b.isoformat()}')"
    if kind == KIND_YYYYMMDD:
        return str(b)
    return f"toDateTime64('{b.strftime('%Y-%m-%d %H:%M:%S.%f')}', 6, 'UTC')"


# Keys are escaped by clickhouse-connect's format_str.
CLICKHOUSE: Dialect[str] = Dialect(
    text=str, format=str.format, join=str.join, identifier=quoted, boundary=_literal, key=format_str, false="0"
)


def slice_where(table_slice: TableSlice, kinds: Sequence[str | None] | None = None) -> str | None:
    """The WHERE condition selecting the slice, or ``None``. ``kinds`` (from :func:`slice_kinds`)
    says how each time window compares; without it windows compare as instants. Keys are escaped."""
    return CLICKHOUSE.where(table_slice, kinds)


def select_slice(
    table_slice: TableSlice, columns: Sequence[str] | None, final: bool = True, kinds: Sequence[str | None] | None = None
) -> str:
    """``SELECT`` of the slice's ``columns`` (``*`` for none), ``FINAL`` unless told not to."""
    source = f"{table_ref(table_slice)}{' FINAL' if final else ''}"
    return CLICKHOUSE.select(table_slice, source, CLICKHOUSE.column_list(columns), kinds)


def bucket_expr(expr: str, kind: str | None, buckets: Buckets) -> str:
    """A row's bucket number (see :class:`Buckets`) as ClickHouse SQL."""
    e = CLICKHOUSE.expr(expr)
    if buckets.thresholds is not None:
        literals = [_literal(kind, t) for t in buckets.thresholds]
        return "multiIf(" + ", ".join(f"{e} < {lit}, {i}" for i, lit in enumerate(literals)) + f", {len(literals)})"
    keys = ", ".join(format_str(k) for k in buckets.keys)
    numbers = ", ".join(str(i + 1) for i in range(len(buckets.keys)))
    return f"ifNull(transform(toString({e}), [{keys}], [{numbers}], 0), 0)"
