"""ClickHouseIOManager against chDB (the real ClickHouse engine, in-process, from the conftest)."""

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest
from dagster import (
    AssetExecutionContext,
    AssetIn,
    DagsterInstance,
    DailyPartitionsDefinition,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    PartitionKeyRange,
    StaticPartitionsDefinition,
    asset,
    build_init_resource_context,
    materialize,
)

from kingtavo_pipeline_tests.io_helpers import DAILY, SHOPS, load, rows, write
from kingtavo_pipeline.io_managers import ClickHouseIOManager, ColumnTypeError, PartitionLayoutError
from kingtavo_pipeline.resources import ClickHouseResource

DB = "io_test"
DAY_META = {"partition_expr": "day", "order_by": ["shop", "id"]}


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def iom(clickhouse, clickhouse_dsn):
    return ClickHouseIOManager(clickhouse=ClickHouseResource(clickhouse_url=clickhouse_dsn, database=DB)).create_io_manager(build_init_resource_context())


def tags_by(clickhouse, table: str, column: str = "toString(day)") -> dict[str, tuple[int, list[str]]]:
    result = clickhouse.query(
        f"SELECT {column} AS k, count(), arraySort(groupUniqArray(tag)) FROM {DB}.{table} FINAL GROUP BY k ORDER BY k"
    ).result_rows
    return {k: (n, list(tags)) for k, n, tags in result}


def assert_no_mutations(clickhouse, database: str = DB) -> None:
    assert clickhouse.query(
        "SELECT count() FROM system.mutations WHERE database = {db:String}", parameters={"db": database}
    ).result_rows == [(0,)]


def no_stage_tables(clickhouse, database: str = DB) -> bool:
    return not clickhouse.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND name LIKE '%\\_\\_stage\\_%'",
        parameters={"db": database},
    ).result_rows


# --- unpartitioned -----------------------------------------------------------------------------


def test_unpartitioned_round_trip_pandas_and_arrow(iom, clickhouse):
    meta = write(iom, ["wh", "plain"], rows("2024-01-01", 3), metadata={"order_by": ["id"]})
    assert meta["dagster/row_count"] == 3
    assert meta["dagster/table_name"] == f"{DB}.plain"  # the database, not the key prefix
    assert "dagster/partition_row_count" not in meta
    engine, partition_key, sorting_key = clickhouse.query(
        f"SELECT engine_full, partition_key, sorting_key FROM system.tables WHERE database = '{DB}' AND name = 'plain'"
    ).result_rows[0]
    assert engine.startswith("ReplacingMergeTree(_version)")
    assert (partition_key, sorting_key) == ("", "id")

    arrow = pa.Table.from_pandas(rows("2024-01-05", 2, "v2"), preserve_index=False)
    assert write(iom, ["wh", "plain"], arrow, metadata={"order_by": ["id"]})["dagster/row_count"] == 2
    assert tags_by(clickhouse, "plain") == {"2024-01-05": (2, ["v2"])}

    frame = load(iom, ["wh", "plain"], pd.DataFrame).sort_values("id").reset_index(drop=True)
    assert list(frame.columns) == ["day", "shop", "id", "value", "tag", "updated_at"]  # no _version
    assert frame["updated_at"].iloc[1] == pd.Timestamp("2024-01-05T01:00Z")
    table = load(iom, ["wh", "plain"], pa.Table, columns=["id", "_version"])
    assert table.column_names == ["id", "_version"]
    assert table.schema.field("_version").type == pa.uint64()
    assert_no_mutations(clickhouse)
    assert no_stage_tables(clickhouse)


def test_generated_types_and_nullability(iom, clickhouse):
    source = pa.table(
        {
            "day": pa.array([dt.date(2024, 1, 1)] * 2, pa.date32()),
            "id": pa.array([1, 2], pa.int64()),
            "amount": pa.array([None, 2.5], pa.float64()),
            "name": pa.array(["a", None]),
            "at": pa.array([dt.datetime(2024, 1, 1, 3, tzinfo=dt.timezone.utc)] * 2, pa.timestamp("us", "UTC")),
            "labels": pa.array([["x"], []], pa.list_(pa.string())),
            "attrs": pa.array([{"k": 1}, None], pa.struct([("k", pa.int64())])),
        }
    )
    write(iom, ["typed"], source, partition_key="2024-01-01", pdef=DAILY, metadata={"partition_expr": "day", "order_by": ["id"]})
    types = dict(clickhouse.query(f"SELECT name, type FROM system.columns WHERE database = '{DB}' AND table = 'typed'").result_rows)
    assert types == {
        "day": "Date32",  # partition column: not Nullable
        "id": "Int64",  # ORDER BY column: not Nullable
        "amount": "Nullable(Float64)",
        "name": "Nullable(String)",
        "at": "Nullable(DateTime64(6, 'UTC'))",
        "labels": "Array(Nullable(String))",
        "attrs": "Nullable(String)",
        "_version": "UInt64",
    }
    assert clickhouse.query(
        f"SELECT partition_key, sorting_key FROM system.tables WHERE database = '{DB}' AND name = 'typed'"
    ).result_rows == [("toDate(day)", "toDate(day), id")]
    back = load(iom, ["typed"], pa.Table, partition_key="2024-01-01", pdef=DAILY, metadata={"partition_expr": "day"})
    back = back.sort_by([("id", "ascending")])
    assert back.column("amount").to_pylist() == [None, 2.5]
    assert back.column("name").to_pylist() == ["a", None]
    assert back.column("labels").to_pylist() == [["x"], []]
    assert back.column("attrs").to_pylist() == ['{"k": 1}', None]


# --- time windows ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pandas", "arrow"])
def test_daily_partition_replace_is_idempotent_and_scoped(iom, clickhouse, kind):
    convert = (lambda f: f) if kind == "pandas" else (lambda f: pa.Table.from_pandas(f, preserve_index=False))
    write(iom, ["events"], convert(rows("2024-01-01", 3)), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    write(iom, ["events"], convert(rows("2024-01-02", 2)), partition_key="2024-01-02", pdef=DAILY, metadata=DAY_META)
    for _ in range(2):  # re-running the partition gives identical counts
        meta = write(
            iom, ["events"], convert(rows("2024-01-01", 4, "v2")), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META
        )
        assert meta["dagster/row_count"] == 6
        assert meta["dagster/partition_row_count"] == 4
        assert (meta["partitions_replaced"], meta["partitions_dropped"]) == (1, 0)
        assert tags_by(clickhouse, "events") == {"2024-01-01": (4, ["v2"]), "2024-01-02": (2, ["v1"])}
        # replaced, not appended: the raw (non-FINAL) count agrees
        assert clickhouse.query(f"SELECT count() FROM {DB}.events").result_rows == [(6,)]

    loaded = load(iom, ["events"], pd.DataFrame if kind == "pandas" else pa.Table, partition_key="2024-01-02", pdef=DAILY, metadata=DAY_META)
    tags = loaded["tag"].tolist() if kind == "pandas" else loaded.column("tag").to_pylist()
    assert tags == ["v1", "v1"]
    assert_no_mutations(clickhouse)
    assert no_stage_tables(clickhouse)


def test_empty_output_drops_the_partition(iom, clickhouse):
    write(iom, ["events"], rows("2024-01-01", 3), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    write(iom, ["events"], rows("2024-01-02", 2), partition_key="2024-01-02", pdef=DAILY, metadata=DAY_META)
    meta = write(iom, ["events"], rows("2024-01-01", 0), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    assert (meta["dagster/row_count"], meta["dagster/partition_row_count"]) == (2, 0)
    assert (meta["partitions_replaced"], meta["partitions_dropped"]) == (0, 1)
    assert tags_by(clickhouse, "events") == {"2024-01-02": (2, ["v1"])}
    assert_no_mutations(clickhouse)


def test_backfill_range_in_one_run_replaces_exactly_those_days(iom, clickhouse, clickhouse_dsn):
    initial = pd.concat([rows(f"2024-01-0{d}", 2) for d in (1, 2, 3, 4)], ignore_index=True)
    write(iom, ["ranged"], initial, key_range=PartitionKeyRange("2024-01-01", "2024-01-04"), pdef=DAILY, metadata=DAY_META)
    # day 2 loses its rows in the backfill: its partition must be dropped, not kept
    skip = {"2024-01-02"}

    @asset(key=["ranged"], partitions_def=DAILY, metadata=DAY_META)
    def ranged(context: AssetExecutionContext) -> pd.DataFrame:
        window = context.partition_time_window
        days = [d.date().isoformat() for d in pd.date_range(window.start, window.end, freq="D", inclusive="left")]
        return pd.concat([rows(d, 3, "backfill") for d in days if d not in skip], ignore_index=True)

    result = materialize(
        [ranged],
        resources={"io_manager": ClickHouseIOManager(clickhouse=ClickHouseResource(clickhouse_url=clickhouse_dsn, database=DB))},
        tags={"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-03"},
    )
    assert result.success
    assert tags_by(clickhouse, "ranged") == {
        "2024-01-01": (3, ["backfill"]),
        "2024-01-03": (3, ["backfill"]),
        "2024-01-04": (2, ["v1"]),
    }
    mats = result.asset_materializations_for_node("ranged")
    assert sorted(m.partition for m in mats) == ["2024-01-01", "2024-01-02", "2024-01-03"]
    # each partition's own count on its own materialization
    assert {m.partition: m.metadata["dagster/partition_row_count"].value for m in mats} == {
        "2024-01-01": 3,
        "2024-01-02": 0,
        "2024-01-03": 3,
    }
    assert mats[0].metadata["dagster/row_count"].value == 8
    assert mats[0].metadata["partitions_dropped"].value == 1
    # the fixture's client still works after the run opened and closed its own
    assert clickhouse.query("SELECT 1").result_rows == [(1,)]
    assert_no_mutations(clickhouse)


# --- static, dynamic, multi --------------------------------------------------------------------


def test_static_partitions_with_quoted_key(iom, clickhouse):
    meta = {"partition_expr": "shop", "order_by": ["id"]}
    write(iom, ["shops"], rows("2024-01-01", 2, shop="o'brien"), partition_key="o'brien", pdef=SHOPS, metadata=meta)
    write(iom, ["shops"], rows("2024-01-01", 3, shop="north"), partition_key="north", pdef=SHOPS, metadata=meta)
    out = write(iom, ["shops"], rows("2024-01-01", 1, "v2", shop="o'brien"), partition_key="o'brien", pdef=SHOPS, metadata=meta)
    assert (out["dagster/row_count"], out["dagster/partition_row_count"]) == (4, 1)
    assert tags_by(clickhouse, "shops", "shop") == {"north": (3, ["v1"]), "o'brien": (1, ["v2"])}
    got = load(iom, ["shops"], pa.Table, partition_key="o'brien", pdef=SHOPS, metadata=meta)
    assert got.column("tag").to_pylist() == ["v2"]
    both = load(iom, ["shops"], key_range=PartitionKeyRange("north", "o'brien"), pdef=SHOPS, metadata=meta)
    assert len(both) == 4
    assert_no_mutations(clickhouse)


def test_dynamic_partitions(clickhouse, clickhouse_dsn):
    merchants = DynamicPartitionsDefinition(name="io_ch_merchants")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("io_ch_merchants", ["m-1", "m-2"])
    state = {"tag": "v1"}
    seen: dict[str, list[str]] = {}

    @asset(partitions_def=merchants, metadata={"partition_expr": "shop", "order_by": ["id"]})
    def merchant_orders(context: AssetExecutionContext) -> pd.DataFrame:
        return rows("2024-01-01", 2, state["tag"], shop=context.partition_key)

    @asset(partitions_def=merchants, ins={"merchant_orders": AssetIn()})
    def merchant_summary(context: AssetExecutionContext, merchant_orders: pd.DataFrame) -> None:
        seen[context.partition_key] = sorted(merchant_orders["tag"].tolist())

    resources = {"io_manager": ClickHouseIOManager(clickhouse=ClickHouseResource(clickhouse_url=clickhouse_dsn, database=DB))}
    for key in ("m-1", "m-2"):
        assert materialize([merchant_orders], resources=resources, partition_key=key, instance=instance).success
    state["tag"] = "v2"
    assert materialize([merchant_orders, merchant_summary], resources=resources, partition_key="m-1", instance=instance).success
    assert seen == {"m-1": ["v2", "v2"]}
    assert tags_by(clickhouse, "merchant_orders", "shop") == {"m-1": (2, ["v2"]), "m-2": (2, ["v1"])}


def test_multi_partitions_daily_by_static(clickhouse, clickhouse_dsn):
    multi = MultiPartitionsDefinition({"day": DAILY, "shop": StaticPartitionsDefinition(["north", "south"])})
    state = {"tag": "v1"}
    seen: list[pd.DataFrame] = []
    meta = {"partition_expr": {"day": "day", "shop": "shop"}, "order_by": ["id"]}

    @asset(partitions_def=multi, metadata=meta)
    def sales(context: AssetExecutionContext) -> pd.DataFrame:
        keys = context.partition_key.keys_by_dimension
        return rows(keys["day"], 2, state["tag"], shop=keys["shop"])

    @asset(partitions_def=multi, ins={"sales": AssetIn()})
    def sales_check(sales: pa.Table) -> None:
        seen.append(sales.to_pandas())

    resources = {"io_manager": ClickHouseIOManager(clickhouse=ClickHouseResource(clickhouse_url=clickhouse_dsn, database=DB))}
    for day, shop in [("2024-01-01", "north"), ("2024-01-01", "south"), ("2024-01-02", "north")]:
        assert materialize([sales], resources=resources, partition_key=MultiPartitionKey({"day": day, "shop": shop})).success
    state["tag"] = "v2"
    key = MultiPartitionKey({"day": "2024-01-01", "shop": "north"})
    assert materialize([sales, sales_check], resources=resources, partition_key=key).success
    assert tags_by(clickhouse, "sales", "concat(toString(day), '/', shop)") == {
        "2024-01-01/north": (2, ["v2"]),
        "2024-01-01/south": (2, ["v1"]),
        "2024-01-02/north": (2, ["v1"]),
    }
    assert clickhouse.query(
        f"SELECT partition_key, sorting_key FROM system.tables WHERE database = '{DB}' AND name = 'sales'"
    ).result_rows == [("(toDate(day), shop)", "toDate(day), shop, id")]
    [loaded] = seen
    assert set(loaded["shop"]) == {"north"} and set(loaded["tag"]) == {"v2"} and len(loaded) == 2
    assert_no_mutations(clickhouse)


# --- existing tables and guards ----------------------------------------------------------------


def test_migrated_table_is_used_as_is(clickhouse, settings):
    """warehouse/unified_items lands in the migrated kingtavo.unified_items (default config)."""
    iom = ClickHouseIOManager(clickhouse=ClickHouseResource()).create_io_manager(build_init_resource_context())
    day = dt.date(2024, 1, 1)
    frame = pd.DataFrame(
        {
            "source_type": "csv",
            "source_name": "shop",
            "external_id": ["a", "b"],
            "title": ["A", "B"],
            "metadata": "{}",
            "partition_date": day,
            "updated_at": pd.Timestamp("2024-01-01T10:00", tz="UTC"),
        }
    )
    meta = {"partition_expr": "partition_date"}
    out = write(iom, ["warehouse", "unified_items"], frame, partition_key="2024-01-01", pdef=DAILY, metadata=meta)
    assert out["dagster/table_name"] == f"{settings.clickhouse_database}.unified_items"
    assert out["dagster/row_count"] == 2
    db = settings.clickhouse_database
    assert clickhouse.query(f"SELECT partition_key FROM system.tables WHERE database = '{db}' AND name = 'unified_items'").result_rows == [
        ("partition_date",)
    ]
    assert clickhouse.query(f"SELECT external_id, description FROM {db}.unified_items FINAL ORDER BY 1").result_rows == [
        ("a", None),
        ("b", None),
    ]
    assert_no_mutations(clickhouse, db)


def test_coarser_partition_by_is_refused(iom, clickhouse):
    clickhouse.command(f"CREATE DATABASE IF NOT EXISTS {DB}")
    clickhouse.command(
        f"""CREATE TABLE {DB}.monthly (day Date, shop String, id Int64, value Float64, tag String,
                updated_at DateTime64(6, 'UTC'), _version UInt64)
            ENGINE = ReplacingMergeTree(_version) PARTITION BY toYYYYMM(day) ORDER BY (shop, id)"""
    )
    write(iom, ["monthly"], rows("2024-01-01", 3), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    with pytest.raises(PartitionLayoutError, match=r"partitioned more coarsely \(PARTITION BY toYYYYMM\(day\)\)"):
        write(iom, ["monthly"], rows("2024-01-02", 2), partition_key="2024-01-02", pdef=DAILY, metadata=DAY_META)
    assert tags_by(clickhouse, "monthly") == {"2024-01-01": (3, ["v1"])}
    assert no_stage_tables(clickhouse)


def test_rows_outside_the_slice_are_refused(iom, clickhouse):
    write(iom, ["events"], rows("2024-01-02", 2), partition_key="2024-01-02", pdef=DAILY, metadata=DAY_META)
    strays = pd.concat([rows("2024-01-01", 2), rows("2024-01-02", 1, "stray")], ignore_index=True)
    with pytest.raises(ValueError, match="1 of 3 rows .* lie outside the partition"):
        write(iom, ["events"], strays, partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    assert tags_by(clickhouse, "events") == {"2024-01-02": (2, ["v1"])}
    assert no_stage_tables(clickhouse)


def test_new_table_needs_order_by_and_known_columns(iom, clickhouse):
    with pytest.raises(ValueError, match="order_by"):
        write(iom, ["unordered"], rows("2024-01-01", 1), partition_key="2024-01-01", pdef=DAILY, metadata={"partition_expr": "day"})
    write(iom, ["events"], rows("2024-01-01", 1), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    with pytest.raises(ValueError, match=r"no column\(s\) \['surprise'\]"):
        write(iom, ["events"], rows("2024-01-01", 1).assign(surprise=1), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)


def test_hourly_partitions_get_hourly_ch_partitions(iom, clickhouse):
    from dagster import HourlyPartitionsDefinition

    hourly = HourlyPartitionsDefinition(start_date="2024-01-01-00:00")
    meta = {"partition_expr": "at", "order_by": ["n"]}

    def hour(h: int, n: int) -> pd.DataFrame:
        return pd.DataFrame({"at": [pd.Timestamp(f"2024-01-01T{h:02d}:15", tz="UTC")] * n, "n": range(n)})

    write(iom, ["hits"], hour(1, 2), partition_key="2024-01-01-01:00", pdef=hourly, metadata=meta)
    write(iom, ["hits"], hour(2, 3), partition_key="2024-01-01-02:00", pdef=hourly, metadata=meta)
    write(iom, ["hits"], hour(1, 1), partition_key="2024-01-01-01:00", pdef=hourly, metadata=meta)
    assert clickhouse.query(f"SELECT toHour(at), count() FROM {DB}.hits FINAL GROUP BY 1 ORDER BY 1").result_rows == [(1, 1), (2, 3)]


# --- column types, keys, counts, long ranges ---------------------------------------------------


def column_types(clickhouse, table: str) -> dict[str, str]:
    return dict(clickhouse.query(f"SELECT name, type FROM system.columns WHERE database = '{DB}' AND table = '{table}'").result_rows)


def test_output_that_does_not_fit_the_column_types_is_refused(iom, clickhouse):
    """Text into a Nullable(Int64) column would be stored as NULLs; the old partition must stay."""
    day = {"partition_key": "2024-01-01", "pdef": DAILY, "metadata": DAY_META}
    write(iom, ["fitted"], rows("2024-01-01", 3).assign(qty=pd.array([1, 2, None], dtype="Int64")), **day)
    assert column_types(clickhouse, "fitted")["qty"] == "Nullable(Int64)"

    def stored() -> list[tuple]:
        return clickhouse.query(f"SELECT id, qty, tag FROM {DB}.fitted FINAL ORDER BY id").result_rows

    before = [(0, 1, "v1"), (1, 2, "v1"), (2, None, "v1")]
    assert stored() == before
    text = rows("2024-01-01", 3, "v2").assign(qty=["1", "2", "many"], value=["a", "b", "c"])
    misfits = (
        r"\['value', 'qty'\].*value: Nullable\(Float64\) in ClickHouse, (large_)?string in the output; "
        r"qty: Nullable\(Int64\) in ClickHouse, (large_)?string in the output"
    )
    with pytest.raises(ColumnTypeError, match=misfits):
        write(iom, ["fitted"], text, **day)
    assert stored() == before
    with pytest.raises(ColumnTypeError, match=r"qty: Nullable\(Int64\) in ClickHouse, double in the output.*fractional"):
        write(iom, ["fitted"], rows("2024-01-01", 2, "v2").assign(qty=[1.5, None]), **day)
    assert stored() == before
    # whole floats (pandas' integers with gaps) fit
    write(iom, ["fitted"], rows("2024-01-01", 2, "v2").assign(qty=[7.0, None]), **day)
    assert stored() == [(0, 7, "v2"), (1, None, "v2")]
    assert no_stage_tables(clickhouse)


def test_generated_keys_are_not_nullable_and_a_null_key_is_refused(iom, clickhouse):
    fields = [("day", pa.date32()), ("shop", pa.string()), ("id", pa.int64()), ("tag", pa.string())]
    schema = pa.schema([pa.field(name, t, nullable=True) for name, t in fields])

    def table(ids: list, tag: str) -> pa.Table:
        n = len(ids)
        return pa.table([[dt.date(2024, 1, 1)] * n, ["north"] * n, ids, [tag] * n], schema=schema)

    day = {"partition_key": "2024-01-01", "pdef": DAILY, "metadata": DAY_META}
    write(iom, ["keyed"], table([1, 2], "v1"), **day)
    types = column_types(clickhouse, "keyed")
    assert (types["day"], types["shop"], types["id"], types["tag"]) == ("Date32", "String", "Int64", "Nullable(String)")
    with pytest.raises(ValueError, match=r"key column\(s\) \['id'\] .* hold NULLs"):
        write(iom, ["keyed"], table([3, None], "v2"), **day)
    assert tags_by(clickhouse, "keyed") == {"2024-01-01": (2, ["v1"])}
    assert no_stage_tables(clickhouse)


def test_row_count_is_the_stored_rows_read_from_parts(clickhouse, clickhouse_dsn):
    """dagster/row_count comes from system.parts, not a count over the table with FINAL: rows
    that FINAL would collapse (not merged away yet) are still counted."""
    iom = ClickHouseIOManager(clickhouse=ClickHouseResource(clickhouse_url=clickhouse_dsn, database=DB), batch_rows=2).create_io_manager(
        build_init_resource_context()
    )
    day = {"partition_key": "2024-01-01", "pdef": DAILY, "metadata": DAY_META}
    write(iom, ["parts"], rows("2024-01-01", 1), **day)
    clickhouse.command(f"SYSTEM STOP MERGES {DB}.parts")  # keep the duplicate below in its own part
    twice = pd.concat([rows("2024-01-01", 2), rows("2024-01-01", 1, "dup")], ignore_index=True)  # id 0 twice
    meta = write(iom, ["parts"], twice, **day)  # two inserts into the stage: [0, 1] and [0]
    assert clickhouse.query(f"SELECT count() FROM {DB}.parts FINAL").result_rows == [(2,)]
    assert clickhouse.query(f"SELECT count() FROM {DB}.parts").result_rows == [(3,)]
    assert (meta["dagster/row_count"], meta["dagster/partition_row_count"], meta["rows_written"]) == (3, 3, 3)


LONG = DailyPartitionsDefinition(start_date="2023-01-01", end_date="2025-01-01")


def test_a_range_over_400_daily_partitions_is_one_write(iom, clickhouse):
    """More partitions than ClickHouse's 100 per INSERT block, in one single-run backfill slice."""
    days = [(dt.date(2023, 1, 1) + dt.timedelta(days=i)).isoformat() for i in range(400)]
    key_range = PartitionKeyRange(days[0], days[-1])
    for tag in ("v1", "v2"):  # the second run replaces all 400
        frame = pd.concat([rows(d, 3, tag) for d in days], ignore_index=True)
        meta = write(iom, ["long"], frame, key_range=key_range, pdef=LONG, metadata=DAY_META)
        assert meta["partitions_replaced"] == 400
        assert meta["partition_row_counts"] == dict.fromkeys(days, 3)
    per_day = clickhouse.query(
        f"SELECT count(), min(c), max(c), groupUniqArray(t) "
        f"FROM (SELECT day, count() AS c, any(tag) AS t FROM {DB}.long GROUP BY day)"
    ).result_rows
    assert per_day == [(400, 3, 3, ["v2"])]
    assert clickhouse.query(f"SELECT uniqExact(_partition_id) FROM {DB}.long").result_rows == [(400,)]
    assert no_stage_tables(clickhouse)


@pytest.mark.parametrize("expr", ["toDate(event_time)", "toYYYYMMDD(event_time)"])
def test_expression_partition_expr_makes_its_column_a_key(iom, clickhouse, expr):
    """The column a partition expression uses is part of the partition key: not Nullable, no NULLs."""
    meta = {"partition_expr": expr, "order_by": ["id"]}
    at = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
    schema = pa.schema([pa.field("event_time", pa.timestamp("us", "UTC")), pa.field("id", pa.int64()), pa.field("note", pa.string())])
    day = {"partition_key": "2024-01-01", "pdef": DAILY, "metadata": meta}
    write(iom, ["by_expr"], pa.table([[at, at], [1, 2], ["a", None]], schema=schema), **day)
    types = column_types(clickhouse, "by_expr")
    assert (types["event_time"], types["id"], types["note"]) == ("DateTime64(6, 'UTC')", "Int64", "Nullable(String)")
    assert clickhouse.query(
        f"SELECT partition_key FROM system.tables WHERE database = '{DB}' AND name = 'by_expr'"
    ).result_rows == [(expr,)]
    with pytest.raises(ValueError, match=r"key column\(s\) \['event_time'\]"):
        write(iom, ["by_expr"], pa.table([[at, None], [1, 2], ["b", "b"]], schema=schema), **day)
    assert clickhouse.query(f"SELECT id, note FROM {DB}.by_expr FINAL ORDER BY id").result_rows == [(1, "a"), (2, None)]


def test_tables_merge_few_parts_at_a_time(iom, clickhouse, settings):
    """Migrated tables and the ones the IO manager creates cap a merge at 10 parts: chDB merges in
    whichever process has the data open, and wide merges held hundreds of MiB there."""
    schema = pa.schema([pa.field("day", pa.date32()), pa.field("id", pa.int64())])
    write(iom, ["narrow_merges"], pa.table([[dt.date(2024, 1, 1)], [1]], schema=schema),
          partition_key="2024-01-01", pdef=DAILY, metadata={"partition_expr": "day", "order_by": ["id"]})
    found = dict(clickhouse.query(
        "SELECT name, engine_full FROM system.tables WHERE (database = {db:String} AND name = 'narrow_merges') "
        "OR (database = {home:String} AND name IN ('unified_items', 'orders_fact', 'customers_dim', 'products_dim'))",
        parameters={"db": DB, "home": settings.clickhouse_database}).result_rows)
    assert set(found) == {"narrow_merges", "unified_items", "orders_fact", "customers_dim", "products_dim"}
    assert all("max_parts_to_merge_at_once = 10" in engine for engine in found.values()), found
