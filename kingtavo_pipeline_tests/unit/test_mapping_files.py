"""The shipped mapping files (kingtavo_pipeline/mappings/*.yaml): each maps a realistic payload,
written from the providers' documented shapes, to the expected core rows; and the sandbox's own
payloads map with no dead letters and totals equal to the source's."""

from __future__ import annotations

import json
from decimal import Decimal

import pandas as pd
import pytest

from kingtavo_pipeline.mapping import compile_file, shipped_mapping, shipped_mappings
from kingtavo_pipeline.sandbox.config import SandboxConfig
from kingtavo_pipeline.sandbox.world import World

# The core tables' mapped columns (what every file for the entity must produce, in this order).
ENTITY_COLUMNS = {
    "customers": ["source_id", "email", "first_name", "last_name", "full_name", "phone", "city", "country",
                  "created_at", "source_updated_at"],
    "products": ["source_id", "sku", "name", "status", "price", "currency", "stock_quantity", "category",
                 "created_at", "source_updated_at"],
    "orders": ["source_id", "order_number", "kind", "status", "raw_status", "customer_source_id", "currency",
               "subtotal", "discount", "tax", "shipping", "total", "ordered_at", "source_updated_at"],
    "order_lines": ["source_id", "order_source_id", "product_source_id", "sku", "name", "quantity", "unit_price",
                    "discount", "tax", "total", "currency", "source_updated_at"],
}
ENUMS = {"status": {"active", "hidden", "out_of_stock", "deleted", "unknown", "pending", "processing", "completed",
                    "cancelled", "refunded"}, "kind": {"order", "invoice", "quote"}}


def raw(payloads: list, merchant: str = "") -> pd.DataFrame:
    return pd.DataFrame({
        "payload": [json.dumps(p) for p in payloads],
        "raw_data_id": range(1, len(payloads) + 1),
        "source_id": [str(p.get("id", i)) for i, p in enumerate(payloads)],
        "merchant_id": merchant,
    })


def mapped(integration: str, entity: str, payloads: list, merchant: str = ""):
    out = shipped_mapping(integration, entity).run(raw(payloads, merchant))
    assert out.rejects.empty, out.rejects["error_message"].tolist()
    return out


def D(text: str) -> Decimal:
    return Decimal(text)


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


@pytest.mark.parametrize("name", sorted(shipped_mappings()))
def test_every_shipped_file_compiles_and_targets_core_columns(name):
    compiled = compile_file(shipped_mappings()[name])
    for target, plan in compiled.targets.items():
        assert list(plan.fields) == ENTITY_COLUMNS[target], (name, target)
        for field, values in ENUMS.items():
            if field in plan.fields and plan.fields[field].spec.enum is not None:
                spec = plan.fields[field].spec.enum
                assert set(spec.map.values()) | {spec.default} <= values


# ------------------------------------------------------------------------------------ Salla


def salla_date(text: str) -> dict:
    return {"date": f"{text}.000000", "timezone_type": 3, "timezone": "Asia/Riyadh"}


def sar(amount) -> dict:
    return {"amount": amount, "currency": "SAR"}


SALLA_ORDER = {
    "id": 1815441447, "reference_id": 48390721, "date": salla_date("2025-02-27 23:30:00"),
    "updated_at": salla_date("2025-03-01 09:15:42"), "source": "store", "payment_method": "mada", "currency": "SAR",
    "amounts": {
        "sub_total": sar(445.5), "shipping_cost": sar(25), "cash_on_delivery": sar(0),
        "tax": {"percent": "15.00", "amount": sar(67.14)},
        "discounts": [{"title": "Coupon SAVE10", "type": "coupon", "code": "SAVE10", "discount": sar(44.55)}],
        "total": sar(493.09),
    },
    "status": {"id": 566146469, "name": "بإنتظار المراجعة", "slug": "under_review", "customized": {"id": 1, "name": "x"}},
    "customer": {"id": 1132457781, "full_name": "Sara Alharbi", "mobile": 555123456, "mobile_code": "+966",
                 "email": "sara@example.com", "city": "Riyadh", "country": "Saudi Arabia", "country_code": "SA"},
    "items": [
        {"id": 18154414471, "name": "Oud Perfume", "sku": "OUD-50", "product_id": 1500000021, "quantity": 2, "currency": "SAR",
         "amounts": {"price_without_tax": sar(150), "total_discount": sar(30), "tax": {"percent": "15.00", "amount": sar(40.5)},
                     "total": sar(310.5)}},
        {"id": 18154414472, "name": "Arabic Coffee Beans", "sku": "COF-1", "product_id": 1500000007, "quantity": 1,
         "currency": "SAR", "amounts": {"price_without_tax": sar(145.5), "total_discount": sar(14.55),
                                        "tax": {"percent": "15.00", "amount": sar(19.64)}, "total": sar(150.59)}},
    ],
}


def test_salla_order_detail_maps_to_an_order_and_its_lines():
    out = mapped("salla", "orders", [SALLA_ORDER], merchant="1608226078")
    order = out["orders"].iloc[0]
    assert list(out["orders"].columns[: len(ENTITY_COLUMNS["orders"])]) == ENTITY_COLUMNS["orders"]
    assert (order["source_id"], order["order_number"], order["kind"]) == ("1815441447", "48390721", "order")
    assert (order["status"], order["raw_status"], order["customer_source_id"]) == ("processing", "under_review", "1132457781")
    assert order["currency"] == "SAR"
    assert [order[c] for c in ("subtotal", "discount", "tax", "shipping", "total")] == [
        D("445.5"), D("44.55"), D("67.14"), D("25"), D("493.09")]
    assert order["ordered_at"] == ts("2025-02-27T20:30:00Z")  # Riyadh is UTC+3
    assert order["source_updated_at"] == ts("2025-03-01T06:15:42Z")
    assert order["merchant_id"] == "1608226078"
    lines = out["order_lines"]
    assert list(lines.columns[: len(ENTITY_COLUMNS["order_lines"])]) == ENTITY_COLUMNS["order_lines"]
    assert lines["source_id"].tolist() == ["18154414471", "18154414472"]
    assert lines["order_source_id"].tolist() == ["1815441447"] * 2
    assert lines["product_source_id"].tolist() == ["1500000021", "1500000007"]
    assert lines["quantity"].tolist() == [D(2), D(1)]
    assert lines["unit_price"].tolist() == [D(150), D("145.5")]
    assert lines["discount"].tolist() == [D(30), D("14.55")]
    assert lines["tax"].tolist() == [D("40.5"), D("19.64")]
    assert lines["total"].tolist() == [D("310.5"), D("150.59")]
    assert lines["currency"].tolist() == ["SAR", "SAR"]
    assert (lines["source_updated_at"] == order["source_updated_at"]).all()


def test_salla_status_slugs_and_a_line_without_id():
    slugs = {"payment_pending": "pending", "in_progress": "processing", "shipped": "completed", "delivered": "completed",
             "completed": "completed", "canceled": "cancelled", "restored": "refunded", "a_custom_status": "unknown"}
    payloads = []
    for i, slug in enumerate(slugs):
        items = [{k: v for k, v in SALLA_ORDER["items"][0].items() if k != "id"}]
        payloads.append({**SALLA_ORDER, "id": 100 + i, "status": {"slug": slug}, "items": items})
    out = mapped("salla", "orders", payloads)
    assert out["orders"]["status"].tolist() == list(slugs.values())
    assert out["orders"]["raw_status"].tolist() == list(slugs)
    assert out["order_lines"]["source_id"].tolist()[:2] == ["100:0", "101:0"]


def test_salla_order_without_items_or_total_is_a_dead_letter():
    no_items = {k: v for k, v in SALLA_ORDER.items() if k != "items"}
    renamed = {**SALLA_ORDER, "amounts": {**{k: v for k, v in SALLA_ORDER["amounts"].items() if k != "total"},
                                          "grand_total": sar(1)}}
    out = shipped_mapping("salla", "orders").run(raw([no_items, renamed, {**SALLA_ORDER, "id": 5}]))
    assert out.rejects["error_message"].tolist() == [
        "order_lines: required array missing (path items[])",
        "orders.total: required value missing (path amounts.total)",
    ]
    assert out["orders"]["source_id"].tolist() == ["5"] and len(out["order_lines"]) == 2


def test_salla_product():
    product = {"id": 1500000021, "type": "product", "name": "Oud Perfume 50ml", "sku": "OUD-50", "price": sar(150),
               "regular_price": sar(150), "sale_price": sar(0), "status": "sale", "is_available": True, "quantity": 37,
               "unlimited_quantity": False, "categories": [{"id": 1000001, "name": "Fragrances"}],
               "created_at": salla_date("2024-06-01 12:00:00"), "updated_at": salla_date("2025-03-01 10:00:00")}
    out = mapped("salla", "products", [product, {**product, "id": 2, "status": "out", "quantity": 0},
                                       {**product, "id": 3, "status": "hidden"}])
    row = out["products"].iloc[0]
    assert [row[c] for c in ENTITY_COLUMNS["products"]] == [
        "1500000021", "OUD-50", "Oud Perfume 50ml", "active", D(150), "SAR", 37, "Fragrances",
        ts("2024-06-01T09:00:00Z"), ts("2025-03-01T07:00:00Z")]
    assert out["products"]["status"].tolist() == ["active", "out_of_stock", "hidden"]


def test_salla_customer():
    customer = {"id": 1132457781, "first_name": "Sara", "last_name": "Alharbi", "full_name": "Sara Alharbi",
                "mobile": 555123456, "mobile_code": "+966", "email": " Sara@Example.com", "gender": "female",
                "city": "Jeddah", "country": "Saudi Arabia", "country_code": None, "groups": [],
                "created_at": salla_date("2024-01-02 08:00:00"), "updated_at": salla_date("2025-01-02 08:00:00")}
    row = mapped("salla", "customers", [customer])["customers"].iloc[0]
    assert [row[c] for c in ENTITY_COLUMNS["customers"]] == [
        "1132457781", "sara@example.com", "Sara", "Alharbi", "Sara Alharbi", "+966555123456", "Jeddah", "SA",
        ts("2024-01-02T05:00:00Z"), ts("2025-01-02T05:00:00Z")]


# ---------------------------------------------------------------------------------- Printavo


def stamps(created: str, updated: str) -> dict:
    return {"createdAt": created, "updatedAt": updated}


def line(lid: str, price: float, items: int, **extra) -> dict:
    return {"id": lid, "position": 1, "description": "Gildan 5000 Heavy Cotton Tee", "itemNumber": "G500", "color": "Black",
            "items": items, "price": price, "sizes": [{"size": "size_m", "count": items}], "taxed": True,
            "timestamps": stamps("2025-02-27T14:00:00Z", "2025-02-27T14:00:00Z"), **extra}


PRINTAVO_INVOICE = {
    "__typename": "Invoice", "id": "9946001", "visualId": "4946001", "nickname": "Riverside High Event Tees",
    "createdAt": "2025-02-27", "startAt": "2025-02-28T14:00:00Z", "dueAt": "2025-03-10T14:00:00Z",
    "status": {"id": "402003", "name": "In Production", "type": "INVOICE"},
    "contact": {"id": "6000010", "fullName": "Emily Smith", "email": "emily@example.org",
                "customer": {"id": "5000001", "companyName": "Riverside High School"}},
    "lineItemGroups": {"nodes": [
        {"id": "99460011", "position": 1, "lineItems": {"nodes": [line("994600111", 8.5, 24), line("994600112", 12.25, 12)]}},
        {"id": "99460012", "position": 2, "lineItems": {"nodes": [line("994600121", 19.99, 3, product={"id": "77"})]}},
    ]},
    "subtotal": 410.97, "discount": 10.0, "discountAmount": 41.2, "salesTax": 8.25, "salesTaxAmount": 30.59,
    "total": 401.36, "totalUntaxed": 370.77,
    "timestamps": stamps("2025-02-27T14:05:09-06:00", "2025-03-01T09:00:00-06:00"),
}


def test_printavo_invoice_maps_to_an_order_and_lines_through_nested_groups():
    out = mapped("printavo", "invoices", [PRINTAVO_INVOICE])
    order = out["orders"].iloc[0]
    assert [order[c] for c in ENTITY_COLUMNS["orders"]] == [
        "9946001", "4946001", "invoice", "processing", "In Production", "5000001", "USD",
        D("410.97"), D("41.2"), D("30.59"), pd.NA, D("401.36"), ts("2025-02-27T20:05:09Z"), ts("2025-03-01T15:00:00Z")]
    lines = out["order_lines"]
    assert lines["source_id"].tolist() == ["994600111", "994600112", "994600121"]
    assert lines["order_source_id"].tolist() == ["9946001"] * 3
    assert lines["quantity"].tolist() == [D(24), D(12), D(3)]
    assert lines["unit_price"].tolist() == [D("8.5"), D("12.25"), D("19.99")]
    assert lines["total"].tolist() == [D(204), D(147), D("59.97")]  # price x items, exact
    assert sum(lines["total"]) == order["subtotal"]
    assert lines["product_source_id"].tolist()[2] == "77" and pd.isna(lines["product_source_id"].iloc[0])
    assert lines["sku"].tolist() == ["G500"] * 3 and (lines["source_updated_at"] == order["source_updated_at"]).all()


def test_printavo_quote_statuses():
    quotes = [{**PRINTAVO_INVOICE, "__typename": "Quote", "id": str(i), "status": {"name": name}}
              for i, name in enumerate(["Quote Sent", "Quote Approved", "Quote Declined", "Mockup Ready"])]
    out = mapped("printavo", "quotes", quotes)
    assert out["orders"]["kind"].tolist() == ["quote"] * 4
    assert out["orders"]["status"].tolist() == ["pending", "completed", "cancelled", "unknown"]


def test_printavo_customer():
    customer = {"__typename": "Customer", "id": "5000001", "companyName": "Riverside High School",
                "primaryContact": {"id": "6000010", "firstName": "Emily", "lastName": "Smith", "fullName": "Emily Smith",
                                   "email": "Emily.Smith@Example.org", "phone": "(512) 555-0101"},
                "billingAddress": {"address1": "10 Main St", "city": "Austin", "state": "TX", "countryIso": None,
                                   "country": "United States"},
                "timestamps": stamps("2023-05-01T13:00:00Z", "2025-01-15T16:30:00Z")}
    row = mapped("printavo", "customers", [customer])["customers"].iloc[0]
    assert [row[c] for c in ENTITY_COLUMNS["customers"]] == [
        "5000001", "emily.smith@example.org", "Emily", "Smith", "Emily Smith", "(512) 555-0101", "Austin", "US",
        ts("2023-05-01T13:00:00Z"), ts("2025-01-15T16:30:00Z")]


# ------------------------------------------------------------------------------------ Strapi


def test_strapi_v5_flat_and_v4_attributes_entries():
    v5 = {"id": 12, "documentId": "xk2bq9", "name": "Canvas Tote", "sku": "TOTE-1", "price": 24.5, "stock": 40,
          "category": {"id": 3, "documentId": "c3", "name": "Bags"}, "createdAt": "2025-01-10T08:00:00.000Z",
          "updatedAt": "2025-02-01T09:30:00.000Z", "publishedAt": "2025-01-11T08:00:00.000Z"}
    v4 = {"id": 7, "attributes": {"name": "Trucker Cap", "sku": "CAP-7", "price": "19.90", "stock": "5",
                                  "category": {"data": {"id": 2, "attributes": {"name": "Hats"}}},
                                  "createdAt": "2024-12-01T10:00:00.000Z", "updatedAt": "2024-12-05T10:00:00.000Z",
                                  "publishedAt": None}}
    products = mapped("strapi", "products", [v5, v4])["products"]
    assert [products.iloc[0][c] for c in ENTITY_COLUMNS["products"]] == [
        "xk2bq9", "TOTE-1", "Canvas Tote", "active", D("24.5"), "USD", 40, "Bags",
        ts("2025-01-10T08:00:00Z"), ts("2025-02-01T09:30:00Z")]
    assert [products.iloc[1][c] for c in ENTITY_COLUMNS["products"]] == [
        "7", "CAP-7", "Trucker Cap", "hidden", D("19.9"), "USD", 5, "Hats",
        ts("2024-12-01T10:00:00Z"), ts("2024-12-05T10:00:00Z")]


# ----------------------------------------------------------------------------------- sandbox


@pytest.fixture(scope="module")
def world() -> World:
    return World(SandboxConfig(days=4, salla_merchants=2, orders_per_day=15, printavo_invoices_per_day=6))


def _money(value) -> Decimal:
    return Decimal(str(value["amount"] if isinstance(value, dict) else value))


def test_sandbox_salla_payloads_map_without_dead_letters_and_totals_match(world):
    for m in world.merchants:
        details = [world.salla_order_full(m, o) for o in world.salla_orders(m)]
        assert details
        out = mapped("salla", "orders", details, merchant=m.merchant_id)
        orders, lines = out["orders"], out["order_lines"]
        assert len(orders) == len(details) and len(lines) == sum(len(d["items"]) for d in details)
        assert sum(orders["total"]) == sum(_money(d["amounts"]["total"]) for d in details)
        assert sum(lines["total"]) == sum(_money(i["amounts"]["total"]) for d in details for i in d["items"])
        # the order adds shipping and its tax to its lines: total = lines + shipping + (tax - lines' tax)
        # (as Python Decimals: Arrow's sum widens to decimal(38) and a further + would overflow it)
        per_order = lines[["order_source_id", "total", "tax"]].astype(object).groupby("order_source_id").sum()
        joined = orders.set_index("source_id").astype(object).join(per_order.add_suffix("_lines"))
        assert (joined["total"] == joined["total_lines"] + joined["shipping"] + joined["tax"] - joined["tax_lines"]).all()
        assert set(orders["status"]) <= ENUMS["status"] - {"unknown"}
        assert orders["source_updated_at"].notna().all() and (orders["merchant_id"] == m.merchant_id).all()

        products = mapped("salla", "products", world.salla_products(m), merchant=m.merchant_id)["products"]
        assert len(products) == len(world.salla_products(m)) and "unknown" not in set(products["status"])
        customers = mapped("salla", "customers", world.salla_customers(m), merchant=m.merchant_id)["customers"]
        assert len(customers) == len(world.salla_customers(m)) and customers["country"].str.len().eq(2).all()


@pytest.mark.parametrize(("kind", "entity"), [("Invoice", "invoices"), ("Quote", "quotes")])
def test_sandbox_printavo_payloads_map_without_dead_letters_and_totals_match(world, kind, entity):
    nodes = [world.printavo_order_plain(o) for o in world.printavo_orders(kind)]
    assert nodes
    out = mapped("printavo", entity, nodes)
    orders, lines = out["orders"], out["order_lines"]
    assert len(orders) == len(nodes)
    assert len(lines) == sum(len(g["lineItems"]["nodes"]) for n in nodes for g in n["lineItemGroups"]["nodes"])
    assert sum(orders["total"]) == sum(_money(n["total"]) for n in nodes)
    per_order = lines[["order_source_id", "total"]].astype(object).groupby("order_source_id")["total"].sum()
    subtotal = orders.set_index("source_id")["subtotal"].astype(object)
    assert subtotal.to_dict() == per_order.to_dict()  # price x items sums to the subtotal
    assert "unknown" not in set(orders["status"])


def test_sandbox_printavo_customers(world):
    source = world.printavo_customers()
    customers = mapped("printavo", "customers", source)["customers"]
    assert len(customers) == len(source) and customers["email"].notna().all() and set(customers["country"]) == {"US"}


def test_an_engine_version_change_changes_the_entity_mapping_fingerprint(monkeypatch):
    """Core re-maps an API source when its fingerprint changes: a fix in the engine must do that
    too, or rows mapped wrongly before the fix would stay wrong."""
    import kingtavo_pipeline.mapping as mapping
    from kingtavo_pipeline.transform.entities import EntityMapper

    mapper = EntityMapper({"customers": shipped_mappings()["salla_customers"]})
    before = mapper.fingerprint()
    assert mapper.fingerprint() == before  # stable while nothing changes
    monkeypatch.setattr(mapping, "ENGINE_VERSION", mapping.ENGINE_VERSION + 1)
    assert mapper.fingerprint() != before
