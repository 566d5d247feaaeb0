"""``raw/csv/<name>`` and ``raw/rss/<name>``: one daily-partitioned asset per configured source.

Each run reads its source in batches and lands every dated record in ``raw_data`` under its own
day (UTC), in the run's window or not; records without a usable date, or dated before the first
partition, go to ``dead_letters``.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing

import dagster as dg
import pandas as pd

from kingtavo_pipeline.defs.partitions import FIRST_DAY, daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.runs import partition_label, utc_window
from kingtavo_pipeline.settings import get_settings
from kingtavo_pipeline.sources.config import (
    CsvSource,
    RssSource,
    SourceConfigError,
    SourcesConfig,
    default_sources_path,
    load_sources,
)
from kingtavo_pipeline.sources.csv_source import iter_raw_batches, source_fingerprint
from kingtavo_pipeline.sources.rss_source import read_feed
from kingtavo_pipeline.storage.bookkeeping import (
    RAW_STAGE_COLUMNS,
    etl_run,
    get_checkpoint,
    get_source_fingerprint,
    land_raw,
    record_dead_letters,
    resolve_landed_dead_letters,
    set_checkpoint,
    set_source_fingerprint,
    stage_raw,
)
from kingtavo_pipeline.storage.errors import redact_url
from kingtavo_pipeline.storage.prefetch import prefetch
from kingtavo_pipeline.storage.staging import Stager

OWNER = "team:data-integrations"
# A batch may carry an API's resume position in ``frame.attrs``: stored as the checkpoint of
# ``<entity>:changes`` in the batch's own transaction.
RESUME_CHECKPOINT = "resume_checkpoint"
CHANGES_SUFFIX = ":changes"


def configured_sources() -> SourcesConfig:
    """The sources file named by ``KINGTAVO_SOURCES_FILE``, else the packaged samples (read, not connected).

    Runs when the code location loads: a bad file or setting raises one line naming the file and
    the key (or the variable), which is what ``dagster definitions validate`` and the UI show.
    """
    return load_sources(get_settings().sources_file or default_sources_path())


def rejected(frame: pd.DataFrame, first_day: pd.Timestamp) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Which rows of a batch go to dead_letters instead of raw_data: malformed (``error`` set),
    undated, dated before the first partition. The one rule for every path that lands or counts
    landed rows (an API window's resume position counts only rows raw_data was meant to get)."""
    malformed = frame["error"].notna()
    undated = frame["occurred_at"].isna() & ~malformed
    too_old = ~malformed & ~undated & (frame["occurred_at"] < first_day)
    return malformed, undated, too_old


def _prepared(batches: Iterable[pd.DataFrame], source, first_day: pd.Timestamp, stager: Stager):
    """Each batch split into the rows that land (``partition_date`` set, and staged) and the rejects
    that go to dead_letters."""
    for frame in batches:
        occurred = frame["occurred_at"]
        malformed, undated, too_old = rejected(frame, first_day)
        errors = frame["error"]
        keep = ~malformed & ~undated & ~too_old
        batch = frame.loc[keep, ["source_id", "payload", *(["content_hash"] if "content_hash" in frame else [])]]
        batch = batch.assign(partition_date=occurred[keep])  # land_raw takes the UTC day
        rejects = pd.concat(
            [
                frame.loc[malformed, ["source_id", "payload"]].assign(
                    error_type="malformed_row", error_message=errors[malformed]
                ),
                frame.loc[undated, ["source_id", "payload"]].assign(
                    error_type="missing_partition_date",
                    error_message=f"{_date_label(source)} is missing or not a date, so the record belongs to no daily partition",
                ),
                frame.loc[too_old, ["source_id", "payload"]].assign(
                    error_type="before_first_partition",
                    error_message=f"{_date_label(source)} is before the first partition ({FIRST_DAY}); "
                    "move the partitions' start date back to load it",
                ),
            ]
        )
        yield frame, batch, rejects, stage_raw(stager, batch)


def _date_label(source: CsvSource | RssSource) -> str:
    return getattr(source, "date_column", None) or "published"


def land_source(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    *,
    source_type: str,
    source: CsvSource | RssSource,
    batches: Iterable[pd.DataFrame],
    fingerprint: Callable[[], str] | None = None,
    asset_key: str | None = None,
) -> dg.MaterializeResult:
    """Land every dated record the source delivers, in whatever day it belongs to.

    Nothing is ignored for being outside the run's window: a record of another day is landed in
    that day (``partition_date``), where core takes it (``raw_partitions``) and the late-records
    sensor finds it. Records dated before the first partition and records without a
    usable date go to ``dead_letters``.
    """
    partitioned = context.has_partition_key or context.has_partition_key_range
    # an unpartitioned pull (incremental changes) has no window: everything it lands is "outside"
    start, end = utc_window(context) if partitioned else (pd.Timestamp.max.tz_localize("UTC"),) * 2
    asset_key = asset_key or context.asset_key.to_user_string()
    first_day = pd.Timestamp(FIRST_DAY, tz="UTC")
    store = postgres.store()
    run_id = context.run.run_id
    new_records = in_window = outside = late = dead = 0
    other_days: dict = {}
    with store.transaction() as conn:
        mark = get_checkpoint(conn, source_type, source.name, source.entity)
        landed_as = get_source_fingerprint(conn, source_type, source.name, source.entity)
        retrying = conn.execute(RETRYING_EXTRACT, (source_type, source.name)).fetchone()[0]
        open_extract_letters = conn.execute(OPEN_EXTRACT, (source_type, source.name)).fetchone()[0]
    high_water = pd.Timestamp(mark).tz_convert("UTC").normalize() if mark else None
    now_as = fingerprint() if fingerprint else None
    if now_as is not None and now_as == landed_as and not retrying:
        return unchanged_source(context, store, source_type, source, start, end)
    with etl_run(store, run_id=run_id, asset_key=asset_key,
                 partition_key=partition_label(context) if partitioned else None) as counts, \
            Stager(store, None, ["source_id"], definition=RAW_STAGE_COLUMNS) as stager:
        # split and staged a batch ahead (storage/staging.py), while this one lands
        prepared = closing(prefetch(_prepared(batches, source, first_day, stager), name="raw-stage"))
        with prepared as batches_ahead:  # on an error, the stager's thread stops before the stager closes
            for frame, batch, rejects, staged in batches_ahead:
                counts.extracted += len(frame)
                window = batch["partition_date"]  # the landing rows' times
                with store.transaction() as conn:
                    landed = land_raw(conn, staged, source_type=source_type, source_name=source.name,
                                      entity=source.entity, run_id=run_id, source_ids=open_extract_letters)
                    dead += record_dead_letters(conn, rejects, stage="extract", source_type=source_type,
                                                source_name=source.name, entity=source.entity, run_id=run_id)
                    open_extract_letters = open_extract_letters or dead > 0
                    if open_extract_letters:  # cheap to skip: most runs have none
                        resolve_landed_dead_letters(conn, stage="extract", source_type=source_type,
                                                    source_name=source.name, entity=source.entity,
                                                    source_ids=landed.source_ids, run_id=run_id)
                    if len(batch):
                        # the source's high-water mark moves with the rows it covers, in their transaction
                        set_checkpoint(conn, source_type, source.name, source.entity,
                                       window.max().isoformat(), landed.observed, monotonic=True)
                    resume = frame.attrs.get(RESUME_CHECKPOINT)
                    if resume is not None:
                        # an API's resume position (incremental pulls), committed with the page it follows
                        set_checkpoint(conn, source_type, source.name, f"{source.entity}{CHANGES_SUFFIX}",
                                       resume, landed.observed)
                new_records += landed.observed
                in_window += int(((window >= start) & (window < end)).sum())
                outside += int(((window < start) | (window >= end)).sum())
                for day, n in landed.partitions.items():
                    ts = pd.Timestamp(day, tz="UTC")
                    if not (start <= ts < end):
                        other_days[day] = other_days.get(day, 0) + n
                    if high_water is not None and ts < high_water:
                        late += n
                counts.loaded += len(batch)
        counts.failed = dead
        if now_as is not None:
            with store.transaction() as conn:  # every batch has committed: the source is landed whole
                set_source_fingerprint(conn, source_type, source.name, source.entity, now_as)
    store.analyze_if_grown("raw_data", new_records)  # core reads these rows next
    if counts.failed:
        context.log.warning(f"{counts.failed} new record(s) of {source.name} were malformed or had no usable date; see dead_letters")
    if other_days:
        days = ", ".join(f"{d} ({n})" for d, n in sorted(other_days.items()))
        context.log.info(f"new records landed outside this run's window, for core to pick up: {days}")
    return dg.MaterializeResult(
        metadata={
            "dagster/table_name": "raw_data",
            "records_read": dg.MetadataValue.int(counts.extracted),
            "dagster/partition_row_count": dg.MetadataValue.int(in_window),
            "records_outside_window": dg.MetadataValue.int(outside),
            "records_new": dg.MetadataValue.int(new_records),
            "late_records": dg.MetadataValue.int(late),
            "partitions_with_new_records_outside_window": dg.MetadataValue.json(
                {str(d): n for d, n in sorted(other_days.items())}
            ),
            "dead_letters": dg.MetadataValue.int(counts.failed),
        }
    )


RETRYING_EXTRACT = """SELECT EXISTS (SELECT 1 FROM dead_letters WHERE stage = 'extract' AND status = 'retrying'
                                      AND source_type = %s AND source_name = %s)"""


OPEN_EXTRACT = """SELECT EXISTS (SELECT 1 FROM dead_letters WHERE stage = 'extract' AND status IN ('open', 'retrying')
                                  AND source_type = %s AND source_name = %s)"""


def unchanged_source(context: dg.AssetExecutionContext, store, source_type: str, source, start, end) -> dg.MaterializeResult:
    """The source is exactly as it was when it was last landed whole: reading it again would land
    nothing, so it is not read (run with ``reread: true`` to read it anyway)."""
    with etl_run(store, run_id=context.run.run_id, asset_key=context.asset_key.to_user_string(),
                 partition_key=partition_label(context)):
        in_window = store.fetch_value(
            "SELECT count(*) FROM raw_data WHERE source_type = %s AND source_name = %s "
            "AND partition_date >= %s AND partition_date < %s",
            (source_type, source.name, start.date(), end.date()),
        )
    context.log.info(f"{source.name} is unchanged since it was last landed; not read again")
    return dg.MaterializeResult(
        metadata={
            "dagster/table_name": "raw_data",
            "source_unchanged": True,
            "records_read": dg.MetadataValue.int(0),
            "dagster/partition_row_count": dg.MetadataValue.int(int(in_window)),
            "records_new": dg.MetadataValue.int(0),
            "dead_letters": dg.MetadataValue.int(0),
        }
    )


class RawConfig(dg.Config):
    reread: bool = False
    """Read the source even if it is unchanged since it was last landed whole."""


def _raw_asset(source_type: str, source: CsvSource | RssSource, batches: Callable[[], Iterator[pd.DataFrame]],
               description: str, fingerprint: Callable[[CsvSource | RssSource], str] | None = None) -> dg.AssetsDefinition:
    @dg.asset(
        key=["raw", source_type, source.name],
        description=description,
        group_name=source_type,
        kinds={source_type, "postgres"},
        owners=[OWNER],
        partitions_def=daily_partitions,
        backfill_policy=single_run_backfill,
        metadata={"partition_expr": "partition_date", "source_entity": source.entity},
        tags={"layer": "raw"},
    )
    def _asset(context: dg.AssetExecutionContext, config: RawConfig, postgres: PostgresResource) -> dg.MaterializeResult:
        try:
            return land_source(context, postgres, source_type=source_type, source=source, batches=batches(),
                               fingerprint=None if config.reread or fingerprint is None else lambda: fingerprint(source))
        except SourceConfigError as exc:
            # The sources file does not match the data: the message says what to fix, and a
            # retry would fail the same way.
            raise dg.Failure(description=str(exc), allow_retries=False) from None

    return _asset


def build_raw_assets(config: SourcesConfig) -> list[dg.AssetsDefinition]:
    assets = []
    for csv_source in config.csv:
        # the next batch is parsed while the current one is landed
        assets.append(_raw_asset("csv", csv_source, lambda s=csv_source: prefetch(iter_raw_batches(s), name="csv-read"),
                                 f"CSV rows from {csv_source.path} landed in raw_data.",
                                 fingerprint=source_fingerprint))
    for rss_source in config.rss:
        # A generator, so the feed is read inside the run's bookkeeping and its errors are recorded.
        assets.append(_raw_asset("rss", rss_source, lambda s=rss_source: (read_feed(s) for _ in range(1)),
                                 f"Feed entries from {redact_url(rss_source.url)} landed in raw_data."))
    return assets


SOURCES = configured_sources()
raw_assets = build_raw_assets(SOURCES)


def defs() -> dg.Definitions:
    return dg.Definitions(assets=raw_assets)
