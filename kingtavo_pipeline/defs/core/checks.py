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

from kingtavo_pipeline.storage.changes import fingerprint_of, postgres_fingerprint, remembered
from kingtavo_pipeline.storage.postgres import PostgresStore

CORE_REFLECTS_RAW_CHECK = "core_reflects_raw"

# Newest observation per record among those landed in the window, what core holds for the record
# (found by the raw record it comes from, wherever it lives now) and its newest open map failure.
# Hash aggregates and joins: no sort, no per-record probe of raw_data.
CORE_REFLECTS_RAW_SQL = """
WITH newest AS (
    SELECT source_type, source_name, source_id, max(observed_seq) AS seq
    FROM raw_data
    WHERE partition_date >= %(start)s AND partition_date < %(end)s
      AND source_type IN ('csv', 'rss')  -- the sources unified_items holds; API records go to the entity tables
    GROUP BY 1, 2, 3
), failed AS (
    SELECT d.source_type, d.source_name, d.source_id, max(r.observed_seq) AS seq
    FROM dead_letters d JOIN raw_data r ON r.id = d.raw_data_id
    WHERE d.stage = 'map' AND d.status IN ('open', 'retrying', 'ignored')
    GROUP BY 1, 2, 3
)
SELECT count(*),
       count(*) FILTER (WHERE dead),
       count(*) FILTER (WHERE core_seq IS NULL AND NOT dead),
       count(*) FILTER (WHERE core_seq < seq AND source_updated_at IS NULL AND NOT dead)
FROM (
    SELECT n.seq, u.observed_seq AS core_seq, u.source_updated_at, coalesce(f.seq >= n.seq, false) AS dead
    FROM newest n
    LEFT JOIN unified_items u
           ON u.source_type = n.source_type AND u.source_name = n.source_name AND u.source_id = n.source_id
    LEFT JOIN failed f
           ON f.source_type = n.source_type AND f.source_name = n.source_name AND f.source_id = n.source_id
) accounted
"""

READS = ("raw_data", "unified_items", "dead_letters")
CORE_ROWS_SQL = "SELECT count(*) FROM unified_items WHERE partition_date >= %s AND partition_date < %s"


def _reflects_counts(store: PostgresStore, start: dt.date, end: dt.date) -> list[int]:
    records, dead, missing, stale = store.fetch_all(CORE_REFLECTS_RAW_SQL, {"start": start, "end": end})[0]
    return [int(records), int(dead), int(missing), int(stale), int(store.fetch_value(CORE_ROWS_SQL, (start, end)))]


def core_reflects_raw(store: PostgresStore, start: dt.date, end: dt.date, run_id: str | None = None) -> dg.AssetCheckResult:
    """The check's result for partition dates in ``[start, end)``; for a window that is over, the
    last verdict stands while raw_data, unified_items and dead_letters did not change
    (:mod:`kingtavo_pipeline.storage.changes`)."""
    evaluated_at = None
    if end > dt.datetime.now(dt.timezone.utc).date():
        counts = _reflects_counts(store, start, end)
    else:
        counts, evaluated_at = remembered(
            store, f"core/unified_items/{CORE_REFLECTS_RAW_CHECK}", f"{start}/{end}",
            lambda: fingerprint_of(CORE_REFLECTS_RAW_SQL + CORE_ROWS_SQL, [postgres_fingerprint(store, READS)]),
            lambda: _reflects_counts(store, start, end), encode=list, decode=lambda v, _at: list(v), run_id=run_id)
    records, dead, missing, stale, core_rows = counts
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
            **({"evaluated_at": dg.MetadataValue.text(evaluated_at.isoformat())} if evaluated_at else {}),
        },
    )
