"""The CSV/RSS graph end to end through real Dagster runs, PostgreSQL and chDB."""

from __future__ import annotations

import datetime as dt
import textwrap

import dagster as dg
import pytest

import kingtavo_pipeline.defs.core.assets as core_assets
from kingtavo_pipeline.defs.ingest.assets import build_raw_assets
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.warehouse.assets import warehouse_unified_items
from kingtavo_pipeline.defs.warehouse.checks import compare_row_counts
from kingtavo_pipeline.sources.config import load_sources
from kingtavo_pipeline_tests.pipeline_helpers import one_csv_source, run_unified_job, table_counts

pytestmark = pytest.mark.slow

# The packaged samples: 25 + 12 + 15 CSV rows and 8 + 6 feed entries over 2024-11-01..03;
# two shop orders are deliberately invalid (amount 'n/a', quantity -3).
SAMPLE_RAW_ROWS = 25 + 12 + 15 + 8 + 6
SAMPLE_BAD_ROWS = 2


def test_sample_graph_loads_everything_once(store, clickhouse):
    result = run_unified_job()
    assert result.success
    counts = table_counts(store, clickhouse)
    assert counts == {
        "raw_data": SAMPLE_RAW_ROWS,
        "unified_items": SAMPLE_RAW_ROWS - SAMPLE_BAD_ROWS,
        "dead_letters": SAMPLE_BAD_ROWS,
        "warehouse_unified_items": SAMPLE_RAW_ROWS - SAMPLE_BAD_ROWS,
    }
    # per day, PostgreSQL and ClickHouse agree
    core_days = dict(store.fetch_all("SELECT partition_date, count(*) FROM unified_items GROUP BY 1"))
    wh_days = dict(clickhouse.query("SELECT partition_date, count() FROM unified_items FINAL GROUP BY 1").result_rows)
    assert core_days == wh_days and set(core_days) == {dt.date(2024, 11, d) for d in (1, 2, 3)}

    dead = store.fetch_all("SELECT source_id, stage, error_type, error_message FROM dead_letters ORDER BY source_id")
    assert [(d[0], d[1], d[2]) for d in dead] == [
        ("ORD-1006", "map", "invalid_type"),
        ("ORD-1019", "map", "invalid_value"),
    ]
    assert "amount" in dead[0][3] and "quantity" in dead[1][3]

    runs = store.fetch_all("SELECT asset_key, status, records_loaded, records_failed FROM etl_runs ORDER BY asset_key")
    assert len(runs) == 7 and all(r[1] == "success" for r in runs)
    assert ("core/unified_items", "success", SAMPLE_RAW_ROWS - SAMPLE_BAD_ROWS, SAMPLE_BAD_ROWS) in runs
    assert store.fetch_value("SELECT count(*) FROM raw_partitions WHERE landed_seq > taken_seq") == 0

    checkpoints = dict(store.fetch_all("SELECT source_name, checkpoint_value FROM etl_checkpoints WHERE source_type <> 'core'"))
    assert set(checkpoints) == {"shop_orders", "suppliers", "catalog", "tech_news", "release_notes"}
    assert all(v.startswith("2024-11-03") for v in checkpoints.values()), checkpoints

    evaluations = {(e.asset_check_key.name, e.passed) for e in result.get_asset_check_evaluations()}
    # the job runs every quality check of its assets (the freshness checks have their own sensor)
    assert {("core_reflects_raw", True), ("row_count_matches_core", True), ("unique_keys", True)} <= evaluations
    assert not [e for e in result.get_asset_check_evaluations() if not e.passed], "the sample data passes every check"
    assert "freshness_check" not in {name for name, _ in evaluations}


def test_rerunning_partitions_is_idempotent(store, clickhouse):
    run_unified_job()
    first = table_counts(store, clickhouse)
    second = run_unified_job()
    assert table_counts(store, clickhouse) == first
    # the same bad records read again are the failures already on record: no new attempt, not counted again
    assert store.fetch_all("SELECT DISTINCT attempts, status FROM dead_letters") == [(1, "open")]
    failed = store.fetch_all("SELECT asset_key, records_failed FROM etl_runs WHERE run_id = %s", (second.run_id,))
    assert failed and all(n == 0 for _, n in failed), failed
    # nothing changed, so core changed nothing and no raw row was re-stamped
    core = [e.materialization.metadata for e in second.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey(["core", "unified_items"])]
    assert core[0]["records_inserted"].value == 0 and core[0]["records_updated"].value == 0
    marks = store.fetch_all("SELECT source_name, checkpoint_value FROM etl_checkpoints ORDER BY 1")
    run_unified_job("2024-11-02", "2024-11-02")
    assert table_counts(store, clickhouse) == first
    # re-running an older day does not pull the high-water marks back
    assert store.fetch_all("SELECT source_name, checkpoint_value FROM etl_checkpoints ORDER BY 1") == marks


def test_failed_core_load_rolls_back_everything(store, clickhouse, monkeypatch):
    def broken_dead_letters(*args, **kwargs):
        raise RuntimeError("dead-letter write failed")

    monkeypatch.setattr(core_assets, "record_dead_letters", broken_dead_letters)
    result = run_unified_job(raise_on_error=False)
    assert not result.success
    # raw landed, but the core transaction (upsert + dead letters + what core took) left no trace
    assert store.fetch_value("SELECT count(*) FROM raw_data") == SAMPLE_RAW_ROWS
    assert store.fetch_value("SELECT count(*) FROM unified_items") == 0
    assert store.fetch_value("SELECT count(*) FROM raw_partitions WHERE taken_seq > 0") == 0
    status, error = store.fetch_all("SELECT status, error_message FROM etl_runs WHERE asset_key = 'core/unified_items'")[0]
    assert status == "failed" and "dead-letter write failed" in error
    # and the warehouse never ran
    assert clickhouse.query("SELECT count() FROM unified_items").result_rows[0][0] == 0
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "warehouse/unified_items" not in materialized


def test_undated_and_out_of_window_rows(store, tmp_path):
    """Malformed rows, rows without a usable date and rows before the first partition go to
    dead_letters; rows of other days land in their own day, waiting for core."""
    (tmp_path / "orders.csv").write_text(
        textwrap.dedent(
            """\
            id,day,name
            1,2024-11-01,alpha
            2,not a date,beta
            3,2024-11-02,gamma
            4,,delta
            5,2024-11-01,eps,,extra
            6,2023-12-31,zeta
            """
        )
    )
    (tmp_path / "sources.yaml").write_text(
        "csv:\n  - name: orders\n    path: orders.csv\n    id_column: id\n    date_column: day\n"
        "    fields: {external_id: id, title: name}\n"
    )
    [asset] = build_raw_assets(load_sources(tmp_path / "sources.yaml"))
    result = dg.materialize([asset], partition_key="2024-11-01", resources={"postgres": PostgresResource()})
    assert result.success
    assert store.fetch_all("SELECT source_id, partition_date FROM raw_data ORDER BY 1") == [
        ("1", dt.date(2024, 11, 1)),
        ("3", dt.date(2024, 11, 2)),
    ]
    # both days wait for core
    assert store.fetch_all("SELECT partition_date FROM raw_partitions WHERE landed_seq > taken_seq ORDER BY 1") == [
        (dt.date(2024, 11, 1),), (dt.date(2024, 11, 2),)
    ]
    dead = store.fetch_all(
        "SELECT source_id, stage, error_type, error_message, payload->>'_raw' FROM dead_letters ORDER BY source_id"
    )
    assert [d[:3] for d in dead] == [
        ("2", "extract", "missing_partition_date"),
        ("4", "extract", "missing_partition_date"),
        ("5", "extract", "malformed_row"),
        ("6", "extract", "before_first_partition"),
    ]
    assert "expected 3 fields, saw 5" in dead[2][3]
    assert dead[2][4] == "5,2024-11-01,eps,,extra"
    assert "2024-01-01" in dead[3][3]
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["records_read"].value == 6
    assert metadata["dagster/partition_row_count"].value == 1
    assert metadata["records_outside_window"].value == 1
    assert metadata["partitions_with_new_records_outside_window"].value == {"2024-11-02": 1}
    assert metadata["dead_letters"].value == 4
    # the run of one partition records that partition in etl_runs
    assert store.fetch_all("SELECT partition_key FROM etl_runs") == [("2024-11-01",)]


def test_row_count_check_fails_when_stores_disagree(store, clickhouse):
    run_unified_job()
    store.fetch_all("DELETE FROM unified_items WHERE external_id = (SELECT min(external_id) FROM unified_items "
                    "WHERE partition_date = '2024-11-02') RETURNING id")
    result = compare_row_counts(store, clickhouse, dt.date(2024, 11, 2), dt.date(2024, 11, 3))
    assert result.passed is False
    assert result.metadata["difference"].value == 1
    assert compare_row_counts(store, clickhouse, dt.date(2024, 11, 1), dt.date(2024, 11, 2)).passed is True


def test_record_that_moves_to_a_later_day_is_counted_once(store, clickhouse, tmp_path, monkeypatch):
    """A record re-dated to a later day moves partitions in core; the warehouse (read with FINAL,
    as every warehouse query is) agrees with core per day and in total."""
    csv = tmp_path / "orders.csv"
    raw_asset, resources = one_csv_source(tmp_path, monkeypatch, "external_id: id, title: name, published_at: day")

    def sync(day: str) -> None:
        # the custom raw asset is not among core's declared deps, so run the layers in order
        assert dg.materialize([raw_asset], partition_key=day, resources=resources).success
        downstream = [core_assets.core_unified_items, warehouse_unified_items]
        assert dg.materialize(downstream, partition_key=day, resources=resources).success

    csv.write_text("id,day,name\n1,2024-11-01,alpha\n2,2024-11-01,beta\n")
    sync("2024-11-01")
    csv.write_text("id,day,name\n1,2024-11-01,alpha\n2,2024-11-02,beta moved\n")
    sync("2024-11-02")

    core_days = dict(store.fetch_all("SELECT partition_date, count(*) FROM unified_items GROUP BY 1"))
    assert core_days == {dt.date(2024, 11, 1): 1, dt.date(2024, 11, 2): 1}
    wh_days = dict(clickhouse.query("SELECT partition_date, count() FROM unified_items FINAL GROUP BY 1").result_rows)
    assert wh_days == core_days
    assert clickhouse.query("SELECT title FROM unified_items FINAL WHERE external_id = '2'").result_rows == [
        ("beta moved",)
    ]
