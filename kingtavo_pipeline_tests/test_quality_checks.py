"""The data-quality checks on real loads into PostgreSQL and chDB: every check passes on a clean
partition and fails on one broken for the reason it names, one evaluation per partition."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

import kingtavo_pipeline.defs.core.assets as core_assets
from kingtavo_pipeline.definitions import defs as load_definitions
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.warehouse.assets import warehouse_unified_items
from kingtavo_pipeline.defs.warehouse.checks import row_count_matches_core
from kingtavo_pipeline_tests.pipeline_helpers import SAMPLE_END, SAMPLE_START, one_csv_source
from kingtavo_pipeline_tests.quality_helpers import (
    checks_def,
    evaluations,
    quality_location,
    range_tags,
    run_checks,
    values,
)

pytestmark = pytest.mark.slow

DAYS = ("2024-11-01", "2024-11-02", "2024-11-03")
CORE = "core/unified_items"
WAREHOUSE = "warehouse/unified_items"


def verdicts(result, asset: str, check: str) -> dict[str, bool]:
    return {p: e.passed for (a, c, p), e in evaluations(result).items() if a == asset and c == check}


def test_every_check_passes_on_the_samples_then_fails_for_its_reason(store, clickhouse):
    job = quality_location().resolve_job_def("unified_items_job")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags=range_tags(SAMPLE_START, SAMPLE_END))
    assert result.success
    found = evaluations(result)
    names = {(a, c) for a, c, _ in found}
    assert {(CORE, "completeness"), (CORE, "validity"), (CORE, "money_non_negative"), (CORE, "core_row_has_raw_record"),
            (CORE, "volume_anomaly"), (WAREHOUSE, "unique_keys"), (WAREHOUSE, "amount_sum_matches_core"),
            (WAREHOUSE, "row_count_matches_core"), ("raw/csv/shop_orders", "schema_drift"),
            ("raw/rss/tech_news", "volume_anomaly")} <= names
    # a single-run backfill reports every check once per partition, all passing on the samples
    for asset, check in names - {(CORE, "core_reflects_raw")}:
        assert {p: e.passed for (a, c, p), e in found.items() if (a, c) == (asset, check)} == dict.fromkeys(DAYS, True), (asset, check)
    volume = values(found[(CORE, "volume_anomaly", "2024-11-02")])
    assert volume["status"] == "insufficient_history" and volume["history_days"] == 1 and volume["rows"] == 22

    # Break each check's subject on 2024-11-02 (and the warehouse on other days), in the stores.
    with store.transaction() as conn:
        conn.execute("UPDATE unified_items SET category = NULL WHERE partition_date = '2024-11-02' AND source_type = 'csv'")
        conn.execute("UPDATE unified_items SET published_at = now() + interval '30 days' "
                     "WHERE external_id = (SELECT min(external_id) FROM unified_items WHERE partition_date = '2024-11-02')")
        conn.execute("UPDATE unified_items SET amount = -amount WHERE external_id = 'ORD-1010'")
        lost_raw = conn.execute("DELETE FROM raw_data WHERE id = (SELECT raw_data_id FROM unified_items "
                                "WHERE external_id = 'ORD-1011') RETURNING source_id").fetchone()[0]
        rss_row = conn.execute("DELETE FROM unified_items WHERE id = (SELECT min(id) FROM unified_items "
                               "WHERE partition_date = '2024-11-03' AND source_type = 'rss') RETURNING external_id").fetchone()[0]
        conn.execute(
            "INSERT INTO raw_data (source_type, source_name, entity, source_id, partition_date, payload, payload_hash) "
            "VALUES ('csv', 'shop_orders', 'orders', 'ORD-9999', '2024-11-03', "
            "'{\"order_id\": \"ORD-9999\", \"product\": \"x\", \"qty\": 2, \"coupon\": \"WELCOME\"}', 'h')")
    assert store.fetch_value("SELECT partition_date FROM unified_items WHERE external_id = 'ORD-1010'") == dt.date(2024, 11, 2)
    # warehouse: an older version of a 11-02 key (FINAL hides it) and a 11-01 key copied to 11-04
    clickhouse.command("INSERT INTO unified_items SELECT * REPLACE (0 AS _version) FROM unified_items "
                       "WHERE partition_date = '2024-11-02' ORDER BY external_id LIMIT 1")
    clickhouse.command("INSERT INTO unified_items SELECT * REPLACE (toDate('2024-11-04') AS partition_date) FROM "
                       "(SELECT * FROM unified_items WHERE partition_date = '2024-11-01' ORDER BY external_id LIMIT 1)")

    core = run_checks(checks_def("core_unified_items_quality_checks"), start=SAMPLE_START, end=SAMPLE_END)
    assert not core.success  # money and consistency block
    found = evaluations(core)
    assert set(p for *_, p in found) == set(DAYS)
    for check in ("completeness", "validity", "money_non_negative", "core_row_has_raw_record"):
        assert verdicts(core, CORE, check) == {"2024-11-01": True, "2024-11-02": False, "2024-11-03": True}, check
    completeness = found[(CORE, "completeness", "2024-11-02")]
    assert values(completeness)["failing_columns"] == ["category"]
    assert values(completeness)["missing_rate:category"] == 1.0 and values(completeness)["missing_rate:amount"] == 0.0
    assert completeness.severity == dg.AssetCheckSeverity.WARN and "category" in completeness.description
    validity = found[(CORE, "validity", "2024-11-02")]
    assert values(validity)["failing_rules"] == ["not_in_future:published_at"]
    assert values(validity)["invalid:not_in_future:published_at"] == 1 and values(validity)["invalid:one_of:source_type"] == 0
    money = found[(CORE, "money_non_negative", "2024-11-02")]
    assert money.severity == dg.AssetCheckSeverity.ERROR and money.blocking
    assert values(money)["sample_keys"] == ["shop_orders/ORD-1010"]
    lineage = found[(CORE, "core_row_has_raw_record", "2024-11-02")]
    assert values(lineage)["violations"] == 1 and values(lineage)["sample_keys"] == [f"shop_orders/{lost_raw}"]
    assert "payload" not in str(values(money)) and "Espresso" not in str(values(lineage))

    warehouse = run_checks(checks_def("warehouse_unified_items_quality_checks"), start=SAMPLE_START, end=SAMPLE_END)
    unique = {p: evaluations(warehouse)[(WAREHOUSE, "unique_keys", p)] for p in DAYS}
    assert [(unique[p].passed, unique[p].severity) for p in DAYS] == [
        (False, dg.AssetCheckSeverity.ERROR), (False, dg.AssetCheckSeverity.WARN), (True, dg.AssetCheckSeverity.ERROR)]
    assert values(unique["2024-11-01"])["keys_in_other_partitions"] == 1
    assert values(unique["2024-11-02"])["duplicates_hidden_by_final"] == 1
    assert values(unique["2024-11-02"])["duplicates_after_final"] == 0
    assert verdicts(warehouse, WAREHOUSE, "amount_sum_matches_core") == {
        "2024-11-01": True, "2024-11-02": False, "2024-11-03": True}
    sums = values(evaluations(warehouse)[(WAREHOUSE, "amount_sum_matches_core", "2024-11-02")])
    assert sums["sum_difference:amount"] > 0 and sums["core_sum:amount"] < sums["warehouse_sum:amount"]

    counts = run_checks(row_count_matches_core, start=SAMPLE_START, end=SAMPLE_END)
    assert verdicts(counts, WAREHOUSE, "row_count_matches_core") == {
        "2024-11-01": True, "2024-11-02": True, "2024-11-03": False}
    assert values(evaluations(counts)[(WAREHOUSE, "row_count_matches_core", "2024-11-03")])["difference"] == 1
    assert rss_row

    raw = run_checks(checks_def("raw_quality_checks"), partition="2024-11-03")
    drift = evaluations(raw)[("raw/csv/shop_orders", "schema_drift", "2024-11-03")]
    assert not drift.passed and values(drift)["new_field_names"] == ["coupon"]
    assert values(drift)["retyped_field_names"] == ["qty: string -> number/string"]
    # a single-partition run (the UI's Execute on one partition) evaluates that partition only
    assert {p for *_, p in evaluations(raw)} == {"2024-11-03"}
    assert evaluations(raw)[("raw/csv/catalog", "schema_drift", "2024-11-03")].passed
    assert run_checks(checks_def("raw_quality_checks"), partition="2024-11-02").success


def test_volume_anomaly_waits_for_history_then_flags_a_spike(store, clickhouse, tmp_path, monkeypatch):
    raw, resources = one_csv_source(tmp_path, monkeypatch, "external_id: id, title: name, amount: amount")
    first = dt.date(2024, 3, 1)
    rows = [f"{d}-{i},{(first + dt.timedelta(days=d)).isoformat()},item,10" for d in range(10) for i in range(5)]
    rows += [f"10-{i},{(first + dt.timedelta(days=10)).isoformat()},item,10" for i in range(40)]
    (tmp_path / "orders.csv").write_text("id,day,name,amount\n" + "\n".join(rows) + "\n")
    assert dg.materialize([raw], partition_key=first.isoformat(), resources=resources).success
    last = (first + dt.timedelta(days=10)).isoformat()
    assert dg.materialize([core_assets.core_unified_items], tags=range_tags(first.isoformat(), last),
                          resources=resources).success
    result = run_checks(checks_def("core_unified_items_quality_checks"), start=first.isoformat(), end=last)
    volume = {p: e for (a, c, p), e in evaluations(result).items() if c == "volume_anomaly"}
    assert len(volume) == 11
    statuses = [values(volume[(first + dt.timedelta(days=d)).isoformat()])["status"] for d in range(11)]
    assert statuses == ["insufficient_history"] * 7 + ["ok"] * 3 + ["anomaly"]
    spike = volume[last]
    assert not spike.passed and spike.severity == dg.AssetCheckSeverity.WARN
    assert values(spike)["rows"] == 40 and values(spike)["rows_median"] == 5.0 and values(spike)["rows_z"] > 3.5
    assert values(spike)["sum:amount_z"] > 3.5 and "rows 40" in spike.description
    assert all(volume[(first + dt.timedelta(days=d)).isoformat()].passed for d in range(10))


def test_a_failed_blocking_check_keeps_the_warehouse_from_loading(store, clickhouse, tmp_path, monkeypatch):
    raw, resources = one_csv_source(tmp_path, monkeypatch, "external_id: id, title: name, amount: amount")
    (tmp_path / "orders.csv").write_text("id,day,name,amount\n1,2024-11-01,a,5\n2,2024-11-02,b,-5\n3,2024-11-02,c,7\n")
    assert dg.materialize([raw], partition_key="2024-11-01", resources=resources).success
    graph = [core_assets.core_unified_items, warehouse_unified_items, checks_def("core_unified_items_quality_checks")]

    good = dg.materialize(graph, partition_key="2024-11-01", resources=resources)
    assert good.success
    assert {e.asset_key.to_user_string() for e in good.get_asset_materialization_events()} == {CORE, WAREHOUSE}

    bad = dg.materialize(graph, partition_key="2024-11-02", resources=resources, raise_on_error=False)
    assert not bad.success
    assert [e.asset_key.to_user_string() for e in bad.get_asset_materialization_events()] == [CORE]
    money = evaluations(bad)[(CORE, "money_non_negative", "2024-11-02")]
    assert not money.passed and values(money)["sample_keys"] == ["orders/2"]
    assert clickhouse.query("SELECT count() FROM unified_items WHERE partition_date = '2024-11-02'").result_rows == [(0,)]


def test_a_check_that_cannot_reach_its_store_fails_instead_of_passing(store, clickhouse):
    resources = {**load_definitions().resources,
                 "postgres": PostgresResource(postgres_url="postgresql://postgres@127.0.0.1:9/nowhere")}
    result = run_checks(checks_def("core_unified_items_quality_checks"), partition="2024-11-02", resources=resources)
    assert not result.success
    assert result.get_asset_check_evaluations() == []
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "could not reach their store" in message and "cannot reach PostgreSQL" in message
