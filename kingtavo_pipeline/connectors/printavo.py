"""Printavo API v2 (GraphQL): invoices and quotes with their line items, customers with contacts, statuses.

Every request is a ``POST`` of ``{query, variables, operationName}`` with the ``email`` and ``token``
headers. Connections page with ``first``/``after`` and ``pageInfo { hasNextPage endCursor }``;
``totalNodes`` is reported as the page's total. Nested connections (an order's line item groups, a
group's line items, a customer's contacts) are queried with a generous ``first``; when one still
reports ``hasNextPage`` the rest is fetched through ``invoice(id)``/``quote(id)``/``lineItemGroup(id)``
/``customer(id)``, so a record is never silently truncated. Cursors are removed from the payload so
re-reading an unchanged order gives identical content.

Printavo allows 10 requests per 5 seconds per account. The HTTP layer's token bucket (keyed per
credential, shared across the process) is set so that no 5-second window can hold more than 10:
a burst of 1 and ``(10 - 1) / 5`` requests per second; a 429 is still retried after Retry-After.

Time filters. The API filters orders only by production dates (``inProductionAfter``: due date
after; ``inProductionBefore``: production start before), has no updated-since filter and no sort
on update time. So:

* :meth:`PrintavoConnector.pull` (a partition ``[start, end)`` by creation time) asks for orders
  due after ``start`` and starting production before ``end + partition_lead`` and keeps those whose
  ``timestamps.createdAt`` falls in the window. That assumes an order is due after it is created
  and goes into production within ``partition_lead`` (default 90 days) of its creation; orders that
  break it are still caught by :meth:`pull_changes` once they change. Customers and statuses have
  no filters: they are listed in full and filtered by creation time.
* :meth:`PrintavoConnector.pull_changes` re-scans a bounded window: orders due after
  ``now - rescan_days`` (default 30; open-ended into the future), keeping those whose
  ``timestamps.updatedAt`` is at or after the checkpoint (the newest ``updatedAt`` seen, ISO
  UTC). Orders at exactly the checkpoint are taken again so a same-second update is not lost;
  identical content lands once. The scan is not in update order, so only its last page carries
  the new checkpoint. An order that changes after its due date fell out of the window is missed
  until a partition re-pull or a wider ``rescan_days``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from ..extract.http import AuthError, BadPayloadError, HttpPolicy, ResilientClient
from .base import Page, SourceRecord
from .tokens import utcnow

log = logging.getLogger(__name__)

SOURCE_TYPE = "printavo"
ENTITIES = ("invoices", "quotes", "customers", "statuses")
MAX_PAGES = 100_000

# documented quota: 10 requests per 5 seconds
RATE_LIMIT_REQUESTS = 10
RATE_LIMIT_WINDOW_S = 5.0

_TIMESTAMPS = "timestamps { createdAt updatedAt }"
_PAGE_INFO = "pageInfo { hasNextPage endCursor }"

LINE_ITEM_FIELDS = f"""
  id position description itemNumber color items price taxed markupPercentage
  sizes {{ size count }}
  category {{ id name }}
  {_TIMESTAMPS}
"""

GROUP_FIELDS = f"""
  id position
  {_TIMESTAMPS}
  lineItems(first: $itemsFirst) {{ {_PAGE_INFO} nodes {{ {LINE_ITEM_FIELDS} }} }}
"""

ORDER_FIELDS = f"""
  id visualId nickname createdAt invoiceAt customerDueAt startAt dueAt paymentDueAt
  total subtotal totalUntaxed salesTax salesTaxAmount discount discountAmount discountAsPercentage
  amountPaid amountOutstanding paidInFull totalQuantity tags productionNote customerNote visualPoNumber
  status {{ id name type }}
  contact {{ id fullName firstName lastName email phone customer {{ id companyName }} }}
  {_TIMESTAMPS}
  lineItemGroups(first: $groupsFirst) {{ {_PAGE_INFO} nodes {{ {GROUP_FIELDS} }} }}
"""

CONTACT_FIELDS = f"id fullName firstName lastName email phone {_TIMESTAMPS}"

_ADDRESS = "address1 address2 city state stateIso zipCode country countryIso"

CUSTOMER_FIELDS = f"""
  id companyName internalNote resaleNumber taxExempt salesTax orderCount
  billingAddress {{ {_ADDRESS} }}
  shippingAddress {{ {_ADDRESS} }}
  primaryContact {{ id }}
  {_TIMESTAMPS}
  contacts(first: $contactsFirst) {{ {_PAGE_INFO} nodes {{ {CONTACT_FIELDS} }} }}
"""

STATUS_FIELDS = f"id name color position type {_TIMESTAMPS}"

_ORDER_TYPE = {"invoices": "Invoice", "quotes": "Quote"}
_SINGULAR = {"invoices": "invoice", "quotes": "quote"}


def _order_list_query(entity: str) -> str:
    return f"""query {_ORDER_TYPE[entity]}List($first: Int!, $after: String, $inProductionAfter: ISO8601DateTime,
    $inProductionBefore: ISO8601DateTime, $groupsFirst: Int!, $itemsFirst: Int!) {{
  {entity}(first: $first, after: $after, inProductionAfter: $inProductionAfter,
           inProductionBefore: $inProductionBefore, sortOn: VISUAL_ID) {{
    totalNodes {_PAGE_INFO} nodes {{ {ORDER_FIELDS} }}
  }}
}}"""


def _order_groups_query(entity: str) -> str:
    return f"""query {_ORDER_TYPE[entity]}Groups($id: ID!, $after: String, $groupsFirst: Int!, $itemsFirst: Int!) {{
  node: {_SINGULAR[entity]}(id: $id) {{
    lineItemGroups(first: $groupsFirst, after: $after) {{ {_PAGE_INFO} nodes {{ {GROUP_FIELDS} }} }}
  }}
}}"""


GROUP_ITEMS_QUERY = f"""query GroupItems($id: ID!, $after: String, $itemsFirst: Int!) {{
  node: lineItemGroup(id: $id) {{
    lineItems(first: $itemsFirst, after: $after) {{ {_PAGE_INFO} nodes {{ {LINE_ITEM_FIELDS} }} }}
  }}
}}"""

CUSTOMERS_QUERY = f"""query CustomerList($first: Int!, $after: String, $contactsFirst: Int!) {{
  customers(first: $first, after: $after) {{ totalNodes {_PAGE_INFO} nodes {{ {CUSTOMER_FIELDS} }} }}
}}"""

CUSTOMER_CONTACTS_QUERY = f"""query CustomerContacts($id: ID!, $after: String, $contactsFirst: Int!) {{
  node: customer(id: $id) {{
    contacts(first: $contactsFirst, after: $after) {{ {_PAGE_INFO} nodes {{ {CONTACT_FIELDS} }} }}
  }}
}}"""

def _order_by_id_query(entity: str) -> str:
    return f"""query {_ORDER_TYPE[entity]}ById($id: ID!, $groupsFirst: Int!, $itemsFirst: Int!) {{
  node: {_SINGULAR[entity]}(id: $id) {{ {ORDER_FIELDS} }}
}}"""


CUSTOMER_BY_ID_QUERY = f"""query CustomerById($id: ID!, $contactsFirst: Int!) {{
  node: customer(id: $id) {{ {CUSTOMER_FIELDS} }}
}}"""

STATUSES_QUERY = f"""query StatusList($first: Int!, $after: String) {{
  statuses(first: $first, after: $after) {{ totalNodes {_PAGE_INFO} nodes {{ {STATUS_FIELDS} }} }}
}}"""


def parse_printavo_datetime(value: Any) -> datetime | None:
    """An ISO 8601 date-time (or date, taken as midnight UTC) as an aware UTC datetime."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_checkpoint(value: str | None) -> datetime | None:
    return parse_printavo_datetime(value) if value else None


class PrintavoConnector:
    """A Printavo account's GraphQL API. Implements :class:`~.base.Connector`.

    ``base_url`` is the GraphQL endpoint itself (``.../api/v2``).
    """

    source_type = SOURCE_TYPE
    entities = ENTITIES

    def __init__(
        self,
        *,
        base_url: str,
        email: str,
        token: str,
        source_name: str = "printavo",
        policy: HttpPolicy | None = None,
        page_size: int = 25,
        groups_page_size: int = 25,
        items_page_size: int = 100,
        contacts_page_size: int = 25,
        rescan_days: int = 30,
        partition_lead: timedelta = timedelta(days=90),
        rate_limit: tuple[int, float] = (RATE_LIMIT_REQUESTS, RATE_LIMIT_WINDOW_S),
        clock: Callable[[], datetime] = utcnow,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = base_url
        self.source_name = source_name
        self.page_size = page_size
        self.groups_page_size = groups_page_size
        self.items_page_size = items_page_size
        self.contacts_page_size = contacts_page_size
        self.rescan_days = rescan_days
        self.partition_lead = partition_lead
        self.clock = clock
        self.label = f"printavo (source {source_name!r})"
        policy = _rate_limited(policy or HttpPolicy(), *rate_limit)
        # the quota is per account: key the bucket by the credential, not by the source's name
        account = hashlib.sha256(f"{email}\0{token}".encode()).hexdigest()[:16]
        self.http = ResilientClient(
            f"printavo:{source_name}",
            policy,
            headers={"email": email, "token": token, "Accept": "application/json"},
            limiter_key=f"printavo:{account}",
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PrintavoConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Connector --------------------------------------------------------------------------

    def pull(self, entity: str, *, start: datetime, end: datetime) -> Iterator[Page]:
        self._check_entity(entity)
        if entity in _ORDER_TYPE:
            filters = {"inProductionAfter": _iso(start), "inProductionBefore": _iso(end + self.partition_lead)}
        else:
            filters = {}
        in_window = lambda r: r.occurred_at is not None and start <= r.occurred_at < end  # noqa: E731
        for page in self._entity_pages(entity, filters, in_window):
            records = page.records
            if records:
                # totalNodes counts the production-date query, not the creation window
                yield Page(records, extra={**page.extra, "api_total": page.reported_total})

    def pull_changes(self, entity: str, *, since: str | None) -> Iterator[Page]:
        """Re-scan the bounded window and keep what changed at or after ``since``.

        ``since=None`` keeps everything in the window.
        """
        self._check_entity(entity)
        threshold = _parse_checkpoint(since)
        filters: dict[str, Any] = {}
        if entity in _ORDER_TYPE:
            filters["inProductionAfter"] = _iso(self.clock() - timedelta(days=self.rescan_days))
        newest = threshold
        previous: Page | None = None
        changed = lambda r: threshold is None or r.updated_at is None or r.updated_at >= threshold  # noqa: E731
        for page in self._entity_pages(entity, filters, changed):
            if previous is not None and previous.records:
                yield previous
            records = page.records
            for r in records:
                if r.updated_at is not None and (newest is None or r.updated_at > newest):
                    newest = r.updated_at
            previous = Page(records, checkpoint=since, reported_total=None, extra=page.extra)
        last = previous or Page([])
        yield Page(last.records, checkpoint=_iso(newest) if newest else since, extra=last.extra)

    def pull_all(self, entity: str) -> Iterator[Page]:
        """Every record of ``entity`` with no filter (reference data, reconciliation)."""
        self._check_entity(entity)
        yield from self._entity_pages(entity, {})

    def fetch_one(self, entity: str, source_id: str) -> SourceRecord | None:
        """One invoice, quote or customer by id (``invoice(id:)``/``quote(id:)``/``customer(id:)``),
        complete with its nested connections, in the same shape as :meth:`pull` lands it; None when
        the API has no such record (e.g. a webhook about something deleted since). For re-pulling
        what a webhook announced."""
        self._check_entity(entity)
        if entity in _ORDER_TYPE:
            query, operation = _order_by_id_query(entity), f"{_ORDER_TYPE[entity]}ById"
            variables: dict[str, Any] = {"groupsFirst": self.groups_page_size, "itemsFirst": self.items_page_size}
        elif entity == "customers":
            query, operation = CUSTOMER_BY_ID_QUERY, "CustomerById"
            variables = {"contactsFirst": self.contacts_page_size}
        else:
            raise ValueError(f"{self.label}: {entity} cannot be fetched one by one; choose invoices, quotes or customers")
        if source_id is None or not str(source_id).strip():
            raise ValueError(f"{self.label}: fetch_one({entity!r}) needs an id")
        node = self.execute(query, {**variables, "id": str(source_id)}, operation).get("node")
        if node is None:
            return None
        return self._complete_record(self._record(entity, node))

    # --- queries ----------------------------------------------------------------------------

    def _entity_pages(
        self, entity: str, filters: dict[str, Any], keep: Callable[[SourceRecord], bool] | None = None
    ) -> Iterator[Page]:
        """Pages of records; ``keep`` filters before nested connections are completed (saves requests)."""
        if entity in _ORDER_TYPE:
            variables = {**filters, "groupsFirst": self.groups_page_size, "itemsFirst": self.items_page_size}
            query, operation = _order_list_query(entity), f"{_ORDER_TYPE[entity]}List"
        elif entity == "customers":
            variables, query, operation = {"contactsFirst": self.contacts_page_size}, CUSTOMERS_QUERY, "CustomerList"
        else:
            variables, query, operation = {}, STATUSES_QUERY, "StatusList"
        for connection in self._connection(query, operation, entity, variables):
            nodes = connection.get("nodes") or []
            records = [self._record(entity, node) for node in nodes]
            records = [self._complete_record(r) for r in records if keep is None or keep(r)]
            yield Page(
                records,
                reported_total=_int(connection.get("totalNodes")),
                extra={"end_cursor": (connection.get("pageInfo") or {}).get("endCursor")},
            )

    def _connection(
        self, query: str, operation: str, field: str, variables: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        """Each page of the top-level connection ``field``, following ``endCursor``."""
        after: str | None = None
        for _ in range(MAX_PAGES):
            data = self.execute(query, {**variables, "first": self.page_size, "after": after}, operation)
            connection = data.get(field)
            if not isinstance(connection, dict):
                raise BadPayloadError(
                    f"{self.label}: {operation}: no {field!r} connection in the response", url=self._where
                )
            yield connection
            info = connection.get("pageInfo") or {}
            if not info.get("hasNextPage") or not connection.get("nodes"):
                return
            cursor = info.get("endCursor")
            if not cursor or cursor == after:
                raise BadPayloadError(
                    f"{self.label}: {operation}: hasNextPage without a new endCursor", url=self._where
                )
            after = cursor
        raise BadPayloadError(f"{self.label}: {operation}: more than {MAX_PAGES} pages; stopping", url=self._where)

    def execute(self, query: str, variables: dict[str, Any], operation: str) -> dict[str, Any]:
        """One GraphQL request; GraphQL ``errors`` become :class:`AuthError` or :class:`BadPayloadError`."""
        body = self.http.json(
            "POST", self.url, json={"query": query, "variables": variables, "operationName": operation}
        )
        if not isinstance(body, dict):
            raise BadPayloadError(f"{self.label}: {operation}: response is not a JSON object", url=self._where)
        errors = body.get("errors")
        if errors:
            messages = "; ".join(
                str(e.get("message", e)) if isinstance(e, dict) else str(e)
                for e in (errors if isinstance(errors, list) else [errors])
            )[:300]
            codes = (
                " ".join(str((e.get("extensions") or {}).get("code", "")) for e in errors if isinstance(e, dict))
                if isinstance(errors, list)
                else ""
            )
            text = f"{messages} {codes}".lower()
            if any(
                word in text
                for word in ("unauthorized", "unauthenticated", "authenticat", "not authorized", "forbidden")
            ):
                raise AuthError(
                    f"{self.label}: {operation}: credentials rejected ({messages}); check the email and API token",
                    status=401,
                    url=self._where,
                )
            raise BadPayloadError(f"{self.label}: {operation}: GraphQL errors: {messages}", url=self._where)
        data = body.get("data")
        if not isinstance(data, dict):
            raise BadPayloadError(f"{self.label}: {operation}: response has no data", url=self._where)
        return data

    @property
    def _where(self) -> str:
        from ..extract.http import redact

        return redact(self.url)

    # --- records and nested connections -----------------------------------------------------

    def _record(self, entity: str, node: Any) -> SourceRecord:
        if not isinstance(node, dict):
            return SourceRecord(entity, "", {"node": node}, None, None)
        stamps = node.get("timestamps") if isinstance(node.get("timestamps"), dict) else {}
        occurred = parse_printavo_datetime(stamps.get("createdAt")) or parse_printavo_datetime(node.get("createdAt"))
        updated = parse_printavo_datetime(stamps.get("updatedAt"))
        source_id = node.get("id")
        return SourceRecord(entity, "" if source_id is None else str(source_id), node, occurred, updated)

    def _complete_record(self, record: SourceRecord) -> SourceRecord:
        """Fetch what nested connections left out (in place: the payload is this connector's own)."""
        node = record.payload
        if record.entity in _ORDER_TYPE:
            self._complete_groups(record.entity, node)
        elif record.entity == "customers":
            self._complete(
                node,
                "contacts",
                CUSTOMER_CONTACTS_QUERY,
                "CustomerContacts",
                {"contactsFirst": self.contacts_page_size},
            )
        return record

    def _complete_groups(self, entity: str, order: dict[str, Any]) -> None:
        variables = {"groupsFirst": self.groups_page_size, "itemsFirst": self.items_page_size}
        self._complete(order, "lineItemGroups", _order_groups_query(entity), f"{_ORDER_TYPE[entity]}Groups", variables)
        groups = (order.get("lineItemGroups") or {}).get("nodes") or []
        for group in groups:
            if isinstance(group, dict):
                self._complete(
                    group, "lineItems", GROUP_ITEMS_QUERY, "GroupItems", {"itemsFirst": self.items_page_size}
                )

    def _complete(
        self, owner: dict[str, Any], field: str, query: str, operation: str, variables: dict[str, Any]
    ) -> None:
        """Fetch the rest of ``owner[field]`` when it reports more pages; drop its cursors."""
        connection = owner.get(field)
        if not isinstance(connection, dict):
            return
        info = connection.pop("pageInfo", None) or {}
        nodes = list(connection.get("nodes") or [])
        after = info.get("endCursor")
        while info.get("hasNextPage"):
            if owner.get("id") is None or not after:
                raise BadPayloadError(
                    f"{self.label}: {field} of a record is truncated and cannot be paged (no id or cursor)",
                    url=self._where,
                )
            data = self.execute(query, {**variables, "id": owner["id"], "after": after}, operation)
            more = ((data.get("node") or {}).get(field)) or {}
            info = more.get("pageInfo") or {}
            page_nodes = more.get("nodes") or []
            if not page_nodes and info.get("hasNextPage"):
                raise BadPayloadError(
                    f"{self.label}: {operation} for {owner['id']}: empty page with hasNextPage", url=self._where
                )
            nodes.extend(page_nodes)
            after = info.get("endCursor")
        connection["nodes"] = nodes

    def _check_entity(self, entity: str) -> None:
        if entity not in ENTITIES:
            raise ValueError(f"Printavo has no entity {entity!r}; choose one of {', '.join(ENTITIES)}")


def _rate_limited(policy: HttpPolicy, requests: int, window: float) -> HttpPolicy:
    """The policy with a token bucket that can never put more than ``requests`` in any ``window``.

    A bucket of capacity ``b`` refilling at ``r``/s admits at most ``b + r * window`` requests in
    a window; ``b = 1`` keeps the sustained rate highest. A policy that states its own rate wins.
    """
    if policy.requests_per_second is not None:
        return policy
    return policy.model_copy(update={"requests_per_second": max(requests - 1, 1) / window, "burst": 1})


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
