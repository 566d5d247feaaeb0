"""Jobs and schedules.

- daily, for yesterday (the last complete day): the CSV/RSS graph (``unified_items_daily``), the
  API sources by day (``api_sources_daily``: Printavo, Strapi, REST) and Salla by day and merchant
  (``salla_daily``);
- hourly, for today (the open day): ``api_sources_hourly`` and ``salla_hourly`` pull the day so
  far, so a day is current within the hour even where no webhook or incremental pull covers it;
- every 15 minutes: ``api_changes_job`` (incremental pulls since each entity's checkpoint, defined
  with the API raw assets).

Core and the warehouse follow the Salla pulls and the incremental pulls through the late-records
sensor, which runs them for every day that received records. Every schedule starts stopped: turn
on the ones you want in the UI (Automation) or with ``dagster schedule start``.
"""

import datetime as dt

import dagster as dg

from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS
from kingtavo_pipeline.defs.partitions import yesterday



def data_selection(selection: dg.AssetSelection) -> dg.AssetSelection:
    """``selection`` without the freshness checks: those judge the time since the last update and
    run on their own sensor (``quality_freshness``), not as a step of the runs that update."""
    from kingtavo_pipeline.defs.quality import freshness_check_defs

    fresh = freshness_check_defs()
    return selection - dg.AssetSelection.checks(*fresh) if fresh else selection


unified_items_job = dg.define_asset_job(
    name="unified_items_job",
    selection=data_selection(dg.AssetSelection.key_prefixes(["raw", "csv"], ["raw", "rss"])
                             | dg.AssetSelection.assets(["core", "unified_items"], ["warehouse", "unified_items"])),
    description="Land CSV and feed sources, map them into core unified_items and copy them to the warehouse.",
)

CORE_ENTITY_KEYS = [["core", t] for t in ("customers", "products", "orders", "order_lines")]
STAR_KEYS = [["warehouse", t] for t in ("orders_fact", "customers_dim", "products_dim")]

api_sources_job = dg.define_asset_job(
    name="api_sources_job",
    selection=data_selection(dg.AssetSelection.key_prefixes(["raw", "printavo"], ["raw", "strapi"], ["raw", "rest"])
                             | dg.AssetSelection.assets(*CORE_ENTITY_KEYS, *STAR_KEYS)),
    description="Pull Printavo, Strapi and REST sources for the days, map them into the core entity tables "
    "and copy the days to the warehouse's orders star.",
)

salla_job = dg.define_asset_job(
    name="salla_job",
    selection=data_selection(dg.AssetSelection.key_prefixes(["raw", "salla"])),
    description="Pull Salla orders, products and customers of one merchant and day (core and the warehouse "
    "follow through the late-records sensor).",
)


def _day(context: dg.ScheduleEvaluationContext, *, today: bool) -> str:
    now = context.scheduled_execution_time
    return now.astimezone(dt.timezone.utc).date().isoformat() if today else yesterday(now)


def day_schedule(name: str, job, cron: str, *, today: bool,
                 description: str) -> dg.ScheduleDefinition:
    """A schedule of a daily-partitioned job for yesterday's partition, or today's so far."""

    @dg.schedule(name=name, job=job, cron_schedule=cron, execution_timezone="UTC", description=description)
    def _schedule(context: dg.ScheduleEvaluationContext):
        day = _day(context, today=today)
        stamp = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M")
        return dg.RunRequest(run_key=f"{name}:{stamp}", partition_key=day)

    return _schedule


def salla_schedule(name: str, cron: str, *, today: bool, description: str) -> dg.ScheduleDefinition:
    """One run per registered merchant, for yesterday's partition or today's so far."""

    @dg.schedule(name=name, job=salla_job, cron_schedule=cron, execution_timezone="UTC", description=description)
    def _schedule(context: dg.ScheduleEvaluationContext):
        day = _day(context, today=today)
        stamp = context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M")
        merchants = context.instance.get_dynamic_partitions(SALLA_MERCHANTS.name)
        if not merchants:
            return dg.SkipReason("no Salla merchant is registered (kingtavo merchants add, or the sources file)")
        return [
            dg.RunRequest(run_key=f"{name}:{stamp}:{m}",
                          partition_key=dg.MultiPartitionKey({"date": day, "merchant": m}))
            for m in merchants
        ]

    return _schedule


unified_items_daily = day_schedule(
    "unified_items_job_schedule", unified_items_job, "15 1 * * *", today=False,
    description="Yesterday's partition of the CSV/feed graph.")
api_sources_daily = day_schedule(
    "api_sources_job_schedule", api_sources_job, "30 1 * * *", today=False,
    description="Yesterday's partition of Printavo, Strapi and REST, through core and the warehouse.")
api_sources_hourly = day_schedule(
    "api_sources_hourly", api_sources_job, "5 * * * *", today=True,
    description="Today so far of Printavo, Strapi and REST, through core and the warehouse.")
salla_daily = salla_schedule("salla_daily", "45 1 * * *", today=False,
                             description="Yesterday's partition of every registered merchant.")
salla_hourly = salla_schedule("salla_hourly", "10 * * * *", today=True,
                              description="Today so far of every registered merchant.")


def defs() -> dg.Definitions:
    from kingtavo_pipeline.defs.ingest.assets import SOURCES

    jobs: list = [unified_items_job]
    schedules: list = [unified_items_daily]
    if any(s.source_type != "salla" for s in SOURCES.api()):
        jobs.append(api_sources_job)
        schedules += [api_sources_daily, api_sources_hourly]
    if SOURCES.salla:
        jobs.append(salla_job)
        schedules += [salla_daily, salla_hourly]
    return dg.Definitions(jobs=jobs, schedules=schedules)
