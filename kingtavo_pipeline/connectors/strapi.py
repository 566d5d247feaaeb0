"""Strapi v4 / v5 collection types over the REST API (``GET {base}/api/{plural}``).

Envelope: ``{"data": [...], "meta": {"pagination": {"page", "pageSize", "pageCount", "total"}}}``.
v4 wraps fields as ``{"id", "attributes": {...}}``; v5 is flat and identifies entries by
``documentId`` (its numeric ``id`` differs between a draft and its published version). Payloads are
kept exactly as the API returned them.

Paging is keyset-style over ``(field, id)`` rather than plain page numbers: each request asks for
``filters[field][$gte]=<largest value seen>`` sorted ``field:asc, id:asc`` from page 1, and skips the
entries already seen at exactly that value. Plain page numbers over a collection that changes during
the pull skip entries (an edit moves an entry to the end and shifts every later one back a page);
the keyset walk does not, and a run of more than a page of equal values is walked by page number
within that value. Strapi caps ``pageSize`` at its ``api.rest.maxLimit`` (100 by default) without
saying so, so the end is taken from ``meta.pagination.pageCount``, never from our page size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from ..extract.http import BadPayloadError, HttpPolicy, ResilientClient
from .base import Page, SourceRecord
from .rest import parse_timestamp

__all__ = ["StrapiConnector", "strapi_time"]


def strapi_time(moment: datetime) -> str:
    """A datetime as Strapi writes timestamps: ``2024-01-02T03:04:05.000Z`` (naive = UTC)."""
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class StrapiConnector:
    """Implements :class:`~.base.Connector`. ``collections`` maps entity -> plural API id (``articles``).

    ``params`` are extra query parameters sent with every request (``populate``, ``locale``,
    ``status``/``publicationState``). The incremental checkpoint is the largest ``updatedAt`` seen,
    as Strapi wrote it.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        collections: Mapping[str, str],
        version: Literal[4, 5] = 5,
        page_size: int = 100,
        policy: HttpPolicy | None = None,
        *,
        name: str = "strapi",
        params: Mapping[str, str] | None = None,
        client: ResilientClient | None = None,
    ) -> None:
        if version not in (4, 5):
            raise ValueError(f"strapi source {name!r}: version must be 4 or 5, got {version!r}")
        if page_size < 1:
            raise ValueError(f"strapi source {name!r}: page_size must be >= 1, got {page_size}")
        if not collections:
            raise ValueError(f"strapi source {name!r}: no collections configured")
        self.name = name
        self.version = version
        self.page_size = page_size
        self.collections = {entity: plural.strip("/") for entity, plural in collections.items()}
        self.entities = tuple(self.collections)
        self.params = dict(params or {})
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        fingerprint = hashlib.sha256((token or "").encode()).hexdigest()[:12]
        self.client = client or ResilientClient(
            name, policy, base_url=base_url.rstrip("/"), headers=headers, limiter_key=f"{name}:{fingerprint}"
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> StrapiConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Connector protocol ----------------------------------------------------------------------

    def pull(self, entity: str, *, start: datetime, end: datetime) -> Iterator[Page]:
        """Entries created in ``[start, end)`` (``filters[createdAt][$gte]/[$lt]``)."""
        for records, _, total in self._walk(entity, "createdAt", strapi_time(start), strapi_time(end)):
            yield Page(records=records, checkpoint=None, reported_total=total)

    def pull_changes(self, entity: str, *, since: str | None) -> Iterator[Page]:
        """Entries with ``updatedAt >= since`` (all of them when None), oldest change first.

        Entries exactly at ``since`` come again (``$gte``): a later edit in the same millisecond as
        the checkpoint is not lost, and re-landing an unchanged entry changes nothing downstream.
        """
        for records, cursor, total in self._walk(entity, "updatedAt", since, None):
            yield Page(records=records, checkpoint=cursor, reported_total=total)

    # -- the keyset walk -------------------------------------------------------------------------

    def _walk(
        self, entity: str, field: str, lower: str | None, upper: str | None
    ) -> Iterator[tuple[list[SourceRecord], str | None, int | None]]:
        """Yield (new records, the largest ``field`` value seen so far, the query's total)."""
        path = self._path(entity)
        cursor, cursor_at = lower, parse_timestamp(lower)
        seen_at_cursor: set[str] = set()
        page = 1
        total: int | None = None
        while True:
            body = self.client.json("GET", path, params=self._params(field, cursor, upper, page))
            items, meta = self._envelope(body, path)
            if total is None:
                total = _int(meta.get("total"))
            records = [self._record(entity, item, path) for item in items]
            fresh = [r for r in records if not (r.source_id in seen_at_cursor and self._at(r, field) == cursor_at)]
            values = [(at, self._raw(r, field)) for r in records if (at := self._at(r, field)) is not None]
            top = max(values, default=None, key=lambda v: v[0])
            if top is not None and (cursor_at is None or top[0] > cursor_at):
                cursor_at, cursor = top
                seen_at_cursor = {r.source_id for r in records if self._at(r, field) == cursor_at}
                next_page = 1
            else:
                # a whole page at the cursor value (or without values): walk on by page number
                seen_at_cursor |= {r.source_id for r in records}
                next_page = page + 1
            if fresh:
                yield fresh, cursor, total
            if not items or self._last_page(meta, page, len(items)):
                return
            page = next_page

    def _params(self, field: str, lower: str | None, upper: str | None, page: int) -> dict[str, Any]:
        params: dict[str, Any] = dict(self.params)
        params.update({
            "pagination[page]": page,
            "pagination[pageSize]": self.page_size,
            # id breaks ties so the order is total and page boundaries are stable
            "sort[0]": f"{field}:asc",
            "sort[1]": "id:asc",
        })
        if lower is not None:
            params[f"filters[{field}][$gte]"] = lower
        if upper is not None:
            params[f"filters[{field}][$lt]"] = upper
        return params

    def _last_page(self, meta: Mapping[str, Any], page: int, count: int) -> bool:
        page_count = _int(meta.get("pageCount"))
        if page_count is not None:
            return (_int(meta.get("page")) or page) >= page_count
        # no pagination meta (a proxy stripped it?): a short page is the last one
        return count < self.page_size

    def _path(self, entity: str) -> str:
        if entity not in self.collections:
            raise ValueError(f"strapi source {self.name!r} has no entity {entity!r}; it has {sorted(self.collections)}")
        return f"/api/{self.collections[entity]}"

    def _envelope(self, body: Any, path: str) -> tuple[list[dict[str, Any]], Mapping[str, Any]]:
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
            raise BadPayloadError(
                f"{self.name}: GET {path}: expected Strapi's {{data: [...], meta: {{pagination}}}} envelope, "
                f"got {type(body).__name__}{' with keys ' + str(sorted(body)[:8]) if isinstance(body, Mapping) else ''}"
            )
        meta = body.get("meta") if isinstance(body.get("meta"), Mapping) else {}
        pagination = meta.get("pagination") if isinstance(meta.get("pagination"), Mapping) else {}
        return body["data"], pagination

    # -- entries ---------------------------------------------------------------------------------

    def _fields(self, item: Mapping[str, Any]) -> Mapping[str, Any]:
        if self.version == 4:
            attributes = item.get("attributes")
            return attributes if isinstance(attributes, Mapping) else {}
        return item

    def _record(self, entity: str, item: Any, path: str) -> SourceRecord:
        if not isinstance(item, Mapping):
            raise BadPayloadError(f"{self.name}: GET {path}: an entry is a {type(item).__name__}, not an object")
        key = "documentId" if self.version == 5 else "id"
        source_id = item.get(key)
        if source_id in (None, ""):
            other = "v4 (entries without documentId)" if self.version == 5 else "v5 (entries without attributes)"
            raise BadPayloadError(
                f"{self.name}: GET {path}: an entry has no {key!r} (keys {sorted(item)[:8]}); "
                f"is this Strapi {other}? check the connector's version"
            )
        if self.version == 4 and not isinstance(item.get("attributes"), Mapping):
            raise BadPayloadError(
                f"{self.name}: GET {path}: a v4 entry has no 'attributes'; is this Strapi v5? check the connector's version"
            )
        fields = self._fields(item)
        return SourceRecord(
            entity=entity,
            source_id=str(source_id),
            payload=dict(item),
            occurred_at=parse_timestamp(fields.get("createdAt")),
            updated_at=parse_timestamp(fields.get("updatedAt")),
        )

    def _raw(self, record: SourceRecord, field: str) -> str | None:
        value = self._fields(record.payload).get(field)
        return None if value is None else str(value)

    def _at(self, record: SourceRecord, field: str) -> datetime | None:
        if field == "updatedAt":
            return record.updated_at
        if field == "createdAt":
            return record.occurred_at
        return parse_timestamp(self._fields(record.payload).get(field))


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
