"""An output against its ClickHouse table, before the stage is written: values the table's
column types would turn into NULLs or defaults are refused (:class:`ColumnTypeError`), and the
rows are shaped for the table (:func:`conform`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kingtavo_pipeline.io_managers.clickhouse.ddl import VERSION_COLUMN, TableInfo
from kingtavo_pipeline.io_managers.clickhouse.query import unwrap_type


class ColumnTypeError(TypeError):
    """Output columns whose values the table's column types cannot hold."""


def _ch_category(ch_type: str) -> str | None:
    base = unwrap_type(ch_type)
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
