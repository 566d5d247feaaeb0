"""Staging on a second connection (storage/staging.py): the same upsert as staging in-line, nothing
visible before the caller commits, and no staged table left behind by a rollback or a killed run."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from kingtavo_pipeline.storage.staging import STAGE_SCHEMA, Stager
from kingtavo_pipeline.storage.upsert import upsert

KEY = ["source_type", "source_name", "external_id"]


def _items(ids, titles, updated):
    n = len(ids)
    return pd.DataFrame({"source_type": ["csv"] * n, "source_name": ["shop"] * n, "external_id": ids,
                         "title": titles, "amount": [1.0] * n, "metadata": ["{}"] * n,
                         "partition_date": [dt.date(2024, 11, 1)] * n,
                         "updated_at": pd.to_datetime(updated, utc=True)})


def _staged_tables(store) -> list[str]:
    return [r[0] for r in store.fetch_all(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s",
        (STAGE_SCHEMA,))]


def _rows(store):
    return store.fetch_all("SELECT external_id, title FROM unified_items ORDER BY 1")


def test_a_staged_upsert_equals_an_inline_one_and_lands_only_on_commit(store):
    first = _items(["a", "b", "b"], ["A", "B old", "B new"], ["2024-11-01", "2024-11-01", "2024-11-02"])
    second = _items(["a", "c"], ["A older", "C"], ["2024-10-01", "2024-11-01"])  # an older version of a
    with Stager(store, "unified_items", KEY) as stager:
        with store.transaction() as conn:
            results = []
            for frame in (first, second):
                staged = stager.stage(frame)
                assert staged.rows == len(frame) and staged.duplicate_keys == (frame is first)
                results.append(upsert(conn, "unified_items", staged, KEY))
            assert _rows(store) == []  # staged and applied, not committed: another session sees nothing
        empty = stager.stage(first.iloc[:0])
        with store.transaction() as conn:
            assert upsert(conn, "unified_items", empty, KEY).staged == 0
    staged_rows = _rows(store)
    assert [(r.inserted, r.updated) for r in results] == [(2, 0), (1, 0)]
    assert _staged_tables(store) == []  # every applied table dropped with its transaction

    with store.transaction() as conn:
        conn.execute("TRUNCATE unified_items")
        for frame in (first, second):
            upsert(conn, "unified_items", frame, KEY)
    assert _rows(store) == staged_rows == [("a", "A"), ("b", "B new"), ("c", "C")]


def test_a_rolled_back_transaction_leaves_no_staged_table(store):
    with pytest.raises(RuntimeError), Stager(store, "unified_items", KEY) as stager:
        with store.transaction() as conn:
            upsert(conn, "unified_items", stager.stage(_items(["a"], ["A"], ["2024-11-01"])), KEY)
            stager.stage(_items(["b"], ["B"], ["2024-11-01"]))  # staged, never applied
            raise RuntimeError("the load fails")
    assert _rows(store) == []
    assert _staged_tables(store) == []


KILLED = r"""
import os, sys
import pandas as pd
from kingtavo_pipeline.storage.postgres import PostgresStore
from kingtavo_pipeline.storage.staging import Stager
stager = Stager(PostgresStore(sys.argv[1]), "unified_items", ["source_type", "source_name", "external_id"]).__enter__()
stager.stage(pd.DataFrame({"source_type": ["csv"], "source_name": ["shop"], "external_id": ["x"]}))
os._exit(0)  # as if killed: nothing closed, the staged table stays
"""


def test_staged_tables_of_a_killed_run_are_dropped_by_the_next_stager(store):
    subprocess.run([sys.executable, "-c", KILLED, store.url], check=True, env=os.environ.copy(), timeout=120)
    orphans = _staged_tables(store)
    assert len(orphans) == 1
    pid = int(orphans[0].split("_")[1])
    for _ in range(100):  # the server ends the dead client's session within moments
        if not store.fetch_value("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)):
            break
        time.sleep(0.1)
    with Stager(store, "unified_items", KEY) as stager:
        mine = stager.stage(_items(["a"], ["A"], ["2024-11-01"]))
        assert _staged_tables(store) == [mine.table.as_string(None).split(".")[1].strip('"')]
    assert _staged_tables(store) == []


def test_raw_records_staged_apart_land_as_they_do_in_line(store):
    from kingtavo_pipeline.storage.bookkeeping import RAW_STAGE_COLUMNS, land_raw, stage_raw

    batch = pd.DataFrame({"source_id": ["1", "2", "1"], "partition_date": [dt.date(2024, 11, 1)] * 3,
                          "payload": ['{"v": 1}', '{"v": 2}', '{"v": 3}']})  # record 1 twice: the last wins
    landed = {}
    for how in ("staged", "in line"):
        with store.transaction() as conn:
            conn.execute("TRUNCATE raw_data, raw_partitions")
        with Stager(store, None, ["source_id"], definition=RAW_STAGE_COLUMNS) as stager:
            with store.transaction() as conn:
                raw = stage_raw(stager, batch) if how == "staged" else batch
                result = land_raw(conn, raw, source_type="csv", source_name="shop", entity="orders", run_id="r")
        landed[how] = (result.staged, result.inserted, store.fetch_all(
            "SELECT source_id, payload::text, partition_date FROM raw_data ORDER BY observed_seq"))
    assert landed["staged"] == landed["in line"] == (3, 2, [("2", '{"v": 2}', dt.date(2024, 11, 1)),
                                                             ("1", '{"v": 3}', dt.date(2024, 11, 1))])
    assert _staged_tables(store) == []
