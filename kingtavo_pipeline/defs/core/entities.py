"""``core/customers``, ``core/products``, ``core/orders``, ``core/order_lines``: API records mapped by
their declarative mappings (``mappings/*.yaml``) and upserted into the core entity tables.

Like ``core/unified_items``, core is incremental: per raw source and day it takes the
observations landed after what it took last (``raw_partitions``), maps each entity's newest
observations in bounded batches, and upserts them so that the newer version wins
((``source_updated_at``, ``observed_seq``): the API's own modification time, else the order we
observed records in; never a business date). A mapped order brings its lines, which carry the
order's version: when an order is written, lines older than its current version (removed from
the order) are deleted. Records that fail mapping go to ``dead_letters`` with the field and the
reason; the batch goes on. One transaction per source holds the upserts, the dead letters and
the move of what core has taken.
"""


import hashlib

import dagster as dg
import pandas as pd
from psycopg import sql

from kingtavo_pipeline.defs.core.assets import TAKEN, WINDOW_PROGRESS, CoreConfig, with_payloads
from kingtavo_pipeline.defs.ingest.api import api_raw_assets, split_raw_source_name
from kingtavo_pipeline.defs.ingest.assets import OWNER, SOURCES
from kingtavo_pipeline.defs.partitions import daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.runs import partition_label, utc_window
from kingtavo_pipeline.defs.webhooks.assets import WEBHOOK_EVENTS_KEY
from kingtavo_pipeline.transform.entities import ENTITY_BATCH_ROWS, ENTITY_TABLES, EntityMapper
from kingtavo_pipeline.storage.bookkeeping import (
    etl_run,
    get_source_fingerprint,
    record_dead_letters,
    requeue,
    resolve_mapped_dead_letters,
    set_source_fingerprint,
)
from kingtavo_pipeline.storage.upsert import newer_sql, upsert

ENTITY_KEY = ("source_type", "source_name", "merchant_id", "source_id")
VERSION_COLUMNS = ("source_updated_at", "observed_seq")
ROW_VERSION = {"row_version": "nextval('core_row_version_seq')"}

# The raw sources (one per merchant for Salla) of the configured API sources with days to take.
RAW_SOURCES = """
SELECT DISTINCT source_name FROM raw_partitions
WHERE source_type = %(source_type)s AND (source_name = %(name)s OR source_name LIKE %(prefix)s)
  AND partition_date >= %(start)s AND partition_date < %(end)s
"""

# The newest untaken observation of each record (entity, id) in the window, with its payload.
# Ids sort byte-wise (COLLATE "C"): the order means nothing here, equality is the same in every
# deterministic collation, and a byte-wise sort is cheaper than the database's own collation.
RAW_FOR_WINDOW = """
SELECT DISTINCT ON (r.entity, r.source_id COLLATE "C")
       r.id AS raw_data_id, r.entity, r.source_id, r.partition_date, r.observed_seq, r.payload::text AS payload
FROM raw_data r
JOIN unnest(%(days)s::date[], %(taken)s::bigint[], %(landed)s::bigint[]) AS v(partition_date, taken_seq, landed_seq)
  ON v.partition_date = r.partition_date
WHERE r.source_type = %(source_type)s AND r.source_name = %(source_name)s
  AND r.observed_seq > v.taken_seq AND r.observed_seq <= v.landed_seq
ORDER BY r.entity, r.source_id COLLATE "C", r.observed_seq DESC
"""

# Lines of the orders just written that are older than their order's current version: they were
# not part of it (removed from the order).
STALE_LINES = """
DELETE FROM order_lines l USING orders o
WHERE o.source_type = %(source_type)s AND o.source_name = %(source_name)s AND o.merchant_id = %(merchant_id)s
  AND o.source_id = ANY(%(orders)s)
  AND l.source_type = o.source_type AND l.source_name = o.source_name AND l.merchant_id = o.merchant_id
  AND l.order_source_id = o.source_id AND ({older})
"""


def _stale_lines_sql() -> sql.Composable:
    # the line is older than the order when the order's version is newer than the line's
    return sql.SQL(STALE_LINES).format(older=newer_sql(VERSION_COLUMNS, new="o", old="l"))


def mapping_fingerprint(mapper: EntityMapper) -> str:
    return hashlib.sha256(mapper.fingerprint().encode()).hexdigest()


CORE_ENTITY_SPECS = [
    dg.AssetSpec(
        key=["core", table],
        description=f"{table.replace('_', ' ').capitalize()} of every API source (PostgreSQL public.{table}), "
        "upserted on (source_type, source_name, merchant_id, source_id); the newer source version wins.",
        # webhook events land Salla entities as raw observations too (raw/webhooks/events)
        deps=[a.key for a in api_raw_assets] + ([WEBHOOK_EVENTS_KEY] if SOURCES.salla or SOURCES.printavo else []),
        group_name="core",
        kinds={"postgres", "pandas"},
        owners=[OWNER],
        metadata={"partition_expr": "partition_date", "schema": "public", "dagster/table_name": f"public.{table}"},
        tags={"layer": "core"},
    )
    for table in ENTITY_TABLES
]


@dg.multi_asset(
    name="core_entities",
    specs=CORE_ENTITY_SPECS,
    partitions_def=daily_partitions,
    backfill_policy=single_run_backfill,
    can_subset=False,
)
def core_entities(context: dg.AssetExecutionContext, config: CoreConfig, postgres: PostgresResource):
    start, end = utc_window(context)
    store = postgres.store()
    run_id = context.run.run_id
    written = {table: {"inserted": 0, "updated": 0} for table in ENTITY_TABLES}
    stale_lines = resolved = 0
    with etl_run(store, run_id=run_id, asset_key="core/entities", partition_key=partition_label(context)) as counts:
        for source in SOURCES.api():
            mapper = EntityMapper.for_source(source)
            fingerprint = mapping_fingerprint(mapper)
            window = {"source_type": source.source_type, "name": source.name, "prefix": f"{source.name}/%",
                      "start": start.date(), "end": end.date()}
            with store.transaction() as conn:
                mapping_key = f"{source.source_type}/{source.name}"
                changed = get_source_fingerprint(conn, "core", mapping_key, "entity_mapping") != fingerprint
                raw_names = [r[0] for r in conn.execute(RAW_SOURCES, window).fetchall()]
                if changed and get_source_fingerprint(conn, "core", mapping_key, "entity_mapping") is not None:
                    for raw_name in raw_names:
                        requeue(conn, source.source_type, raw_name)
                if config.full_refresh:
                    for raw_name in raw_names:
                        requeue(conn, source.source_type, raw_name, window["start"], window["end"])
                set_source_fingerprint(conn, "core", mapping_key, "entity_mapping", fingerprint)
            for raw_name in raw_names:
                _, merchant_id = split_raw_source_name(raw_name)
                params = {"source_type": source.source_type, "source_name": raw_name,
                          "start": window["start"], "end": window["end"]}
                with store.transaction() as conn:
                    progress = conn.execute(WINDOW_PROGRESS, params).fetchall()
                    if not progress:
                        continue
                    params.update(days=[p[0] for p in progress], taken=[p[1] for p in progress],
                                  landed=[p[2] for p in progress], seqs=[p[2] for p in progress])
                    with conn.cursor(name=f"raw_{source.source_type}") as cursor:
                        cursor.execute(RAW_FOR_WINDOW, params)
                        names = None
                        while rows := cursor.fetchmany(ENTITY_BATCH_ROWS):
                            names = names or [d.name for d in cursor.description]
                            raw = pd.DataFrame(rows, columns=names)
                            counts.extracted += len(raw)
                            for entity, part in raw.groupby("entity", sort=False):
                                result = mapper.map(str(entity), part.assign(merchant_id=merchant_id))
                                tables = result.tables
                                for table in ENTITY_TABLES:  # customers, products, orders, order_lines: parents first
                                    frame = tables.get(table)
                                    if frame is None or frame.empty:
                                        continue
                                    frame = frame.assign(source_type=source.source_type, source_name=source.name,
                                                         merchant_id=merchant_id)
                                    done = upsert(conn, table, frame, ENTITY_KEY, version_column=VERSION_COLUMNS,
                                                  set_expressions=ROW_VERSION)
                                    written[table]["inserted"] += done.inserted
                                    written[table]["updated"] += done.updated
                                    counts.loaded += len(frame)
                                orders = tables.get("orders")
                                if orders is not None and not orders.empty:
                                    stale_lines += conn.execute(_stale_lines_sql(), {
                                        "source_type": source.source_type, "source_name": source.name,
                                        "merchant_id": merchant_id, "orders": orders["source_id"].tolist()}).rowcount
                                rejects = result.rejects
                                if not rejects.empty:
                                    with_payloads(conn, rejects)
                                    counts.failed += record_dead_letters(
                                        conn, rejects, stage="map", source_type=source.source_type,
                                        source_name=raw_name, entity=str(entity), run_id=run_id)
                                mapped_ids = result.mapped_raw_ids
                                if mapped_ids:
                                    resolved += resolve_mapped_dead_letters(conn, mapped_ids, run_id)
                    conn.execute(TAKEN, params)
    if counts.failed:
        context.log.warning(f"{counts.failed} record(s) newly failed mapping and went to dead_letters")
    for table in ENTITY_TABLES:  # the checks and the warehouse read them next
        store.analyze_if_grown(table, written[table]["inserted"] + written[table]["updated"])
    for table in ENTITY_TABLES:
        yield dg.MaterializeResult(
            asset_key=["core", table],
            metadata={
                "records_inserted": dg.MetadataValue.int(written[table]["inserted"]),
                "records_updated": dg.MetadataValue.int(written[table]["updated"]),
                **({"stale_lines_deleted": dg.MetadataValue.int(stale_lines)} if table == "order_lines" else {}),
                "dead_letters_new": dg.MetadataValue.int(counts.failed),
                "dead_letters_resolved": dg.MetadataValue.int(resolved),
            },
        )


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[core_entities] if SOURCES.api() else [])
