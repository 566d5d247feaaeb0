import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from kingtavo_pipeline.sources import (
    RAW_COLUMNS,
    CsvSource,
    detect_delimiter,
    detect_encoding,
    iter_raw_batches,
    load_sources,
)

PACKAGE = Path(__file__).resolve().parents[2] / "kingtavo_pipeline"
SAMPLES = PACKAGE / "samples" / "csv"


def sample_source(name: str) -> CsvSource:
    return load_sources(PACKAGE / "sources.yaml").get(name)


def read_all(source: CsvSource, batch_size: int = 50_000) -> pd.DataFrame:
    return pd.concat(list(iter_raw_batches(source, batch_size=batch_size)), ignore_index=True)


def payloads(frame: pd.DataFrame) -> list[dict]:
    return [json.loads(p) for p in frame["payload"]]


# --------------------------------------------------------------------------------- encodings


def test_detect_encoding_of_the_samples():
    assert detect_encoding(SAMPLES / "shop_orders_semicolon.csv") == "utf-8"
    assert detect_encoding(SAMPLES / "catalog_bom.csv") == "utf-8-sig"
    latin = detect_encoding(SAMPLES / "suppliers_latin1.csv")
    assert (SAMPLES / "suppliers_latin1.csv").read_bytes().decode(latin) == (
        SAMPLES / "suppliers_latin1.csv"
    ).read_bytes().decode("latin-1")


def test_latin1_values_come_out_readable():
    rows = payloads(read_all(sample_source("suppliers")))
    names = {r["name"] for r in rows}
    assert {"Café Müller", "Señor Niño Importaciones", "Kaffeehaus Größe", "Ångström Tools"} <= names
    assert {r["city"] for r in rows} >= {"Köln", "Málaga", "São Paulo"}
    assert "Crème & Co, Ltd" in names  # quoted comma survives


def test_utf8_bom_and_utf16_files(tmp_path):
    rows = payloads(read_all(sample_source("catalog")))
    assert list(rows[0])[0] == "sku"  # BOM stripped from the first header
    assert any(r["name"] == "Kaffeemühle Holz" for r in rows)

    path = tmp_path / "u16.csv"
    path.write_text("id;name\n1;Café\n2;Müller\n", encoding="utf-16")
    assert detect_encoding(path) == "utf-16"
    frame = read_all(CsvSource(name="u16", path=str(path), id_column="id"))
    assert [r["name"] for r in payloads(frame)] == ["Café", "Müller"]


def test_bom_stripped_even_with_an_explicit_utf8_encoding(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeff id ,name\n7,x\n".encode("utf-8"))
    frame = read_all(CsvSource(name="b", path=str(path), encoding="utf-8", id_column="id"))
    assert payloads(frame)[0] == {"id": "7", "name": "x", "_file": "bom.csv", "_line": 1}
    assert frame["source_id"].tolist() == ["7"]


def test_explicit_encoding_is_used(tmp_path):
    path = tmp_path / "w.csv"
    path.write_bytes("id,name\n1,Señor\n".encode("cp1252"))
    frame = read_all(CsvSource(name="w", path=str(path), encoding="latin-1"))
    assert payloads(frame)[0]["name"] == "Señor"


# -------------------------------------------------------------------------------- delimiters


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("order_id;total;notes\n1;19,90;a, b\n2;5,00;\n3;1.249,00;x\n", ";"),
        ("id,name,notes\n1,\"Crème, Co\",x\n2,b,y\n", ","),
        ("id\tname\tprice\n1\ta\t1,5\n2\tb\t2,5\n", "\t"),
        ("id|name|price\n1|a, b|3\n2|c|4\n", "|"),
        ("just_one_column\nvalue\nother\n", ","),
        ("", ","),
    ],
)
def test_detect_delimiter(text, expected):
    assert detect_delimiter(text) == expected


def test_semicolon_sample_is_split_on_semicolons():
    frame = read_all(sample_source("shop_orders"))
    first = payloads(frame)[0]
    assert list(first)[:8] == ["order_id", "order_date", "product", "category", "qty", "total", "notes", "link"]
    assert first["total"] == "39,80"
    quoted = next(r for r in payloads(frame) if r["order_id"] == "ORD-1004")
    assert quoted["notes"] == "customer asked for invoice; company VAT on file"


# --------------------------------------------------------------------------------- raw frames


def test_raw_frame_shape_and_values():
    frame = read_all(sample_source("shop_orders"))
    assert list(frame.columns) == list(RAW_COLUMNS)
    assert len(frame) == 25
    assert str(frame["occurred_at"].dtype).startswith("datetime64") and str(frame["occurred_at"].dt.tz) == "UTC"
    assert frame["source_id"].iloc[0] == "ORD-1001"
    assert frame["occurred_at"].iloc[0] == pd.Timestamp("2024-11-01T08:05:00Z")
    # "+01:00" offsets are converted to UTC
    late = frame.set_index("source_id").loc["ORD-1009", "occurred_at"]
    assert late == pd.Timestamp("2024-11-01T20:14:00Z")
    rows = payloads(frame)
    assert [r["_line"] for r in rows] == list(range(1, 26))
    assert {r["_file"] for r in rows} == {"shop_orders_semicolon.csv"}
    assert frame["occurred_at"].dt.date.value_counts().sort_index().tolist() == [9, 8, 8]


def test_small_batches_union_equals_whole_file():
    source = sample_source("shop_orders")
    batches = list(iter_raw_batches(source, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 4, 1]
    whole = read_all(source, batch_size=1000)
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), whole)


def test_missing_id_falls_back_to_content_hash(tmp_path):
    frame = read_all(sample_source("catalog"))
    rows = payloads(frame)
    index = next(i for i, r in enumerate(rows) if r["sku"] == "")
    content = {k: v for k, v in rows[index].items() if k not in ("_file", "_line")}
    canonical = json.dumps(dict(sorted(content.items())), ensure_ascii=False, separators=(",", ":"))
    assert frame["source_id"].iloc[index] == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert frame["source_id"].iloc[0] == "SKU-ESP-1K"

    # Same content elsewhere -> same id; an id column missing from the file -> hashes for all.
    copy = tmp_path / "copy.csv"
    copy.write_bytes((SAMPLES / "catalog_bom.csv").read_bytes())
    again = read_all(CsvSource(name="c", path=str(copy), id_column="sku"))
    assert again["source_id"].iloc[index] == frame["source_id"].iloc[index]
    no_id = read_all(CsvSource(name="c", path=str(copy), id_column="no_such_column"))
    assert no_id["source_id"].str.len().eq(64).all() and no_id["source_id"].is_unique


def test_id_values_are_stripped_and_columns_matched_case_insensitively(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("ID,When\n  a-1 ,2024-11-02\n", encoding="utf-8")
    frame = read_all(CsvSource(name="i", path=str(path), id_column="id", date_column="when"))
    assert frame["source_id"].tolist() == ["a-1"]
    assert frame["occurred_at"].tolist() == [pd.Timestamp("2024-11-02T00:00:00Z")]


def test_dates_dayfirst_format_and_unparseable(tmp_path):
    rows = read_all(sample_source("suppliers"))
    assert rows["occurred_at"].iloc[0] == pd.Timestamp("2024-11-01T08:30:00Z")  # 01/11/2024, not Jan 11
    assert rows["occurred_at"].dt.date.value_counts().sort_index().tolist() == [4, 4, 4]

    path = tmp_path / "d.csv"
    path.write_text("id,d\n1,2024-11-03\n2,03/11/2024\n3,yesterday\n4,\n", encoding="utf-8")
    got = read_all(CsvSource(name="d", path=str(path), date_column="d", dayfirst=True))["occurred_at"]
    assert got.iloc[0] == got.iloc[1] == pd.Timestamp("2024-11-03T00:00:00Z")  # ISO never re-read dayfirst
    assert got.iloc[2:].isna().all()

    fmt = tmp_path / "f.csv"
    fmt.write_text("id,d\n1,03.11.2024 14h05\n", encoding="utf-8")
    got = read_all(CsvSource(name="f", path=str(fmt), date_column="d", date_format="%d.%m.%Y %Hh%M"))
    assert got["occurred_at"].iloc[0] == pd.Timestamp("2024-11-03T14:05:00Z")

    no_date = read_all(CsvSource(name="n", path=str(fmt)))
    assert no_date["occurred_at"].isna().all()


def test_folder_source_batches_per_file(tmp_path):
    (tmp_path / "b.csv").write_text("id,v\n3,c\n", encoding="utf-8")
    (tmp_path / "a.csv").write_text("id,v\n1,a\n2,b\n", encoding="utf-8")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    (tmp_path / "header_only.csv").write_text("id,v\n", encoding="utf-8")
    batches = list(iter_raw_batches(CsvSource(name="f", path=str(tmp_path), id_column="id"), batch_size=10))
    assert [b["source_id"].tolist() for b in batches] == [["1", "2"], ["3"]]
    assert [json.loads(b["payload"].iloc[0])["_file"] for b in batches] == ["a.csv", "b.csv"]


def test_ragged_rows(tmp_path, caplog):
    path = tmp_path / "ragged.csv"
    path.write_text('id,name,note\n1,"multi\nline",x\n2,short\n3,too,many,fields\n4,ok,y\n', encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        frame = read_all(CsvSource(name="r", path=str(path), id_column="id"))
    rows = payloads(frame)
    assert [r["id"] for r in rows] == ["1", "2", "4"]
    assert rows[0]["name"] == "multi\nline"
    assert rows[1]["note"] == ""  # missing trailing field -> empty string
    assert "expected 3 fields, saw 4" in caplog.text


def test_payload_json_keeps_slashes_and_backslashes(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('id,url,path\n1,https://x.example/a/b,"C:\\\\dir\\\\/f"\n', encoding="utf-8")
    row = payloads(read_all(CsvSource(name="s", path=str(path))))[0]
    assert row["url"] == "https://x.example/a/b"
    assert row["path"] == "C:\\\\dir\\\\/f"
    raw = read_all(CsvSource(name="s", path=str(path)))["payload"].iloc[0]
    assert '"https://x.example/a/b"' in raw


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError):
        list(iter_raw_batches(sample_source("catalog"), batch_size=0))


def test_large_file_streams_in_batches(tmp_path):
    path = tmp_path / "big.csv"
    rows = 200_000
    with path.open("w", encoding="utf-8") as fh:
        fh.write("id;day;name;price\n")
        fh.writelines(f"{i};2024-11-0{1 + i % 3}T10:00:00Z;item {i};{i % 100},50\n" for i in range(rows))
    source = CsvSource(name="big", path=str(path), id_column="id", date_column="day")
    sizes = []
    last_line = 0
    for batch in iter_raw_batches(source, batch_size=60_000):
        sizes.append(len(batch))
        assert list(batch.columns) == list(RAW_COLUMNS)
        assert json.loads(batch["payload"].iloc[0])["_line"] == last_line + 1
        last_line += len(batch)
        assert batch["occurred_at"].notna().all()
    assert sizes == [60_000, 60_000, 60_000, 20_000]
    assert sum(sizes) == rows
