"""``raw/csv/<name>`` and ``raw/rss/<name>``: one daily-partitioned asset per configured source.

Each run reads its source in batches, keeps the records whose date falls in the run's time window
(UTC), and lands them in ``raw_data``; records without a usable date go to ``dead_letters``.
"""

from collections.abc import Callable, Iterable, Iterator

import dagster as dg
import pandas as pd

from kingtavo_pipeline.defs.partitions import daily_partitions, single_run_backfill
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.runs import partition_label, utc_window
from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.sources.config import CsvSource, RssSource, SourcesConfig, default_sources_path, load_sources
from kingtavo_pipeline.sources.csv_source import iter_raw_batches
from kingtavo_pipeline.sources.rss_source import read_feed
from kingtavo_pipeline.storage.bookkeeping import etl_run, land_raw, record_dead_letters, set_checkpoint

OWNER = "team:data-integrations"


def configured_sources() -> SourcesConfig:
    """The sources file named by ``KINGTAVO_SOURCES_FILE``, else the packaged samples (read, not connected)."""
    settings = Settings()
    return load_sources(settings.sources_file or default_sources_path())


def _date_label(source: CsvSource | RssSource) -> str:
    return getattr(source, "date_column", None) or "published"


def land_source(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    *,
    source_type: str,
    source: CsvSource | RssSource,
    batches: Iterable[pd.DataFrame],
) -> dg.MaterializeResult:
    start, end = utc_window(context)
    store = postgres.store()
    new_rows = 0
    with etl_run(store, run_id=context.run.run_id, asset_key=context.asset_key.to_user_string(),
                 partition_key=partition_label(context)) as counts:
        for frame in batches:
            counts.extracted += len(frame)
            occurred = frame["occurred_at"]
            errors = frame["error"]  # set on malformed rows (RAW_COLUMNS)
            malformed = errors.notna()
            undated = occurred.isna() & ~malformed
            keep = ~malformed & ~undated & (occurred >= start) & (occurred < end)
            batch = frame.loc[keep, ["source_id", "payload"]].assign(partition_date=occurred[keep].dt.date)
            rejects = pd.concat(
                [
                    frame.loc[malformed, ["source_id", "payload"]].assign(
                        error_type="malformed_row", error_message=errors[malformed]
                    ),
                    frame.loc[undated, ["source_id", "payload"]].assign(
                        error_type="missing_partition_date",
                        error_message=f"{_date_label(source)} is missing or not a date, so the record belongs to no daily partition",
                    ),
                ]
            )
            with store.transaction() as conn:
                landed = land_raw(conn, batch, source_type=source_type, source_name=source.name,
                                  entity=source.entity, run_id=context.run.run_id)
                record_dead_letters(conn, rejects, stage="extract", source_type=source_type,
                                    source_name=source.name, entity=source.entity, run_id=context.run.run_id)
                if len(batch):
                    # the source's high-water mark moves with the rows it covers, in their transaction
                    set_checkpoint(conn, source_type, source.name, source.entity,
                                   occurred[keep].max().isoformat(), len(batch), monotonic=True)
            new_rows += landed.inserted
            counts.loaded += len(batch)
            counts.failed += len(rejects)
    if counts.failed:
        context.log.warning(f"{counts.failed} record(s) of {source.name} were malformed or had no usable date; see dead_letters")
    return dg.MaterializeResult(
        metadata={
            "dagster/table_name": "raw_data",
            "records_read": dg.MetadataValue.int(counts.extracted),
            "dagster/partition_row_count": dg.MetadataValue.int(counts.loaded),
            "records_new": dg.MetadataValue.int(new_rows),
            "dead_letters": dg.MetadataValue.int(counts.failed),
        }
    )


def _raw_asset(source_type: str, source: CsvSource | RssSource, batches: Callable[[], Iterator[pd.DataFrame]],
               description: str) -> dg.AssetsDefinition:
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
    def _asset(context: dg.AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult:
        return land_source(context, postgres, source_type=source_type, source=source, batches=batches())

    return _asset


def build_raw_assets(config: SourcesConfig) -> list[dg.AssetsDefinition]:
    assets = []
    for csv_source in config.csv:
        assets.append(_raw_asset("csv", csv_source, lambda s=csv_source: iter_raw_batches(s),
                                 f"CSV rows from {csv_source.path} landed in raw_data."))
    for rss_source in config.rss:
        assets.append(_raw_asset("rss", rss_source, lambda s=rss_source: iter([read_feed(s)]),
                                 f"Feed entries from {rss_source.url} landed in raw_data."))
    return assets


SOURCES = configured_sources()
raw_assets = build_raw_assets(SOURCES)


def defs() -> dg.Definitions:
    return dg.Definitions(assets=raw_assets)
