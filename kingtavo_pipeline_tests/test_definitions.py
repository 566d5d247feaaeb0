"""The code location loads, is declarative, and importing it touches no store."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import dagster as dg

from kingtavo_pipeline.definitions import defs as load_definitions


def test_every_asset_is_described_owned_grouped_and_partitioned():
    definitions = load_definitions()
    graph = definitions.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"core/unified_items", "warehouse/unified_items", "raw/csv/shop_orders", "raw/rss/tech_news"} <= keys
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name and node.group_name != "default", key
        assert node.owners, key
        assert node.kinds, key
        assert node.partitions_def is not None, key
        assert "partition_expr" in node.metadata, key
    checks = {k.name for k in graph.asset_check_keys}
    assert {"core_reflects_raw", "row_count_matches_core"} <= checks
    assert definitions.resolve_job_def("unified_items_job") is not None
    assert sorted(s.name for s in definitions.schedules) == [
        "api_changes_job_schedule", "api_sources_hourly", "api_sources_job_schedule", "salla_daily", "salla_hourly",
        "unified_items_job_schedule"]
    assert {"webhook_events_sensor", "late_records_sensor", "quality_monitor"} <= {s.name for s in definitions.sensors}
    assert "raw/webhooks/events" in keys and graph.get(dg.AssetKey(["core", "orders"])).parent_keys >= {
        dg.AssetKey(["raw", "webhooks", "events"])}


def test_jobs_leave_freshness_checks_to_their_sensor():
    definitions = load_definitions()
    for name in ("unified_items_job", "api_sources_job", "salla_job", "late_records_job", "webhook_events_job"):
        job = definitions.resolve_job_def(name)
        assert not [n for n in job.graph.node_defs if "freshness" in n.name], name
    assert "quality_freshness" in {s.name for s in definitions.sensors}


def test_daily_schedules_take_yesterday_and_hourly_ones_today():
    definitions = load_definitions()
    at = datetime.datetime(2026, 3, 10, 1, 30, tzinfo=datetime.timezone.utc)
    daily = definitions.resolve_schedule_def("api_sources_job_schedule")
    hourly = definitions.resolve_schedule_def("api_sources_hourly")
    repository = definitions.get_repository_def()
    with dg.build_schedule_context(scheduled_execution_time=at, repository_def=repository) as context:
        assert [r.partition_key for r in daily.evaluate_tick(context).run_requests] == ["2026-03-09"]
    with dg.build_schedule_context(scheduled_execution_time=at, repository_def=repository) as context:
        assert [r.partition_key for r in hourly.evaluate_tick(context).run_requests] == ["2026-03-10"]


def test_warehouse_steps_are_in_the_clickhouse_pool():
    graph = load_definitions().resolve_asset_graph()
    warehouse = graph.assets_def_for_key(dg.AssetKey(["warehouse", "unified_items"]))
    assert {op.pool for op in warehouse.node_def.iterate_op_defs()} == {"clickhouse"}


def test_import_opens_no_connection_and_starts_no_server(tmp_path):
    """With no URLs set, importing the definitions must not start the embedded server or create chDB files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINGTAVO_")}
    env["KINGTAVO_HOME"] = str(tmp_path / "home")
    code = "import kingtavo_pipeline.definitions as d; d.defs(); print('loaded')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "loaded" in out.stdout
    assert not (tmp_path / "home").exists()


def test_dagster_definitions_validate_passes():
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    out = subprocess.run(
        [dagster, "definitions", "validate", "-m", "kingtavo_pipeline.definitions"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_steps_fork_from_a_preloaded_server_unless_run_config_says_otherwise():
    """Every job's executor is Dagster's default one with ``forkserver`` preloading the code
    location as its default start method; run config can still pick in_process or spawn."""
    from kingtavo_pipeline.defs.resources import PRELOAD, _forkserver_by_default

    executor = load_definitions().resolve_job_def("unified_items_job").executor_def
    assert executor.name == "multi_or_in_process_executor"
    assert _forkserver_by_default({"multiprocess": {"max_concurrent": 2}}) == {
        "multiprocess": {"max_concurrent": 2, "start_method": {"forkserver": {"preload_modules": PRELOAD}}}}
    assert _forkserver_by_default({"multiprocess": {"start_method": {"spawn": {}}}}) == {
        "multiprocess": {"start_method": {"spawn": {}}}}
    assert _forkserver_by_default({"in_process": {}}) == {"in_process": {}}
    assert PRELOAD == ["kingtavo_pipeline.definitions"]
