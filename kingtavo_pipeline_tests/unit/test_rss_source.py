import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from kingtavo_pipeline.sources import DEFAULT_FEED_FIELDS, RAW_COLUMNS, RssSource, load_sources, read_feed
from kingtavo_pipeline.transform import map_to_unified

PACKAGE = Path(__file__).resolve().parents[2] / "kingtavo_pipeline"


def sample_source(name: str) -> RssSource:
    return load_sources(PACKAGE / "sources.yaml").get(name)


def by_id(frame: pd.DataFrame) -> dict[str, dict]:
    return {row["id"]: row for row in (json.loads(p) for p in frame["payload"])}


def local(tmp_path: Path, text: str, name: str = "feed.xml") -> RssSource:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return RssSource(name="t", url=str(path))


def test_rss_sample_parsed_and_deduplicated():
    frame = read_feed(sample_source("tech_news"))
    assert list(frame.columns) == list(RAW_COLUMNS)
    assert len(frame) == 8  # 9 <item>s, one guid twice
    assert frame["source_id"].is_unique
    rows = by_id(frame)
    outage = rows["tn-2024-11-02-outage"]
    assert outage["title"].startswith("[Updated]")  # the later copy wins
    assert outage["published"] == "2024-11-02T15:20:00+00:00"
    assert outage["tags"] == "cloud, incidents"
    assert outage["author"] == "Sam Okafor"
    assert outage["feed_title"] == "Kingtavo Tech News"
    assert set(outage) == {"id", "title", "link", "summary", "author", "tags", "published", "updated", "feed_title"}
    pg = rows["tn-2024-11-01-postgres"]
    assert pg["summary"] == "The point release fixes a planner regression in partition pruning & two memory leaks."
    # no <guid>: the link is the id; "+0100" converted to UTC
    assert "https://news.example.com/2024/11/02/open-banking" in rows
    token = rows["https://news.example.com/2024/11/01/tokenisation"]
    assert token["published"] == "2024-11-01T15:05:00+00:00"
    assert frame["occurred_at"].dt.date.value_counts().sort_index().tolist() == [3, 3, 2]
    assert str(frame["occurred_at"].dt.tz) == "UTC"


def test_atom_sample_parsed():
    frame = read_feed(sample_source("release_notes"))
    assert len(frame) == 6
    rows = by_id(frame)
    api = rows["urn:kingtavo:release:orders-api-2.3"]
    assert api["summary"] == "New updated_since filter for incremental sync. cursor pagination"  # from <content>
    assert api["author"] == "Tomás Ferreira"
    assert api["link"] == "https://releases.example.com/orders-api-2-3"
    dark = rows["urn:kingtavo:release:admin-dark-mode"]
    assert dark["published"] == "2024-11-02T11:00:00+00:00" and dark["tags"] == "admin, ui"
    assert frame["occurred_at"].dt.date.value_counts().sort_index().tolist() == [2, 2, 2]


def test_atom_duplicates_keep_latest_updated(tmp_path):
    entry = """<entry><title>{title}</title><id>urn:x:1</id><link href="https://e.example/1"/>
      <published>2024-11-01T10:00:00Z</published><updated>{updated}</updated></entry>"""
    feed = (
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>F</title>'
        + entry.format(title="old", updated="2024-11-01T10:00:00Z")
        + entry.format(title="newest", updated="2024-11-03T10:00:00Z")
        + entry.format(title="middle", updated="2024-11-02T10:00:00Z")
        + "</feed>"
    )
    frame = read_feed(local(tmp_path, feed))
    assert len(frame) == 1
    assert by_id(frame)["urn:x:1"]["title"] == "newest"


def test_entry_without_id_or_link_gets_a_hash_id(tmp_path):
    feed = """<?xml version="1.0"?><rss version="2.0"><channel><title>F</title>
      <item><title>Lonely item</title><pubDate>Sat, 02 Nov 2024 10:00:00 GMT</pubDate></item>
      <item><title>No date either</title></item>
    </channel></rss>"""
    frame = read_feed(local(tmp_path, feed))
    expected = hashlib.sha256("Lonely item\n2024-11-02T10:00:00+00:00".encode()).hexdigest()
    assert frame["source_id"].iloc[0] == expected
    assert frame["source_id"].str.len().eq(64).all()
    assert pd.isna(frame["occurred_at"].iloc[1])
    assert json.loads(frame["payload"].iloc[1])["published"] == ""


def test_http_feed_goes_through_fetch():
    calls = []
    body = (PACKAGE / "samples" / "feeds" / "release_notes_atom.xml").read_bytes()

    def fetch(url: str) -> bytes:
        calls.append(url)
        return body

    source = RssSource(name="remote", url="https://feeds.example.com/releases.atom")
    frame = read_feed(source, fetch=fetch)
    assert calls == ["https://feeds.example.com/releases.atom"]
    assert len(frame) == 6


def test_bozo_feed_without_entries_raises(tmp_path):
    with pytest.raises(ValueError, match=r"'t'.*cannot parse feed.*syntax error"):
        read_feed(local(tmp_path, "this is not a feed <<<"))


def test_html_page_instead_of_a_feed_raises(tmp_path):
    with pytest.raises(ValueError, match="not an RSS or Atom document"):
        read_feed(local(tmp_path, "<html><body><p>Please log in</p></body></html>"))


def test_valid_empty_feed_gives_an_empty_raw_frame(tmp_path):
    frame = read_feed(local(tmp_path, '<?xml version="1.0"?><rss version="2.0"><channel><title>x</title></channel></rss>'))
    assert frame.empty and list(frame.columns) == list(RAW_COLUMNS)
    assert str(frame["occurred_at"].dtype).startswith("datetime64")


def test_feed_rows_map_with_default_fields():
    assert sample_source("tech_news").field_map == DEFAULT_FEED_FIELDS
    frame = read_feed(sample_source("tech_news"))
    raw = frame.assign(
        source_type="rss",
        source_name="tech_news",
        raw_data_id=range(1, len(frame) + 1),
        partition_date=frame["occurred_at"].dt.date,
    )
    result = map_to_unified(raw, DEFAULT_FEED_FIELDS)
    assert result.rejects.empty
    assert len(result.valid) == 8
    row = result.valid.set_index("external_id").loc["tn-2024-11-02-outage"]
    assert row["category"] == "cloud, incidents"
    assert row["url"] == "https://news.example.com/2024/11/02/outage"
    assert json.loads(row["metadata"]) == {"author": "Sam Okafor", "feed_title": "Kingtavo Tech News"}
