"""Read-ahead of batches in a thread (storage.prefetch)."""

import threading

import numpy as np
import pandas as pd
import pytest

from kingtavo_pipeline.sources.csv_source import _json_lines, _payloads, content_hash
from kingtavo_pipeline.storage.prefetch import prefetch


def test_batches_come_in_order_and_nothing_is_read_before_the_first_next():
    started = threading.Event()

    def source():
        started.set()
        yield from range(10)

    batches = prefetch(source(), depth=2)
    assert not started.wait(0.05)
    assert list(batches) == list(range(10))


def test_the_producers_error_is_raised_where_its_batch_would_have_come():
    class Boom(Exception):
        pass

    def source():
        yield 1
        raise Boom("bad file")

    batches = prefetch(source())
    assert next(batches) == 1
    with pytest.raises(Boom, match="bad file"):
        next(batches)


def test_closing_early_stops_the_producer_and_closes_the_source():
    closed = threading.Event()
    produced = []

    def source():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    batches = prefetch(source(), depth=1)
    assert next(batches) == 0
    batches.close()
    assert closed.wait(2)
    assert len(produced) < 10  # it stopped a batch or two ahead, not at the end


@pytest.mark.parametrize("values", [
    ["plain", "a/b", "é😀", "", " spaced "],
    ['quote "inside"', "back\\slash", "new\nline", "tab\t", "\x01ctl", "\u2028"],
])
def test_payloads_built_by_columns_are_the_json_lines_text(values):
    data = pd.DataFrame({"id": [str(i) for i in range(len(values))], 'odd "key"/é': values}, dtype="str")
    lines = np.arange(1, len(values) + 1, dtype="int64")
    payload, hashes = _payloads(data, 'dir/we"ird.csv', lines)
    payload = payload if isinstance(payload, list) else payload.to_pylist()
    expected = _json_lines(data.assign(_file='dir/we"ird.csv', _line=lines))
    assert payload == expected
    assert hashes == [content_hash(p) for p in expected]
