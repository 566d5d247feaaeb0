"""Stored webhook events -> landings, and the runs that apply them (pure)."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from kingtavo_pipeline.transform.webhook_events import (
    Landing,
    PendingEvent,
    StoredEvent,
    event_day,
    newest_last,
    parse_event,
    plan_event_runs,
    run_claims,
    salla_entity,
)

MERCHANT = 1234509876
FIRST, LAST = date(2024, 1, 1), date(2024, 11, 30)


def salla_time(text: str) -> dict:
    return {"date": f"{text}.000000", "timezone_type": 3, "timezone": "Asia/Riyadh"}


def order(order_id=1001, created="2024-11-02 10:00:00", updated="2024-11-02 12:00:00", **extra) -> dict:
    return {
        "id": order_id, "reference_id": f"R{order_id}", "status": {"slug": "completed"},
        "date": salla_time(created), "updated_at": salla_time(updated), "currency": "SAR",
        "amounts": {"total": {"amount": 150, "currency": "SAR"}},
        "items": [{"id": 1, "name": "Shirt", "quantity": 2}], **extra,
    }


def salla(event: str, data, *, merchant=MERCHANT, event_id=1, account=None, provider="salla") -> StoredEvent:
    payload = {"event": event, "created_at": "2024-11-03 09:00:00", "data": data}
    if merchant is not None:
        payload["merchant"] = merchant
    return StoredEvent(event_id, "salla", provider, event, account, payload)


def test_an_order_event_lands_the_order_in_its_creation_day_in_utc():
    outcome = parse_event(salla("order.updated", order(created="2024-11-02 01:30:00")))
    assert outcome.action == "land"
    landing = outcome.landing
    assert (landing.source_type, landing.entity, landing.account, landing.source_id) == ("salla", "orders", str(MERCHANT), "1001")
    # 01:30 in Riyadh (UTC+3) is the evening before in UTC: the partition is the UTC day
    assert landing.occurred_at == datetime(2024, 11, 1, 22, 30, tzinfo=timezone.utc)
    assert landing.day == date(2024, 11, 1)
    assert landing.updated_at == datetime(2024, 11, 2, 9, 0, tzinfo=timezone.utc)
    assert landing.payload == order(created="2024-11-02 01:30:00")  # the entity as the API returns it


@pytest.mark.parametrize(("event", "entity"), [
    ("order.created", "orders"), ("order.status.updated", "orders"), ("order.refunded", "orders"),
    ("product.updated", "products"), ("product.quantity.low", "products"), ("product.deleted", "products"),
    ("customer.created", "customers"), ("customer.updated", "customers"),
])
def test_salla_event_families_map_to_their_entity(event, entity):
    assert salla_entity(event) == (entity, None)


@pytest.mark.parametrize("event", ["app.installed", "category.created", "shipment.created", "abandoned.cart",
                                   "customer.otp.request", "order.deleted", "customer.deleted"])
def test_salla_events_without_a_modelled_entity_are_ignored_with_a_reason(event):
    outcome = parse_event(salla(event, {"id": 5}))
    assert outcome.action == "ignore"
    assert event in outcome.reason


def test_a_product_uses_created_at_else_updated_at_for_its_day():
    product = {"id": 7, "name": "Mug", "created_at": "2024-10-01 08:00:00", "updated_at": "2024-11-05 08:00:00"}
    landing = parse_event(salla("product.updated", product)).landing
    assert (landing.entity, landing.day) == ("products", date(2024, 10, 1))
    undated = parse_event(salla("product.updated", {"id": 7, "name": "Mug", "updated_at": "2024-11-05 08:00:00"})).landing
    assert undated.day == date(2024, 11, 5)


def test_a_deleted_product_lands_with_status_deleted():
    outcome = parse_event(salla("product.deleted", {"id": 7, "name": "Mug", "status": "sale",
                                                    "created_at": "2024-10-01 08:00:00"}))
    assert outcome.action == "land"
    assert outcome.landing.payload["status"] == "deleted"


def test_a_customer_event_lands_the_customer():
    outcome = parse_event(salla("customer.created", {"id": 55, "email": "a@example.com",
                                                     "created_at": "2024-06-01 10:00:00"}))
    assert (outcome.action, outcome.landing.entity, outcome.landing.source_id) == ("land", "customers", "55")


@pytest.mark.parametrize(("event", "error_type", "words"), [
    (salla("foo.bar", {"id": 1}), "unknown_event", "unknown Salla event 'foo.bar'"),
    (StoredEvent(1, "salla", "salla", None, None, {"data": order()}), "unknown_event", "names no event"),
    (StoredEvent(1, "salla", "salla", "order.updated", None, ["not", "an", "object"]), "bad_payload", "not a JSON object"),
    (salla("order.updated", "text"), "bad_payload", "'data' is not an object"),
    (salla("order.updated", {**order(), "id": None}), "bad_payload", "no id"),
    (salla("order.updated", order(), merchant=None), "bad_payload", "no merchant"),
    (salla("order.updated", {**order(), "date": None}), "missing_partition_date", "date is missing"),
    (salla("order.updated", {**order(), "updated_at": "yesterday"}), "bad_payload", "updated_at"),
    (salla("order.updated", {k: v for k, v in order().items() if k != "items"}), "bad_payload", "'items'"),
    (salla("order.updated", order(created="2023-05-01 12:00:00")), "before_first_partition", "before the first partition"),
])
def test_unusable_events_fail_with_a_reason(event, error_type, words):
    outcome = parse_event(event, first_day=FIRST)
    assert outcome.action == "fail"
    assert outcome.error_type == error_type
    assert words in outcome.reason


def test_the_merchant_falls_back_to_the_stored_account():
    outcome = parse_event(salla("order.updated", order(), merchant=None, account="999"))
    assert outcome.landing.account == "999"


def test_salla_token_sources_are_salla_too():
    assert parse_event(salla("order.updated", order(), provider="salla_token")).action == "land"


def test_other_providers_are_ignored_with_the_provider_named():
    outcome = parse_event(StoredEvent(1, "github", "github", "push", "org/repo", {"ref": "main"}))
    assert outcome.action == "ignore"
    assert "github event 'push'" in outcome.reason


def invoice(**extra) -> dict:
    return {"id": "inv-9", "visualId": "1009", "__typename": "Invoice",
            "timestamps": {"createdAt": "2024-11-02T10:00:00Z", "updatedAt": "2024-11-04T10:00:00Z"}, **extra}


def test_a_printavo_event_carrying_its_invoice_lands_it():
    outcome = parse_event(StoredEvent(1, "printavo", "hmac", "invoice.updated", None, {"data": invoice()}))
    landing = outcome.landing
    assert (outcome.action, landing.source_type, landing.entity, landing.source_id) == ("land", "printavo", "invoices", "inv-9")
    assert landing.day == date(2024, 11, 2)
    assert landing.updated_at == datetime(2024, 11, 4, 10, tzinfo=timezone.utc)
    quote = parse_event(StoredEvent(1, "printavo-shop", "standard", None, None, invoice(__typename="Quote")))
    assert quote.landing.entity == "quotes"


def test_a_printavo_event_without_its_invoice_fails_naming_the_missing_re_pull():
    outcome = parse_event(StoredEvent(1, "printavo", "hmac", "invoice.updated", None, {"invoice_id": "inv-9"}))
    assert (outcome.action, outcome.error_type) == ("fail", "printavo_no_invoice")
    assert "re-pull" in outcome.reason


def test_event_day_reads_the_same_day_as_the_landing():
    event = salla("order.updated", order(created="2024-11-02 01:30:00"))
    assert event_day(event) == parse_event(event).landing.day == date(2024, 11, 1)
    assert event_day(salla("app.installed", {"id": 1})) is None
    assert event_day(StoredEvent(1, "github", "github", "push", None, {})) is None


def _landing(source_id: str, updated: datetime | None) -> Landing:
    return Landing("salla", "orders", "1", source_id, datetime(2024, 11, 1, tzinfo=timezone.utc), updated, {})


def test_newest_last_puts_the_newest_version_of_a_record_last_whatever_the_arrival_order():
    new = datetime(2024, 11, 2, tzinfo=timezone.utc)
    old = datetime(2024, 11, 1, tzinfo=timezone.utc)
    ordered = newest_last([(1, _landing("a", new)), (2, _landing("a", old)), (3, _landing("a", None))])
    assert [event_id for event_id, _ in ordered] == [3, 2, 1]


# --- planning runs ---------------------------------------------------------------------------


def d(day: int, month: int = 11) -> date:
    return date(2024, month, day)


def test_events_group_into_contiguous_day_ranges_with_orphans_on_the_latest():
    events = [PendingEvent(11, d(2)), PendingEvent(12, d(3)), PendingEvent(13, d(20)), PendingEvent(14, None),
              PendingEvent(15, d(1)), PendingEvent(16, date(2023, 1, 1)), PendingEvent(17, date(2024, 12, 5))]
    runs, cursor = plan_event_runs(events, cursor=10, first_day=FIRST, last_day=LAST)
    assert cursor == 17
    assert [(r.start, r.end, r.ids, r.orphans, r.raw_only) for r in runs] == [
        (d(1), d(3), [11, 12, 15], False, False),
        # no day, before the first partition, and a day without a partition yet
        (d(20), d(20), [13, 14, 16, 17], True, False),
    ]
    assert [r.run_key for r in runs] == ["webhooks:11-15", "webhooks:13-17"]


def test_every_event_is_claimed_by_exactly_one_run_of_its_batch():
    days = [d(1), d(2), None, d(9), d(3), date(2025, 3, 1), d(10), d(1), None]
    events = [PendingEvent(i + 1, day) for i, day in enumerate(days)]
    runs, _ = plan_event_runs(events, cursor=0, first_day=FIRST, last_day=LAST)
    for event in events:
        claiming = [r for r in runs if r.first_id <= event.id <= r.last_id and run_claims(
            event.day, start=r.start, end=r.end, orphans=r.orphans, first_day=FIRST, last_day=LAST)]
        assert len(claiming) == 1, event


def test_only_orphans_get_a_raw_only_run_on_the_last_partition():
    runs, cursor = plan_event_runs([PendingEvent(3, None), PendingEvent(4, date(2025, 1, 1))], cursor=2,
                                   first_day=FIRST, last_day=LAST)
    assert [(r.start, r.end, r.raw_only, r.orphans, r.ids) for r in runs] == [(LAST, LAST, True, True, [3, 4])]
    assert cursor == 4


def test_the_number_of_runs_is_bounded_and_the_cursor_stops_before_the_first_event_left_out():
    events = [PendingEvent(1, d(1)), PendingEvent(2, d(5)), PendingEvent(3, d(1)), PendingEvent(4, d(9)),
              PendingEvent(5, d(5)), PendingEvent(6, d(2))]
    runs, cursor = plan_event_runs(events, cursor=0, first_day=FIRST, last_day=LAST, max_runs=2)
    assert cursor == 3  # event 4 would need a third run
    assert [r.ids for r in runs] == [[1, 3], [2]]
    runs, cursor = plan_event_runs(events, cursor=cursor, first_day=FIRST, last_day=LAST, max_runs=2)
    # event 6 (day 2) joins no range of day 5 or 9: it would be a third run, so it waits
    assert cursor == 5 and [r.ids for r in runs] == [[5], [4]]


def test_events_at_or_behind_the_cursor_are_not_planned_again():
    runs, cursor = plan_event_runs([PendingEvent(5, d(1))], cursor=5, first_day=FIRST, last_day=LAST)
    assert (runs, cursor) == ([], 5)


def test_run_keys_are_stable_for_the_same_events():
    events = [PendingEvent(i, d(1 + i % 3)) for i in range(1, 30)]
    first, _ = plan_event_runs(events, cursor=0, first_day=FIRST, last_day=LAST)
    again, _ = plan_event_runs(list(reversed(events)), cursor=0, first_day=FIRST, last_day=LAST)
    assert [r.run_key for r in first] == [r.run_key for r in again] == ["webhooks:1-29"]


def test_a_printavo_event_naming_its_record_asks_for_a_re_pull():
    outcome = parse_event(StoredEvent(1, "printavo", "hmac", "invoice.updated", None, {"data": {"id": "inv-9"}}))
    assert (outcome.action, outcome.entity, outcome.source_id, outcome.landing) == ("fetch", "invoices", "inv-9", None)
    quote = parse_event(StoredEvent(2, "printavo", "hmac", None, None, {"type": "quote.updated", "id": "q-1"}))
    assert (quote.action, quote.entity, quote.source_id) == ("fetch", "quotes", "q-1")
    # no day of its own: the sensor plans it with the orphans (a raw run lands it under its own day)
    assert event_day(StoredEvent(1, "printavo", "hmac", "invoice.updated", None, {"data": {"id": "inv-9"}})) is None


def test_a_re_pulled_record_lands_like_a_pulled_one_or_fails_with_the_reason():
    from kingtavo_pipeline.connectors.base import SourceRecord
    from kingtavo_pipeline.transform.webhook_events import fetched_landing

    node = invoice()
    record = SourceRecord("invoices", "inv-9", node, datetime(2024, 11, 2, 8, tzinfo=timezone.utc),
                          datetime(2024, 11, 4, 10, tzinfo=timezone.utc))
    landed = fetched_landing("invoices", record)
    assert (landed.action, landed.landing.source_type, landed.landing.source_id, landed.landing.day) == (
        "land", "printavo", "inv-9", date(2024, 11, 2))
    assert landed.landing.payload == node
    assert (fetched_landing("invoices", None).action, fetched_landing("invoices", None).error_type) == ("fail", "not_found")
    old = fetched_landing("invoices", record, first_day=date(2025, 1, 1))
    assert (old.action, old.error_type) == ("fail", "before_first_partition")
