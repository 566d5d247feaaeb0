"""The quality checks of the API entity path on real loads: Printavo and one Salla merchant pulled
from the sandbox into raw_data, mapped into the core entity tables, copied into the ClickHouse
orders star, and webhook events applied by the webhook asset. Every check passes on the clean
load, then fails on a partition broken (with SQL, in PostgreSQL or chDB) for the reason it names.

The loads are shared by the module (one pipeline run); the tests run in file order: the first
looks at the clean load, the next ones break it.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from kingtavo_pipeline.defs.partitions import FIRST_DAY
from kingtavo_pipeline.defs.webhooks.assets import ORPHANS_TAG
from kingtavo_pipeline.defs.quality.checks import build_checks
from kingtavo_pipeline.defs.quality.entities import entity_check_groups
from kingtavo_pipeline.quality.config import load_quality_config, parse_quality_config
from kingtavo_pipeline.sandbox import Sandbox, SandboxConfig
from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.clickhouse import open_clickhouse
from kingtavo_pipeline.storage.credentials import save_credentials
from kingtavo_pipeline.storage.postgres import get_store
from kingtavo_pipeline_tests.quality_helpers import evaluations, range_tags, values

pytestmark = pytest.mark.slow

DAYS = ("2026-11-18", "2026-11-19", "2026-11-20")
A, B, C = DAYS
ORDERS, LINES, CUSTOMERS, PRODUCTS = "core/orders", "core/order_lines", "core/customers", "core/products"
FACT, CUSTOMERS_DIM, PRODUCTS_DIM = "warehouse/orders_fact", "warehouse/customers_dim", "warehouse/products_dim"
EVENTS = "raw/webhooks/events"


# --- the shared load -----------------------------------------------------------------------------


def _empty_stores(store, settings) -> None:
    with store.transaction() as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                             "AND tablename <> 'schema_migrations'").fetchall()]
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
            sql.SQL(", ").join(sql.Identifier("public", t) for t in tables)))
    with open_clickhouse(settings) as client:
        for (name,) in client.query("SELECT name FROM system.tables WHERE database = {db:String} "
                                    "AND name <> 'schema_migrations'", parameters={"db": settings.clickhouse_database}).result_rows:
            client.command(f"TRUNCATE TABLE `{settings.clickhouse_database}`.`{name}`")


def salla_event(merchant: str, order_id: int, created: str) -> dict:
    when = {"date": f"{created}.000000", "timezone_type": 3, "timezone": "UTC"}
    return {"event": "order.updated", "merchant": int(merchant), "created_at": created,
            "data": {"id": order_id, "reference_id": f"W{order_id}", "status": {"slug": "completed"}, "currency": "SAR",
                     "date": when, "updated_at": when, "customer": None,
                     "amounts": {"sub_total": {"amount": 100, "currency": "SAR"}, "total": {"amount": 100, "currency": "SAR"}},
                     "items": [{"id": order_id * 10, "name": "Shirt", "quantity": 1,
                                "amounts": {"total": {"amount": 100, "currency": "SAR"}}}]}}


def insert_event(store, payload: dict, received_at: dt.datetime, *, source_name: str = "salla",
                 provider: str = "salla", account: str | None = None) -> int:
    """Store an event as the webhook ingress does (the row it commits before answering 2xx)."""
    with store.transaction() as conn:
        return conn.execute(
            "INSERT INTO webhook_events (source_name, provider, event_type, dedupe_key, account, received_at, payload) "
            "VALUES (%s, %s, %s, gen_random_uuid()::text, %s, %s, %s) RETURNING id",
            (source_name, provider, payload.get("event") or payload.get("type"), account, received_at,
             psycopg.types.json.Jsonb(payload))).fetchone()[0]


class Loaded:
    def __init__(self, store, settings, sources, merchant, resources, checks, instance):
        self.store, self.settings, self.sources, self.merchant = store, settings, sources, merchant
        self.resources, self.checks, self.instance = resources, checks, instance
        self.results: dict[str, dict] = {}

    def clickhouse(self):
        return open_clickhouse(self.settings)

    def run(self, op_name: str, *, start: str = A, end: str = C, raise_on_error: bool = False):
        """Only the checks of ``op_name`` over [start, end] (the UI's Execute on a range)."""
        from kingtavo_pipeline.defs.core.entities import core_entities
        from kingtavo_pipeline.defs.webhooks.assets import raw_webhook_events
        from kingtavo_pipeline.defs.warehouse.entities import star_assets

        checks = self.checks[op_name]
        return dg.materialize([*self.raw_assets, core_entities, *star_assets, raw_webhook_events, checks],
                              selection=dg.AssetSelection.checks(checks), tags=range_tags(start, end),
                              resources=self.resources, instance=self.instance, raise_on_error=raise_on_error)

    def run_salla(self, day: str):
        checks = self.checks["raw_salla_quality_checks"]
        key = dg.MultiPartitionKey({"date": day, "merchant": self.merchant})
        salla = [a for a in self.raw_assets if isinstance(a.partitions_def, dg.MultiPartitionsDefinition)]
        return dg.materialize([*salla, checks], selection=dg.AssetSelection.checks(checks),
                              tags={"dagster/partition": str(key)}, resources=self.resources,
                              instance=self.instance, raise_on_error=False)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    import kingtavo_pipeline.defs.core.entities as core_entities_module
    import kingtavo_pipeline.defs.ingest.api as ingest_api
    from kingtavo_pipeline.definitions import defs
    from kingtavo_pipeline.defs.core.entities import core_entities
    from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS
    from kingtavo_pipeline.defs.warehouse.entities import star_assets
    from kingtavo_pipeline.defs.webhooks.assets import raw_webhook_events
    from kingtavo_pipeline.sources.config import load_sources

    settings = Settings()
    store = get_store(settings)
    _empty_stores(store, settings)
    tmp = tmp_path_factory.mktemp("quality-entities")
    box = Sandbox(SandboxConfig(days=40, salla_merchants=1, salla_requests_per_minute=6000,
                                printavo_requests=1000, printavo_window_seconds=1.0))
    with box.running() as base_url, pytest.MonkeyPatch.context() as mp:
        creds = box.credentials
        merchant = creds.salla_merchants[0]
        (tmp / "sources.yaml").write_text(
            f"printavo:\n  - name: printavo\n    base_url: {base_url}/printavo/api/v2\n    entities: [invoices, customers]\n"
            f"    requests_per_window: 1000\n    window_seconds: 1\n"
            f"salla:\n  - name: salla\n    base_url: {base_url}/salla/admin/v2\n    token_url: {base_url}/salla/oauth2/token\n"
            f"    requests_per_minute: 6000\n    merchants: ['{merchant.merchant_id}']\n")
        sources = load_sources(tmp / "sources.yaml")
        for module in (ingest_api, core_entities_module):
            mp.setattr(module, "SOURCES", sources)
        mp.setenv("PRINTAVO_EMAIL", creds.printavo_email)
        mp.setenv("PRINTAVO_TOKEN", creds.printavo_token)
        mp.setenv("SALLA_CLIENT_ID", creds.salla_client_id)
        mp.setenv("SALLA_CLIENT_SECRET", creds.salla_client_secret)
        save_credentials(store, "salla", "salla", merchant.merchant_id, merchant.access_token,
                         merchant.refresh_token, 3600)
        raw_assets = ingest_api.build_api_raw_assets(sources.api())
        resources = dict(defs().resources)
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(SALLA_MERCHANTS.name, [merchant.merchant_id])
        daily = [a for a in raw_assets if not isinstance(a.partitions_def, dg.MultiPartitionsDefinition)]
        salla = [a for a in raw_assets if isinstance(a.partitions_def, dg.MultiPartitionsDefinition)]
        assert dg.materialize(daily, tags=range_tags(A, C), resources=resources, instance=instance).success
        for day in DAYS:
            key = dg.MultiPartitionKey({"date": day, "merchant": merchant.merchant_id})
            assert dg.materialize(salla, partition_key=key, resources=resources, instance=instance).success
        # customers and products are dated by their creation (some long before the orders): every
        # order finds its customer, and the products have days of their own
        customers = [a for a in raw_assets if a.key.path[-1] in ("customers", "products")]
        first = FIRST_DAY
        ranged = {"dagster/asset_partition_range_start": str(dg.MultiPartitionKey({"date": first, "merchant": merchant.merchant_id})),
                  "dagster/asset_partition_range_end": str(dg.MultiPartitionKey({"date": "2026-11-30", "merchant": merchant.merchant_id}))}
        for asset in customers:
            multi = isinstance(asset.partitions_def, dg.MultiPartitionsDefinition)
            assert dg.materialize([asset], tags=ranged if multi else range_tags(first, "2026-11-30"), resources=resources,
                                  instance=instance).success

        # webhook events, received on A (all applied) and B (one applied, the rest cannot be or are ignored)
        m = merchant.merchant_id
        for i in range(3):
            insert_event(store, salla_event(m, 900_000 + i, f"{A} 10:0{i}:00"), dt.datetime.fromisoformat(f"{A}T12:00:00+00:00"),
                         account=m)
        insert_event(store, salla_event(m, 900_010, f"{B} 10:00:00"), dt.datetime.fromisoformat(f"{B}T12:00:00+00:00"), account=m)
        insert_event(store, {"event": "foo.bar", "merchant": int(m), "data": {"id": 1}},
                     dt.datetime.fromisoformat(f"{B}T12:01:00+00:00"), account=m)
        insert_event(store, {"type": "charge.succeeded"}, dt.datetime.fromisoformat(f"{B}T12:02:00+00:00"),
                     source_name="stripe", provider="stripe")
        # as the sensor plans it: the run also takes the events that carry no day (they fail or are ignored)
        assert dg.materialize([raw_webhook_events], tags={**range_tags(A, C), ORPHANS_TAG: "true"}, resources=resources,
                              instance=instance).success

        assert dg.materialize([core_entities], tags=range_tags(first, "2026-11-30"), resources=resources,
                              instance=instance).success
        assert dg.materialize(star_assets, tags=range_tags(A, C), resources=resources, instance=instance).success

        config = load_quality_config()
        groups = entity_check_groups(sources)
        checks = {name: build_checks(name, g.checks, config, g.partitions_def) for name, g in groups.items()}
        state = Loaded(store, settings, sources, m, resources, checks, instance)
        state.raw_assets = raw_assets
        state.groups = groups
        yield state


def verdicts(result, asset: str, check: str) -> dict[str, bool]:
    return {p: e.passed for (a, c, p), e in evaluations(result).items() if a == asset and c == check}


def key_of(store, table: str, where: str) -> str:
    return store.fetch_value(f"SELECT source_name || '/' || merchant_id || '/' || source_id FROM {table} WHERE {where}")


# --- the tests -----------------------------------------------------------------------------------


def test_every_entity_check_passes_on_the_clean_load(loaded):
    counts = {t: loaded.store.fetch_value(f"SELECT count(*) FROM {t} WHERE partition_date BETWEEN %s AND %s", (A, C))
              for t in ("orders", "order_lines", "customers", "products")}
    assert counts["orders"] and counts["order_lines"] and counts["customers"], counts
    for op_name, group in loaded.groups.items():
        if op_name == "raw_salla_quality_checks":
            for day in DAYS:
                result = loaded.run_salla(day)
                assert result.success, op_name
                found = evaluations(result)
                assert {(a, c) for a, c, _ in found} == {(c.asset_key.to_user_string(), c.name) for c in group.checks}
                assert all(e.passed for e in found.values()), {k: e.description for k, e in found.items() if not e.passed}
                assert {p for *_, p in found} == {str(dg.MultiPartitionKey({"date": day, "merchant": loaded.merchant}))}
            continue
        result = loaded.run(op_name)
        found = evaluations(result)
        expected = {(c.asset_key.to_user_string(), c.name) for c in group.checks}
        assert {(a, c) for a, c, _ in found} == expected, op_name
        failing = {k: e.description for k, e in found.items() if not e.passed}
        if op_name == "webhook_events_quality_checks":  # day B's events failed and were ignored, on purpose
            assert set(failing) == {(EVENTS, "failed_events", B), (EVENTS, "ignored_events", B)}, failing
        else:
            assert not failing, failing
            assert result.success, op_name
        for asset, check in expected:
            assert set(verdicts(result, asset, check)) == set(DAYS), (asset, check)
    loaded.results["clean"] = True


def test_each_entity_check_fails_for_the_reason_it_names(loaded):
    store, m = loaded.store, loaded.merchant
    day_b = f"partition_date = '{B}'"
    orders = [r[0] for r in store.fetch_all(f"SELECT id FROM orders WHERE {day_b} AND source_type = 'salla' ORDER BY id")]
    lines = [r[0] for r in store.fetch_all(
        f"SELECT l.id FROM order_lines l JOIN orders o ON o.source_type = l.source_type AND o.source_name = l.source_name "
        f"AND o.merchant_id = l.merchant_id AND o.source_id = l.order_source_id WHERE o.id = {orders[6]} ORDER BY l.id")]
    # the newest Salla customers (customers are dated by their sign-up, mostly before the orders)
    customers, signed_up = zip(*store.fetch_all("SELECT id, partition_date::text FROM customers WHERE source_type = 'salla' "
                                                "ORDER BY partition_date DESC, id LIMIT 3"))
    key = {i: key_of(store, "orders", f"id = {i}") for i in orders[:7]}
    with store.transaction() as conn:
        conn.execute(f"UPDATE orders SET ordered_at = NULL WHERE id = {orders[0]}")              # completeness
        conn.execute(f"UPDATE orders SET currency = 'RIYAL' WHERE id = {orders[1]}")             # validity
        conn.execute(f"UPDATE orders SET subtotal = -subtotal WHERE id = {orders[2]}")           # money
        conn.execute(f"UPDATE orders SET total = total + 5 WHERE id = {orders[3]}")              # total vs lines
        conn.execute(f"UPDATE orders SET customer_source_id = 'gone' WHERE id = {orders[4]}")    # customer exists
        conn.execute(f"UPDATE order_lines SET currency = 'sar', unit_price = -unit_price WHERE id = {lines[0]}")
        conn.execute(f"DELETE FROM orders WHERE id = {orders[6]}")                               # orphaned lines
        conn.execute(f"UPDATE customers SET email = 'not an email' WHERE id = {customers[0]}")
        conn.execute(f"UPDATE customers SET email = (SELECT email FROM customers WHERE id = {customers[2]}) "
                     f"WHERE id = {customers[1]}")
    core = loaded.run("core_orders_quality_checks")
    assert not core.success  # money and total-vs-lines block
    found = evaluations(core)
    for check in ("completeness", "validity", "money_non_negative", "order_total_matches_lines", "order_customer_exists"):
        assert verdicts(core, ORDERS, check) == {A: True, B: False, C: True}, check
    assert values(found[(ORDERS, "completeness", B)])["failing_columns"] == ["ordered_at"]
    assert values(found[(ORDERS, "completeness", B)])["sample_keys"] == [key[orders[0]]]
    assert values(found[(ORDERS, "validity", B)])["failing_rules"] == ["currency:currency"]
    assert values(found[(ORDERS, "money_non_negative", B)])["sample_keys"] == [key[orders[2]]]
    assert found[(ORDERS, "money_non_negative", B)].blocking
    total = found[(ORDERS, "order_total_matches_lines", B)]
    assert values(total)["sample_keys"] == [key[orders[3]]] and values(total)["tolerance"] == 0.01
    assert total.severity == dg.AssetCheckSeverity.ERROR
    customer = found[(ORDERS, "order_customer_exists", B)]
    assert values(customer)["sample_keys"] == [key[orders[4]]]
    assert customer.severity == dg.AssetCheckSeverity.WARN and not customer.blocking

    line_checks = evaluations(loaded.run("core_order_lines_quality_checks"))
    assert values(line_checks[(LINES, "validity", B)])["failing_rules"] == ["currency:currency"]
    assert values(line_checks[(LINES, "money_non_negative", B)])["failing_rules"] == ["non_negative:unit_price"]
    orphans = line_checks[(LINES, "line_has_order", B)]
    assert not orphans.passed and values(orphans)["violations"] == len(lines)
    assert line_checks[(LINES, "line_has_order", A)].passed

    customer_checks = evaluations(loaded.run("core_customers_quality_checks", start=min(signed_up), end=max(signed_up)))
    days = {p for (a, c, p), e in customer_checks.items() if c == "validity" and not e.passed}
    assert len(days) == 1 and values(customer_checks[(CUSTOMERS, "validity", days.pop())])["failing_rules"] == ["email:email"]
    dupes = [e for (a, c, p), e in customer_checks.items() if c == "unique_email" and not e.passed]
    assert dupes and all(e.severity == dg.AssetCheckSeverity.WARN for e in dupes)
    assert sum(values(e)["violations"] for e in dupes) == 2


def test_product_checks_fail_for_the_reason_they_name(loaded):
    store = loaded.store
    # products are dated by their creation (before the orders): a day with two Salla products (two),
    # and the latest other day with one (one)
    two = store.fetch_value("SELECT partition_date::text FROM products WHERE source_type = 'salla' "
                            "GROUP BY partition_date HAVING count(*) >= 2 ORDER BY partition_date DESC LIMIT 1")
    one = store.fetch_value("SELECT max(partition_date)::text FROM products WHERE source_type = 'salla' "
                            "AND partition_date <> %s", (two,))
    ids = [r[0] for d, n in ((one, 1), (two, 2)) for r in store.fetch_all(
        f"SELECT id FROM products WHERE partition_date = '{d}' AND source_type = 'salla' ORDER BY id LIMIT {n}")]
    ids.insert(1, ids[0])  # the product of `one` takes two faults
    first, last = (str(d) for d in store.fetch_all("SELECT min(partition_date), max(partition_date) FROM products")[0])
    key = {i: key_of(store, "products", f"id = {i}") for i in ids}
    saved = store.fetch_all("SELECT id, name, currency, price, sku FROM products WHERE id = ANY(%s)", (list(set(ids)),))
    clean = loaded.run("core_products_quality_checks", start=first, end=last)
    assert clean.success and all(e.passed for e in evaluations(clean).values())
    try:
        with store.transaction() as conn:
            conn.execute(f"UPDATE products SET sku = NULL WHERE id = {ids[0]}")                       # completeness
            conn.execute(f"UPDATE products SET currency = 'RIYAL' WHERE id = {ids[1]}")               # validity
            conn.execute(f"UPDATE products SET price = -abs(price) - 1 WHERE id = {ids[2]}")          # money
            conn.execute(f"UPDATE products SET sku = (SELECT sku FROM products WHERE id = {ids[2]}) "  # unique SKU
                         f"WHERE id = {ids[3]}")
        result = loaded.run("core_products_quality_checks", start=first, end=last)
        assert not result.success  # a negative price blocks the products dimension
        found = evaluations(result)
        for check, bad in (("completeness", one), ("validity", one), ("money_non_negative", two), ("unique_sku", two)):
            verdict = verdicts(result, PRODUCTS, check)
            assert verdict[bad] is False and all(v for d, v in verdict.items() if d != bad), (check, verdict)
        assert values(found[(PRODUCTS, "completeness", one)])["failing_columns"] == ["sku"]
        assert values(found[(PRODUCTS, "completeness", one)])["sample_keys"] == [key[ids[0]]]
        assert values(found[(PRODUCTS, "validity", one)])["failing_rules"] == ["currency:currency"]
        money = found[(PRODUCTS, "money_non_negative", two)]
        assert values(money)["sample_keys"] == [key[ids[2]]] and money.blocking
        assert money.severity == dg.AssetCheckSeverity.ERROR
        unique = found[(PRODUCTS, "unique_sku", two)]
        assert unique.severity == dg.AssetCheckSeverity.WARN and values(unique)["violations"] == 2
    finally:
        with store.transaction() as conn:
            for row in saved:
                conn.execute("UPDATE products SET name = %s, currency = %s, price = %s, sku = %s WHERE id = %s",
                             (*row[1:], row[0]))


def test_warehouse_checks_catch_duplicates_and_drift_from_core(loaded):
    with loaded.clickhouse() as ch:
        # an older version of a fact row on A (FINAL hides it), and a fact row of A copied to C
        ch.command(f"INSERT INTO orders_fact SELECT * REPLACE (0 AS _version) FROM orders_fact "
                   f"WHERE partition_date = '{A}' ORDER BY order_source_id LIMIT 1")
        ch.command(f"INSERT INTO orders_fact SELECT * REPLACE (toDate('{C}') AS partition_date) FROM "
                   f"(SELECT * FROM orders_fact FINAL WHERE partition_date = '{A}' ORDER BY order_source_id DESC LIMIT 1)")
        ch.command(f"ALTER TABLE customers_dim DELETE WHERE partition_date = '{C}' AND source_id IN "
                   f"(SELECT source_id FROM customers_dim WHERE partition_date = '{C}' LIMIT 1) SETTINGS mutations_sync = 1")
    result = loaded.run("warehouse_entities_quality_checks")
    found = evaluations(result)
    unique = {p: found[(FACT, "unique_keys", p)] for p in DAYS}
    assert (unique[A].passed, unique[C].passed) == (False, False)
    assert values(unique[A])["duplicates_hidden_by_final"] == 1 and values(unique[C])["keys_in_other_partitions"] == 1
    assert unique[C].severity == dg.AssetCheckSeverity.ERROR
    fact = found[(FACT, "matches_core", C)]
    assert not fact.passed and values(fact)["difference:rows"] == 1 and values(fact)["difference:orders"] == 1
    assert fact.severity == dg.AssetCheckSeverity.ERROR and fact.blocking
    assert found[(FACT, "matches_core", A)].passed  # FINAL reads the newest version: A still agrees
    dim = found[(CUSTOMERS_DIM, "matches_core", C)]
    assert not dim.passed and values(dim)["difference"] == -1


def test_volume_anomalies_and_partial_days(loaded):
    config = parse_quality_config({"defaults": {"volume": {"min_history": 2}}})
    group = loaded.groups["core_orders_quality_checks"]
    volume = [c for c in group.checks if c.kind == "volume"]
    checks = build_checks("core_orders_volume", volume, config)
    loaded.checks["core_orders_volume"] = checks
    assert loaded.run("core_orders_volume").success
    with loaded.store.transaction() as conn:  # day C's orders landed five more times under new ids
        for n in range(5):
            conn.execute(
                "INSERT INTO orders (source_type, source_name, merchant_id, source_id, currency, total, partition_date) "
                f"SELECT source_type, source_name, merchant_id, source_id || '-copy{n}', currency, total, partition_date "
                f"FROM orders WHERE partition_date = '{C}'")
    spike = evaluations(loaded.run("core_orders_volume"))[(ORDERS, "volume_anomaly", C)]
    assert not spike.passed and values(spike)["status"] == "anomaly" and values(spike)["rows_z"] > 3.5
    # today (an open partition) is reported, not judged
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    with loaded.store.transaction() as conn:
        conn.execute(f"UPDATE orders SET partition_date = '{today}' WHERE id = (SELECT min(id) FROM orders)")
    open_day = evaluations(loaded.run("core_orders_volume", start=today, end=today))[(ORDERS, "volume_anomaly", today)]
    assert open_day.passed and values(open_day)["status"] == "partial_day" and values(open_day)["rows"] == 1


def test_raw_checks_catch_drift_and_webhook_backlog(loaded):
    store, m = loaded.store, loaded.merchant
    with store.transaction() as conn:  # Salla renamed a field the mapping reads on B
        conn.execute(f"UPDATE raw_data SET payload = payload - 'reference_id' || jsonb_build_object('ref', payload->'reference_id') "
                     f"WHERE source_name = 'salla/{m}' AND entity = 'orders' AND partition_date = '{B}'")
        conn.execute(f"UPDATE raw_data SET payload = jsonb_set(payload, '{{total}}', '\"12.5\"') "
                     f"WHERE source_name = 'printavo' AND entity = 'invoices' AND partition_date = '{C}'")
    drift = evaluations(loaded.run_salla(B))[("raw/salla/orders", "schema_drift", str(dg.MultiPartitionKey({"date": B, "merchant": m})))]
    assert not drift.passed and values(drift)["missing_field_names"] == ["reference_id"]
    assert values(drift)["new_field_names"] == ["ref"]
    printavo = evaluations(loaded.run("raw_api_quality_checks"))
    assert printavo[("raw/printavo/invoices", "schema_drift", A)].passed
    retyped = printavo[("raw/printavo/invoices", "schema_drift", C)]
    assert not retyped.passed and values(retyped)["retyped_field_names"] == ["total: number -> string"]

    insert_event(store, salla_event(m, 900_020, f"{C} 10:00:00"), dt.datetime.fromisoformat(f"{C}T12:00:00+00:00"), account=m)
    events = evaluations(loaded.run("webhook_events_quality_checks"))
    overdue = events[(EVENTS, "pending_overdue", C)]
    assert not overdue.passed and values(overdue)["overdue"] == 1 and overdue.severity == dg.AssetCheckSeverity.WARN
    assert events[(EVENTS, "pending_overdue", A)].passed
    failed = events[(EVENTS, "failed_events", B)]
    assert not failed.passed and values(failed)["invalid:failed:status"] == 1
    assert events[(EVENTS, "failed_events", A)].passed


def test_a_failed_blocking_core_check_keeps_the_orders_fact_from_loading(loaded):
    from kingtavo_pipeline.defs.core.entities import core_entities
    from kingtavo_pipeline.defs.warehouse.entities import star_assets

    graph = [core_entities, *star_assets, loaded.checks["core_orders_quality_checks"],
             loaded.checks["core_order_lines_quality_checks"]]
    run = dg.materialize(graph, selection=dg.AssetSelection.assets(core_entities, *star_assets)
                         | dg.AssetSelection.checks(loaded.checks["core_orders_quality_checks"],
                                                    loaded.checks["core_order_lines_quality_checks"]),
                         partition_key=B, resources=loaded.resources, instance=loaded.instance, raise_on_error=False)
    assert not run.success
    materialized = {e.asset_key.to_user_string() for e in run.get_asset_materialization_events()}
    assert FACT not in materialized and {ORDERS, LINES, CUSTOMERS_DIM} <= materialized
