"""Jobs and schedules: the whole CSV/RSS graph, daily, for yesterday's partition."""

import dagster as dg

unified_items_job = dg.define_asset_job(
    name="unified_items_job",
    selection=dg.AssetSelection.key_prefixes(["raw", "csv"], ["raw", "rss"])
    | dg.AssetSelection.assets(["core", "unified_items"], ["warehouse", "unified_items"]),
    description="Land CSV and feed sources, map them into core unified_items and copy them to the warehouse.",
)

unified_items_daily = dg.build_schedule_from_partitioned_job(unified_items_job, hour_of_day=1, minute_of_hour=15)


def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[unified_items_job], schedules=[unified_items_daily])
