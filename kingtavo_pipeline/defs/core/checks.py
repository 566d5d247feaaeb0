"""Checks on ``core/unified_items``, per partition: does core hold what raw_data says it should?

The unique constraint already guarantees keys are present and unique, so a check of that could not
fail. This one can: every record whose newest observation landed in the partition must be in core
(from that observation or, when the source's own modification time says so, another one), or be
a dead letter that is open or deliberately ignored. A record neither in core nor dead-lettered was lost; a record whose core row
comes from an older observation than the newest one (with no source modification time to justify
it) is stale: a correction that did not win.
"""

import datetime as dt

import dagster as dg

from kingtavo_pipeline.storage.postgres import PostgresStore

CORE_REFLECTS_RAW_CHECK = "core_reflects_raw"

# Newest observation per record among those landed in the window, and what core holds for it.
CORE_REFLECTS_RAW_SQL = """
WITH newest AS (
    SELECT DISTINCT ON (source_type, source_name, entity, source_id)
           id, observed_seq, source_type, source_name, entity, source_id
    FROM raw_data
    WHERE partition_date >= %(start)s AND partition_date < %(end)s
    ORDER BY source_type, source_name, entity, source_id, observed_seq DESC
), accounted AS (
    SELECT n.observed_seq AS newest_seq, held.observed_seq AS core_seq, held.source_updated_at,
           EXISTS (SELECT 1 FROM dead_letters d
                   WHERE d.stage = 'map' AND d.status IN ('open', 'retrying', 'ignored') AND d.raw_data_id = n.id) AS dead
    FROM newest n
    LEFT JOIN LATERAL (
        SELECT u.observed_seq, u.source_updated_at
        FROM raw_data r JOIN unified_items u ON u.raw_data_id = r.id
        WHERE r.source_type = n.source_type AND r.source_name = n.source_name AND r.entity = n.entity
          AND r.source_id = n.source_id
        ORDER BY u.observed_seq DESC LIMIT 1
    ) held ON true
)
SELECT count(*),
       count(*) FILTER (WHERE dead),
       count(*) FILTER (WHERE core_seq IS NULL AND NOT dead),
       count(*) FILTER (WHERE core_seq < newest_seq AND source_updated_at IS NULL AND NOT dead)
FROM accounted
"""

CORE_ROWS_SQL = "SELECT count(*) FROM unified_items WHERE partition_date >= %s AND partition_date < %s"


def core_reflects_raw(store: PostgresStore, start: dt.date, end: dt.date) -> dg.AssetCheckResult:
    """The check's result for partition dates in ``[start, end)``."""
    records, dead, missing, stale = store.fetch_all(CORE_REFLECTS_RAW_SQL, {"start": start, "end": end})[0]
    core_rows = store.fetch_value(CORE_ROWS_SQL, (start, end))
    return dg.AssetCheckResult(
        check_name=CORE_REFLECTS_RAW_CHECK,
        asset_key=["core", "unified_items"],
        passed=bool(missing == 0 and stale == 0),
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if missing == 0 and stale == 0 else
        f"{missing} record(s) landed in raw_data are neither in core nor dead-lettered; "
        f"{stale} core row(s) hold an older observation than the newest one landed",
        metadata={
            "raw_records": dg.MetadataValue.int(int(records)),
            "core_rows": dg.MetadataValue.int(int(core_rows)),
            "dead_lettered": dg.MetadataValue.int(int(dead)),
            "missing": dg.MetadataValue.int(int(missing)),
            "stale": dg.MetadataValue.int(int(stale)),
        },
    )
