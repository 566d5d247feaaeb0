"""A check's verdict is reused only while nothing it reads changed (``check_memo``): against the
PostgreSQL test database and chDB, with writes committed before, during and after an evaluation."""

from __future__ import annotations

import datetime as dt
import threading

import dagster as dg
import pytest

import kingtavo_pipeline.storage.changes as changes
from kingtavo_pipeline.storage.changes import (
    MEMO_MAX_AGE,
    block_ranges,
    clickhouse_fingerprint,
    postgres_fingerprint,
    remembered,
)
from kingtavo_pipeline_tests.pipeline_helpers import SAMPLE_END, SAMPLE_START
from kingtavo_pipeline_tests.quality_helpers import checks_def, evaluations, quality_location, range_tags, run_checks, values

CORE = "core/unified_items"


def _insert_raw(conn, source_id: str) -> None:
    conn.execute(
        "INSERT INTO raw_data (source_type, source_name, entity, source_id, partition_date, payload, payload_hash) "
        "VALUES ('csv', 'memo', 'orders', %s, '2024-11-01', '{}', %s)", (source_id, source_id))


def _count(store) -> int:
    return int(store.fetch_value("SELECT count(*) FROM raw_data WHERE source_name = 'memo'"))


def _remember(store, evaluate, **kwargs):
    return remembered(store, "test/raw_count", "2024-11-01/2024-11-02",
                      lambda: postgres_fingerprint(store, ["raw_data"]), evaluate,
                      encode=lambda v: v, decode=lambda v, _at: v, **kwargs)


def test_a_verdict_stands_until_a_write_to_what_it_read_commits(store):
    calls = []

    def evaluate():
        calls.append(1)
        return _count(store)

    with store.transaction() as conn:
        _insert_raw(conn, "a")
    assert _remember(store, evaluate) == (1, None)
    value, at = _remember(store, evaluate)
    assert (value, len(calls)) == (1, 1) and at is not None  # reused, not read again

    # a write that rolls back changes nothing, so the verdict still stands
    with pytest.raises(RuntimeError):
        with store.transaction() as conn:
            _insert_raw(conn, "rolled-back")
            raise RuntimeError("abort")
    assert _remember(store, evaluate)[0] == 1 and len(calls) == 1

    # a write of another table the check does not read leaves it standing too
    with store.transaction() as conn:
        conn.execute("INSERT INTO dead_letters (stage, source_type, source_name, entity, payload_hash, error_type, "
                     "error_message) VALUES ('map', 'csv', 'memo', 'orders', 'h', 'invalid_value', 'x')")
    assert _remember(store, evaluate)[0] == 1 and len(calls) == 1

    # any committed write to raw_data (here an out-of-band UPDATE) and it is evaluated again
    with store.transaction() as conn:
        conn.execute("UPDATE raw_data SET run_id = 'manual' WHERE source_name = 'memo'")
    assert _remember(store, evaluate) == (1, None) and len(calls) == 2
    with store.transaction() as conn:
        _insert_raw(conn, "b")
    assert _remember(store, evaluate) == (2, None) and len(calls) == 3

    # an old verdict is evaluated again even when nothing changed (clock-dependent rules)
    later = dt.datetime.now(dt.timezone.utc) + MEMO_MAX_AGE + dt.timedelta(minutes=1)
    assert _remember(store, evaluate, now=lambda: later) == (2, None) and len(calls) == 4


def test_a_long_change_log_is_cut_back_and_the_check_evaluated_again_once(store, monkeypatch):
    calls = []

    def evaluate():
        calls.append(1)
        return _count(store)

    for i in range(3):
        with store.transaction() as conn:
            _insert_raw(conn, f"r{i}")
    # the log as long as it may get (the fixture's TRUNCATE logged a row too)
    monkeypatch.setattr(changes, "COMPACT_AFTER", store.fetch_value(
        "SELECT count(*) FROM table_changes WHERE table_name = 'raw_data'"))
    assert _remember(store, evaluate) == (3, None)
    assert _remember(store, evaluate)[1] is not None and len(calls) == 1
    with store.transaction() as conn:
        _insert_raw(conn, "r3")  # one more logged write: the log is too long now
    assert _remember(store, evaluate) == (4, None) and len(calls) == 2
    assert store.fetch_value("SELECT count(*) FROM table_changes WHERE table_name = 'raw_data'") == 1
    assert _remember(store, evaluate) == (4, None) and len(calls) == 3  # remembered under the short log
    assert _remember(store, evaluate)[1] is not None and len(calls) == 3


def test_a_write_committed_during_the_evaluation_is_not_remembered(store):
    """The evaluation read the old state, the write then commits: the verdict must not be kept
    under a fingerprint that would also stand for the new state."""
    calls = []
    started, written = threading.Event(), threading.Event()

    def writer():
        started.wait(10)
        with store.transaction() as conn:
            _insert_raw(conn, "during")
        written.set()

    def evaluate():
        calls.append(1)
        value = _count(store)
        started.set()
        written.wait(10)
        return value

    thread = threading.Thread(target=writer)
    thread.start()
    assert _remember(store, evaluate) == (0, None)
    thread.join()
    # nothing was remembered: the next look evaluates and sees the row
    assert _remember(store, evaluate) == (1, None) and len(calls) == 2
    assert _remember(store, evaluate)[0] == 1 and len(calls) == 2


def test_fingerprints_name_unwatched_tables_as_unknown_and_follow_clickhouse_parts(store, clickhouse):
    with store.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS memo_scratch (x int)")
    assert postgres_fingerprint(store, ["memo_scratch"]) is None  # no change log: never remembered
    assert postgres_fingerprint(store, ["raw_data", "memo_scratch"]) is None

    clickhouse.command("CREATE OR REPLACE TABLE memo_parts (d Date, k UInt32, x UInt32) ENGINE = MergeTree "
                       "PARTITION BY d ORDER BY k")
    empty = clickhouse_fingerprint(clickhouse, ["memo_parts"])
    clickhouse.command("INSERT INTO memo_parts VALUES ('2024-11-01', 1, 1)")
    clickhouse.command("INSERT INTO memo_parts VALUES ('2024-11-01', 2, 2)")
    two = clickhouse_fingerprint(clickhouse, ["memo_parts"])
    assert two != empty and clickhouse_fingerprint(clickhouse, ["memo_parts"]) == two
    # a background merge changes the parts, not the data: not a change
    clickhouse.command("OPTIMIZE TABLE memo_parts FINAL")
    assert clickhouse.query("SELECT count() FROM system.parts WHERE database = currentDatabase() "
                            "AND table = 'memo_parts' AND active").result_rows[0][0] == 1
    assert clickhouse_fingerprint(clickhouse, ["memo_parts"]) == two
    clickhouse.command("ALTER TABLE memo_parts UPDATE x = 3 WHERE k = 1 SETTINGS mutations_sync = 1")
    mutated = clickhouse_fingerprint(clickhouse, ["memo_parts"])
    assert mutated != two
    # the IO manager's way of writing: a partition replaced from a stage table, even with equal rows
    clickhouse.command("CREATE OR REPLACE TABLE memo_stage AS memo_parts")
    clickhouse.command("INSERT INTO memo_stage SELECT * FROM memo_parts")
    clickhouse.command("ALTER TABLE memo_parts REPLACE PARTITION '2024-11-01' FROM memo_stage")
    replaced = clickhouse_fingerprint(clickhouse, ["memo_parts"])
    assert replaced != mutated
    clickhouse.command("TRUNCATE TABLE memo_parts")
    assert clickhouse_fingerprint(clickhouse, ["memo_parts"]) not in (replaced, two)


def test_block_ranges_join_neighbours_as_a_merge_does():
    assert block_ranges([("t", "p", 3, 3), ("t", "p", 1, 2), ("t", "p", 5, 6), ("t", "q", 4, 4)]) == {
        ("t", "p"): [(1, 3), (5, 6)], ("t", "q"): [(4, 4)]}


@pytest.mark.slow
def test_an_unchanged_rerun_reuses_the_checks_and_a_tampered_day_is_judged_again(store, clickhouse):
    job = quality_location().resolve_job_def("unified_items_job")
    first = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags=range_tags(SAMPLE_START, SAMPLE_END))
    assert first.success
    again = run_checks(checks_def("core_unified_items_quality_checks"), start=SAMPLE_START, end=SAMPLE_END)
    found = evaluations(again)
    completeness = [e for (a, c, _), e in found.items() if (a, c) == (CORE, "completeness")]
    assert completeness and all(e.passed and "evaluated_at" in values(e) for e in completeness)
    assert {p: e.passed for (a, c, p), e in found.items()} == {p: e.passed for (a, c, p), e in evaluations(first).items()
                                                                if a == CORE and (a, c, p) in found}

    with store.transaction() as conn:
        conn.execute("UPDATE unified_items SET amount = -amount WHERE external_id = 'ORD-1010'")
    tampered = run_checks(checks_def("core_unified_items_quality_checks"), start=SAMPLE_START, end=SAMPLE_END)
    money = {p: e for (a, c, p), e in evaluations(tampered).items() if (a, c) == (CORE, "money_non_negative")}
    assert not all(e.passed for e in money.values())
    assert all("evaluated_at" not in values(e) for e in money.values())  # judged afresh


def test_each_merchant_narrowing_of_a_check_is_remembered_on_its_own(store):
    """Date x merchant checks run one narrowed variant per merchant over the same window: each
    keeps its own verdict (they used to overwrite one entry, so none was ever reused)."""
    from contextlib import ExitStack

    from kingtavo_pipeline.defs.quality.checks import CompletenessCheck, Stores, _evaluate
    from kingtavo_pipeline.defs.resources import PostgresResource
    from kingtavo_pipeline.quality.config import CheckSettings

    with store.transaction() as conn:
        for merchant in ("m1", "m2"):
            conn.execute(
                "INSERT INTO raw_data (source_type, source_name, entity, source_id, partition_date, payload, payload_hash) "
                "VALUES ('salla', %s, 'orders', '1', '2024-11-01', '{}', 'h')", (f"salla/{merchant}",))
    check = CompletenessCheck(dg.AssetKey(["raw", "salla", "orders"]), "completeness", "completeness", "", ("postgres",),
                              table="raw_data", merchant_filter=("source_name", "salla/"), columns=("source_id",))
    settings = CheckSettings(max_rate=0.0, sample_size=0)
    day, next_day = dt.date(2024, 11, 1), dt.date(2024, 11, 2)
    with ExitStack() as stack:
        stores = Stores(PostgresResource(), None, stack)
        first = {m: _evaluate(check.for_merchant(m), stores, day, next_day, settings, None) for m in ("m1", "m2")}
        again = {m: _evaluate(check.for_merchant(m), stores, day, next_day, settings, None) for m in ("m1", "m2")}
    assert all(reused is None for _, reused in first.values())
    assert all(reused is not None for _, reused in again.values())
    assert {m: r[day].metadata["rows"] for m, (r, _) in again.items()} == {"m1": 1, "m2": 1}
    assert store.fetch_value("SELECT count(*) FROM check_memo WHERE check_key = 'raw/salla/orders/completeness'") == 2
