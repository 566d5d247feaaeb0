"""``core/unified_items``: raw CSV and feed records mapped to the unified schema and upserted.

Which version wins: the newest observation of a record (``raw_data.observed_seq``), unless the
source maps its own modification time (``updated_at``), which then leads; never a business date.
Core is incremental: it maps the observations landed since it last took each day
(``raw_partitions``). One PostgreSQL transaction per run holds the upsert, the dead letters of
rejected records, the resolution of dead letters whose records now mapped, and the move of what
core has taken, so none of them can get ahead of the others.
"""

import hashlib
import json
from collections.abc import Iterator
from contextlib import closing

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from kingtavo_pipeline.defs.core.checks import CORE_REFLECTS_RAW_CHECK, core_reflects_raw
from kingtavo_pipeline.defs.ingest.assets import OWNER, SOURCES, raw_assets
from kingtavo_pipeline.defs.partitions import daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.runs import partition_label, utc_window
from kingtavo_pipeline.io_managers.slices import rebatch
from kingtavo_pipeline.storage.bookkeeping import (
    etl_run,
    get_source_fingerprint,
    record_dead_letters,
    requeue,
    resolve_mapped_dead_letters,
    set_source_fingerprint,
)
from kingtavo_pipeline.storage.postgres import copy_out_batches
from kingtavo_pipeline.storage.prefetch import prefetch
from kingtavo_pipeline.storage.staging import Stager
from kingtavo_pipeline.storage.upsert import Staged, upsert
from kingtavo_pipeline.transform.unified import (
    KEY_PREFIX,
    MAPPING_VERSION,
    METADATA_COLUMN,
    PAYLOAD_ERROR_COLUMN,
    VERSION_COLUMNS,
    MappingResult,
    extraction_sql,
    map_to_unified,
    rename_extracted,
)

UNIFIED_KEY = ("source_type", "source_name", "external_id")
READ_CHUNK_ROWS = 50_000
# every accepted change gets a new row version: the warehouse's ReplacingMergeTree _version
ROW_VERSION = {"row_version": "nextval('unified_items_row_version_seq')"}

# Core is incremental: per source and day it takes the observations landed after what it took last
# (raw_partitions.taken_seq) up to the newest landed when the run looked (landed_seq). A row landed
# after that look has a higher number and waits for the next run.
WINDOW_PROGRESS = """
SELECT partition_date, taken_seq, landed_seq FROM raw_partitions
WHERE source_type = %(source_type)s AND source_name = %(source_name)s
  AND partition_date >= %(start)s AND partition_date < %(end)s AND landed_seq > taken_seq
"""
TAKEN = """
UPDATE raw_partitions p SET taken_seq = greatest(p.taken_seq, v.landed_seq), taken_at = now()
FROM unnest(%(days)s::date[], %(seqs)s::bigint[]) AS v(partition_date, landed_seq)
WHERE p.source_type = %(source_type)s AND p.source_name = %(source_name)s AND p.partition_date = v.partition_date
"""

# The newest untaken observation of each record in the window, its payload decoded by the database
# into the columns the mapping reads (no JSON parsed in Python). It streams out through COPY
# (parsed by Arrow) on a connection of its own, read ahead while the previous chunk is mapped and
# upserted. Ids sort byte-wise (COLLATE "C"): the order means nothing here, equality is the same
# in every deterministic collation, and a byte-wise sort is cheaper than the database's own one.
RAW_FOR_WINDOW = """
SELECT DISTINCT ON (r.source_id COLLATE "C")
       r.id AS raw_data_id, r.source_type, r.source_name, r.entity, r.source_id, r.partition_date,
       r.observed_seq, (r.extracted_at AT TIME ZONE 'UTC') AS extracted_at, {extracted}
FROM raw_data r
JOIN unnest({days}::date[], {taken}::bigint[], {landed}::bigint[]) AS v(partition_date, taken_seq, landed_seq)
  ON v.partition_date = r.partition_date
WHERE r.source_type = {source_type} AND r.source_name = {source_name}
  AND r.observed_seq > v.taken_seq AND r.observed_seq <= v.landed_seq
ORDER BY r.source_id COLLATE "C", r.observed_seq DESC
"""
RAW_WINDOW_COLUMNS = [("raw_data_id", pa.int64()), ("source_type", pa.string()), ("source_name", pa.string()),
                      ("entity", pa.string()), ("source_id", pa.string()), ("partition_date", pa.date32()),
                      ("observed_seq", pa.int64()), ("extracted_at", pa.timestamp("us"))]
# the window's newest observations are sorted by record in the server: in memory up to this much
READ_WORK_MEM = "128MB"


def raw_window_frames(store, query: sql.Composable, schema: pa.Schema, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The rows of ``query`` (``RAW_FOR_WINDOW``) in frames of ``chunk_rows``, read through COPY in
    a transaction of their own (raw_data only: the window's bounds come as literals)."""
    with store.transaction() as conn:
        conn.execute(f"SET LOCAL work_mem = '{READ_WORK_MEM}'")
        batches = copy_out_batches(conn, query, schema)
        try:
            for batch in rebatch(batches, chunk_rows):
                batch = batch.set_column(batch.schema.get_field_index("extracted_at"), "extracted_at",
                                         pc.cast(batch.column("extracted_at"), pa.timestamp("us", "UTC")))
                yield batch.to_pandas()
        finally:
            batches.close()  # end the COPY before the transaction ends (closed early)


OPEN_MAP_DEAD_LETTERS = """
SELECT EXISTS (SELECT 1 FROM dead_letters WHERE stage = 'map' AND status IN ('open', 'retrying')
               AND source_type = %(source_type)s AND source_name = %(source_name)s)
"""


class CoreConfig(dg.Config):
    full_refresh: bool = False
    """Map every record of the window again, not only the observations no core run has taken."""


def _mapped(frames: Iterator[pd.DataFrame], source, stager: Stager) -> Iterator[tuple[pd.DataFrame, MappingResult, Staged]]:
    """Each chunk read, mapped and its valid rows staged (all in the read-ahead thread)."""
    fields = source.field_map
    for chunk in frames:
        raw = rename_extracted(chunk, fields)
        result = map_to_unified(raw, fields, dayfirst=getattr(source, "dayfirst", False),
                                date_format=getattr(source, "date_format", None))
        yield raw, result, stager.stage(result.valid)


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
    with etl_run(store, run_id=run_id, asset_key="core/unified_items", partition_key=partition_label(context)) as counts, \
            Stager(store, "unified_items", UNIFIED_KEY) as stager:  # closed after the transaction below
        with store.transaction() as conn:
            for source in SOURCES.all():
                source_type, source_name = source.source_type, source.name
                params = {"source_type": source_type, "source_name": source_name,
                          "start": start.date(), "end": end.date()}
                mapping = mapping_fingerprint(source)
                if config.full_refresh:
                    requeued[source_name] = requeue(conn, source_type, source_name, params["start"], params["end"])
                elif get_source_fingerprint(conn, "core", f"{source_type}/{source_name}", "mapping") != mapping:
                    # records mapped under another mapping: every day of the source is mapped again
                    requeued[source_name] = requeue(conn, source_type, source_name)
                set_source_fingerprint(conn, "core", f"{source_type}/{source_name}", "mapping", mapping)
                progress = conn.execute(WINDOW_PROGRESS, params).fetchall()
                if not progress:
                    continue  # nothing landed in the window since core last took it
                params.update(days=[p[0] for p in progress], taken=[p[1] for p in progress],
                              landed=[p[2] for p in progress], seqs=[p[2] for p in progress])
                resolve = conn.execute(OPEN_MAP_DEAD_LETTERS, params).fetchone()[0]
                fields = source.field_map
                items, item_params = extraction_sql(fields)
                # COPY takes no parameters: every value is a literal
                query = sql.SQL(RAW_FOR_WINDOW.replace("{extracted}", items.replace("%s", "{}"))).format(
                    *(sql.Literal(p) for p in item_params),
                    **{k: sql.Literal(params[k]) for k in ("days", "taken", "landed", "source_type", "source_name")})
                schema = pa.schema([*RAW_WINDOW_COLUMNS, (PAYLOAD_ERROR_COLUMN, pa.string()), (METADATA_COLUMN, pa.string()),
                                    *((f"{KEY_PREFIX}{i}", pa.string()) for i in range(len(dict.fromkeys(fields.values()))))])
                # read, mapped and staged a chunk ahead, while this transaction upserts the previous one
                mapped = prefetch(_mapped(raw_window_frames(store, query, schema, READ_CHUNK_ROWS), source, stager),
                                  name="core-read")
                with closing(mapped):
                    for raw, result, staged in mapped:
                        counts.extracted += len(raw)
                        with_payloads(conn, result.rejects)
                        written = upsert(conn, "unified_items", staged, UNIFIED_KEY,
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
                conn.execute(TAKEN, params)
    if counts.failed:
        context.log.warning(f"{counts.failed} record(s) newly failed mapping/validation and went to dead_letters")
    for name, n in requeued.items():
        if n:
            context.log.info(f"{name}: {n} day(s) queued to be mapped again "
                             f"({'full refresh' if config.full_refresh else 'its mapping changed'})")

    store.analyze_if_grown("unified_items", inserted + updated)  # the check and the warehouse read them next
    check = core_reflects_raw(store, start.date(), end.date(), run_id=run_id)
    yield dg.MaterializeResult(
        metadata={
            "dagster/table_name": "public.unified_items",
            "dagster/partition_row_count": check.metadata["core_rows"],
            "records_mapped": dg.MetadataValue.int(counts.loaded),
            "records_inserted": dg.MetadataValue.int(inserted),
            "records_updated": dg.MetadataValue.int(updated),
            "dead_letters_new": dg.MetadataValue.int(counts.failed),
            "dead_letters_resolved": dg.MetadataValue.int(resolved),
            "days_requeued": dg.MetadataValue.int(sum(requeued.values())),
        }
    )
    yield check


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[core_unified_items])
