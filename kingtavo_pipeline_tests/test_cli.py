"""The `kingtavo` command and the Dagster CLI as a newcomer and CI use them, in real subprocesses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest

from kingtavo_pipeline.storage.clickhouse import CLICKHOUSE_POOL, connect_clickhouse

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KINGTAVO_", "DAGSTER_"))}
    env.update(extra)
    return env


def dead_letters_command(tmp_path: Path, postgres_url: str, clickhouse_dsn: str):
    """``kingtavo dead-letters <args>`` in a subprocess against the test stores; returns its stdout."""
    env = _clean_env(KINGTAVO_POSTGRES_URL=postgres_url, KINGTAVO_CLICKHOUSE_URL=clickhouse_dsn,
                     KINGTAVO_HOME=str(tmp_path), DAGSTER_HOME=str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()

    def kingtavo(*args: str) -> str:
        out = subprocess.run([str(BIN / "kingtavo"), "dead-letters", *args], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "Traceback" not in out.stderr
        return out.stdout

    return kingtavo


def test_demo_runs_on_fully_embedded_defaults(tmp_path):
    """README's first command, minus the install: no URLs set, everything starts under .kingtavo/."""
    out = subprocess.run(
        [str(BIN / "kingtavo"), "demo"], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert re.search(r"unified_items\s+64\b", text), text
    # the CSV/feed records (66) and the API records pulled from the sandbox
    assert re.search(r"printavo/printavo\s+[1-9]\d*\s+[1-9]\d*", text), text
    assert re.search(r"salla/salla\s+[1-9]\d*\s+[1-9]\d*", text), text
    assert re.search(r"orders_fact: [1-9]\d* line rows", text), text
    assert "2024-11-01: 22, 2024-11-02: 22, 2024-11-03: 20" in text
    assert "PASS  core/unified_items core_reflects_raw" in text
    assert "FAIL  " not in text, text  # failed WARN checks read WARN and do not fail the demo
    assert "PASS  warehouse/unified_items row_count_matches_core" in text
    assert "invalid_type" in text and "invalid_value" in text
    # signed sandbox Salla webhooks through the ingress it started, applied by webhook_events_job
    assert "Webhooks: 4 signed Salla deliveries posted to the ingress: 1 duplicate, 3 stored" in text, text
    assert "webhook_events: 3 applied, 0 failed, 0 ignored, 0 pending" in text, text
    changed = re.findall(r"salla/\d+ order \d+: (\w+) -> (\w+) \((\w+)\); orders_fact: (\w+) \([1-9]\d* line rows\)", text)
    assert len(changed) == 3, text
    # each status changed, and the warehouse shows core's new status
    assert all(before != after and core == fact for before, after, core, fact in changed), changed
    assert re.search(r"\(webhook_events_job\): SUCCESS", text), text
    assert "dagster dev" in text
    home = tmp_path / ".kingtavo"
    assert (home / "postgres" / "PG_VERSION").exists()

    status = subprocess.run(
        [str(BIN / "kingtavo"), "status"], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=300
    )
    assert status.returncode == 0, status.stderr
    # the late-records pass runs core again for the days API records landed in outside the range
    assert re.search(r"core/unified_items\s+\S+\s+success", status.stdout), status.stdout
    assert re.search(r"core/entities\s+\S+\s+success .* [1-9]\d*/[1-9]\d*/0", status.stdout), status.stdout
    assert re.search(r"csv/shop_orders\s+2024-11-03T", status.stdout), status.stdout
    assert re.search(r"shop_orders\s+invalid_type\s+1\s+1", status.stdout), status.stdout
    assert (home / "clickhouse").is_dir()
    assert (home / "dagster" / "dagster.yaml").exists()


def test_db_migrate_is_idempotent(postgres_url, tmp_path):
    env = _clean_env(KINGTAVO_POSTGRES_URL=postgres_url, KINGTAVO_HOME=str(tmp_path))
    first = subprocess.run([str(BIN / "kingtavo"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "ClickHouse" in first.stdout and "0001_unified_items" in first.stdout
    second = subprocess.run([str(BIN / "kingtavo"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("up to date") == 2


def test_unreachable_store_is_one_line_error(tmp_path):
    env = _clean_env(KINGTAVO_POSTGRES_URL="postgresql://u:pw@127.0.0.1:1/x", KINGTAVO_HOME=str(tmp_path))
    out = subprocess.run([str(BIN / "kingtavo"), "db", "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "cannot reach PostgreSQL at postgresql://u:***@127.0.0.1:1/x" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("command", "name"), [("sandbox", "sandbox server"), ("serve", "webhook ingress")])
def test_server_on_a_taken_port_is_one_line_error(tmp_path, command, name):
    """Something already listens on the port (an earlier sandbox, say): the command says so in one
    line instead of a traceback about a server thread that did not start."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([str(BIN / "kingtavo"), command, "--port", str(port)], env=_clean_env(KINGTAVO_HOME=str(tmp_path)),
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert f"Error: the {name} cannot listen on 127.0.0.1:{port}: the address is in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_two_runs_started_together_both_succeed(store, postgres_url, tmp_path):
    """Two `dagster asset materialize` runs on one chDB path: the clickhouse pool queues, nothing crashes."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    chdb_path = tmp_path / "clickhouse"
    env = _clean_env(
        KINGTAVO_POSTGRES_URL=postgres_url,
        KINGTAVO_CLICKHOUSE_URL=f"chdb://{chdb_path}",
        KINGTAVO_HOME=str(tmp_path / "home"),
        DAGSTER_HOME=str(dagster_home),
    )
    # Create the instance's storage once and fix the pool's limit, as a deployment does before it
    # runs anything (`dagster instance concurrency set clickhouse 1`).
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.event_log_storage.set_concurrency_slots(CLICKHOUSE_POOL, 1)

    def materialize(day: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "dagster"), "asset", "materialize", "-m", "kingtavo_pipeline.definitions",
             # the CSV/feed graph (the API sources need the sandbox running)
             "--select", "raw/csv/shop_orders,raw/csv/suppliers,raw/csv/catalog,raw/rss/tech_news,"
             "raw/rss/release_notes,core/unified_items,warehouse/unified_items", "--partition", day,
             "--config-json", '{"execution": {"config": {"in_process": {}}}}'],
            env=env, capture_output=True, text=True, timeout=900,
        )

    days = ("2024-11-01", "2024-11-02")
    # both start together; .result() re-raises whatever a thread raised (a timeout, say)
    with ThreadPoolExecutor(max_workers=2) as pool:
        outputs = dict(zip(days, [f.result() for f in [pool.submit(materialize, day) for day in days]]))
    for day, out in outputs.items():
        assert out.returncode == 0, f"{day}:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    client = connect_clickhouse(f"chdb://{chdb_path}", "kingtavo")
    try:
        per_day = dict(client.query("SELECT toString(partition_date), count() FROM unified_items FINAL GROUP BY 1").result_rows)
    finally:
        client.close()
    assert per_day == {"2024-11-01": 22, "2024-11-02": 22}
    assert store.fetch_value("SELECT count(*) FROM unified_items") == 44


def test_dead_letters_command_lists_retries_and_resolves(store, postgres_url, clickhouse_dsn, tmp_path):
    from kingtavo_pipeline_tests.pipeline_helpers import run_unified_job

    assert run_unified_job().success  # the samples leave two map-stage dead letters
    kingtavo = dead_letters_command(tmp_path, postgres_url, clickhouse_dsn)

    listed = kingtavo("list")
    assert "ORD-1006" in listed and "ORD-1019" in listed and "invalid_type" in listed
    ids = dict(store.fetch_all("SELECT source_id, id FROM dead_letters"))

    # retried with nothing fixed: mapped again from the stored observation, failing again, reopened
    retried = kingtavo("retry", str(ids["ORD-1006"]))
    assert "1 dead letter(s) marked for retry" in retried and "After the retry: 1 open" in retried
    assert store.fetch_all("SELECT status, attempts FROM dead_letters WHERE source_id = 'ORD-1006'") == [("open", 2)]

    resolved = kingtavo("resolve", "--ignore", "--note", "cancelled order", str(ids["ORD-1019"]))
    assert "1 dead letter(s) ignored" in resolved
    assert "ORD-1019" not in kingtavo("list") and "ORD-1019" in kingtavo("list", "--status", "ignored")
    assert store.fetch_value("SELECT resolution FROM dead_letters WHERE source_id = 'ORD-1019'") == "cancelled order"


def test_dead_letters_retry_applies_fixed_webhook_events_again(store, postgres_url, clickhouse_dsn, tmp_path):
    """Stage webhook: a failed event goes back to pending and through webhook_events_job again; the
    one fixed meanwhile (its stored payload corrected) resolves, the other reopens."""
    import psycopg.types.json

    from kingtavo_pipeline.defs.resources import PostgresResource
    from kingtavo_pipeline.defs.webhooks.assets import raw_webhook_events

    order = {"event": "order.updated", "merchant": 1234509876, "data": {
        "id": 77, "reference_id": "R77", "status": {"slug": "completed"}, "currency": "SAR",
        "date": {"date": "2024-11-02 10:00:00.000000", "timezone_type": 3, "timezone": "Asia/Riyadh"},
        "updated_at": {"date": "2024-11-02 12:00:00.000000", "timezone_type": 3, "timezone": "Asia/Riyadh"},
        "amounts": {"total": {"amount": 100, "currency": "SAR"}}}}  # no items: cannot be applied
    with store.transaction() as conn:
        for payload in (order, {"event": "foo.bar", "merchant": 1234509876, "data": {"id": 1}}):
            conn.execute("INSERT INTO webhook_events (source_name, provider, event_type, dedupe_key, payload) "
                         "VALUES ('salla', 'salla', %s, gen_random_uuid()::text, %s)",
                         (payload["event"], psycopg.types.json.Jsonb(payload)))
    with dg.instance_for_test() as instance:
        dg.materialize([raw_webhook_events], instance=instance, resources={"postgres": PostgresResource()},
                       tags={"dagster/asset_partition_range_start": "2024-11-01",
                             "dagster/asset_partition_range_end": "2024-11-03", "kingtavo/events_orphans": "true"})
    assert store.fetch_all("SELECT status FROM webhook_events ORDER BY id") == [("failed",), ("failed",)]
    kingtavo = dead_letters_command(tmp_path, postgres_url, clickhouse_dsn)

    listed = kingtavo("list", "--stage", "webhook")
    assert "bad_payload" in listed and "unknown_event" in listed
    # the operator fixes the order's stored payload (its lines were missing), then retries both
    order["data"]["items"] = [{"id": 770, "name": "Shirt", "sku": "SH-1", "quantity": 1,
                               "amounts": {"total": {"amount": 100, "currency": "SAR"}}}]
    store.fetch_all("UPDATE webhook_events SET payload = %s WHERE event_type = 'order.updated' RETURNING id",
                    (psycopg.types.json.Jsonb(order),))
    retried = kingtavo("retry", "--stage", "webhook", "--all")
    assert "2 dead letter(s) marked for retry. 2 webhook event(s) pending again." in retried, retried
    assert "After the retry: 1 open, 1 resolved" in retried, retried
    assert store.fetch_all("SELECT event_type, status FROM webhook_events ORDER BY id") == [
        ("order.updated", "applied"), ("foo.bar", "failed")]
    assert store.fetch_all("SELECT error_type, status, attempts FROM dead_letters ORDER BY id") == [
        ("bad_payload", "resolved", 2), ("unknown_event", "open", 2)]
    assert store.fetch_value("SELECT count(*) FROM raw_data WHERE source_id = '77'") == 1
