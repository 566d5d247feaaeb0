"""The sandbox over real HTTP: Salla Admin API v2 + OAuth2, Printavo GraphQL, faults, ground truth."""

from __future__ import annotations

import hashlib
import hmac
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal

import httpx
import orjson
import pytest

from kingtavo_pipeline.sandbox import Faults, Sandbox, SandboxConfig
from kingtavo_pipeline.sandbox.data import DOW_SA

TODAY = date(2026, 11, 30)
SMALL = dict(days=30, salla_merchants=2, orders_per_day=12.0, printavo_invoices_per_day=4.0)

# one pooled client: a fresh connection per request costs ~20 ms
HTTP = httpx.Client(timeout=10)

INVOICE_FIELDS = """
  id visualId createdAt total subtotal salesTax salesTaxAmount discountAmount totalQuantity
  status { id name type } timestamps { createdAt updatedAt }
  contact { id fullName email customer { id companyName } }
  lineItemGroups { nodes { id position lineItems { nodes { id items price description itemNumber sizes { size count } } } } }
"""


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    """A read-only sandbox shared by tests that change no state (no faults, no clock moves)."""
    sb = Sandbox(SandboxConfig(**SMALL, salla_requests_per_minute=100_000, printavo_requests=100_000))
    with sb.running():
        yield sb


def started(**config) -> Sandbox:
    return Sandbox(SandboxConfig(**{**SMALL, **config}))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def salla(sb: Sandbox, path: str, merchant: int = 0, **params) -> httpx.Response:
    token = sb.credentials.salla_merchants[merchant].access_token
    return HTTP.get(f"{sb.base_url}/salla/admin/v2{path}", headers=bearer(token), params=params, timeout=10)


def walk_salla(sb: Sandbox, path: str, merchant: int = 0, **params) -> list[dict]:
    """Every row of a Salla list, following pagination.links.next to the end."""
    token = sb.credentials.salla_merchants[merchant].access_token
    url, rows, pages = f"{sb.base_url}/salla/admin/v2{path}", [], 0
    response = HTTP.get(url, headers=bearer(token), params=params, timeout=10)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        rows += body["data"]
        pages += 1
        assert body["pagination"]["currentPage"] == pages
        nxt = body["pagination"]["links"].get("next")
        if not nxt:
            assert pages == body["pagination"]["totalPages"]
            assert len(rows) == body["pagination"]["total"]
            return rows
        response = HTTP.get(nxt, headers=bearer(token), timeout=10)


def gql(sb: Sandbox, query: str, variables: dict | None = None, **headers) -> httpx.Response:
    creds = {"email": sb.credentials.printavo_email, "token": sb.credentials.printavo_token, **headers}
    payload = {"query": query, "variables": variables or {}}
    return HTTP.post(f"{sb.base_url}/printavo/api/v2", headers=creds, json=payload)


def walk_invoices(sb: Sandbox, fields: str = INVOICE_FIELDS, first: int = 100, root: str = "invoices") -> list[dict]:
    query = f"""query Page($after: String, $first: Int) {{
      {root}(first: $first, after: $after) {{ totalNodes pageInfo {{ hasNextPage endCursor }} nodes {{ {fields} }} }} }}"""
    nodes, after = [], None
    while True:
        response = gql(sb, query, {"after": after, "first": first})
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body
        page = body["data"][root]
        nodes += page["nodes"]
        if not page["pageInfo"]["hasNextPage"]:
            assert len(nodes) == page["totalNodes"]
            return nodes
        after = page["pageInfo"]["endCursor"]


def cents(money: dict) -> int:
    return int(Decimal(str(money["amount"])) * 100)


# ---------------------------------------------------------------- data


def test_data_is_deterministic_fast_and_realistic():
    started_at = time.monotonic()
    sb = Sandbox(SandboxConfig())  # 24 months x 3 merchants
    counts = [sb.truth.salla_order_count(m) for m in sb.merchant_ids]
    invoices = sb.world.printavo_orders("Invoice")
    elapsed = time.monotonic() - started_at
    assert elapsed < 2.0, f"generating 24 months took {elapsed:.2f} s"
    assert all(700 * 12 * 0.8 < n < 730 * 12 * 1.4 for n in counts), counts
    assert 730 * 4 * 0.7 < len(invoices) < 730 * 4 * 1.4

    again = Sandbox(SandboxConfig())
    window = (TODAY - timedelta(days=2), TODAY)
    mid = sb.merchant_ids[0]
    assert again.merchant_ids == sb.merchant_ids
    assert again.truth.salla_orders(mid, *window) == sb.truth.salla_orders(mid, *window)
    assert again.truth.salla_customers(mid) == sb.truth.salla_customers(mid)
    assert again.truth.printavo_invoices(*window) == sb.truth.printavo_invoices(*window)
    assert again.credentials == sb.credentials
    other = Sandbox(SandboxConfig(seed=8))
    assert other.merchant_ids != sb.merchant_ids
    assert other.truth.printavo_invoices(*window) != sb.truth.printavo_invoices(*window)

    # Saudi week: Thursdays busier than Fridays
    m = sb.world.merchants[0]
    by_dow = [0] * 7
    for day in (TODAY - timedelta(days=n) for n in range(364)):
        by_dow[day.weekday()] += len(m.orders_on(day))
    assert by_dow[3] > by_dow[4] * 1.3, by_dow
    assert DOW_SA[3] > DOW_SA[4]


def test_salla_totals_are_consistent_and_orders_change_after_creation(sandbox):
    orders = sandbox.truth.salla_orders(sandbox.merchant_ids[0], TODAY - timedelta(days=29), TODAY)
    assert len(orders) > 200
    later = 0
    for o in orders:
        a = o["amounts"]
        lines = o["items"]
        assert 1 <= len(lines) <= 5
        assert cents(a["sub_total"]) == sum(cents(li["amounts"]["price_without_tax"]) * li["quantity"] for li in lines)
        discount = sum(cents(d["discount"]) for d in a["discounts"])
        assert discount == sum(cents(li["amounts"]["total_discount"]) for li in lines)
        assert cents(a["total"]) == cents(a["sub_total"]) - discount + cents(a["shipping_cost"]) + cents(a["tax"]["amount"])
        shipping_tax = round(cents(a["shipping_cost"]) * 0.15)
        line_totals = sum(cents(li["amounts"]["total"]) for li in lines)
        assert cents(a["total"]) == line_totals + cents(a["shipping_cost"]) + shipping_tax
        assert o["updated_at"]["date"] >= o["date"]["date"]
        assert o["date"]["timezone"] == "Asia/Riyadh" and o["date"]["timezone_type"] == 3
        later += o["updated_at"]["date"] > o["date"]["date"]
    assert later > len(orders) * 0.6


# ---------------------------------------------------------------- Salla Admin API


def test_salla_orders_pagination_covers_truth_and_detail_matches(sandbox):
    mid = sandbox.merchant_ids[1]
    start, end = TODAY - timedelta(days=2), TODAY - timedelta(days=1)
    truth = {o["id"]: o for o in sandbox.truth.salla_orders(mid, start, end)}
    rows = walk_salla(sandbox, "/orders", merchant=1, from_date=start.isoformat(), to_date=end.isoformat(), per_page=7)
    assert len(rows) == len(truth) > 14
    assert sorted(r["id"] for r in rows) == sorted(truth)
    assert [r["id"] for r in rows] == sorted(truth, reverse=True)  # default: newest first
    for row in rows:
        assert "updated_at" not in row  # list rows are summaries
        assert start.isoformat() <= row["date"]["date"][:10] <= end.isoformat()
        detail = salla(sandbox, f"/orders/{row['id']}", merchant=1).json()["data"]
        items = salla(sandbox, "/orders/items", merchant=1, order_id=row["id"]).json()["data"]
        assert detail["updated_at"]["date"] >= detail["date"]["date"]
        assert {**detail, "items": items} == truth[row["id"]]
        assert row["total"] == detail["amounts"]["total"] and row["status"] == detail["status"]


def test_salla_envelope_headers_sorting_and_errors(sandbox):
    response = salla(sandbox, "/orders", per_page=500)
    body = response.json()
    assert response.status_code == 200 and body["status"] == 200 and body["success"] is True
    assert body["pagination"]["perPage"] == 60 and body["pagination"]["count"] == 60  # clamped to the documented max
    assert response.headers["X-RateLimit-Limit"] == "100000"
    remaining = int(response.headers["X-RateLimit-Remaining"])
    assert 0 <= int(response.headers["X-RateLimit-Reset"]) - time.time() <= 61
    second = salla(sandbox, "/products")
    assert int(second.headers["X-RateLimit-Remaining"]) == remaining - 1
    assert second.json()["pagination"]["perPage"] == 15  # the default

    detail = lambda oid: salla(sandbox, f"/orders/{oid}").json()["data"]  # noqa: E731
    by_updated = salla(sandbox, "/orders", sort_by="updated_at-desc", per_page=5).json()["data"]
    stamps = [detail(r["id"])["updated_at"]["date"] for r in by_updated]
    assert stamps == sorted(stamps, reverse=True)
    by_total = salla(sandbox, "/orders", sort_by="total-asc", per_page=20).json()["data"]
    assert [cents(r["total"]) for r in by_total] == sorted(cents(r["total"]) for r in by_total)
    completed = salla(sandbox, "/orders", status="completed", per_page=10).json()["data"]
    assert completed and all(r["status"]["slug"] == "completed" for r in completed)

    bad_sort = salla(sandbox, "/orders", sort_by="color-desc")
    assert bad_sort.status_code == 422 and "sort_by" in bad_sort.json()["error"]["fields"]
    bad_date = salla(sandbox, "/orders", from_date="30/11/2026")
    assert bad_date.status_code == 422 and bad_date.json()["success"] is False
    missing = salla(sandbox, "/orders/12345")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NotFound"
    # another merchant's order is not visible
    other_id = sandbox.truth.salla_orders(sandbox.merchant_ids[1], TODAY, TODAY)[0]["id"]
    assert salla(sandbox, f"/orders/{other_id}").status_code == 404


def test_salla_products_and_customers_cover_truth(sandbox):
    mid = sandbox.merchant_ids[0]
    products = walk_salla(sandbox, "/products", per_page=60)
    assert products == sandbox.truth.salla_products(mid)
    assert {p["status"] for p in products} <= {"sale", "out", "hidden", "deleted"}
    customers = walk_salla(sandbox, "/customers", per_page=60)
    assert customers == sandbox.truth.salla_customers(mid)
    assert all("updated_at" in c and c["id"] for c in customers)


def test_salla_rejects_bad_tokens_with_the_error_envelope(sandbox):
    url = f"{sandbox.base_url}/salla/admin/v2/orders"
    for headers in ({}, bearer("not-a-token"), {"Authorization": sandbox.credentials.salla_merchants[0].access_token}):
        response = HTTP.get(url, headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert body["status"] == 401 and body["success"] is False and body["error"]["code"] == "Unauthorized"


def test_salla_rate_limit_per_store_answers_429_with_retry_after():
    sb = started(salla_requests_per_minute=3)
    with sb.running():
        statuses = [salla(sb, "/orders", per_page=1) for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]
        limited = statuses[-1]
        assert 1 <= int(limited.headers["Retry-After"]) <= 60
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert limited.json()["error"]["code"] == "too_many_requests"
        assert salla(sb, "/orders", merchant=1, per_page=1).status_code == 200  # per store


# ---------------------------------------------------------------- Salla OAuth2


def refresh(sb: Sandbox, refresh_token: str, as_json: bool = False) -> httpx.Response:
    c = sb.credentials
    data = {
        "grant_type": "refresh_token",
        "client_id": c.salla_client_id,
        "client_secret": c.salla_client_secret,
        "refresh_token": refresh_token,
    }
    url = f"{sb.base_url}/salla/oauth2/token"
    return HTTP.post(url, json=data) if as_json else HTTP.post(url, data=data)


def test_refresh_token_is_single_use_and_reuse_revokes_the_grant():
    sb = started()
    with sb.running():
        first = sb.credentials.salla_merchants[0]
        response = refresh(sb, first.refresh_token)
        assert response.status_code == 200
        pair = response.json()
        assert pair["token_type"] == "bearer" and pair["expires_in"] == sb.config.access_token_ttl_seconds
        assert pair["access_token"] != first.access_token and pair["refresh_token"] != first.refresh_token
        assert salla(sb, "/orders", per_page=1).status_code == 200  # the old access token lives until it expires
        new_headers = bearer(pair["access_token"])
        assert HTTP.get(f"{sb.base_url}/salla/admin/v2/orders", headers=new_headers).status_code == 200

        second = refresh(sb, pair["refresh_token"], as_json=True)  # JSON bodies work too
        assert second.status_code == 200
        latest = second.json()

        reused = refresh(sb, first.refresh_token)
        assert reused.status_code == 401 and reused.json()["error"] == "invalid_grant"
        # the grant is revoked: every token of the merchant is dead, later refreshes fail
        for token in (latest["access_token"], pair["access_token"], first.access_token):
            assert HTTP.get(f"{sb.base_url}/salla/admin/v2/orders", headers=bearer(token)).status_code == 401
        assert refresh(sb, latest["refresh_token"]).json()["error"] == "invalid_grant"
        # other merchants are untouched
        assert salla(sb, "/orders", merchant=1, per_page=1).status_code == 200

        c = sb.credentials
        wrong = HTTP.post(
            f"{sb.base_url}/salla/oauth2/token",
            data={"grant_type": "refresh_token", "client_id": c.salla_client_id, "client_secret": "nope",
                  "refresh_token": c.salla_merchants[1].refresh_token},
        )
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


def test_two_concurrent_refreshes_with_one_token_exactly_one_succeeds():
    sb = started()
    with sb.running():
        token = sb.credentials.salla_merchants[0].refresh_token
        barrier = threading.Barrier(4)
        results: list[int] = []

        def attempt() -> None:
            barrier.wait()
            results.append(refresh(sb, token).status_code)

        threads = [threading.Thread(target=attempt) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [200, 401, 401, 401]
        assert sb.salla_refresh_count(sb.merchant_ids[0]) == 1


def test_expired_access_token_is_refused_and_a_refresh_recovers():
    sb = started(access_token_ttl_seconds=1)
    with sb.running():
        assert salla(sb, "/orders", per_page=1).status_code == 200
        time.sleep(1.1)
        expired = salla(sb, "/orders", per_page=1)
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
        pair = refresh(sb, sb.credentials.salla_merchants[0].refresh_token).json()
        assert HTTP.get(f"{sb.base_url}/salla/admin/v2/orders", headers=bearer(pair["access_token"])).status_code == 200

    sb = started()  # 14 days by default: advancing the sandbox clock past it expires the token
    with sb.running():
        sb.advance(days=14, seconds=1)
        assert salla(sb, "/orders", per_page=1).status_code == 401


# ---------------------------------------------------------------- Printavo GraphQL


def test_printavo_invoices_cursor_pagination_covers_truth(sandbox):
    truth = {i["id"]: i for i in sandbox.truth.printavo_invoices()}
    nodes = walk_invoices(sandbox, first=40)
    assert len(nodes) == len(truth) > 80
    assert [n["id"] for n in nodes] == sorted(truth, key=lambda i: int(truth[i]["visualId"]))
    for n in nodes:
        keys = ("visualId", "createdAt", "total", "subtotal", "salesTaxAmount", "timestamps", "totalQuantity")
        expected = {k: truth[n["id"]][k] for k in keys}
        assert {k: n[k] for k in expected} == expected
        assert len(n["createdAt"]) == 10  # a date only
        assert n["contact"]["customer"]["id"] == truth[n["id"]]["contact"]["customer"]["id"]
        groups = n["lineItemGroups"]["nodes"]
        truth_items = [li["id"] for g in truth[n["id"]]["lineItemGroups"]["nodes"] for li in g["lineItems"]["nodes"]]
        assert [li["id"] for g in groups for li in g["lineItems"]["nodes"]] == truth_items
        assert n["totalQuantity"] == sum(li["items"] for g in groups for li in g["lineItems"]["nodes"])
        assert all(li["items"] == sum(s["count"] for s in li["sizes"]) for g in groups for li in g["lineItems"]["nodes"])
    quotes = walk_invoices(sandbox, fields="id", root="quotes")
    assert sorted(q["id"] for q in quotes) == sorted(q["id"] for q in sandbox.truth.printavo_quotes())
    customers = walk_invoices(sandbox, fields="id companyName contacts { nodes { id email } }", root="customers")
    assert [c["id"] for c in customers] == [c["id"] for c in sandbox.truth.printavo_customers()]


def test_printavo_connection_arguments_and_filters(sandbox):
    body = gql(
        sandbox, "{ invoices { edges { cursor node { id } } pageInfo { hasNextPage hasPreviousPage endCursor } } }"
    ).json()
    page = body["data"]["invoices"]
    assert len(page["edges"]) == 25 and page["pageInfo"]["hasNextPage"] and not page["pageInfo"]["hasPreviousPage"]
    assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
    big = gql(sandbox, "{ invoices(first: 1000) { nodes { id } } }").json()["data"]["invoices"]["nodes"]
    assert len(big) == 100  # clamped to the maximum page size
    cursor = page["edges"][10]["cursor"]
    before = gql(sandbox, "query($c: String) { invoices(last: 3, before: $c) { nodes { id } } }", {"c": cursor}).json()
    assert [n["id"] for n in before["data"]["invoices"]["nodes"]] == [e["node"]["id"] for e in page["edges"][7:10]]

    truth = sandbox.truth.printavo_invoices()
    after = "2026-11-20T00:00:00Z"
    query = "query($a: ISO8601DateTime) { invoices(inProductionAfter: $a, first: 100) { totalNodes nodes { dueAt } } }"
    filtered = gql(sandbox, query, {"a": after}).json()
    data = filtered["data"]["invoices"]
    assert data["totalNodes"] == sum(1 for i in truth if i["dueAt"] > after) > 0
    assert all(n["dueAt"] > after for n in data["nodes"])

    completed = next(s for s in sandbox.truth.printavo_statuses() if s["name"] == "Completed")
    query = "query($s: [ID!]) { invoices(statusIds: $s, first: 100) { totalNodes nodes { status { id } } } }"
    by_status = gql(sandbox, query, {"s": [completed["id"]]}).json()
    assert by_status["data"]["invoices"]["totalNodes"] == sum(1 for i in truth if i["status"]["id"] == completed["id"]) > 0
    by_total = gql(sandbox, "{ invoices(sortOn: TOTAL, sortDescending: true, first: 30) { nodes { total } } }").json()
    totals = [n["total"] for n in by_total["data"]["invoices"]["nodes"]]
    assert totals == sorted(totals, reverse=True) and totals[0] == max(i["total"] for i in truth)

    union = gql(sandbox, "{ orders(first: 100) { nodes { __typename ... on Invoice { id } ... on Quote { id } } } }").json()
    kinds = {n["__typename"] for n in union["data"]["orders"]["nodes"]}
    assert kinds == {"Invoice", "Quote"}
    one = truth[5]
    query = "query($id: ID!) { invoice(id: $id) { total lineItemGroups { nodes { id lineItems { nodes { lineItemGroup { id } } } } } } }"
    single = gql(sandbox, query, {"id": one["id"]}).json()["data"]["invoice"]
    assert single["total"] == one["total"]
    for group in single["lineItemGroups"]["nodes"]:  # back-references resolve
        assert all(li["lineItemGroup"]["id"] == group["id"] for li in group["lineItems"]["nodes"])


def test_printavo_bad_queries_answer_graphql_errors(sandbox):
    syntax = gql(sandbox, "{ invoices { nodes { id }")
    assert syntax.status_code == 200 and "data" not in syntax.json() and syntax.json()["errors"][0]["message"]
    unknown = gql(sandbox, "{ invoices { nodes { id updatedAt } } }").json()
    assert "Cannot query field 'updatedAt'" in unknown["errors"][0]["message"]
    cursor = gql(sandbox, '{ invoices(after: "###") { nodes { id } } }').json()
    assert cursor["errors"][0]["path"] == ["invoices"] and cursor["data"] == {"invoices": None}
    creds = {"email": sandbox.credentials.printavo_email, "token": sandbox.credentials.printavo_token}
    empty = HTTP.post(f"{sandbox.base_url}/printavo/api/v2", json={}, headers=creds)
    assert empty.json()["errors"][0]["message"] == "No query string was present"


def test_printavo_rejects_wrong_credentials(sandbox):
    for headers in ({"token": "wrong"}, {"email": "someone@example.com"}):
        response = gql(sandbox, "{ invoices { nodes { id } } }", **headers)
        assert response.status_code == 401
        assert "data" not in response.json() and response.json()["errors"][0]["message"].startswith("Unauthorized")
    bare = HTTP.post(f"{sandbox.base_url}/printavo/api/v2", json={"query": "{ user { id } }"})
    assert bare.status_code == 401


def test_printavo_rate_limit_answers_429_with_retry_after():
    sb = started(printavo_requests=3, printavo_window_seconds=1.0)
    with sb.running():
        statuses = [gql(sb, "{ user { id } }").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = gql(sb, "{ user { id } }")
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
        time.sleep(1.05)
        assert gql(sb, "{ user { id } }").status_code == 200
        served = [r for r in sb.requests("printavo") if r.status == 200]
        assert len(served) == 4


# ---------------------------------------------------------------- faults


def test_fault_storm_5xx_429_slow_and_timeout_switches():
    sb = started()
    with sb.running() as base:
        response = HTTP.post(f"{base}/_sandbox/faults", json={"storm_429_requests": 3, "retry_after": "2"})
        assert response.status_code == 200 and sb.faults.storm_429_requests == 3
        storm = [salla(sb, "/orders", per_page=1) for _ in range(2)] + [gql(sb, "{ user { id } }")]
        assert [r.status_code for r in storm] == [429, 429, 429]
        assert all(r.headers["Retry-After"] == "2" for r in storm)
        assert salla(sb, "/orders", per_page=1).status_code == 200  # the storm is over

        sb.set_faults(Faults(rate_5xx=1.0))
        errors = [salla(sb, "/orders", per_page=1).status_code for _ in range(6)] + [gql(sb, "{ user { id } }").status_code]
        assert set(errors) <= {500, 502, 503} and len(errors) == 7

        sb.set_faults(Faults(rate_429=1.0, retry_after="Wed, 21 Oct 2026 07:28:00 GMT"))
        limited = gql(sb, "{ user { id } }")
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "Wed, 21 Oct 2026 07:28:00 GMT"

        sb.set_faults(Faults(slow_seconds=0.3))
        started_at = time.monotonic()
        assert salla(sb, "/products", per_page=1).status_code == 200
        assert time.monotonic() - started_at >= 0.3

        sb.set_faults(Faults(rate_timeout=1.0, timeout_seconds=0.6))
        with pytest.raises(httpx.ReadTimeout):
            token = sb.credentials.salla_merchants[0].access_token
            HTTP.get(f"{base}/salla/admin/v2/orders", headers=bearer(token), timeout=0.2)
        started_at = time.monotonic()
        assert salla(sb, "/orders", per_page=1).status_code == 504
        assert time.monotonic() - started_at >= 0.6

        sb.set_faults(Faults(rate_5xx=1.0))
        # the token endpoint is not subject to the fault switches
        assert refresh(sb, sb.credentials.salla_merchants[0].refresh_token).status_code == 200
        assert salla(sb, "/orders", per_page=1).status_code >= 500
        assert sb.requests("salla")[-1].fault == "5xx"

        sb.set_faults(Faults())
        assert salla(sb, "/orders", per_page=1).status_code == 200
        assert sb.requests("salla")[-1].fault is None


def test_fault_decisions_are_seeded_and_reproducible():
    patterns = []
    for _ in range(2):
        sb = started()
        with sb.running():
            sb.set_faults(Faults(rate_5xx=0.5))
            patterns.append([salla(sb, "/products", per_page=1).status_code >= 500 for _ in range(12)])
    assert patterns[0] == patterns[1] and any(patterns[0]) and not all(patterns[0])


def test_malformed_records_are_broken_consistently_and_named_in_truth():
    sb = started()
    with sb.running():
        sb.set_faults(Faults(malformed_rate=0.3))
        mid = sb.merchant_ids[0]
        start, end = TODAY - timedelta(days=6), TODAY
        rows = walk_salla(sb, "/orders", from_date=start.isoformat(), to_date=end.isoformat(), per_page=60)
        broken = {str(r["id"]) for r in rows if not isinstance(r["total"]["amount"], (int, float))}
        expected = set(sb.truth.malformed_ids("salla", "orders", mid, start, end))
        assert broken == expected and 0 < len(broken) < len(rows)
        one = next(iter(broken))
        assert salla(sb, f"/orders/{one}").json()["data"]["amounts"]["total"]["amount"] == "#VALUE!"

        customers = walk_salla(sb, "/customers", per_page=60)
        assert sum("id" not in c for c in customers) == len(sb.truth.malformed_ids("salla", "customers", mid)) > 0

        nodes = walk_invoices(sb, fields="id total")
        null_totals = {n["id"] for n in nodes if n["total"] is None}
        assert null_totals == set(sb.truth.malformed_ids("printavo", "invoices")) and null_totals

        params = {"merchant_id": mid, "start": start.isoformat(), "end": end.isoformat()}
        report = HTTP.get(f"{sb.base_url}/_sandbox/truth/salla/orders", params=params).json()
        assert set(report["malformed_ids"]) == expected
        # the truth keeps the real values
        assert all(isinstance(o["amounts"]["total"]["amount"], (int, float)) for o in report["data"])


def test_schema_drift_renames_and_adds_fields_in_both_apis():
    sb = started()
    with sb.running() as base:
        drift = {"rename_fields": {"total": "grand_total"}, "add_fields": {"channel": "web"}}
        assert HTTP.post(f"{base}/_sandbox/faults", json=drift).status_code == 200
        row = salla(sb, "/orders", per_page=1).json()["data"][0]
        assert "total" not in row and row["grand_total"]["currency"] == "SAR" and row["channel"] == "web"
        detail = salla(sb, f"/orders/{row['id']}").json()["data"]
        assert "total" not in detail["amounts"] and "grand_total" in detail["amounts"]
        product = salla(sb, "/products", per_page=1).json()["data"][0]
        assert product["channel"] == "web"

        old = gql(sb, "{ invoices(first: 1) { nodes { id total } } }").json()
        assert "Cannot query field 'total' on type 'Invoice'" in old["errors"][0]["message"]
        new = gql(sb, "{ invoices(first: 1) { nodes { id grand_total channel } } }").json()
        node = new["data"]["invoices"]["nodes"][0]
        truth = next(i for i in sb.truth.printavo_invoices() if i["id"] == node["id"])
        assert node["grand_total"] == truth["total"] and node["channel"] == "web"

        sb.set_faults(Faults())
        assert "total" in salla(sb, "/orders", per_page=1).json()["data"][0]
        assert "errors" not in gql(sb, "{ invoices(first: 1) { nodes { total } } }").json()


# ---------------------------------------------------------------- clock, updates, webhooks, truth


def test_advancing_the_clock_reveals_updates_and_new_orders():
    sb = started()
    with sb.running() as base:
        mid = sb.merchant_ids[0]
        before = {o["id"]: o["updated_at"]["date"] for o in sb.truth.salla_orders(mid, TODAY - timedelta(days=10), TODAY)}
        invoices_before = {i["id"]: i["timestamps"]["updatedAt"] for i in sb.truth.printavo_invoices()}
        assert sb.truth.salla_order_count(mid, TODAY + timedelta(days=1), TODAY + timedelta(days=1)) == 0
        response = HTTP.post(f"{base}/_sandbox/advance", json={"days": 2})
        assert response.json()["now"].startswith((TODAY + timedelta(days=2)).isoformat())
        after = {o["id"]: o["updated_at"]["date"] for o in sb.truth.salla_orders(mid, TODAY - timedelta(days=10), TODAY)}
        assert after.keys() == before.keys()
        changed = [i for i in before if after[i] > before[i]]
        assert len(changed) > 10 and all(after[i] >= before[i] for i in before)
        newest = salla(sb, "/orders", sort_by="updated_at-desc", per_page=1).json()["data"][0]
        detail = salla(sb, f"/orders/{newest['id']}").json()["data"]
        assert detail["updated_at"]["date"] > (TODAY + timedelta(days=1)).isoformat()
        assert sb.truth.salla_order_count(mid, TODAY + timedelta(days=1), TODAY + timedelta(days=1)) > 0
        invoices_after = {i["id"]: i["timestamps"]["updatedAt"] for i in sb.truth.printavo_invoices()}
        assert any(invoices_after[i] > invoices_before[i] for i in invoices_before)


def test_webhook_and_api_agree_on_an_applied_update():
    sb = started()
    with sb.running() as base:
        mid = sb.merchant_ids[0]
        order = sb.truth.salla_orders(mid, TODAY, TODAY)[0]
        body, headers = sb.salla_order_webhook(mid, order["id"], "canceled")
        assert headers["X-Salla-Security-Strategy"] == "Signature"
        expected = hmac.new(sb.config.salla_webhook_secret.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Salla-Signature"], expected)
        envelope = orjson.loads(body)
        assert envelope["event"] == "order.updated" and envelope["merchant"] == int(mid)
        datetime.strptime(envelope["created_at"], "%Y-%m-%d %H:%M:%S")
        assert envelope["data"]["status"]["slug"] == "canceled"
        api = salla(sb, f"/orders/{order['id']}").json()["data"]
        assert api["status"]["slug"] == "canceled" and api["updated_at"] == envelope["data"]["updated_at"]
        assert api["updated_at"]["date"] > order["updated_at"]["date"]
        # the applied update ends the drawn schedule: advancing does not un-cancel it
        sb.advance(days=10)
        assert salla(sb, f"/orders/{order['id']}").json()["data"]["status"]["slug"] == "canceled"

        other = sb.truth.salla_orders(mid, TODAY, TODAY)[1]
        update = {"merchant_id": mid, "order_id": other["id"], "status": "restored"}
        response = HTTP.post(f"{base}/_sandbox/salla/orders/update", json=update)
        assert response.status_code == 200
        assert salla(sb, f"/orders/{other['id']}").json()["data"]["status"]["slug"] == "restored"
        custom_body, custom_headers = sb.salla_webhook("customer.created", mid, {"id": 1}, secret="s3cret")
        assert custom_headers["X-Salla-Signature"] == hmac.new(b"s3cret", custom_body, hashlib.sha256).hexdigest()


def test_truth_endpoint_matches_truth_and_credentials_endpoint(sandbox):
    mid = sandbox.merchant_ids[0]
    base = sandbox.base_url
    params = {"merchant_id": mid, "start": "2026-11-28", "end": "2026-11-30"}
    report = HTTP.get(f"{base}/_sandbox/truth/salla/orders", params=params).json()
    assert report["data"] == sandbox.truth.salla_orders(mid, date(2026, 11, 28), TODAY)
    assert report["count"] == len(report["data"]) > 0 and report["malformed_ids"] == []
    invoices = HTTP.get(f"{base}/_sandbox/truth/printavo/invoices", params={"start": "2026-11-01"}).json()
    assert invoices["data"] == sandbox.truth.printavo_invoices(date(2026, 11, 1))
    assert HTTP.get(f"{base}/_sandbox/truth/salla/widgets", params={"merchant_id": mid}).status_code == 404
    assert HTTP.get(f"{base}/_sandbox/truth/salla/orders").status_code == 422
    creds = HTTP.get(f"{base}/_sandbox/credentials").json()
    assert creds == sandbox.credentials.model_dump()
    info = HTTP.get(f"{base}/_sandbox").json()
    assert info["salla_merchants"] == sandbox.merchant_ids and info["now"].startswith("2026-11-30T20:59:59")


def test_serve_prints_the_base_url_and_credentials_and_stops_on_interrupt():
    code = "from kingtavo_pipeline.sandbox import SandboxConfig, serve; serve('127.0.0.1', 0, SandboxConfig(days=5))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        banner = [proc.stdout.readline() for _ in range(6)]
        assert banner[0].startswith("Kingtavo sandbox at http://127.0.0.1:")
        base = banner[0].split()[3]
        expected = Sandbox(SandboxConfig(days=5)).credentials  # credentials are derived from the seed
        assert banner[3].split()[-1] == expected.printavo_email and banner[4].split()[-1] == expected.printavo_token
        assert HTTP.get(f"{base}/_sandbox").json()["salla_merchants"] == [m.merchant_id for m in expected.salla_merchants]
        token = expected.salla_merchants[0].access_token
        assert HTTP.get(f"{base}/salla/admin/v2/products", headers=bearer(token)).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
