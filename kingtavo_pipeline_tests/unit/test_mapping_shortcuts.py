"""The column work's shortcuts against the general route they skip: numbers -> decimal(18,4) in
numpy, text of few distinct values converted once per value, times parsed by Arrow before any
regex, conversions shared by fields reading the same column, transforms that stop at a complete
first input, text not trimmed when no string has whitespace at its ends, sums of only empty
arrays, merchant text taken at once and inferred once per run, constants as one Arrow value taken n
times, fallback paths extracted only for batches that read them. Each must give exactly what
the general route gives (values, dtypes, problems and their messages)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kingtavo_pipeline.mapping import columns, engine, shipped_mapping, transforms
from kingtavo_pipeline.mapping.columns import arrow_text, convert_decimal, to_arrow
from kingtavo_pipeline.mapping.spec import FieldSpec
from kingtavo_pipeline.mapping.transforms import REGISTRY

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from mapping import generate  # noqa: E402  (the benchmark's Salla order details)


def _general(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shortcut of this module off."""
    monkeypatch.setattr(columns, "_decimal_from_numbers", lambda arr: None)
    monkeypatch.setattr(columns, "_via_unique", lambda text, convert: None)
    monkeypatch.setattr(columns, "_NAIVE_FIRST", False)
    monkeypatch.setattr(columns, "_EDGES_FIRST", False)
    monkeypatch.setattr(transforms, "_EMPTY_AT_ONCE", False)
    monkeypatch.setattr(engine, "_TEXT_AS_IS", False)
    monkeypatch.setattr(engine, "_MERCHANT_ONCE", False)
    monkeypatch.setattr(engine, "_CONST_AT_ONCE", False)
    evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *args, memo=None, **kwargs: evaluate(*args, **kwargs))


def _same(fast: columns.Converted, slow: columns.Converted) -> None:
    pd.testing.assert_series_equal(fast.values, slow.values, check_exact=True)
    assert [(p.error_type, p.mask.tolist(), list(np.atleast_1d(p.reasons))) for p in fast.problems] == \
        [(p.error_type, p.mask.tolist(), list(np.atleast_1d(p.reasons))) for p in slow.problems]


def _decimal_cases(rng: random.Random) -> list:
    scale = rng.choice([1, 10, 100, 1000, 10_000, 100_000, 10**6, 10**9])
    magnitude = rng.choice([10, 10**4, 10**8, 10**12, 10**15, 10**20])
    values: list = [rng.randint(-magnitude, magnitude) / scale if rng.random() < 0.9 else None for _ in range(300)]
    roll = rng.random()
    # integers (some beyond the decimal's range; not beyond 2**53, which the exact route cannot take either)
    whole = [None if v is None else (round(v) if abs(v) < 2**53 else None) for v in values]
    if roll < 0.2:
        values = whole
    elif roll < 0.35:
        values = [w if rng.random() < 0.5 else v for v, w in zip(values, whole)]  # ints and floats
    elif roll < 0.5:
        # half-way between two 4-place decimals, and just beside it
        values = [(rng.randint(-10**7, 10**7) + 0.5 + rng.choice([0, 1e-9, -1e-9, 1e-6])) / 10_000 for _ in range(300)]
    elif roll < 0.55:
        values += [float("inf"), 0.00005, -2.00015, 1.00005, -0.0]
    return values


def test_numbers_to_decimal_in_numpy_match_the_exact_route(monkeypatch):
    rng = random.Random(11)
    cases = [_decimal_cases(rng) for _ in range(600)]
    cases += [[1.5, 2.25, None, -0.0, 12_345_678.9999], [0.00005], [99_999_999.99995], [10**14 - 1, -(10**14) + 1, None]]
    fast = [convert_decimal(c) for c in cases]
    taken = sum(columns._decimal_from_numbers(to_arrow(c)[0]) is not None for c in cases)
    monkeypatch.setattr(columns, "_decimal_from_numbers", lambda arr: None)
    for case, result in zip(cases, fast):
        _same(result, convert_decimal(case))
    assert taken > 200  # the shortcut was taken for most columns, the exact route for the rest


def test_text_of_few_values_converted_once_per_value(monkeypatch):
    rng = random.Random(12)
    pool = ["0", "1,234.50", " 12 ", "", None, "1e5", "abc", "-0.00005", "19,90", "99999999999999", "€ 5", "3.14159", "1.23456789"]
    cases = []
    for _ in range(150):
        chosen = rng.sample(pool, rng.randint(1, len(pool)))
        cases.append([rng.choice(chosen) for _ in range(rng.choice([100, 2000, 5000]))])
    cases.append(["0"] * 4000 + [{"x": 1}])  # an object among them
    fast = [convert_decimal(c) for c in cases]
    monkeypatch.setattr(columns, "_via_unique", lambda text, convert: None)
    for case, result in zip(cases, fast):
        _same(result, convert_decimal(case))


def test_transforms_stop_at_a_complete_first_input():
    def general_first_non_null(inputs):
        arrays = [to_arrow(c)[0] for c in inputs]
        arrays = [arrow_text(a) if pa.types.is_string(a.type) else a for a in arrays]
        types = {a.type for a in arrays if not pa.types.is_null(a.type)}
        if len(types) > 1:
            arrays = [arrow_text(a) for a in arrays]
        kind = next(iter(types)) if len(types) == 1 else pa.string()
        return pd.Series(pd.arrays.ArrowExtensionArray(pc.coalesce(*[a.cast(kind) for a in arrays])))

    def general_id_or_position(inputs):
        own, parent, index = (arrow_text(to_arrow(c)[0]) for c in inputs)
        return pd.Series(pd.arrays.ArrowExtensionArray(pc.coalesce(own, pc.binary_join_element_wise(parent, index, ":"))))

    firsts = [["SAR", " sar ", "usd"], ["SAR", "", "usd"], ["SAR", None, "x"], [1, 2, 3], [True, False, True], ["a", {"x": 1}, "b"]]
    others = [["x", "y", "z"], [1, 2, 3], [None, None, None], [1.5, None, "q"]]
    for first in firsts:
        for other in others:
            inputs = [first, other, list(reversed(other))]
            pd.testing.assert_series_equal(REGISTRY["first_non_null"].fn(inputs), general_first_non_null(inputs), check_exact=True)
            ids = [first, other, [0, 1, 2]]
            pd.testing.assert_series_equal(REGISTRY["id_or_position"].fn(ids), general_id_or_position(ids), check_exact=True)


def _salla_payloads(n: int) -> list:
    docs = [orjson.loads(p) for p in generate(0, n)]
    docs[1]["amounts"]["total"] = "abc"
    del docs[2]["id"]
    docs[3]["updated_at"] = {"date": "bad", "timezone": "Asia/Riyadh"}
    docs[4]["items"][0]["id"] = None                         # a line without its id: parent id and position
    docs[5]["currency"] = None                               # the currency from the total's
    docs[6]["amounts"]["sub_total"] = {"amount": 123456789012.5, "currency": "SAR"}  # beyond the numpy range
    docs[7]["amounts"]["discounts"] = [{"discount": {"amount": "1.5"}}]
    docs[8]["items"][1:] = []
    docs[9]["updated_at"] = {"date": "2025-01-01 00:00:00.000000", "timezone": "Mars/Base"}
    docs[10]["amounts"]["tax"]["amount"] = {"amount": 0.00005, "currency": "SAR"}  # half-way: the exact route
    return [json.dumps(d).encode() for d in docs]


@pytest.mark.parametrize("n", [60, 3000])
def test_salla_batch_identical_with_and_without_shortcuts(monkeypatch, n):
    mapping = shipped_mapping("salla", "orders")
    payloads = _salla_payloads(n)
    frame = pd.DataFrame({"payload": pd.Series(payloads, dtype=object), "raw_data_id": range(n),
                          "source_id": [f"r{i}" for i in range(n)], "merchant_id": "m1"})
    fast = mapping.run(frame)
    _general(monkeypatch)
    slow = mapping.run(frame)
    for name in slow.frames:
        pd.testing.assert_frame_equal(fast[name], slow[name], check_exact=True)
        assert list(fast[name].dtypes) == list(slow[name].dtypes)
    pd.testing.assert_frame_equal(fast.rejects, slow.rejects, check_exact=True)
    assert set(fast.rejects["source_id"]) >= {"r1", "r2", "r3", "r9"}


def test_times_arrow_parses_without_offset_never_carry_one(monkeypatch):
    """convert_timestamp skips its offset regex when Arrow parses every string as a time without
    offset: the strings it parses so must all be ones the regex calls naive."""
    rng = random.Random(13)
    parts = ["2025-01-02", "T", " ", "03:04", ":05", ".123456", ",5", "Z", "z", "+03:00", "-0500", "+03", " UTC", "GMT", "  "]
    strings = ["".join(rng.choice(parts) for _ in range(rng.randint(1, 5))) for _ in range(3000)]
    strings += [rng.choice(["2025-01-02", "2025-01-02T03:04", "2025-01-02 03:04:05"]) + rng.choice(["", ".5", "Z", "+03:00", " UTC"])
                for _ in range(200)]
    strings += ["2025-01-02 03:04:05.000000", "2025-01-02", "2025-01-02T03:04", "2025-01-02 03:04:05Z", "2025-01-02 03:04-05"]
    parsed = 0
    for s in strings:
        try:
            pa.array([s]).cast(pa.timestamp("us"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        parsed += 1
        assert not pc.match_substring_regex(pa.array([s]), columns._AWARE_RE)[0].as_py(), s
    assert parsed > 80
    zones = [rng.choice(["Asia/Riyadh", "UTC", None, "Mars/Base"]) for _ in range(200)]
    for chosen in (["2025-01-02 03:04:05.000000", "2025-03-30 02:30:00"], strings[:50] + [None, "", "bad"]):
        values = [rng.choice(chosen) for _ in range(200)]
        fast = columns.convert_timestamp(values, zones=zones, timezone="Asia/Riyadh")
        with monkeypatch.context() as m:
            m.setattr(columns, "_NAIVE_FIRST", False)
            _same(fast, columns.convert_timestamp(values, zones=zones, timezone="Asia/Riyadh"))


def test_text_without_edge_whitespace_is_not_trimmed(monkeypatch):
    """arrow_text skips the trim (and the blank -> null pass) when the first and last bytes show
    nothing to do: the same arrays as trimming always."""
    spaces = [chr(c) for c in (0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680, 0x2000,
                                0x2005, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)]
    others = ["a", "Z", "7", "-", "\x7f", "\x00", "\x08", "é", "ß", "\u0100", "ع", "\u0800", "\u1000", "\u167f", "\u1681",
              "\u200b", "\u2030", "\u2fff", "\u3001", "\ue000", "\U0001f600", "\U0010ffff", "\u00c2", "\u00a1"]
    rng = random.Random(16)

    def word() -> str:
        roll = rng.random()
        if roll < 0.05:
            return ""
        body = "".join(rng.choice(others) for _ in range(rng.randint(1, 4)))
        if roll < 0.15:
            return rng.choice(spaces) + body
        if roll < 0.25:
            return body + rng.choice(spaces)
        if roll < 0.3:
            return "".join(rng.choice(spaces) for _ in range(rng.randint(1, 3)))
        return body

    cases = []
    for _ in range(400):
        values = [word() if rng.random() < 0.9 else None for _ in range(rng.choice([1, 3, 50]))]
        if rng.random() < 0.5:  # most columns: no edge whitespace at all
            values = [v.strip("".join(spaces)) or "x" if v else v for v in values]
        arr = pa.array(values, pa.string())
        if rng.random() < 0.2 and len(arr) > 2:
            arr = arr.slice(1, len(arr) - 2)
        cases.append(arr)
    cases += [pa.array([], pa.string()), pa.array([None, None], pa.string()), pa.array(["", None]), pa.array(["a"] * 10)]
    for space in spaces:  # each whitespace character at either end (or inside) of each other one
        for other in others:
            cases += [pa.array([text, "a"]) for text in (space + other, other + space, other + space + other, space)]
    fast = [arrow_text(a) for a in cases]
    assert sum(columns._edges(a)[0] for a in cases) > 50  # the shortcut was taken often
    monkeypatch.setattr(columns, "_EDGES_FIRST", False)
    for arr, result in zip(cases, fast):
        slow = arrow_text(arr)
        assert result.equals(slow) and result.type == slow.type, arr.to_pylist()


def test_sums_of_only_empty_or_only_absent_arrays_at_once(monkeypatch):
    rng = random.Random(14)
    pool = [[], None, [], [{"discount": {"amount": 1}}], "x", 0]
    cases = [[], [[]], [None], [[]] * 3000, [None] * 3000]
    for _ in range(300):
        chosen = rng.sample(pool, rng.randint(1, 3))
        cases.append([rng.choice(chosen) for _ in range(rng.choice([1, 5, 200]))])
    fast = [REGISTRY["sum"].fn([c], key="discount") for c in cases]
    monkeypatch.setattr(transforms, "_EMPTY_AT_ONCE", False)
    at_once = 0
    for case, result in zip(cases, fast):
        slow = REGISTRY["sum"].fn([case], key="discount")
        if str(result.dtype) == str(slow.dtype):
            pd.testing.assert_series_equal(result, slow, check_exact=True)
            continue
        # every array empty: Arrow strings, read by every consumer (to_arrow) as the "0"s are
        at_once += 1
        assert result.tolist() == slow.tolist() and [type(v) for v in result.tolist()] == [str] * len(case)
        assert result.to_numpy(dtype=object, na_value=None).tolist() == slow.to_numpy(dtype=object, na_value=None).tolist()
        got, want = to_arrow(result), to_arrow(slow)
        assert got[0].equals(want[0]) and got[0].type == want[0].type and got[1] is want[1] is None
        _same(convert_decimal(result), convert_decimal(slow))
    assert at_once >= 2


def test_merchant_text_taken_as_it_is(monkeypatch):
    rng = random.Random(15)
    pool = ["m1", "", " m2 ", None, float("nan"), 7, pd.NA, "1608226078"]
    cases = [pd.Series([], dtype=object), pd.Series(["a"] * 5), pd.Series(["a", None], dtype="string"),
             pd.Series(["a", " b ", ""], dtype="string"), pd.Series(["a", "b"], dtype="str"), pd.Series([], dtype="str"),
             pd.Series(["a", None], dtype="str"), pd.Series(["x"] * 3, dtype=pd.StringDtype("python")),
             pd.DataFrame({"p": range(4)}).assign(m="1608226078")["m"],
             pd.Series([1, 2]), pd.Series(["m1", "m2"], dtype=object)]
    for _ in range(300):
        chosen = rng.sample(pool, rng.randint(1, 3))
        cases.append(pd.Series([rng.choice(chosen) for _ in range(rng.randint(1, 30))], dtype=object))
        text = [v for v in chosen if isinstance(v, str) or v is None]
        if text:
            cases.append(pd.Series([rng.choice(text) for _ in range(rng.randint(1, 30))], dtype=rng.choice(["str", "string"])))
    fast = [engine._merchants(c) for c in cases]
    monkeypatch.setattr(engine, "_TEXT_AS_IS", False)
    for case, result in zip(cases, fast):
        slow = engine._merchants(case)
        assert result.dtype == slow.dtype and result.tolist() == slow.tolist()
        assert [type(v) for v in result] == [type(v) for v in slow]


def test_merchant_column_inferred_once_per_run(monkeypatch):
    """Each target's merchant_id column taken from the run's merchants inferred once: the column the
    frame gets is the one it got from each target's own object array (dtype and values)."""
    rng = random.Random(17)
    pool = ["m1", "", "m2", "1608226078", "ﾃｽﾄ"]
    for _ in range(200):
        n = rng.choice([1, 3, 40])
        chosen = rng.sample(pool, rng.randint(1, 3))
        merchants = pd.Series([rng.choice(chosen) for _ in range(n)], dtype=object)
        frame = pd.DataFrame({"payload": ["{}"] * n, "raw_data_id": range(n), "source_id": "s", "merchant_id": merchants})
        run = engine._Run(shipped_mapping("salla", "orders"), frame)
        for rows in (np.arange(n), np.array([], dtype=np.int64), np.sort(rng.choices(range(n), k=rng.randint(1, 2 * n)))):
            columns_ = {}
            for once in (True, False):
                monkeypatch.setattr(engine, "_MERCHANT_ONCE", once)
                out = pd.DataFrame({"x": range(len(rows))})
                out["merchant_id"] = run._merchant_column(rows)
                columns_[once] = out
            pd.testing.assert_frame_equal(columns_[True], columns_[False], check_exact=True)
            assert columns_[True]["merchant_id"].dtype == columns_[False]["merchant_id"].dtype


def _frame_column_by_column(self, target, values, level, rejected):
    """The output frame as it was built before: the mapped columns, then each bookkeeping column set."""
    frame = pd.DataFrame(values)
    parent = level.parent_row if level.parent_row is not None else np.arange(self.n)
    for column in engine.BOOKKEEPING:
        source = "source_id" if column == "raw_source_id" else column
        if column == "merchant_id":
            frame[column] = engine._take(self.merchant, parent)
        elif source in self.raw:
            frame[column] = self.raw[source].take(parent).reset_index(drop=True)
    keep = ~rejected[parent]
    return frame if keep.all() else frame[keep].reset_index(drop=True)


_EVERY_TYPE = {
    "integration": "x", "entity": "y",
    "targets": {"t": {"fields": {
        "id": {"path": "id", "required": True}, "n": {"path": "n", "type": "integer"}, "f": {"path": "f", "type": "number"},
        "d": {"path": "f", "type": "decimal"}, "when": {"path": "when", "type": "timestamp"}, "url": {"path": "url", "type": "url"},
        "s": {"path": "s", "type": "text"}, "k": {"const": 5}, "e": {"path": "s", "enum": {"map": {"a": "A"}, "default": "z"}},
    }}, "u": {"expand": "items[]", "fields": {"i": {"path": "$.id"}, "q": {"path": "q", "type": "integer"}, "p": {"path": "$index"}}}},
}


@pytest.mark.parametrize("shape", ["salla", "no merchant", "empty", "rejects", "types"])
def test_output_frames_built_at_once(monkeypatch, shape):
    """Output frames (and the empty rejects) built at once, as they were built column by column
    (with the typed Series given as their arrays, and without)."""
    from kingtavo_pipeline.mapping import compile_mapping, parse_mapping

    mapping = shipped_mapping("salla", "orders") if shape != "types" else compile_mapping(parse_mapping(_EVERY_TYPE))
    rng = random.Random(3)
    payloads = _salla_payloads(80) if shape == "rejects" else generate(0, 80)
    if shape == "types":
        payloads = [json.dumps({"id": rng.choice([i, i, None]), "n": rng.choice([1, None, 1, 3, 2.5]), "f": rng.choice([1.5, None, 7]),
                                "when": rng.choice(["2025-01-01T00:00:00Z", None] * 9 + ["bad"]), "url": rng.choice(["https://a.b", None]),
                                "s": rng.choice(["a", " b", None]), "items": [{"q": rng.choice([1, None])}] * rng.randrange(3)})
                    for i in range(80)]
    frame = pd.DataFrame({"payload": pd.Series(payloads, dtype=object), "raw_data_id": range(80),
                          "source_id": [f"r{i}" for i in range(80)], "merchant_id": ["m1", "m2"] * 40,
                          "observed_seq": range(80)})
    if shape in ("salla", "types"):  # as the bench gives it (an object column stays one)
        frame["source_id"] = pd.Series([f"r{i}" for i in range(80)], dtype=object)
    if shape == "no merchant":
        frame = frame.drop(columns=["merchant_id"])
    if shape == "empty":
        frame = frame.iloc[:0]
    fast = mapping.run(frame)
    _frame = engine._Run._frame
    monkeypatch.setattr(engine._Run, "_frame", _frame_column_by_column)
    monkeypatch.setattr(engine, "_empty_rejects", lambda: pd.DataFrame(
        {c: pd.Series(dtype="int64" if c == "raw_data_id" else object) for c in engine.REJECT_COLUMNS}))
    slow = mapping.run(frame)
    monkeypatch.setattr(engine, "_FRAME_ARRAYS", False)
    monkeypatch.setattr(engine._Run, "_frame", _frame)
    series = mapping.run(frame)
    for name in slow.frames:
        for other in (slow, series):
            pd.testing.assert_frame_equal(fast[name], other[name], check_exact=True)
            assert list(fast[name].dtypes) == list(other[name].dtypes)
            assert fast[name].index.equals(other[name].index) and type(fast[name].index) is type(other[name].index)
    pd.testing.assert_frame_equal(fast.rejects, slow.rejects, check_exact=True)
    assert list(fast.rejects.dtypes) == list(slow.rejects.dtypes)


def test_constants_converted_once(monkeypatch):
    """A const field's column built as one Arrow value taken n times, as the list of n copies."""
    consts = ["order", "", "  x ", 0, 7, -1.5, 3.0, 2**70, True, False, None, "2025-01-02 03:04:05", "1700000000",
              "1,234.50", "https://example.com", "abc", {"a": 1}, [1, 2], [1, "x"], float("nan")]
    types = ["text", "url", "decimal", "number", "integer", "timestamp"]
    for const in consts:
        for type_ in types:
            for extra in ({}, {"required": True}, {"default": 5}, {"enum": {"map": {"order": "o", "7": "seven"}, "default": "z"}}):
                try:
                    spec = FieldSpec.model_validate({"const": const, "type": type_, **extra})
                except ValueError:
                    continue
                for n in (0, 1, 300):
                    fast = engine.evaluate(spec, [[None] * n], timezone="Asia/Riyadh")
                    with monkeypatch.context() as m:
                        m.setattr(engine, "_CONST_AT_ONCE", False)
                        slow = engine.evaluate(spec, [[None] * n], timezone="Asia/Riyadh")
                    pd.testing.assert_series_equal(fast.values, slow.values, check_exact=True)
                    assert [(p.error_type, p.mask.tolist(), list(np.atleast_1d(p.reasons))) for p in fast.problems] == \
                        [(p.error_type, p.mask.tolist(), list(np.atleast_1d(p.reasons))) for p in slow.problems], (const, type_)


def _perturbed_salla(rng: random.Random, n: int, rate: float) -> list:
    """Salla details whose currencies (order, lines, and the totals' fallbacks) are at ``rate``
    missing, blank, padded, lower case, numbers, objects or lists."""
    odd = [None, "", "  ", " sar ", "usd", 7, 1.5, True, {"code": "SAR"}, ["SAR"], "\u00a0SAR"]
    docs = [orjson.loads(p) for p in generate(rng.randrange(10**6), n, seed=rng.randrange(100))]
    for d in docs:
        places = [(d, "currency"), (d["amounts"]["total"], "currency")]
        places += [(place, "currency") for item in d["items"] for place in (item, item["amounts"]["total"])]
        for obj, key in places:
            if rng.random() < rate:
                if rng.random() < 0.3:
                    obj.pop(key, None)
                else:
                    obj[key] = rng.choice(odd)
    return [orjson.dumps(d) for d in docs]


@pytest.mark.parametrize("seed", range(12))
def test_lazy_fallback_paths_identical_to_reading_them(monkeypatch, seed):
    """The Salla currencies' fallbacks (``amounts.total.currency``) are left out of the extraction
    of a batch whose every first currency is complete, and read only for the others: the output is
    the one of a mapping that reads them always (values, dtypes, rejects)."""
    rng = random.Random(seed)
    lazy = shipped_mapping("salla", "orders")
    assert {i.leaf.path for i in lazy._lazy} == {"amounts.total.currency"}
    monkeypatch.setattr(engine, "_LAZY_FALLBACKS", False)
    always = engine.CompiledMapping(lazy.spec)
    assert not always._lazy and always._lean_extractor is always._fast_extractor
    took = {"lean": 0, "full": 0}
    for rate in (0.0, 0.0005, 0.01, 0.2):
        n = rng.choice([1, 40, 700])
        payloads = _perturbed_salla(rng, n, rate)
        if rng.random() < 0.2:
            payloads[rng.randrange(n)] = b'{"id": 1, "currency": "SAR", "items": [], "x": 1e999999}'  # the general route
        frame = pd.DataFrame({"payload": pd.Series(payloads, dtype=object), "raw_data_id": range(n),
                              "source_id": [f"r{i}" for i in range(n)], "merchant_id": "m1"})
        full = lazy._fast_extractor
        calls = []
        monkeypatch.setattr(lazy, "_fast_extractor", lambda p, full=full: calls.append(1) or full(p))
        got = lazy.run(frame)
        monkeypatch.setattr(lazy, "_fast_extractor", full)
        took["full" if calls else "lean"] += 1
        want = always.run(frame)
        for name in want.frames:
            pd.testing.assert_frame_equal(got[name], want[name], check_exact=True)
            assert list(got[name].dtypes) == list(want[name].dtypes)
        pd.testing.assert_frame_equal(got.rejects, want.rejects, check_exact=True)
    assert took["lean"] and (took["full"] or seed % 2)


def test_lazy_fallback_paths_only_where_nothing_else_reads_them():
    """A fallback path read by another field, or under a merchant's override, is extracted always."""
    from kingtavo_pipeline.mapping import compile_mapping, parse_mapping

    def spec(fields: dict, overrides: dict | None = None) -> dict:
        return {"integration": "x", "entity": "y", "targets": {"t": {"fields": fields}}, "overrides": overrides or {}}

    pick = {"paths": ["a", "b"], "transform": "first_non_null"}
    assert {i.leaf.path for i in compile_mapping(parse_mapping(spec({"v": pick})))._lazy} == {"b"}
    assert not compile_mapping(parse_mapping(spec({"v": pick, "w": {"path": "b"}})))._lazy
    assert not compile_mapping(parse_mapping(spec({"v": pick, "w": {"paths": ["b", "a"], "transform": "first_non_null"}})))._lazy
    assert not compile_mapping(parse_mapping(spec({"v": pick}, {"m1": {"fields": {"t.v": {"path": "a"}}}})))._lazy
    assert not compile_mapping(parse_mapping(spec({"v": {**pick, "transform": "concat"}})))._lazy
