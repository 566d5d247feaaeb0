"""``raw/<printavo|salla|strapi>/<entity>``: API records landed in ``raw_data``.

One asset per configured API source and entity. A run pulls the records created in its window
(a partition, or a range in a single-run backfill) through the source's connector and lands each
page as it arrives, through the same landing as files and feeds (``land_source``): every record
under its own day, malformed or undated ones to ``dead_letters``. Salla is partitioned by day and
merchant (merchants are dynamic partitions: ``kingtavo merchants add``); its raw records are kept
per merchant as source ``<name>/<merchant id>``. A Salla orders pull that dies (a crash, a kill)
resumes on the rerun of the same window after the last page it committed (``orders:resume:<window>``
in ``etl_checkpoints``, moved after each page commits, deleted when the window is done).

``api_changes_job`` pulls what changed since each entity's checkpoint (``<entity>:changes`` in
``etl_checkpoints``, stored with the page it follows), lands it under its own days, and leaves
core and the warehouse to the late-records sensor, which picks up every day that received records.
"""


from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from types import SimpleNamespace

import dagster as dg
import orjson
import pandas as pd

from kingtavo_pipeline.connectors.base import Page
from kingtavo_pipeline.defs.ingest.assets import (
    CHANGES_SUFFIX,
    OWNER,
    RESUME_CHECKPOINT,
    SOURCES,
    land_source,
    rejected,
)
from kingtavo_pipeline.defs.partitions import FIRST_DAY, daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.runs import utc_window
from kingtavo_pipeline.extract.http import HttpError
from kingtavo_pipeline.sources.config import PrintavoSource, SallaSource, SourceConfigError, StrapiSource
from kingtavo_pipeline.storage.bookkeeping import get_checkpoint, payload_hash, set_checkpoint

SALLA_MERCHANTS = dg.DynamicPartitionsDefinition(name="salla_merchants")
salla_partitions = dg.MultiPartitionsDefinition({"date": daily_partitions, "merchant": SALLA_MERCHANTS})

ApiSource = PrintavoSource | SallaSource | StrapiSource


def pool_for(source: ApiSource) -> str:
    """One concurrency pool per rate-limited API, so parallel partitions share its limit."""
    return f"{source.source_type}_api"


def raw_source_name(source: ApiSource, merchant_id: str = "") -> str:
    """The ``raw_data.source_name`` of a source's records: ``<name>/<merchant>`` for many merchants."""
    return f"{source.name}/{merchant_id}" if merchant_id else source.name


def split_raw_source_name(name: str) -> tuple[str, str]:
    """``salla/1234`` -> (``salla``, ``1234``); ``printavo`` -> (``printavo``, '')."""
    source_name, _, merchant_id = name.partition("/")
    return source_name, merchant_id


def pages_to_frames(pages: Iterable[Page], landed: Callable[[Page, pd.DataFrame], None] | None = None
                    ) -> Iterator[pd.DataFrame]:
    """Connector pages as the batches ``land_source`` lands: one frame per page, its resume
    position in ``attrs`` so it is stored in the page's own transaction.

    ``landed(page, frame)`` is called when the consumer asks for the batch after the page's
    (``land_source`` does so once the page is committed; a consumer that reads ahead may ask
    earlier, so the callback checks what is committed rather than trusting the timing)."""
    for page in pages:
        records = page.records
        frame = pd.DataFrame(
            {
                "source_id": pd.Series([r.source_id for r in records], dtype=object),
                # sorted keys: the same content always hashes the same
                "payload": pd.Series([orjson.dumps(r.payload, option=orjson.OPT_SORT_KEYS).decode()
                                      for r in records], dtype=object),
                "occurred_at": pd.to_datetime(pd.Series([r.occurred_at for r in records], dtype=object), utc=True),
                "error": pd.Series([None if r.source_id else "the record has no id" for r in records], dtype=object),
            }
        )
        frame.attrs[RESUME_CHECKPOINT] = page.checkpoint
        yield frame
        if landed is not None:
            landed(page, frame)


# How many of a page's (source_id, payload_hash) observations are committed in raw_data.
COMMITTED = """
SELECT count(*) FROM raw_data r
JOIN unnest(%(ids)s::text[], %(hashes)s::text[]) AS k(source_id, payload_hash)
  ON r.source_id = k.source_id AND r.payload_hash = k.payload_hash
WHERE r.source_type = %(source_type)s AND r.source_name = %(source_name)s AND r.entity = %(entity)s
"""


def _window_resume_key(entity: str, start: datetime, end: datetime) -> str:
    """The ``etl_checkpoints.entity`` holding how far a window's pull got (one per window, so
    concurrent runs of other windows do not share it)."""
    return f"{entity}:resume:{start.isoformat()}/{end.isoformat()}"


def _window_pages(connector, store, source: ApiSource, entity: str, merchant: str, start: datetime,
                  end: datetime) -> Iterator[pd.DataFrame]:
    """The window's pages as frames. A connector that can resume a window (Salla orders) gets the
    position of the last page an earlier run of the same window committed before it died; the
    position moves only past pages whose records are all committed in ``raw_data`` (checked, in
    page order), so it never points past data that was not committed. A completed pull deletes it."""
    if not (isinstance(source, SallaSource) and entity == "orders"):
        yield from pages_to_frames(connector.pull(entity, start=start, end=end))
        return
    name, key = raw_source_name(source, merchant), _window_resume_key(entity, start, end)
    with store.transaction() as conn:
        saved = get_checkpoint(conn, source.source_type, name, key)
    resume = orjson.loads(saved) if saved else None
    pending: list[tuple[dict, dict]] = []  # (position, the page's observations), oldest first

    def landed(page: Page, frame: pd.DataFrame) -> None:
        position = page.extra.get("resume")
        if not position:
            return
        # records without an id or a time, or dated before the first partition, go to dead_letters
        malformed, undated, too_old = rejected(frame, pd.Timestamp(FIRST_DAY, tz="UTC"))
        kept = frame[~malformed & ~undated & ~too_old].drop_duplicates(["source_id", "payload"])
        pending.append((position, {"ids": kept["source_id"].tolist(),
                                   "hashes": [payload_hash(p) for p in kept["payload"]]}))
        committed = None
        with store.transaction() as conn:
            while pending:
                keys = pending[0][1]
                found = conn.execute(COMMITTED, {**keys, "source_type": source.source_type, "source_name": name,
                                                 "entity": entity}).fetchone()[0]
                if found < len(keys["ids"]):
                    break
                committed = pending.pop(0)[0]
            if committed is not None:
                set_checkpoint(conn, source.source_type, name, key, orjson.dumps(committed).decode(),
                               len(page.records))

    yield from pages_to_frames(connector.pull(entity, start=start, end=end, resume=resume), landed)
    with store.transaction() as conn:
        conn.execute("DELETE FROM etl_checkpoints WHERE source_type = %s AND source_name = %s AND entity = %s",
                     (source.source_type, name, key))


def _landing_target(source: ApiSource, entity: str, merchant_id: str = "") -> SimpleNamespace:
    """What ``land_source`` needs to know of the source: its raw name, entity and date label."""
    return SimpleNamespace(name=raw_source_name(source, merchant_id), entity=entity, date_column="created time")


def _windows(context: dg.AssetExecutionContext) -> list[tuple[str, datetime, datetime]]:
    """(merchant, start, end) per merchant in the run; one window per merchant over its days."""
    if not isinstance(context.assets_def.partitions_def, dg.MultiPartitionsDefinition):
        start, end = utc_window(context)
        return [("", start.to_pydatetime(), end.to_pydatetime())]
    by_merchant: dict[str, list[str]] = {}
    for key in context.partition_keys:
        if not isinstance(key, dg.MultiPartitionKey):  # (MultiPartitionKey has no from_str)
            key = salla_partitions.get_partition_key_from_str(key)
        dims = key.keys_by_dimension
        by_merchant.setdefault(dims["merchant"], []).append(dims["date"])
    windows = []
    for merchant, days in sorted(by_merchant.items()):
        start = pd.Timestamp(min(days), tz="UTC")
        end = pd.Timestamp(max(days), tz="UTC") + pd.Timedelta(days=1)
        windows.append((merchant, start.to_pydatetime(), end.to_pydatetime()))
    return windows


def _api_raw_asset(source: ApiSource, entity: str) -> dg.AssetsDefinition:
    from kingtavo_pipeline.defs.ingest.connectors import connector_for

    multi = isinstance(source, SallaSource)

    @dg.asset(
        key=["raw", source.source_type, entity],
        description=f"{source.source_type.capitalize()} {entity} from {source.name} (created in the partition's "
        "window) landed in raw_data, page by page.",
        group_name=source.source_type,
        kinds={source.source_type, "postgres"},
        owners=[OWNER],
        partitions_def=salla_partitions if multi else daily_partitions,
        backfill_policy=single_run_backfill,
        pool=pool_for(source),
        metadata={"partition_expr": "partition_date", "source_entity": entity, "source_name": source.name},
        tags={"layer": "raw"},
    )
    def _asset(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
        results = []
        for merchant, start, end in _windows(context):
            try:
                store = postgres.store()
                with connector_for(source, entity, merchant, store) as connector:
                    results.append(land_source(context, postgres, source_type=source.source_type,
                                               source=_landing_target(source, entity, merchant),
                                               batches=_window_pages(connector, store, source, entity, merchant,
                                                                     start, end)))
            except (HttpError, SourceConfigError) as exc:
                # one clear line (the HTTP layer's message names the source, URL and status)
                raise dg.Failure(description=str(exc), allow_retries=not isinstance(exc, SourceConfigError)) from None
        if len(results) == 1:
            return results[0]
        metadata: dict = {"dagster/table_name": "raw_data"}
        for key in ("records_read", "records_new", "dead_letters", "dagster/partition_row_count"):
            metadata[key] = dg.MetadataValue.int(sum(int(r.metadata[key].value) for r in results))
        return dg.MaterializeResult(metadata=metadata)

    return _asset


def build_api_raw_assets(sources: Iterable[ApiSource]) -> list[dg.AssetsDefinition]:
    """One asset per source and entity, keyed ``raw/<type>/<entity>``: one source of a type may
    pull an entity (two would share an asset key; the error says which)."""
    owner: dict[tuple[str, str], str] = {}
    for source in sources:
        for entity in source.entities:
            other = owner.setdefault((source.source_type, entity), source.name)
            if other != source.name:
                raise SourceConfigError(
                    f"sources file: {source.source_type} sources {other!r} and {source.name!r} both pull "
                    f"{entity!r}; each would be asset raw/{source.source_type}/{entity}. Keep {entity!r} in "
                    f"one of them (several Salla merchants go in one source's merchants list)")
    return [_api_raw_asset(source, entity) for source in sources for entity in source.entities]


api_raw_assets = build_api_raw_assets(SOURCES.api())


# --- incremental pulls ---------------------------------------------------------------------------


def pull_changes(context: dg.OpExecutionContext, postgres: PostgresResource, source: ApiSource, entity: str,
                 merchant: str = "") -> dict:
    """Land what changed since the entity's checkpoint; returns the landing's metadata."""
    from kingtavo_pipeline.defs.ingest.connectors import connector_for

    store = postgres.store()
    target = _landing_target(source, entity, merchant)
    with store.transaction() as conn:
        since = get_checkpoint(conn, source.source_type, target.name, f"{entity}{CHANGES_SUFFIX}")
    with connector_for(source, entity, merchant, store) as connector:
        result = land_source(context, postgres, source_type=source.source_type, source=target,
                             batches=pages_to_frames(connector.pull_changes(entity, since=since)),
                             asset_key=f"raw/{source.source_type}/{entity}")
    return {k: v.value if hasattr(v, "value") else v for k, v in result.metadata.items()}


@dg.op(
    description="Pull every API source's changes since its checkpoints and land them; the late-records "
    "sensor then maps the days that received records into core and the warehouse.",
    tags={"layer": "raw"},
)
def pull_api_changes(context: dg.OpExecutionContext, postgres: PostgresResource) -> None:
    failures = []
    for source in SOURCES.api():
        merchants = [""]
        if isinstance(source, SallaSource):
            merchants = context.instance.get_dynamic_partitions(SALLA_MERCHANTS.name) or []
        for merchant in merchants:
            for entity in source.entities:
                try:
                    landed = pull_changes(context, postgres, source, entity, merchant)
                    context.log.info(f"{raw_source_name(source, merchant)}/{entity}: "
                                     f"{landed.get('records_new', 0)} new or changed record(s)")
                except (HttpError, SourceConfigError) as exc:
                    # one source failing does not hold back the others; the run still fails
                    context.log.error(str(exc))
                    failures.append(str(exc))
    if failures:
        raise dg.Failure(description=f"{len(failures)} pull(s) failed: " + "; ".join(failures[:3]))


@dg.job(description="Incremental pulls of every API source (schedule: every 15 minutes).", tags={"layer": "raw"})
def api_changes_job():
    pull_api_changes()


api_changes_every_15_minutes = dg.ScheduleDefinition(
    job=api_changes_job, cron_schedule="*/15 * * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Pulls what changed in Printavo, Salla and Strapi since the last pull.",
)


@dg.sensor(minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Registers the merchants named in the sources file as Salla merchant partitions.")
def salla_merchants_sensor(context: dg.SensorEvaluationContext):
    wanted = sorted({m for s in SOURCES.salla for m in s.merchants})
    known = set(context.instance.get_dynamic_partitions(SALLA_MERCHANTS.name))
    new = [m for m in wanted if m not in known]
    if not new:
        return dg.SkipReason("every configured merchant is registered")
    return dg.SensorResult(dynamic_partitions_requests=[SALLA_MERCHANTS.build_add_request(new)])


def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=api_raw_assets,
        jobs=[api_changes_job],
        schedules=[api_changes_every_15_minutes],
        sensors=[salla_merchants_sensor] if SOURCES.salla else [],
    )
