"""Writes to PostgreSQL: a slice's new rows COPYed (or upserted) part by part inside the caller's
transaction, after the DbClient's DELETE of the slice, then the slice counted per partition."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import pyarrow as pa
from dagster import InputContext, OutputContext, TableColumn, TableSchema
from dagster._core.storage.db_io_manager import TableSlice

from kingtavo_pipeline.io_managers.postgres.ddl import create_table, table_columns
from kingtavo_pipeline.io_managers.postgres.query import count_slice, slice_kinds, target_table
from kingtavo_pipeline.io_managers.slices import (
    check_inside_slice,
    check_output_columns,
    slice_buckets,
    slice_count_metadata,
    slice_name,
)
from kingtavo_pipeline.storage.postgres import copy_arrow
from kingtavo_pipeline.storage.upsert import upsert

WRITE_MODE_REPLACE = "replace"
WRITE_MODE_UPSERT = "upsert"
DEFAULT_VERSION_COLUMN = "updated_at"


# --- asset metadata ----------------------------------------------------------------------------


def write_mode(metadata: Mapping[str, Any] | None) -> str:
    mode = (metadata or {}).get("write_mode", WRITE_MODE_REPLACE) or WRITE_MODE_REPLACE
    if mode not in (WRITE_MODE_REPLACE, WRITE_MODE_UPSERT):
        raise ValueError(f"write_mode must be {WRITE_MODE_REPLACE!r} or {WRITE_MODE_UPSERT!r}, not {mode!r}")
    return mode


def upsert_options(metadata: Mapping[str, Any] | None, table: str) -> tuple[list[str], str | None]:
    """``(upsert_keys, version_column)`` from asset metadata; the keys are required."""
    metadata = metadata or {}
    keys = metadata.get("upsert_keys")
    if isinstance(keys, str):
        keys = [keys]
    if not keys:
        raise ValueError(
            f"{table}: write_mode 'upsert' needs 'upsert_keys' metadata naming the unique key columns, "
            'e.g. metadata={"write_mode": "upsert", "upsert_keys": ["source_type", "source_name", "external_id"]}'
        )
    version = metadata.get("version_column", DEFAULT_VERSION_COLUMN)
    return [str(k) for k in keys], (str(version) if version else None)


def asset_metadata(context: OutputContext | InputContext) -> Mapping[str, Any]:
    return context.definition_metadata or {}


# --- writes ------------------------------------------------------------------------------------


def write_arrow(
    context: OutputContext, table_slice: TableSlice, arrow: pa.Table, conn: psycopg.Connection
) -> dict[str, Any]:
    """Write ``arrow`` into the slice inside the caller's transaction; returns the output metadata."""
    return write_parts(context, table_slice, arrow.schema, iter([arrow]), conn)


def write_parts(
    context: OutputContext,
    table_slice: TableSlice,
    schema: pa.Schema | None,
    parts: Iterator[pa.Table],
    conn: psycopg.Connection,
) -> dict[str, Any]:
    """Write the parts into the slice inside the caller's transaction (COPY or upsert part by part),
    then count the slice's partitions; returns the output metadata. ``schema`` is ``None`` only
    for an output without parts."""
    metadata = asset_metadata(context)
    mode = write_mode(metadata)
    name = slice_name(table_slice)
    keys: list[str] = []
    version_column: str | None = None
    if mode == WRITE_MODE_UPSERT:
        keys, version_column = upsert_options(metadata, name)

    columns = table_columns(conn, table_slice.schema, table_slice.table)
    if columns is None and schema is not None:
        create_table(conn, table_slice, schema, unique=keys)
        columns = table_columns(conn, table_slice.schema, table_slice.table) or {}
    if schema is not None:
        check_output_columns(name, schema.names, columns or {}, "sql/postgres/")

    written = inserted = updated = 0
    for arrow in parts:
        if mode == WRITE_MODE_UPSERT:
            result = upsert(conn, name, arrow, keys, version_column=version_column)
            inserted += result.inserted
            updated += result.updated
        elif arrow.num_rows:
            copy_arrow(conn, target_table(table_slice), arrow, arrow.column_names)
        written += arrow.num_rows

    result_metadata: dict[str, Any] = {"write_mode": mode, "rows_written": written}
    if mode == WRITE_MODE_UPSERT:
        result_metadata.update(
            {"rows_inserted": inserted, "rows_updated": updated, "rows_unchanged": written - inserted - updated}
        )
    if columns is None:  # no parts and no table: nothing was created, nothing replaced
        result_metadata.update(slice_count_metadata(context, table_slice, {}))
        return result_metadata

    if table_slice.partition_dimensions:
        kinds = slice_kinds(conn, table_slice)
        counts, in_slice = count_slice(conn, table_slice, kinds, slice_buckets(context))
        # The slice was emptied by the DELETE (and replacing writers take turns), so every row
        # written that the slice does not hold lies outside it: it would escape the next
        # re-run's delete and be duplicated.
        if mode == WRITE_MODE_REPLACE:
            why = ". Rows outside the slice would escape the next re-run's delete and be duplicated"
            check_inside_slice(name, table_slice, written - in_slice, written, why)
        result_metadata.update(slice_count_metadata(context, table_slice, counts))
    elif mode == WRITE_MODE_REPLACE:
        result_metadata["dagster/row_count"] = written
    estimate = conn.execute(
        "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", (target_table(table_slice).as_string(conn),)
    ).fetchone()
    if estimate and estimate[0] >= 0 and "dagster/row_count" not in result_metadata:
        result_metadata["row_count_estimate"] = int(estimate[0])
    result_metadata["dagster/column_schema"] = TableSchema(
        columns=[TableColumn(name=c, type=t) for c, t in columns.items()]
    )
    return result_metadata
