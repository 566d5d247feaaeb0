"""Checks on the warehouse: it must hold exactly what the operational store holds."""

from datetime import date

import dagster as dg
from clickhouse_connect.driver.client import Client

from kingtavo_pipeline.defs.partitions import daily_partitions
from kingtavo_pipeline.defs.resources import ClickHouseResource, PostgresResource
from kingtavo_pipeline.defs.runs import utc_window
from kingtavo_pipeline.storage.clickhouse import CLICKHOUSE_POOL
from kingtavo_pipeline.storage.postgres import PostgresStore

ROW_COUNT_CHECK = "row_count_matches_core"


@dg.asset_check(
    asset=["warehouse", "unified_items"],
    name=ROW_COUNT_CHECK,
    description="Rows per partition in ClickHouse equal rows per partition in PostgreSQL core.",
    blocking=True,
    partitions_def=daily_partitions,
    pool=CLICKHOUSE_POOL,
)
def row_count_matches_core(
    context: dg.AssetCheckExecutionContext, postgres: PostgresResource, clickhouse: ClickHouseResource
) -> dg.AssetCheckResult:
    start, end = utc_window(context)
    with clickhouse.open() as client:
        return compare_row_counts(postgres.store(), client, start.date(), end.date())


def compare_row_counts(store: PostgresStore, client: Client, start: date, end: date) -> dg.AssetCheckResult:
    """Rows of unified_items with partition_date in [start, end) in both stores."""
    core_rows = store.fetch_value(
        "SELECT count(*) FROM unified_items WHERE partition_date >= %s AND partition_date < %s", (start, end)
    )
    warehouse_rows = client.query(
        "SELECT count() FROM unified_items FINAL WHERE partition_date >= {start:Date} AND partition_date < {end:Date}",
        parameters={"start": start, "end": end},
    ).result_rows[0][0]
    return dg.AssetCheckResult(
        passed=bool(core_rows == warehouse_rows),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "core_rows": dg.MetadataValue.int(int(core_rows)),
            "warehouse_rows": dg.MetadataValue.int(int(warehouse_rows)),
            "difference": dg.MetadataValue.int(int(warehouse_rows) - int(core_rows)),
        },
    )
