"""Every layer in bounded batches: a partition larger than the batch size goes through raw, core and
the warehouse chunk by chunk, with the same result as in one piece."""

from __future__ import annotations

import datetime as dt
import functools
import json

import dagster as dg
import pytest

import kingtavo_pipeline.defs.core.assets as core_assets
import kingtavo_pipeline.defs.ingest.assets as ingest_assets
from kingtavo_pipeline.defs.warehouse.assets import warehouse_unified_items
from kingtavo_pipeline.defs.warehouse.checks import row_count_matches_core
from kingtavo_pipeline.definitions import defs as load_definitions
from kingtavo_pipeline.io_managers import ClickHouseIOManager, PostgresIOManager
from kingtavo_pipeline.sources.config import load_sources
from kingtavo_pipeline.sources.csv_source import iter_raw_batches

pytestmark = pytest.mark.slow

BATCH = 7  # rows per batch in every layer; each day below holds several batches


def test_a_partition_larger_than_the_batch_goes_through_every_layer_in_chunks(store, clickhouse, tmp_path, monkeypatch):
    rows = [(i, dt.date(2024, 11, 1 + i % 2), f"item {i}", f"{i}.25") for i in range(60)]
    (tmp_path / "orders.csv").write_text(
        "id,day,name,amount\n" + "".join(f"{i},{d},{n},{a}\n" for i, d, n, a in rows) + "bad,2024-11-01,broken,n/a\n"
    )
    (tmp_path / "sources.yaml").write_text(
        "csv:\n  - name: orders\n    path: orders.csv\n    id_column: id\n    date_column: day\n"
        "    fields: {external_id: id, title: name, amount: amount}\n"
    )
    sources = load_sources(tmp_path / "sources.yaml")
    monkeypatch.setattr(core_assets, "SOURCES", sources)
    monkeypatch.setattr(core_assets, "READ_CHUNK_ROWS", BATCH)
    read_batches = []

    def small_batches(source, batch_size=BATCH):
        for frame in iter_raw_batches(source, batch_size=batch_size):
            read_batches.append(len(frame))
            yield frame

    monkeypatch.setattr(ingest_assets, "iter_raw_batches", small_batches)
    [raw_asset] = ingest_assets.build_raw_assets(sources)
    resources = {
        **load_definitions().resources,
        "postgres_io_manager": PostgresIOManager(batch_rows=BATCH),
        "clickhouse_io_manager": ClickHouseIOManager(batch_rows=BATCH),
    }
    assert dg.materialize([raw_asset], partition_key="2024-11-01", resources=resources).success
    result = dg.materialize(
        [core_assets.core_unified_items, warehouse_unified_items, row_count_matches_core],
        tags={"dagster/asset_partition_range_start": "2024-11-01", "dagster/asset_partition_range_end": "2024-11-02"},
        resources=resources,
    )
    assert result.success
    assert len(read_batches) >= 60 // BATCH and max(read_batches) <= BATCH

    checks = {(e.asset_check_key.name, e.passed) for e in result.get_asset_check_evaluations()}
    assert checks == {("core_reflects_raw", True), ("row_count_matches_core", True)}
    core = store.fetch_all("SELECT external_id, partition_date, title, amount::text FROM unified_items ORDER BY 1")
    assert sorted(core) == sorted((str(i), d, n, f"{a}00") for i, d, n, a in rows)
    warehouse = clickhouse.query(
        "SELECT external_id, partition_date, title, toString(amount) FROM unified_items FINAL ORDER BY 1"
    ).result_rows
    assert sorted(warehouse) == sorted((str(i), d, n, a) for i, d, n, a in rows)
    assert store.fetch_all("SELECT source_id, error_type FROM dead_letters") == [("bad", "invalid_type")]
    # each day's own count, reported by the warehouse write of the range
    counts = {
        e.partition: e.materialization.metadata["dagster/partition_row_count"].value
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["warehouse", "unified_items"])
    }
    assert counts == {"2024-11-01": 30, "2024-11-02": 30}
    versions = clickhouse.query("SELECT min(_version) > 0, uniqExact(_version) FROM unified_items FINAL").result_rows
    assert versions == [(True, 60)]
    assert json.loads(store.fetch_value("SELECT metadata::text FROM unified_items WHERE external_id = '3'")) == {
        "day": "2024-11-02", "_file": "orders.csv", "_line": 4
    }
