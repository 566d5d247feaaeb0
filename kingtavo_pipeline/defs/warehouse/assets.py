"""``warehouse/unified_items``: the core partition copied to ClickHouse by partition replace."""

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from kingtavo_pipeline.defs.ingest.assets import OWNER
from kingtavo_pipeline.defs.partitions import daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import ClickHouseResource, PostgresResource
from kingtavo_pipeline.defs.runs import partition_label, utc_window
from kingtavo_pipeline.storage.bookkeeping import etl_run
from kingtavo_pipeline.storage.clickhouse import CLICKHOUSE_POOL

WAREHOUSE_SCHEMA = pa.schema(
    [
        ("source_type", pa.string()),
        ("source_name", pa.string()),
        ("external_id", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("category", pa.string()),
        ("url", pa.string()),
        ("amount", pa.decimal128(18, 4)),
        ("quantity", pa.int64()),
        ("metadata", pa.string()),
        ("published_at", pa.timestamp("us", "UTC")),
        ("partition_date", pa.date32()),
        ("raw_data_id", pa.int64()),
        ("updated_at", pa.timestamp("us", "UTC")),
        ("source_updated_at", pa.timestamp("us", "UTC")),
        ("observed_seq", pa.int64()),
        ("_version", pa.uint64()),
    ]
)


def to_warehouse_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Core rows in the warehouse's column types: Arrow in, Arrow out (JSON already text, money as
    Decimal(18,4)); ``_version`` is core's ``row_version``."""
    columns = [
        pc.cast(batch.column("row_version" if f.name == "_version" else f.name), f.type) for f in WAREHOUSE_SCHEMA
    ]
    return pa.RecordBatch.from_arrays(columns, schema=WAREHOUSE_SCHEMA)


class WarehouseConfig(dg.Config):
    rewrite: bool = False
    """Copy the days even if the warehouse already holds core's rows for them."""


CORE_DAYS = """SELECT partition_date, count(*), max(row_version) FROM unified_items
               WHERE partition_date >= %s AND partition_date < %s GROUP BY 1"""
WAREHOUSE_DAYS = """SELECT partition_date, count(), max(_version) FROM {table} FINAL
                    WHERE partition_date >= {{start:Date}} AND partition_date < {{end:Date}} GROUP BY 1"""


def warehouse_day_versions(clickhouse: ClickHouseResource, table: str, start, end) -> dict:
    """``{day: (rows, newest _version)}`` of a warehouse table after FINAL (one thread: bounded memory)."""
    with clickhouse.open() as client:
        rows = client.query(WAREHOUSE_DAYS.format(table=table), parameters={"start": start, "end": end},
                            settings={"max_threads": 1}).result_rows
    return {day: (int(n), int(v)) for day, n, v in rows}


def day_versions(store, clickhouse: ClickHouseResource, start, end) -> tuple[dict, dict]:
    """``{day: (rows, newest row version)}`` in core and in the warehouse. Core's row version grows
    with every accepted change, so equal pairs mean the day is already copied as core holds it."""
    core = {day: (int(n), int(v)) for day, n, v in store.fetch_all(CORE_DAYS, (start, end))}
    return core, warehouse_day_versions(clickhouse, "unified_items", start, end)


# what the warehouse reads of core: no surrogate id, no load time
CORE_COLUMNS = [("row_version" if n == "_version" else n) for n in WAREHOUSE_SCHEMA.names]


@dg.asset(
    key=["warehouse", "unified_items"],
    description="ClickHouse unified_items (ReplacingMergeTree, PARTITION BY partition_date); each run "
    "replaces its day partitions atomically from a stage table, streaming core in bounded batches.",
    ins={"core_unified_items": dg.AssetIn(key=["core", "unified_items"], metadata={"columns": CORE_COLUMNS})},
    group_name="warehouse",
    kinds={"clickhouse", "pyarrow"},
    owners=[OWNER],
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    io_manager_key="clickhouse_io_manager",
    pool=CLICKHOUSE_POOL,
    metadata={"partition_expr": "partition_date", "order_by": ["source_type", "source_name", "external_id"]},
    tags={"layer": "warehouse"},
)
def warehouse_unified_items(
    context: dg.AssetExecutionContext,
    config: WarehouseConfig,
    core_unified_items: pa.RecordBatchReader,
    postgres: PostgresResource,
    clickhouse: ClickHouseResource,
):
    start, end = utc_window(context)
    store = postgres.store()
    with etl_run(store, run_id=context.run.run_id, asset_key="warehouse/unified_items",
                 partition_key=partition_label(context)) as counts:
        if not config.rewrite:
            core_days, warehouse_days = day_versions(store, clickhouse, start.date(), end.date())
            if core_days == warehouse_days:
                # every day holds the same rows at the same row versions as core: nothing to copy
                core_unified_items.close()
                context.log.info("the warehouse already holds core's rows for these days; nothing copied")
                yield dg.MaterializeResult(metadata={"unchanged": True, "days": dg.MetadataValue.int(len(core_days))})
                return

        def batches():
            # a range of any length streams through in batches: memory stays at the batch size
            for batch in core_unified_items:
                counts.extracted += batch.num_rows
                yield to_warehouse_batch(batch)

        # Dagster hands the batches to the ClickHouse IO manager at this yield; a failed write
        # never comes back here, and etl_run records the run as failed.
        yield dg.Output(batches())
        counts.loaded = counts.extracted


def defs() -> dg.Definitions:
    from kingtavo_pipeline.defs.warehouse.checks import row_count_matches_core

    return dg.Definitions(assets=[warehouse_unified_items], asset_checks=[row_count_matches_core])
