"""Streaming through both IO managers (PostgreSQL and chDB): ``pyarrow.RecordBatchReader`` in and
out, and iterators of batches out, with a batch size small enough to force many batches."""

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from dagster import (
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    PartitionKeyRange,
    asset,
    materialize,
)

from kingtavo_pipeline_tests.io_helpers import DAILY, load, make_backend, rows, sorted_table, write

META = {"partition_expr": "day", "order_by": ["shop", "id"]}
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]
RANGE = PartitionKeyRange(DAYS[0], DAYS[-1])
BATCH = 2
ORDER = ["day", "id"]


@pytest.fixture(params=["postgres", "clickhouse"])
def backend(request):
    return make_backend(request)


def three_days(tag: str = "v1") -> pa.Table:
    frame = pd.concat([rows(d, 3 + i, tag) for i, d in enumerate(DAYS)], ignore_index=True)
    return pa.Table.from_pandas(frame, preserve_index=False)


def test_streamed_range_round_trip_equals_the_table_path(backend):
    iom = backend.iom(batch_rows=BATCH)
    data = three_days()
    span = {"key_range": RANGE, "pdef": DAILY, "metadata": META}

    reader = pa.RecordBatchReader.from_batches(data.schema, data.to_batches(max_chunksize=BATCH))
    streamed_meta = write(iom, ["streamed"], reader, **span)
    table_meta = write(iom, ["tabled"], data, **span)
    assert streamed_meta["partition_row_counts"] == table_meta["partition_row_counts"] == dict(zip(DAYS, (3, 4, 5)))
    assert streamed_meta["rows_written"] == 12

    loaded = load(iom, ["streamed"], pa.RecordBatchReader, **span)
    assert isinstance(loaded, pa.RecordBatchReader)
    batches = list(loaded)
    assert len(batches) >= 12 // BATCH and all(0 < b.num_rows <= BATCH for b in batches)
    streamed = pa.Table.from_batches(batches, loaded.schema)
    expected = load(iom, ["tabled"], pa.Table, **span)
    assert streamed.schema == expected.schema
    assert sorted_table(streamed, ORDER).equals(sorted_table(expected, ORDER))

    # one day, and the whole table
    day2 = load(iom, ["streamed"], pa.RecordBatchReader, partition_key=DAYS[1], pdef=DAILY, metadata=META).read_all()
    assert day2.num_rows == 4
    assert load(iom, ["streamed"], pa.RecordBatchReader, pdef=None).read_all().num_rows == 12


def test_an_iterator_of_batches_and_tables_is_an_output(backend):
    iom = backend.iom(batch_rows=BATCH)
    data = three_days()
    span = {"key_range": RANGE, "pdef": DAILY, "metadata": META}
    parts = iter([data.slice(0, 5), *data.slice(5).to_batches(max_chunksize=3)])  # a Table, then RecordBatches
    write(iom, ["iterated"], parts, **span)
    got = load(iom, ["iterated"], pa.Table, **span)
    assert sorted_table(got, ORDER).equals(sorted_table(three_days(), ORDER).select(got.column_names).cast(got.schema))

    # re-written as a stream with one day left out: that day is emptied, as with a table
    kept = data.filter(pc.not_equal(pc.cast(data.column("day"), pa.string()), DAYS[1]))
    out = write(iom, ["iterated"], (b for b in kept.to_batches(max_chunksize=BATCH)), **span)
    assert out["partition_row_counts"] == {DAYS[0]: 3, DAYS[1]: 0, DAYS[2]: 5}
    assert load(iom, ["iterated"], pa.Table, **span).num_rows == 8

    with pytest.raises(ValueError, match="part 2 of the output has schema"):
        write(iom, ["iterated"], iter([data.slice(0, 2), data.slice(2, 2).drop_columns(["tag"])]), **span)
    assert load(iom, ["iterated"], pa.Table, **span).num_rows == 8


def test_missing_table_streams_empty(backend):
    day = {"partition_key": DAYS[0], "pdef": DAILY, "metadata": META}
    reader = load(backend.iom(), ["never_streamed"], pa.RecordBatchReader, columns=["id"], **day)
    assert reader.schema.names == ["id"] and reader.read_all().num_rows == 0


def test_closing_a_reader_early_releases_its_connection(backend, request):
    iom = backend.iom(batch_rows=BATCH)
    write(iom, ["closed_early"], three_days(), key_range=RANGE, pdef=DAILY, metadata=META)
    pool = request.getfixturevalue("store").engine.pool if backend.name == "postgres" else None
    before = pool.checkedout() if pool else 0
    reader = load(iom, ["closed_early"], pa.RecordBatchReader, key_range=RANGE, pdef=DAILY, metadata=META)
    assert reader.read_next_batch().num_rows == BATCH
    if pool:
        assert pool.checkedout() == before + 1  # the reader's own transaction
    reader.close()
    if pool:
        assert pool.checkedout() == before
    # the store is free for the next writer and reader
    write(iom, ["closed_early"], three_days("v2"), key_range=RANGE, pdef=DAILY, metadata=META)
    again = load(iom, ["closed_early"], pa.RecordBatchReader, key_range=RANGE, pdef=DAILY, metadata=META).read_all()
    assert set(again.column("tag").to_pylist()) == {"v2"}


def test_readers_flow_between_assets_in_a_range_run(backend):
    """A RecordBatchReader as an asset's output and as the next asset's input, over a range."""
    sizes: list[list[int]] = []

    @asset(key=["flow"], partitions_def=DAILY, metadata=META, backfill_policy=BackfillPolicy.single_run())
    def flow(context: AssetExecutionContext) -> pa.RecordBatchReader:
        data = three_days()
        data = data.filter(pc.is_in(pc.cast(data.column("day"), pa.string()), pa.array(context.partition_keys)))
        return pa.RecordBatchReader.from_batches(data.schema, data.to_batches(max_chunksize=BATCH))

    @asset(partitions_def=DAILY, ins={"flow": AssetIn(key=["flow"])}, backfill_policy=BackfillPolicy.single_run())
    def flow_sizes(flow: pa.RecordBatchReader) -> None:
        sizes.append([b.num_rows for b in flow])

    result = materialize(
        [flow, flow_sizes],
        resources={"io_manager": backend.factory(batch_rows=BATCH)},
        tags={"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]},
    )
    assert result.success
    mats = result.asset_materializations_for_node("flow")
    assert {m.partition: m.metadata["dagster/partition_row_count"].value for m in mats} == dict(zip(DAYS, (3, 4, 5)))
    [batch_sizes] = sizes
    assert sum(batch_sizes) == 12 and max(batch_sizes) <= BATCH
