"""Checks on the warehouse: it must hold exactly what the operational store holds.

``row_count_matches_core`` is built with the quality factories (``defs/quality/checks.py``): one
evaluation per partition, blocking ERROR, thresholds from the quality file. The other warehouse
checks (uniqueness, money sums) live in ``defs/quality``.
"""

from datetime import date

import dagster as dg
from clickhouse_connect.driver.client import Client

from kingtavo_pipeline.defs.quality.checks import CLICKHOUSE_SETTINGS, build_checks, reconciliation_check
from kingtavo_pipeline.quality.config import load_quality_config
from kingtavo_pipeline.storage.postgres import PostgresStore

ROW_COUNT_CHECK = "row_count_matches_core"

row_count_matches_core = build_checks(
    ROW_COUNT_CHECK,
    [reconciliation_check(["warehouse", "unified_items"], "unified_items", "unified_items", name=ROW_COUNT_CHECK)],
    load_quality_config(),
)


def compare_row_counts(store: PostgresStore, client: Client, start: date, end: date) -> dg.AssetCheckResult:
    """Rows of unified_items with partition_date in [start, end) in both stores, as one result."""
    core_rows = store.fetch_value(
        "SELECT count(*) FROM unified_items WHERE partition_date >= %s AND partition_date < %s", (start, end)
    )
    warehouse_rows = client.query(
        "SELECT count() FROM unified_items FINAL WHERE partition_date >= {start:Date} AND partition_date < {end:Date}"
        + CLICKHOUSE_SETTINGS,
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
