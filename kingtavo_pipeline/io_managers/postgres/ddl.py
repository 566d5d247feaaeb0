"""PostgreSQL tables for the IO manager: Arrow types as column types, what a table has, and the
CREATE of a missing one (serialized by advisory locks, so concurrent first writes create it once)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import psycopg
import pyarrow as pa
from dagster._core.storage.db_io_manager import TableSlice
from psycopg import sql

from kingtavo_pipeline.io_managers.postgres.query import target_table

_PLAIN_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def advisory_lock(conn: psycopg.Connection, what: str) -> None:
    """A transaction-scoped advisory lock, so concurrent first writes create a schema/table once."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"kingtavo_io_manager:{what}",))


def create_table(conn: psycopg.Connection, table_slice: TableSlice, schema: pa.Schema, unique: Sequence[str] = ()) -> None:
    """CREATE the slice's table from an Arrow schema (if nobody did meanwhile), indexed on the partition columns."""
    advisory_lock(conn, f"table:{table_slice.schema}.{table_slice.table}")
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
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(target_table(table_slice), sql.SQL(", ").join(definitions)))
    # Expression partition_exprs get no index: date casts of timestamptz are not immutable.
    index_columns = [
        dim.partition_expr.strip().strip('"')
        for dim in table_slice.partition_dimensions or []
        if _PLAIN_COLUMN.match(dim.partition_expr.strip().strip('"')) and dim.partition_expr.strip().strip('"') in schema.names
    ]
    if index_columns:
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier(f"{table_slice.table}_partition_idx"[:63]),
                target_table(table_slice),
                sql.SQL(", ").join(sql.Identifier(c) for c in index_columns),
            )
        )
