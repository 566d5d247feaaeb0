"""Jobs and schedules: the CSV/RSS graph daily for yesterday's partition; the API sources daily
(Printavo, Strapi, REST by day; Salla by day and merchant) and their incremental pulls every 15
minutes (``api_changes_job``, defined with the API raw assets)."""

import dagster as dg

from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS

unified_items_job = dg.define_asset_job(
    name="unified_items_job",
    selection=dg.AssetSelection.key_prefixes(["raw", "csv"], ["raw", "rss"])
    | dg.AssetSelection.assets(["core", "unified_items"], ["warehouse", "unified_items"]),
    description="Land CSV and feed sources, map them into core unified_items and copy them to the warehouse.",
)

unified_items_daily = dg.build_schedule_from_partitioned_job(unified_items_job, hour_of_day=1, minute_of_hour=15)

CORE_ENTITY_KEYS = [["core", t] for t in ("customers", "products", "orders", "order_lines")]
STAR_KEYS = [["warehouse", t] for t in ("orders_fact", "customers_dim", "products_dim")]

api_sources_job = dg.define_asset_job(
    name="api_sources_job",
    selection=dg.AssetSelection.key_prefixes(["raw", "printavo"], ["raw", "strapi"], ["raw", "rest"])
    | dg.AssetSelection.assets(*CORE_ENTITY_KEYS, *STAR_KEYS),
    description="Pull Printavo, Strapi and REST sources for the days, map them into the core entity tables "
    "and copy the days to the warehouse's orders star.",
)

salla_job = dg.define_asset_job(
    name="salla_job",
    selection=dg.AssetSelection.key_prefixes(["raw", "salla"]),
    description="Pull Salla orders, products and customers of one merchant and day (core and the warehouse "
    "follow through the late-records sensor).",
)

api_sources_daily = dg.build_schedule_from_partitioned_job(api_sources_job, hour_of_day=1, minute_of_hour=30)


@dg.schedule(job=salla_job, cron_schedule="45 1 * * *", execution_timezone="UTC")
def salla_daily(context: dg.ScheduleEvaluationContext):
    """Yesterday's partition of every registered merchant."""
    import datetime as dt

    day = (context.scheduled_execution_time.date() - dt.timedelta(days=1)).isoformat()
    merchants = context.instance.get_dynamic_partitions(SALLA_MERCHANTS.name)
    return [
        dg.RunRequest(run_key=f"salla:{day}:{m}", partition_key=dg.MultiPartitionKey({"date": day, "merchant": m}))
        for m in merchants
    ]


def defs() -> dg.Definitions:
    from kingtavo_pipeline.defs.ingest.assets import SOURCES

    jobs: list = [unified_items_job]
    schedules: list = [unified_items_daily]
    if any(s.source_type != "salla" for s in SOURCES.api()):
        jobs.append(api_sources_job)
        schedules.append(api_sources_daily)
    if SOURCES.salla:
        jobs.append(salla_job)
        schedules.append(salla_daily)
    return dg.Definitions(jobs=jobs, schedules=schedules)
