"""Printavo API v2: GraphQL executed by graphql-core against the published schema, over the seeded data.

``POST /printavo/api/v2`` with headers ``email`` and ``token``. Wrong or missing credentials answer
HTTP 401 with a GraphQL-shaped ``{"errors": [...]}`` body; more than ``printavo_requests`` per
``printavo_window_seconds`` per credential answer HTTP 429 with ``Retry-After``. Connections page
with offset cursors (base64 of the position, as graphql-ruby does): default 25 nodes, ``first`` /
``last`` clamped to 100. Lists sort by VISUAL_ID ascending unless ``sortOn``/``sortDescending`` say
otherwise. Schema drift renames a field in the schema itself (a query for the old name fails
validation, as against a real changed API) and adds fields to every object type.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
from collections.abc import Callable
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
import orjson
from graphql import (
    DocumentNode,
    FieldDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    NamedTypeNode,
    NameNode,
    Visitor,
    build_ast_schema,
    get_named_type,
    graphql_sync,
    parse,
    visit,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kingtavo_pipeline.sandbox.data import PRINTAVO_STATUSES, PrintavoOrder
from kingtavo_pipeline.sandbox.faults import break_printavo_order
from kingtavo_pipeline.sandbox.state import SandboxState, json_response

SCHEMA_FILE = Path(__file__).with_name("printavo_schema.graphql")
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
_MISSING = object()


def error_body(status: int, message: str) -> dict:
    return {"errors": [{"message": message, "extensions": {"code": str(status)}}]}


# ---------------------------------------------------------------- schema (with drift)


@lru_cache(maxsize=1)
def _document() -> DocumentNode:
    return parse(SCHEMA_FILE.read_text(encoding="utf-8"))


def _scalar_for(value: Any) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Int"
    if isinstance(value, float):
        return "Float"
    return "String"


class _Drift(Visitor):
    def __init__(self, renames: dict[str, str], adds: dict[str, str]):
        super().__init__()
        self.renames, self.adds = renames, adds

    def _fields(self, node: Any, add: bool) -> Any:
        fields = []
        for f in node.fields or ():
            if f.name.value in self.renames:
                f = copy.copy(f)
                f.name = NameNode(value=self.renames[f.name.value])
            fields.append(f)
        if add:
            names = {f.name.value for f in fields}
            for name, scalar in self.adds.items():
                if name not in names:
                    fields.append(
                        FieldDefinitionNode(
                            name=NameNode(value=name),
                            arguments=(),
                            directives=(),
                            type=NamedTypeNode(name=NameNode(value=scalar)),
                        )
                    )
        new = copy.copy(node)
        new.fields = tuple(fields)
        return new

    def enter_object_type_definition(self, node, *_):
        return self._fields(node, add=node.name.value != "Query")

    def enter_interface_type_definition(self, node, *_):
        return self._fields(node, add=False)


@lru_cache(maxsize=8)
def build_printavo_schema(
    renames: tuple[tuple[str, str], ...] = (), adds: tuple[tuple[str, str], ...] = ()
) -> GraphQLSchema:
    """The schema, with fields renamed (pairs old, new) and fields added (pairs name, scalar type)."""
    document = _document()
    if renames or adds:
        document = visit(document, _Drift(dict(renames), dict(adds)))
    return build_ast_schema(document)


# ---------------------------------------------------------------- connections


def encode_cursor(position: int) -> str:
    return base64.b64encode(str(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        return int(base64.b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise GraphQLError(f"Invalid cursor: {cursor!r}") from None


def paginate(nodes: list, args: dict[str, Any]) -> dict[str, Any]:
    """Relay connection over a list: ``after``/``before`` bound the slice, ``first``/``last`` cut it."""
    first, last = args.get("first"), args.get("last")
    for name, value in (("first", first), ("last", last)):
        if value is not None and value < 0:
            raise GraphQLError(f"Argument '{name}' on a connection must be >= 0.")
    start, end = 0, len(nodes)
    if args.get("after") is not None:
        start = min(max(decode_cursor(args["after"]), 0), end)
    if args.get("before") is not None:
        end = max(min(decode_cursor(args["before"]) - 1, end), start)
    if first is None and last is None:
        first = DEFAULT_PAGE_SIZE
    if first is not None:
        end = min(end, start + min(first, MAX_PAGE_SIZE))
    if last is not None:
        start = max(start, end - min(last, MAX_PAGE_SIZE))
    chunk = nodes[start:end]
    edges = [{"cursor": encode_cursor(start + i + 1), "node": node} for i, node in enumerate(chunk)]
    return {
        "nodes": chunk,
        "edges": edges,
        "totalNodes": len(nodes),
        "totalAmount": None,
        "pageInfo": {
            "hasNextPage": end < len(nodes),
            "hasPreviousPage": start > 0,
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


class Lazy:
    """A node rendered on first field access: filtering and paging happen before any rendering."""

    __slots__ = ("_render", "_value")

    def __init__(self, render: Callable[[], dict]):
        self._render = render
        self._value: dict | None = None

    def get(self, key: str, default: Any = None) -> Any:
        if self._value is None:
            self._value = self._render()
        return self._value.get(key, default)


def _parse_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        text = str(value).strip().replace("Z", "+00:00")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise GraphQLError(f"Invalid ISO8601DateTime: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------- the API


class PrintavoApi:
    def __init__(self, state: SandboxState):
        self.state = state
        self.world = state.world

    def routes(self) -> list[Route]:
        return [Route("/api/v2", self.endpoint, methods=["POST"])]

    async def endpoint(self, request: Request) -> Response:
        state = self.state
        injected = await state.inject(request, "printavo", error_body)
        if injected is not None:
            return injected
        creds = state.credentials
        email, token = request.headers.get("email", ""), request.headers.get("token", "")
        if email != creds.printavo_email or token != creds.printavo_token:
            state.log(request, "printavo", 401)
            message = "Unauthorized: the email and token headers do not match an API user."
            return json_response(error_body(401, message), 401)
        limit = state.printavo_limiter.hit(email)
        limit_window = state.config.printavo_window_seconds
        if not limit.allowed:
            state.log(request, "printavo", 429, email)
            message = f"Rate limit exceeded: {limit.limit} requests per {limit_window:g} seconds."
            return json_response(error_body(429, message), 429, {"Retry-After": str(limit.retry_after)})
        try:
            payload = orjson.loads(await request.body())
            if not isinstance(payload, dict):
                raise ValueError
        except ValueError:
            state.log(request, "printavo", 400, email)
            return json_response(error_body(400, "The request body must be a JSON object with a query."), 400)
        result = await anyio.to_thread.run_sync(self.execute, payload)
        state.log(request, "printavo", 200, email)
        return json_response(result)

    def execute(self, payload: dict[str, Any]) -> dict[str, Any]:
        query = payload.get("query")
        if not isinstance(query, str) or not query.strip():
            return {"errors": [{"message": "No query string was present"}]}
        variables = payload.get("variables")
        if isinstance(variables, str):  # some clients send variables as a JSON string
            try:
                variables = json.loads(variables or "{}")
            except ValueError:
                return {"errors": [{"message": "Variables are not valid JSON"}]}
        if variables is not None and not isinstance(variables, dict):
            return {"errors": [{"message": "Variables must be a JSON object"}]}
        f = self.state.faults.faults
        adds = {k: _scalar_for(v) for k, v in f.add_fields.items()}
        schema = build_printavo_schema(tuple(sorted(f.rename_fields.items())), tuple(sorted(adds.items())))
        run = _Execution(self, {v: k for k, v in f.rename_fields.items()}, dict(f.add_fields))
        result = graphql_sync(
            schema,
            query,
            root_value={},
            variable_values=variables or None,
            operation_name=payload.get("operationName"),
            field_resolver=run.resolve,
            type_resolver=lambda value, info, abstract: value.get("__typename"),
        )
        out: dict[str, Any] = {}
        if result.data is not None:
            out["data"] = result.data
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        return out

    # ------------------------------------------------------------ roots

    def order_node(self, o: PrintavoOrder) -> Lazy:
        world, faults = self.world, self.state.faults

        def render() -> dict:
            plain = world.printavo_order_plain(o)
            return break_printavo_order(plain) if faults.is_malformed("printavo", "orders", o.id) else plain

        return Lazy(render)

    def orders(self, kind: str | None, args: dict[str, Any]) -> list[Lazy]:
        world = self.world
        orders = world.printavo_orders(kind)
        states = {o.id: world.printavo_state(o) for o in orders}
        if ids := args.get("statusIds"):
            wanted = {str(i) for i in ids}
            orders = [o for o in orders if PRINTAVO_STATUSES[states[o.id][0]][0] in wanted]
        if ids := args.get("excludeStatusIds"):
            unwanted = {str(i) for i in ids}
            orders = [o for o in orders if PRINTAVO_STATUSES[states[o.id][0]][0] not in unwanted]
        if args.get("inProductionAfter") is not None:  # "due date after this date"
            after = _parse_datetime(args["inProductionAfter"]).timestamp()
            orders = [o for o in orders if o.due_ts > after]
        if args.get("inProductionBefore") is not None:  # "start date before this date"
            before = _parse_datetime(args["inProductionBefore"]).timestamp()
            orders = [o for o in orders if o.start_ts < before]
        if payment := args.get("paymentStatus"):
            orders = [o for o in orders if self._payment_status(o, states[o.id][1]) == payment]
        customers = world.printavo.customers
        if text := (args.get("query") or "").strip().lower():
            orders = [
                o
                for o in orders
                if text in f"{o.visual_id} {o.nickname} {customers[o.customer_index].company}".lower()
            ]
        elif tags := args.get("tags"):
            orders = [o for o in orders if set(tags) & set(o.tags)]
        sort_keys: dict[str, Callable[[PrintavoOrder], Any]] = {
            "VISUAL_ID": lambda o: int(o.visual_id),
            "CUSTOMER_DUE_AT": lambda o: (o.due_ts, int(o.visual_id)),
            "CUSTOMER_NAME": lambda o: (customers[o.customer_index].company, int(o.visual_id)),
            "STATUS": lambda o: (states[o.id][0], int(o.visual_id)),
            "OWNER": lambda o: int(o.visual_id),  # one owner in the sandbox
            "TOTAL": lambda o: (world.printavo_amounts(o)[4], int(o.visual_id)),
        }
        orders.sort(key=sort_keys[args.get("sortOn") or "VISUAL_ID"], reverse=bool(args.get("sortDescending")))
        return [self.order_node(o) for o in orders]

    def _payment_status(self, o: PrintavoOrder, share: float) -> str:
        if share >= 1.0:
            return "PAID"
        return "PARTIAL_PAYMENT" if share > 0 else "UNPAID"

    def order_by_id(self, order_id: Any, kind: str | None) -> Lazy | None:
        o = self.world.printavo_order(str(order_id))
        if o is None or (kind and o.kind != kind):
            return None
        return self.order_node(o)

    def customers(self) -> list[dict]:
        return self.world.printavo_customers()

    def customer_by_id(self, customer_id: Any) -> dict | None:
        try:
            index = int(customer_id) - 5_000_000
        except (TypeError, ValueError):
            return None
        shop = self.world.printavo
        if not 0 <= index < len(shop.customers):
            return None
        count = self.world.printavo_order_counts().get(index, 0)
        return self.world.printavo_customer_plain(shop.customers[index], count)

    def contacts(self, args: dict[str, Any]) -> list[dict]:
        world = self.world
        out = []
        for c in world.printavo.customers:
            for k in range(1 if args.get("primaryOnly") else len(c.contacts)):
                out.append({**world.printavo_contact_plain(c, k), "customer": world.printavo_customer_brief(c)})
        if text := (args.get("query") or "").strip().lower():
            out = [x for x in out if text in f"{x['fullName']} {x['email']} {x['customer']['companyName']}".lower()]
        sort_on = args.get("sortOn")
        keys: dict[str, Callable[[dict], Any]] = {
            "CUSTOMER_NAME": lambda x: x["customer"]["companyName"],
            "CONTACT_NAME": lambda x: x["fullName"],
            "CONTACT_EMAIL": lambda x: x["email"],
        }
        if sort_on in keys:
            out.sort(key=keys[sort_on], reverse=bool(args.get("sortDescending")))
        elif args.get("sortDescending"):
            out.reverse()
        return out

    def contact_by_id(self, contact_id: Any) -> dict | None:
        for x in self.contacts({}):
            if x["id"] == str(contact_id):
                return x
        return None

    def account(self) -> dict:
        stamp = self.world.printavo_status_plain(0)["timestamps"]
        return {
            "__typename": "Account",
            "id": "100001",
            "companyName": "Sandbox Print Co.",
            "companyEmail": self.state.credentials.printavo_email,
            "locale": "en-US",
            "phone": "(555) 010-0000",
            "website": None,
            "logoUrl": None,
            "paymentProcessorPresent": False,
            "features": [],
            "orderStatuses": self.world.printavo_statuses(),
            "timestamps": stamp,
        }

    def user(self) -> dict:
        return {
            "__typename": "User",
            "id": "200001",
            "name": "Sandbox Owner",
            "email": self.state.credentials.printavo_email,
            "phone": None,
            "timeZone": "America/Chicago",
            "timestamps": self.world.printavo_status_plain(0)["timestamps"],
        }


class _Execution:
    """Field resolution for one request: roots by name, dict lookups, back-references, connections."""

    def __init__(self, api: PrintavoApi, reverse_renames: dict[str, str], adds: dict[str, Any]):
        self.api = api
        self.reverse = reverse_renames
        self.adds = adds
        a = api
        self.roots: dict[str, Callable[..., Any]] = {
            "invoices": lambda **k: a.orders("Invoice", k),
            "quotes": lambda **k: a.orders("Quote", k),
            "orders": lambda **k: a.orders(None, k),
            "invoice": lambda id, **_: a.order_by_id(id, "Invoice"),
            "quote": lambda id, **_: a.order_by_id(id, "Quote"),
            "order": lambda id, **_: a.order_by_id(id, None),
            "customers": lambda **_: a.customers(),
            "customer": lambda id, **_: a.customer_by_id(id),
            "contacts": lambda **k: a.contacts(k),
            "contact": lambda id, **_: a.contact_by_id(id),
            "statuses": lambda type=None, **_: a.world.printavo_statuses(type),
            "status": lambda id, **_: next((s for s in a.world.printavo_statuses() if s["id"] == str(id)), None),
            "account": lambda **_: a.account(),
            "user": lambda **_: a.user(),
        }
        self.lookups: dict[tuple[str, str], Callable[[Any], Any]] = {
            ("Contact", "customer"): self._contact_customer,
            ("Contact", "orders"): lambda src: self._orders_of(contact_id=src.get("id")),
            ("Contact", "orderCount"): lambda src: len(self._orders_of(contact_id=src.get("id"))),
            ("Customer", "contacts"): lambda src: (self._customer(src) or {}).get("contacts"),
            ("Customer", "primaryContact"): lambda src: (self._customer(src) or {}).get("primaryContact"),
            ("Customer", "orderCount"): lambda src: (self._customer(src) or {}).get("orderCount"),
            ("Customer", "orders"): lambda src: self._orders_of(customer_id=src.get("id")),
            ("LineItemGroup", "order"): lambda src: a.order_by_id(int(src.get("id")) // 10, None),
            ("LineItem", "lineItemGroup"): self._line_item_group,
            ("LineItemGroup", "enabledColumns"): lambda src: {
                "category": True, "color": True, "itemNumber": True, "markupPercentage": False,
                "sizes": ["size_s", "size_m", "size_l", "size_xl", "size_2xl", "size_other"],
            },
        }

    def resolve(self, source: Any, info: Any, **args: Any) -> Any:
        name = info.field_name
        if name in self.adds:
            value = self.adds[name]
            return value if isinstance(value, (str, int, float, bool)) or value is None else json.dumps(value)
        key = self.reverse.get(name, name)
        parent = info.parent_type.name
        if parent == "Query":
            root = self.roots.get(key)
            value = root(**args) if root else None
        else:
            value = source.get(key, _MISSING)
            if value is _MISSING:
                lookup = self.lookups.get((parent, key))
                value = lookup(source) if lookup else None
        if get_named_type(info.return_type).name.endswith("Connection"):
            nodes = value.get("nodes", []) if isinstance(value, dict) else (value or [])
            return paginate(nodes, args)
        return value

    def _customer(self, src: Any) -> dict | None:
        return self.api.customer_by_id(src.get("id"))

    def _contact_customer(self, src: Any) -> dict | None:
        try:
            index = (int(src.get("id")) - 6_000_000) // 10
        except (TypeError, ValueError):
            return None
        return self.api.customer_by_id(5_000_000 + index)

    def _orders_of(self, customer_id: Any = None, contact_id: Any = None) -> list[Lazy]:
        world = self.api.world
        out = []
        for o in world.printavo_orders():
            c = world.printavo.customers[o.customer_index]
            if customer_id is not None and c.id != str(customer_id):
                continue
            if contact_id is not None and c.contacts[o.contact_index].id != str(contact_id):
                continue
            out.append(self.api.order_node(o))
        return out

    def _line_item_group(self, src: Any) -> dict | None:
        group_id = str(int(src.get("id")) // 10)
        order = self.api.order_by_id(int(group_id) // 10, None)
        if order is None:
            return None
        return next((g for g in order.get("lineItemGroups")["nodes"] if g["id"] == group_id), None)
