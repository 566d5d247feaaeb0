"""``late_records_sensor``: runs core and the warehouse again for days that received records late.

The raw steps land records under their own day whatever window they run for; this sensor finds
the days whose landed records no core run has taken yet (``raw_partitions.landed_seq`` past
``taken_seq``) and asks
for one single-run backfill of ``late_records_job`` per contiguous range of them, with stable run
keys. The planning is :func:`kingtavo_pipeline.transform.late.plan_late_runs`.
"""

from datetime import date, datetime, timezone

import dagster as dg

from kingtavo_pipeline.defs.partitions import daily_partitions
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.schedules import data_selection
from kingtavo_pipeline.storage.bookkeeping import unprocessed_partitions
from kingtavo_pipeline.storage.postgres import PostgresStore
from kingtavo_pipeline.transform.late import LateRange, PendingDay, plan_late_runs

late_records_job = dg.define_asset_job(
    name="late_records_job",
    # every core and warehouse asset: a day's untaken records may belong to any source
    selection=data_selection(dg.AssetSelection.groups("core", "warehouse")),
    description="Map the records that landed after their day was processed into core and copy the days to the warehouse.",
)


def range_tags(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def plan(store: PostgresStore, cursor: int, instance: dg.DagsterInstance | None,
         now: datetime | None = None) -> tuple[list[LateRange], int, list[str]]:
    """The late ranges to run now; ``instance`` tells which landing runs are still in progress."""
    with store.transaction() as conn:
        pending = [PendingDay(*row) for row in unprocessed_partitions(conn, cursor)]
    existing = set(daily_partitions.get_partition_keys(current_time=now or datetime.now(timezone.utc)))

    def day_exists(day: date) -> bool:
        return day.isoformat() in existing

    def run_in_progress(run_id: str) -> bool:
        if instance is None:
            return False
        run = instance.get_run_by_id(run_id)
        return run is not None and not run.is_finished

    return plan_late_runs(pending, cursor=cursor, day_exists=day_exists, run_in_progress=run_in_progress)


@dg.sensor(
    job=late_records_job,
    minimum_interval_seconds=120,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs core and the warehouse again for days that received records after they were processed.",
)
def late_records_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    ranges, cursor, held = plan(postgres.store(), int(context.cursor or 0), context.instance)
    for reason in held:
        context.log.info(f"held back: {reason}")
    context.update_cursor(str(cursor))
    if not ranges:
        return dg.SkipReason("no late records" + (f" ready ({'; '.join(held)})" if held else ""))
    return [
        dg.RunRequest(run_key=r.run_key, tags={**range_tags(r.start.isoformat(), r.end.isoformat()),
                                               "kingtavo/late_records": str(r.records)})
        for r in ranges
    ]


def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[late_records_job], sensors=[late_records_sensor])
