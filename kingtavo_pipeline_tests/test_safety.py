"""Credentials stay out of run config, the UI and etl_runs; row values stay out of etl_runs;
ClickHouse migrations apply once however many threads or processes ask."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import dagster as dg
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa
from dagster._core.remote_representation.external_data import RepositorySnap, ResourceConfigEnvVarSnap
from dagster import build_init_resource_context
from dagster._serdes import serialize_value
from filelock import FileLock, Timeout

from kingtavo_pipeline.defs import resources
from kingtavo_pipeline_tests.io_helpers import load
from kingtavo_pipeline.defs.resources import ClickHouseResource, PostgresResource
from kingtavo_pipeline.io_managers.clickhouse import ClickHouseIOManager
from kingtavo_pipeline.io_managers.postgres import PostgresIOManager
from kingtavo_pipeline.storage.bookkeeping import etl_run
from kingtavo_pipeline.storage.errors import DatabaseError
from kingtavo_pipeline.storage.clickhouse import connect_clickhouse
from kingtavo_pipeline.storage.migrations import (
    clickhouse_migration_lock_path,
    load_migrations,
    migrate_clickhouse,
)
from kingtavo_pipeline.storage.upsert import upsert

PAYLOAD_SECRET = "sk_live_4f9a8b7c6d5e"
KEY = ["source_type", "source_name", "external_id"]

# --- store URLs are EnvVar references ----------------------------------------------------------


def _resource_snaps() -> dict:
    return {r.name: r for r in RepositorySnap.from_def(resources.defs().get_repository_def()).resources}


def test_store_urls_reach_resources_as_env_var_references(monkeypatch):
    monkeypatch.setenv("KINGTAVO_POSTGRES_URL", "postgresql://kingtavo:pw-4f9a8b@db.internal:5432/kingtavo")
    monkeypatch.setenv("KINGTAVO_CLICKHOUSE_URL", "https://default:pw-4f9a8b@ch.internal:8443")
    monkeypatch.setenv("KINGTAVO_CLICKHOUSE_DATABASE", "warehouse")
    snaps = _resource_snaps()
    expected = {
        "postgres": {"postgres_url": "KINGTAVO_POSTGRES_URL"},
        "clickhouse": {"clickhouse_url": "KINGTAVO_CLICKHOUSE_URL", "database": "KINGTAVO_CLICKHOUSE_DATABASE"},
    }
    for name, fields in expected.items():
        configured = snaps[name].configured_values
        for field, env in fields.items():
            assert configured[field] == ResourceConfigEnvVarSnap(name=env), (name, field, configured)
        # what the UI is sent: the variable's name, never its value
        assert "pw-4f9a8b" not in serialize_value(snaps[name])
    # one configuration path per store: the IO managers hold no URL, they use the store resources
    for io_manager, store in (("postgres_io_manager", "postgres"), ("clickhouse_io_manager", "clickhouse")):
        snap = snaps[io_manager]
        assert {"postgres_url", "clickhouse_url", "database"}.isdisjoint(snap.configured_values), snap.configured_values
        assert snap.nested_resources[store].name == store
        assert "pw-4f9a8b" not in serialize_value(snap)


def test_unset_store_urls_leave_the_fields_to_settings(monkeypatch):
    for name in ("KINGTAVO_POSTGRES_URL", "KINGTAVO_CLICKHOUSE_URL", "KINGTAVO_CLICKHOUSE_DATABASE"):
        monkeypatch.delenv(name)
    for snap in _resource_snaps().values():
        assert not any(isinstance(v, ResourceConfigEnvVarSnap) for v in snap.configured_values.values())
        assert {"postgres_url", "clickhouse_url"}.isdisjoint(k for k, v in snap.configured_values.items() if v != "null")


def test_a_run_resolves_the_env_var_and_keeps_the_url_out_of_run_config(store, postgres_url):
    @dg.asset
    def probe(postgres: PostgresResource) -> str:
        return postgres.store().url

    result = dg.materialize([probe], resources={"postgres": resources.defs().resources["postgres"]})
    assert result.success
    assert result.output_for_node("probe") == postgres_url
    assert postgres_url not in repr(result.dagster_run.run_config)


def test_clickhouse_database_names_are_validated_everywhere(clickhouse_dsn):
    for bad in ("bad-name", "x`; DROP DATABASE kingtavo; --", "1st"):
        for make in (lambda: ClickHouseResource(database=bad),
                     lambda: ClickHouseIOManager(clickhouse=ClickHouseResource(database=bad))):
            with pytest.raises(ValueError, match="invalid ClickHouse database name"):
                make()
        with pytest.raises(ValueError, match="invalid ClickHouse database name"):
            connect_clickhouse(clickhouse_dsn, bad)
    assert ClickHouseResource(database="ok_name_2").database == "ok_name_2"


def test_a_bad_database_in_the_env_var_fails_when_the_resource_starts(monkeypatch):
    monkeypatch.setenv("KINGTAVO_CLICKHOUSE_DATABASE", "no-dashes")

    @dg.asset
    def probe(clickhouse: ClickHouseResource) -> None:
        pass

    result = dg.materialize([probe], resources={"clickhouse": resources.defs().resources["clickhouse"]},
                            raise_on_error=False)
    assert not result.success
    failure = result.all_events[-1].event_specific_data.error.to_string()
    assert "invalid ClickHouse database name 'no-dashes'" in failure


# --- etl_runs.error_message holds no row values --------------------------------------------------


def _items(**overrides) -> pd.DataFrame:
    row = {
        "source_type": "csv",
        "source_name": "shop",
        "external_id": "a-1",
        "title": "Widget",
        "description": PAYLOAD_SECRET,
        "amount": 1.0,
        "metadata": "{}",
        "partition_date": dt.date(2024, 11, 1),
        "updated_at": pd.Timestamp("2024-11-01", tz="UTC"),
    }
    row.update(overrides)
    return pd.DataFrame([row])


def _fail_not_null(store):
    with store.transaction() as conn:
        upsert(conn, "unified_items", _items(title=None), KEY)  # DETAIL: Failing row contains (...)


def _fail_bad_value(store):
    with store.transaction() as conn:
        # the server's primary message quotes the value: invalid input syntax for type ...: "<value>"
        upsert(conn, "unified_items", _items(updated_at=PAYLOAD_SECRET), KEY)


def _fail_through_sqlalchemy(store):
    with store.engine.begin() as conn:
        # SQLAlchemy's text adds "[parameters: {...}]"
        conn.execute(
            sa.text("INSERT INTO unified_items (source_type, source_name, external_id, title) VALUES ('csv', 's', :id, NULL)"),
            {"id": PAYLOAD_SECRET},
        )


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        (_fail_not_null, "violates not-null constraint"),
        (_fail_bad_value, "invalid input syntax"),
        (_fail_through_sqlalchemy, "violates not-null constraint"),
    ],
)
def test_failed_run_records_class_and_server_message_but_no_row_values(store, fail, expected):
    with pytest.raises(Exception) as driver:
        fail(store)
    assert PAYLOAD_SECRET in str(driver.value)  # the driver's own text has it: that is the leak
    with pytest.raises(DatabaseError) as err:
        with etl_run(store, run_id="r-secret", asset_key="core/unified_items", partition_key="2024-11-01"):
            fail(store)
    message = store.fetch_value("SELECT error_message FROM etl_runs WHERE run_id = 'r-secret'")
    assert PAYLOAD_SECRET not in message
    assert expected in message
    assert message.startswith(type(driver.value).__name__)
    # what leaves etl_run (and reaches Dagster's event log) is the same text, the original not chained
    assert str(err.value) == message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert any(frame.name == fail.__name__ for frame in __import__("traceback").extract_tb(err.value.__traceback__))


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert failures
    return "\n".join(e.event_specific_data.error.to_string() for e in failures)


def test_dagster_event_log_gets_no_row_values_from_a_failed_step(store, postgres_url):
    """A database error in an asset body (inside etl_run) and one in the PostgreSQL IO manager's
    write: the step failure Dagster stores and shows names the error, not the failing row."""

    @dg.asset
    def body(context):
        with etl_run(store, run_id=context.run.run_id, asset_key="body", partition_key=None):
            _fail_not_null(store)

    with store.transaction() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS safety")
        conn.execute("CREATE TABLE IF NOT EXISTS safety.strict (id text NOT NULL, secret text NOT NULL)")

    @dg.asset
    def strict() -> pd.DataFrame:
        return pd.DataFrame({"id": [None], "secret": [PAYLOAD_SECRET]})  # Failing row contains (null, <secret>)

    iom = PostgresIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema="safety")
    for asset, expected in ((body, "violates not-null constraint"), (strict, 'null value in column "id"')):
        result = dg.materialize([asset], resources={"io_manager": iom}, raise_on_error=False)
        assert not result.success
        text = _failure_text(result)
        assert expected in text and "DatabaseError" in text
        assert PAYLOAD_SECRET not in text


def test_failed_run_message_is_redacted(store):
    with pytest.raises(RuntimeError):
        with etl_run(store, run_id="r-url", asset_key="core/x", partition_key=None):
            raise RuntimeError("lost postgresql://kingtavo:pw-4f9a8b@db.internal/kingtavo")
    message = store.fetch_value("SELECT error_message FROM etl_runs WHERE run_id = 'r-url'")
    assert "pw-4f9a8b" not in message and "db.internal" in message


@pytest.mark.parametrize("typ", [pd.DataFrame, pa.RecordBatchReader], ids=["whole", "stream"])
def test_io_manager_read_failing_on_a_row_names_no_value(store, postgres_url, typ):
    """A read that fails on a row's value (a view casting text): the error that reaches the asset,
    whole-table or streamed (the stream fails while the asset reads it), carries no value."""
    with store.transaction() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS safety")
        conn.execute("CREATE TABLE IF NOT EXISTS safety.src (id int, v text)")
        conn.execute("INSERT INTO safety.src SELECT g, g::text FROM generate_series(1, 20000) g")
        conn.execute("INSERT INTO safety.src VALUES (20001, %s)", (PAYLOAD_SECRET,))
        conn.execute("CREATE OR REPLACE VIEW safety.casted AS SELECT id, v::bigint AS v FROM safety.src")
    iom = PostgresIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema="safety")
    # a stream's reader hands the generator's error on as ArrowInvalid, its text included
    with pytest.raises((DatabaseError, pa.ArrowInvalid), match='InvalidTextRepresentation: '
                       'invalid input syntax for type bigint: "…"') as err:
        out = load(iom.create_io_manager(build_init_resource_context()), ["casted"], typ)
        if typ is pa.RecordBatchReader:
            out.read_all()
    assert PAYLOAD_SECRET not in str(err.value)


# --- ClickHouse migrations: locked, and once per process ----------------------------------------


def _counting(client):
    """Count the statements a client sends (instance attributes shadow its methods)."""
    calls: list[str] = []
    for name in ("command", "query", "insert"):
        method = getattr(client, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)

        setattr(client, name, counted)
    return calls


def _rows_per_version(client, database: str) -> dict[int, int]:
    # No FINAL: a second apply would show as a second row until a merge.
    rows = client.query(f"SELECT version, count() FROM `{database}`.schema_migrations GROUP BY version").result_rows
    return dict(rows)


def test_clickhouse_migrations_apply_once_from_threads_and_then_not_at_all(clickhouse, clickhouse_dsn):
    database = f"mig_{uuid.uuid4().hex[:10]}"
    threads_n = 4
    clients = [connect_clickhouse(clickhouse_dsn, database) for _ in range(threads_n)]
    # Every thread reads schema_migrations before any applies (the race a lock must prevent); with
    # the lock only one thread reaches the barrier, which then breaks and lets it go on.
    barrier = threading.Barrier(threads_n, timeout=2)
    results: list = []

    def run(client):
        query = client.query

        def query_then_wait(*args, **kwargs):
            out = query(*args, **kwargs)
            if "schema_migrations" in str(args[0]):
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:
                    pass
            return out

        client.query = query_then_wait
        try:
            results.append(migrate_clickhouse(client))
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    try:
        workers = [threading.Thread(target=run, args=(c,)) for c in clients]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not [r for r in results if isinstance(r, Exception)], results
        versions = [m.version for m in load_migrations("clickhouse")]
        applied = [r for r in results if r]
        assert len(applied) == 1 and len(applied[0]) == len(versions), results
        assert results.count([]) == threads_n - 1
        assert _rows_per_version(clickhouse, database) == {v: 1 for v in versions}

        # Later connects in this process send nothing at all.
        again = connect_clickhouse(clickhouse_dsn, database)
        try:
            calls = _counting(again)
            assert migrate_clickhouse(again) == []
            assert calls == []
        finally:
            again.close()
    finally:
        for c in clients:
            c.close()


def test_clickhouse_migration_holds_a_file_lock_other_processes_wait_on(clickhouse, clickhouse_dsn):
    database = f"mig_{uuid.uuid4().hex[:10]}"
    client = connect_clickhouse(clickhouse_dsn, database)
    try:
        lock_path = clickhouse_migration_lock_path(client)
        assert lock_path is not None and lock_path.parent.exists()
        held: list[bool] = []
        command = client.command

        def command_checking_lock(*args, **kwargs):
            # A second FileLock is what another process would take: it must not get it now.
            try:
                with FileLock(str(lock_path), timeout=0):
                    held.append(False)
            except Timeout:
                held.append(True)
            return command(*args, **kwargs)

        client.command = command_checking_lock
        assert migrate_clickhouse(client)
        assert held and all(held)
    finally:
        client.close()
