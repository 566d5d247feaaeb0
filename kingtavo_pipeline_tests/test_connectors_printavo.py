"""The Printavo connector over real HTTP against the sandbox's GraphQL API.

The sandbox enforces Printavo's 10 requests per 5 seconds (sliding window) and logs every request,
so the rate-limit test counts what the server saw.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kingtavo_pipeline.connectors.printavo import PrintavoConnector, _rate_limited
from kingtavo_pipeline.extract.http import AuthError, BadPayloadError, HttpPolicy
from kingtavo_pipeline.extract.ratelimit import reset_limiters
from kingtavo_pipeline.sandbox import Sandbox, SandboxConfig

UTC = timezone.utc
FAST = HttpPolicy(max_attempts=4, backoff_initial=0.05, backoff_max=0.2)


@pytest.fixture(autouse=True)
def _fresh_limiters():
    reset_limiters()
    yield
    reset_limiters()


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(SandboxConfig(days=40))
    with sb.running() as base:
        yield sb, base


def _connector(sb: Sandbox, base: str, **kw: Any) -> PrintavoConnector:
    c = sb.credentials
    return PrintavoConnector(
        base_url=f"{base}/printavo/api/v2",
        email=c.printavo_email,
        token=kw.pop("token", c.printavo_token),
        policy=kw.pop("policy", FAST),
        clock=lambda: sb.now,
        **kw,
    )


def assert_subset(payload: Any, truth: Any, path: str = "$") -> None:
    """Every field the connector returned equals the ground truth's (which has more fields)."""
    if isinstance(payload, dict):
        assert isinstance(truth, dict), path
        for key, value in payload.items():
            if key not in truth:
                assert value is None, f"{path}.{key}: {value!r} not in the ground truth"
            else:
                assert_subset(value, truth[key], f"{path}.{key}")
    elif isinstance(payload, list):
        assert isinstance(truth, list) and len(payload) == len(truth), path
        for i, (a, b) in enumerate(zip(payload, truth)):
            assert_subset(a, b, f"{path}[{i}]")
    else:
        assert payload == truth, f"{path}: {payload!r} != {truth!r}"


def _window(sb: Sandbox, days_back: int, days: int) -> tuple[datetime, datetime]:
    end = datetime.combine(sb.config.today - timedelta(days=days_back), datetime.min.time(), UTC)
    return end - timedelta(days=days), end


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_rate_limit_policy_never_exceeds_the_quota():
    policy = _rate_limited(HttpPolicy(), 10, 5.0)
    # a token bucket admits at most burst + rate * window requests in any window
    assert policy.burst + policy.requests_per_second * 5.0 <= 10
    own = HttpPolicy(requests_per_second=1.0, burst=2)
    assert _rate_limited(own, 10, 5.0) is own


def test_rate_limit_is_respected_server_side(sandbox):
    sb, base = sandbox
    before = len(sb.requests("printavo"))
    with _connector(sb, base, page_size=1) as conn:
        statuses = [r.payload for p in conn.pull_all("statuses") for r in p.records]
    assert_subset(statuses, sb.truth.printavo_statuses())
    seen = sb.requests("printavo")[before:]
    assert len(seen) > 10  # more than one window's quota
    assert all(r.status == 200 for r in seen)  # never needed a 429
    assert _max_in_window([r.at for r in seen], 5.0) <= 10


def test_invoices_of_a_window_equal_the_ground_truth(sandbox):
    sb, base = sandbox
    start, end = _window(sb, days_back=3, days=4)
    with _connector(sb, base) as conn:
        pages = list(conn.pull("invoices", start=start, end=end))
    records = sorted((r for p in pages for r in p.records), key=lambda r: int(r.source_id))
    truth = sb.truth.printavo_invoices(start.date(), (end - timedelta(days=1)).date())
    assert len(truth) > 5
    assert [r.source_id for r in records] == [t["id"] for t in truth]
    for record, expected in zip(records, truth):
        assert_subset(record.payload, expected)
        assert record.occurred_at == datetime.fromisoformat(expected["timestamps"]["createdAt"].replace("Z", "+00:00"))
        assert record.updated_at == datetime.fromisoformat(expected["timestamps"]["updatedAt"].replace("Z", "+00:00"))
        assert record.payload["contact"]["customer"]["id"] == expected["contact"]["customer"]["id"]
        assert "pageInfo" not in record.payload["lineItemGroups"]  # cursors are not content
    assert sum(len(g["lineItems"]["nodes"]) for r in records for g in r.payload["lineItemGroups"]["nodes"]) > len(
        records
    )


def test_quotes_with_nested_groups_paged_to_the_end(sandbox):
    sb, base = sandbox
    start, end = _window(sb, days_back=1, days=6)
    before = len(sb.requests("printavo"))
    with _connector(sb, base, groups_page_size=1) as conn:
        records = [r for p in conn.pull("quotes", start=start, end=end) for r in p.records]
    truth = sb.truth.printavo_quotes(start.date(), (end - timedelta(days=1)).date())
    by_id = {r.source_id: r.payload for r in records}
    assert sorted(by_id) == sorted(t["id"] for t in truth)
    multi = [t for t in truth if len(t["lineItemGroups"]["nodes"]) > 1]
    assert multi  # some quotes needed their groups paged
    for expected in truth:
        assert_subset(by_id[expected["id"]], expected)
    # one extra request per group beyond the first, through quote(id)
    extra = sum(len(t["lineItemGroups"]["nodes"]) - 1 for t in truth)
    assert len(sb.requests("printavo")) - before >= extra


def test_customers_with_contacts_equal_the_ground_truth(sandbox):
    sb, base = sandbox
    with _connector(sb, base, page_size=100) as conn:
        pages = list(conn.pull_all("customers"))
    customers = [r.payload for p in pages for r in p.records]
    truth = sb.truth.printavo_customers()
    assert len(pages) > 1 and pages[0].reported_total == len(truth)
    assert len(customers) == len(truth)
    for payload, expected in zip(customers, truth):
        assert_subset(payload, expected)
    assert any(len(c["contacts"]["nodes"]) > 1 for c in customers)


def test_incremental_rescan_finds_an_invoice_updated_later():
    sb = Sandbox(SandboxConfig(days=60))
    with sb.running() as base, _connector(sb, base, page_size=100) as conn:
        baseline = list(conn.pull_changes("invoices", since=None))
        checkpoint = baseline[-1].checkpoint
        assert checkpoint and sum(len(p.records) for p in baseline) > 0
        # an invoice due within the re-scan window gets paid in full a little later
        invoice = next(
            t
            for t in sb.truth.printavo_invoices(
                sb.config.today - timedelta(days=12), sb.config.today - timedelta(days=10)
            )
            if not t["paidInFull"]
        )
        sb.advance(days=1)
        sb.update_printavo_order(invoice["id"], paid=1.0)
        changes = [r for p in conn.pull_changes("invoices", since=checkpoint) for r in p.records]
    changed = {r.source_id: r for r in changes}
    assert invoice["id"] in changed
    assert changed[invoice["id"]].payload["paidInFull"] is True
    since = datetime.fromisoformat(checkpoint.replace("Z", "+00:00"))
    assert all(r.updated_at >= since for r in changes)
    # the re-scan is bounded: nothing older than the window's production dates
    floor = sb.now - timedelta(days=30)
    assert all(datetime.fromisoformat(r.payload["dueAt"].replace("Z", "+00:00")) > floor for r in changes)


def test_wrong_token_and_bad_query_fail_fast(sandbox):
    sb, base = sandbox
    with _connector(sb, base, token="wrong") as conn, pytest.raises(AuthError):
        list(conn.pull_all("statuses"))
    with _connector(sb, base) as conn, pytest.raises(BadPayloadError, match="GraphQL errors"):
        conn.execute("query Broken { invoices { nodes { noSuchField } } }", {}, "Broken")
