"""PrintavoConnector.fetch_one: one invoice, quote or customer by id over real HTTP against the
sandbox's GraphQL API (``invoice(id:)``, ``quote(id:)``, ``customer(id:)``), the same record a
window pull lands, so a webhook-triggered re-pull lands identical content."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from kingtavo_pipeline.connectors.printavo import PrintavoConnector
from kingtavo_pipeline.extract.http import HttpPolicy
from kingtavo_pipeline.extract.ratelimit import reset_limiters
from kingtavo_pipeline.sandbox import Sandbox, SandboxConfig

FAST = HttpPolicy(max_attempts=4, backoff_initial=0.05, backoff_max=0.2)


@pytest.fixture(scope="module")
def sandbox():
    reset_limiters()
    box = Sandbox(SandboxConfig(days=20, printavo_requests=1000, printavo_window_seconds=1.0))
    with box.running() as base_url:
        yield box, base_url
    reset_limiters()


def connector(box: Sandbox, base_url: str, **kw) -> PrintavoConnector:
    creds = box.credentials
    return PrintavoConnector(base_url=f"{base_url}/printavo/api/v2", email=creds.printavo_email,
                             token=creds.printavo_token, policy=FAST, rate_limit=(1000, 1.0), **kw)


def same(a, b) -> bool:
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)


@pytest.mark.parametrize("entity", ["invoices", "quotes"])
def test_fetch_one_returns_the_record_a_window_pull_lands(sandbox, entity):
    box, base_url = sandbox
    end = box.now.replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=5)
    with connector(box, base_url) as conn:
        pulled = [r for page in conn.pull(entity, start=start, end=end) for r in page.records]
        assert len(pulled) >= 3
        for record in pulled[:3]:
            one = conn.fetch_one(entity, record.source_id)
            assert one is not None
            assert (one.entity, one.source_id, one.occurred_at, one.updated_at) == (
                record.entity, record.source_id, record.occurred_at, record.updated_at)
            assert same(one.payload, record.payload)


def test_fetch_one_pages_nested_line_item_groups_and_sees_updates(sandbox):
    box, base_url = sandbox
    truth = box.truth.printavo_invoices()
    invoice = max(truth, key=lambda t: len(t["lineItemGroups"]["nodes"]))
    groups = len(invoice["lineItemGroups"]["nodes"])
    assert groups > 1
    with connector(box, base_url, groups_page_size=1) as conn:
        before = len(box.requests("printavo"))
        one = conn.fetch_one("invoices", invoice["id"])
        # one request for the invoice, one more per group beyond the first
        assert len(box.requests("printavo")) - before >= groups
        assert [g["id"] for g in one.payload["lineItemGroups"]["nodes"]] == [
            g["id"] for g in invoice["lineItemGroups"]["nodes"]]
        assert "pageInfo" not in one.payload["lineItemGroups"]
        box.advance(seconds=60)
        box.update_printavo_order(invoice["id"], paid=1.0)
        again = conn.fetch_one("invoices", invoice["id"])
    assert again.updated_at > one.updated_at
    assert again.payload["paidInFull"] is True


def test_fetch_one_of_a_customer_and_of_unknown_ids(sandbox):
    box, base_url = sandbox
    customer = box.truth.printavo_customers()[0]
    quote_id = box.truth.printavo_quotes()[0]["id"]
    with connector(box, base_url) as conn:
        one = conn.fetch_one("customers", customer["id"])
        assert one.source_id == str(customer["id"])
        assert one.payload["companyName"] == customer["companyName"]
        assert conn.fetch_one("invoices", "999999999") is None
        # a quote's id is not an invoice
        assert conn.fetch_one("invoices", quote_id) is None
        with pytest.raises(ValueError, match="statuses"):
            conn.fetch_one("statuses", "1")
