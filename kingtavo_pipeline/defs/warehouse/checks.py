"""Checks on the warehouse: it must hold exactly what the operational store holds."""

import dagster as dg

from kingtavo_pipeline.defs.partitions import daily_partitions
from kingtavo_pipeline.defs.resources import ClickHouseResource, PostgresResource
from kingtavo_pipeline.defs.runs import utc_window
from kingtavo_pipeline.storage.clickhouse import CLICKHOUSE_POOL

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
    core_rows = postgres.store().fetch_value(
        "SELECT count(*) FROM unified_items WHERE partition_date >= %s AND partition_date < %s", (start.date(), end.date())
    )
    with clickhouse.open() as client:
        warehouse_rows = client.query(
            "SELECT count() FROM unified_items FINAL WHERE partition_date >= {start:Date} AND partition_date < {end:Date}",
            parameters={"start": start.date(), "end": end.date()},
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
