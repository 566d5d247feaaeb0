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
    empty_raw_frame,
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
        ("id;name\r1;a\r2;b\r", ";"),  # old Mac line ends
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
    assert frame["error"].isna().all()
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

    # Same content elsewhere -> same id; no id column configured -> hashes for all.
    copy = tmp_path / "copy.csv"
    copy.write_bytes((SAMPLES / "catalog_bom.csv").read_bytes())
    again = read_all(CsvSource(name="c", path=str(copy), id_column="sku"))
    assert again["source_id"].iloc[index] == frame["source_id"].iloc[index]
    no_id = read_all(CsvSource(name="c", path=str(copy)))
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
    good = [r for r, e in zip(rows, frame["error"]) if e is None]
    assert [r["id"] for r in good] == ["1", "2", "4"]
    assert good[0]["name"] == "multi\nline"
    assert good[1]["note"] == ""  # missing trailing field -> empty string, not an error
    assert [r["_line"] for r in rows] == [1, 2, 3, 4]  # file order, the bad record in its place
    assert frame["error"].tolist() == [None, None, "line 3: expected 3 fields, saw 4", None]
    assert rows[2] == {"_file": "ragged.csv", "_line": 3, "_raw": "3,too,many,fields"}
    assert "line 3: expected 3 fields, saw 4" in caplog.text


def test_over_long_rows_are_kept_with_an_error(tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(
        "id,day,title,price\n"
        "A1,2024-11-01,first,1.50\n"
        "A2,2024-11-01,an unquoted, comma,2.00\n"
        'A3,2024-11-02,"quoted, fine",3.00\n'
        "A4,2024-11-02,four\n"
        ",2024-11-03,no id,1,2,3\n"
        "A6,2024-11-03,last,6.00\n",
        encoding="utf-8",
    )
    source = CsvSource(name="o", path=str(path), id_column="id", date_column="day")
    frame = read_all(source)
    assert list(frame.columns) == list(RAW_COLUMNS) == ["source_id", "occurred_at", "payload", "error", "content_hash"]
    assert len(frame) == 6  # nothing dropped
    rows = payloads(frame)

    good = frame["error"].isna()
    assert frame.loc[good, "source_id"].tolist() == ["A1", "A3", "A4", "A6"]
    assert [r["_line"] for r, ok in zip(rows, good) if ok] == [1, 3, 4, 6]
    assert rows[2]["title"] == "quoted, fine" and rows[3]["price"] == ""
    assert frame.loc[good, "occurred_at"].notna().all()

    bad = frame[~good]
    assert bad["error"].tolist() == ["line 2: expected 4 fields, saw 5", "line 5: expected 4 fields, saw 6"]
    assert [rows[i] for i in bad.index] == [
        {"_file": "orders.csv", "_line": 2, "_raw": "A2,2024-11-01,an unquoted, comma,2.00"},
        {"_file": "orders.csv", "_line": 5, "_raw": ",2024-11-03,no id,1,2,3"},
    ]
    assert bad["occurred_at"].isna().all()
    # The id when it can be read, else the sha256 of the raw text.
    assert bad["source_id"].tolist() == ["A2", hashlib.sha256(b",2024-11-03,no id,1,2,3").hexdigest()]

    # Batching changes nothing, and a batch counts bad rows too.
    batches = list(iter_raw_batches(source, batch_size=4))
    assert [len(b) for b in batches] == [4, 2]
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), frame)


def test_bad_rows_in_semicolon_latin1_and_crlf_files(tmp_path):
    latin = tmp_path / "latin.csv"
    text = 'id;name;city\r\n1;Café;Köln\r\n2;Señor;Málaga;Spain\r\n3;"Größe\r\nzwei";Wien\r\n'
    latin.write_bytes(text.encode("latin-1"))
    frame = read_all(CsvSource(name="l", path=str(latin), id_column="id"))
    rows = payloads(frame)
    assert frame["error"].tolist() == [None, "line 2: expected 3 fields, saw 4", None]
    assert rows[1]["_raw"] == "2;Señor;Málaga;Spain"
    assert rows[2] == {"id": "3", "name": "Größe\r\nzwei", "city": "Wien", "_file": "latin.csv", "_line": 3}

    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffsku,name\n1,Kaffeemühle\n2,x,y\n".encode("utf-8"))
    frame = read_all(CsvSource(name="b", path=str(bom), id_column="sku"))
    assert list(payloads(frame)[0]) == ["sku", "name", "_file", "_line"]
    assert frame["error"].tolist() == [None, "line 2: expected 2 fields, saw 3"]


def test_trailing_delimiters_and_blank_lines_lose_nothing(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,name\n1,a,\n\n2,b\n   \n3,c,,\n", encoding="utf-8")
    frame = read_all(CsvSource(name="t", path=str(path), id_column="id"))
    assert frame["error"].isna().all()  # only empty fields past the header: nothing to lose
    assert [(r["id"], r["name"], r["_line"]) for r in payloads(frame)] == [("1", "a", 1), ("2", "b", 2), ("3", "c", 3)]


def test_records_longer_than_a_block_are_read_whole(tmp_path, monkeypatch, caplog):
    import kingtavo_pipeline.sources.csv_source as csv_source

    path = tmp_path / "long.csv"
    long_value = "x" * 5000
    lines = [f"{i},v{i}" for i in range(1, 200)]
    lines[120] = f'121,"{long_value}\n{long_value}"'
    lines[150] = "151,too,many"
    path.write_text("id,v\n" + "\n".join(lines) + "\n", encoding="utf-8")
    source = CsvSource(name="l", path=str(path), id_column="id")
    expected = read_all(source, batch_size=50)

    monkeypatch.setattr(csv_source, "BLOCK_BYTES", 256)  # forces a re-read with bigger blocks
    with caplog.at_level(logging.INFO):
        batches = list(iter_raw_batches(source, batch_size=50))
    assert "reading again" in caplog.text  # after two batches were already yielded
    got = pd.concat(batches, ignore_index=True)
    pd.testing.assert_frame_equal(got, expected)
    assert [r["_line"] for r in payloads(got)] == list(range(1, 200))
    assert got["source_id"].tolist() == [str(i) for i in range(1, 200)]
    assert got["error"].notna().sum() == 1 and len(payloads(got)[120]["v"]) == 10001


def test_empty_raw_frame_has_the_raw_columns():
    frame = empty_raw_frame()
    assert list(frame.columns) == list(RAW_COLUMNS) and frame.empty
    assert str(frame["occurred_at"].dtype) == "datetime64[us, UTC]"


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
        assert batch["error"].isna().all()
    assert sizes == [60_000, 60_000, 60_000, 20_000]
    assert sum(sizes) == rows
