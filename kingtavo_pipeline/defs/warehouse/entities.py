"""The orders star in ClickHouse: ``warehouse/orders_fact`` (one row per order line),
``warehouse/customers_dim`` and ``warehouse/products_dim``, copied from the core entity tables.

Each asset reads its days from PostgreSQL with one streamed ``COPY ... TO STDOUT`` parsed into
Arrow as it arrives (the way the PostgreSQL IO manager reads) and hands Arrow batches to the
ClickHouse IO manager, which replaces the days' partitions atomically. Days whose rows and newest
row version already match core are not copied again.
"""


from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from kingtavo_pipeline.defs.ingest.assets import OWNER
from kingtavo_pipeline.defs.partitions import daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import ClickHouseResource, PostgresResource
from kingtavo_pipeline.defs.runs import partition_label, utc_window
from kingtavo_pipeline.defs.warehouse.assets import WarehouseConfig, warehouse_day_versions
from kingtavo_pipeline.io_managers.slices import rebatch
from kingtavo_pipeline.storage.bookkeeping import etl_run
from kingtavo_pipeline.storage.clickhouse import CLICKHOUSE_POOL
from kingtavo_pipeline.storage.postgres import copy_out_batches

READ_BATCH_ROWS = 50_000
MONEY = pa.decimal128(18, 4)
TS = pa.timestamp("us", "UTC")


@dataclass(frozen=True)
class StarTable:
    """One warehouse table: its columns, the query over core that fills a window, and how to tell
    that core changed (rows and newest row version per day)."""

    name: str
    core_tables: tuple[str, ...]
    schema: pa.Schema
    select: str  # {start} / {end}: the window's partition dates (composed as literals: COPY takes no parameters)
    order_by: tuple[str, ...]
    core_days: str
    description: str


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema([*fields, ("partition_date", pa.date32()), ("_version", pa.uint64())])


ORDERS_FACT = StarTable(
    name="orders_fact",
    core_tables=("orders", "order_lines"),
    schema=_schema(
        ("source_type", pa.string()), ("source_name", pa.string()), ("merchant_id", pa.string()),
        ("order_source_id", pa.string()), ("line_source_id", pa.string()), ("order_number", pa.string()),
        ("kind", pa.string()), ("status", pa.string()), ("customer_source_id", pa.string()),
        ("product_source_id", pa.string()), ("sku", pa.string()), ("line_name", pa.string()),
        ("quantity", MONEY), ("unit_price", MONEY), ("line_total", MONEY), ("currency", pa.string()),
        ("order_total", MONEY), ("ordered_at", TS), ("source_updated_at", TS),
    ),
    # an order without lines keeps one row (empty line id); a line's row version or its order's,
    # whichever is newer, so a change to either replaces the fact row
    select="""
SELECT o.source_type, o.source_name, o.merchant_id, o.source_id, coalesce(l.source_id, ''), o.order_number,
       o.kind, o.status, o.customer_source_id, l.product_source_id, l.sku, l.name, l.quantity, l.unit_price,
       l.total, coalesce(l.currency, o.currency), o.total, o.ordered_at, o.source_updated_at, o.partition_date,
       greatest(o.row_version, coalesce(l.row_version, 0))
FROM orders o
LEFT JOIN order_lines l ON l.source_type = o.source_type AND l.source_name = o.source_name
     AND l.merchant_id = o.merchant_id AND l.order_source_id = o.source_id
WHERE o.partition_date >= {start} AND o.partition_date < {end}
""",
    order_by=("source_type", "source_name", "merchant_id", "order_source_id", "line_source_id"),
    core_days="""
SELECT o.partition_date, count(*), max(greatest(o.row_version, coalesce(l.row_version, 0)))
FROM orders o
LEFT JOIN order_lines l ON l.source_type = o.source_type AND l.source_name = o.source_name
     AND l.merchant_id = o.merchant_id AND l.order_source_id = o.source_id
WHERE o.partition_date >= %(start)s AND o.partition_date < %(end)s GROUP BY 1
""",
    description="One row per order line (an order without lines: one row with an empty line id), with the "
    "order's status, customer and totals; ClickHouse ReplacingMergeTree partitioned by the order's day.",
)

CUSTOMERS_DIM = StarTable(
    name="customers_dim",
    core_tables=("customers",),
    schema=_schema(
        ("source_type", pa.string()), ("source_name", pa.string()), ("merchant_id", pa.string()),
        ("source_id", pa.string()), ("email", pa.string()), ("full_name", pa.string()), ("phone", pa.string()),
        ("city", pa.string()), ("country", pa.string()), ("created_at", TS), ("source_updated_at", TS),
    ),
    select="""
SELECT source_type, source_name, merchant_id, source_id, email,
       coalesce(full_name, nullif(concat_ws(' ', first_name, last_name), '')), phone, city, country,
       created_at, source_updated_at, partition_date, row_version
FROM customers WHERE partition_date >= {start} AND partition_date < {end}
""",
    order_by=("source_type", "source_name", "merchant_id", "source_id"),
    core_days="""SELECT partition_date, count(*), max(row_version) FROM customers
                 WHERE partition_date >= %(start)s AND partition_date < %(end)s GROUP BY 1""",
    description="Customers of every API source (ClickHouse ReplacingMergeTree, partitioned by the day they were created).",
)

PRODUCTS_DIM = StarTable(
    name="products_dim",
    core_tables=("products",),
    schema=_schema(
        ("source_type", pa.string()), ("source_name", pa.string()), ("merchant_id", pa.string()),
        ("source_id", pa.string()), ("sku", pa.string()), ("name", pa.string()), ("status", pa.string()),
        ("price", MONEY), ("currency", pa.string()), ("stock_quantity", pa.int64()), ("category", pa.string()),
        ("created_at", TS), ("source_updated_at", TS),
    ),
    select="""
SELECT source_type, source_name, merchant_id, source_id, sku, name, status, price, currency, stock_quantity,
       category, created_at, source_updated_at, partition_date, row_version
FROM products WHERE partition_date >= {start} AND partition_date < {end}
""",
    order_by=("source_type", "source_name", "merchant_id", "source_id"),
    core_days="""SELECT partition_date, count(*), max(row_version) FROM products
                 WHERE partition_date >= %(start)s AND partition_date < %(end)s GROUP BY 1""",
    description="Products of every API source (ClickHouse ReplacingMergeTree, partitioned by the day they were created).",
)

STAR_TABLES = (ORDERS_FACT, CUSTOMERS_DIM, PRODUCTS_DIM)


def copy_query(table: StarTable, start, end) -> tuple[sql.Composable, pa.Schema]:
    """The window's query as ``COPY`` runs it, and the schema its CSV parses into: the select's
    columns named after ``table.schema``, UTC timestamps read as naive UTC text (cast back after)."""
    utc = {f.name for f in table.schema if f.type == TS}
    columns = sql.SQL(", ").join(
        sql.SQL("({} AT TIME ZONE 'UTC')").format(sql.Identifier(f.name)) if f.name in utc else sql.Identifier(f.name)
        for f in table.schema
    )
    select = sql.SQL(table.select).format(start=sql.Literal(start), end=sql.Literal(end))
    query = sql.SQL("SELECT {} FROM ({}) AS s ({})").format(
        columns, select, sql.SQL(", ").join(sql.Identifier(name) for name in table.schema.names))
    parse = pa.schema([(f.name, pa.timestamp("us")) if f.name in utc else f for f in table.schema])
    return query, parse


def stream_core(store, table: StarTable, start, end, batch_rows: int = READ_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The window's rows in the warehouse's types, in batches of ``batch_rows``, from one
    ``COPY ... TO STDOUT`` parsed as it arrives (memory holds a batch or two)."""
    query, parse = copy_query(table, start, end)
    with store.transaction() as conn:
        parsed = copy_out_batches(conn, query, parse)
        typed = (
            pa.RecordBatch.from_arrays(
                [column if column.type == f.type else pc.cast(column, f.type) for column, f in zip(batch.columns, table.schema)],
                schema=table.schema,
            )
            for batch in parsed
        )
        try:
            yield from rebatch(typed, batch_rows)
        finally:
            parsed.close()  # end the COPY before the transaction ends (a consumer that stopped early)


def _star_asset(table: StarTable) -> dg.AssetsDefinition:
    @dg.asset(
        key=["warehouse", table.name],
        description=table.description,
        deps=[["core", name] for name in table.core_tables],
        group_name="warehouse",
        kinds={"clickhouse", "pyarrow"},
        owners=[OWNER],
        partitions_def=daily_partitions,
        backfill_policy=single_run_backfill,
        io_manager_key="clickhouse_io_manager",
        pool=CLICKHOUSE_POOL,
        metadata={"partition_expr": "partition_date", "order_by": list(table.order_by)},
        tags={"layer": "warehouse"},
    )
    def _asset(context: dg.AssetExecutionContext, config: WarehouseConfig, postgres: PostgresResource,
               clickhouse: ClickHouseResource):
        start, end = utc_window(context)
        store = postgres.store()
        window = {"start": start.date(), "end": end.date()}
        with etl_run(store, run_id=context.run.run_id, asset_key=f"warehouse/{table.name}",
                     partition_key=partition_label(context)) as counts:
            if not config.rewrite:
                core = {day: (int(n), int(v)) for day, n, v in store.fetch_all(table.core_days, window)}
                if core == warehouse_day_versions(clickhouse, table.name, window["start"], window["end"]):
                    context.log.info("the warehouse already holds core's rows for these days; nothing copied")
                    yield dg.MaterializeResult(metadata={"unchanged": True, "days": dg.MetadataValue.int(len(core))})
                    return

            def batches():
                for batch in stream_core(store, table, window["start"], window["end"]):
                    counts.extracted += batch.num_rows
                    yield batch

            yield dg.Output(batches())
            counts.loaded = counts.extracted

    return _asset


star_assets = [_star_asset(t) for t in STAR_TABLES]


def defs() -> dg.Definitions:
    from kingtavo_pipeline.defs.ingest.assets import SOURCES

    return dg.Definitions(assets=star_assets if SOURCES.api() else [])
