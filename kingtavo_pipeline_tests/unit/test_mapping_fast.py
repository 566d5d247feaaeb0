"""The msgspec fast path (mapping/fast.py) against the per-record path it stands in for: the same
frames, dtypes and rejects, batch by batch, whatever the payloads hold."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import orjson
import pandas as pd
import pytest

from kingtavo_pipeline.mapping import compile_mapping, parse_mapping, shipped_mapping, shipped_mappings
from kingtavo_pipeline.mapping.extract import split_path
from kingtavo_pipeline.mapping.fast import FastExtractor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from mapping import generate  # noqa: E402  (the benchmark's Salla order details)


def raw(payloads: list, merchants: list | None = None) -> pd.DataFrame:
    n = len(payloads)
    return pd.DataFrame({
        "payload": pd.Series(payloads, dtype=object),
        "raw_data_id": range(1, n + 1),
        "source_id": [f"r{i}" for i in range(n)],
        "merchant_id": merchants or ["m1"] * n,
        "observed_seq": range(10, 10 + n),
    })


def both(mapping, frame: pd.DataFrame):
    """The mapping's output on the fast path and on the per-record path, asserted identical."""
    mapping.fast_path = False
    try:
        slow = mapping.run(frame)
    finally:
        del mapping.fast_path  # back to the class default
    fast = mapping.run(frame)
    assert fast.frames.keys() == slow.frames.keys()
    for name in slow.frames:
        pd.testing.assert_frame_equal(fast[name], slow[name], check_exact=True)
        assert list(fast[name].dtypes) == list(slow[name].dtypes)
    pd.testing.assert_frame_equal(fast.rejects, slow.rejects, check_exact=True)
    return fast


def salla_orders(n: int, first: int = 0) -> list[dict]:
    return [orjson.loads(p) for p in generate(first, n)]


def test_salla_orders_take_the_fast_path_and_match():
    mapping = shipped_mapping("salla", "orders")
    assert isinstance(mapping._fast_extractor, FastExtractor)
    payloads = generate(0, 300)
    _, slow_rows, _ = mapping._fast_extractor._fn(payloads)
    assert not slow_rows
    out = both(mapping, raw(payloads))
    assert len(out["orders"]) == 300 and out.rejects.empty


def test_mixed_batch_unusual_records_fall_back_with_the_same_rejects():
    mapping = shipped_mapping("salla", "orders")
    docs = salla_orders(40)
    docs[1]["amounts"]["total"] = "abc"                        # wrong type: not a number
    del docs[2]["id"]                                           # missing required field
    docs[3]["updatedAt"] = docs[3].pop("updated_at")            # drift: a renamed field (required)
    docs[4]["items"] = "none"                                   # an array that is not one
    docs[5]["items"][0] = 7                                     # an element that is not an object
    docs[6]["id"] = 123456789012345678901234567890              # beyond 64 bits: orjson reads a float
    docs[7]["customer"] = []                                    # PHP's empty object
    docs[8]["amounts"]["total"] = 12.5                          # money as a bare number
    docs[9]["date"] = "2025-01-02 03:04:05"                     # a date as text
    docs[10]["status"] = {"slug": ["x"]}                        # an array where text is expected
    docs[11]["amounts"]["discounts"] = [{"discount": {"amount": 2**70}}]  # a big int inside a summed array
    docs[12]["items"][0]["quantity"] = "two"                    # wrong type in a line
    docs[13]["amounts"]["discounts"] = [{"discount": {"amount": "1.5"}}, {"discount": 2}]
    payloads: list = [json.dumps(d).encode() for d in docs]
    payloads[14] = b'{"id": 1, "items": ['                      # malformed payload
    payloads[15] = b"[1, 2]"                                    # not an object
    payloads[16] = b'{"id": NaN}'                               # json reads it, orjson does not
    payloads[17] = '{"id": "\\ud800", "items": []}'             # a lone surrogate
    payloads[18] = b"\xef\xbb\xbf" + payloads[18]               # a BOM
    payloads[19] = None                                         # no payload
    payloads[20] = docs[20]                                     # an already decoded object
    payloads[21] = json.dumps(docs[21], indent=2)               # text, not bytes, with newlines
    payloads[22] = b'{"id": 1, "id": 2, "items": [], "amounts": {"total": 1}, "currency": "SAR", "updated_at": "2025-01-01"}'
    _, slow_rows, _ = mapping._fast_extractor._fn(payloads)
    assert set(slow_rows) >= {6, 11, 14, 15, 16, 17, 18, 19, 20} and 0 not in slow_rows and 21 not in slow_rows
    out = both(mapping, raw(payloads))
    rejected = dict(zip(out.rejects["source_id"], out.rejects["error_type"]))
    assert rejected["r1"] == "invalid_type" and rejected["r2"] == "missing_required"
    assert rejected["r3"] == "missing_required" and rejected["r14"] == "malformed_payload"
    assert rejected["r4"] == "missing_required" and rejected["r12"] == "invalid_type"
    assert "r0" not in rejected and "r8" not in rejected and "r21" not in rejected


def test_fast_path_survives_a_batch_where_every_record_falls_back():
    mapping = shipped_mapping("salla", "orders")
    both(mapping, raw([b"{", b"null", None, b"{}"]))
    both(mapping, raw([]))


# ---------------------------------------------------------------- every shipped mapping, random shapes

SCALARS = [None, 0, 1, -7, 12.5, 1e-7, 3.0, "", "  x ", "2025-01-02T03:04:05Z", "2025-01-02 03:04:05", "1,234.50",
           "abc", True, False, "https://example.com/a", "https://", 1700000000]


def _value(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if roll < 0.55 or depth > 2:
        return rng.choice(SCALARS)
    if roll < 0.7:
        return {"amount": rng.choice(SCALARS), "currency": rng.choice(["SAR", "usd", None])}
    if roll < 0.8:
        return {"date": rng.choice(["2025-01-02 03:04:05.000000", "bad", None]), "timezone_type": 3,
                "timezone": rng.choice(["Asia/Riyadh", "UTC", "Mars/Base", None])}
    if roll < 0.9:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {"x": _value(rng, depth + 1)}


def _put(doc: dict, segments: list[str], rng: random.Random, element_paths: list[list[str]] | None = None) -> None:
    node = doc
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg.lstrip("-").isdigit():
            continue  # arrays read by position are built by their parent key below
        if last:
            node[seg] = _value(rng)
            return
        nxt = segments[i + 1]
        if nxt.lstrip("-").isdigit():
            node[seg] = [{} for _ in range(rng.randrange(3))] if rng.random() < 0.9 else "odd"
            if isinstance(node[seg], list) and node[seg]:
                _put(node[seg][0], segments[i + 2 :], rng)
            return
        child = node.get(seg)
        if not isinstance(child, dict):
            if rng.random() < 0.05:
                node[seg] = rng.choice([None, "odd", [], 3])
                return
            child = node[seg] = {}
        node = child


def _documents(mapping, n: int, seed: int) -> list:
    rng = random.Random(seed)
    root_paths = [split_path(leaf.path) for leaf in mapping._extractor.leaves]
    out = []
    for _ in range(n):
        doc: dict = {}
        for segments in root_paths:
            if rng.random() < 0.9:
                _put(doc, list(segments), rng)
        for spec in mapping._extractor.expands:
            _fill(doc, spec.levels, spec.leaves, spec.parent_leaves, rng)
        out.append(doc)
    return out


def _fill(holder: dict, levels: list[str], leaves, parent_leaves, rng: random.Random) -> None:
    segments = split_path(levels[0])
    node = holder
    for seg in segments[:-1]:
        node = node.setdefault(seg, {}) if isinstance(node.get(seg, {}), dict) else {}
    roll = rng.random()
    if roll < 0.05:
        node[segments[-1]] = rng.choice([None, "odd", {"a": 1}])
        return
    elements = []
    for _ in range(rng.randrange(4)):
        if rng.random() < 0.05:
            elements.append(rng.choice([None, 3, "x", []]))
            continue
        element: dict = {}
        if len(levels) > 1:
            for leaf in parent_leaves:
                _put(element, list(split_path(leaf.path)), rng)
            _fill(element, levels[1:], leaves, parent_leaves, rng)
        else:
            for leaf in leaves:
                if rng.random() < 0.9:
                    _put(element, list(split_path(leaf.path)), rng)
        elements.append(element)
    node[segments[-1]] = elements


@pytest.mark.parametrize("name", sorted(shipped_mappings()))
def test_shipped_mappings_match_on_random_shapes(name):
    integration, entity = name.split("_", 1)
    mapping = shipped_mapping(integration, entity)
    docs = _documents(mapping, 150, seed=hash(name) % 1000)
    payloads = [json.dumps(d).encode() if i % 3 else json.dumps(d) for i, d in enumerate(docs)]
    merchants = [random.Random(i).choice(["m1", "m2", ""]) for i in range(len(payloads))]
    both(mapping, raw(payloads, merchants))


def test_a_mapping_of_every_path_shape():
    spec = {
        "integration": "t", "entity": "e", "timezone": "Asia/Riyadh",
        "targets": {
            "head": {"fields": {
                "id": {"path": "id", "required": True},
                "whole": {"path": "meta", "transform": ["strip"]},        # a value with paths below it
                "inner": {"path": "meta.a.b"},
                "first_tag": {"path": "tags.0.name"},                      # an array read by position
                "last_tag": {"path": "tags.-1.name"},
                "money": {"path": "price", "type": "decimal"},
                "money_text": {"path": "price", "type": "text"},           # money and plain at one path
                "when": {"path": "when", "type": "timestamp"},
                "zone": {"path": "when.timezone"},
                "n": {"path": "n", "type": "integer", "min": 0},
                "url": {"path": "link", "type": "url"},
                "m": {"path": "@merchant_id"},
            }},
            "lines": {"expand": "groups.nodes[].items.nodes[]", "fields": {
                "id": {"paths": ["id", "^.id", "$index"], "transform": "id_or_position"},
                "group": {"path": "^.name"},
                "qty": {"path": "qty", "type": "decimal", "required": True},
                "order": {"path": "$.id"},
            }},
        },
        "overrides": {"m2": {"fields": {"money": {"path": "price2", "type": "decimal"}}}},
    }
    mapping = compile_mapping(parse_mapping(spec))
    assert isinstance(mapping._fast_extractor, FastExtractor)
    rng = random.Random(5)
    docs = []
    for i in range(200):
        docs.append({
            "id": rng.choice([i, str(i), None, {"x": 1}]),
            "meta": rng.choice([{"a": {"b": rng.choice(SCALARS)}}, "plain", None, [1], {"a": [1]}]),
            "tags": rng.choice([[{"name": "a"}, {"name": "b"}], [], None, "x", [3]]),
            "price": _value(rng), "price2": _value(rng),
            "when": rng.choice([_value(rng), {"date": "2025-03-01 10:00:00.000000", "timezone": "Europe/Paris"}]),
            "n": rng.choice(SCALARS), "link": rng.choice(SCALARS),
            "groups": rng.choice([
                {"nodes": [{"id": rng.choice([1, None]), "name": rng.choice(["g", 5]),
                            "items": {"nodes": [{"id": rng.choice([None, 9]), "qty": rng.choice(SCALARS)}
                                                for _ in range(rng.randrange(3))]}}
                           for _ in range(rng.randrange(3))]},
                {"nodes": "odd"}, None, {"nodes": [None, {"items": None}]},
            ]),
        })
    payloads = [json.dumps(d) for d in docs]
    both(mapping, raw(payloads, [rng.choice(["m1", "m2"]) for _ in payloads]))
