"""RSS 2.0 / Atom extraction into a RAW FRAME, one flat payload per (deduplicated) entry."""

from __future__ import annotations

import calendar
import hashlib
import html
import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import feedparser
import httpx
import pandas as pd

from ..extract.http import HttpError, HttpPolicy, ResilientClient
from ..storage.errors import redact_url
from ..transform.unified import TS_DTYPE
from .config import DEFAULT_FEED_FIELDS, RssSource, SourceConfigError
from .csv_source import content_hash, empty_raw_frame

__all__ = ["DEFAULT_FEED_FIELDS", "fetch_url", "html_to_text", "read_feed"]

# feeds are small, public and polled: fewer attempts than the API default, same timeouts and cap
FEED_POLICY = HttpPolicy(max_attempts=4)
_FEED_ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.8"
_BLOCK_TAGS = {"p", "br", "div", "li", "ul", "ol", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(value: str | None) -> str:
    """Tags dropped, entities decoded, whitespace collapsed."""
    if not value:
        return ""
    parser = _TextExtractor()
    parser.feed(value)
    parser.close()
    return re.sub(r"\s+", " ", html.unescape("".join(parser.parts))).strip()


def fetch_url(url: str, *, name: str = "rss", policy: HttpPolicy | None = None) -> bytes:
    """GET a feed through the shared HTTP layer (retries, breaker, size cap); raises ``HttpError``."""
    with ResilientClient(name, policy or FEED_POLICY, headers={"Accept": _FEED_ACCEPT}) as client:
        return client.get(url).content


def _utc(struct: time.struct_time | None) -> datetime | None:
    """feedparser's ``*_parsed`` values are UTC struct_times."""
    if not struct:
        return None
    return datetime.fromtimestamp(calendar.timegm(struct), tz=timezone.utc)


def _author(entry: Any) -> str:
    if entry.get("author"):
        return str(entry["author"]).strip()
    names = [a.get("name") or a.get("email") for a in entry.get("authors") or []]
    return ", ".join(n for n in names if n)


def _summary(entry: Any) -> str:
    text = entry.get("summary") or ""
    if not text and entry.get("content"):
        text = entry["content"][0].get("value") or ""
    return html_to_text(text)


# The keys of every normalised entry payload (what ``fields`` may name).
_PAYLOAD_KEYS = ("id", "title", "link", "summary", "author", "tags", "published", "updated", "feed_title")


def _normalise(entry: Any, feed_title: str) -> tuple[dict[str, str], datetime | None]:
    """-> (flat payload, the entry's 'updated' time used to pick among duplicates)."""
    # dict.get: feedparser's own lookup aliases updated -> published with a DeprecationWarning.
    published_at = _utc(dict.get(entry, "published_parsed"))
    updated_at = _utc(dict.get(entry, "updated_parsed"))
    published = published_at or updated_at
    updated = updated_at or published
    title = html_to_text(entry.get("title") or "")
    link = str(entry.get("link") or "").strip()
    entry_id = str(entry.get("id") or "").strip() or link
    if not entry_id:
        basis = f"{title}\n{published.isoformat() if published else entry.get('published', '')}"
        entry_id = hashlib.sha256(basis.encode("utf-8")).hexdigest()
    terms = [str(t.get("term") or t.get("label") or "").strip() for t in entry.get("tags") or []]
    payload = {
        "id": entry_id,
        "title": title,
        "link": link,
        "summary": _summary(entry),
        "author": _author(entry),
        "tags": ", ".join(dict.fromkeys(t for t in terms if t)),
        "published": published.isoformat() if published else "",
        # the entry's own modification time (Atom <updated>): which version of an entry is newer
        "updated": updated_at.isoformat() if updated_at else "",
        "feed_title": feed_title,
    }
    return payload, updated


def read_feed(source: RssSource, fetch: Callable[[str], bytes] | None = None) -> pd.DataFrame:
    """Parse the feed into a RAW FRAME. ``fetch(url) -> bytes`` replaces HTTP for remote feeds.

    Entries sharing an id are deduplicated: the latest ``updated`` wins, then the earliest in the
    document (feeds list newest first).
    """
    where = redact_url(source.url)  # a feed URL may carry a token
    unknown = sorted(set(source.field_map.values()) - set(_PAYLOAD_KEYS))
    if unknown:
        raise SourceConfigError(
            f"rss source {source.name!r}: fields name {unknown}, which entries do not have; "
            f"entry keys: {', '.join(_PAYLOAD_KEYS)}"
        )
    if source.is_remote:
        try:
            data = fetch(source.url) if fetch else fetch_url(source.url, name=f"rss:{source.name}")
        except HttpError as exc:  # one line: method, redacted URL, status or network error
            raise ValueError(f"rss source {source.name!r}: cannot fetch feed ({exc.kind}): {exc}") from None
        except httpx.HTTPError as exc:  # a replacement fetch: its text repeats the URL, credentials included
            raise ValueError(
                f"rss source {source.name!r}: cannot fetch feed {where}: {redact_url(' '.join(str(exc).split()))}"
            ) from None
    else:
        data = Path(source.url).read_bytes()
    parsed = feedparser.parse(data)
    if parsed.get("bozo") and not parsed.entries:
        raise ValueError(
            f"rss source {source.name!r}: cannot parse feed {where}: {redact_url(str(parsed.get('bozo_exception')))}"
        )
    if not parsed.entries and not parsed.get("version"):
        # e.g. an HTML login page served instead of the feed: not bozo, just not a feed.
        raise ValueError(f"rss source {source.name!r}: {where} is not an RSS or Atom document")

    feed_title = html_to_text(parsed.feed.get("title") or "")
    chosen: dict[str, tuple[dict[str, str], datetime | None]] = {}
    floor = datetime.min.replace(tzinfo=timezone.utc)
    for entry in parsed.entries:
        payload, updated = _normalise(entry, feed_title)
        kept = chosen.get(payload["id"])
        if kept is None or (updated or floor) > (kept[1] or floor):
            chosen[payload["id"]] = (payload, updated)
    if not chosen:
        return empty_raw_frame()

    payloads = [p for p, _ in chosen.values()]
    return pd.DataFrame(
        {
            "source_id": pd.Series([p["id"] for p in payloads], dtype="str"),
            "occurred_at": pd.to_datetime(pd.Series([p["published"] or None for p in payloads], dtype=object), utc=True, format="ISO8601").astype(TS_DTYPE),
            "payload": pd.Series([json.dumps(p, ensure_ascii=False, separators=(",", ":")) for p in payloads], dtype="str"),
            "error": pd.Series([None] * len(payloads), dtype=object),  # parsed entries are never malformed
        }
    ).assign(content_hash=lambda f: [content_hash(p) for p in f["payload"]])
