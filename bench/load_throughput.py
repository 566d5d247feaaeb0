"""Load throughput of the IO managers against the most direct raw load of the same rows.

    python bench/load_throughput.py [--rows 1000000] [--batch ROWS] [--days 5] [--repeat 3]

Generates N synthetic ``unified_items`` rows once as an Arrow table, then, in this process and
against the same stores (``KINGTAVO_POSTGRES_URL`` / ``KINGTAVO_CLICKHOUSE_URL`` when set, else
the embedded PostgreSQL and chDB under a temporary ``KINGTAVO_HOME``), measures wall time and
rows/s of:

1. the PostgreSQL IO manager replacing a daily partition range that holds all rows
   (``handle_output`` of the real IO manager: DELETE of the slice + COPY, one transaction);
2. a raw psycopg ``COPY ... FROM STDIN (FORMAT CSV)`` of pyarrow CSV into an identical empty table,
   and a raw ``COPY ... (FORMAT BINARY)`` of the same rows encoded by pgpq straight from Arrow (the
   IO manager and the upsert write binary when every column's type allows it);
3. the core upsert (``storage.upsert.upsert``) into a ``unified_items``-shaped table: first load
   (all inserts), then the same rows with a newer ``updated_at`` (all updates); the same two
   passes again through the PostgreSQL IO manager's ``write_mode: "upsert"``;
4. the ClickHouse IO manager writing the same range (stage table + REPLACE PARTITION);
5. a raw ``client.insert_arrow`` of the same Arrow table into an identical empty table.

Every measurement runs ``--repeat`` times, interleaved, from the same starting state (tables
truncated or vacuumed between runs, outside the timer); the best run counts. Targets: PG IO
manager >= 0.8x raw COPY, upsert >= 0.5x raw COPY, CH IO manager >= 0.8x raw insert.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMA = "bench_io"
START = date(2024, 1, 1)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(n: int, days: int, seed: int = 7) -> pa.Table:
    """N unified_items rows spread over ``days`` days (vectorised; no Python loop per row)."""
    rng = np.random.default_rng(seed)
    idx = pa.array(np.arange(n, dtype=np.int64))
    ids = pc.cast(idx, pa.string())
    pick = lambda values, k: pa.array(np.array(values, dtype=object)[np.arange(n) % k])  # noqa: E731
    start_us = int((np.datetime64(START.isoformat()) - np.datetime64("1970-01-01")) / np.timedelta64(1, "us"))
    day_of_row = np.arange(n) % days
    published = start_us + day_of_row * 86_400_000_000 + rng.integers(0, 86_400_000_000, n)
    missing = rng.random(n) < 0.1
    return pa.table(
        {
            "source_type": pick(["csv", "rest_api", "rss"], 3),
            "source_name": pick([f"source_{i}" for i in range(7)], 7),
            "external_id": pc.binary_join_element_wise("item-", ids, ""),
            "title": pc.binary_join_element_wise("Item number ", ids, ""),
            "description": pc.if_else(
                pa.array(missing), pa.nulls(n, pa.string()), pc.binary_join_element_wise("A longer description, with a comma, of item ", ids, "")
            ),
            "category": pick(["shirts", "mugs", None, "posters", "hoodies"], 5),
            "url": pc.binary_join_element_wise("https://shop.example.com/items/", ids, ""),
            "amount": pa.array(rng.integers(0, 100_000_000, n) / 10_000.0).cast(pa.decimal128(18, 4)),
            "quantity": pa.array(rng.integers(1, 500, n)),
            "metadata": pc.binary_join_element_wise('{"rank": ', pc.cast(pa.array(np.arange(n) % 100), pa.string()), ', "tags": ["a", "b"]}', ""),
            "published_at": pa.array(published, pa.timestamp("us", "UTC")),
            "partition_date": pa.array(day_of_row.astype(np.int32) + int((START - date(1970, 1, 1)).days), pa.int32()).cast(pa.date32()),
            "raw_data_id": pc.add(idx, 1),
            "updated_at": pa.array(published + 3_600_000_000, pa.timestamp("us", "UTC")),
        }
    )


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    warnings.filterwarnings("ignore")  # Dagster's beta/preview notices would drown the table
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=None, help="rows per COPY batch (IO manager and baseline alike)")
    parser.add_argument("--days", type=int, default=5, help="days the rows spread over")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="kingtavo-bench-"))
    os.environ["KINGTAVO_HOME"] = str(home)
    try:
        run(args)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(args: argparse.Namespace) -> None:
    import psycopg
    from dagster import DagsterInstance, DailyPartitionsDefinition, PartitionKeyRange, build_output_context
    from psycopg import sql

    import kingtavo_pipeline.storage.postgres as pgstore
    from kingtavo_pipeline.io_managers import ClickHouseIOManager, PostgresIOManager
    from kingtavo_pipeline.resources import ClickHouseResource, PostgresResource
    from kingtavo_pipeline.settings import Settings
    from kingtavo_pipeline.storage.clickhouse import connect_clickhouse
    from kingtavo_pipeline.storage.postgres import get_store
    from kingtavo_pipeline.storage.upsert import upsert

    if args.batch:
        pgstore.COPY_BATCH_ROWS = args.batch
    batch = pgstore.COPY_BATCH_ROWS
    settings = Settings()
    print(f"generating {args.rows:,} rows over {args.days} days ...", flush=True)
    t = time.perf_counter()
    table = generate(args.rows, args.days)
    print(f"  {time.perf_counter() - t:.2f}s, {table.nbytes / 2**20:.0f} MiB in Arrow, peak RSS {peak_rss_mib():.0f} MiB")
    newer = table.set_column(
        table.column_names.index("updated_at"), "updated_at", pc.add(table.column("updated_at"), pa.scalar(3_600_000_000, pa.duration("us")))
    )

    store = get_store(settings)
    url = store.url
    print(f"PostgreSQL: {'embedded' if settings.embedded_postgres else 'KINGTAVO_POSTGRES_URL'}; "
          f"ClickHouse: {'chDB' if settings.embedded_clickhouse else 'KINGTAVO_CLICKHOUSE_URL'}; COPY batch {batch:,} rows")

    daily = DailyPartitionsDefinition(start_date=START.isoformat())
    key_range = PartitionKeyRange(START.isoformat(), (START + timedelta(days=args.days - 1)).isoformat())
    instance = DagsterInstance.ephemeral()

    def context(metadata: dict, key: str = "bench_items"):
        return build_output_context(
            asset_key=[key],
            asset_partitions_def=daily,
            asset_partition_key_range=key_range,
            definition_metadata=metadata,
            instance=instance,
        )

    pg_iom = PostgresIOManager(postgres=PostgresResource(postgres_url=url), schema=SCHEMA).create_io_manager(None)
    pg_meta = {"partition_expr": "partition_date"}
    ch_db = f"{SCHEMA}_{os.getpid()}"
    ch_iom = ClickHouseIOManager(clickhouse=ClickHouseResource(database=ch_db)).create_io_manager(None)
    ch_meta = {"partition_expr": "partition_date", "order_by": ["source_type", "source_name", "external_id"]}

    def pg(statement, autocommit: bool = True) -> None:
        with psycopg.connect(url, autocommit=autocommit) as conn:
            conn.execute(statement)

    # --- set-up (untimed): tables created by the IO managers, identical raw twins ------------------
    pg(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    pg_iom.handle_output(context(pg_meta), table)  # creates bench_io.bench_items from Arrow (+ partition index)
    pg(sql.SQL("CREATE TABLE {s}.raw_copy (LIKE {s}.bench_items INCLUDING ALL)").format(s=sql.Identifier(SCHEMA)))
    pg(sql.SQL("CREATE TABLE {s}.unified_items (LIKE public.unified_items INCLUDING ALL)").format(s=sql.Identifier(SCHEMA)))
    # The upsert's fair baseline: raw COPY into a table identical to its target (same unique key and indexes).
    pg(sql.SQL("CREATE TABLE {s}.unified_copy (LIKE public.unified_items INCLUDING ALL)").format(s=sql.Identifier(SCHEMA)))
    ch_iom.handle_output(context(ch_meta), table)  # creates the ReplacingMergeTree table from Arrow
    client = connect_clickhouse(settings.clickhouse_dsn, ch_db)
    client.command(f"CREATE TABLE `{ch_db}`.raw_items AS `{ch_db}`.bench_items")
    client.close()
    with_version = table.append_column("_version", pa.array(np.full(table.num_rows, time.time_ns(), dtype=np.uint64)))

    def vacuum(name: str) -> None:
        pg(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(SCHEMA, name)))

    def truncate(name: str) -> None:
        pg(sql.SQL("TRUNCATE {}").format(sql.Identifier(SCHEMA, name)))
        vacuum(name)

    # --- the measurements ----------------------------------------------------------------------
    def pg_io_manager() -> float:
        vacuum("bench_items")  # the table holds all N rows; last run's dead tuples reclaimed
        ctx = context(pg_meta)
        return timed(lambda: pg_iom.handle_output(ctx, table))

    def pg_raw_copy(target: str = "raw_copy") -> float:
        truncate(target)
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT CSV)").format(
            sql.Identifier(SCHEMA, target), sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
        )
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed")

        def load() -> None:
            with psycopg.connect(url) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
                for chunk in table.to_batches(max_chunksize=batch):
                    buf = io.BytesIO()
                    pacsv.write_csv(chunk, buf, options)
                    copy.write(buf.getbuffer())

        return timed(load)

    def pg_raw_binary_copy(target: str = "raw_copy") -> float:
        from pgpq import ArrowToPostgresBinaryEncoder
        from pgpq import encoders, schema

        truncate(target)
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(SCHEMA, target), sql.SQL(", ").join(sql.Identifier(c) for c in table.column_names)
        )
        builders = {f.name: (encoders.StringEncoderBuilder.new_with_output(f, schema.Jsonb()) if f.name == "metadata"
                             else ArrowToPostgresBinaryEncoder.infer_encoder(f)) for f in table.schema}

        def load() -> None:
            encoder = ArrowToPostgresBinaryEncoder.new_with_encoders(table.schema, builders)
            with psycopg.connect(url) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
                copy.write(encoder.write_header())
                for chunk in table.to_batches(max_chunksize=batch):
                    copy.write(encoder.write_batch(chunk))
                copy.write(encoder.finish())

        return timed(load)

    def pg_upsert(rows: pa.Table, fresh: bool) -> float:
        if fresh:
            truncate("unified_items")
        else:
            vacuum("unified_items")
        keys = ["source_type", "source_name", "external_id"]

        def load() -> None:
            with store.transaction() as conn:
                result = upsert(conn, f"{SCHEMA}.unified_items", rows, keys, version_column="updated_at")
            expected = (rows.num_rows, 0) if fresh else (0, rows.num_rows)
            assert (result.inserted, result.updated) == expected, result

        return timed(load)

    upsert_meta = {
        "partition_expr": "partition_date",
        "write_mode": "upsert",
        "upsert_keys": ["source_type", "source_name", "external_id"],
    }

    def pg_io_manager_upsert(rows: pa.Table, fresh: bool) -> float:
        if fresh:
            truncate("unified_items")
        else:
            vacuum("unified_items")
        ctx = context(upsert_meta, "unified_items")
        return timed(lambda: pg_iom.handle_output(ctx, rows))

    def ch_io_manager() -> float:
        ctx = context(ch_meta)
        return timed(lambda: ch_iom.handle_output(ctx, table))

    def ch_raw_insert() -> float:
        client = connect_clickhouse(settings.clickhouse_dsn, ch_db)
        try:
            client.command(f"TRUNCATE TABLE `{ch_db}`.raw_items")
            return timed(lambda: client.insert_arrow(f"`{ch_db}`.raw_items", with_version))
        finally:
            client.close()

    keys = ("pg_raw", "pg_raw_bin", "pg_raw_core", "pg_iom", "up_ins", "up_upd", "iom_up_ins", "iom_up_upd", "ch_raw", "ch_iom")
    results: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(args.repeat):
        results["pg_raw"].append(pg_raw_copy())
        results["pg_raw_bin"].append(pg_raw_binary_copy())
        results["pg_raw_core"].append(pg_raw_copy("unified_copy"))
        results["pg_iom"].append(pg_io_manager())
        results["up_ins"].append(pg_upsert(table, fresh=True))
        results["up_upd"].append(pg_upsert(newer, fresh=False))
        results["iom_up_ins"].append(pg_io_manager_upsert(table, fresh=True))
        results["iom_up_upd"].append(pg_io_manager_upsert(newer, fresh=False))
        results["ch_raw"].append(ch_raw_insert())
        results["ch_iom"].append(ch_io_manager())
        print(f"  run {r + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items()), flush=True)

    # sanity: the replaces left exactly N rows
    assert store.fetch_value(f"SELECT count(*) FROM {SCHEMA}.bench_items") == args.rows
    client = connect_clickhouse(settings.clickhouse_dsn, ch_db)
    assert client.query(f"SELECT count() FROM `{ch_db}`.bench_items FINAL").result_rows[0][0] == args.rows
    assert client.query(f"SELECT count() FROM system.mutations WHERE database = '{ch_db}'").result_rows[0][0] == 0
    client.command(f"DROP DATABASE IF EXISTS `{ch_db}`")
    client.close()
    pg(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))

    best = {k: min(v) for k, v in results.items()}
    rate = {k: args.rows / v for k, v in best.items()}
    lines = [
        ("PG raw COPY (psycopg, pyarrow CSV)", "pg_raw", None, None),
        ("PG raw binary COPY (pgpq)", "pg_raw_bin", "pg_raw", None),
        ("PG raw COPY, unified_items twin", "pg_raw_core", None, None),
        ("PG IO manager partition replace", "pg_iom", "pg_raw", 0.8),
        ("PG upsert, first load (inserts)", "up_ins", "pg_raw_core", 0.5),
        ("PG upsert, newer versions (updates)", "up_upd", "pg_raw_core", 0.5),
        ("PG IO manager upsert mode, inserts", "iom_up_ins", "pg_raw_core", 0.5),
        ("PG IO manager upsert mode, updates", "iom_up_upd", "pg_raw_core", 0.5),
        ("CH raw insert_arrow", "ch_raw", None, None),
        ("CH IO manager partition replace", "ch_iom", "ch_raw", 0.8),
    ]
    print()
    print(f"{args.rows:,} rows, best of {args.repeat}")
    print("'vs raw' compares with the raw path into an identical table: the IO manager's own twin for")
    print("partition replace, a unified_items twin (same unique key and indexes) for the upserts;")
    print("'vs plain COPY' compares every PostgreSQL path with COPY into the plain twin.")
    print(f"{'path':<38} {'best s':>7} {'rows/s':>11} {'vs raw':>7} {'target':>7}  {'':<6} {'vs plain COPY':>13}")
    for label, key, base, target in lines:
        ratio = rate[key] / rate[base] if base else None
        verdict = "" if target is None else ("ok" if ratio >= target else "MISSED")
        plain = f"{rate[key] / rate['pg_raw']:.2f}x" if key.startswith(("pg", "up", "iom")) else ""
        print(
            f"{label:<38} {best[key]:>7.2f} {rate[key]:>11,.0f} "
            f"{(f'{ratio:.2f}x' if ratio else ''):>7} {(f'>={target}x' if target else ''):>7}  {verdict:<6} {plain:>13}"
        )
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
