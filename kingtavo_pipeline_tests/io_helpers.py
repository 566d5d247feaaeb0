"""Shared helpers for the IO manager tests: sample rows and output/input round trips."""

from __future__ import annotations

import datetime as dt
from functools import cache
from typing import Any

import pandas as pd
from dagster import (
    DagsterInstance,
    DailyPartitionsDefinition,
    PythonObjectDagsterType,
    StaticPartitionsDefinition,
    build_input_context,
    build_output_context,
)

DAILY = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-01")
SHOPS = StaticPartitionsDefinition(["north", "o'brien", "south"])


@cache
def instance() -> DagsterInstance:
    """One in-memory instance for every context built here (building one per context is slow)."""
    return DagsterInstance.ephemeral()


def rows(day: str, n: int, tag: str = "v1", shop: str | None = None) -> pd.DataFrame:
    d = dt.date.fromisoformat(day)
    return pd.DataFrame(
        {
            "day": [d] * n,
            "shop": [shop or "north"] * n,
            "id": list(range(n)),
            "value": [float(i) / 2 for i in range(n)],
            "tag": [tag] * n,
            "updated_at": [pd.Timestamp(d, tz="UTC") + pd.Timedelta(hours=i) for i in range(n)],
        }
    )


def write(iom, key, obj, *, partition_key=None, key_range=None, pdef=None, metadata=None) -> dict[str, Any]:
    """handle_output for one asset; returns the metadata it logged, as plain values."""
    context = build_output_context(
        instance=instance(),
        asset_key=key,
        partition_key=partition_key,
        asset_partition_key_range=key_range,
        asset_partitions_def=pdef,
        definition_metadata=metadata or {},
    )
    iom.handle_output(context, obj)
    return {k: getattr(v, "value", v) for k, v in context.get_logged_metadata().items()}


def load(iom, key, typ=pd.DataFrame, *, partition_key=None, key_range=None, pdef=None, metadata=None, columns=None):
    upstream = build_output_context(asset_key=key, definition_metadata=metadata or {}, instance=instance())
    context = build_input_context(
        instance=instance(),
        asset_key=key,
        partition_key=partition_key,
        asset_partition_key_range=key_range,
        asset_partitions_def=pdef,
        upstream_output=upstream,
        definition_metadata={"columns": columns} if columns else None,
        dagster_type=PythonObjectDagsterType(typ),
    )
    return iom.load_input(context)
