"""Bulk writes in PostgreSQL's binary COPY format store exactly what the CSV route stores."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pyarrow as pa
import pytest
from psycopg import sql

from kingtavo_pipeline.storage.postgres import binary_encoder, copy_arrow

TABLE = """CREATE TEMP TABLE {} (
    t text, v varchar(40), j jsonb, b bigint, i integer, s smallint, d double precision, r real,
    ok boolean, day date, at timestamptz, local timestamp, money numeric(18, 4), big numeric, raw bytea
) ON COMMIT DROP"""
UTC = dt.timezone.utc


def _random_table(rng: random.Random, n: int) -> pa.Table:
    def maybe(value):
        return None if rng.random() < 0.1 else value

    def text() -> str:
        alphabet = "ab ,\"'\\\n\r\téß☃🚀;|{}"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))

    def money() -> Decimal:
        return Decimal(rng.randrange(-10**17, 10**17)).scaleb(-4)

    def instant() -> dt.datetime:
        return dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=rng.randrange(-2**55, 2**55))

    return pa.table({
        "t": pa.array([maybe(text()) for _ in range(n)], pa.string()),
        "v": pa.array([maybe(text()) for _ in range(n)], pa.large_string()),
        "j": pa.array([maybe(f'{{"k": {rng.randrange(10**6)}, "s": "{rng.random()}", "n": [1, null, true]}}')
                       for _ in range(n)], pa.string()),
        "b": pa.array([maybe(rng.randrange(-2**63, 2**63)) for _ in range(n)], pa.int64()),
        "i": pa.array([maybe(rng.randrange(-2**31, 2**31)) for _ in range(n)], pa.int32()),
        "s": pa.array([maybe(rng.randrange(-2**15, 2**15)) for _ in range(n)], pa.int16()),
        "d": pa.array([maybe(rng.choice([rng.uniform(-1e300, 1e300), rng.random(), 0.0, -0.0, float("inf")]))
                       for _ in range(n)], pa.float64()),
        "r": pa.array([maybe(rng.uniform(-1e30, 1e30)) for _ in range(n)], pa.float32()),
        "ok": pa.array([maybe(rng.random() < 0.5) for _ in range(n)], pa.bool_()),
        "day": pa.array([maybe(dt.date(1, 1, 1) + dt.timedelta(days=rng.randrange(3_652_058))) for _ in range(n)],
                        pa.date32()),
        "at": pa.array([maybe(instant()) for _ in range(n)], pa.timestamp("us", "UTC")),
        "local": pa.array([maybe(instant().replace(tzinfo=None)) for _ in range(n)], pa.timestamp("ms")),
        "money": pa.array([maybe(money()) for _ in range(n)], pa.decimal128(18, 4)),
        "big": pa.array([maybe(Decimal(rng.randrange(-10**(k := rng.randrange(1, 38)), 10**k)).scaleb(-19))
                         for _ in range(n)], pa.decimal128(38, 19)),
        "raw": pa.array([maybe(rng.randbytes(rng.randrange(0, 20))) for _ in range(n)], pa.binary()),
    })


def _rows(conn, table: str) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY b, t, day, at").format(sql.Identifier(table))).fetchall()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_binary_copy_stores_what_csv_copy_stores(store, seed):
    table = _random_table(random.Random(seed), 3_000)
    with store.transaction() as conn:
        for name in ("by_csv", "by_binary"):
            conn.execute(sql.SQL(TABLE).format(sql.Identifier(name)))
        assert binary_encoder(conn, sql.Identifier("by_binary"), table) is not None  # every column goes binary
        copy_arrow(conn, sql.Identifier("by_csv"), table, binary=False)
        copy_arrow(conn, sql.Identifier("by_binary"), table)
        by_csv, by_binary = _rows(conn, "by_csv"), _rows(conn, "by_binary")
    assert len(by_binary) == 3_000
    assert by_binary == by_csv


def test_columns_of_nulls_only_go_binary_as_their_columns_type(store):
    n = 4
    columns = ["t", "v", "j", "b", "i", "s", "d", "r", "ok", "day", "at", "local", "money", "big", "raw"]
    table = pa.table({c: pa.nulls(n) for c in columns} | {"b": pa.array(range(n), pa.int64())})
    with store.transaction() as conn:
        conn.execute(sql.SQL(TABLE).format(sql.Identifier("nulls")))
        assert binary_encoder(conn, sql.Identifier("nulls"), table) is not None
        copy_arrow(conn, sql.Identifier("nulls"), table)
        rows = conn.execute("SELECT * FROM nulls ORDER BY b").fetchall()
    assert rows == [tuple(i if c == "b" else None for c in columns) for i in range(n)]


def test_floats_into_numeric_round_as_the_server_rounds_their_text(store):
    """Half-way points of the column's scale, in their shortest text, round away from zero as
    PostgreSQL rounds the CSV text; floats whose text is not a plain decimal go through CSV."""
    rng = random.Random(5)
    values = [round(rng.uniform(-1e6, 1e6), rng.randrange(0, 8)) for _ in range(3_000)]
    values += [k / 10**5 + 0.5 / 10**4 * sign for k in range(-300, 300) for sign in (1, -1)]  # x.xxxx5
    values += [0.1 + 0.2, 1.00005, -0.00005, 0.000025, 2.675, 1e-4, 99_999_999_999_999.0, None]
    table = pa.table({"n": pa.array(range(len(values)), pa.int64()), "money": pa.array(values, pa.float64())})
    with store.transaction() as conn:
        for name in ("f_csv", "f_bin"):
            conn.execute(sql.SQL("CREATE TEMP TABLE {} (n bigint, money numeric(18, 4)) ON COMMIT DROP").format(
                sql.Identifier(name)))
        assert binary_encoder(conn, sql.Identifier("f_bin"), table) is not None
        copy_arrow(conn, sql.Identifier("f_csv"), table, binary=False)
        copy_arrow(conn, sql.Identifier("f_bin"), table)
        by_csv = conn.execute("SELECT n, money FROM f_csv ORDER BY n").fetchall()
        by_binary = conn.execute("SELECT n, money FROM f_bin ORDER BY n").fetchall()
        for odd in (1.5e-45, float("nan"), 1e15):  # 46 places; no decimal; over numeric(18, 4)
            assert binary_encoder(conn, sql.Identifier("f_bin"), pa.table({"money": pa.array([odd])})) is None
    assert by_binary == by_csv
    assert dict(by_binary)[len(values) - 5] == Decimal("0.0000")  # 0.000025 -> 0.0000


def test_integers_of_another_width_go_binary_and_out_of_range_ones_fail_in_the_server(store):
    table = pa.table({"b": pa.array([1, -2, None], pa.int32()), "i": pa.array([7, None, 2**31 - 1], pa.int64()),
                      "s": pa.array([0, 255, None], pa.uint8())})
    with store.transaction() as conn:
        conn.execute("CREATE TEMP TABLE widths (b bigint, i integer, s smallint) ON COMMIT DROP")
        assert binary_encoder(conn, sql.Identifier("widths"), table) is not None
        copy_arrow(conn, sql.Identifier("widths"), table)
        assert conn.execute("SELECT * FROM widths ORDER BY b NULLS LAST").fetchall() == [
            (-2, None, 255), (1, 7, 0), (None, 2**31 - 1, None)]
        too_big = pa.table({"i": pa.array([2**31], pa.int64())})
        assert binary_encoder(conn, sql.Identifier("widths"), too_big) is None
    with pytest.raises(Exception, match="out of range"):
        with store.transaction() as conn:
            conn.execute("CREATE TEMP TABLE widths (i integer) ON COMMIT DROP")
            copy_arrow(conn, sql.Identifier("widths"), too_big)


def test_a_column_the_binary_form_cannot_fill_exactly_goes_through_csv(store):
    """Naive times into timestamptz need the server's own conversion (the session's time zone)."""
    table = pa.table({
        "money": pa.array([1.25, None, -3.5], pa.float64()),
        "at": pa.array([dt.datetime(2024, 11, 1, 12, 30), None, dt.datetime(2024, 1, 1)], pa.timestamp("us")),
        "n": pa.array([1, 2, 3], pa.int64()),
    })
    with store.transaction() as conn:
        conn.execute("SET LOCAL TimeZone = 'Asia/Riyadh'")
        conn.execute("CREATE TEMP TABLE mixed (money numeric(18, 4), at timestamptz, n integer) ON COMMIT DROP")
        assert binary_encoder(conn, sql.Identifier("mixed"), table) is None
        copy_arrow(conn, sql.Identifier("mixed"), table)
        rows = conn.execute("SELECT money, at AT TIME ZONE 'UTC', n FROM mixed ORDER BY n").fetchall()
    assert rows == [(Decimal("1.2500"), dt.datetime(2024, 11, 1, 9, 30), 1), (None, None, 2),
                    (Decimal("-3.5000"), dt.datetime(2023, 12, 31, 21, 0), 3)]


def test_bad_json_in_a_binary_copy_fails_the_copy_and_rolls_back(store):
    table = pa.table({"j": pa.array(['{"a": 1}', "{not json"], pa.string())})
    with store.transaction() as conn:
        conn.execute("CREATE TABLE binary_json (j jsonb)")
    with pytest.raises(Exception, match="(?i)json"):
        with store.transaction() as conn:
            copy_arrow(conn, sql.Identifier("binary_json"), table)
    with store.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM binary_json").fetchone()[0] == 0
        conn.execute("DROP TABLE binary_json")
