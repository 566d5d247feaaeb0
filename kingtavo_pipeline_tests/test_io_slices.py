"""Both IO managers against their real stores (PostgreSQL and chDB): what a slice selects and what
a write reports — missing tables, SQL partition expressions, days in a partitions' time zone,
per-partition row counts."""

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd
import pyarrow as pa
import pytest
from dagster import (
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    DailyPartitionsDefinition,
    PartitionKeyRange,
    TimeWindowPartitionMapping,
    asset,
    materialize,
)

from kingtavo_pipeline_tests.io_helpers import DAILY, load, make_backend, rows, write

META = {"partition_expr": "day", "order_by": ["shop", "id"]}
RANGE_TAGS = {"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-03"}


@pytest.fixture(params=["postgres", "clickhouse"])
def backend(request):
    return make_backend(request)


def num_rows(obj) -> int:
    return len(obj) if isinstance(obj, pd.DataFrame) else obj.num_rows


def column_names(obj) -> list[str]:
    return list(obj.columns) if isinstance(obj, pd.DataFrame) else obj.column_names


def per_day(backend, table: str, column: str = "day") -> dict[dt.date, int]:
    return dict(backend.fetch(f"SELECT {column}, count(*) FROM {backend.table(table)} GROUP BY {column} ORDER BY {column}"))


# --- a table that does not exist yet -----------------------------------------------------------


@pytest.mark.parametrize("typ", [pd.DataFrame, pa.Table])
def test_first_partition_of_a_self_dependent_asset_loads_empty(backend, typ):
    """The first partition reads its own previous partition: no table yet, so an empty frame."""
    seen = []
    previous_day = TimeWindowPartitionMapping(start_offset=-1, end_offset=-1)

    @asset(
        key=["running"],
        partitions_def=DAILY,
        metadata=META,
        ins={"previous": AssetIn(key=["running"], partition_mapping=previous_day)},
    )
    def running(context: AssetExecutionContext, previous: typ) -> typ:
        seen.append(previous)
        frame = rows(context.partition_key, num_rows(previous) + 1)
        return frame if typ is pd.DataFrame else pa.Table.from_pandas(frame, preserve_index=False)

    resources = {"io_manager": backend.factory()}
    for day in ("2024-01-01", "2024-01-02"):
        assert materialize([running], partition_key=day, resources=resources).success
    first, second = seen
    assert isinstance(first, typ) and num_rows(first) == 0 and column_names(first) == []
    assert num_rows(second) == 1 and column_names(second)[:3] == ["day", "shop", "id"]
    assert per_day(backend, "running") == {dt.date(2024, 1, 1): 1, dt.date(2024, 1, 2): 2}


def test_missing_table_loads_the_asked_for_columns(backend):
    iom = backend.iom()
    frame = load(iom, ["never_written"], pd.DataFrame, partition_key="2024-01-01", pdef=DAILY, metadata=META, columns=["id", "tag"])
    assert list(frame.columns) == ["id", "tag"] and len(frame) == 0
    table = load(iom, ["never_written"], pa.Table)  # unpartitioned, no columns asked for
    assert table.num_rows == 0 and table.column_names == []


def test_input_mapped_to_no_partitions_loads_empty(backend):
    """The day before the first partition does not exist: no upstream partitions to load."""
    seen: dict[str, pd.DataFrame] = {}
    day_before = TimeWindowPartitionMapping(start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True)

    @asset(key=["daily_source"], partitions_def=DAILY, metadata=META)
    def daily_source(context: AssetExecutionContext) -> pd.DataFrame:
        return rows(context.partition_key, 2)

    @asset(partitions_def=DAILY, ins={"daily_source": AssetIn(key=["daily_source"], partition_mapping=day_before)})
    def day_after(context: AssetExecutionContext, daily_source: pd.DataFrame) -> None:
        seen[context.partition_key] = daily_source

    resources = {"io_manager": backend.factory()}
    # the upstream table does not exist yet either
    assert materialize([daily_source, day_after], selection=[day_after], partition_key="2024-01-01", resources=resources).success
    assert len(seen["2024-01-01"]) == 0
    # the table exists, the mapping still yields no partition
    assert materialize([daily_source, day_after], partition_key="2024-01-01", resources=resources).success
    assert len(seen["2024-01-01"]) == 0 and list(seen["2024-01-01"].columns)[:3] == ["day", "shop", "id"]
    assert materialize([daily_source, day_after], partition_key="2024-01-02", resources=resources).success
    assert seen["2024-01-02"]["day"].tolist() == [dt.date(2024, 1, 1)] * 2


# --- partition expressions that are SQL --------------------------------------------------------

EXPRESSIONS = {
    ("postgres", "date"): "(event_time::date)",
    ("postgres", "yyyymmdd"): "(to_char(event_time AT TIME ZONE 'UTC', 'YYYYMMDD')::int)",
    ("clickhouse", "date"): "toDate(event_time)",
    ("clickhouse", "yyyymmdd"): "toYYYYMMDD(event_time)",
}


def events(day: str, n: int, tag: str = "v1") -> pa.Table:
    """``n`` rows spread over the UTC day, first and last microsecond included."""
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
    last = 86_400_000_000 - 1  # microseconds
    times = [start + dt.timedelta(microseconds=last * i // max(n - 1, 1)) for i in range(n)]
    return pa.table(
        {
            "event_time": pa.array(times, pa.timestamp("us", "UTC")),
            "id": pa.array(range(n), pa.int64()),
            "tag": [tag] * n,
        }
    )


@pytest.mark.parametrize("form", ["date", "yyyymmdd"])
def test_partition_expr_may_be_an_expression_over_a_column(backend, form):
    meta = {"partition_expr": EXPRESSIONS[(backend.name, form)], "order_by": ["id"]}
    iom = backend.iom()
    write(iom, ["by_expr"], events("2024-01-01", 3), partition_key="2024-01-01", pdef=DAILY, metadata=meta)
    write(iom, ["by_expr"], events("2024-01-02", 2), partition_key="2024-01-02", pdef=DAILY, metadata=meta)
    out = write(iom, ["by_expr"], events("2024-01-01", 4, "v2"), partition_key="2024-01-01", pdef=DAILY, metadata=meta)
    assert out["dagster/partition_row_count"] == 4

    day1 = load(iom, ["by_expr"], pa.Table, partition_key="2024-01-01", pdef=DAILY, metadata=meta)
    assert sorted(day1.column("tag").to_pylist()) == ["v2"] * 4
    both = load(iom, ["by_expr"], pa.Table, key_range=PartitionKeyRange("2024-01-01", "2024-01-02"), pdef=DAILY, metadata=meta)
    assert both.num_rows == 6
    with pytest.raises(ValueError, match="1 of 2 rows .* lie outside the partition"):
        write(iom, ["by_expr"], pa.concat_tables([events("2024-01-02", 1), events("2024-01-03", 1)]),
              partition_key="2024-01-02", pdef=DAILY, metadata=meta)
    assert backend.fetch(f"SELECT count(*) FROM {backend.table('by_expr')}") == [(6,)]


# --- days in the partitions' time zone ---------------------------------------------------------


def zoned(day: str, n: int, column: str, zone: ZoneInfo, tag: str | None = None) -> pa.Table:
    d = dt.date.fromisoformat(day)
    if column == "date":
        at = pa.array([d] * n, pa.date32())
    else:  # the local day's first and last second, as instants
        local = [dt.datetime.combine(d, dt.time(0), zone), dt.datetime.combine(d, dt.time(23, 59, 59), zone)]
        at = pa.array([local[i % 2] for i in range(n)], pa.timestamp("us", "UTC"))
    return pa.table({"at": at, "id": pa.array(range(n), pa.int64()), "tag": [tag or day] * n})


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Riyadh"])
@pytest.mark.parametrize("column", ["date", "timestamptz"])
def test_days_are_days_in_the_partitions_time_zone(backend, tz, column):
    """Two adjacent days of a non-UTC partitions definition, over a date and a timestamp column."""
    pdef = DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-02-01", timezone=tz)
    zone = ZoneInfo(tz)
    meta = {"partition_expr": "at", "order_by": ["id"]}
    iom = backend.iom()
    write(iom, ["zoned"], zoned("2024-01-01", 2, column, zone), partition_key="2024-01-01", pdef=pdef, metadata=meta)
    write(iom, ["zoned"], zoned("2024-01-02", 3, column, zone), partition_key="2024-01-02", pdef=pdef, metadata=meta)
    for day, n in (("2024-01-01", 2), ("2024-01-02", 3)):
        got = load(iom, ["zoned"], pa.Table, partition_key=day, pdef=pdef, metadata=meta)
        assert got.column("tag").to_pylist() == [day] * n
    both = load(iom, ["zoned"], pa.Table, key_range=PartitionKeyRange("2024-01-01", "2024-01-02"), pdef=pdef, metadata=meta)
    assert both.num_rows == 5

    # re-writing one day replaces that day only
    out = write(iom, ["zoned"], zoned("2024-01-02", 1, column, zone, "again"), partition_key="2024-01-02", pdef=pdef, metadata=meta)
    assert out["dagster/partition_row_count"] == 1
    assert sorted(backend.fetch(f"SELECT tag, count(*) FROM {backend.table('zoned')} GROUP BY tag")) == [
        ("2024-01-01", 2),
        ("again", 1),
    ]
    with pytest.raises(ValueError, match="lie outside the partition"):
        write(iom, ["zoned"], zoned("2024-01-03", 1, column, zone), partition_key="2024-01-02", pdef=pdef, metadata=meta)


# --- per-partition row counts ------------------------------------------------------------------

COUNTS = {"2024-01-01": 1, "2024-01-02": 2, "2024-01-03": 3}


def counted_rows(days) -> pd.DataFrame:
    return pd.concat([rows(d, COUNTS[d]) for d in days], ignore_index=True)


def test_a_range_run_reports_each_partitions_own_row_count(backend):
    @asset(key=["counted"], partitions_def=DAILY, metadata=META, backfill_policy=BackfillPolicy.single_run())
    def counted(context: AssetExecutionContext) -> pd.DataFrame:
        window = context.partition_time_window
        return counted_rows(d.date().isoformat() for d in pd.date_range(window.start, window.end, freq="D", inclusive="left"))

    result = materialize([counted], resources={"io_manager": backend.factory()}, tags=RANGE_TAGS)
    assert result.success
    mats = result.asset_materializations_for_node("counted")
    assert {m.partition: m.metadata["dagster/partition_row_count"].value for m in mats} == COUNTS

    # a direct handle_output has no run to carry per-partition metadata: the counts come as one mapping
    out = write(backend.iom(), ["counted"], counted_rows(COUNTS), key_range=PartitionKeyRange("2024-01-01", "2024-01-03"),
                pdef=DAILY, metadata=META)
    assert out["partition_row_counts"] == COUNTS
    assert "dagster/partition_row_count" not in out
    assert out["rows_written"] == 6
