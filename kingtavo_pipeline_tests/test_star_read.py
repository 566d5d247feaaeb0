"""The orders star's read of core (defs/warehouse/entities.py ``stream_core``: one COPY parsed into
Arrow) against the rows as psycopg returns them, typed by the star's schema: the same values, the
same types, NULL and the empty string kept apart, whatever the text holds."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pytest
from psycopg import sql

from kingtavo_pipeline.defs.warehouse.entities import STAR_TABLES, copy_query, stream_core

TEXTS = [None, "", " ", "plain", 'say "hi", then go', "two\nlines", "back\\slash", "ﾃｽﾄ السعودية", "NULL", "\\N", "a,b"]
MONEY = [None, Decimal("0"), Decimal("-12.5"), Decimal("99999999999999.9999"), Decimal("0.0001"), Decimal("1234.5678")]
START = date(2025, 3, 1)


def _time(rng: random.Random):
    if rng.random() < 0.2:
        return None
    return datetime(2025, 3, 1, tzinfo=timezone.utc) + timedelta(microseconds=rng.randrange(10**12) * 7 + 1)


def _fill(conn, rng: random.Random, orders: int) -> None:
    for n in range(orders):
        day = START + timedelta(days=rng.randrange(3))  # the last of the three days is outside the window
        merchant = rng.choice(["", "m1"])
        oid = f"o{n}"
        conn.execute(
            """INSERT INTO orders (source_type, source_name, merchant_id, source_id, order_number, status,
                   customer_source_id, currency, total, ordered_at, source_updated_at, partition_date)
               VALUES ('salla', 'shop', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (merchant, oid, rng.choice(TEXTS), rng.choice(["completed", "a\nb"]), rng.choice(TEXTS),
             rng.choice(["SAR", "", "x,y"]), rng.choice(MONEY[1:]), _time(rng), _time(rng), day),
        )
        for i in range(rng.choice([0, 1, 3])):
            conn.execute(
                """INSERT INTO order_lines (source_type, source_name, merchant_id, source_id, order_source_id,
                       product_source_id, sku, name, quantity, unit_price, total, currency, source_updated_at,
                       partition_date)
                   VALUES ('salla', 'shop', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                (merchant, f"{oid}:{i}", oid, rng.choice(TEXTS), rng.choice(TEXTS), rng.choice(TEXTS),
                 rng.choice(MONEY[1:]), rng.choice(MONEY), rng.choice(MONEY), rng.choice(TEXTS), _time(rng), day),
            )
        conn.execute(
            """INSERT INTO customers (source_type, source_name, merchant_id, source_id, email, first_name,
                   last_name, full_name, phone, city, country, created_at, source_updated_at, partition_date)
               VALUES ('salla', 'shop', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (merchant, f"c{n}", *(rng.choice(TEXTS) for _ in range(7)), _time(rng), _time(rng), day),
        )
        conn.execute(
            """INSERT INTO products (source_type, source_name, merchant_id, source_id, sku, name, status, price,
                   currency, stock_quantity, category, created_at, source_updated_at, partition_date)
               VALUES ('salla', 'shop', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
            (merchant, f"p{n}", rng.choice(TEXTS), rng.choice(["x", "", "ن"]), rng.choice(["active", ""]),
             rng.choice(MONEY), rng.choice(TEXTS), rng.choice([None, 0, -3, 2**62]), rng.choice(TEXTS),
             _time(rng), _time(rng), day),
        )


def _reference(store, table, start, end) -> pa.Table:
    """The rows as psycopg returns them (Python values), typed by the star's schema."""
    query = sql.SQL(table.select).format(start=sql.Literal(start), end=sql.Literal(end))
    with store.transaction() as conn:
        rows = conn.execute(query).fetchall()
    columns = list(zip(*rows)) if rows else [[] for _ in table.schema]
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, table.schema)], schema=table.schema)


def _key(table: pa.Table) -> pa.Table:
    order = [(name, "ascending") for name in ("merchant_id", "source_id", "order_source_id", "line_source_id")
             if name in table.column_names]
    return table.sort_by(order)


@pytest.mark.parametrize("table", STAR_TABLES, ids=lambda t: t.name)
def test_star_read_matches_the_rows_psycopg_returns(store, table):
    with store.transaction() as conn:
        _fill(conn, random.Random(11), 300)
    end = START + timedelta(days=2)
    want = _reference(store, table, START, end)
    batches = list(stream_core(store, table, START, end, batch_rows=97))
    assert all(b.schema == table.schema for b in batches)
    assert [b.num_rows for b in batches[:-1]] == [97] * (len(batches) - 1)  # rebatched to batch_rows
    got = pa.Table.from_batches(batches, schema=table.schema)
    assert 150 < got.num_rows == want.num_rows  # two of the three days
    assert _key(got).equals(_key(want))
    texts = [f.name for f in table.schema if f.type == pa.string()]
    values = {v for name in texts for v in got.column(name).to_pylist()}
    assert {None, "", "two\nlines", 'say "hi", then go', "\\N", "NULL"} <= values  # NULL and '' kept apart


def test_star_read_of_an_empty_window_and_a_consumer_that_stops_early(store):
    table = STAR_TABLES[0]
    assert list(stream_core(store, table, date(2030, 1, 1), date(2030, 1, 2))) == []
    with store.transaction() as conn:
        _fill(conn, random.Random(3), 200)
    reader = stream_core(store, table, START, START + timedelta(days=3), batch_rows=10)
    assert next(reader).num_rows == 10
    reader.close()  # the COPY ends and the transaction with it: the store's connections are usable
    assert store.fetch_value("SELECT count(*) FROM orders") == 200


def test_copy_query_names_the_columns_and_reads_times_as_utc():
    query, parse = copy_query(STAR_TABLES[0], date(2025, 1, 1), date(2025, 1, 2))
    assert parse.names == STAR_TABLES[0].schema.names
    assert parse.field("ordered_at").type == pa.timestamp("us")
    assert STAR_TABLES[0].schema.field("ordered_at").type == pa.timestamp("us", "UTC")
