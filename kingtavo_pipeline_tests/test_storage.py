"""The storage layer against real PostgreSQL and chDB: migrations, upsert, raw landing, dead letters."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from kingtavo_pipeline.storage.bookkeeping import (
    etl_run,
    get_checkpoint,
    land_raw,
    mark_for_retry,
    record_dead_letters,
    set_checkpoint,
)
from kingtavo_pipeline.storage.migrations import migrate_clickhouse, migrate_postgres
from kingtavo_pipeline.storage.upsert import upsert

KEY = ["source_type", "source_name", "external_id"]


def _items(ids, titles, updated, amount=None):
    n = len(ids)
    return pd.DataFrame(
        {
            "source_type": ["csv"] * n,
            "source_name": ["shop"] * n,
            "external_id": ids,
            "title": titles,
            "amount": amount or [1.0] * n,
            "metadata": ["{}"] * n,
            "partition_date": [dt.date(2024, 11, 1)] * n,
            "updated_at": pd.to_datetime(updated, utc=True),
        }
    )


def test_migrations_are_recorded_and_idempotent(store, clickhouse):
    assert migrate_postgres(store) == []
    versions = [r[0] for r in store.fetch_all("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions and versions[0] == 1
    assert migrate_clickhouse(clickhouse) == []
    assert clickhouse.query("SELECT count() FROM schema_migrations FINAL").result_rows[0][0] >= 1


def test_upsert_inserts_updates_and_never_lets_older_win(store):
    with store.transaction() as conn:
        first = upsert(conn, "unified_items", _items(["a", "b"], ["A1", "B1"], ["2024-11-01", "2024-11-01"]), KEY)
    assert (first.inserted, first.updated) == (2, 0)

    with store.transaction() as conn:
        again = upsert(conn, "unified_items", _items(["a", "b"], ["A1", "B1"], ["2024-11-01", "2024-11-01"]), KEY)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)

    newer_and_older = _items(["a", "b"], ["A2", "B0"], ["2024-11-02", "2024-10-01"])
    with store.transaction() as conn:
        mixed = upsert(conn, "unified_items", newer_and_older, KEY)
    assert (mixed.inserted, mixed.updated) == (0, 1)
    titles = dict(store.fetch_all("SELECT external_id, title FROM unified_items"))
    assert titles == {"a": "A2", "b": "B1"}


def test_upsert_keeps_newest_duplicate_within_batch(store):
    batch = _items(["a", "a", "a"], ["old", "newest", "middle"], ["2024-11-01", "2024-11-03", "2024-11-02"])
    with store.transaction() as conn:
        result = upsert(conn, "unified_items", batch, KEY)
    assert result.inserted == 1
    assert store.fetch_value("SELECT title FROM unified_items") == "newest"


def test_failed_upsert_rolls_back(store):
    with store.transaction() as conn:
        upsert(conn, "unified_items", _items(["a"], ["kept"], ["2024-11-01"]), KEY)
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as conn:
            upsert(conn, "unified_items", _items(["a", "z"], ["lost", "lost"], ["2024-12-01", "2024-12-01"]), KEY)
            raise RuntimeError("boom")
    assert store.fetch_all("SELECT external_id, title FROM unified_items") == [("a", "kept")]


def test_raw_landing_stores_identical_records_once(store):
    raw = pd.DataFrame(
        {"source_id": ["1", "2"], "partition_date": [dt.date(2024, 11, 1)] * 2, "payload": ['{"a": 1}', '{"b": 2}']}
    )
    for _ in range(2):
        with store.transaction() as conn:
            land_raw(conn, raw, source_type="csv", source_name="shop", entity="orders", run_id="r1")
    changed = raw.assign(payload=['{"a": 1}', '{"b": 3}'])
    with store.transaction() as conn:
        result = land_raw(conn, changed, source_type="csv", source_name="shop", entity="orders", run_id="r2")
    assert result.inserted == 1
    assert store.fetch_value("SELECT count(*) FROM raw_data") == 3


def test_a_dead_letter_is_recorded_once_per_distinct_failure(store):
    rejects = pd.DataFrame(
        {"source_id": ["9"], "payload": ["not json at all"], "error_type": ["malformed_payload"], "error_message": ["x"]}
    )

    def record() -> int:
        with store.transaction() as conn:
            return record_dead_letters(
                conn, rejects, stage="map", source_type="csv", source_name="shop", entity="orders", run_id="r"
            )

    assert [record() for _ in range(3)] == [1, 0, 0]  # new once, then the failure already on record
    rows = store.fetch_all("SELECT source_id, payload #>> '{}', attempts, status FROM dead_letters")
    assert rows == [("9", "not json at all", 1, "open")]
    # a retry counts an attempt; failing again reopens it and counts as a failure again
    with store.transaction() as conn:
        assert len(mark_for_retry(conn, ids=None, source="shop")) == 1
    assert record() == 1
    assert store.fetch_all("SELECT attempts, status FROM dead_letters") == [(2, "open")]


def test_reobserving_reverted_content_restamps_it_as_newest(store):
    def land(payload: str) -> tuple[int, int]:
        raw = pd.DataFrame({"source_id": ["1"], "partition_date": [dt.date(2024, 11, 1)], "payload": [payload]})
        with store.transaction() as conn:
            result = land_raw(conn, raw, source_type="csv", source_name="shop", entity="orders", run_id="r")
        return result.inserted, result.reobserved

    assert [land('{"v": "A"}'), land('{"v": "B"}'), land('{"v": "B"}'), land('{"v": "A"}')] == [
        (1, 0), (1, 0), (0, 0), (0, 1)
    ]
    newest = store.fetch_value("SELECT payload->>'v' FROM raw_data ORDER BY observed_seq DESC LIMIT 1")
    assert newest == "A" and store.fetch_value("SELECT count(*) FROM raw_data") == 2


def test_etl_run_records_success_and_failure(store):
    with etl_run(store, run_id="r1", asset_key="core/x", partition_key="2024-11-01") as counts:
        counts.extracted, counts.loaded, counts.failed = 5, 4, 1
    with pytest.raises(ValueError):
        with etl_run(store, run_id="r2", asset_key="core/x", partition_key="2024-11-02"):
            raise ValueError("bad input")
    rows = store.fetch_all(
        "SELECT run_id, status, records_extracted, records_loaded, records_failed, error_message FROM etl_runs ORDER BY id"
    )
    assert rows[0] == ("r1", "success", 5, 4, 1, None)
    assert rows[1][:2] == ("r2", "failed") and "bad input" in rows[1][5]


def test_etl_run_names_an_interrupt_that_a_clean_up_error_hid(store):
    """A step interrupted inside a query may fail with the clean-up's error, raised while handling
    the interrupt: the run is still recorded as interrupted, not as that error alone."""
    with pytest.raises(RuntimeError):
        with etl_run(store, run_id="r3", asset_key="warehouse/x", partition_key=None):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("can't change 'autocommit' now") from None
    with pytest.raises(RuntimeError):
        with etl_run(store, run_id="r4", asset_key="warehouse/x", partition_key=None):
            raise RuntimeError("a plain failure")
    messages = dict(store.fetch_all("SELECT run_id, error_message FROM etl_runs"))
    assert "autocommit" in messages["r3"] and "(interrupted:" in messages["r3"]
    assert "(interrupted:" not in messages["r4"]


def test_checkpoint_moves_only_with_its_transaction(store):
    with pytest.raises(RuntimeError):
        with store.transaction() as conn:
            set_checkpoint(conn, "csv", "shop", "orders", "2024-11-02", 10)
            raise RuntimeError("load failed")
    with store.transaction() as conn:
        assert get_checkpoint(conn, "csv", "shop", "orders") is None
        set_checkpoint(conn, "csv", "shop", "orders", "2024-11-01", 10)
    with store.transaction() as conn:
        assert get_checkpoint(conn, "csv", "shop", "orders") == "2024-11-01"


def test_a_bulk_write_refreshes_the_planners_statistics(store):
    """Core reads what the raw step landed seconds earlier: with statistics from before the write the
    planner takes the million rows for a handful (nested loops, no parallel workers)."""
    def land(first: int, n: int) -> None:
        raw = pd.DataFrame({"source_id": [str(i) for i in range(first, first + n)],
                            "partition_date": [dt.date(2024, 11, 1)] * n,
                            "payload": [f'{{"n": {i}}}' for i in range(first, first + n)]})
        with store.transaction() as conn:
            land_raw(conn, raw, source_type="csv", source_name="shop", entity="orders", run_id="r1")

    def known_rows() -> float:
        return store.fetch_value("SELECT reltuples FROM pg_class WHERE oid = 'raw_data'::regclass")

    land(0, 20_000)
    assert known_rows() < 20_000  # nothing has analyzed the table since it was emptied
    assert store.analyze_if_grown("raw_data", 20_000)
    assert known_rows() == 20_000
    land(20_000, 1_000)
    assert not store.analyze_if_grown("raw_data", 1_000)  # a small write leaves it to autovacuum
    assert known_rows() == 20_000
    land(21_000, 12_000)
    assert store.analyze_if_grown("raw_data", 12_000)
    assert known_rows() == 33_000
    assert not store.analyze_if_grown("no_such_table", 50_000)


def test_the_statistics_refresh_does_not_wait_for_a_vacuum(store, monkeypatch):
    """A VACUUM holding the table's SHARE UPDATE EXCLUSIVE lock (as an anti-wraparound one may for
    long) makes the refresh give up after a short wait instead of stalling the step."""
    import kingtavo_pipeline.storage.postgres as postgres_storage

    monkeypatch.setattr(postgres_storage, "ANALYZE_LOCK_TIMEOUT", "200ms")
    with store.transaction() as holder:
        holder.execute("LOCK TABLE raw_data IN SHARE UPDATE EXCLUSIVE MODE")
        assert not store.analyze_if_grown("raw_data", 50_000)
    assert store.analyze_if_grown("raw_data", 50_000)  # the lock gone, it runs
