"""Columns converted to Arrow a chunk at a time while the extractor fills them (columns.ArrowChunks)
against the general route, each column converted whole after extraction: the same arrays, the same
values read back, and the same mapping output, whatever the values' types do from chunk to chunk."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

from kingtavo_pipeline.mapping import columns, fast, shipped_mapping, shipped_mappings
from kingtavo_pipeline.mapping.columns import ArrowChunks, ArrowColumn, Column, to_arrow
from kingtavo_pipeline.mapping.fast import FastExtractor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from mapping import generate  # noqa: E402  (the benchmark's Salla order details)

POOLS = [
    ["a", " b ", "", "SAR", "ﾃｽﾄ"],
    [0, 1, -5, 2**62, -(2**63)],
    [1.5, -0.0, 12.25, 1e300, 3.0],
    [True, False],
    [None],
    [{"x": 1}, [1, 2], []],
]


def _column(rng: random.Random) -> list:
    """Runs of values, each run drawn from one or two pools: types that stay, change, or mix."""
    values: list = []
    for _ in range(rng.randint(1, 6)):
        pools = rng.sample(POOLS, rng.choice([1, 1, 1, 2]))
        if rng.random() < 0.5:
            pools.append([None])
        values += [rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 40))]
    return values


def _same_values(got: list, want: list) -> None:
    assert got == want
    assert [type(v) for v in got] == [type(v) for v in want]


@pytest.mark.parametrize("least", [1, 8])
def test_chunked_columns_are_the_whole_columns(monkeypatch, least):
    monkeypatch.setattr(columns, "_CHUNK_VALUES", least)  # a chunk per flush, or a few flushes per chunk
    rng = random.Random(21 + least)
    arrays = dropped = floats = joined = 0
    for _ in range(1500):
        want = [_column(rng) for _ in range(3)]
        lists = [Column() for _ in want]
        chunks = ArrowChunks()
        chunks.start(lists)
        at = 0
        longest = max(map(len, want))
        while at < longest:  # the extractor's rhythm: some values appended, then a flush
            step = rng.randint(1, 30)
            for column, values in zip(lists, want):
                column.extend(values[at : at + step])
            at += step
            chunks.flush()
        joined += sum(len(state.parts or ()) > 1 for state in chunks.states)
        results = chunks.results()
        for column, values in zip(lists, want):
            out = results[id(column)]
            _same_values(list(out), values)
            _same_values([out[i] for i in range(len(out))], values)
            whole, nested = to_arrow(list(values))
            got, got_nested = to_arrow(out)
            assert got.equals(whole) and got.type == whole.type
            assert (got_nested is None) == (nested is None)
            if isinstance(out, ArrowColumn):
                dropped += 1
                floats += out.types is not None
                rows = np.array(sorted(rng.sample(range(len(values)), min(5, len(values)))), dtype=np.int64)
                _same_values(list(out.take(rows)), [values[i] for i in rows])
            arrays += out.__class__ is ArrowColumn
    assert dropped > 300 and floats > 100 and arrays < 4500  # every outcome was met
    assert joined > 150  # columns of several chunks


def test_a_chunk_holding_nan_leaves_the_column_a_list(monkeypatch):
    """``pa.array(..., from_pandas=True)`` reads NaN as missing: such a float column keeps its values."""
    monkeypatch.setattr(columns, "_CHUNK_VALUES", 1)
    column = Column()
    chunks = ArrowChunks()
    chunks.start([column])
    column.extend([1, 2.5, None])
    chunks.flush()
    column.extend([float("nan"), 3.5, 4])
    out = chunks.results()[id(column)]
    assert out.__class__ is Column and out[:3] == [1, 2.5, None] and out[3] != out[3] and out[4:] == [3.5, 4]
    assert [type(v) for v in out] == [int, float, type(None), float, float, int]


def _frame(payloads: list) -> pd.DataFrame:
    n = len(payloads)
    return pd.DataFrame({"payload": pd.Series(payloads, dtype=object), "raw_data_id": range(n),
                         "source_id": [f"r{i}" for i in range(n)], "merchant_id": "m1"})


def _mutated(n: int, seed: int) -> list:
    rng = random.Random(seed)
    docs = [orjson.loads(p) for p in generate(0, n)]
    for d in docs:
        roll = rng.random()
        if roll < 0.02:
            d["id"] = str(d["id"])                                   # ids as text in some chunks
        elif roll < 0.04:
            d["amounts"]["total"] = rng.choice(["abc", "12.50", None, {"amount": True}])
        elif roll < 0.05:
            d["items"][0]["quantity"] = rng.choice([1.5, "2", None, [1]])
        elif roll < 0.06:
            d["updated_at"] = rng.choice([None, "2025-01-02 03:04:05", {"date": "bad", "timezone": "Mars/Base"}])
        elif roll < 0.07:
            d["currency"] = rng.choice([None, "", 5, " usd "])
        elif roll < 0.08:
            d["status"] = rng.choice([{"slug": 7}, None, {"slug": True}])
        elif roll < 0.09:
            d["items"][0]["id"] = None
    payloads: list = [json.dumps(d).encode() for d in docs]
    for i in rng.sample(range(n), min(3, n - 1)):
        payloads[i] = rng.choice([b"{", b"[1]", None, b'{"id": 123456789012345678901234567890, "items": []}'])
    return payloads


@pytest.mark.parametrize("chunk, least, seed", [(4, 1, 1), (16, 1, 2), (256, 1, 3), (256, columns._CHUNK_VALUES, 4)])
def test_salla_batches_identical_with_and_without_chunks(monkeypatch, chunk, least, seed):
    monkeypatch.setattr(fast, "CHUNK", chunk)
    monkeypatch.setattr(columns, "_CHUNK_VALUES", least)
    shipped = shipped_mapping("salla", "orders")
    mapping = type(shipped)(shipped.spec, shipped.name)  # compiled with this chunk size
    assert isinstance(mapping._fast_extractor, FastExtractor)
    assert f"r & {chunk - 1}:" in mapping._fast_extractor.source
    for n in (1, chunk * 3 + 1, 700):
        frame = _frame(_mutated(n, seed))
        fast_out = mapping.run(frame)
        monkeypatch.setattr(FastExtractor, "arrow_chunks", False)
        slow = mapping.run(frame)
        monkeypatch.undo()
        monkeypatch.setattr(fast, "CHUNK", chunk)
        monkeypatch.setattr(columns, "_CHUNK_VALUES", least)
        for name in slow.frames:
            pd.testing.assert_frame_equal(fast_out[name], slow[name], check_exact=True)
            assert list(fast_out[name].dtypes) == list(slow[name].dtypes)
        pd.testing.assert_frame_equal(fast_out.rejects, slow.rejects, check_exact=True)


@pytest.mark.parametrize("name", sorted(shipped_mappings()))
def test_shipped_mappings_identical_with_and_without_chunks_on_random_shapes(monkeypatch, name):
    from kingtavo_pipeline_tests.unit.test_mapping_fast import _documents

    monkeypatch.setattr(fast, "CHUNK", 4)  # many chunks, types changing between them
    monkeypatch.setattr(columns, "_CHUNK_VALUES", 1)
    shipped = shipped_mapping(*name.split("_", 1))
    mapping = type(shipped)(shipped.spec, shipped.name)
    docs = _documents(mapping, 300, seed=hash(name) % 1000 + 1)
    frame = _frame([json.dumps(d).encode() if i % 3 else json.dumps(d) for i, d in enumerate(docs)])
    chunked = mapping.run(frame)
    monkeypatch.setattr(FastExtractor, "arrow_chunks", False)
    whole = mapping.run(frame)
    for target in whole.frames:
        pd.testing.assert_frame_equal(chunked[target], whole[target], check_exact=True)
    pd.testing.assert_frame_equal(chunked.rejects, whole.rejects, check_exact=True)
