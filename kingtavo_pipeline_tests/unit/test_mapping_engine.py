"""The mapping engine, feature by feature, on small batches built here (no files, no database)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pandas as pd
import pyarrow as pa
import pytest

from kingtavo_pipeline.mapping import (
    BOOKKEEPING,
    REJECT_COLUMNS,
    MappingFileError,
    compile_mapping,
    load_mapping,
    parse_mapping,
)

DAY = dt.date(2025, 3, 1)


def raw(*payloads, merchants=None) -> pd.DataFrame:
    n = len(payloads)
    return pd.DataFrame({
        "payload": [p if isinstance(p, str) else json.dumps(p) for p in payloads],
        "raw_data_id": range(1, n + 1),
        "source_id": [f"r{i}" for i in range(n)],
        "merchant_id": merchants or [""] * n,
        "partition_date": [DAY] * n,
        "observed_seq": range(10, 10 + n),
    })


def run(spec: dict, *payloads, merchants=None):
    return compile_mapping(parse_mapping(spec)).run(raw(*payloads, merchants=merchants))


def one_target(fields: dict, **extra) -> dict:
    return {"integration": "test", "entity": "things", "targets": {"things": {"fields": fields}}, **extra}


def rejects_by_source(out) -> dict:
    return dict(zip(out.rejects["source_id"], out.rejects["error_message"]))


# ----------------------------------------------------------------------------- paths and flatten


def test_dotted_paths_array_indexes_and_bookkeeping_columns():
    spec = one_target({
        "source_id": {"path": "id", "required": True},
        "city": {"path": "customer.address.city"},
        "first_tag": {"path": "tags.0"},
        "last_tag": {"path": "tags.-1"},
        "image": {"path": "images.1.url"},
        "raw_id": {"path": "@source_id"},
    })
    out = run(spec, {"id": 7, "customer": {"address": {"city": "Riyadh"}}, "tags": ["a", "b"],
                     "images": [{"url": "u0"}, {"url": "u1"}]},
              {"id": "8", "customer": None, "tags": "not-a-list", "images": []})
    things = out["things"]
    assert out.rejects.empty
    assert things["source_id"].tolist() == ["7", "8"]  # numbers become text as written
    assert things["city"].tolist()[0] == "Riyadh" and pd.isna(things["city"].iloc[1])
    assert things["first_tag"].iloc[0] == "a" and things["last_tag"].iloc[0] == "b"
    assert things["image"].iloc[0] == "u1" and pd.isna(things["image"].iloc[1])
    assert things["raw_id"].tolist() == ["r0", "r1"]
    assert list(things.columns) == ["source_id", "city", "first_tag", "last_tag", "image", "raw_id",
                                    *[c for c in BOOKKEEPING if c not in ("source_type", "source_name")]]
    assert things["raw_source_id"].tolist() == ["r0", "r1"] and things["observed_seq"].tolist() == [10, 11]
    assert things["partition_date"].tolist() == [DAY, DAY]


def test_arrow_table_input_maps_like_a_frame():
    spec = one_target({"source_id": {"path": "id"}, "total": {"path": "total", "type": "decimal"}})
    table = pa.Table.from_pandas(raw({"id": 1, "total": {"amount": 5.5}}, {"id": 2, "total": 3}), preserve_index=False)
    out = compile_mapping(parse_mapping(spec)).run(table)
    assert out["things"]["total"].tolist() == [Decimal("5.5000"), Decimal("3.0000")]


# ----------------------------------------------------------------------------------- expand


ORDER_SPEC = {
    "integration": "test",
    "entity": "orders",
    "targets": {
        "orders": {"fields": {
            "source_id": {"path": "id", "required": True},
            "total": {"path": "total", "type": "decimal", "required": True},
            "source_updated_at": {"path": "updated", "type": "timestamp"},
        }},
        "order_lines": {
            "expand": "groups.nodes[].items.nodes[]",
            "required": True,
            "fields": {
                "source_id": {"paths": ["id", "$.id", "$index"], "transform": "id_or_position", "required": True},
                "order_source_id": {"path": "$.id", "required": True},
                "group": {"path": "^.name"},
                "quantity": {"path": "qty", "type": "decimal", "required": True},
                "source_updated_at": {"path": "$.updated", "type": "timestamp"},
            },
        },
    },
}


def order(oid, *groups, total=10, updated="2025-03-01T10:00:00Z") -> dict:
    return {"id": oid, "total": total, "updated": updated,
            "groups": {"nodes": [{"name": g, "items": {"nodes": items}} for g, items in groups]}}


def test_nested_expand_carries_parent_and_root_fields_and_positions():
    out = run(ORDER_SPEC,
              order("A", ("front", [{"id": "L1", "qty": 2}, {"qty": 1}]), ("back", [{"id": "L3", "qty": "3"}])),
              order("B", ("only", [{"id": "L9", "qty": 1.5}])))
    lines = out["order_lines"]
    assert out.rejects.empty
    assert lines["source_id"].tolist() == ["L1", "A:1", "L3", "L9"]  # no id -> "<order id>:<index>"
    assert lines["order_source_id"].tolist() == ["A", "A", "A", "B"]
    assert lines["group"].tolist() == ["front", "front", "back", "only"]
    assert lines["quantity"].tolist() == [Decimal(2), Decimal(1), Decimal(3), Decimal("1.5")]
    assert (lines["source_updated_at"] == pd.Timestamp("2025-03-01T10:00:00Z")).all()
    assert lines["raw_data_id"].tolist() == [1, 1, 1, 2]
    assert out["orders"]["source_id"].tolist() == ["A", "B"]


def test_a_bad_line_rejects_the_whole_order_and_the_batch_goes_on():
    out = run(ORDER_SPEC,
              order("A", ("g", [{"id": "L1", "qty": 1}, {"id": "L2", "qty": "lots"}])),
              order("B", ("g", [{"id": "L9", "qty": 1}])))
    assert out["orders"]["source_id"].tolist() == ["B"]
    assert out["order_lines"]["source_id"].tolist() == ["L9"]  # no half order A
    reject = out.rejects.iloc[0]
    assert list(out.rejects.columns) == list(REJECT_COLUMNS)
    assert (reject["source_id"], reject["raw_data_id"], reject["error_type"]) == ("r0", 1, "invalid_type")
    assert reject["error_message"] == "order_lines[1].quantity: 'lots' is not a number (path groups.nodes[].items.nodes[].qty)"
    assert json.loads(reject["payload"])["id"] == "A"


def test_required_array_missing_rejects_the_record():
    out = run(ORDER_SPEC, {"id": "A", "total": 1}, order("B", ("g", [])))
    assert rejects_by_source(out) == {"r0": "order_lines: required array missing (path groups.nodes[].items.nodes[])"}
    assert out["orders"]["source_id"].tolist() == ["B"] and out["order_lines"].empty  # an empty array is fine


# ------------------------------------------------------------------------------------ money


def test_money_is_exact_decimal_from_objects_numbers_and_strings():
    spec = one_target({"source_id": {"path": "id"}, "amount": {"path": "amount", "type": "decimal"}})
    values = [{"amount": 150, "currency": "SAR"}, {"amount": 19.99, "currency": "SAR"}, 0.1, "1,234.50", "19,90",
              "1.234,56", "€ 7,5", "-3.25", 123456789012.3456, "0.00005", None]
    out = run(spec, *({"id": i, "amount": v} for i, v in enumerate(values)))
    assert out.rejects.empty
    assert str(out["things"]["amount"].dtype) == "decimal128(18, 4)[pyarrow]"
    got = out["things"]["amount"].tolist()
    assert got[:-1] == [Decimal(x) for x in ("150", "19.99", "0.1", "1234.5", "19.9", "1234.56", "7.5", "-3.25",
                                             "123456789012.3456", "0.0001")]
    assert pd.isna(got[-1])
    assert str(got[1]) == "19.9900"  # exact, not 19.989999999999998...


def test_money_that_is_not_a_number_or_too_large_is_rejected_with_field_and_path():
    spec = one_target({"source_id": {"path": "id"}, "total": {"path": "amounts.total.amount", "type": "decimal"}})
    out = run(spec, {"id": 1, "amounts": {"total": {"amount": "abc"}}}, {"id": 2, "amounts": {"total": {"amount": 1e15}}},
              {"id": 3, "amounts": {"total": {"amount": True}}}, {"id": 4, "amounts": {"total": {"amount": 5}}})
    assert rejects_by_source(out) == {
        "r0": "things.total: 'abc' is not a number (path amounts.total.amount)",
        "r1": "things.total: 1000000000000000.0 is out of range for decimal(18,4) (path amounts.total.amount)",
        "r2": "things.total: True is not a number (path amounts.total.amount)",
    }
    assert set(out.rejects["error_type"]) == {"invalid_type", "invalid_value"}
    assert out["things"]["total"].tolist() == [Decimal(5)]


# ------------------------------------------------------------------------------------ dates


def test_dates_in_several_formats_and_zones_become_utc():
    spec = one_target({
        "source_id": {"path": "id"},
        "at": {"path": "at", "type": "timestamp", "timezone_path": "tz"},
    }, timezone="Asia/Riyadh")
    cases = [
        ({"at": "2025-03-01T10:00:00Z"}, "2025-03-01T10:00:00Z"),
        ({"at": "2025-03-01T10:00:00+03:00"}, "2025-03-01T07:00:00Z"),
        ({"at": "2025-03-01 10:00:00"}, "2025-03-01T07:00:00Z"),  # the file's zone (Riyadh, +03:00)
        ({"at": "2025-03-01 10:00:00", "tz": "America/New_York"}, "2025-03-01T15:00:00Z"),  # the sibling field's
        ({"at": "2025-07-01 10:00:00", "tz": "America/New_York"}, "2025-07-01T14:00:00Z"),  # with DST
        ({"at": "2025-03-01"}, "2025-02-28T21:00:00Z"),  # date-only: midnight in the zone
        ({"at": {"date": "2025-03-01 10:00:00.000000", "timezone_type": 3, "timezone": "UTC"}}, "2025-03-01T10:00:00Z"),
        ({"at": 1740823200}, "2025-03-01T10:00:00Z"),  # epoch seconds
    ]
    out = run(spec, *({"id": i, **payload} for i, (payload, _) in enumerate(cases)))
    assert out.rejects.empty
    assert str(out["things"]["at"].dtype) == "datetime64[us, UTC]"
    assert out["things"]["at"].tolist() == [pd.Timestamp(expected) for _, expected in cases]


def test_php_datetime_objects_use_their_own_zone_and_other_formats_parse():
    spec = one_target({
        "source_id": {"path": "id"},
        "at": {"path": "at", "type": "timestamp"},
        "ms": {"path": "ms", "type": "timestamp", "unit": "ms"},
        "eu": {"path": "eu", "type": "timestamp", "dayfirst": True},
        "fmt": {"path": "fmt", "type": "timestamp", "format": "%d.%m.%Y %H:%M", "timezone": "Europe/Berlin"},
    })
    out = run(spec, {"id": 1, "at": {"date": "2025-03-01 10:00:00.000000", "timezone_type": 3, "timezone": "Asia/Riyadh"},
                     "ms": "1740823200000", "eu": "03/02/2025 10:00", "fmt": "01.03.2025 10:00"})
    row = out["things"].iloc[0]
    assert out.rejects.empty
    assert row["at"] == pd.Timestamp("2025-03-01T07:00:00Z")
    assert row["ms"] == pd.Timestamp("2025-03-01T10:00:00Z")
    assert row["eu"] == pd.Timestamp("2025-02-03T10:00:00Z")
    assert row["fmt"] == pd.Timestamp("2025-03-01T09:00:00Z")


def test_bad_dates_and_zones_are_rejected():
    spec = one_target({"source_id": {"path": "id"}, "at": {"path": "at", "type": "timestamp", "timezone_path": "tz"}})
    out = run(spec, {"id": 1, "at": "yesterday"}, {"id": 2, "at": "2025-03-01 10:00:00", "tz": "Mars/Olympus"},
              {"id": 3, "at": "2025-03-01"})
    assert rejects_by_source(out) == {
        "r0": "things.at: 'yesterday' is not a valid date/time (path at)",
        "r1": "things.at: 'Mars/Olympus' is not a known time zone (path at)",
    }


# ------------------------------------------------------------------------- enums, integers, text


def test_enum_map_with_default_keeps_raw_value_elsewhere():
    spec = one_target({
        "source_id": {"path": "id"},
        "status": {"path": "status.slug", "enum": {"map": {"in_progress": "processing", "completed": "completed"}, "default": "unknown"}},
        "raw_status": {"path": "status.slug"},
    })
    out = run(spec, *({"id": i, "status": {"slug": s}} for i, s in enumerate(["IN_PROGRESS", "completed", "custom_42", None])))
    things = out["things"]
    assert things["status"].tolist()[:3] == ["processing", "completed", "unknown"] and pd.isna(things["status"].iloc[3])
    assert things["raw_status"].tolist()[2] == "custom_42"


def test_enum_without_default_rejects_unknown_values():
    spec = one_target({"source_id": {"path": "id"}, "status": {"path": "s", "enum": {"map": {"a": "active"}}}})
    out = run(spec, {"id": 1, "s": "a"}, {"id": 2, "s": "zzz"})
    assert rejects_by_source(out) == {"r1": "things.status: 'zzz' is not one of 'a' (path s)"}
    assert out.rejects["error_type"].tolist() == ["invalid_value"]


def test_integers_and_text_of_objects():
    spec = one_target({"source_id": {"path": "id"}, "stock": {"path": "stock", "type": "integer", "min": 0},
                       "name": {"path": "name"}})
    out = run(spec, {"id": 1, "stock": "1,200", "name": "  Tee  "}, {"id": 2, "stock": 2.5, "name": "x"},
              {"id": 3, "stock": -1}, {"id": 4, "name": {"en": "Tee"}})
    assert out["things"]["stock"].tolist() == [1200] and out["things"]["name"].tolist() == ["Tee"]
    assert rejects_by_source(out) == {
        "r1": "things.stock: '2.5' is not a whole number (path stock)",
        "r2": "things.stock: '-1' must be >= 0 (path stock)",
        "r3": "things.name: an object/array is not text (path name)",
    }




def test_integers_beyond_a_float_are_exact_and_beyond_int64_rejected_not_crashing():
    """A float holds integers exactly only below 2**53, and 2**63 has no Int64: both used to go
    wrong (ids silently rounded; a TypeError failing the whole batch)."""
    spec = one_target({"source_id": {"path": "id"}, "n": {"path": "n", "type": "integer"}})
    out = run(spec, {"id": 1, "n": 2**53 + 1}, {"id": 2, "n": str(-(2**53 + 1))}, {"id": 3, "n": 2**63 - 1},
              {"id": 4, "n": -(2**63)}, {"id": 5, "n": 2**63}, {"id": 6, "n": "-9223372036854775809"},
              {"id": 7, "n": "9007199254740993.5"}, {"id": 8, "n": 2**64 + 7}, {"id": 9, "n": 12})
    assert out["things"]["n"].tolist() == [2**53 + 1, -(2**53 + 1), 2**63 - 1, -(2**63), 12]
    rejects = rejects_by_source(out)
    # JSON decoders read integers beyond 64 bits as floats: the message quotes what was read
    assert rejects.pop("r7") == "things.n: '1.8446744073709552e+19' is too large (path n)"
    assert rejects == {
        "r4": "things.n: '9223372036854775808' is too large (path n)",
        "r5": "things.n: '-9223372036854775809' is too large (path n)",
        "r6": "things.n: '9007199254740993.5' is not a whole number (path n)",
    }
# ------------------------------------------------------------------------------- transforms


def test_concat_keeps_every_row_when_a_row_has_none_of_its_inputs():
    """Arrow's join with nulls skipped drops a row whose inputs are all missing: every later row
    then took the next record's phone (a customer without a mobile got the next customer's)."""
    spec = one_target({
        "source_id": {"path": "id"},
        "phone": {"paths": ["dial", "mobile"], "transform": "concat"},
        "full": {"paths": ["first", "last"], "transform": "join"},
    })
    out = run(spec,
              {"id": 1, "dial": "+966", "mobile": 501, "first": "A", "last": "One"},
              {"id": 2, "first": " "},
              {"id": 3, "dial": "+966", "mobile": 503, "last": "Three"},
              {"id": 4, "mobile": 504, "first": "D"},
              {"id": 5})
    t = out["things"]
    assert t["source_id"].tolist() == ["1", "2", "3", "4", "5"]
    assert [None if pd.isna(v) else v for v in t["phone"]] == ["+966501", None, "+966503", "504", None]
    assert [None if pd.isna(v) else v for v in t["full"]] == ["A One", None, "Three", "D", None]


def test_named_transforms():
    spec = one_target({
        "source_id": {"path": "id"},
        "email": {"path": "email", "transform": ["strip", "lower"]},
        "code": {"path": "code", "transform": "upper"},
        "full": {"paths": ["first", "last"], "transform": "join"},
        "phone": {"paths": ["dial", "mobile"], "transform": "concat"},
        "name": {"paths": ["nick", "first"], "transform": "first_non_null"},
        "given": {"path": "full_name", "transform": {"name": "split_name", "part": "first"}},
        "family": {"path": "full_name", "transform": {"name": "split_name", "part": "last"}},
        "country": {"path": "country", "transform": "iso_country"},
        "digits": {"path": "dial", "transform": {"name": "replace", "pattern": "[^0-9]", "value": ""}},
        "line_total": {"paths": ["price", "qty"], "transform": "multiply", "type": "decimal"},
        "discount": {"path": "discounts", "transform": {"name": "sum", "key": "discount"}, "type": "decimal"},
    })
    out = run(spec,
              {"id": 1, "email": "  Sara@Example.COM ", "code": "sar", "first": "Sara", "last": "Alharbi", "dial": "+966",
               "mobile": 555, "nick": "  ", "full_name": "Sara  Al Harbi", "country": "Saudi Arabia", "price": 19.99, "qty": 3,
               "discounts": [{"discount": {"amount": 1.1}}, {"discount": {"amount": 2.2}}]},
              {"id": 2, "last": "Only", "country": "usa", "discounts": []},
              {"id": 3, "country": "Atlantis", "full_name": "Cher"})
    t = out["things"]
    assert out.rejects.empty
    assert t["email"].iloc[0] == "sara@example.com" and t["code"].iloc[0] == "SAR"
    assert t["full"].tolist()[:2] == ["Sara Alharbi", "Only"] and pd.isna(t["full"].iloc[2])
    assert t["phone"].iloc[0] == "+966555"
    assert t["name"].iloc[0] == "Sara"  # a blank nick is no value
    assert (t["given"].iloc[0], t["family"].iloc[0]) == ("Sara", "Al Harbi")
    assert t["given"].iloc[2] == "Cher" and pd.isna(t["family"].iloc[2])
    assert t["country"].tolist() == ["SA", "US", "Atlantis"]
    assert t["digits"].iloc[0] == "966"
    assert t["line_total"].iloc[0] == Decimal("59.97")
    assert t["discount"].tolist()[:2] == [Decimal("3.3"), Decimal(0)] and pd.isna(t["discount"].iloc[2])


# ------------------------------------------------------------------------ required, defaults


def test_required_and_defaults_and_constants():
    spec = one_target({
        "source_id": {"path": "id", "required": True},
        "currency": {"path": "currency", "default": "SAR", "transform": "upper"},
        "qty": {"path": "qty", "type": "decimal", "default": 1},
        "kind": {"const": "order"},
        "nothing": {"const": None, "type": "decimal"},
    })
    out = run(spec, {"id": 1, "currency": "usd", "qty": 2}, {"id": 2}, {"currency": "eur"})
    t = out["things"]
    assert t["currency"].tolist() == ["USD", "SAR"] and t["qty"].tolist() == [Decimal(2), Decimal(1)]
    assert t["kind"].tolist() == ["order", "order"] and t["nothing"].isna().all()
    assert rejects_by_source(out) == {"r2": "things.source_id: required value missing (path id)"}
    assert out.rejects["error_type"].tolist() == ["missing_required"]


def test_schema_drift_rename_gives_a_reject_naming_the_missing_field():
    out = run(ORDER_SPEC, order("A", ("g", [{"id": "L1", "qty": 1}])),
              {**{k: v for k, v in order("B", ("g", [{"id": "L2", "qty": 1}])).items() if k != "total"}, "grand_total": 10})
    assert rejects_by_source(out) == {"r1": "orders.total: required value missing (path total)"}
    assert out["orders"]["source_id"].tolist() == ["A"]


def test_several_problems_of_one_record_are_listed_most_serious_type_first():
    out = run(ORDER_SPEC, {"total": "x", "groups": {"nodes": [{"items": {"nodes": [{"id": "L", "qty": "y"}]}}]}})
    reject = out.rejects.iloc[0]
    assert reject["error_type"] == "missing_required"
    assert reject["error_message"] == (
        "orders.source_id: required value missing (path id); "
        "orders.total: 'x' is not a number (path total); "
        "order_lines.order_source_id: required value missing (path id); "
        "order_lines[0].quantity: 'y' is not a number (path groups.nodes[].items.nodes[].qty)"
    )


# ---------------------------------------------------------------------------------- overrides


def test_per_merchant_overrides_apply_to_that_merchants_rows_only():
    spec = one_target(
        {"source_id": {"path": "id"},
         "status": {"path": "status", "enum": {"map": {"done": "completed"}, "default": "unknown"}},
         "total": {"path": "total", "type": "decimal"}},
        overrides={
            "m2": {"fields": {"status": {"path": "status", "enum": {"map": {"done": "completed", "shipped_custom": "completed"},
                                                                  "default": "unknown"}},
                              "things.total": {"path": "grand_total", "type": "decimal", "required": True}}},
        },
    )
    out = run(spec, {"id": 1, "status": "shipped_custom", "total": 5},
              {"id": 2, "status": "shipped_custom", "total": 5, "grand_total": 7},
              {"id": 3, "status": "done", "total": 5},
              {"id": 4, "status": "done", "total": 5},
              merchants=["m1", "m2", "m1", "m2"])
    t = out["things"]
    assert t["status"].tolist() == ["unknown", "completed", "completed"]
    assert t["total"].tolist() == [Decimal(5), Decimal(7), Decimal(5)]
    assert rejects_by_source(out) == {"r3": "things.total: required value missing (path grand_total)"}
    assert out.rejects["merchant_id"].tolist() == ["m2"]


# --------------------------------------------------------------------------------- malformed


def test_malformed_payloads_are_rejected_and_the_rest_maps():
    spec = one_target({"source_id": {"path": "id", "required": True}})
    out = run(spec, "{not json", "[1, 2]", '"text"', {"id": "ok"})
    assert out["things"]["source_id"].tolist() == ["ok"]
    assert out.rejects["error_type"].tolist() == ["malformed_payload"] * 3
    messages = out.rejects["error_message"].tolist()
    assert messages[0].startswith("payload: invalid JSON") and messages[1:] == [
        "payload: not a JSON object (got array)", "payload: not a JSON object (got string)"]
    assert out.rejects["payload"].tolist()[0] == "{not json"


def test_a_non_object_in_the_way_of_a_path_reads_as_missing():
    spec = one_target({"source_id": {"path": "id"}, "city": {"path": "customer.city"}})
    out = run(spec, {"id": 1, "customer": "just text"}, {"id": 2, "customer": [1]}, {"id": 3, "customer": {"city": "Jeddah"}})
    assert out.rejects.empty
    assert out["things"]["city"].isna().tolist() == [True, True, False]


def test_empty_batch():
    out = run(ORDER_SPEC)
    assert out["orders"].empty and out["order_lines"].empty and out.rejects.empty
    assert list(out.rejects.columns) == list(REJECT_COLUMNS)


# ------------------------------------------------------------------------------------ loader


def _load_error(tmp_path, text: str, name: str = "bad.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MappingFileError) as info:
        load_mapping(path)
    message = str(info.value)
    assert message.startswith(str(path))
    return message


HEAD = "integration: t\nentity: e\ntargets:\n  things:\n    fields:\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("      id: {path: id, colour: red}\n", "targets.things.fields.id.colour: unknown key"),
        ("      id: {path: id, type: money}\n", "targets.things.fields.id.type: Input should be"),
        ("      id: {path: id, required: maybe}\n", "targets.things.fields.id.required: Input should be a valid boolean"),
        ("      id: {path: id, transform: shout}\n", "targets.things.fields.id.transform[0]: unknown transform 'shout'"),
        ("      id: {path: id, transform: {name: concat, glue: x}}\n", "unknown parameter(s) ['glue']"),
        ("      id: {path: 'a..b'}\n", "targets.things.fields.id.path: 'a..b' is not a dotted path"),
        ("      id: {path: id, const: 1}\n", "targets.things.fields.id: give exactly one of path, paths, const"),
        ("      id: {paths: [a, b]}\n", "2 paths need a first transform that takes several inputs"),
        ("      id: {path: id, type: timestamp, timezone: Mars/Base}\n", "timezone: unknown time zone 'Mars/Base'"),
        ("      id: {path: '^.id'}\n", "targets.things: fields.id: '^.id' reads an enclosing element"),
    ],
)
def test_loader_errors_name_the_file_and_the_field(tmp_path, body, expected):
    assert expected in _load_error(tmp_path, HEAD + body)


def test_loader_errors_for_expand_overrides_and_syntax(tmp_path):
    assert "targets.lines.expand: 'items' is not an array path" in _load_error(
        tmp_path, "integration: t\nentity: e\ntargets:\n  lines:\n    expand: items\n    fields:\n      id: {path: id}\n")
    assert "overrides.m1.fields.nope: no such field" in _load_error(
        tmp_path, HEAD + "      id: {path: id}\noverrides:\n  m1:\n    fields:\n      nope: {path: x}\n")
    assert "targets: required key 'targets' is missing" in _load_error(tmp_path, "integration: t\nentity: e\n")
    assert "not valid YAML" in _load_error(tmp_path, "integration: [unclosed\n")
    assert "not valid JSON" in _load_error(tmp_path, "{bad", name="bad.json")
