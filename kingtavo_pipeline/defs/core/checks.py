"""Checks on ``core/unified_items``: the keys every downstream join relies on."""

import dagster as dg
import pandas as pd

from kingtavo_pipeline.storage.postgres import PostgresStore

KEYS_CHECK = "keys_present_and_unique"

KEYS_SQL = """
SELECT count(*) AS row_count,
       count(*) FILTER (WHERE coalesce(external_id, '') = '' OR coalesce(source_name, '') = '') AS missing_keys,
       count(*) - count(DISTINCT (source_type, source_name, external_id)) AS duplicate_keys
FROM unified_items
WHERE partition_date >= %s AND partition_date < %s
"""


def keys_check_result(store: PostgresStore, start: pd.Timestamp, end: pd.Timestamp) -> dg.AssetCheckResult:
    rows, missing, duplicates = store.fetch_all(KEYS_SQL, (start.date(), end.date()))[0]
    return dg.AssetCheckResult(
        check_name=KEYS_CHECK,
        asset_key=["core", "unified_items"],
        passed=bool(missing == 0 and duplicates == 0),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "row_count": dg.MetadataValue.int(rows),
            "missing_keys": dg.MetadataValue.int(missing),
            "duplicate_keys": dg.MetadataValue.int(duplicates),
        },
    )
