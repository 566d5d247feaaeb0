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


def one_csv_source(tmp_path, monkeypatch, fields: str):
    """Make ``tmp_path/orders.csv`` the only source (``orders``: ``id_column: id``, ``date_column:
    day``, ``fields: {...}`` as given) for core, and return ``(its raw asset, the resources)``.

    The raw asset is not among core's declared deps, so tests materialize the layers in order.
    Calling it again with other fields re-maps the same file."""
    import kingtavo_pipeline.defs.core.assets as core_assets
    from kingtavo_pipeline.defs.ingest.assets import build_raw_assets
    from kingtavo_pipeline.sources.config import load_sources

    (tmp_path / "sources.yaml").write_text(
        "csv:\n  - name: orders\n    path: orders.csv\n    id_column: id\n    date_column: day\n"
        f"    fields: {{{fields}}}\n"
    )
    sources = load_sources(tmp_path / "sources.yaml")
    monkeypatch.setattr(core_assets, "SOURCES", sources)
    [raw_asset] = build_raw_assets(sources)
    return raw_asset, dict(load_definitions().resources)
