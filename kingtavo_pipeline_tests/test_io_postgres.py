"""PostgresIOManager against the real test PostgreSQL (embedded, or KINGTAVO_TEST_POSTGRES_URL)."""


import datetime as dt
import json
import threading
from decimal import Decimal

import pandas as pd
import pyarrow as pa
import pytest
from dagster import (
    AssetExecutionContext,
    AssetIn,
    DagsterInstance,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    PartitionKeyRange,
    StaticPartitionsDefinition,
    asset,
    build_init_resource_context,
    materialize,
)
from dagster._core.storage.db_io_manager import DbTypeHandler

from kingtavo_pipeline_tests.io_helpers import DAILY, SHOPS, Worker, load, rows, wait_until, write
from kingtavo_pipeline.io_managers import PostgresIOManager, PostgresPandasTypeHandler
from kingtavo_pipeline.resources import PostgresResource
from kingtavo_pipeline.storage.errors import DatabaseError

SCHEMA = "io_test"
DAY_META = {"partition_expr": "day"}
UTC = dt.timezone.utc


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def iom(store, postgres_url):
    return PostgresIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema=SCHEMA).create_io_manager(build_init_resource_context())


def table_rows(store, table: str, order: str = "day, shop, id") -> list[tuple]:
    return store.fetch_all(f"SELECT day, shop, id, tag FROM {SCHEMA}.{table} ORDER BY {order}")


def tags_by_day(store, table: str) -> dict[str, tuple[int, set[str]]]:
    out: dict[str, tuple[int, set[str]]] = {}
    for day, count, tags in store.fetch_all(
        f"SELECT day::text, count(*), array_agg(DISTINCT tag) FROM {SCHEMA}.{table} GROUP BY day ORDER BY day"
    ):
        out[day] = (count, set(tags))
    return out


# --- unpartitioned -----------------------------------------------------------------------------


def test_unpartitioned_round_trip_pandas_and_arrow(iom, store):
    meta = write(iom, ["plain"], rows("2024-01-01", 3))
    assert meta["dagster/row_count"] == 3
    assert meta["dagster/table_name"] == f"{SCHEMA}.plain"
    assert "dagster/partition_row_count" not in meta
    assert [c.name for c in meta["dagster/column_schema"].columns] == ["day", "shop", "id", "value", "tag", "updated_at"]

    # a second write replaces every row (DELETE, not append), here from Arrow
    arrow = pa.Table.from_pandas(rows("2024-01-05", 2, "v2"), preserve_index=False)
    meta = write(iom, ["plain"], arrow)
    assert meta["dagster/row_count"] == 2
    assert table_rows(store, "plain") == [(dt.date(2024, 1, 5), "north", 0, "v2"), (dt.date(2024, 1, 5), "north", 1, "v2")]

    frame = load(iom, ["plain"], pd.DataFrame).sort_values("id").reset_index(drop=True)
    assert list(frame.columns) == ["day", "shop", "id", "value", "tag", "updated_at"]
    assert frame["id"].tolist() == [0, 1]
    assert str(frame["updated_at"].dtype) == "datetime64[us, UTC]"
    assert frame["updated_at"].iloc[1] == pd.Timestamp("2024-01-05T01:00Z")

    table = load(iom, ["plain"], pa.Table, columns=["id", "tag"])
    assert isinstance(table, pa.Table)
    assert table.column_names == ["id", "tag"]
    assert sorted(table.column("id").to_pylist()) == [0, 1]


def test_arrow_types_round_trip(iom, store):
    ts = dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    source = pa.table(
        {
            "i": pa.array([1, None], pa.int32()),
            "f": pa.array([1.25, None], pa.float64()),
            "dec": pa.array([Decimal("12.3400"), None], pa.decimal128(18, 4)),
            "b": pa.array([True, None]),
            "s": pa.array(['he said "hi", then\nleft', ""]),
            "tz": pa.array([ts, None], pa.timestamp("us", "UTC")),
            "naive": pa.array([dt.datetime(2024, 3, 1, 1, 2, 3), None], pa.timestamp("ns")),
            "d": pa.array([dt.date(2024, 3, 1), None], pa.date32()),
            "bin": pa.array([b"\x00\xffab", None], pa.binary()),
            "tags": pa.array([["a", "b"], None], pa.list_(pa.string())),
            "obj": pa.array([{"k": 1}, None], pa.struct([("k", pa.int64())])),
        }
    )
    write(iom, ["typed"], source)
    types = dict(
        store.fetch_all(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = 'typed'",
            (SCHEMA,),
        )
    )
    assert types == {
        "i": "bigint",
        "f": "double precision",
        "dec": "numeric",
        "b": "boolean",
        "s": "text",
        "tz": "timestamp with time zone",
        "naive": "timestamp without time zone",
        "d": "date",
        "bin": "bytea",
        "tags": "jsonb",
        "obj": "jsonb",
    }
    back = load(iom, ["typed"], pa.Table)
    back = back.sort_by([("i", "ascending")])
    assert back.column("i").to_pylist() == [1, None]
    assert back.column("f").to_pylist() == [1.25, None]
    assert back.schema.field("dec").type == pa.decimal128(18, 4)
    assert back.column("dec").to_pylist() == [Decimal("12.3400"), None]
    assert back.column("b").to_pylist() == [True, None]
    assert back.column("s").to_pylist() == ['he said "hi", then\nleft', ""]  # empty string is not NULL
    assert back.column("tz").to_pylist() == [ts, None]
    assert back.schema.field("tz").type == pa.timestamp("us", "UTC")
    assert back.column("naive").to_pylist() == [dt.datetime(2024, 3, 1, 1, 2, 3), None]
    assert back.column("d").to_pylist() == [dt.date(2024, 3, 1), None]
    assert back.column("bin").to_pylist() == [b"\x00\xffab", None]
    assert json.loads(back.column("tags")[0].as_py()) == ["a", "b"]
    assert json.loads(back.column("obj")[0].as_py()) == {"k": 1}


# --- time windows ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pandas", "arrow"])
def test_daily_partition_replace_is_idempotent_and_scoped(iom, store, kind):
    convert = (lambda f: f) if kind == "pandas" else (lambda f: pa.Table.from_pandas(f, preserve_index=False))
    write(iom, ["events"], convert(rows("2024-01-01", 3)), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    write(iom, ["events"], convert(rows("2024-01-02", 2)), partition_key="2024-01-02", pdef=DAILY, metadata=DAY_META)
    for _ in range(2):  # the second identical run changes nothing
        meta = write(
            iom, ["events"], convert(rows("2024-01-01", 4, "v2")), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META
        )
        # the partition's own count; no count of the whole table on a partitioned write
        assert meta["dagster/partition_row_count"] == 4
        assert "dagster/row_count" not in meta
        assert tags_by_day(store, "events") == {"2024-01-01": (4, {"v2"}), "2024-01-02": (2, {"v1"})}

    loaded = load(iom, ["events"], pd.DataFrame if kind == "pandas" else pa.Table, partition_key="2024-01-02", pdef=DAILY, metadata=DAY_META)
    tags = loaded["tag"].tolist() if kind == "pandas" else loaded.column("tag").to_pylist()
    assert tags == ["v1", "v1"]
    # an index on the partition column is created with the table
    assert store.fetch_value(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'events'", (SCHEMA,)
    ).endswith("(day)")


def test_timestamp_partition_column_in_utc(iom, store):
    hourly_rows = pd.DataFrame(
        {
            "at": pd.to_datetime(["2024-01-01T00:00:00Z", "2024-01-01T23:59:59Z", "2024-01-02T00:00:00Z"]),
            "n": [1, 2, 3],
        }
    )
    write(iom, ["stamped"], hourly_rows.iloc[:2], partition_key="2024-01-01", pdef=DAILY, metadata={"partition_expr": "at"})
    write(iom, ["stamped"], hourly_rows.iloc[2:], partition_key="2024-01-02", pdef=DAILY, metadata={"partition_expr": "at"})
    day1 = load(iom, ["stamped"], partition_key="2024-01-01", pdef=DAILY, metadata={"partition_expr": "at"})
    assert sorted(day1["n"].tolist()) == [1, 2]


def test_backfill_range_in_one_run_replaces_exactly_those_days(iom, store, postgres_url):
    initial = pd.concat([rows(f"2024-01-0{d}", 2) for d in (1, 2, 3, 4)], ignore_index=True)
    write(iom, ["ranged"], initial, key_range=PartitionKeyRange("2024-01-01", "2024-01-04"), pdef=DAILY, metadata=DAY_META)

    @asset(key=["ranged"], partitions_def=DAILY, metadata=DAY_META)
    def ranged(context: AssetExecutionContext) -> pd.DataFrame:
        window = context.partition_time_window
        days = pd.date_range(window.start, window.end, freq="D", inclusive="left")
        return pd.concat([rows(d.date().isoformat(), 3, "backfill") for d in days], ignore_index=True)

    result = materialize(
        [ranged],
        resources={"io_manager": PostgresIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema=SCHEMA)},
        tags={"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-03"},
    )
    assert result.success
    assert tags_by_day(store, "ranged") == {
        "2024-01-01": (3, {"backfill"}),
        "2024-01-02": (3, {"backfill"}),
        "2024-01-03": (3, {"backfill"}),
        "2024-01-04": (2, {"v1"}),
    }
    mats = result.asset_materializations_for_node("ranged")
    assert sorted(m.partition for m in mats) == ["2024-01-01", "2024-01-02", "2024-01-03"]
    assert {m.partition: m.metadata["dagster/partition_row_count"].value for m in mats} == {
        "2024-01-01": 3,
        "2024-01-02": 3,
        "2024-01-03": 3,
    }
    assert all("dagster/row_count" not in m.metadata for m in mats)


def test_row_count_is_reported_only_where_it_costs_nothing(iom, store):
    """No count(*) over the table on a partitioned write: each partition's own count, and the
    planner's estimate once the table has been analyzed; an unpartitioned replace knows its total."""
    assert write(iom, ["whole"], rows("2024-01-01", 3))["dagster/row_count"] == 3
    day = {"pdef": DAILY, "metadata": DAY_META}
    first = write(iom, ["days"], rows("2024-01-01", 3), partition_key="2024-01-01", **day)
    assert "dagster/row_count" not in first and "row_count_estimate" not in first  # never analyzed
    with store.transaction() as conn:
        conn.execute(f"ANALYZE {SCHEMA}.days")
    second = write(iom, ["days"], rows("2024-01-02", 2), partition_key="2024-01-02", **day)
    assert "dagster/row_count" not in second
    assert (second["dagster/partition_row_count"], second["row_count_estimate"]) == (2, 3)


# --- static, dynamic, multi --------------------------------------------------------------------


def test_static_partitions_with_quoted_key(iom, store):
    meta = {"partition_expr": "shop"}
    write(iom, ["shops"], rows("2024-01-01", 2, shop="o'brien"), partition_key="o'brien", pdef=SHOPS, metadata=meta)
    write(iom, ["shops"], rows("2024-01-01", 3, shop="north"), partition_key="north", pdef=SHOPS, metadata=meta)
    out = write(iom, ["shops"], rows("2024-01-01", 1, "v2", shop="o'brien"), partition_key="o'brien", pdef=SHOPS, metadata=meta)
    assert out["dagster/partition_row_count"] == 1
    got = load(iom, ["shops"], pa.Table, partition_key="o'brien", pdef=SHOPS, metadata=meta)
    assert got.column("tag").to_pylist() == ["v2"]
    assert store.fetch_value(f"SELECT count(*) FROM {SCHEMA}.shops WHERE shop = 'north' AND tag = 'v1'") == 3
    # a range of static keys loads as an IN list
    both = load(iom, ["shops"], partition_key=None, key_range=PartitionKeyRange("north", "o'brien"), pdef=SHOPS, metadata=meta)
    assert len(both) == 4


def test_dynamic_partitions(store, postgres_url):
    merchants = DynamicPartitionsDefinition(name="io_pg_merchants")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("io_pg_merchants", ["m-1", "m-2"])
    state = {"tag": "v1"}
    seen: dict[str, list[str]] = {}

    @asset(partitions_def=merchants, metadata={"partition_expr": "shop"})
    def merchant_orders(context: AssetExecutionContext) -> pd.DataFrame:
        return rows("2024-01-01", 2, state["tag"], shop=context.partition_key)

    @asset(partitions_def=merchants, ins={"merchant_orders": AssetIn()})
    def merchant_summary(context: AssetExecutionContext, merchant_orders: pd.DataFrame) -> None:
        seen[context.partition_key] = sorted(merchant_orders["tag"].tolist())

    resources = {"io_manager": PostgresIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema=SCHEMA)}
    for key in ("m-1", "m-2"):
        assert materialize([merchant_orders], resources=resources, partition_key=key, instance=instance).success
    state["tag"] = "v2"
    assert materialize([merchant_orders, merchant_summary], resources=resources, partition_key="m-1", instance=instance).success
    assert seen == {"m-1": ["v2", "v2"]}
    assert store.fetch_all(f"SELECT shop, tag, count(*) FROM {SCHEMA}.merchant_orders GROUP BY 1, 2 ORDER BY 1") == [
        ("m-1", "v2", 2),
        ("m-2", "v1", 2),
    ]


def test_multi_partitions_daily_by_static(store, postgres_url):
    multi = MultiPartitionsDefinition({"day": DAILY, "shop": StaticPartitionsDefinition(["north", "south"])})
    state = {"tag": "v1"}
    seen: list[pd.DataFrame] = []
    meta = {"partition_expr": {"day": "day", "shop": "shop"}}

    @asset(partitions_def=multi, metadata=meta)
    def sales(context: AssetExecutionContext) -> pd.DataFrame:
        keys = context.partition_key.keys_by_dimension
        return rows(keys["day"], 2, state["tag"], shop=keys["shop"])

    @asset(partitions_def=multi, ins={"sales": AssetIn()})
    def sales_check(sales: pa.Table) -> None:
        seen.append(sales.to_pandas())

    resources = {"io_manager": PostgresIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema=SCHEMA)}
    for day, shop in [("2024-01-01", "north"), ("2024-01-01", "south"), ("2024-01-02", "north")]:
        key = MultiPartitionKey({"day": day, "shop": shop})
        assert materialize([sales], resources=resources, partition_key=key).success
    state["tag"] = "v2"
    key = MultiPartitionKey({"day": "2024-01-01", "shop": "north"})
    assert materialize([sales, sales_check], resources=resources, partition_key=key).success
    assert store.fetch_all(f"SELECT day::text, shop, tag, count(*) FROM {SCHEMA}.sales GROUP BY 1, 2, 3 ORDER BY 1, 2") == [
        ("2024-01-01", "north", "v2", 2),
        ("2024-01-01", "south", "v1", 2),
        ("2024-01-02", "north", "v1", 2),
    ]
    [loaded] = seen
    assert set(loaded["shop"]) == {"north"} and set(loaded["tag"]) == {"v2"} and len(loaded) == 2


# --- atomicity and guards ----------------------------------------------------------------------


def test_failed_copy_leaves_the_old_partition(iom, store):
    write(iom, ["atomic"], rows("2024-01-01", 3), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    bad = rows("2024-01-01", 5, "v2")
    bad["id"] = ["1", "2", "3", "4", "not a number"]  # COPY into the bigint column fails after the DELETE
    with pytest.raises(DatabaseError, match=r'invalid input syntax for type bigint: "…" \(COPY atomic, line \d+, column id\)') as err:
        write(iom, ["atomic"], bad, partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    assert "not a number" not in str(err.value)  # the row's value stays out of the message
    assert tags_by_day(store, "atomic") == {"2024-01-01": (3, {"v1"})}


def test_failure_after_the_insert_rolls_back_delete_and_insert(store, postgres_url):
    class ExplodingHandler(PostgresPandasTypeHandler):
        def handle_output(self, context, table_slice, obj, connection):
            super().handle_output(context, table_slice, obj, connection)
            raise RuntimeError("boom after COPY")

    class ExplodingIOManager(PostgresIOManager):
        @staticmethod
        def type_handlers() -> list[DbTypeHandler]:
            return [ExplodingHandler()]

    good = PostgresIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema=SCHEMA).create_io_manager(build_init_resource_context())
    write(good, ["atomic2"], rows("2024-01-01", 3), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    bad = ExplodingIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema=SCHEMA).create_io_manager(build_init_resource_context())
    with pytest.raises(RuntimeError, match="boom after COPY"):
        write(bad, ["atomic2"], rows("2024-01-01", 7, "v2"), partition_key="2024-01-01", pdef=DAILY, metadata=DAY_META)
    assert tags_by_day(store, "atomic2") == {"2024-01-01": (3, {"v1"})}


def test_concurrent_replaces_of_one_partition_do_not_duplicate(store, postgres_url):
    """A second run replacing the same partition while the first is mid-transaction waits for it."""
    copied, release = threading.Event(), threading.Event()

    class HeldHandler(PostgresPandasTypeHandler):
        def handle_output(self, context, table_slice, obj, connection):
            metadata = super().handle_output(context, table_slice, obj, connection)
            copied.set()  # COPY done, transaction still open
            if not release.wait(timeout=60):
                raise TimeoutError("the test never released the first writer")
            return metadata

    class HeldIOManager(PostgresIOManager):
        @staticmethod
        def type_handlers() -> list[DbTypeHandler]:
            return [HeldHandler()]

    fast = PostgresIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema=SCHEMA).create_io_manager(build_init_resource_context())
    held = HeldIOManager(postgres=PostgresResource(postgres_url=postgres_url), schema=SCHEMA).create_io_manager(build_init_resource_context())
    day = {"partition_key": "2024-01-01", "pdef": DAILY, "metadata": DAY_META}
    write(fast, ["raced"], rows("2024-01-01", 2), **day)

    first = Worker(write, held, ["raced"], rows("2024-01-01", 3, "held"), **day)
    first.start()
    try:
        assert copied.wait(timeout=60), "the first writer never finished its COPY"
        second = Worker(write, fast, ["raced"], rows("2024-01-01", 4, "fast"), **day)
        second.start()
        # the second writer must queue on the first's lock, not run its DELETE beside it
        wait_until(lambda: advisory_lock_waiters(store) == 1, "the second writer to wait on the first's lock")
        assert second.is_alive()
        assert tags_by_day(store, "raced") == {"2024-01-01": (2, {"v1"})}  # nothing committed yet
    finally:
        release.set()
    first.join_and_raise()
    second.join_and_raise()
    assert tags_by_day(store, "raced") == {"2024-01-01": (4, {"fast"})}


def advisory_lock_waiters(store) -> int:
    return store.fetch_value(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
    )


def test_columns_the_table_lacks_are_an_error(iom, store):
    write(iom, ["narrow"], rows("2024-01-01", 1))
    wide = rows("2024-01-01", 1).assign(extra_a=1, extra_b="x")
    with pytest.raises(ValueError, match=r"no column\(s\) \['extra_a', 'extra_b'\]"):
        write(iom, ["narrow"], wide)
    assert store.fetch_value(f"SELECT count(*) FROM {SCHEMA}.narrow") == 1


def test_rows_outside_the_partition_are_refused(iom, store):
    with pytest.raises(ValueError, match="1 of 3 rows .* lie outside the partition"):
        write(
            iom,
            ["strays"],
            pd.concat([rows("2024-01-01", 2), rows("2024-01-02", 1)]),
            partition_key="2024-01-01",
            pdef=DAILY,
            metadata=DAY_META,
        )


def test_default_config_uses_the_configured_store(store):
    """No URL: the store from Settings (the test env points KINGTAVO_POSTGRES_URL at the test database)."""
    manager = PostgresIOManager(postgres=PostgresResource())
    assert manager.schema_ == "public"
    iom = manager.create_io_manager(build_init_resource_context())
    try:
        meta = write(iom, ["io_default_probe"], rows("2024-01-01", 2), metadata={"schema": SCHEMA})
        assert meta["dagster/table_name"] == f"{SCHEMA}.io_default_probe"
        assert store.fetch_value(f"SELECT count(*) FROM {SCHEMA}.io_default_probe") == 2
    finally:
        with store.transaction() as conn:
            conn.execute("DROP TABLE IF EXISTS public.io_default_probe")


# --- upsert write mode -------------------------------------------------------------------------


def unified(external_ids: list[str], title: str, updated_at: str, day: str = "2024-01-01") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_type": "csv",
            "source_name": "shop",
            "external_id": external_ids,
            "title": title,
            "metadata": json.dumps({"title": title}),
            "partition_date": dt.date.fromisoformat(day),
            "updated_at": pd.Timestamp(updated_at, tz="UTC"),
        }
    )


UPSERT_META = {
    "partition_expr": "partition_date",
    "write_mode": "upsert",
    "upsert_keys": ["source_type", "source_name", "external_id"],
}


def test_upsert_mode_never_lets_an_older_version_win(store, postgres_url):
    iom = PostgresIOManager(postgres=PostgresResource(postgres_url=postgres_url)).create_io_manager(build_init_resource_context())
    key = ["core", "unified_items"]  # the migrated core table in public
    first = write(iom, key, unified(["a", "b"], "first", "2024-01-01T10:00"), partition_key="2024-01-01", pdef=DAILY, metadata=UPSERT_META)
    assert (first["rows_inserted"], first["rows_updated"], first["rows_unchanged"]) == (2, 0, 0)
    assert first["dagster/table_name"] == "public.unified_items"

    older = write(iom, key, unified(["a"], "older", "2024-01-01T09:00"), partition_key="2024-01-01", pdef=DAILY, metadata=UPSERT_META)
    assert (older["rows_inserted"], older["rows_updated"], older["rows_unchanged"]) == (0, 0, 1)

    newer = pa.Table.from_pandas(unified(["a", "c"], "newer", "2024-01-01T11:00"), preserve_index=False)
    meta = write(iom, key, newer, partition_key="2024-01-01", pdef=DAILY, metadata=UPSERT_META)
    assert (meta["rows_inserted"], meta["rows_updated"], meta["rows_unchanged"]) == (1, 1, 0)
    assert meta["dagster/partition_row_count"] == 3  # the partition's rows after the upsert, not the rows sent
    # no slice delete in upsert mode: "b" is still there
    assert store.fetch_all("SELECT external_id, title FROM unified_items ORDER BY external_id") == [
        ("a", "newer"),
        ("b", "first"),
        ("c", "newer"),
    ]


def test_upsert_mode_needs_keys_and_creates_a_missing_table_with_them(iom, store):
    with pytest.raises(ValueError, match="upsert_keys"):
        write(iom, ["keyless"], rows("2024-01-01", 1), metadata={"write_mode": "upsert"})
    meta = {"write_mode": "upsert", "upsert_keys": ["shop", "id"]}
    write(iom, ["keyed"], rows("2024-01-01", 2), metadata=meta)
    out = write(iom, ["keyed"], rows("2024-01-01", 3, "v2").assign(updated_at=pd.Timestamp("2030-01-01", tz="UTC")), metadata=meta)
    assert (out["rows_inserted"], out["rows_updated"]) == (1, 2)
    assert store.fetch_all(f"SELECT id, tag FROM {SCHEMA}.keyed ORDER BY id") == [(0, "v2"), (1, "v2"), (2, "v2")]
