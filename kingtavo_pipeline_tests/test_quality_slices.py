"""Warehouse checks read ClickHouse a day at a time and compare keys across partitions in hash
slices (bounded memory: bench/check_memory.py); the verdicts do not depend on either."""

from __future__ import annotations

import datetime as dt
import re
from contextlib import ExitStack
from dataclasses import replace

import pytest

from kingtavo_pipeline.defs.quality import WAREHOUSE_ITEMS, warehouse_item_checks
from kingtavo_pipeline.defs.quality.checks import Stores, UniquenessCheck, reconciliation_check
from kingtavo_pipeline.defs.resources import ClickHouseResource, PostgresResource
from kingtavo_pipeline.quality.config import load_quality_config

pytestmark = pytest.mark.slow

START, END = dt.date(2024, 11, 1), dt.date(2024, 11, 4)
KEYS = 180  # key str(i) lives on START + i % 3
# keys copied into a second partition: (key, the other day), in and outside the window
CROSS = {"5": "2024-11-01", "7": "2024-11-10", "11": "2024-11-02", "22": "2024-11-01", "40": "2024-10-31"}
HIDDEN = "9"  # an older version on its own day: FINAL hides it


def _day(key: str) -> str:
    return (START + dt.timedelta(days=int(key) % 3)).isoformat()


@pytest.fixture
def planted(store, clickhouse):
    clickhouse.command("SYSTEM STOP MERGES unified_items")  # a merge would drop the hidden version
    yield _plant(store, clickhouse)
    clickhouse.command("SYSTEM START MERGES unified_items")


def _plant(store, clickhouse):
    columns = "source_type, source_name, external_id, title, metadata, partition_date, updated_at, _version"
    clickhouse.command(f"INSERT INTO unified_items ({columns}) SELECT 'csv', 'shop', toString(number), 't', '{{}}', "
                       f"toDate('{START}') + number % 3, now64(6), 2 FROM numbers({KEYS})")
    for key, day in CROSS.items():
        clickhouse.command(f"INSERT INTO unified_items ({columns}) VALUES ('csv', 'shop', '{key}', 't', '{{}}', "
                           f"'{day}', now64(6), 2)")
    clickhouse.command(f"INSERT INTO unified_items ({columns}) VALUES ('csv', 'shop', '{HIDDEN}', 't', '{{}}', "
                       f"'{_day(HIDDEN)}', now64(6), 1)")
    with store.transaction() as conn:
        conn.execute("INSERT INTO unified_items (source_type, source_name, external_id, title, partition_date, updated_at) "
                     "SELECT 'csv', 'shop', i::text, 't', %s::date + i %% 3, now() FROM generate_series(0, %s - 1) i",
                     (START, KEYS))
    return clickhouse


def _evaluate(check, queries: list[str] | None = None):
    config = load_quality_config()
    settings = config.settings(check.asset_key.to_user_string(), check.name, check.kind)
    with ExitStack() as stack:
        stores = Stores(PostgresResource(), ClickHouseResource(), stack)
        if queries is not None:
            ch_rows = stores.ch_rows
            stores.ch_rows = lambda query: queries.append(query) or ch_rows(query)
        return check.evaluate(stores, START, END, settings)


def _comparable(results):
    return {day: (r.passed, r.severity, r.description,
                  {k: (sorted(v) if k == "sample_keys" else v) for k, v in r.metadata.items()})
            for day, r in results.items()}


def test_uniqueness_in_many_slices_matches_one_slice(planted):
    [check] = [c for c in warehouse_item_checks() if isinstance(c, UniquenessCheck)]
    window_rows = KEYS + sum(START.isoformat() <= d < END.isoformat() for d in CROSS.values()) + 1
    slices = -(-window_rows // 10)
    spread = planted.query(f"SELECT uniqExact(cityHash64(source_type, source_name, external_id) % {slices}) "
                           f"FROM unified_items WHERE external_id IN ({', '.join(repr(k) for k in CROSS)})").result_rows
    assert spread[0][0] >= 3  # the planted duplicates fall into different slices

    queries: list[str] = []
    many = _evaluate(replace(check, slice_keys=10), queries)
    one = _evaluate(replace(check, slice_keys=10**9))
    assert _comparable(many) == _comparable(one)
    assert sum("% " + str(slices) + " = " in q for q in queries) == slices  # one cross query per slice

    in_other = {d: sorted(k for k in CROSS if _day(k) == d.isoformat() or CROSS[k] == d.isoformat())
                for d in (START + dt.timedelta(days=i) for i in range(3))}
    for day, result in many.items():
        meta = result.metadata
        assert (result.passed, result.severity) == (False, "ERROR")
        assert meta["keys_in_other_partitions"] == meta["duplicates_after_final"] == len(in_other[day])
        assert sorted(k.rsplit("/", 1)[1] for k in meta["sample_keys"]) == sorted(in_other[day])
    first = many[START].metadata
    assert first["rows"] - first["rows_final"] == first["duplicates_hidden_by_final"] == 1


def test_warehouse_queries_read_one_day_each_and_reconcile_per_day(planted):
    queries: list[str] = []
    counts = _evaluate(reconciliation_check(WAREHOUSE_ITEMS, "unified_items", "unified_items",
                                            name="row_count_matches_core"), queries)
    finals = [q for q in queries if " FINAL " in q]
    assert len(finals) == 3
    for query in finals:
        lo, hi = (dt.date.fromisoformat(d) for d in re.findall(r"toDate\('(\d{4}-\d{2}-\d{2})'\)", query))
        assert hi - lo == dt.timedelta(days=1)
    # warehouse after FINAL: 60 keys a day plus the copies planted on that day; core: 60 a day
    extra = {d: sum(v == d.isoformat() for v in CROSS.values()) for d in counts}
    assert {d: (r.passed, r.metadata["core_rows"], r.metadata["warehouse_rows"]) for d, r in counts.items()} == {
        d: (extra[d] == 0, 60, 60 + extra[d]) for d in counts}
