"""``core/unified_items``: raw CSV and feed records mapped to the unified schema and upserted.

Which version wins: the newest observation of a record (``raw_data.observed_seq``), unless the
source maps its own modification time (``updated_at``), which then leads; never a business date.
One PostgreSQL transaction per run holds the upsert, the dead letters of rejected records, the
resolution of dead letters whose records now mapped, and the ``processed_at`` mark on the raw rows
taken, so none of them can get ahead of the others.
"""

import hashlib
import json

import dagster as dg
import pandas as pd
from psycopg import sql

from kingtavo_pipeline.defs.core.checks import CORE_REFLECTS_RAW_CHECK, core_reflects_raw
from kingtavo_pipeline.defs.ingest.assets import OWNER, SOURCES, raw_assets
from kingtavo_pipeline.defs.partitions import daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.runs import partition_label, utc_window
from kingtavo_pipeline.storage.bookkeeping import (
    etl_run,
    get_source_fingerprint,
    record_dead_letters,
    resolve_mapped_dead_letters,
    set_source_fingerprint,
)
from kingtavo_pipeline.storage.upsert import upsert
from kingtavo_pipeline.transform.unified import (
    MAPPING_VERSION,
    VERSION_COLUMNS,
    extraction_sql,
    map_to_unified,
    rename_extracted,
)

UNIFIED_KEY = ("source_type", "source_name", "external_id")
READ_CHUNK_ROWS = 50_000
# every accepted change gets a new row version: the warehouse's ReplacingMergeTree _version
ROW_VERSION = {"row_version": "nextval('unified_items_row_version_seq')"}

# Core is incremental: a run takes the window's observations no core run has taken yet. It marks
# them first, with the transaction's own now(), and then reads exactly the rows it marked; a row
# landed meanwhile stays unmarked for the next run (the late-records sensor asks for its day).
MARK_TAKEN = """
UPDATE raw_data SET processed_at = now()
WHERE source_type = %(source_type)s AND source_name = %(source_name)s
  AND partition_date >= %(start)s AND partition_date < %(end)s AND processed_at IS NULL
"""
# A full refresh of the window (run config), or a changed mapping (every day of the source).
REQUEUE_WINDOW = """
UPDATE raw_data SET processed_at = NULL
WHERE source_type = %(source_type)s AND source_name = %(source_name)s
  AND partition_date >= %(start)s AND partition_date < %(end)s AND processed_at IS NOT NULL
"""
REQUEUE_SOURCE = """
UPDATE raw_data SET processed_at = NULL
WHERE source_type = %(source_type)s AND source_name = %(source_name)s AND processed_at IS NOT NULL
"""

# The newest observation of each record in the window, its payload decoded by the database into
# the columns the mapping reads (no JSON parsed in Python); chunks stream from a server-side cursor.
RAW_FOR_WINDOW = """
SELECT DISTINCT ON (source_id)
       id AS raw_data_id, source_type, source_name, entity, source_id, partition_date, observed_seq, extracted_at,
       {extracted}
FROM raw_data
WHERE source_type = %(source_type)s AND source_name = %(source_name)s
  AND partition_date >= %(start)s AND partition_date < %(end)s AND processed_at = now()
ORDER BY source_id, observed_seq DESC
"""

OPEN_MAP_DEAD_LETTERS = """
SELECT EXISTS (SELECT 1 FROM dead_letters WHERE stage = 'map' AND status IN ('open', 'retrying')
               AND source_type = %(source_type)s AND source_name = %(source_name)s)
"""


class CoreConfig(dg.Config):
    full_refresh: bool = False
    """Map every record of the window again, not only the observations no core run has taken."""


def mapping_fingerprint(source) -> str:
    """What decides how a source's records map: a change re-maps all of them."""
    settings = {"fields": source.field_map, "dayfirst": getattr(source, "dayfirst", False),
                "date_format": getattr(source, "date_format", None), "mapping": MAPPING_VERSION}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def with_payloads(conn, rejects: pd.DataFrame) -> None:
    """Dead letters keep the payload: fetch it for the rejects only (the read did not carry it)."""
    if rejects.empty:
        return
    ids = rejects["raw_data_id"].astype("int64").tolist()
    text = dict(conn.execute("SELECT id, payload::text FROM raw_data WHERE id = ANY(%s)", (ids,)).fetchall())
    rejects["payload"] = [text.get(i) for i in ids]


@dg.asset(
    key=["core", "unified_items"],
    description="Items from every CSV and feed source in the unified schema (PostgreSQL public.unified_items), "
    "upserted on (source_type, source_name, external_id); the newest observation wins; rejects go to dead_letters.",
    deps=[a.key for a in raw_assets],
    group_name="core",
    kinds={"postgres", "pandas"},
    owners=[OWNER],
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    io_manager_key="postgres_io_manager",
    metadata={"partition_expr": "partition_date", "schema": "public"},
    check_specs=[dg.AssetCheckSpec(CORE_REFLECTS_RAW_CHECK, asset=["core", "unified_items"], blocking=True,
                                   description="Every record landed in the partition is in core at its newest "
                                   "version, or dead-lettered.")],
    tags={"layer": "core"},
)
def core_unified_items(context: dg.AssetExecutionContext, config: CoreConfig, postgres: PostgresResource):
    start, end = utc_window(context)
    store = postgres.store()
    run_id = context.run.run_id
    inserted = updated = resolved = 0
    requeued: dict[str, int] = {}
    with etl_run(store, run_id=run_id, asset_key="core/unified_items", partition_key=partition_label(context)) as counts:
        with store.transaction() as conn:
            for source in SOURCES.all():
                source_type, source_name = source.source_type, source.name
                params = {"source_type": source_type, "source_name": source_name,
                          "start": start.date(), "end": end.date()}
                mapping = mapping_fingerprint(source)
                if config.full_refresh:
                    requeued[source_name] = conn.execute(REQUEUE_WINDOW, params).rowcount
                elif get_source_fingerprint(conn, "core", f"{source_type}/{source_name}", "mapping") != mapping:
                    # records mapped under another mapping: every day of the source is mapped again
                    requeued[source_name] = conn.execute(REQUEUE_SOURCE, params).rowcount
                set_source_fingerprint(conn, "core", f"{source_type}/{source_name}", "mapping", mapping)
                conn.execute(MARK_TAKEN, params)
                resolve = conn.execute(OPEN_MAP_DEAD_LETTERS, params).fetchone()[0]
                fields = source.field_map
                items, item_params = extraction_sql(fields)
                query = sql.SQL(RAW_FOR_WINDOW.replace("{extracted}", items.replace("%s", "{}"))).format(
                    *(sql.Literal(p) for p in item_params))
                with conn.cursor(name=f"raw_{source_type}_{source_name}") as cursor:
                    cursor.execute(query, params)
                    names = None
                    while rows := cursor.fetchmany(READ_CHUNK_ROWS):
                        names = names or [d.name for d in cursor.description]
                        raw = rename_extracted(pd.DataFrame(rows, columns=names), fields)
                        counts.extracted += len(raw)
                        result = map_to_unified(raw, fields, dayfirst=getattr(source, "dayfirst", False),
                                                date_format=getattr(source, "date_format", None))
                        with_payloads(conn, result.rejects)
                        written = upsert(conn, "unified_items", result.valid, UNIFIED_KEY,
                                         version_column=VERSION_COLUMNS, set_expressions=ROW_VERSION)
                        entity = str(raw["entity"].iloc[0])
                        counts.failed += record_dead_letters(
                            conn, result.rejects, stage="map", source_type=source_type,
                            source_name=source_name, entity=entity, run_id=run_id)
                        if resolve:
                            resolved += resolve_mapped_dead_letters(conn, result.valid["raw_data_id"].tolist(), run_id)
                        counts.loaded += len(result.valid)
                        inserted += written.inserted
                        updated += written.updated
    if counts.failed:
        context.log.warning(f"{counts.failed} record(s) newly failed mapping/validation and went to dead_letters")
    for name, n in requeued.items():
        if n:
            context.log.info(f"{name}: {n} record(s) queued to be mapped again "
                             f"({'full refresh' if config.full_refresh else 'its mapping changed'})")

    check = core_reflects_raw(store, start.date(), end.date())
    yield dg.MaterializeResult(
        metadata={
            "dagster/table_name": "public.unified_items",
            "dagster/partition_row_count": check.metadata["core_rows"],
            "records_mapped": dg.MetadataValue.int(counts.loaded),
            "records_inserted": dg.MetadataValue.int(inserted),
            "records_updated": dg.MetadataValue.int(updated),
            "dead_letters_new": dg.MetadataValue.int(counts.failed),
            "dead_letters_resolved": dg.MetadataValue.int(resolved),
            "records_requeued": dg.MetadataValue.int(sum(requeued.values())),
        }
    )
    yield check


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[core_unified_items])
