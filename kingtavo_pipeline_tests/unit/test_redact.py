"""No password survives redaction, whatever form the URL or DSN takes."""

from __future__ import annotations

import httpx
import pytest

from kingtavo_pipeline.sources.config import RssSource
from kingtavo_pipeline.sources.rss_source import read_feed
from kingtavo_pipeline.storage.errors import StoreUnavailableError, describe_error, redact_url
from kingtavo_pipeline.storage.postgres import PostgresStore, sqlalchemy_url

SECRET = "s3cr3t"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://kingtavo:s3cr3t@db:5432/kingtavo", "postgresql://kingtavo:***@db:5432/kingtavo"),
        ("postgresql://:s3cr3t@h/db", "postgresql://:***@h/db"),
        ("postgresql://u@h/db?password=s3cr3t", "postgresql://u@h/db?password=***"),
        ("postgresql://u@h/db?sslmode=require&password=s3cr3t&x=1", "postgresql://u@h/db?sslmode=require&password=***&x=1"),
        ("postgresql://u:p@s3cr3t@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p/s3cr3t@h/db?application_name=a@b", "postgresql://u:***@h/db?application_name=a@b"),
        ("host=h password=s3cr3t dbname=x", "host=h password=*** dbname=x"),
        ("host=h password='se s3cr3t' user=u", "host=h password=*** user=u"),
        (r"password='it\'s s3cr3t' host=h", "password=*** host=h"),
        ("host=h password = s3cr3t", "host=h password = ***"),
        ("https://default:s3cr3t@ch.internal:8443", "https://default:***@ch.internal:8443"),
        ("https://ch.internal:8443/?user=default&password=s3cr3t", "https://ch.internal:8443/?user=default&password=***"),
        ("error at 'postgresql://u:s3cr3t@h/db' (retry)", "error at 'postgresql://u:***@h/db' (retry)"),
        ("{'password': 's3cr3t', 'host': 'h'}", "{'password': '***', 'host': 'h'}"),
    ],
)
def test_every_password_form_is_redacted(text, expected):
    assert redact_url(text) == expected
    assert SECRET not in redact_url(text)


@pytest.mark.parametrize("text", ["postgresql://u@h:5432/db", "chdb:///var/lib/kingtavo/clickhouse", "https://ch:8443", ""])
def test_urls_without_a_password_are_unchanged(text):
    assert redact_url(text) == text


def test_a_dsn_that_is_not_a_url_is_redacted_in_the_error():
    with pytest.raises(StoreUnavailableError) as err:
        sqlalchemy_url("host=db.internal password=s3cr3t dbname=kingtavo")
    assert SECRET not in str(err.value) and "db.internal" in str(err.value)


def test_an_unescaped_at_in_the_password_is_a_clear_error_not_a_leak():
    """Drivers split at the first '@' and would name the password's tail as the host."""
    with pytest.raises(StoreUnavailableError) as err:
        PostgresStore("postgresql://kingtavo:p@s3cr3t@127.0.0.1:1/kingtavo").fetch_value("SELECT 1")
    message = str(err.value)
    assert SECRET not in message and "%40" in message


def test_describe_error_keeps_class_and_redacts():
    exc = RuntimeError("cannot open postgresql://u:s3cr3t@h/db")
    assert describe_error(exc) == "RuntimeError: cannot open postgresql://u:***@h/db"


def test_feed_errors_and_descriptions_hide_the_feeds_token():
    url = "https://reader:s3cr3t@feeds.example.com/rss?token=s3cr3t"

    def unauthorized(u: str) -> bytes:
        response = httpx.Response(401, request=httpx.Request("GET", u))
        response.raise_for_status()  # its message repeats the URL, credentials included
        return b""

    with pytest.raises(ValueError) as err:
        read_feed(RssSource(name="news", url=url), fetch=unauthorized)
    assert SECRET not in str(err.value) and "feeds.example.com" in str(err.value)

    from kingtavo_pipeline.defs.ingest.assets import build_raw_assets
    from kingtavo_pipeline.sources.config import SourcesConfig

    (asset,) = build_raw_assets(SourcesConfig(rss=[RssSource(name="news", url=url)]))
    description = asset.specs_by_key[asset.key].description
    assert "feeds.example.com" in description and SECRET not in description


def test_printed_settings_show_no_store_url(monkeypatch):
    from kingtavo_pipeline.settings import Settings

    monkeypatch.setenv("KINGTAVO_POSTGRES_URL", "postgresql://u:s3cr3t@db/kingtavo")
    monkeypatch.setenv("KINGTAVO_CLICKHOUSE_URL", "https://default:s3cr3t@ch:8443")
    assert SECRET not in repr(Settings()) and SECRET not in str(Settings())
