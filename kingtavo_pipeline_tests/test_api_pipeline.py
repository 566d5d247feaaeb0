"""Printavo and Salla through every layer: sandbox over HTTP -> raw_data -> core entity tables ->
the ClickHouse orders star, compared with the sandbox's ground truth."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import dagster as dg
import pytest

from kingtavo_pipeline.connectors.salla import parse_salla_datetime
from kingtavo_pipeline.sandbox import Sandbox, SandboxConfig
from kingtavo_pipeline_tests.pipeline_helpers import (
    daily_raw_assets,
    partition_range,
    salla_key,
    salla_raw_assets,
    sandbox_credentials,
    sandbox_sources_yaml,
    use_api_sources,
)

pytestmark = pytest.mark.slow

DAYS = ("2026-11-20", "2026-11-21")


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(SandboxConfig(days=40, salla_merchants=2, salla_requests_per_minute=6000,
                                printavo_requests=1000, printavo_window_seconds=1.0))
    with box.running() as base_url:
        yield box, base_url


@pytest.fixture
def api_graph(sandbox, tmp_path, monkeypatch, store):
    """Printavo and one Salla merchant as the API sources; returns (raw assets, resources, merchant)."""
    box, base_url = sandbox
    merchant = box.merchant_ids[0]
    _, raw_assets, resources = use_api_sources(tmp_path, monkeypatch,
                                               sandbox_sources_yaml(base_url, salla_merchants=[merchant]))
    sandbox_credentials(monkeypatch, store, box, [merchant])
    return raw_assets, resources, merchant


def run_api_graph(raw_assets, resources, merchant: str, instance: dg.DagsterInstance) -> None:
    from kingtavo_pipeline.defs.core.entities import core_entities
    from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS
    from kingtavo_pipeline.defs.warehouse.entities import star_assets

    instance.add_dynamic_partitions(SALLA_MERCHANTS.name, [merchant])
    assert dg.materialize(daily_raw_assets(raw_assets), tags=partition_range(*DAYS), resources=resources,
                          instance=instance).success
    for day in DAYS:
        assert dg.materialize(salla_raw_assets(raw_assets), partition_key=salla_key(day, merchant),
                              resources=resources, instance=instance).success
    assert dg.materialize([core_entities], tags=partition_range(*DAYS), resources=resources, instance=instance).success
    assert dg.materialize(star_assets, tags=partition_range(*DAYS), resources=resources, instance=instance).success


def test_printavo_and_salla_reach_core_and_the_warehouse_exactly_once(sandbox, api_graph, store, clickhouse):
    box, _ = sandbox
    raw_assets, resources, merchant = api_graph
    instance = dg.DagsterInstance.ephemeral()
    run_api_graph(raw_assets, resources, merchant, instance)

    start = dt.datetime.fromisoformat(DAYS[0]).replace(tzinfo=dt.timezone.utc)
    end = dt.datetime.fromisoformat(DAYS[1]).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    # the truth is by local (Riyadh) creation date; partitions are UTC days: filter on the exact time
    wide = (start.date() - dt.timedelta(days=1), end.date() + dt.timedelta(days=1))
    truth_orders = [o for o in box.truth.salla_orders(merchant, *wide)
                    if start <= parse_salla_datetime(o["date"]) < end]
    truth_invoices = [i for i in box.truth.printavo_invoices(*wide)
                      if start <= dt.datetime.fromisoformat(i["timestamps"]["createdAt"]) < end]
    assert truth_orders and truth_invoices

    salla = store.fetch_all("SELECT source_id, total, currency FROM orders WHERE source_type = 'salla' "
                            "AND merchant_id = %s ORDER BY source_id", (merchant,))
    assert sorted(r[0] for r in salla) == sorted(str(o["id"]) for o in truth_orders)
    expected_total = {str(o["id"]): Decimal(str(o["amounts"]["total"]["amount"])) for o in truth_orders}
    assert {r[0]: r[1] for r in salla} == expected_total
    lines = store.fetch_value("SELECT count(*) FROM order_lines WHERE source_type = 'salla' AND merchant_id = %s",
                              (merchant,))
    assert lines == sum(len(o["items"]) for o in truth_orders)

    printavo = store.fetch_all("SELECT source_id, kind FROM orders WHERE source_type = 'printavo'")
    assert sorted(r[0] for r in printavo) == sorted(str(i["id"]) for i in truth_invoices)
    assert {r[1] for r in printavo} == {"invoice"}

    fact_orders = clickhouse.query(
        "SELECT source_type, uniqExact(order_source_id), count() FROM orders_fact FINAL GROUP BY source_type"
    ).result_rows
    by_type = {r[0]: (r[1], r[2]) for r in fact_orders}
    assert by_type["salla"][0] == len(truth_orders)
    core_fact_rows = store.fetch_value(
        "SELECT count(*) FROM orders o LEFT JOIN order_lines l ON l.source_type = o.source_type "
        "AND l.source_name = o.source_name AND l.merchant_id = o.merchant_id AND l.order_source_id = o.source_id")
    assert sum(v[1] for v in by_type.values()) == core_fact_rows

    # a rerun lands nothing new and changes nothing
    before = store.fetch_all("SELECT source_id, row_version FROM orders ORDER BY 1")
    run_api_graph(raw_assets, resources, merchant, instance)
    assert store.fetch_all("SELECT source_id, row_version FROM orders ORDER BY 1") == before
