"""Source readers: CSV files and RSS/Atom feeds -> RAW FRAMES (source_id, occurred_at, payload, error).

Pure logic (pandas, feedparser, httpx); the Dagster assets live elsewhere.
"""

from .config import (
    DEFAULT_FEED_FIELDS,
    SOURCES_FILE_ENV,
    CsvSource,
    RssSource,
    SourcesConfig,
    default_sources_path,
    load_sources,
    parse_sources,
)
from .csv_source import RAW_COLUMNS, detect_delimiter, detect_encoding, empty_raw_frame, iter_raw_batches
from .rss_source import read_feed

__all__ = [
    "DEFAULT_FEED_FIELDS",
    "RAW_COLUMNS",
    "SOURCES_FILE_ENV",
    "CsvSource",
    "RssSource",
    "SourcesConfig",
    "default_sources_path",
    "detect_delimiter",
    "detect_encoding",
    "empty_raw_frame",
    "iter_raw_batches",
    "load_sources",
    "parse_sources",
    "read_feed",
]
