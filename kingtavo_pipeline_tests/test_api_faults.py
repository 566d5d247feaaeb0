"""Salla imports through real Dagster runs against the sandbox while it misbehaves: 5xx, 429 with
Retry-After and timeouts; a SIGKILL of the importing process half-way; schema drift. Every time the
result is compared with the sandbox's ground truth: every order once, nothing missing."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from decimal import Decimal

import dagster as dg
import orjson
import pytest

from kingtavo_pipeline.connectors.salla import STORE_TIMEZONE, local_date_range, parse_salla_datetime
from kingtavo_pipeline.extract.breaker import reset_breakers
from kingtavo_pipeline.extract.ratelimit import reset_limiters
from kingtavo_pipeline.sandbox import Sandbox, SandboxConfig
from kingtavo_pipeline_tests.pipeline_helpers import (
    partition_range,
    salla_key,
    salla_raw_assets,
    sandbox_credentials,
    sandbox_env,
    sandbox_sources_yaml,
    use_api_sources,
)

pytestmark = pytest.mark.slow

UTC = dt.timezone.utc
# short timeouts and backoff: the faults cost seconds, not minutes (a source's `http:` settings)
FAST_HTTP = {"connect_timeout": 1, "read_timeout": 0.5, "max_attempts": 10, "backoff_initial": 0.05,
             "backoff_max": 0.4, "max_retry_after": 5}


@pytest.fixture(autouse=True)
def _fresh_http_state():
    reset_breakers()
    reset_limiters()
    yield
    reset_breakers()
    reset_limiters()


def utc_window(first: str, last: str) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.fromisoformat(first).replace(tzinfo=UTC)
    return start, dt.datetime.fromisoformat(last).replace(tzinfo=UTC) + dt.timedelta(days=1)


def truth_orders(box: Sandbox, merchant: str, first: str, last: str) -> list[dict]:
    """The sandbox's orders created in the UTC days [first, last] (its truth is by Riyadh date)."""
    start, end = utc_window(first, last)
    wide = (start.date() - dt.timedelta(days=1), end.date() + dt.timedelta(days=1))
    return [o for o in box.truth.salla_orders(merchant, *wide) if start <= parse_salla_datetime(o["date"]) < end]


def raw_order_ids(store, merchant: str) -> list[str]:
    return [r[0] for r in store.fetch_all(
        "SELECT source_id FROM raw_data WHERE source_type = 'salla' AND source_name = %s AND entity = 'orders'",
        (f"salla/{merchant}",))]


def register(instance: dg.DagsterInstance, merchant: str) -> None:
    from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS

    instance.add_dynamic_partitions(SALLA_MERCHANTS.name, [merchant])


def materialize_core(resources, instance, first: str, last: str):
    from kingtavo_pipeline.defs.core.entities import core_entities

    return dg.materialize([core_entities], tags=partition_range(first, last), resources=resources, instance=instance)


def assert_core_equals(store, merchant: str, orders: list[dict]) -> None:
    """Core holds exactly these orders (ids, totals) and their lines."""
    rows = store.fetch_all("SELECT source_id, total FROM orders WHERE source_type = 'salla' AND merchant_id = %s",
                           (merchant,))
    assert sorted(r[0] for r in rows) == sorted(str(o["id"]) for o in orders)
    assert {r[0]: r[1] for r in rows} == {str(o["id"]): Decimal(str(o["amounts"]["total"]["amount"])) for o in orders}
    lines = store.fetch_all("SELECT order_source_id, count(*) FROM order_lines WHERE source_type = 'salla' "
                            "AND merchant_id = %s GROUP BY 1", (merchant,))
    assert dict(lines) == {str(o["id"]): len(o["items"]) for o in orders}


# --- 1. faults ---------------------------------------------------------------------------------

FAULT_FIRST, FAULT_LAST = "2026-10-30", "2026-11-28"  # 30 days


def test_a_30_day_import_under_5xx_429_and_timeouts_loads_every_order_once(tmp_path, monkeypatch, store):
    box = Sandbox(SandboxConfig(seed=11, days=40, salla_merchants=1, orders_per_day=4,
                                salla_requests_per_minute=6000))
    merchant = box.merchant_ids[0]
    with box.running() as base_url:
        _, raw_assets, resources = use_api_sources(
            tmp_path, monkeypatch, sandbox_sources_yaml(base_url, printavo=False, salla_merchants=[merchant],
                                                        salla_entities=["orders", "customers"], http=FAST_HTTP))
        sandbox_credentials(monkeypatch, store, box, [merchant])
        instance = dg.DagsterInstance.ephemeral()
        register(instance, merchant)
        # the fault RNG is seeded by the sandbox seed: the same requests meet the same faults
        box.set_faults(rate_5xx=0.10, rate_429=0.05, rate_timeout=0.02, retry_after="1", timeout_seconds=2)
        started = time.monotonic()
        result = dg.materialize(salla_raw_assets(raw_assets), resources=resources, instance=instance,
                                tags=partition_range(str(salla_key(FAULT_FIRST, merchant)),
                                                     str(salla_key(FAULT_LAST, merchant))))
        elapsed = time.monotonic() - started
        box.set_faults()  # core reads PostgreSQL only
        assert result.success
        assert materialize_core(resources, instance, FAULT_FIRST, FAULT_LAST).success

    faults = Counter(r.fault for r in box.requests("salla") if r.fault)
    # the run really went through every kind of fault, and more than once
    assert faults["5xx"] >= 5 and faults["429"] >= 3 and faults["timeout"] >= 1, faults
    assert elapsed < 60

    expected = truth_orders(box, merchant, FAULT_FIRST, FAULT_LAST)
    assert len(expected) > 80
    raw_ids = raw_order_ids(store, merchant)
    # one raw row per order: the sandbox's orders do not change during the run, so every
    # observation beyond the first would be a duplicate
    assert sorted(raw_ids) == sorted(str(o["id"]) for o in expected)
    assert store.fetch_value(
        "SELECT count(*) FROM (SELECT 1 FROM raw_data GROUP BY source_type, source_name, entity, source_id, payload_hash "
        "HAVING count(*) > 1) d") == 0
    assert_core_equals(store, merchant, expected)
    assert store.fetch_value("SELECT count(*) FROM dead_letters") == 0
    # the window's resume position is gone once the window is complete
    assert store.fetch_value("SELECT count(*) FROM etl_checkpoints WHERE entity LIKE 'orders:resume:%%'") == 0


# --- 2. SIGKILL half-way -----------------------------------------------------------------------

KILL_FIRST, KILL_LAST = "2026-11-10", "2026-11-21"  # 12 days

IMPORT_SCRIPT = textwrap.dedent("""
    import sys
    import dagster as dg
    from kingtavo_pipeline.definitions import defs
    from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS, api_raw_assets

    merchant, first, last = sys.argv[1:4]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SALLA_MERCHANTS.name, [merchant])
    assets = [a for a in api_raw_assets if isinstance(a.partitions_def, dg.MultiPartitionsDefinition)]
    tags = {"dagster/asset_partition_range_start": f"{first}|{merchant}",
            "dagster/asset_partition_range_end": f"{last}|{merchant}"}
    result = dg.materialize(assets, tags=tags, resources=dict(defs().resources), instance=instance)
    print("FINISHED", result.success, flush=True)
""")


def resume_position(store, merchant: str) -> dict | None:
    row = store.fetch_all("SELECT checkpoint_value FROM etl_checkpoints WHERE source_type = 'salla' "
                          "AND source_name = %s AND entity LIKE 'orders:resume:%%'", (f"salla/{merchant}",))
    assert len(row) <= 1
    return orjson.loads(row[0][0]) if row else None


def test_an_import_killed_half_way_resumes_without_duplicates_or_gaps(tmp_path, monkeypatch, store):
    box = Sandbox(SandboxConfig(seed=5, days=30, salla_merchants=1, orders_per_day=4,
                                salla_requests_per_minute=6000))
    merchant = box.merchant_ids[0]
    expected = truth_orders(box, merchant, KILL_FIRST, KILL_LAST)
    expected_ids = sorted(str(o["id"]) for o in expected)
    with box.running() as base_url:
        yaml_text = sandbox_sources_yaml(base_url, printavo=False, salla_merchants=[merchant],
                                         salla_entities=["orders"], http=FAST_HTTP)
        yaml_text = yaml_text.replace("    requests_per_minute:", "    page_size: 5\n    requests_per_minute:")
        _, raw_assets, resources = use_api_sources(tmp_path, monkeypatch, yaml_text)
        sandbox_credentials(monkeypatch, store, box, [merchant])
        box.set_faults(slow_seconds=0.05)  # slow enough that the kill lands half-way

        script = tmp_path / "import_salla.py"
        script.write_text(IMPORT_SCRIPT)
        env = {**os.environ, **sandbox_env(box), "KINGTAVO_SOURCES_FILE": str(tmp_path / "sources.yaml")}
        env.pop("DAGSTER_HOME", None)
        process = subprocess.Popen([sys.executable, str(script), merchant, KILL_FIRST, KILL_LAST], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            landed = 0
            while landed < 10 and process.poll() is None and time.monotonic() < deadline:
                landed = len(raw_order_ids(store, merchant))
                time.sleep(0.02)
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            os.kill(process.pid, signal.SIGKILL)  # no cancel, no cleanup: the process just dies
            assert process.wait(timeout=30) == -signal.SIGKILL
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        box.set_faults()

        # the kill landed half-way: some orders, not all
        before = raw_order_ids(store, merchant)
        assert 10 <= len(before) < len(expected_ids)
        assert len(before) == len(set(before)) and set(before) <= set(expected_ids)
        # the resume position never points past committed data: every order it says is handled is landed
        position = resume_position(store, merchant)
        assert position is not None and position["page"] >= 1
        handled = {i for i in expected_ids if int(i) <= position["last_id"]}
        assert handled and handled <= set(before)

        # the rerun (same window) finishes the import from where the dead one stopped
        served = len(box.requests("salla"))
        instance = dg.DagsterInstance.ephemeral()
        register(instance, merchant)
        assert dg.materialize(salla_raw_assets(raw_assets), resources=resources, instance=instance,
                              tags=partition_range(str(salla_key(KILL_FIRST, merchant)),
                                                   str(salla_key(KILL_LAST, merchant)))).success
        details = [r.path.rsplit("/", 1)[-1] for r in box.requests("salla")[served:]
                   if r.path.startswith("/salla/admin/v2/orders/") and r.path.rsplit("/", 1)[-1].isdigit()]
        assert materialize_core(resources, instance, KILL_FIRST, KILL_LAST).success

    # it did not fetch again what was handled before the kill
    assert details and not {d for d in details if int(d) <= position["last_id"]}
    assert len(details) < len(expected_ids)
    after = raw_order_ids(store, merchant)
    assert sorted(after) == expected_ids  # nothing missing, nothing twice
    assert resume_position(store, merchant) is None
    assert_core_equals(store, merchant, expected)


# --- 3. schema drift ---------------------------------------------------------------------------

DRIFT_FIRST, DRIFT_LAST = "2026-11-20", "2026-11-24"


@pytest.mark.parametrize(
    ("renamed", "stage", "field"),
    [("total", "map", "amounts.total"), ("id", "extract", "has no id")],
    ids=["order-total-renamed", "order-id-renamed"],
)
def test_drifted_records_go_to_dead_letters_naming_the_field_and_the_rest_load(
    tmp_path, monkeypatch, store, renamed, stage, field
):
    box = Sandbox(SandboxConfig(seed=3, days=20, salla_merchants=1, orders_per_day=6,
                                salla_requests_per_minute=6000))
    merchant = box.merchant_ids[0]
    with box.running() as base_url:
        _, raw_assets, resources = use_api_sources(
            tmp_path, monkeypatch, sandbox_sources_yaml(base_url, printavo=False, salla_merchants=[merchant],
                                                        salla_entities=["orders"], http=FAST_HTTP))
        sandbox_credentials(monkeypatch, store, box, [merchant])
        instance = dg.DagsterInstance.ephemeral()
        register(instance, merchant)
        box.set_faults(rename_fields={renamed: f"new_{renamed}"}, drift_rate=0.3)
        start, end = utc_window(DRIFT_FIRST, DRIFT_LAST)
        wide = (start.date() - dt.timedelta(days=1), end.date() + dt.timedelta(days=1))
        drifted = set(box.truth.drifted_ids("salla", "orders", merchant, *wide))
        result = dg.materialize(salla_raw_assets(raw_assets), resources=resources, instance=instance,
                                tags=partition_range(str(salla_key(DRIFT_FIRST, merchant)),
                                                     str(salla_key(DRIFT_LAST, merchant))))
        assert result.success
        assert materialize_core(resources, instance, DRIFT_FIRST, DRIFT_LAST).success

    expected = truth_orders(box, merchant, DRIFT_FIRST, DRIFT_LAST)
    drifted_here = {str(o["id"]) for o in expected} & drifted
    assert drifted_here and len(drifted_here) < len(expected)
    letters = store.fetch_all("SELECT stage, entity, source_id, error_message, payload FROM dead_letters")
    assert {r[0] for r in letters} == {stage} and {r[1] for r in letters} == {"orders"}
    assert all(field in r[3] for r in letters), [r[3] for r in letters]
    if renamed == "id":
        # a list row without an id has no detail to fetch and no time to place it by: every such row
        # of the local dates queried (the UTC window's, a few hours wider) is a dead letter, told
        # apart by its content
        queried = local_date_range(start, end, STORE_TIMEZONE)
        rows = {str(o["id"]) for o in box.truth.salla_orders(merchant, *queried)} & drifted
        assert sorted(str(r[4][f"new_{renamed}"]) for r in letters) == sorted(rows)
        assert drifted_here <= rows
    else:
        assert sorted(r[2] for r in letters) == sorted(drifted_here)
    # the others load, complete
    assert_core_equals(store, merchant, [o for o in expected if str(o["id"]) not in drifted_here])


def test_a_resumed_salla_window_pull_continues_after_the_position_and_restarts_when_the_list_shifted(store):
    from kingtavo_pipeline.connectors.salla import SallaConnector
    from kingtavo_pipeline.extract.http import HttpPolicy
    from kingtavo_pipeline.storage.credentials import PostgresTokenStore, save_credentials

    box = Sandbox(SandboxConfig(seed=5, days=20, salla_merchants=1, orders_per_day=4, salla_requests_per_minute=6000))
    merchant = box.merchant_ids[0]
    creds = box.credentials.salla_merchant(merchant)
    save_credentials(store, "salla", "salla", merchant, creds.access_token, creds.refresh_token, 3600)
    start, end = utc_window("2026-11-20", "2026-11-24")
    with box.running() as base_url:
        connector = SallaConnector(merchant, base_url=f"{base_url}/salla/admin/v2",
                                   token_url=f"{base_url}/salla/oauth2/token", client_id=box.credentials.salla_client_id,
                                   client_secret=box.credentials.salla_client_secret, tokens=PostgresTokenStore(store),
                                   page_size=4, policy=HttpPolicy(max_attempts=3, backoff_initial=0.05))
        with connector:
            pages = list(connector.pull("orders", start=start, end=end))
            ids = [r.source_id for p in pages for r in p.records]
            assert len(pages) >= 4 and len(ids) == len(set(ids))
            position = pages[1].extra["resume"]
            assert position["last_id"] == max(int(i) for p in pages[:2] for r in p.records for i in [r.source_id])
            rest = [r.source_id for p in pages[2:] for r in p.records]

            served = len(box.requests("salla"))
            resumed = [r.source_id for p in connector.pull("orders", start=start, end=end, resume=position)
                       for r in p.records]
            assert resumed == rest
            fetched = {r.path.rsplit("/", 1)[-1] for r in box.requests("salla")[served:] if "/orders/" in r.path}
            assert all(int(i) > position["last_id"] for i in fetched if i.isdigit())

            # a position on a page that no longer holds any handled order (orders were deleted and the
            # list moved back a page or more): the walk starts again from page 1, still skipping handled ids
            moved = {"page": len(pages) + 5, "last_id": position["last_id"]}
            assert [r.source_id for p in connector.pull("orders", start=start, end=end, resume=moved)
                    for r in p.records] == rest


def test_a_window_resume_position_moves_past_a_page_holding_a_record_before_the_first_partition(store):
    """Such a record goes to dead_letters, never to raw_data: the page still counts as committed
    once its other records are (the position used to stall on it for the rest of the window)."""
    import pandas as pd

    from kingtavo_pipeline.connectors.base import Page, SourceRecord
    from kingtavo_pipeline.defs.ingest.api import _window_pages, _window_resume_key
    from kingtavo_pipeline.defs.ingest.assets import rejected
    from kingtavo_pipeline.defs.partitions import FIRST_DAY
    from kingtavo_pipeline.sources.config import SallaSource
    from kingtavo_pipeline.storage.bookkeeping import land_raw

    first_day = pd.Timestamp(FIRST_DAY, tz="UTC")
    old, new = (first_day - pd.Timedelta(days=400)).to_pydatetime(), (first_day + pd.Timedelta(days=3)).to_pydatetime()

    def record(i: int, when: dt.datetime) -> SourceRecord:
        return SourceRecord("orders", str(i), {"id": i}, when, when, "m1")

    pages = [Page([record(1, new), record(2, old)], extra={"resume": {"page": 1, "last_id": 2}}),
             Page([record(3, new)], extra={"resume": {"page": 2, "last_id": 3}}),
             Page([record(4, new)], extra={"resume": {"page": 3, "last_id": 4}})]

    class Pages:
        def pull(self, entity, *, start, end, resume=None):
            yield from pages

    source = SallaSource(name="salla")
    start, end = utc_window("2026-11-20", "2026-11-24")
    key = _window_resume_key("orders", start, end)
    frames = _window_pages(Pages(), store, source, "orders", "m1", start, end)
    positions = []
    for frame in frames:
        malformed, undated, too_old = rejected(frame, first_day)
        keep = frame[~malformed & ~undated & ~too_old]
        with store.transaction() as conn:  # what land_source does with the batch (the rest: dead letters)
            land_raw(conn, keep.assign(partition_date=keep["occurred_at"]), source_type="salla",
                     source_name="salla/m1", entity="orders", run_id="t")
        positions.append(store.fetch_value("SELECT checkpoint_value FROM etl_checkpoints WHERE source_name = "
                                           "'salla/m1' AND entity = %s", (key,)))
    # asking for page 2 confirmed page 1 committed, page 3 confirmed page 2
    assert [orjson.loads(p) if p else None for p in positions] == [None, {"page": 1, "last_id": 2},
                                                                    {"page": 2, "last_id": 3}]
