"""RestConnector: every paginator kind to the end against a local server, JSONPath records,
incremental cursor params, partition windows, auth, and configuration errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kingtavo_pipeline.connectors.rest import RestConfigError, RestConnector, RestSourceConfig
from kingtavo_pipeline.extract.breaker import reset_breakers
from kingtavo_pipeline.extract.http import AuthError, BadPayloadError, HttpPolicy
from kingtavo_pipeline.extract.ratelimit import reset_limiters
from kingtavo_pipeline_tests.http_servers import serve_app

BASE = datetime(2024, 5, 1, tzinfo=timezone.utc)
TOKEN = "rest-secret-token-42"
COUNT = 23


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


ROWS = [
    {
        "id": f"o-{i:03d}",
        "customer": {"name": f"Customer {i}"},
        "created_at": iso(BASE + timedelta(hours=6 * i)),  # 4 per day
        "updated_at": iso(BASE + timedelta(days=30, minutes=i)),
    }
    for i in range(1, COUNT + 1)
]
ALL_IDS = [r["id"] for r in ROWS]


class Api:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []

    def log(self, request: Request) -> dict[str, str]:
        query = dict(request.query_params)
        self.requests.append((request.url.path, query, dict(request.headers)))
        return query

    async def pages(self, request: Request) -> JSONResponse:
        q = self.log(request)
        rows = [r for r in ROWS if q.get("created_from", "") <= r["created_at"] < q.get("created_to", "9999")]
        page, size = int(q.get("page", 1)), int(q.get("per_page", 10))
        body: dict[str, Any] = {"items": rows[(page - 1) * size: page * size]}
        if q.get("with_total"):
            body["meta"] = {"total_pages": -(-len(rows) // size)}
        return JSONResponse(body)

    async def offsets(self, request: Request) -> JSONResponse:
        q = self.log(request)
        offset, limit = int(q["offset"]), min(int(q["limit"]), 7)  # the server caps the limit
        return JSONResponse({"data": ROWS[offset: offset + limit], "total": COUNT})

    async def cursors(self, request: Request) -> JSONResponse:
        q = self.log(request)
        start = int(q.get("after") or 0)
        chunk = ROWS[start: start + 5]
        following = str(start + 5) if start + 5 < COUNT else None
        return JSONResponse({"results": {"orders": chunk}, "paging": {"next_token": following}})

    async def linked(self, request: Request) -> JSONResponse:
        q = self.log(request)
        page = int(q.get("p", 1))
        headers = {}
        if page * 6 < COUNT:
            # relative on odd pages, absolute on even ones: both must be followed
            target = f"/linked?p={page + 1}&size=6" if page % 2 else f"{request.base_url}linked?p={page + 1}&size=6"
            headers["Link"] = f'<{target}>; rel="next", </linked?p=1>; rel="first"'
        return JSONResponse(ROWS[(page - 1) * 6: page * 6], headers=headers)

    async def next_urls(self, request: Request) -> JSONResponse:
        q = self.log(request)
        page = int(q.get("page", 1))
        following = f"{request.base_url}next?page={page + 1}" if page * 8 < COUNT else None
        return JSONResponse({"data": ROWS[(page - 1) * 8: page * 8], "links": {"next": following}})

    async def changes(self, request: Request) -> JSONResponse:
        q = self.log(request)
        if request.headers.get("x-api-key") != f"Key {TOKEN}":
            return JSONResponse({"error": "bad key"}, status_code=401)
        since = q.get("updated_since", "")
        rows = sorted((r for r in ROWS if r["updated_at"] > since), key=lambda r: r["updated_at"])
        page = int(q.get("page", 1))
        return JSONResponse({"items": rows[(page - 1) * 4: page * 4]})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/pages", self.pages), Route("/v1/offsets", self.offsets), Route("/v1/cursors", self.cursors),
            Route("/linked", self.linked), Route("/next", self.next_urls), Route("/v1/changes", self.changes),
        ])


@pytest.fixture(scope="module")
def api():
    state = Api()
    with serve_app(state.app()) as base_url:
        yield base_url, state


@pytest.fixture(autouse=True)
def fresh_state(api):
    reset_breakers()
    reset_limiters()
    api[1].requests.clear()
    yield


def make(base_url: str, entity: dict[str, Any], **source: Any) -> RestConnector:
    config = {"name": "shop_api", "base_url": f"{base_url}/v1", "id_path": "id", "entities": {"orders": entity}, **source}
    return RestConnector(config, {"SHOP_TOKEN": TOKEN}, HttpPolicy(max_attempts=2, backoff_initial=0.01))


def pull_all(connector: RestConnector) -> list:
    return [r for p in connector.pull_changes("orders", since=None) for r in p.records]


def test_page_number_stops_on_the_empty_page(api):
    base_url, state = api
    paginator = {"kind": "page_number", "page_param": "page", "size_param": "per_page", "page_size": 10}
    with make(base_url, {"path": "/pages", "records_path": "$.items[*]", "paginator": paginator}) as rest:
        records = pull_all(rest)
    assert [r.source_id for r in records] == ALL_IDS
    assert [q["page"] for _, q, _ in state.requests] == ["1", "2", "3", "4"]  # page 4 is empty
    assert all(q["per_page"] == "10" for _, q, _ in state.requests)


def test_page_number_stops_at_total_pages(api):
    base_url, state = api
    paginator = {"kind": "page_number", "page_size": 10, "total_pages_path": "$.meta.total_pages"}
    entity = {"path": "pages", "records_path": "$.items", "params": {"with_total": "1"}, "paginator": paginator}
    with make(base_url, entity) as rest:
        assert [r.source_id for r in pull_all(rest)] == ALL_IDS
    assert len(state.requests) == 3


def test_offset_advances_by_what_the_server_returned(api):
    base_url, state = api
    paginator = {"kind": "offset", "limit": 10, "total_path": "$.total"}
    with make(base_url, {"path": "/offsets", "records_path": "$.data[*]", "total_path": "$.total", "paginator": paginator}) as rest:
        pages = list(rest.pull_changes("orders", since=None))
    assert [r.source_id for p in pages for r in p.records] == ALL_IDS
    assert [q["offset"] for _, q, _ in state.requests] == ["0", "7", "14", "21"]
    assert pages[0].reported_total == COUNT


def test_cursor_follows_the_next_token_in_the_body(api):
    base_url, state = api
    paginator = {"kind": "cursor", "cursor_param": "after", "cursor_path": "$.paging.next_token"}
    with make(base_url, {"path": "/cursors", "records_path": "$.results.orders[*]", "paginator": paginator}) as rest:
        assert [r.source_id for r in pull_all(rest)] == ALL_IDS
    assert [q.get("after") for _, q, _ in state.requests] == [None, "5", "10", "15", "20"]


def test_link_header_follows_rel_next(api):
    base_url, state = api
    # the path is absolute here: the base URL has /v1 but the linked endpoint does not
    with make(base_url, {"path": f"{base_url}/linked", "paginator": {"kind": "link_header"}}) as rest:
        assert [r.source_id for r in pull_all(rest)] == ALL_IDS
    assert [q.get("p") for _, q, _ in state.requests] == [None, "2", "3", "4"]
    assert all(q.get("size") == "6" for _, q, _ in state.requests[1:])


def test_next_url_from_the_body(api):
    base_url, state = api
    entity = {"path": f"{base_url}/next", "records_path": "$.data[*]",
              "paginator": {"kind": "next_url", "next_url_path": "$.links.next"}}
    with make(base_url, entity) as rest:
        assert [r.source_id for r in pull_all(rest)] == ALL_IDS
    assert len(state.requests) == 3


def test_dotted_paths_and_timestamps(api):
    base_url, _ = api
    entity = {"path": "/pages", "records_path": "$.items[*]", "occurred_at_path": "created_at",
              "paginator": {"kind": "page_number"}}
    with make(base_url, entity, updated_at_path="updated_at", id_path="customer.name") as rest:
        first = pull_all(rest)[0]
    assert first.source_id == "Customer 1" and first.entity == "orders"
    assert first.occurred_at == BASE + timedelta(hours=6)
    assert first.updated_at == BASE + timedelta(days=30, minutes=1)
    assert first.payload == ROWS[0]


def test_incremental_cursor_param_and_header_auth(api):
    base_url, state = api
    entity = {"path": "/changes", "records_path": "$.items[*]", "updated_at_path": "updated_at",
              "paginator": {"kind": "page_number", "size_param": None},
              "incremental": {"param": "updated_since", "initial_value": "2000-01-01T00:00:00Z", "sorted_ascending": True}}
    auth = {"type": "header", "header": "X-API-Key", "prefix": "Key ", "env": "SHOP_TOKEN"}
    with make(base_url, entity, auth=auth) as rest:
        first_run = list(rest.pull_changes("orders", since=None))
        assert state.requests[0][1]["updated_since"] == "2000-01-01T00:00:00Z"
        assert state.requests[0][2]["x-api-key"] == f"Key {TOKEN}"
        assert sum(len(p.records) for p in first_run) == COUNT
        # sorted ascending: each page moves the checkpoint to the max updated_at seen so far
        assert [p.checkpoint for p in first_run if p.records] == [ROWS[i]["updated_at"] for i in (3, 7, 11, 15, 19, 22)]
        state.requests.clear()
        since = ROWS[19]["updated_at"]
        second_run = list(rest.pull_changes("orders", since=since))
    assert {q["updated_since"] for _, q, _ in state.requests} == {since}
    assert [r.source_id for p in second_run for r in p.records] == ALL_IDS[20:]
    assert second_run[-1].checkpoint == ROWS[-1]["updated_at"]


def test_unsorted_incremental_checkpoints_only_the_completed_pull(api):
    base_url, _ = api
    entity = {"path": "/pages", "records_path": "$.items[*]", "updated_at_path": "updated_at",
              "paginator": {"kind": "page_number", "page_size": 10},
              "incremental": {"param": "updated_since"}}
    with make(base_url, entity) as rest:
        pages = list(rest.pull_changes("orders", since=None))
    assert [p.checkpoint for p in pages] == [None, None, None, ROWS[-1]["updated_at"]]


def test_partition_window_params_and_client_side_filter(api):
    base_url, state = api
    entity = {"path": "/pages", "records_path": "$.items[*]", "occurred_at_path": "created_at",
              "paginator": {"kind": "page_number", "page_size": 3},
              "window": {"start_param": "created_from", "end_param": "created_to", "format": "iso"}}
    start = BASE + timedelta(days=2)
    with make(base_url, entity) as rest:
        records = [r for p in rest.pull("orders", start=start, end=start + timedelta(days=1)) for r in p.records]
    assert [r.occurred_at for r in records] == [BASE + timedelta(hours=h) for h in (48, 54, 60, 66)]
    assert state.requests[0][1]["created_from"] == "2024-05-03T00:00:00Z"
    assert state.requests[0][1]["created_to"] == "2024-05-04T00:00:00Z"


def test_pull_without_window_filters_client_side(api):
    base_url, _ = api
    entity = {"path": "/offsets", "records_path": "$.data[*]", "occurred_at_path": "created_at",
              "paginator": {"kind": "offset", "total_path": "$.total"}}
    start = BASE + timedelta(days=1)
    with make(base_url, entity) as rest:
        records = [r for p in rest.pull("orders", start=start, end=start + timedelta(days=1)) for r in p.records]
    assert [r.source_id for r in records] == ["o-004", "o-005", "o-006", "o-007"]


def test_bearer_auth_and_auth_errors(api):
    base_url, state = api
    entity = {"path": "/changes", "records_path": "$.items[*]"}
    with make(base_url, entity, auth={"type": "bearer", "env": "SHOP_TOKEN"}) as rest:
        with pytest.raises(AuthError) as info:
            pull_all(rest)
    assert state.requests[0][2]["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(info.value) and "rest:shop_api" in str(info.value)


def test_records_that_are_not_objects_or_lack_ids_are_bad_payloads(api):
    base_url, _ = api
    with make(base_url, {"path": "/pages", "records_path": "$.items[*].id"}) as rest:
        with pytest.raises(BadPayloadError, match=r"records_path '\$.items\[\*\].id' selects a str"):
            pull_all(rest)
    with make(base_url, {"path": "/pages", "records_path": "$.items[*]"}, id_path="number") as rest:
        with pytest.raises(BadPayloadError, match="a record has no id at 'number'"):
            pull_all(rest)


def test_missing_credential_is_a_clear_error(api):
    base_url, _ = api
    config = {"name": "shop_api", "base_url": base_url, "auth": {"type": "bearer", "env": "KT_TEST_UNSET_TOKEN_VAR"},
              "entities": {"orders": "/pages"}}
    with pytest.raises(RestConfigError, match="credential 'KT_TEST_UNSET_TOKEN_VAR' is not set"):
        RestConnector(config, {})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"records_path": "$.items[[["}, r"records_path: invalid JSONPath '\$.items\[\[\['"),
        ({"paginator": {"kind": "pages"}}, r"paginator: Input tag 'pages' found using 'kind' does not match"),
        ({"paginator": {"kind": "cursor", "cursor_path": "$..[["}}, r"paginator.cursor.cursor_path: invalid JSONPath"),
        ({"auth": {"type": "bearer"}}, r"auth: auth type 'bearer' needs 'env'"),
        ({"base_url": "ftp://x"}, r"base_url: base_url must be an http\(s\) URL"),
        ({"entities": {}}, r"entities: at least one entity is required"),
        ({"entities": {"orders": {"path": "/o", "window": {"start_param": "from", "format": "weird"}}}},
         r"entities.orders.window.format: format must be iso"),
        ({"page_size": 10}, r"page_size: Extra inputs are not permitted"),
    ],
)
def test_configuration_errors_name_the_source_and_field(change, message):
    config = {"name": "shop_api", "base_url": "http://127.0.0.1:9", "entities": {"orders": "/orders"}, **change}
    with pytest.raises(RestConfigError, match=r"^rest source 'shop_api': invalid configuration: .*" + message):
        RestSourceConfig.parse(config)


def test_entity_inherits_source_defaults():
    config = RestSourceConfig.parse({
        "name": "shop_api", "base_url": "http://127.0.0.1:9/", "records_path": "$.data[*]",
        "paginator": {"kind": "offset", "limit": 50}, "params": {"locale": "en"},
        "entities": {"orders": "/orders", "items": {"path": "/items", "records_path": "$.rows", "params": {"x": 1}}},
    })
    orders, items = config.entity("orders"), config.entity("items")
    assert config.base_url == "http://127.0.0.1:9"
    assert orders.records_path == "$.data[*]" and orders.paginator.kind == "offset" and orders.params == {"locale": "en"}
    assert items.records_path == "$.rows" and items.params == {"locale": "en", "x": 1}
    with pytest.raises(RestConfigError, match="has no entity 'nope'"):
        config.entity("nope")
