"""Webhook events into raw_data: sensor ticks against real webhook_events rows, and runs of
``raw/webhooks/events`` (in process) against the real PostgreSQL test database."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import dagster as dg
import httpx
import orjson
import psycopg.types.json
import pytest

from kingtavo_pipeline.defs.ingest import assets as ingest_assets
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.resources import defs as resource_defs
from kingtavo_pipeline.defs.webhooks import defs as webhook_defs
from kingtavo_pipeline.defs.webhooks.assets import WEBHOOK_EVENTS_KEY, raw_webhook_events
from kingtavo_pipeline.defs.webhooks.sensors import plan_requests, webhook_events_sensor
from kingtavo_pipeline.sources.config import parse_sources
from kingtavo_pipeline.webhooks.app import create_app
from kingtavo_pipeline.webhooks.config import parse_webhooks
from kingtavo_pipeline.webhooks.schemes import sign_headers
from kingtavo_pipeline_tests.http_servers import serve_app

MERCHANT = "1234509876"
# the sensor plans against the partitions that exist "now": fixed, so the tests do not age
NOW = datetime(2024, 12, 1, 6, tzinfo=timezone.utc)  # last partition: 2024-12-01 (today, open)


def salla_time(text: str) -> dict:
    return {"date": f"{text}.000000", "timezone_type": 3, "timezone": "Asia/Riyadh"}


def order_event(order_id: int, created: str = "2024-11-02 10:00:00", updated: str = "2024-11-02 12:00:00",
                event: str = "order.updated", status: str = "completed") -> dict:
    return {
        "event": event, "merchant": int(MERCHANT), "created_at": "2024-11-03 09:00:00",
        "data": {
            "id": order_id, "reference_id": f"R{order_id}", "status": {"slug": status}, "currency": "SAR",
            "date": salla_time(created), "updated_at": salla_time(updated),
            "amounts": {"sub_total": {"amount": 100, "currency": "SAR"}, "total": {"amount": 115, "currency": "SAR"},
                        "tax": {"percent": "15", "amount": {"amount": 15, "currency": "SAR"}}},
            "customer": {"id": 55},
            "items": [{"id": order_id * 10, "name": "Shirt", "sku": "SH-1", "quantity": 2, "product_id": 7,
                       "amounts": {"price_without_tax": {"amount": 50, "currency": "SAR"},
                                   "total": {"amount": 115, "currency": "SAR"}}}],
        },
    }


def insert_event(store, payload, *, source_name: str = "salla", provider: str = "salla",
                 event_type: str | None = None, account: str | None = None, received_at: datetime | None = None) -> int:
    if event_type is None and isinstance(payload, dict):
        event_type = payload.get("event")
    with store.transaction() as conn:
        return conn.execute(
            """INSERT INTO webhook_events (source_name, provider, event_type, dedupe_key, account, received_at, payload)
               VALUES (%s, %s, %s, gen_random_uuid()::text, %s, coalesce(%s, now()), %s) RETURNING id""",
            (source_name, provider, event_type, account, received_at, psycopg.types.json.Jsonb(payload)),
        ).fetchone()[0]


def events(store) -> dict[int, tuple]:
    return {r[0]: r[1:] for r in store.fetch_all(
        "SELECT id, status, run_id, processed_at IS NOT NULL, error FROM webhook_events ORDER BY id")}


def materialize(request: dg.RunRequest, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize([raw_webhook_events], instance=instance, tags=request.tags,
                          resources={"postgres": PostgresResource()})


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


# --- the sensor ----------------------------------------------------------------------------------


def test_a_tick_requests_one_run_per_day_range_and_moves_its_cursor(store, instance):
    a = insert_event(store, order_event(1, created="2024-11-02 10:00:00"))
    b = insert_event(store, order_event(2, created="2024-11-03 10:00:00"))
    c = insert_event(store, {"ref": "main"}, source_name="github", provider="github", event_type="push")
    d = insert_event(store, order_event(3, created="2024-11-20 10:00:00"))
    e = insert_event(store, {"event": "order.updated", "data": "garbage"})

    requests, cursor = plan_requests(store, 0, now=NOW)
    assert cursor == e
    assert [(r.run_key, r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"],
             r.tags["kingtavo/events_from"], r.tags["kingtavo/events_to"], r.tags["kingtavo/events_orphans"])
            for r in requests] == [
        (f"webhooks:{a}-{b}", "2024-11-02", "2024-11-03", str(a), str(b), "false"),
        # the GitHub event and the unparseable one ride with the latest range, to be ignored / failed
        (f"webhooks:{c}-{e}", "2024-11-20", "2024-11-20", str(c), str(e), "true"),
    ]
    assert all(r.tags["kingtavo/events_last_partition"] == "2024-12-01" for r in requests)
    # the same tick again asks for the same runs (Dagster drops repeated run keys)
    assert [r.run_key for r in plan_requests(store, 0, now=NOW)[0]] == [r.run_key for r in requests]
    # past the cursor there is nothing new
    assert plan_requests(store, cursor, now=NOW) == ([], cursor)
    f = insert_event(store, order_event(4, created="2024-11-05 10:00:00"))
    later, cursor = plan_requests(store, cursor, now=NOW)
    assert ([r.run_key for r in later], cursor) == ([f"webhooks:{f}-{f}"], f)


def test_the_sensor_itself_reads_after_its_cursor(store, instance):
    first = insert_event(store, order_event(1))
    context = dg.build_sensor_context(instance=instance, cursor=None, resources={"postgres": PostgresResource()})
    result = webhook_events_sensor(context)
    assert [r.run_key for r in result] == [f"webhooks:{first}-{first}"]
    assert context.cursor == str(first)
    again = dg.build_sensor_context(instance=instance, cursor=context.cursor, resources={"postgres": PostgresResource()})
    assert isinstance(webhook_events_sensor(again), dg.SkipReason)
    assert again.cursor == str(first)


def test_batches_are_bounded_and_every_event_is_requested_exactly_once(store, instance):
    ids = [insert_event(store, order_event(n, created=f"2024-11-{1 + n % 9:02d} 10:00:00")) for n in range(25)]
    cursor, batches, claimed = 0, 0, []
    while True:
        requests, new_cursor = plan_requests(store, cursor, now=NOW, batch_size=10, max_runs=3)
        if not requests:
            break
        assert new_cursor > cursor and new_cursor - cursor <= 10
        batches += 1
        for request in requests:
            materialize(request, instance)
        cursor = new_cursor
        claimed += [r.run_key for r in requests]
    assert cursor == ids[-1] and batches >= 3
    assert len(claimed) == len(set(claimed))
    states = events(store)
    assert all(states[i][0] == "applied" for i in ids), states
    assert store.fetch_value("SELECT count(DISTINCT source_id) FROM raw_data") == 25


def test_events_of_today_get_todays_partition(store, instance):
    event_id = insert_event(store, order_event(9, created="2024-12-01 05:00:00"))  # today at NOW
    [request], _ = plan_requests(store, 0, now=NOW)
    assert request.asset_selection is None  # the events' day exists: core and the warehouse follow
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["dagster/asset_partition_range_end"],
            request.tags["kingtavo/events_orphans"]) == ("2024-12-01", "2024-12-01", "false")


def test_events_of_a_day_without_a_partition_get_a_raw_only_run(store, instance):
    event_id = insert_event(store, order_event(9, created="2024-12-02 10:00:00"))  # tomorrow at NOW (clock skew)
    [request], _ = plan_requests(store, 0, now=NOW)
    assert request.asset_selection == [WEBHOOK_EVENTS_KEY]
    assert (request.tags["dagster/asset_partition_range_start"], request.tags["kingtavo/events_orphans"]) == (
        "2024-12-01", "true")
    materialize(request, instance)
    assert events(store)[event_id][0] == "applied"
    # landed under its own day, where core takes it once the partition exists
    assert store.fetch_all("SELECT partition_date FROM raw_data") == [(date(2024, 12, 2),)]


def test_stragglers_behind_the_cursor_are_requested_again(store, instance):
    old = insert_event(store, order_event(1), received_at=datetime.now(timezone.utc) - timedelta(hours=1))
    newer = insert_event(store, order_event(2))
    # the cursor already passed `old` (it committed after `newer` was read, say)
    requests, cursor = plan_requests(store, newer, now=NOW)
    assert cursor == newer
    window = int(NOW.timestamp() // 600)
    assert [r.run_key for r in requests] == [f"webhooks:{old}-{old}:retry-{window}"]
    # the same window asks under the same key (Dagster runs it once); the next window asks anew,
    # so an event put back to pending after a failed run is not dropped as a used run key
    assert [r.run_key for r in plan_requests(store, newer, now=NOW)[0]] == [f"webhooks:{old}-{old}:retry-{window}"]
    later = NOW + timedelta(minutes=10)
    assert [r.run_key for r in plan_requests(store, newer, now=later)[0]] == [f"webhooks:{old}-{old}:retry-{window + 1}"]
    materialize(requests[0], instance)
    assert events(store)[old][0] == "applied"
    assert plan_requests(store, newer, now=NOW) == ([], newer)


# --- the run -------------------------------------------------------------------------------------


def test_a_run_lands_events_marks_them_and_keeps_what_it_cannot_apply(store, instance):
    applied = insert_event(store, order_event(1))
    product = insert_event(store, {"event": "product.updated", "merchant": int(MERCHANT),
                                   "data": {"id": 7, "name": "Mug", "created_at": "2024-11-02 08:00:00"}})
    unknown = insert_event(store, {"event": "foo.bar", "merchant": int(MERCHANT), "data": {"id": 1}})
    no_items = insert_event(store, {**order_event(2), "data": {k: v for k, v in order_event(2)["data"].items() if k != "items"}})
    too_old = insert_event(store, order_event(3, created="2023-06-01 10:00:00"))
    stripe = insert_event(store, {"type": "charge.succeeded"}, source_name="stripe", provider="stripe",
                          event_type="charge.succeeded")
    requests, _ = plan_requests(store, 0, now=NOW)
    results = [materialize(r, instance) for r in requests]
    run_ids = {r.run_id for r in results}
    states = events(store)

    for event_id in (applied, product):
        status, run_id, processed, error = states[event_id]
        assert (status, processed, error) == ("applied", True, None) and run_id in run_ids
    raw = store.fetch_all("SELECT source_type, source_name, entity, source_id, partition_date, run_id FROM raw_data ORDER BY entity")
    assert [r[:5] for r in raw] == [
        ("salla", f"salla/{MERCHANT}", "orders", "1", date(2024, 11, 2)),
        ("salla", f"salla/{MERCHANT}", "products", "7", date(2024, 11, 2)),
    ]
    assert {r[5] for r in raw} <= run_ids
    landed = store.fetch_value("SELECT payload FROM raw_data WHERE entity = 'orders'")
    assert landed == order_event(1)["data"]  # the entity itself, as the API returns it

    for event_id, words in ((unknown, "unknown Salla event"), (no_items, "'items'"), (too_old, "before the first partition")):
        status, run_id, processed, error = states[event_id]
        assert (status, processed) == ("failed", True) and run_id in run_ids and words in error
    letters = store.fetch_all("SELECT stage, source_type, source_name, source_id, error_type, status FROM dead_letters ORDER BY source_id::int")
    assert letters == [
        ("webhook", "salla", "salla", str(unknown), "unknown_event", "open"),
        ("webhook", "salla", "salla", str(no_items), "bad_payload", "open"),
        ("webhook", "salla", "salla", str(too_old), "before_first_partition", "open"),
    ]
    status, run_id, processed, error = states[stripe]
    assert (status, processed) == ("ignored", True) and "stripe event 'charge.succeeded'" in error

    totals = {k: sum(metadata(r)[k] for r in results) for k in
              ("events_applied", "events_failed", "events_ignored", "dead_letters", "records_new")}
    assert totals == {"events_applied": 2, "events_failed": 3, "events_ignored": 1, "dead_letters": 3, "records_new": 2}
    assert store.fetch_value("SELECT count(*) FROM etl_runs WHERE asset_key = 'raw/webhooks/events' AND status = 'success'") == len(results)

    # a second run of the same request finds nothing pending: nothing changes
    again = materialize(requests[0], instance)
    assert metadata(again)["events_claimed"] == 0
    assert events(store) == states


def test_a_run_takes_only_its_own_events(store, instance):
    early = insert_event(store, order_event(1, created="2024-11-02 10:00:00"))
    far = insert_event(store, order_event(2, created="2024-11-20 10:00:00"))
    also_early = insert_event(store, order_event(3, created="2024-11-02 11:00:00"))
    first, second = plan_requests(store, 0, now=NOW)[0]
    assert (first.tags["kingtavo/events_from"], first.tags["kingtavo/events_to"]) == (str(early), str(also_early))
    materialize(first, instance)
    states = events(store)
    assert (states[early][0], states[also_early][0], states[far][0]) == ("applied", "applied", "pending")
    materialize(second, instance)
    assert events(store)[far][0] == "applied"


def test_salla_events_land_under_the_configured_salla_source(store, instance, monkeypatch, tmp_path):
    sources = parse_sources({"salla": [{"name": "salla_main", "merchants": [MERCHANT]}]}, tmp_path)
    monkeypatch.setattr(ingest_assets, "SOURCES", sources)
    insert_event(store, order_event(1))
    [request], _ = plan_requests(store, 0, now=NOW)
    materialize(request, instance)
    assert store.fetch_all("SELECT source_name FROM raw_data") == [(f"salla_main/{MERCHANT}",)]


def test_an_older_event_lands_after_a_newer_one_as_an_observation(store, instance):
    """Webhooks arrive out of order: the older version is landed (raw keeps every observation) and
    the newer stays the version core keeps (see the core test below)."""
    newer = insert_event(store, order_event(1, updated="2024-11-02 15:00:00", status="completed"))
    [request], cursor = plan_requests(store, 0, now=NOW)
    materialize(request, instance)
    older = insert_event(store, order_event(1, updated="2024-11-02 11:00:00", status="in_progress"))
    [request], _ = plan_requests(store, cursor, now=NOW)
    materialize(request, instance)
    assert (events(store)[newer][0], events(store)[older][0]) == ("applied", "applied")
    rows = store.fetch_all("SELECT payload->'status'->>'slug' FROM raw_data WHERE source_id = '1' ORDER BY observed_seq")
    assert rows == [("completed",), ("in_progress",)]


def test_within_one_run_the_newest_version_of_a_record_is_the_one_landed(store, instance):
    insert_event(store, order_event(1, updated="2024-11-02 15:00:00", status="completed"))
    insert_event(store, order_event(1, updated="2024-11-02 11:00:00", status="in_progress"))  # arrives later, older
    [request], _ = plan_requests(store, 0, now=NOW)
    result = materialize(request, instance)
    assert metadata(result)["events_superseded_in_batch"] == 1
    assert store.fetch_all("SELECT payload->'status'->>'slug' FROM raw_data") == [("completed",)]
    assert {s for s, *_ in events(store).values()} == {"applied"}


def test_a_salla_event_through_the_ingress_reaches_raw_data(store, instance):
    config = parse_webhooks({"webhooks": [{"name": "salla", "provider": "salla", "secrets_env": "SALLA_SECRET"}]})
    app = create_app(config, store.url, environ={"SALLA_SECRET": "s3cret"})
    body = orjson.dumps(order_event(42))
    with serve_app(app, lifespan="on") as base:
        response = httpx.post(f"{base}/webhooks/salla", content=body,
                              headers={"Content-Type": "application/json", **sign_headers("salla", body, "s3cret")})
    assert response.status_code < 300, response.text
    [request], _ = plan_requests(store, 0, now=NOW)
    materialize(request, instance)
    assert store.fetch_all("SELECT source_name, source_id FROM raw_data") == [(f"salla/{MERCHANT}", "42")]
    assert {s for s, *_ in events(store).values()} == {"applied"}


def test_definitions_expose_the_asset_job_and_a_running_sensor():
    definitions = dg.Definitions.merge(resource_defs(), webhook_defs())
    assert definitions.get_assets_def(WEBHOOK_EVENTS_KEY).partitions_def is not None
    sensor = definitions.get_sensor_def("webhook_events_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds <= 5
    assert sensor.job_name == "webhook_events_job"


def test_core_keeps_the_newer_order_when_an_older_webhook_lands_later(store, instance, monkeypatch, tmp_path):
    from kingtavo_pipeline.defs.core import entities as core_entities_module

    sources = parse_sources({"salla": [{"name": "salla", "merchants": [MERCHANT]}]}, tmp_path)
    monkeypatch.setattr(ingest_assets, "SOURCES", sources)
    monkeypatch.setattr(core_entities_module, "SOURCES", sources)
    tags = {"dagster/asset_partition_range_start": "2024-11-02", "dagster/asset_partition_range_end": "2024-11-02"}

    def apply_and_map():
        [request], _ = plan_requests(store, store.fetch_value("SELECT coalesce(max(id) - 1, 0) FROM webhook_events"), now=NOW)
        materialize(request, instance)
        dg.materialize([core_entities_module.core_entities], instance=instance, tags=tags,
                       resources={"postgres": PostgresResource()})

    insert_event(store, order_event(1, updated="2024-11-02 15:00:00", status="completed"))
    apply_and_map()
    insert_event(store, order_event(1, updated="2024-11-02 11:00:00", status="in_progress"))
    apply_and_map()
    assert store.fetch_value("SELECT count(*) FROM raw_data WHERE source_id = '1'") == 2
    status, updated = store.fetch_all("SELECT raw_status, source_updated_at FROM orders WHERE source_id = '1'")[0]
    assert (status, updated) == ("completed", datetime(2024, 11, 2, 12, tzinfo=timezone.utc))
