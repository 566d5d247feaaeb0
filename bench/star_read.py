"""How fast the orders star reads core: ``stream_core`` (one COPY parsed into Arrow) against a
server-side cursor turned into Arrow (what it did before) and the raw COPY of the same rows.

    python bench/star_read.py [--lines 1000000] [--repeat 3]

Fills core ``orders`` and ``order_lines`` (3 lines per order, one day) with generated rows in
SQL, then reads ``warehouse/orders_fact``'s query for that day three ways, interleaved, best of
``--repeat``, and prints rows/s and this process's CPU seconds for each:

* ``stream_core``: ``COPY (<query>) TO STDOUT (FORMAT CSV)`` parsed by pyarrow as it arrives,
  typed and rebatched to the warehouse's batches (the shipped read);
* cursor: the same query through a psycopg server-side cursor, ``fetchmany`` of 50,000 rows, each
  column converted by ``pa.array`` (the read before);
* raw COPY: the COPY's bytes read and dropped (the floor of any read through COPY).

Against ``KINGTAVO_POSTGRES_URL`` it works in a database of its own (created and dropped), else
in the embedded PostgreSQL under a temporary ``KINGTAVO_HOME``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import drop_postgres_database, fresh_postgres_database  # noqa: E402

DAY = date(2025, 6, 1)
FILL = """
INSERT INTO orders (source_type, source_name, merchant_id, source_id, order_number, status, customer_source_id,
                    currency, subtotal, total, ordered_at, source_updated_at, partition_date)
SELECT 'salla', 'shop', '1608226078', (900000000 + g)::text, (10000 + g)::text, 'completed',
       (1100000000 + g %% 50000)::text, 'SAR', 300 + g %% 997, 345.5 + g %% 997, %(day)s::timestamptz + g * interval '7 ms',
       %(day)s::timestamptz + g * interval '9 ms', %(day)s
FROM generate_series(1, %(orders)s) g;
INSERT INTO order_lines (source_type, source_name, merchant_id, source_id, order_source_id, product_source_id, sku,
                         name, quantity, unit_price, total, currency, source_updated_at, partition_date)
SELECT 'salla', 'shop', '1608226078', (9000000000 + g * 10 + i)::text, (900000000 + g)::text,
       (1500000000 + (g + i) %% 5000)::text, 'SKU-' || ((g + i) %% 5000), 'Oud Perfume, "gift" box', 1 + i,
       12.5 * (1 + g %% 40), 12.5 * (1 + g %% 40) * (1 + i), 'SAR', %(day)s::timestamptz + g * interval '9 ms', %(day)s
FROM generate_series(1, %(orders)s) g, generate_series(0, 2) i;
"""


def cursor_read(store, table, start, end, batch_rows: int = 50_000) -> int:
    import pyarrow as pa
    from psycopg import sql

    rows_read = 0
    query = sql.SQL(table.select).format(start=sql.Literal(start), end=sql.Literal(end))
    with store.transaction() as conn, conn.cursor(name="bench_star") as cursor:
        cursor.execute(query)
        while rows := cursor.fetchmany(batch_rows):
            columns = list(zip(*rows, strict=True))
            batch = pa.RecordBatch.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, table.schema)],
                                               schema=table.schema)
            rows_read += batch.num_rows
    return rows_read


def raw_copy(store, table, start, end) -> int:
    from kingtavo_pipeline.defs.warehouse.entities import copy_query
    from kingtavo_pipeline.storage.postgres import copy_out_chunks

    size = 0
    with store.transaction() as conn, copy_out_chunks(conn, copy_query(table, start, end)[0]) as chunks:
        for chunk in chunks:
            size += len(chunk)
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="kingtavo-star-")
    os.environ.setdefault("KINGTAVO_HOME", home)
    bench_db = fresh_postgres_database()
    try:
        from kingtavo_pipeline.defs.warehouse.entities import ORDERS_FACT, stream_core
        from kingtavo_pipeline.storage.postgres import get_store

        store = get_store()
        orders = args.lines // 3
        with store.transaction() as conn:
            for statement in FILL.split(";")[:2]:
                conn.execute(statement, {"day": DAY, "orders": orders})
            conn.execute("ANALYZE orders; ANALYZE order_lines")
        start, end = DAY, DAY + timedelta(days=1)
        ways = {
            "stream_core (COPY -> Arrow)": lambda: sum(b.num_rows for b in stream_core(store, ORDERS_FACT, start, end)),
            "cursor -> Arrow (before)": lambda: cursor_read(store, ORDERS_FACT, start, end),
            "raw COPY bytes (floor)": lambda: raw_copy(store, ORDERS_FACT, start, end),
        }
        best: dict[str, tuple[float, float, int]] = {}
        for _ in range(args.repeat):
            for name, read in ways.items():
                wall, cpu = time.perf_counter(), time.process_time()
                out = read()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu, out)
        lines = orders * 3
        print(f"orders_fact read of one day: {orders:,} orders, {lines:,} lines, best of {args.repeat}")
        base = best["cursor -> Arrow (before)"][0]
        for name, (wall, cpu, out) in best.items():
            what = f"{out / 2**20:,.0f} MiB of CSV" if name.startswith("raw") else f"{out:,} rows"
            print(f"  {name:<30} {wall:6.2f} s  {lines / wall:>10,.0f} rows/s  CPU here {cpu:5.2f} s  "
                  f"{base / wall:4.1f}x the cursor  ({what})")
            if not name.startswith("raw") and out != lines:
                sys.exit(f"{name} read {out} rows, not {lines}")
        print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    finally:
        if bench_db:
            drop_postgres_database(bench_db)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
