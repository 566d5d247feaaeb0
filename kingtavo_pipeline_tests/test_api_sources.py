"""A Strapi (v4 and v5) and a generic REST/JSON source through the pipeline: local HTTP servers on
127.0.0.1 -> raw/<type>/products -> core products (PostgreSQL), compared with what was served."""

from __future__ import annotations

from decimal import Decimal

import dagster as dg
import pytest

from kingtavo_pipeline.extract.breaker import reset_breakers
from kingtavo_pipeline.extract.ratelimit import reset_limiters
from kingtavo_pipeline_tests.http_servers import PagedJsonApi, StrapiServer, serve_app
from kingtavo_pipeline_tests.pipeline_helpers import partition_range, use_api_sources

pytestmark = pytest.mark.slow

FIRST, LAST = "2026-11-10", "2026-11-12"
STRAPI_TOKEN = "strapi-pipeline-token"
API_KEY = "rest-pipeline-key"

REST_MAPPING = """
integration: rest
entity: products
targets:
  products:
    fields:
      source_id: {path: id, required: true}
      sku: {path: sku}
      name: {path: title, required: true}
      status: {path: state, enum: {map: {live: active, draft: hidden}, default: unknown}}
      price: {path: price.amount, type: decimal}
      currency: {path: price.currency, transform: upper}
      stock_quantity: {path: inventory, type: integer}
      category: {path: tags.0}
      created_at: {path: created, type: timestamp}
      source_updated_at: {path: modified, type: timestamp}
"""


@pytest.fixture(autouse=True)
def _fresh_http_state():
    reset_breakers()
    reset_limiters()
    yield
    reset_limiters()


def strapi_products() -> list[dict]:
    """Eight products created over the window's three days, a draft among them, and one created
    after the window (it must not land)."""
    days = ["2026-11-10", "2026-11-10", "2026-11-10", "2026-11-11", "2026-11-11", "2026-11-12", "2026-11-12",
            "2026-11-12", "2026-11-14"]
    entries = []
    for i, day in enumerate(days, start=1):
        entries.append({
            "id": 100 + i, "documentId": f"doc{i:04d}x", "name": f"Product {i}", "sku": f"SKU-{i:03d}",
            "price": 10 + i + 0.5, "currency": "sar" if i % 2 else "usd", "stock": i * 3,
            "category": {"id": i % 3 + 1, "name": ["mugs", "shirts", "caps"][i % 3]},
            "createdAt": f"{day}T{8 + i:02d}:15:00.000Z", "updatedAt": f"{day}T{20:02d}:{i:02d}:00.000Z",
            "publishedAt": None if i == 4 else f"{day}T21:00:00.000Z",
        })
    return entries


def rest_products() -> list[dict]:
    rows = []
    for i in range(1, 12):
        day = ["2026-11-09", "2026-11-10", "2026-11-11", "2026-11-12"][i % 4]
        rows.append({"id": f"p-{i}", "sku": f"R{i:04d}", "title": f"Widget {i}", "state": "draft" if i == 5 else "live",
                     "price": {"amount": f"{i * 2}.25", "currency": "eur"}, "inventory": i, "tags": [f"tag{i % 2}"],
                     "created": f"{day}T12:00:{i:02d}Z", "modified": f"{day}T18:00:{i:02d}Z"})
    return rows


def run_raw_and_core(raw_assets, resources) -> None:
    from kingtavo_pipeline.defs.core.entities import core_entities

    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(raw_assets, tags=partition_range(FIRST, LAST), resources=resources, instance=instance).success
    assert dg.materialize([core_entities], tags=partition_range(FIRST, LAST), resources=resources,
                          instance=instance).success


def core_products(store, source_type: str) -> dict[str, tuple]:
    rows = store.fetch_all(
        "SELECT source_id, sku, name, status, price, currency, stock_quantity, category, created_at, source_updated_at "
        "FROM products WHERE source_type = %s", (source_type,))
    return {r[0]: tuple(r[1:8]) + (r[8].isoformat(), r[9].isoformat()) for r in rows}


def in_window(stamp: str) -> bool:
    return FIRST <= stamp[:10] <= LAST


@pytest.mark.parametrize("version", [4, 5])
def test_strapi_products_reach_core_as_served(tmp_path, monkeypatch, store, version):
    entries = strapi_products()
    server = StrapiServer(version, {"products": entries}, STRAPI_TOKEN)
    monkeypatch.setenv("CMS_TOKEN", STRAPI_TOKEN)
    with serve_app(server.app()) as base_url:
        _, raw_assets, resources = use_api_sources(tmp_path, monkeypatch, (
            f"strapi:\n  - name: cms\n    base_url: {base_url}\n    token_env: CMS_TOKEN\n    version: {version}\n"
            "    collections: {products: products}\n    page_size: 3\n"))
        run_raw_and_core(raw_assets, resources)
        landed = store.fetch_value("SELECT count(*) FROM raw_data WHERE source_type = 'strapi'")
        run_raw_and_core(raw_assets, resources)  # a rerun lands nothing new
        assert store.fetch_value("SELECT count(*) FROM raw_data WHERE source_type = 'strapi'") == landed
    assert len(server.requests) > 3  # it paged (3 per page)

    expected = {}
    for e in entries:
        if not in_window(e["createdAt"]):
            continue
        source_id = e["documentId"] if version == 5 else str(e["id"])
        expected[source_id] = (
            e["sku"], e["name"], "hidden" if e["publishedAt"] is None else "active", Decimal(str(e["price"])),
            e["currency"].upper(), e["stock"], e["category"]["name"],
            e["createdAt"].replace(".000Z", "+00:00"), e["updatedAt"].replace(".000Z", "+00:00"),
        )
    assert len(expected) == 8
    assert core_products(store, "strapi") == expected
    assert store.fetch_value("SELECT count(*) FROM dead_letters") == 0


def test_a_generic_rest_source_reaches_core_as_served(tmp_path, monkeypatch, store):
    rows = rest_products()
    api = PagedJsonApi({"products": rows}, API_KEY)
    (tmp_path / "rest_products.yaml").write_text(REST_MAPPING)
    monkeypatch.setenv("SHOP_API_KEY", API_KEY)
    with serve_app(api.app()) as base_url:
        _, raw_assets, resources = use_api_sources(tmp_path, monkeypatch, (
            f"rest:\n  - name: shop_api\n    base_url: {base_url}/v1\n"
            "    auth: {type: header, env: SHOP_API_KEY, header: X-Api-Key}\n"
            "    paginator: {kind: page_number, page_param: page, size_param: per_page, page_size: 4, "
            "total_pages_path: $.meta.total_pages}\n"
            "    records_path: $.items[*]\n    occurred_at_path: created\n    updated_at_path: modified\n"
            "    entities: {products: /products}\n    mappings: {products: rest_products.yaml}\n"))
        run_raw_and_core(raw_assets, resources)
    assert [int(r["page"]) for r in api.requests] == [1, 2, 3]

    expected = {
        r["id"]: (r["sku"], r["title"], "hidden" if r["state"] == "draft" else "active",
                  Decimal(r["price"]["amount"]), r["price"]["currency"].upper(), r["inventory"], r["tags"][0],
                  r["created"].replace("Z", "+00:00"), r["modified"].replace("Z", "+00:00"))
        for r in rows if in_window(r["created"])
    }
    assert len(expected) == 9  # two of the eleven were created the day before the window
    assert core_products(store, "rest") == expected
    assert store.fetch_value("SELECT count(*) FROM dead_letters") == 0


def test_two_sources_of_a_type_pulling_one_entity_is_a_clear_error(tmp_path):
    from kingtavo_pipeline.defs.ingest.api import build_api_raw_assets
    from kingtavo_pipeline.sources.config import SourceConfigError, load_sources

    (tmp_path / "sources.yaml").write_text(
        "strapi:\n"
        "  - {name: shop_cms, base_url: 'http://127.0.0.1:1/api', collections: {products: products}}\n"
        "  - {name: blog_cms, base_url: 'http://127.0.0.1:2/api', collections: {products: articles}}\n")
    sources = load_sources(tmp_path / "sources.yaml")
    with pytest.raises(SourceConfigError, match="strapi sources 'shop_cms' and 'blog_cms' both pull 'products'"):
        build_api_raw_assets(sources.api())
