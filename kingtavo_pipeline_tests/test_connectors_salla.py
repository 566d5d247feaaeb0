"""The Salla connector over real HTTP against the sandbox, tokens in the real PostgreSQL store."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from kingtavo_pipeline.connectors.salla import SallaConnector, local_date_range, parse_salla_datetime
from kingtavo_pipeline.extract.http import HttpPolicy
from kingtavo_pipeline.extract.ratelimit import reset_limiters
from kingtavo_pipeline.sandbox import Faults, Sandbox, SandboxConfig
from kingtavo_pipeline.storage.credentials import PostgresTokenStore, save_credentials

FAST = HttpPolicy(max_attempts=4, backoff_initial=0.05, backoff_max=0.2)
UTC = timezone.utc


@pytest.fixture(autouse=True)
def _fresh_limiters():
    reset_limiters()
    yield
    reset_limiters()


@pytest.fixture(scope="module")
def sandbox():
    """One read-only sandbox for the module (tests that change it build their own)."""
    sb = Sandbox(SandboxConfig(days=40, salla_requests_per_minute=10_000))
    with sb.running() as base:
        yield sb, base


def _connector(store, sb: Sandbox, base: str, merchant: str, **kw) -> SallaConnector:
    c = sb.credentials
    m = c.salla_merchant(merchant)
    save_credentials(store, "salla", "salla", merchant, m.access_token, m.refresh_token, 14 * 86400)
    return SallaConnector(
        merchant,
        base_url=f"{base}/salla/admin/v2",
        token_url=f"{base}/salla/oauth2/token",
        client_id=c.salla_client_id,
        client_secret=c.salla_client_secret,
        tokens=PostgresTokenStore(store),
        policy=kw.pop("policy", FAST),
        **kw,
    )


def _window(sb: Sandbox, days_back: int, days: int) -> tuple[datetime, datetime]:
    """A UTC window of whole days ending ``days_back`` days before the sandbox's today."""
    end_day = sb.config.today - timedelta(days=days_back)
    end = datetime.combine(end_day, datetime.min.time(), UTC)
    return end - timedelta(days=days), end


def _truth_orders(sb: Sandbox, merchant: str, start: datetime, end: datetime) -> list[dict]:
    """Ground truth by local (Riyadh) date, cut to the exact UTC window by creation time."""
    first, last = local_date_range(start, end, "Asia/Riyadh")
    return [o for o in sb.truth.salla_orders(merchant, first, last) if start <= parse_salla_datetime(o["date"]) < end]


# --- pure parts ----------------------------------------------------------------------------------


def test_salla_dates_parse_to_utc():
    riyadh = {"date": "2026-11-28 14:03:11.000000", "timezone_type": 3, "timezone": "Asia/Riyadh"}
    assert parse_salla_datetime(riyadh) == datetime(2026, 11, 28, 11, 3, 11, tzinfo=UTC)
    assert parse_salla_datetime({"date": "2026-11-28 14:03:11.000000", "timezone": "UTC"}) == datetime(
        2026, 11, 28, 14, 3, 11, tzinfo=UTC
    )
    assert parse_salla_datetime("2026-11-28 03:00:00") == datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
    assert parse_salla_datetime("2026-11-28T10:00:00Z") == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert parse_salla_datetime(None) is None and parse_salla_datetime({"date": None}) is None
    assert parse_salla_datetime("not a date") is None


def test_a_utc_day_spans_two_riyadh_dates():
    start = datetime(2026, 11, 27, tzinfo=UTC)
    assert local_date_range(start, start + timedelta(days=1), "Asia/Riyadh") == (date(2026, 11, 27), date(2026, 11, 28))
    # a window ending at 21:00 UTC ends at local midnight: the next date is not queried
    assert local_date_range(start, start.replace(hour=21), "Asia/Riyadh") == (date(2026, 11, 27), date(2026, 11, 27))


def test_page_size_is_bounded_by_the_api_maximum(store, sandbox):
    sb, base = sandbox
    with pytest.raises(ValueError, match="between 1 and 60"):
        _connector(store, sb, base, sb.merchant_ids[0], page_size=61)


# --- against the sandbox -------------------------------------------------------------------------


def test_orders_of_a_three_day_window_equal_the_ground_truth(store, sandbox):
    sb, base = sandbox
    merchant = sb.merchant_ids[0]
    start, end = _window(sb, days_back=2, days=3)
    with _connector(store, sb, base, merchant, page_size=7) as conn:
        pages = list(conn.pull("orders", start=start, end=end))
    records = [r for p in pages for r in p.records]
    truth = _truth_orders(sb, merchant, start, end)
    assert len(truth) > 14  # several pages of 7
    assert [r.payload for r in sorted(records, key=lambda r: int(r.source_id))] == truth  # details incl. items
    assert all(r.payload["items"] for r in records)
    for r in records:
        assert r.merchant_id == merchant and r.entity == "orders"
        assert start <= r.occurred_at < end and r.occurred_at.tzinfo is not None
        assert r.updated_at == parse_salla_datetime(r.payload["updated_at"]) >= r.occurred_at
    assert any(r.updated_at > r.occurred_at for r in records)


def test_products_and_customers_page_to_the_end(store, sandbox):
    sb, base = sandbox
    merchant = sb.merchant_ids[1]
    with _connector(store, sb, base, merchant) as conn:
        product_pages = list(conn.pull_all("products"))
        customer_pages = list(conn.pull_all("customers"))
    products = [r.payload for p in product_pages for r in p.records]
    customers = [r.payload for p in customer_pages for r in p.records]
    assert products == sb.truth.salla_products(merchant)
    assert customers == sb.truth.salla_customers(merchant)
    assert len(customer_pages) > 1 and customer_pages[0].reported_total == len(customers)
    assert all(r.updated_at is not None and r.source_id for p in customer_pages for r in p.records)


def test_pull_changes_walks_back_to_the_checkpoint(store, sandbox):
    sb, base = sandbox
    merchant = sb.merchant_ids[2]
    since = sb.now - timedelta(hours=8)
    with _connector(store, sb, base, merchant) as conn:
        pages = list(conn.pull_changes("orders", since=since.isoformat()))
    records = [r for p in pages for r in p.records]
    expected = {
        str(o["id"])
        for o in sb.truth.salla_orders(merchant, sb.config.today - timedelta(days=39), sb.config.today)
        if parse_salla_datetime(o["updated_at"]) >= since
    }
    assert expected and {r.source_id for r in records} == expected
    newest = max(r.updated_at for r in records)
    # only the last page moves the checkpoint; earlier ones keep the old one
    assert pages[-1].checkpoint == newest.isoformat()
    assert all(p.checkpoint == since.isoformat() for p in pages[:-1])


def test_incremental_sync_sees_an_update_after_the_clock_moves(store):
    sb = Sandbox(SandboxConfig(days=10, salla_requests_per_minute=10_000))
    merchant = sb.merchant_ids[0]
    with sb.running() as base, _connector(store, sb, base, merchant) as conn:
        first = list(conn.pull_changes("orders", since=(sb.now - timedelta(hours=2)).isoformat()))
        checkpoint = first[-1].checkpoint
        old_order = sb.truth.salla_orders(
            merchant, sb.config.today - timedelta(days=6), sb.config.today - timedelta(days=6)
        )[0]
        sb.advance(seconds=600)
        sb.update_salla_order(merchant, old_order["id"], "canceled")
        changes = [r for p in conn.pull_changes("orders", since=checkpoint) for r in p.records]
    changed = {r.source_id: r for r in changes}
    assert str(old_order["id"]) in changed
    assert changed[str(old_order["id"])].payload["status"]["slug"] == "canceled"
    assert all(r.updated_at >= datetime.fromisoformat(checkpoint) for r in changes)


def test_a_429_storm_is_waited_out(store):
    sb = Sandbox(
        SandboxConfig(days=10, salla_requests_per_minute=10_000, faults=Faults(storm_429_requests=2, retry_after="1"))
    )
    merchant = sb.merchant_ids[0]
    with sb.running() as base, _connector(store, sb, base, merchant) as conn:
        started = datetime.now(UTC)
        products = [r.payload for p in conn.pull_all("products") for r in p.records]
        waited = (datetime.now(UTC) - started).total_seconds()
    assert products == sb.truth.salla_products(merchant)
    statuses = [r.status for r in sb.requests("salla")]
    assert statuses[:2] == [429, 429] and set(statuses[2:]) == {200}
    assert waited >= 2.0  # Retry-After: 1 honoured twice
