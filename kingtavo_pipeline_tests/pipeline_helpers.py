"""Helpers for tests that run the asset graph through real Dagster runs."""

from __future__ import annotations

import dagster as dg

from kingtavo_pipeline.definitions import defs as load_definitions

SAMPLE_START, SAMPLE_END = "2024-11-01", "2024-11-03"


def run_unified_job(start: str = SAMPLE_START, end: str = SAMPLE_END, *, instance=None, raise_on_error=True):
    """One single-run backfill of the whole CSV/RSS graph over [start, end], in process."""
    job = load_definitions().resolve_job_def("unified_items_job")
    return job.execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
        raise_on_error=raise_on_error,
    )


def table_counts(store, clickhouse) -> dict[str, int]:
    counts = {t: store.fetch_value(f"SELECT count(*) FROM {t}") for t in ("raw_data", "unified_items", "dead_letters")}
    counts["warehouse_unified_items"] = clickhouse.query("SELECT count() FROM unified_items FINAL").result_rows[0][0]
    return counts
