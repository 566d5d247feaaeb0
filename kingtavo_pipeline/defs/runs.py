"""Small helpers every asset uses to describe the partition(s) a run covers."""

import dagster as dg
import pandas as pd


def utc_window(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The run's time window in UTC (one day, or a range in a single-run backfill)."""
    window = context.partition_time_window
    return pd.Timestamp(window.start).tz_convert("UTC"), pd.Timestamp(window.end).tz_convert("UTC")


def partition_label(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> str | None:
    """``2024-11-02`` for one partition, ``2024-11-01...2024-11-03`` for a range, ``None`` unpartitioned.

    A single-partition run (``--partition``, a schedule tick) has a partition key but no range tags,
    so both are asked.
    """
    if not (context.has_partition_key or context.has_partition_key_range):
        return None
    key_range = context.partition_key_range
    return key_range.start if key_range.start == key_range.end else f"{key_range.start}...{key_range.end}"
