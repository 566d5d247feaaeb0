"""``core/unified_items``: raw CSV and feed records mapped to the unified schema and upserted.

One PostgreSQL transaction per run holds the upsert, the dead letters of rejected records and
the ``processed_at`` mark on the raw rows, so none of them can get ahead of the others.
"""

import dagster as dg
import pandas as pd

from kingtavo_pipeline.defs.core.checks import KEYS_CHECK, keys_check_result
from kingtavo_pipeline.defs.ingest.assets import OWNER, SOURCES, raw_assets
from kingtavo_pipeline.defs.partitions import daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.runs import partition_label, utc_window
from kingtavo_pipeline.storage.bookkeeping import etl_run, record_dead_letters
from kingtavo_pipeline.storage.upsert import upsert
from kingtavo_pipeline.transform.unified import map_to_unified

UNIFIED_KEY = ("source_type", "source_name", "external_id")
READ_CHUNK_ROWS = 50_000

# The latest raw version of each record in the window; chunks stream from a server-side cursor.
RAW_FOR_WINDOW = """
SELECT DISTINCT ON (source_name, source_id)
       id AS raw_data_id, source_type, source_name, entity, source_id, partition_date, payload::text AS payload
FROM raw_data
WHERE source_type = %(source_type)s AND source_name = %(source_name)s
  AND partition_date >= %(start)s AND partition_date < %(end)s
ORDER BY source_name, source_id, extracted_at DESC, id DESC
"""




@dg.asset(
    key=["core", "unified_items"],
    description="Items from every CSV and feed source in the unified schema (PostgreSQL public.unified_items), "
    "upserted on (source_type, source_name, external_id); rejects go to dead_letters.",
    deps=[a.key for a in raw_assets],
    group_name="core",
    kinds={"postgres", "pandas"},
    owners=[OWNER],
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    io_manager_key="postgres_io_manager",
    metadata={"partition_expr": "partition_date", "schema": "public"},
    check_specs=[dg.AssetCheckSpec(KEYS_CHECK, asset=["core", "unified_items"], blocking=True,
                                   description="Keys present and unique in the partition.")],
    tags={"layer": "core"},
)
def core_unified_items(context: dg.AssetExecutionContext, postgres: PostgresResource):
    start, end = utc_window(context)
    store = postgres.store()
    inserted = updated = 0
    with etl_run(store, run_id=context.run.run_id, asset_key="core/unified_items",
                 partition_key=partition_label(context)) as counts:
        with store.transaction() as conn:
            for source in SOURCES.all():
                source_type, source_name = source.source_type, source.name
                params = {"source_type": source_type, "source_name": source_name,
                          "start": start.date(), "end": end.date()}
                with conn.cursor(name=f"raw_{source_type}_{source_name}") as cursor:
                    cursor.execute(RAW_FOR_WINDOW, params)
                    names = None
                    while rows := cursor.fetchmany(READ_CHUNK_ROWS):
                        names = names or [d.name for d in cursor.description]
                        raw = pd.DataFrame(rows, columns=names)
                        counts.extracted += len(raw)
                        result = map_to_unified(raw, source.field_map, dayfirst=getattr(source, "dayfirst", False),
                                                date_format=getattr(source, "date_format", None))
                        written = upsert(conn, "unified_items", result.valid, UNIFIED_KEY)
                        entity = str(raw["entity"].iloc[0])
                        record_dead_letters(conn, result.rejects, stage="map", source_type=source_type,
                                            source_name=source_name, entity=entity, run_id=context.run.run_id)
                        conn.execute("UPDATE raw_data SET processed_at = now() WHERE id = ANY(%s)",
                                     (raw["raw_data_id"].tolist(),))
                        counts.loaded += len(result.valid)
                        counts.failed += len(result.rejects)
                        inserted += written.inserted
                        updated += written.updated
    if counts.failed:
        context.log.warning(f"{counts.failed} record(s) failed mapping/validation and went to dead_letters")

    keys_check = keys_check_result(store, start, end)
    yield dg.MaterializeResult(
        metadata={
            "dagster/table_name": "public.unified_items",
            "dagster/partition_row_count": keys_check.metadata["row_count"],
            "dagster/row_count": dg.MetadataValue.int(store.fetch_value("SELECT count(*) FROM unified_items")),
            "records_mapped": dg.MetadataValue.int(counts.loaded),
            "records_inserted": dg.MetadataValue.int(inserted),
            "records_updated": dg.MetadataValue.int(updated),
            "dead_letters": dg.MetadataValue.int(counts.failed),
        }
    )
    yield keys_check


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[core_unified_items])
