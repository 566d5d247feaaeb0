import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from kingtavo_pipeline.sources import iter_raw_batches, load_sources
from kingtavo_pipeline.transform import REJECT_COLUMNS, VALID_COLUMNS, map_to_unified, parse_amounts

PACKAGE = Path(__file__).resolve().parents[2] / "kingtavo_pipeline"
DAY = dt.date(2024, 11, 1)
FIELDS = {
    "external_id": "id",
    "title": "name",
    "description": "note",
    "category": "cat",
    "url": "link",
    "amount": "total",
    "quantity": "qty",
    "published_at": "when",
}


def make_raw(*payloads, source_ids=None, partition_date=DAY, source_name="shop") -> pd.DataFrame:
    n = len(payloads)
    return pd.DataFrame(
        {
            "source_type": ["csv"] * n,
            "source_name": [source_name] * n,
            "source_id": source_ids or [f"sid-{i}" for i in range(n)],
            "raw_data_id": list(range(1, n + 1)),
            "partition_date": [partition_date] * n,
            "payload": [p if isinstance(p, str) else json.dumps(p) for p in payloads],
        }
    )


def good(**overrides) -> dict:
    row = {
        "id": "A-1",
        "name": "Widget",
        "note": "blue",
        "cat": "tools",
        "link": "https://shop.example.com/a-1",
        "total": "19.90",
        "qty": "2",
        "when": "2024-11-01T10:00:00Z",
        "colour": "blue",
    }
    row.update(overrides)
    return row


def test_valid_row_columns_dtypes_and_values():
    result = map_to_unified(make_raw(good()), FIELDS)
    assert result.rejects.empty
    valid = result.valid
    assert list(valid.columns) == list(VALID_COLUMNS)
    assert str(valid["amount"].dtype) == "float64"
    assert str(valid["quantity"].dtype) == "Int64"
    assert str(valid["raw_data_id"].dtype) == "int64"
    assert str(valid["published_at"].dt.tz) == "UTC" and str(valid["updated_at"].dt.tz) == "UTC"
    row = valid.iloc[0]
    assert (row["source_type"], row["source_name"], row["external_id"], row["title"]) == ("csv", "shop", "A-1", "Widget")
    assert (row["description"], row["category"], row["url"]) == ("blue", "tools", "https://shop.example.com/a-1")
    assert row["amount"] == pytest.approx(19.9) and row["quantity"] == 2
    assert row["published_at"] == pd.Timestamp("2024-11-01T10:00:00Z")
    # no source modification time mapped: updated_at is when it was observed (here: no extracted_at,
    # so the partition's midnight), and the version is the observation order alone
    assert row["updated_at"] == pd.Timestamp("2024-11-01T00:00:00Z") and pd.isna(row["source_updated_at"])
    assert row["observed_seq"] == 0
    assert row["partition_date"] == DAY and isinstance(row["partition_date"], dt.date)
    assert json.loads(row["metadata"]) == {"colour": "blue"}


def test_optional_fields_absent_are_none_nan_na():
    result = map_to_unified(make_raw({"id": "x", "name": "Only a title"}), FIELDS)
    row = result.valid.iloc[0]
    assert row["description"] is None and row["category"] is None and row["url"] is None
    assert pd.isna(row["amount"]) and pd.isna(row["quantity"]) and pd.isna(row["published_at"])
    # no published_at -> updated_at is the partition date at midnight UTC
    assert row["updated_at"] == pd.Timestamp("2024-11-01T00:00:00Z")


def test_metadata_carries_every_unmapped_key():
    payload = good(extra_number=3, nested={"a": [1, 2]}, _file="orders.csv", _line=7)
    row = map_to_unified(make_raw(payload), FIELDS).valid.iloc[0]
    assert json.loads(row["metadata"]) == {
        "colour": "blue",
        "extra_number": 3,
        "nested": {"a": [1, 2]},
        "_file": "orders.csv",
        "_line": 7,
    }


def test_external_id_falls_back_to_source_id():
    raw = make_raw(good(id=""), good(id="  "), {"name": "unmapped id"}, source_ids=["s-1", "s-2", "s-3"])
    valid = map_to_unified(raw, FIELDS).valid
    assert valid["external_id"].tolist() == ["s-1", "s-2", "s-3"]
    valid = map_to_unified(raw, {"title": "name"}).valid
    assert valid["external_id"].tolist() == ["s-1", "s-2", "s-3"]


def test_european_and_us_amounts():
    values = ["19,90", "1.234,50", "1,234.50", "1234,50", "€ 7,5", "-3,25", "1.000.000", "12"]
    raw = make_raw(*(good(id=f"id{i}", total=v) for i, v in enumerate(values)))
    result = map_to_unified(raw, FIELDS)
    assert result.rejects.empty
    assert result.valid["amount"].tolist() == pytest.approx([19.9, 1234.5, 1234.5, 1234.5, 7.5, -3.25, 1_000_000, 12])


def test_parse_amounts_edge_cases():
    got = parse_amounts(pd.Series(["1,234", "1.5", "abc", "", None, "inf", "nan", 4.25]))
    assert got.iloc[0] == 1234 and got.iloc[1] == 1.5 and got.iloc[7] == 4.25
    assert got.iloc[2:7].isna().all()


@pytest.mark.parametrize(
    ("overrides", "error_type", "message"),
    [
        ({"name": ""}, "missing_required", "title: required value missing (payload key 'name')"),
        ({"name": None}, "missing_required", "title: required value missing (payload key 'name')"),
        ({"total": "abc"}, "invalid_type", "amount: 'abc' is not a number"),
        ({"qty": "many"}, "invalid_type", "quantity: 'many' is not an integer"),
        ({"when": "yesterday"}, "invalid_type", "published_at: 'yesterday' is not a valid date/time"),
        ({"qty": "-3"}, "invalid_value", "quantity: '-3' must be >= 0"),
        ({"qty": "2.5"}, "invalid_value", "quantity: '2.5' is not a whole number"),
        ({"link": "ftp://files.example.com/x"}, "invalid_value", "url: 'ftp://files.example.com/x' is not an http(s) URL"),
        ({"link": "not a url"}, "invalid_value", "url: 'not a url' is not an http(s) URL"),
    ],
)
def test_each_reject_kind(overrides, error_type, message):
    raw = make_raw(good(id="ok"), good(id="bad", **overrides))
    result = map_to_unified(raw, FIELDS)
    assert result.valid["external_id"].tolist() == ["ok"]
    assert list(result.rejects.columns) == list(REJECT_COLUMNS)
    reject = result.rejects.iloc[0]
    assert (reject["source_id"], reject["raw_data_id"]) == ("sid-1", 2)
    assert reject["error_type"] == error_type
    assert reject["error_message"] == message
    assert json.loads(reject["payload"])["id"] == "bad"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "payload: invalid JSON"),
        ("[1, 2]", "payload: not a JSON object (got array)"),
        ('"text"', "payload: not a JSON object (got string)"),
    ],
)
def test_malformed_payload(payload, message):
    result = map_to_unified(make_raw(payload), FIELDS)
    assert result.valid.empty and list(result.valid.columns) == list(VALID_COLUMNS)
    reject = result.rejects.iloc[0]
    assert reject["error_type"] == "malformed_payload"
    assert reject["error_message"].startswith(message)
    assert reject["payload"] == payload


def test_several_problems_give_one_reject_listing_all():
    raw = make_raw(good(name="", total="n/a", qty="-1", link="mailto:x@example.com"))
    rejects = map_to_unified(raw, FIELDS).rejects
    assert len(rejects) == 1
    assert rejects["error_type"].iloc[0] == "missing_required"  # the most serious kind
    assert rejects["error_message"].iloc[0] == (
        "title: required value missing (payload key 'name'); "
        "url: 'mailto:x@example.com' is not an http(s) URL; "
        "amount: 'n/a' is not a number; "
        "quantity: '-1' must be >= 0"
    )


def test_duplicates_keep_the_newest_observation_never_the_latest_business_date():
    raw = make_raw(
        good(id="A", name="v2", when="2024-11-02T00:00:00Z"),
        good(id="A", name="v3-latest-date", when="2024-11-03T00:00:00Z"),
        good(id="A", name="v1-date-corrected-back", when="2024-11-01T00:00:00Z"),
        good(id="B", name="low", when="2024-11-01T00:00:00Z"),
        good(id="B", name="high", when="2024-11-01T00:00:00Z"),
    )
    raw["observed_seq"] = [10, 11, 12, 5, 6]
    valid = map_to_unified(raw, FIELDS).valid
    assert dict(zip(valid["external_id"], valid["title"])) == {"A": "v1-date-corrected-back", "B": "high"}
    assert valid["external_id"].is_unique


def test_a_mapped_source_modification_time_leads_the_version():
    fields = {**FIELDS, "updated_at": "modified"}
    raw = make_raw(
        good(id="A", name="newer at source", modified="2024-11-05T10:00:00Z"),
        good(id="A", name="older at source, seen later", modified="2024-11-04T10:00:00Z"),
        good(id="C", name="dated", modified="2024-11-01T05:00:00Z"),
        good(id="C", name="undated, seen later"),  # no modification time: never beats one that has it
    )
    raw["observed_seq"] = [1, 2, 3, 4]
    raw["extracted_at"] = pd.Timestamp("2024-11-06T00:00:00Z")
    valid = map_to_unified(raw, fields).valid
    assert dict(zip(valid["external_id"], valid["title"])) == {"A": "newer at source", "C": "dated"}
    a = valid.set_index("external_id").loc["A"]
    assert a["source_updated_at"] == a["updated_at"] == pd.Timestamp("2024-11-05T10:00:00Z")
    assert "modified" not in json.loads(a["metadata"])


def test_same_external_id_in_two_sources_is_kept_twice():
    raw = pd.concat([make_raw(good(), source_name="a"), make_raw(good(), source_name="b")], ignore_index=True)
    raw["raw_data_id"] = [1, 2]
    assert len(map_to_unified(raw, FIELDS).valid) == 2


def test_partition_date_may_be_datetime64_and_dayfirst_applies():
    raw = make_raw(good(when="03/11/2024 09:00"), partition_date=pd.Timestamp("2024-11-03"))
    raw["partition_date"] = pd.to_datetime(raw["partition_date"])
    row = map_to_unified(raw, FIELDS, dayfirst=True).valid.iloc[0]
    assert row["partition_date"] == dt.date(2024, 11, 3)
    assert row["published_at"] == pd.Timestamp("2024-11-03T09:00:00Z")


def test_empty_input_and_bad_arguments():
    empty = make_raw()
    result = map_to_unified(empty, FIELDS)
    assert result.valid.empty and list(result.valid.columns) == list(VALID_COLUMNS)
    assert result.rejects.empty and list(result.rejects.columns) == list(REJECT_COLUMNS)
    with pytest.raises(ValueError, match="unknown unified field"):
        map_to_unified(make_raw(good()), {"colour": "colour"})
    with pytest.raises(ValueError, match="lacks columns"):
        map_to_unified(make_raw(good()).drop(columns=["payload"]), FIELDS)


def test_shop_orders_sample_end_to_end():
    source = load_sources(PACKAGE / "sources.yaml").get("shop_orders")
    frame = pd.concat(list(iter_raw_batches(source)), ignore_index=True)
    raw = frame.assign(
        source_type="csv",
        source_name=source.name,
        raw_data_id=range(1, len(frame) + 1),
        partition_date=frame["occurred_at"].dt.date,
    )
    result = map_to_unified(raw, source.field_map, dayfirst=source.dayfirst, date_format=source.date_format)
    assert len(result.valid) == 23
    assert dict(zip(result.rejects["source_id"], result.rejects["error_message"])) == {
        "ORD-1006": "amount: 'n/a' is not a number",
        "ORD-1019": "quantity: '-3' must be >= 0",
    }
    grinder = result.valid.set_index("external_id").loc["ORD-1004"]
    assert grinder["amount"] == pytest.approx(1249.0)
    assert json.loads(grinder["metadata"]) == {"_file": "shop_orders_semicolon.csv", "_line": 4}
