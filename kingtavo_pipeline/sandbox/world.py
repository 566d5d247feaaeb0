"""The sandbox's current state: seeded data cut at the sandbox clock, plus applied updates, rendered
as the two APIs print their objects. Pure: no HTTP here (the API modules and the ground truth both
render through this, so they always agree)."""

from __future__ import annotations

import threading
from datetime import date, timedelta, timezone
from typing import Any

from kingtavo_pipeline.sandbox.config import SandboxConfig
from kingtavo_pipeline.sandbox.data import (
    PRINTAVO_STATUS_INDEX,
    PRINTAVO_STATUSES,
    RIYADH,
    SALLA_STATUSES,
    SAR,
    VAT_PERCENT,
    PrintavoCustomer,
    PrintavoOrder,
    PrintavoShop,
    SallaMerchant,
    SallaOrder,
    amount,
    day_start,
    daterange,
    iso_utc,
    money,
    percent_of,
    printavo_category_id,
    riyadh_date,
    rng_for,
    salla_date,
    utc_date,
)


class World:
    def __init__(self, config: SandboxConfig):
        self.config = config
        rng = rng_for("salla-merchant-ids", config.seed)
        ids: list[str] = []
        while len(ids) < config.salla_merchants:
            candidate = str(rng.randint(1_000_000_000, 1_999_999_999))
            if candidate not in ids:
                ids.append(candidate)
        self.merchants = [SallaMerchant(config, i, mid) for i, mid in enumerate(ids)]
        self._by_id = {m.merchant_id: m for m in self.merchants}
        self.printavo = PrintavoShop(config)
        # "now" is the end of `today` in the stores' zone (Asia/Riyadh) until the clock advances
        self.base_now_ts = day_start(config.today + timedelta(days=1), RIYADH) - 1
        self._offset = 0
        self._lock = threading.RLock()
        self._salla_updates: dict[tuple[int, int], list[tuple[int, str | None]]] = {}
        self._printavo_updates: dict[str, list[tuple[int, int, float]]] = {}

    # ------------------------------------------------------------ clock

    @property
    def now_ts(self) -> int:
        return self.base_now_ts + self._offset

    @property
    def clock_offset(self) -> int:
        """Seconds the clock has been advanced (token expiry counts them too)."""
        return self._offset

    def advance(self, days: float = 0, seconds: float = 0) -> int:
        if days < 0 or seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        with self._lock:
            self._offset += int(days * 86400 + seconds)
            return self.now_ts

    # ------------------------------------------------------------ Salla

    def merchant(self, merchant_id: str | int) -> SallaMerchant:
        try:
            return self._by_id[str(merchant_id)]
        except KeyError:
            raise KeyError(f"no sandbox merchant {merchant_id}") from None

    def salla_orders(self, m: SallaMerchant, start: date | None = None, end: date | None = None) -> list[SallaOrder]:
        """Orders that exist now, created (Asia/Riyadh date) within [start, end], oldest first."""
        now = self.now_ts
        first = max(m.first_day, start or m.first_day)
        last = min(riyadh_date(now), end or riyadh_date(now))
        out: list[SallaOrder] = []
        for day in daterange(first, last):
            out.extend(o for o in m.orders_on(day) if o.created_ts <= now)
        return out

    def salla_order(self, m: SallaMerchant, order_id: int | str) -> SallaOrder | None:
        try:
            order = m.order(int(order_id))
        except ValueError:
            return None
        if order is None or order.created_ts > self.now_ts or riyadh_date(order.created_ts) < m.first_day:
            return None
        return order

    def salla_state(self, m: SallaMerchant, o: SallaOrder) -> tuple[str, int, int | None]:
        """(status slug, updated_at, first completion time) as of now."""
        manual = self._salla_updates.get((m.index, o.id), [])
        # an applied update ends the drawn schedule: what happens next is up to the caller
        cut = min(self.now_ts, manual[0][0] - 1) if manual else self.now_ts
        events = [e for e in o.events if e[0] <= cut] + manual
        status = next(s for _, s in reversed(events) if s is not None)
        completed = next((t for t, s in events if s == "completed"), None)
        return status, events[-1][0], completed

    def update_salla_order(self, merchant_id: str, order_id: int | str, status: str | None = None) -> dict[str, Any]:
        """Apply an update (a status change, or None for an edit) now; returns the new detail with items."""
        if status is not None and status not in SALLA_STATUSES:
            raise ValueError(f"unknown Salla status slug {status!r}; known: {sorted(SALLA_STATUSES)}")
        m = self.merchant(merchant_id)
        o = self.salla_order(m, order_id)
        if o is None:
            raise KeyError(f"no order {order_id} for merchant {merchant_id}")
        with self._lock:
            _, updated, _ = self.salla_state(m, o)
            at = max(self.now_ts, updated + 1)
            self._salla_updates.setdefault((m.index, o.id), []).append((at, status))
        return self.salla_order_full(m, o)

    def _status(self, slug: str) -> dict[str, Any]:
        status_id, name = SALLA_STATUSES[slug]
        return {"id": status_id, "name": name, "slug": slug, "customized": {"id": status_id, "name": name}}

    def _salla_customer_brief(self, m: SallaMerchant, o: SallaOrder) -> dict[str, Any]:
        c = m.customers[o.customer_index]
        return {
            "id": c.id,
            "full_name": f"{c.first_name} {c.last_name}",
            "first_name": c.first_name,
            "last_name": c.last_name,
            "mobile": c.mobile,
            "mobile_code": "+966",
            "email": c.email,
            "gender": c.gender,
            "city": c.city,
            "country": c.country,
            "country_code": c.country_code,
        }

    def salla_order_row(self, m: SallaMerchant, o: SallaOrder) -> dict[str, Any]:
        """A row of GET /orders: a summary, without updated_at (as Salla's list is)."""
        status, _, _ = self.salla_state(m, o)
        return {
            "id": o.id,
            "reference_id": o.reference_id,
            "total": money(o.total_cents),
            "date": salla_date(o.created_ts),
            "status": self._status(status),
            "can_cancel": status in ("payment_pending", "under_review"),
            "can_reorder": True,
            "is_pending_payment": status == "payment_pending",
            "payment_method": o.payment_method,
            "items": [{"name": m.products[li.product_index].name, "quantity": li.quantity} for li in o.lines],
            "customer": self._salla_customer_brief(m, o),
        }

    def salla_order_detail(self, m: SallaMerchant, o: SallaOrder) -> dict[str, Any]:
        """GET /orders/{id} ``data``."""
        status, updated, completed = self.salla_state(m, o)
        c = m.customers[o.customer_index]
        discounts = (
            [{"title": f"Coupon {o.coupon}", "type": "coupon", "code": o.coupon, "discount": money(o.discount_cents)}]
            if o.coupon
            else []
        )
        return {
            "id": o.id,
            "reference_id": o.reference_id,
            "date": salla_date(o.created_ts),
            "updated_at": salla_date(updated),
            "first_complete_at": salla_date(completed) if completed else None,
            "source": "store",
            "source_device": o.source_device,
            "payment_method": o.payment_method,
            "currency": SAR,
            "amounts": {
                "sub_total": money(o.sub_total_cents),
                "shipping_cost": money(o.shipping_cents),
                "cash_on_delivery": money(0),
                "tax": {"percent": f"{VAT_PERCENT:.2f}", "amount": money(o.tax_cents)},
                "discounts": discounts,
                "total": money(o.total_cents),
            },
            "status": self._status(status),
            "can_cancel": status in ("payment_pending", "under_review"),
            "can_reorder": True,
            "is_pending_payment": status == "payment_pending",
            "customer": self._salla_customer_brief(m, o),
            "shipping": {
                "company": "SMSA" if o.shipping_cents else "Free Shipping",
                "receiver": {"name": f"{c.first_name} {c.last_name}", "phone": f"+966{c.mobile}"},
                "address": {"country": c.country, "country_code": c.country_code, "city": c.city},
            },
            "tags": [],
        }

    def salla_order_items(self, m: SallaMerchant, o: SallaOrder) -> list[dict[str, Any]]:
        """GET /orders/items?order_id= ``data``."""
        out = []
        for li in o.lines:
            p = m.products[li.product_index]
            out.append(
                {
                    "id": li.id,
                    "name": p.name,
                    "sku": p.sku,
                    "product_id": p.id,
                    "product_type": "product",
                    "quantity": li.quantity,
                    "currency": SAR,
                    "weight": p.weight,
                    "amounts": {
                        "price_without_tax": money(li.unit_cents),
                        "total_discount": money(li.discount_cents),
                        "tax": {"percent": f"{VAT_PERCENT:.2f}", "amount": money(li.tax_cents)},
                        "total": money(li.net_cents + li.tax_cents),
                    },
                    "options": [],
                    "notes": "",
                }
            )
        return out

    def salla_order_full(self, m: SallaMerchant, o: SallaOrder) -> dict[str, Any]:
        """The detail with its lines under ``items``: what a connector lands as one raw record."""
        return {**self.salla_order_detail(m, o), "items": self.salla_order_items(m, o)}

    def salla_product(self, m: SallaMerchant, index: int) -> dict[str, Any]:
        p = m.products[index]
        return {
            "id": p.id,
            "type": "product",
            "name": p.name,
            "sku": p.sku,
            "price": money(p.price_cents),
            "regular_price": money(p.price_cents),
            "sale_price": money(0),
            "status": p.status,
            "is_available": p.status == "sale",
            "quantity": p.quantity,
            "unlimited_quantity": False,
            "weight": p.weight,
            "categories": [{"id": p.category_id, "name": p.category}],
            "created_at": salla_date(p.created_ts),
            "updated_at": salla_date(p.updated_ts),
        }

    def salla_products(self, m: SallaMerchant) -> list[dict[str, Any]]:
        return [self.salla_product(m, i) for i, p in enumerate(m.products) if p.created_ts <= self.now_ts]

    def salla_customer(self, m: SallaMerchant, index: int) -> dict[str, Any]:
        c = m.customers[index]
        return {
            "id": c.id,
            "first_name": c.first_name,
            "last_name": c.last_name,
            "full_name": f"{c.first_name} {c.last_name}",
            "mobile": c.mobile,
            "mobile_code": "+966",
            "email": c.email,
            "gender": c.gender,
            "city": c.city,
            "country": c.country,
            "country_code": c.country_code,
            "groups": [],
            "created_at": salla_date(c.created_ts),
            "updated_at": salla_date(c.updated_ts),
        }

    def salla_customers(self, m: SallaMerchant) -> list[dict[str, Any]]:
        return [self.salla_customer(m, i) for i, c in enumerate(m.customers) if c.created_ts <= self.now_ts]

    # ------------------------------------------------------------ Printavo

    def printavo_orders(self, kind: str | None = None) -> list[PrintavoOrder]:
        """Invoices and/or quotes that exist now, oldest first."""
        now = self.now_ts
        shop = self.printavo
        out: list[PrintavoOrder] = []
        for day in daterange(shop.first_day, utc_date(now)):
            out.extend(o for o in shop.orders_on(day) if o.created_ts <= now and (kind is None or o.kind == kind))
        return out

    def printavo_order(self, order_id: str) -> PrintavoOrder | None:
        o = self.printavo.order(order_id)
        if o is None or o.created_ts > self.now_ts or utc_date(o.created_ts) < self.printavo.first_day:
            return None
        return o

    def printavo_state(self, o: PrintavoOrder) -> tuple[int, float, int]:
        """(status index, share paid, updatedAt) as of now."""
        manual = self._printavo_updates.get(o.id, [])
        cut = min(self.now_ts, manual[0][0] - 1) if manual else self.now_ts
        events = [e for e in o.events if e[0] <= cut] + manual
        return events[-1][1], events[-1][2], events[-1][0]

    def update_printavo_order(
        self, order_id: str, status: str | None = None, paid: float | None = None
    ) -> dict[str, Any]:
        """Apply an update now (status by name or id, share paid); returns the new plain order."""
        o = self.printavo_order(str(order_id))
        if o is None:
            raise KeyError(f"no Printavo order {order_id}")
        with self._lock:
            index, share, updated = self.printavo_state(o)
            if status is not None:
                index = self._printavo_status_index(status)
            at = max(self.now_ts, updated + 1)
            self._printavo_updates.setdefault(o.id, []).append((at, index, share if paid is None else paid))
        return self.printavo_order_plain(o)

    @staticmethod
    def _printavo_status_index(status: str) -> int:
        if status in PRINTAVO_STATUS_INDEX:
            return PRINTAVO_STATUS_INDEX[status]
        for i, s in enumerate(PRINTAVO_STATUSES):
            if s[0] == str(status):
                return i
        raise ValueError(f"unknown Printavo status {status!r}")

    def printavo_status_plain(self, index: int) -> dict[str, Any]:
        sid, name, color, kind = PRINTAVO_STATUSES[index]
        ts = iso_utc(day_start(self.printavo.first_day, timezone.utc) - 400 * 86400)
        return {
            "__typename": "Status",
            "id": sid,
            "name": name,
            "color": color,
            "position": index + 1,
            "type": kind,
            "timestamps": {"createdAt": ts, "updatedAt": ts},
        }

    def printavo_statuses(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [self.printavo_status_plain(i) for i, s in enumerate(PRINTAVO_STATUSES) if kind in (None, s[3])]

    def _address(self, c: PrintavoCustomer) -> dict[str, Any]:
        return {
            "address1": c.address1,
            "address2": None,
            "city": c.city,
            "state": c.state,
            "stateIso": c.state,
            "zipCode": c.zip_code,
            "country": "United States",
            "countryIso": "US",
            "companyName": c.company,
            "customerName": c.company,
            "timestamps": {"createdAt": iso_utc(c.created_ts), "updatedAt": iso_utc(c.updated_ts)},
        }

    def printavo_contact_plain(self, c: PrintavoCustomer, k: int) -> dict[str, Any]:
        ct = c.contacts[k]
        return {
            "__typename": "Contact",
            "id": ct.id,
            "firstName": ct.first_name,
            "lastName": ct.last_name,
            "fullName": f"{ct.first_name} {ct.last_name}",
            "email": ct.email,
            "phone": ct.phone,
            "fax": None,
            "timestamps": {"createdAt": iso_utc(ct.created_ts), "updatedAt": iso_utc(ct.updated_ts)},
        }

    def printavo_customer_brief(self, c: PrintavoCustomer) -> dict[str, Any]:
        return {
            "__typename": "Customer",
            "id": c.id,
            "companyName": c.company,
            "taxExempt": c.tax_exempt,
            "salesTax": c.sales_tax,
            "internalNote": None,
            "resaleNumber": None,
            "publicUrl": f"/customers/{c.id}",
            "billingAddress": self._address(c),
            "shippingAddress": self._address(c),
            "timestamps": {"createdAt": iso_utc(c.created_ts), "updatedAt": iso_utc(c.updated_ts)},
        }

    def printavo_customer_plain(self, c: PrintavoCustomer, order_count: int | None = None) -> dict[str, Any]:
        contacts = [self.printavo_contact_plain(c, k) for k in range(len(c.contacts))]
        out = {**self.printavo_customer_brief(c), "primaryContact": contacts[0], "contacts": {"nodes": contacts}}
        if order_count is not None:
            out["orderCount"] = order_count
        return out

    def printavo_order_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for o in self.printavo_orders():
            counts[o.customer_index] = counts.get(o.customer_index, 0) + 1
        return counts

    def printavo_customers(self) -> list[dict[str, Any]]:
        counts = self.printavo_order_counts()
        return [self.printavo_customer_plain(c, counts.get(c.index, 0)) for c in self.printavo.customers]

    def printavo_amounts(self, o: PrintavoOrder) -> tuple[int, int, int, int, int]:
        """(subtotal, discount, untaxed, sales tax, total) in cents."""
        customer = self.printavo.customers[o.customer_index]
        subtotal = o.subtotal_cents
        discount = percent_of(subtotal, o.discount_percent)
        untaxed = subtotal - discount
        tax = 0 if customer.tax_exempt else percent_of(untaxed, customer.sales_tax)
        return subtotal, discount, untaxed, tax, untaxed + tax

    def printavo_order_plain(self, o: PrintavoOrder) -> dict[str, Any]:
        """An Invoice/Quote node with every scalar and its nested groups and line items
        (connections as ``{"nodes": [...]}``)."""
        status_index, paid_share, updated = self.printavo_state(o)
        customer = self.printavo.customers[o.customer_index]
        subtotal, discount, untaxed, tax, total = self.printavo_amounts(o)
        paid = percent_of(total, paid_share * 100)
        created = iso_utc(o.created_ts)
        stamps = {"createdAt": created, "updatedAt": iso_utc(updated)}
        groups = [
            {
                "__typename": "LineItemGroup",
                "id": g.id,
                "position": g.position,
                "timestamps": {"createdAt": created, "updatedAt": created},
                "lineItems": {
                    "nodes": [
                        {
                            "__typename": "LineItem",
                            "id": li.id,
                            "position": li.position,
                            "description": li.description,
                            "itemNumber": li.item_number,
                            "color": li.color,
                            "items": li.items,
                            "price": amount(li.price_cents),
                            "sizes": [{"size": s, "count": n} for s, n in li.sizes],
                            "taxed": not customer.tax_exempt,
                            "merch": False,
                            "markupPercentage": None,
                            "productStatus": None,
                            "category": {
                                "id": printavo_category_id(li.category),
                                "name": li.category,
                                "timestamps": {"createdAt": created, "updatedAt": created},
                            },
                            "timestamps": {"createdAt": created, "updatedAt": created},
                        }
                        for li in g.line_items
                    ]
                },
            }
            for g in o.groups
        ]
        path = "invoice" if o.kind == "Invoice" else "quote"
        contact = {
            **self.printavo_contact_plain(customer, o.contact_index),
            "customer": self.printavo_customer_brief(customer),
        }
        return {
            "__typename": o.kind,
            "id": o.id,
            "visualId": o.visual_id,
            "nickname": o.nickname,
            "createdAt": utc_date(o.created_ts).isoformat(),
            "invoiceAt": utc_date(o.created_ts).isoformat(),
            "startAt": iso_utc(o.start_ts),
            "dueAt": iso_utc(o.due_ts),
            "customerDueAt": utc_date(o.due_ts).isoformat(),
            "paymentDueAt": (utc_date(o.created_ts) + timedelta(days=30)).isoformat(),
            "status": self.printavo_status_plain(status_index),
            "contact": contact,
            "lineItemGroups": {"nodes": groups},
            "subtotal": amount(subtotal),
            "discount": float(o.discount_percent),
            "discountAmount": amount(discount),
            "discountAsPercentage": True,
            "salesTax": customer.sales_tax,
            "salesTaxAmount": amount(tax),
            "total": amount(total),
            "totalUntaxed": amount(untaxed),
            "totalQuantity": o.quantity,
            "amountPaid": amount(paid),
            "amountOutstanding": amount(total - paid),
            "paidInFull": paid >= total,
            "tags": list(o.tags),
            "merch": False,
            "customerNote": None,
            "productionNote": None,
            "visualPoNumber": None,
            "publicHash": f"{int(o.id) * 2654435761 % 2**32:08x}",
            "url": f"/{path}s/{o.id}",
            "publicUrl": f"/{path}s/{o.id}/public",
            "publicPdf": f"/{path}s/{o.id}.pdf",
            "packingSlipUrl": f"/{path}s/{o.id}/packing_slip",
            "workorderUrl": f"/{path}s/{o.id}/workorder",
            "billingAddress": self._address(customer),
            "shippingAddress": self._address(customer),
            "timestamps": stamps,
        }
