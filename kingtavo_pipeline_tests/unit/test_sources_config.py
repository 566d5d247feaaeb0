from pathlib import Path

import pytest

from kingtavo_pipeline.sources import (
    DEFAULT_FEED_FIELDS,
    CsvSource,
    RssSource,
    default_sources_path,
    load_sources,
)
from kingtavo_pipeline.sources.config import SOURCES_FILE_ENV

PACKAGE = Path(__file__).resolve().parents[2] / "kingtavo_pipeline"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_default_sources_file_loads_and_points_at_the_samples(monkeypatch):
    monkeypatch.delenv(SOURCES_FILE_ENV, raising=False)
    path = default_sources_path()
    assert path == PACKAGE / "sources.yaml"
    config = load_sources(path)
    assert [s.name for s in config.csv] == ["shop_orders", "suppliers", "catalog"]
    assert [s.name for s in config.rss] == ["tech_news", "release_notes"]
    for source in config.csv:
        files = source.files()
        assert len(files) == 1 and files[0].is_file() and files[0].is_absolute()
        assert {"external_id", "title"} <= set(source.field_map)
    for source in config.rss:
        assert Path(source.url).is_file()
        assert source.field_map == DEFAULT_FEED_FIELDS
    assert config.get("suppliers").dayfirst is True
    assert config.get("shop_orders").entity == "orders"


def test_env_var_overrides_default_path(tmp_path, monkeypatch):
    target = write(tmp_path / "mine.yaml", "csv: []\n")
    monkeypatch.setenv(SOURCES_FILE_ENV, str(target))
    assert default_sources_path() == target
    assert load_sources(default_sources_path()).all() == []


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    conf_dir = tmp_path / "conf"
    for name in ("b.csv", "a.csv", "notes.txt"):
        write(conf_dir / "data" / name, "id\n1\n")
    write(conf_dir / "feeds" / "f.xml", "<rss/>")
    cfg = write(
        conf_dir / "sources.yaml",
        """
csv:
  - name: folder
    path: data
  - name: globbed
    path: data/*.csv
  - name: single
    path: data/b.csv
    delimiter: tab
rss:
  - name: local_feed
    url: feeds/f.xml
  - name: remote_feed
    url: https://example.com/feed.xml
    fields: {title: title}
""",
    )
    monkeypatch.chdir(tmp_path)  # must not matter
    config = load_sources(cfg)
    data = conf_dir / "data"
    assert config.get("folder").files() == [data / "a.csv", data / "b.csv"]
    assert config.get("globbed").files() == [data / "a.csv", data / "b.csv"]
    assert config.get("single").files() == [data / "b.csv"]
    assert config.get("single").delimiter == "\t"
    assert config.get("folder").entity == "items" and config.get("folder").encoding == "auto"
    local = config.get("local_feed")
    assert isinstance(local, RssSource) and local.url == str(conf_dir / "feeds" / "f.xml") and not local.is_remote
    remote = config.get("remote_feed")
    assert remote.is_remote and remote.url == "https://example.com/feed.xml"
    assert remote.field_map == {"title": "title"}


def test_missing_plain_path_raises_but_empty_glob_is_empty(tmp_path):
    assert CsvSource(name="g", path=str(tmp_path / "*.csv")).files() == []
    with pytest.raises(FileNotFoundError, match="no such file"):
        CsvSource(name="m", path=str(tmp_path / "missing.csv")).files()


def test_duplicate_names_are_rejected_across_csv_and_rss(tmp_path):
    cfg = write(
        tmp_path / "sources.yaml",
        "csv:\n  - {name: news, path: a.csv}\nrss:\n  - {name: news, url: https://example.com/rss}\n",
    )
    with pytest.raises(ValueError, match=r"sources\.yaml.*duplicate source name.*'news'"):
        load_sources(cfg)


def test_unknown_unified_field_is_rejected(tmp_path):
    cfg = write(
        tmp_path / "sources.yaml",
        "csv:\n  - name: orders\n    path: a.csv\n    fields: {title: product, colour: colour}\n",
    )
    with pytest.raises(ValueError) as err:
        load_sources(cfg)
    message = str(err.value)
    assert str(cfg) in message
    assert "csv[0].fields" in message and "colour" in message


def test_unknown_keys_and_bad_values_are_rejected(tmp_path):
    cases = {
        "csv:\n  - {name: a, path: a.csv, id_colum: id}\n": "id_colum",
        "csv:\n  - {name: Bad-Name, path: a.csv}\n": "csv[0].name",
        "csv:\n  - {name: a, path: a.csv, delimiter: ':'}\n": "delimiter",
        "csv:\n  - {name: a, path: a.csv, encoding: no-such-codec}\n": "unknown encoding",
        "rss:\n  - {name: a, url: 'ftp://example.com/feed'}\n": "http(s)",
        "xml: []\n": "xml",
        "- just\n- a list\n": "expected a mapping",
        "csv: [\n": "not valid YAML",
    }
    for index, (text, expected) in enumerate(cases.items()):
        cfg = write(tmp_path / f"s{index}.yaml", text)
        with pytest.raises(ValueError) as err:
            load_sources(cfg)
        assert str(cfg) in str(err.value)
        assert expected in str(err.value), (text, str(err.value))


def test_missing_file_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_sources(tmp_path / "nope.yaml")


def test_empty_file_is_an_empty_config(tmp_path):
    assert load_sources(write(tmp_path / "s.yaml", "")).all() == []
