"""Salla Merchant (Admin) API v2 and its OAuth2 token endpoint, as Starlette routes.

Mounted at ``/salla``: ``/salla/admin/v2/...`` and ``/salla/oauth2/token``. Envelope, pagination,
date objects, Bearer auth, per-store ``X-RateLimit-*`` and 429s follow Salla's documentation;
``per_page`` above 60 is clamped to 60 (``pagination.perPage`` says so).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from datetime import date
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kingtavo_pipeline.sandbox.auth import LimitResult
from kingtavo_pipeline.sandbox.data import SALLA_STATUSES, SallaCustomer, SallaMerchant, SallaOrder
from kingtavo_pipeline.sandbox.faults import break_salla_customer, break_salla_order, break_salla_product
from kingtavo_pipeline.sandbox.state import SandboxState, json_response

DEFAULT_PER_PAGE = 15
MAX_PER_PAGE = 60
ORDER_SORTS = {f"{k}-{d}" for k in ("id", "total", "updated_at", "created_at") for d in ("asc", "desc")}
YMD = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields


def invalid(field: str, message: str) -> ApiError:
    """A 422 naming the field, as Laravel's validation answers."""
    return ApiError(422, "validation_failed", "The given data was invalid.", {field: [message]})


def error_body(status: int, message: str, code: str | None = None, fields: dict[str, list[str]] | None = None) -> dict:
    codes = {401: "Unauthorized", 404: "NotFound", 422: "validation_failed", 429: "too_many_requests"}
    error: dict[str, Any] = {"code": code or codes.get(status, "error"), "message": message}
    if fields:
        error["fields"] = fields
    return {"status": status, "success": False, "error": error}


def _rate_headers(limit: LimitResult) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit.limit),
        "X-RateLimit-Remaining": str(max(0, limit.remaining)),
        "X-RateLimit-Reset": str(limit.reset_epoch),
    }


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid(name, f"The {name} must be an integer.") from None


def _date_param(request: Request, name: str) -> date | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        if not YMD.match(raw):
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise invalid(name, f"The {name} does not match the format Y-m-d.") from None


class SallaApi:
    def __init__(self, state: SandboxState):
        self.state = state
        self.world = state.world

    def routes(self) -> list[Route]:
        return [
            Route("/admin/v2/orders", self._wrap(self.orders)),
            Route("/admin/v2/orders/items", self._wrap(self.order_items)),
            Route("/admin/v2/orders/{order_id}", self._wrap(self.order)),
            Route("/admin/v2/products", self._wrap(self.products)),
            Route("/admin/v2/products/{product_id}", self._wrap(self.product)),
            Route("/admin/v2/customers", self._wrap(self.customers, customers=True)),
            Route("/admin/v2/customers/{customer_id}", self._wrap(self.customer, customers=True)),
            Route("/oauth2/token", self.token, methods=["POST"]),
        ]

    # ------------------------------------------------------------ plumbing

    def _wrap(self, handler: Callable[[Request, SallaMerchant], dict], customers: bool = False):
        state = self.state

        async def endpoint(request: Request) -> Response:
            injected = await state.inject(request, "salla", error_body)
            if injected is not None:
                return injected
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            merchant_id, why = (None, "Authorization header is missing or not a Bearer token")
            if scheme.lower() == "bearer" and token:
                merchant_id, why = state.oauth.authenticate(token.strip())
            if merchant_id is None:
                state.log(request, "salla", 401)
                return json_response(error_body(401, why, "Unauthorized"), 401)
            limit = state.salla_limiter.hit(merchant_id)
            if limit.allowed and customers:
                extra = state.salla_customers_limiter.hit(merchant_id)
                if not extra.allowed:
                    limit = extra
            headers = _rate_headers(limit)
            if not limit.allowed:
                headers["Retry-After"] = str(limit.retry_after)
                state.log(request, "salla", 429, merchant_id)
                return json_response(error_body(429, "Too Many Attempts."), 429, headers)
            try:
                body = handler(request, self.world.merchant(merchant_id))
                status = 200
            except ApiError as exc:
                body, status = error_body(exc.status, exc.message, exc.code, exc.fields), exc.status
            state.log(request, "salla", status, merchant_id)
            return json_response(body, status, headers)

        return endpoint

    def _out(self, entity: str, record_id: object, obj: dict, breaker: Callable[[dict], dict]) -> dict:
        faults = self.state.faults
        if faults.is_malformed("salla", entity, record_id):
            obj = breaker(obj)
        return faults.drift(obj, "salla", entity, record_id) if faults.drifting else obj

    def _page(self, request: Request, items: list, render: Callable[[Any], dict]) -> dict:
        per_page = min(max(_int_param(request, "per_page", DEFAULT_PER_PAGE), 1), MAX_PER_PAGE)
        page = max(_int_param(request, "page", 1), 1)
        total = len(items)
        pages = max(1, math.ceil(total / per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        links: dict[str, str] = {}
        if page < pages:
            links["next"] = str(request.url.include_query_params(page=page + 1))
        if page > 1:
            links["previous"] = str(request.url.include_query_params(page=min(page - 1, pages)))
        return {
            "status": 200,
            "success": True,
            "data": [render(x) for x in chunk],
            "pagination": {
                "count": len(chunk),
                "total": total,
                "perPage": per_page,
                "currentPage": page,
                "totalPages": pages,
                "links": links,
            },
        }

    # ------------------------------------------------------------ orders

    def orders(self, request: Request, m: SallaMerchant) -> dict:
        q = request.query_params
        start, end = _date_param(request, "from_date"), _date_param(request, "to_date")
        sort_by = q.get("sort_by") or "id-desc"
        if sort_by not in ORDER_SORTS:
            raise invalid("sort_by", "The selected sort by is invalid.")
        orders = self.world.salla_orders(m, start, end)
        states = {o.id: self.world.salla_state(m, o) for o in orders}
        if status := q.get("status"):
            wanted = {s.strip() for s in status.split(",")}
            # by slug or by status id
            orders = [o for o in orders if {states[o.id][0], str(SALLA_STATUSES[states[o.id][0]][0])} & wanted]
        if customer_id := q.get("customer_id"):
            orders = [o for o in orders if str(m.customers[o.customer_index].id) == customer_id]
        if reference_id := q.get("reference_id"):
            orders = [o for o in orders if str(o.reference_id) == reference_id]
        if payment_method := q.get("payment_method"):
            orders = [o for o in orders if o.payment_method == payment_method]
        if keyword := (q.get("keyword") or "").strip().lower():
            orders = [o for o in orders if keyword in _order_text(m, o)]
        field, _, direction = sort_by.partition("-")
        keys: dict[str, Callable[[SallaOrder], Any]] = {
            "id": lambda o: o.id,
            "created_at": lambda o: (o.created_ts, o.id),
            "updated_at": lambda o: (states[o.id][1], o.id),
            "total": lambda o: (o.total_cents, o.id),
        }
        orders.sort(key=keys[field], reverse=direction == "desc")
        return self._page(
            request, orders, lambda o: self._out("orders", o.id, self.world.salla_order_row(m, o), break_salla_order)
        )

    def _order_or_404(self, m: SallaMerchant, order_id: str | None) -> SallaOrder:
        order = self.world.salla_order(m, order_id) if order_id and order_id.isdigit() else None
        if order is None:
            raise ApiError(404, "NotFound", "The order does not exist.")
        return order

    def order(self, request: Request, m: SallaMerchant) -> dict:
        o = self._order_or_404(m, request.path_params["order_id"])
        data = self._out("orders", o.id, self.world.salla_order_detail(m, o), break_salla_order)
        return {"status": 200, "success": True, "data": data}

    def order_items(self, request: Request, m: SallaMerchant) -> dict:
        order_id = request.query_params.get("order_id")
        if not order_id:
            raise invalid("order_id", "The order id field is required.")
        o = self._order_or_404(m, order_id)
        faults = self.state.faults
        items = self.world.salla_order_items(m, o)
        # an order's lines drift with their order
        data = [faults.drift(i, "salla", "orders", o.id) for i in items] if faults.drifting else items
        return {"status": 200, "success": True, "data": data}

    # ------------------------------------------------------------ products and customers

    def products(self, request: Request, m: SallaMerchant) -> dict:
        q = request.query_params
        indices = [i for i, p in enumerate(m.products) if p.created_ts <= self.world.now_ts]
        if status := q.get("status"):
            indices = [i for i in indices if m.products[i].status == status]
        if keyword := (q.get("keyword") or "").strip().lower():
            indices = [i for i in indices if keyword in f"{m.products[i].name} {m.products[i].sku}".lower()]
        return self._page(
            request,
            indices,
            lambda i: self._out("products", m.products[i].id, self.world.salla_product(m, i), break_salla_product),
        )

    def product(self, request: Request, m: SallaMerchant) -> dict:
        raw = request.path_params["product_id"]
        for i, p in enumerate(m.products):
            if str(p.id) == raw and p.created_ts <= self.world.now_ts:
                data = self._out("products", p.id, self.world.salla_product(m, i), break_salla_product)
                return {"status": 200, "success": True, "data": data}
        raise ApiError(404, "NotFound", "The product does not exist.")

    def customers(self, request: Request, m: SallaMerchant) -> dict:
        q = request.query_params
        indices = [i for i, c in enumerate(m.customers) if c.created_ts <= self.world.now_ts]
        if keyword := (q.get("keyword") or "").strip().lower():
            indices = [i for i in indices if keyword in _customer_text(m.customers[i])]
        return self._page(
            request,
            indices,
            lambda i: self._out("customers", m.customers[i].id, self.world.salla_customer(m, i), break_salla_customer),
        )

    def customer(self, request: Request, m: SallaMerchant) -> dict:
        raw = request.path_params["customer_id"]
        for i, c in enumerate(m.customers):
            if str(c.id) == raw and c.created_ts <= self.world.now_ts:
                data = self._out("customers", c.id, self.world.salla_customer(m, i), break_salla_customer)
                return {"status": 200, "success": True, "data": data}
        raise ApiError(404, "NotFound", "The customer does not exist.")

    # ------------------------------------------------------------ OAuth2

    async def token(self, request: Request) -> Response:
        """POST /oauth2/token, ``grant_type=refresh_token``; form or JSON body, client credentials in
        the body or HTTP Basic. Not subject to the fault switches (see the README)."""
        params = await _token_params(request)
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
                params.setdefault("client_id", cid)
                params.setdefault("client_secret", secret)
            except (ValueError, UnicodeDecodeError):
                pass
        if params.get("grant_type") != "refresh_token":
            self.state.log(request, "salla_oauth", 400)
            body = _oauth_body("unsupported_grant_type", "Only grant_type=refresh_token is supported.")
            return json_response(body, 400)
        if not params.get("refresh_token"):
            self.state.log(request, "salla_oauth", 400)
            return json_response(_oauth_body("invalid_request", "The refresh_token parameter is required."), 400)
        result = self.state.oauth.refresh(
            params.get("client_id", ""), params.get("client_secret", ""), params["refresh_token"]
        )
        self.state.log(request, "salla_oauth", result.status)
        return json_response(result.body, result.status, {"Cache-Control": "no-store"})


async def _token_params(request: Request) -> dict[str, str]:
    if "application/json" in request.headers.get("content-type", ""):
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return {}
        return {k: str(v) for k, v in body.items()} if isinstance(body, dict) else {}
    # urlencoded parsed here: Starlette's form parser needs python-multipart, not a dependency
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))


def _oauth_body(error: str, description: str) -> dict[str, str]:
    return {"error": error, "error_description": description, "message": description}


def _customer_text(c: SallaCustomer) -> str:
    return f"{c.first_name} {c.last_name} {c.email} {c.mobile}".lower()


def _order_text(m: SallaMerchant, o: SallaOrder) -> str:
    c = m.customers[o.customer_index]
    return f"{o.reference_id} {o.id} {c.first_name} {c.last_name} {c.mobile} {c.email}".lower()
