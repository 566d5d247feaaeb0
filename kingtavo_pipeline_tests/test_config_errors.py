"""Bad configuration fails fast with one clear error: in the reader, in a Dagster run, in the
`kingtavo` command and in `dagster definitions validate`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from kingtavo_pipeline.defs.ingest.assets import build_raw_assets
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.sources.config import CsvSource, RssSource, SourceConfigError, load_sources
from kingtavo_pipeline.sources.csv_source import iter_raw_batches
from kingtavo_pipeline.sources.rss_source import read_feed

BIN = Path(sys.executable).parent
ORDERS = "order_no;ordered;item;total\nA-1;2024-11-01;Mug;9.50\nA-2;2024-11-01;Cup;4.00\n"


def _orders(folder: Path, name: str = "orders.csv", text: str = ORDERS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --- a column the file does not have -------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"date_column": "order_date"}, "date_column 'order_date'"),
        ({"id_column": "order_id"}, "id_column 'order_id'"),
        ({"fields": {"external_id": "order_no", "title": "product"}}, "fields.title 'product'"),
    ],
)
def test_a_column_missing_from_the_header_raises_naming_it(tmp_path, options, named):
    path = _orders(tmp_path)
    source = CsvSource(name="orders", path=str(path), **options)
    with pytest.raises(SourceConfigError) as err:
        next(iter_raw_batches(source))
    message = str(err.value)
    assert "'orders'" in message and str(path) in message and named in message
    assert "'order_no', 'ordered', 'item', 'total'" in message  # the header it found
    assert "\n" not in message


def test_the_closest_header_name_is_suggested(tmp_path):
    source = CsvSource(name="orders", path=str(_orders(tmp_path)), date_column="orderd")
    with pytest.raises(SourceConfigError, match=r"did you mean 'ordered'\?"):
        next(iter_raw_batches(source))


def test_present_columns_pass_matched_as_the_reader_matches_them(tmp_path):
    source = CsvSource(
        name="orders",
        path=str(_orders(tmp_path)),
        id_column="ORDER_NO",  # id and date columns match case-insensitively
        date_column="Ordered",
        fields={"external_id": "order_no", "title": "item", "description": "_file"},
    )
    assert sum(len(f) for f in iter_raw_batches(source)) == 2


def test_every_file_is_checked_before_any_row_is_yielded(tmp_path):
    _orders(tmp_path / "in", "a.csv")
    _orders(tmp_path / "in", "b.csv", ORDERS.replace("ordered", "when"))
    source = CsvSource(name="orders", path=str(tmp_path / "in"), date_column="ordered")
    batches = iter_raw_batches(source)
    with pytest.raises(SourceConfigError, match="b.csv"):
        next(batches)


def test_feed_fields_must_name_entry_keys():
    feed = Path(__file__).resolve().parents[1] / "kingtavo_pipeline" / "samples" / "feeds" / "tech_news_rss.xml"
    source = RssSource(name="news", url=str(feed), fields={"external_id": "id", "title": "headline"})
    with pytest.raises(SourceConfigError, match=r"rss source 'news'.*'headline'"):
        read_feed(source)


def test_a_raw_run_with_a_missing_date_column_fails_and_dead_letters_nothing(store, tmp_path):
    path = _orders(tmp_path / "data")
    sources_file = tmp_path / "sources.yaml"
    sources_file.write_text(
        f"csv:\n  - name: orders\n    path: {path}\n    id_column: order_no\n    date_column: order_date\n"
        "    fields: {external_id: order_no, title: item}\n",
        encoding="utf-8",
    )
    assets = build_raw_assets(load_sources(sources_file))
    result = dg.materialize(
        assets, partition_key="2024-11-01", resources={"postgres": PostgresResource()}, raise_on_error=False
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    text = failure.step_failure_data.error.to_string()
    assert "date_column 'order_date'" in text and "orders.csv" in text
    assert failure.step_failure_data.user_failure_data.description.startswith("csv source 'orders'")
    assert store.fetch_value("SELECT count(*) FROM dead_letters") == 0
    assert store.fetch_value("SELECT count(*) FROM raw_data") == 0
    status, message = store.fetch_all("SELECT status, error_message FROM etl_runs")[0]
    assert status == "failed" and "order_date" in message


# --- one line from the command line and from Dagster ---------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KINGTAVO_", "DAGSTER_"))}
    env.update(extra)
    return env


@pytest.fixture
def typo_sources_file(tmp_path) -> Path:
    path = tmp_path / "typo_sources.yaml"
    path.write_text("csv:\n  - name: orders\n    pth: orders.csv\n    date_column: ordered\n", encoding="utf-8")
    return path


def _kingtavo(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kingtavo"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_typo_in_the_sources_file_is_one_line(tmp_path, typo_sources_file):
    out = _kingtavo("demo", env=_env(KINGTAVO_SOURCES_FILE=str(typo_sources_file), KINGTAVO_HOME=str(tmp_path / "h")),
                    cwd=tmp_path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    (line,) = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert str(typo_sources_file) in line and "'pth'" in line and "'path'" in line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--start", "2024-13-01"), "2024-13-01"),
        (("--end", "yesterday"), "yesterday"),
        (("--start", "2023-12-31"), "2024-01-01"),
        (("--start", "2024-11-03", "--end", "2024-11-01"), "2024-11-03"),
    ],
)
def test_cli_bad_days_are_rejected_before_anything_starts(tmp_path, args, named):
    home = tmp_path / "h"
    out = _kingtavo("demo", *args, env=_env(KINGTAVO_HOME=str(home)), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and named in out.stderr
    assert not home.exists()


def test_cli_unreachable_store_is_one_line(tmp_path):
    env = _env(KINGTAVO_POSTGRES_URL="postgresql://kingtavo:pw-4f9a8b@127.0.0.1:1/kingtavo", KINGTAVO_HOME=str(tmp_path))
    for args in (("demo",), ("status",), ("db", "migrate")):
        out = _kingtavo(*args, env=env, cwd=tmp_path)
        assert out.returncode == 1, (args, out.stderr)
        assert "Traceback" not in out.stderr and "pw-4f9a8b" not in out.stderr + out.stdout
        assert "cannot reach PostgreSQL at postgresql://kingtavo:***@127.0.0.1:1/kingtavo" in out.stderr


def test_cli_bad_setting_is_one_line(tmp_path):
    out = _kingtavo("status", env=_env(KINGTAVO_CLICKHOUSE_DATABASE="my-db"), cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "KINGTAVO_CLICKHOUSE_DATABASE" in out.stderr and "'my-db'" in out.stderr


def test_dagster_definitions_validate_names_the_file_and_the_key(tmp_path, typo_sources_file):
    out = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "kingtavo_pipeline.definitions"],
        env=_env(KINGTAVO_SOURCES_FILE=str(typo_sources_file), DAGSTER_HOME=str(tmp_path)),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode != 0
    output = out.stdout + out.stderr
    lines = [ln for ln in output.splitlines() if "SourceConfigError" in ln]
    assert lines, output
    assert str(typo_sources_file) in lines[0] and "csv[0].pth: unknown key 'pth'" in lines[0]
