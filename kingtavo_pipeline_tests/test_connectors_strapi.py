"""StrapiConnector against a local Strapi-like server (v4 and v5 envelopes, pagination, filters, sort)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kingtavo_pipeline.connectors.strapi import StrapiConnector, strapi_time
from kingtavo_pipeline.extract.breaker import reset_breakers
from kingtavo_pipeline.extract.http import AuthError, BadPayloadError, HttpPolicy
from kingtavo_pipeline.extract.ratelimit import reset_limiters
from kingtavo_pipeline_tests.http_servers import serve_app

TOKEN = "strapi-api-token-123"
BASE = datetime(2024, 3, 1, tzinfo=timezone.utc)
FILTER = re.compile(r"^filters\[(\w+)\]\[\$(gt|gte|lt|lte|eq)\]$")


class FakeStrapi:
    """Just enough of Strapi's REST API: pagination (capped at max_limit), sort, filters on fields."""

    def __init__(self, version: int, entries: list[dict[str, Any]], max_limit: int = 100) -> None:
        self.version = version
        self.entries = entries  # flat: id, documentId, title, createdAt, updatedAt
        self.max_limit = max_limit
        self.requests: list[dict[str, str]] = []
        self.on_request = None  # hook(n) to mutate data between requests

    def shape(self, entry: dict[str, Any]) -> dict[str, Any]:
        if self.version == 5:
            return dict(entry)
        attributes = {k: v for k, v in entry.items() if k not in ("id", "documentId")}
        return {"id": entry["id"], "attributes": attributes}

    async def collection(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"data": None, "error": {"status": 401, "name": "UnauthorizedError"}}, status_code=401)
        query = dict(request.query_params)
        self.requests.append(query)
        if self.on_request:
            self.on_request(len(self.requests))
        rows = list(self.entries)
        for key, value in query.items():
            match = FILTER.match(key)
            if match:
                field, op = match.groups()
                compare = {"gt": str.__gt__, "gte": str.__ge__, "lt": str.__lt__, "lte": str.__le__, "eq": str.__eq__}[op]
                # Strapi timestamps share one format, so string order is time order
                rows = [r for r in rows if r.get(field) is not None and compare(r[field], value)]
        sorts = [v for k, v in sorted(query.items()) if k.startswith("sort")]
        for spec in reversed(sorts):
            field, _, direction = spec.partition(":")
            rows.sort(key=lambda r: r[field], reverse=direction == "desc")
        page = int(query.get("pagination[page]", 1))
        size = min(int(query.get("pagination[pageSize]", 25)), self.max_limit)
        chunk = rows[(page - 1) * size: page * size]
        page_count = -(-len(rows) // size)
        return JSONResponse({
            "data": [self.shape(r) for r in chunk],
            "meta": {"pagination": {"page": page, "pageSize": size, "pageCount": page_count, "total": len(rows)}},
        })

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/api/articles", self.collection)])


def make_entries(count: int, *, same_updated_from: int | None = None) -> list[dict[str, Any]]:
    entries = []
    for i in range(1, count + 1):
        updated = BASE + timedelta(days=10, minutes=i)
        if same_updated_from is not None and i >= same_updated_from:
            updated = BASE + timedelta(days=10, minutes=same_updated_from)
        entries.append({
            "id": i,
            "documentId": f"doc{i:04d}x",
            "title": f"Article {i}",
            "createdAt": strapi_time(BASE + timedelta(hours=i)),
            "updatedAt": strapi_time(updated),
            "publishedAt": strapi_time(updated),
        })
    # the server's storage order is not the API's sort order
    return entries[::-1]


@pytest.fixture(autouse=True)
def fresh_state():
    reset_breakers()
    reset_limiters()
    yield


def connector(base_url: str, version: int, page_size: int = 100, token: str = TOKEN) -> StrapiConnector:
    return StrapiConnector(base_url, token, {"articles": "articles"}, version=version, page_size=page_size,
                           policy=HttpPolicy(max_attempts=2, backoff_initial=0.01))


@pytest.mark.parametrize("version", [4, 5])
def test_pulls_every_page_to_the_end(version):
    server = FakeStrapi(version, make_entries(250))
    with serve_app(server.app()) as base_url, connector(base_url, version) as strapi:
        pages = list(strapi.pull_changes("articles", since=None))
    records = [r for p in pages for r in p.records]
    assert len(records) == 250
    expected_ids = {str(i) for i in range(1, 251)} if version == 4 else {f"doc{i:04d}x" for i in range(1, 251)}
    assert {r.source_id for r in records} == expected_ids
    first = next(r for r in records if r.source_id in ("1", "doc0001x"))
    if version == 4:
        assert set(first.payload) == {"id", "attributes"} and first.payload["attributes"]["title"] == "Article 1"
    else:
        assert first.payload["documentId"] == "doc0001x" and first.payload["title"] == "Article 1"
    assert first.occurred_at == BASE + timedelta(hours=1)
    assert first.updated_at == BASE + timedelta(days=10, minutes=1)
    assert all(p.reported_total == 250 for p in pages)
    # checkpoints never go backwards and end at the newest updatedAt, as Strapi wrote it
    checkpoints = [p.checkpoint for p in pages]
    assert checkpoints == sorted(checkpoints)
    assert checkpoints[-1] == strapi_time(BASE + timedelta(days=10, minutes=250))
    # bearer token, pagination, sort as Strapi expects them
    first_query = server.requests[0]
    assert first_query["pagination[page]"] == "1" and first_query["pagination[pageSize]"] == "100"
    assert first_query["sort[0]"] == "updatedAt:asc"


def test_page_size_above_the_servers_cap_still_reaches_the_end():
    server = FakeStrapi(5, make_entries(120), max_limit=25)
    with serve_app(server.app()) as base_url, connector(base_url, 5, page_size=500) as strapi:
        records = [r for p in strapi.pull_changes("articles", since=None) for r in p.records]
    assert len(records) == 120 and len({r.source_id for r in records}) == 120


def test_incremental_returns_newer_and_boundary_entries_only():
    entries = make_entries(60)
    server = FakeStrapi(5, entries)
    checkpoint = strapi_time(BASE + timedelta(days=10, minutes=40))
    # a second entry edited in the same millisecond as the checkpoint: must not be lost
    twin = next(e for e in entries if e["id"] == 5)
    twin["updatedAt"] = checkpoint
    with serve_app(server.app()) as base_url, connector(base_url, 5, page_size=7) as strapi:
        pages = list(strapi.pull_changes("articles", since=checkpoint))
    ids = [r.source_id for p in pages for r in p.records]
    expected = {f"doc{i:04d}x" for i in range(40, 61)} | {"doc0005x"}
    assert set(ids) == expected and len(ids) == len(expected)  # no loss, no duplicates
    assert server.requests[0]["filters[updatedAt][$gte]"] == checkpoint
    assert pages[-1].checkpoint == strapi_time(BASE + timedelta(days=10, minutes=60))


def test_more_equal_timestamps_than_a_page_are_walked_without_loss():
    # entries 20..90 share one updatedAt: 71 equal values against a page size of 10
    server = FakeStrapi(4, make_entries(90, same_updated_from=20))
    with serve_app(server.app()) as base_url, connector(base_url, 4, page_size=10) as strapi:
        ids = [r.source_id for p in strapi.pull_changes("articles", since=None) for r in p.records]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 91)]


def test_edits_during_the_pull_do_not_make_entries_disappear():
    entries = make_entries(50)
    server = FakeStrapi(5, entries)

    def edit_early_entry(request_number: int) -> None:
        # after the first page is served, entry 3 is edited and moves to the end of the order;
        # page-number paging would then skip the entry that slides onto page 1
        if request_number == 2:
            entry = next(e for e in entries if e["id"] == 3)
            entry["updatedAt"] = strapi_time(BASE + timedelta(days=30))

    server.on_request = edit_early_entry
    with serve_app(server.app()) as base_url, connector(base_url, 5, page_size=10) as strapi:
        records = [r for p in strapi.pull_changes("articles", since=None) for r in p.records]
    assert {r.source_id for r in records} == {f"doc{i:04d}x" for i in range(1, 51)}
    # the edited entry comes twice: its old and its new version
    versions = [r.updated_at for r in records if r.source_id == "doc0003x"]
    assert versions == [BASE + timedelta(days=10, minutes=3), BASE + timedelta(days=30)]


@pytest.mark.parametrize("version", [4, 5])
def test_partition_pull_filters_on_created_at(version):
    server = FakeStrapi(version, make_entries(100))
    start, end = BASE + timedelta(days=1), BASE + timedelta(days=2)
    with serve_app(server.app()) as base_url, connector(base_url, version, page_size=9) as strapi:
        pages = list(strapi.pull("articles", start=start, end=end))
    records = [r for p in pages for r in p.records]
    # createdAt = BASE + i hours: i in 24..47 falls in [day 1, day 2)
    assert sorted(r.occurred_at for r in records) == [BASE + timedelta(hours=i) for i in range(24, 48)]
    assert pages[0].reported_total == 24 and all(p.checkpoint is None for p in pages)
    query = server.requests[0]
    assert query["filters[createdAt][$gte]"] == "2024-03-02T00:00:00.000Z"
    assert query["filters[createdAt][$lt]"] == "2024-03-03T00:00:00.000Z"


def test_wrong_version_is_a_clear_bad_payload_error():
    server = FakeStrapi(4, make_entries(3))
    with serve_app(server.app()) as base_url, connector(base_url, 5) as strapi:
        with pytest.raises(BadPayloadError, match="no 'documentId'.*Strapi v4"):
            list(strapi.pull_changes("articles", since=None))


def test_bad_token_is_an_auth_error_without_the_token():
    server = FakeStrapi(5, make_entries(3))
    with serve_app(server.app()) as base_url, connector(base_url, 5, token="wrong-token-value") as strapi:
        with pytest.raises(AuthError) as info:
            list(strapi.pull_changes("articles", since=None))
    assert "401" in str(info.value) and "wrong-token-value" not in str(info.value)
    assert server.requests == []
