"""Salla Admin API v2: orders (with their lines), products and customers of one merchant.

One :class:`SallaConnector` per merchant (store): its own OAuth token pair (refreshed through
:mod:`.tokens`) and its own rate-limit bucket (Salla's quota is per store).

Orders. ``GET /orders`` rows are summaries without ``updated_at``, so every order is fetched with
``GET /orders/{id}`` (which has it) and its lines with ``GET /orders/items?order_id=``, embedded under
``items``: one record = the order detail as the API returns it, plus its lines.

* :meth:`SallaConnector.pull` (a partition ``[start, end)`` in UTC): ``from_date``/``to_date`` are
  creation dates, inclusive, ``Y-m-d`` in the store's time zone (Asia/Riyadh), so the query covers
  the local dates the UTC window touches and the detail's ``date`` filters to the window exactly.
  Rows are sorted ``id-asc`` so orders created while paging append at the end instead of shifting
  pages under us. Each page says where it got to (``extra["resume"]``: page and last order id); a
  pull that died resumes from there (``resume=``) without fetching handled orders again.
* :meth:`SallaConnector.pull_changes`: ``sort_by=updated_at-desc``; since list rows carry no
  ``updated_at``, details are fetched in list order until the first order whose ``updated_at`` is
  older than the checkpoint (everything after it is older still). Orders at the checkpoint itself
  are taken again (same-second updates are not lost; identical content lands once). Pages arrive
  newest first, so only the last page carries the new checkpoint (the newest ``updated_at`` seen);
  earlier pages repeat the old one, and a run that dies half-way resumes from where it started.

Products and customers are not partitioned by date: :meth:`SallaConnector.pull_all` lists them all;
``pull_changes`` lists them all and keeps those changed since the checkpoint (the API has no
updated-since filter for them); ``pull`` keeps those created in the window when they say when.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from ..extract.http import AuthError, BadPayloadError, HttpPolicy, NotFoundError, ResilientClient
from .base import Page, SourceRecord
from .tokens import CredentialKey, TokenEndpoint, TokenManager, TokenStore, utcnow

log = logging.getLogger(__name__)

SOURCE_TYPE = "salla"
STORE_TIMEZONE = "Asia/Riyadh"
MAX_PAGE_SIZE = 60  # documented maximum of per_page
MAX_PAGES = 100_000  # a runaway-pagination guard, far beyond any real store

ENTITIES = ("orders", "products", "customers")
_LIST_PATHS = {"orders": "orders", "products": "products", "customers": "customers"}


def parse_salla_datetime(value: Any, default_tz: str = STORE_TIMEZONE) -> datetime | None:
    """A Salla time as an aware UTC datetime.

    Salla writes ``{"date": "2026-11-28 14:03:11.000000", "timezone_type": 3, "timezone":
    "Asia/Riyadh"}``; plain ``Y-m-d H:i:s`` strings are in the store's zone; ISO strings with an
    offset keep it; numbers are epoch seconds.
    """
    if value is None or value == "":
        return None
    zone = default_tz
    if isinstance(value, dict):
        zone = value.get("timezone") or default_tz
        value = value.get("date")
        if not value:
            return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc)
    if not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        try:
            parsed = parsed.replace(tzinfo=ZoneInfo(zone))
        except (KeyError, ValueError):  # an unknown zone name: the store's
            parsed = parsed.replace(tzinfo=ZoneInfo(default_tz))
    return parsed.astimezone(timezone.utc)


def parse_checkpoint(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def format_checkpoint(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


def local_date_range(start: datetime, end: datetime, zone: str) -> tuple[date, date]:
    """The inclusive local dates a UTC window ``[start, end)`` touches."""
    tz = ZoneInfo(zone)
    last = end - timedelta(microseconds=1) if end > start else start
    return start.astimezone(tz).date(), last.astimezone(tz).date()


class SallaConnector:
    """One Salla merchant's Admin API. Implements :class:`~.base.Connector`."""

    source_type = SOURCE_TYPE
    entities = ENTITIES

    def __init__(
        self,
        merchant_id: str,
        *,
        base_url: str,
        token_url: str,
        client_id: str,
        client_secret: str,
        tokens: TokenStore,
        source_name: str = "salla",
        page_size: int = MAX_PAGE_SIZE,
        policy: HttpPolicy | None = None,
        store_timezone: str = STORE_TIMEZONE,
        changes_lookback: timedelta = timedelta(days=30),
        clock: Callable[[], datetime] = utcnow,
        transport: httpx.BaseTransport | None = None,
    ):
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        self.merchant_id = str(merchant_id)
        self.source_name = source_name
        self.page_size = page_size
        self.store_timezone = store_timezone
        self.changes_lookback = changes_lookback
        self.clock = clock
        self.label = f"salla merchant {self.merchant_id} (source {source_name!r})"
        self.tokens = TokenManager(
            tokens,
            CredentialKey(SOURCE_TYPE, source_name, self.merchant_id),
            TokenEndpoint(token_url, client_id, client_secret, transport=transport),
            label=self.label,
        )
        # Salla's quota is per store: one bucket per merchant, shared by every client in the process
        self.http = ResilientClient(
            f"salla:{self.merchant_id}",
            policy,
            base_url=base_url.rstrip("/") + "/",
            limiter_key=f"salla:{self.merchant_id}",
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SallaConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Connector --------------------------------------------------------------------------

    def pull(
        self, entity: str, *, start: datetime, end: datetime, resume: dict[str, Any] | None = None
    ) -> Iterator[Page]:
        """Records created in ``[start, end)``. For orders, every page carries ``extra["resume"]``
        (``{"page", "last_id"}``): passed back as ``resume`` after a crash, the pull continues
        after the orders that page covered instead of starting over (see :meth:`_pull_orders`)."""
        self._check_entity(entity)
        if entity == "orders":
            yield from self._pull_orders(start, end, resume)
            return
        for page in self.pull_all(entity):
            records = [r for r in page.records if r.occurred_at is not None and start <= r.occurred_at < end]
            if records:
                yield Page(records, extra=page.extra)

    def pull_changes(self, entity: str, *, since: str | None) -> Iterator[Page]:
        self._check_entity(entity)
        if entity == "orders":
            yield from self._order_changes(since)
            return
        threshold = parse_checkpoint(since)
        newest = threshold
        previous: Page | None = None
        # the list is not sorted by update time: the checkpoint moves only with the last page
        for page in self.pull_all(entity):
            if previous is not None and previous.records:
                yield previous
            records = [
                r for r in page.records if threshold is None or r.updated_at is None or r.updated_at >= threshold
            ]
            for r in records:
                if r.updated_at is not None and (newest is None or r.updated_at > newest):
                    newest = r.updated_at
            previous = Page(records, checkpoint=since, reported_total=page.reported_total, extra=page.extra)
        last = previous or Page([])
        yield Page(
            last.records,
            checkpoint=format_checkpoint(newest) if newest else since,
            reported_total=last.reported_total,
            extra=last.extra,
        )

    def pull_all(self, entity: str) -> Iterator[Page]:
        """Every product or customer (or order) of the merchant, page by page."""
        self._check_entity(entity)
        if entity == "orders":
            raise ValueError("orders are pulled per window (pull) or incrementally (pull_changes)")
        for rows, pagination in self._pages(_LIST_PATHS[entity], {}):
            records = [self._record(entity, row) for row in rows]
            yield Page(
                records, reported_total=_int(pagination.get("total")), extra={"page": pagination.get("currentPage")}
            )

    # --- orders -----------------------------------------------------------------------------

    def _pull_orders(self, start: datetime, end: datetime, resume: dict[str, Any] | None = None) -> Iterator[Page]:
        """The window's orders, ``id-asc``, page by page.

        Resuming (``resume={"page": p, "last_id": i}``, the ``extra["resume"]`` of the last page
        that was committed): the list is walked again from page ``p`` and orders with ids up to
        ``i`` are skipped without fetching their details (every one of them was handled before).
        New orders get higher ids and append at the end; if orders were deleted meanwhile the
        list shifts back, and a resumed first page holding no id up to ``i`` means it shifted by
        more than that page: the walk starts again from page 1 (still skipping ids up to ``i``).
        """
        first, last = local_date_range(start, end, self.store_timezone)
        params = {"from_date": first.isoformat(), "to_date": last.isoformat(), "sort_by": "id-asc"}
        after_id = _int((resume or {}).get("last_id"))
        start_page = max(1, _int((resume or {}).get("page")) or 1) if after_id is not None else 1
        while True:
            restart = False
            for index, (rows, pagination) in enumerate(self._pages("orders", params, start_page=start_page)):
                current = _int(pagination.get("currentPage")) or start_page + index
                ids = [_int(row.get("id")) if isinstance(row, dict) else None for row in rows]
                if index == 0 and start_page > 1 and not any(i is not None and i <= after_id for i in ids):
                    log.info("%s: orders shifted since page %s was landed; resuming from page 1", self.label, start_page)
                    start_page, restart = 1, True
                    break
                records = []
                top = after_id
                for row, row_id in zip(rows, ids):
                    if after_id is not None and row_id is not None and row_id <= after_id:
                        continue  # handled before the resume
                    if row_id is not None:
                        top = row_id if top is None else max(top, row_id)
                    record = self._order_record(row)
                    if record is None:
                        continue
                    # the query is by local date; the partition is the exact UTC window
                    if record.occurred_at is None or start <= record.occurred_at < end:
                        records.append(record)
                if records:
                    # the API's total counts the local dates queried, not the window: kept as extra only
                    yield Page(records, extra={"page": pagination.get("currentPage"), "api_total": pagination.get("total"),
                                               "resume": {"page": current, "last_id": top}})
            if not restart:
                return

    def _order_changes(self, since: str | None) -> Iterator[Page]:
        threshold = parse_checkpoint(since) or (self.clock() - self.changes_lookback)
        newest: datetime | None = parse_checkpoint(since)
        pending: list[SourceRecord] | None = None
        done = False
        for rows, _ in self._pages("orders", {"sort_by": "updated_at-desc"}):
            if pending:
                yield Page(pending, checkpoint=since)
            pending = []
            for row in rows:
                record = self._order_record(row)
                if record is None:
                    continue
                if record.updated_at is not None and record.updated_at < threshold:
                    done = True
                    break
                pending.append(record)
                if record.updated_at is not None and (newest is None or record.updated_at > newest):
                    newest = record.updated_at
            if done:
                break
        yield Page(pending or [], checkpoint=format_checkpoint(newest) if newest else since)

    def _order_record(self, row: Any) -> SourceRecord | None:
        """The order detail with its lines under ``items``; None when it vanished meanwhile."""
        order_id = row.get("id") if isinstance(row, dict) else None
        if order_id in (None, ""):
            # a broken list row: land it as is, so the mapping sends it to dead letters
            log.warning("%s: order list row without an id", self.label)
            return SourceRecord(
                "orders", "", row if isinstance(row, dict) else {"row": row}, None, None, self.merchant_id
            )
        try:
            detail = self._get(f"orders/{order_id}", {})["data"]
        except NotFoundError:
            log.info("%s: order %s disappeared between list and detail", self.label, order_id)
            return None
        if not isinstance(detail, dict):
            raise BadPayloadError(
                f"{self.label}: GET orders/{order_id}: data is not an object", url=f"orders/{order_id}"
            )
        items: list[Any] = []
        for lines, _ in self._pages("orders/items", {"order_id": order_id}, paged=False):
            items.extend(lines)
        payload = {**detail, "items": items}
        occurred = parse_salla_datetime(detail.get("date"), self.store_timezone) or parse_salla_datetime(
            row.get("date"), self.store_timezone
        )
        updated = parse_salla_datetime(detail.get("updated_at"), self.store_timezone)
        return SourceRecord("orders", str(detail.get("id", order_id)), payload, occurred, updated, self.merchant_id)

    # --- plumbing ---------------------------------------------------------------------------

    def _record(self, entity: str, row: Any) -> SourceRecord:
        if not isinstance(row, dict):
            return SourceRecord(entity, "", {"row": row}, None, None, self.merchant_id)
        source_id = row.get("id")
        return SourceRecord(
            entity,
            "" if source_id is None else str(source_id),
            row,
            parse_salla_datetime(row.get("created_at"), self.store_timezone),
            parse_salla_datetime(row.get("updated_at"), self.store_timezone),
            self.merchant_id,
        )

    def _check_entity(self, entity: str) -> None:
        if entity not in ENTITIES:
            raise ValueError(f"Salla has no entity {entity!r}; choose one of {', '.join(ENTITIES)}")

    def _pages(
        self, path: str, params: dict[str, Any], *, paged: bool = True, start_page: int = 1
    ) -> Iterator[tuple[list[Any], dict[str, Any]]]:
        """``(data, pagination)`` per page until ``totalPages`` (or, without it, ``links.next``) says done."""
        page = start_page
        while page <= MAX_PAGES:
            query = {**params, "page": page, "per_page": self.page_size} if paged else dict(params)
            body = self._get(path, query)
            data = body["data"]
            if not isinstance(data, list):
                raise BadPayloadError(f"{self.label}: GET {path}: data is not a list", url=path)
            pagination = body.get("pagination") if isinstance(body.get("pagination"), dict) else {}
            yield data, pagination
            if not data or not _has_next(pagination, page):
                return
            if not paged:
                paged = True  # an unpaged call that reports more pages: walk them
            page = (_int(pagination.get("currentPage")) or page) + 1
        raise BadPayloadError(f"{self.label}: GET {path}: more than {MAX_PAGES} pages; stopping", url=path)

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """GET with the merchant's token; a 401 refreshes the pair once and retries the request."""
        token = self.tokens.access_token()
        try:
            body = self.http.json("GET", path, params=params, headers={"Authorization": f"Bearer {token}"})
        except AuthError as exc:
            if exc.status != 401:
                raise
            log.info("%s: access token rejected (401); refreshing", self.label)
            token = self.tokens.refresh(stale_access_token=token)
            body = self.http.json("GET", path, params=params, headers={"Authorization": f"Bearer {token}"})
        if not isinstance(body, dict) or body.get("success") is False or "data" not in body:
            shape = f"keys {sorted(body)[:8]}" if isinstance(body, dict) else type(body).__name__
            raise BadPayloadError(f"{self.label}: GET {path}: not a Salla success envelope ({shape})", url=path)
        return body


def _has_next(pagination: dict[str, Any], page: int) -> bool:
    current = _int(pagination.get("currentPage")) or page
    total_pages = _int(pagination.get("totalPages"))
    if total_pages is not None:
        return current < total_pages
    links = pagination.get("links")
    # PHP serialises an empty links object as []
    return bool(isinstance(links, dict) and links.get("next"))


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
