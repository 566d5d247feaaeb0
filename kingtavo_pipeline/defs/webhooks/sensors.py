"""``webhook_events_sensor``: turns pending webhook events into runs of ``webhook_events_job``.

Every few seconds it reads the pending events after its cursor (the last event id it requested a
run for) in a bounded batch, works out the day each event's entity belongs to (from a slim copy of
the payload: only the fields that date it), and requests one run per contiguous day range
(:func:`~kingtavo_pipeline.transform.webhook_events.plan_event_runs`) with a stable run key
(``webhooks:<first id>-<last id>``). Events without a partition day (unparseable, before the first
partition, other providers, or of a day whose partition does not exist yet) ride with the run of
the latest range, or get a run of their own that only applies raw: nothing is skipped silently.

The id cursor assumes events become visible in id order. Two ingress transactions can commit out
of order, so an event can appear behind the cursor; such stragglers (pending, behind the cursor,
received over ``STRAGGLER_AGE`` ago) are requested again under ``webhooks:<first>-<last>:retry-<w>``
(``w`` counts straggler windows since the epoch). The same sweep retries the events of a failed run,
and events put back to pending by hand, once per window until they are applied, failed or ignored. Events that failed to apply (dead letters, stage ``webhook``) are retried with
``kingtavo dead-letters retry --stage webhook``, which puts them back to pending and runs them
(:mod:`~kingtavo_pipeline.defs.webhooks.runs`).
"""


from datetime import date, datetime, timedelta, timezone

import dagster as dg

from kingtavo_pipeline.defs.partitions import FIRST_DAY, daily_partitions
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.defs.schedules import data_selection
from kingtavo_pipeline.defs.webhooks.assets import (
    EVENTS_FROM_TAG,
    EVENTS_TO_TAG,
    LAST_PARTITION_TAG,
    ORPHANS_TAG,
    WEBHOOK_EVENTS_KEY,
)
from kingtavo_pipeline.storage.postgres import PostgresStore
from kingtavo_pipeline.transform.webhook_events import (
    DAY_FIELDS,
    DAY_NESTED_FIELDS,
    PRINTAVO_CONTAINERS,
    EventRun,
    PendingEvent,
    StoredEvent,
    event_day,
    plan_event_runs,
)

BATCH_SIZE = 1000
MAX_RUNS_PER_TICK = 20
STRAGGLER_AGE = timedelta(minutes=10)
CORE_KEYS = [["core", "customers"], ["core", "products"], ["core", "orders"], ["core", "order_lines"]]
WAREHOUSE_KEYS = [["warehouse", "orders_fact"], ["warehouse", "customers_dim"], ["warehouse", "products_dim"]]

webhook_events_job = dg.define_asset_job(
    name="webhook_events_job",
    # the events' entities, then core_entities (all four keys: it cannot be subset) and the orders star
    selection=data_selection(dg.AssetSelection.assets(WEBHOOK_EVENTS_KEY).downstream()),
    description="Apply pending webhook events to raw_data, map their days into core and copy them to the warehouse.",
    tags={"layer": "webhooks"},
)


def _slim(expr: str) -> str:
    keys = ", ".join(f"'{k}', {expr}->'{k}'" for k in DAY_NESTED_FIELDS)
    return (f"CASE WHEN jsonb_typeof({expr}) = 'object' THEN jsonb_build_object({keys}) "
            f"ELSE to_jsonb(jsonb_typeof({expr})) END")


# Only the fields event_day reads (not a whole order with its lines); nulls dropped, as missing.
SLIM_PAYLOAD = "jsonb_strip_nulls(jsonb_build_object({}))".format(", ".join(
    [f"'{k}', payload->'{k}'" for k in DAY_FIELDS] + [f"'{k}', {_slim(f'payload->{chr(39)}{k}{chr(39)}')}"
                                                      for k in PRINTAVO_CONTAINERS]))

PENDING_AFTER = f"""
SELECT id, source_name, provider, event_type, account, {SLIM_PAYLOAD} FROM webhook_events
WHERE status = 'pending' AND id > %s ORDER BY id LIMIT %s
"""

STRAGGLERS = f"""
SELECT id, source_name, provider, event_type, account, {SLIM_PAYLOAD} FROM webhook_events
WHERE status = 'pending' AND id <= %s AND received_at < now() - %s ORDER BY id LIMIT %s
"""


def last_partition(now: datetime) -> date:
    return date.fromisoformat(daily_partitions.get_partition_keys(current_time=now)[-1])


def run_request(run: EventRun, last_day: date, *, key_suffix: str = "") -> dg.RunRequest:
    tags = {
        "dagster/asset_partition_range_start": run.start.isoformat(),
        "dagster/asset_partition_range_end": run.end.isoformat(),
        EVENTS_FROM_TAG: str(run.first_id),
        EVENTS_TO_TAG: str(run.last_id),
        ORPHANS_TAG: "true" if run.orphans else "false",
        LAST_PARTITION_TAG: last_day.isoformat(),
        "kingtavo/webhook_events": str(run.events),
    }
    # a run without a day of its own lands, fails or ignores its events; core has nothing new to take
    return dg.RunRequest(run_key=run.run_key + key_suffix, tags=tags,
                         asset_selection=[WEBHOOK_EVENTS_KEY] if run.raw_only else None)


def _pending(rows: list[tuple]) -> list[PendingEvent]:
    return [PendingEvent(row[0], event_day(StoredEvent(*row))) for row in rows]


def plan_requests(store: PostgresStore, cursor: int, *, now: datetime | None = None, batch_size: int = BATCH_SIZE,
                  max_runs: int = MAX_RUNS_PER_TICK,
                  straggler_age: timedelta = STRAGGLER_AGE) -> tuple[list[dg.RunRequest], int]:
    """The run requests for the pending events after ``cursor`` (and stragglers behind it), and the
    new cursor."""
    now = now or datetime.now(timezone.utc)
    first_day, last_day = date.fromisoformat(FIRST_DAY), last_partition(now)
    with store.transaction() as conn:
        fresh = conn.execute(PENDING_AFTER, (cursor, batch_size)).fetchall()
        late = conn.execute(STRAGGLERS, (cursor, straggler_age, batch_size)).fetchall() if cursor else []
    runs, new_cursor = plan_event_runs(_pending(fresh), cursor=cursor, first_day=first_day, last_day=last_day,
                                       max_runs=max_runs)
    retries, _ = plan_event_runs(_pending(late), cursor=0, first_day=first_day, last_day=last_day, max_runs=max_runs)
    requests = [run_request(r, last_day) for r in runs]
    # one retry per straggler window: a key of its own each window, so events put back to pending
    # (a failed run, `dead-letters retry --no-run`) are requested again rather than dropped as a
    # run key already used
    window = int(now.timestamp() // straggler_age.total_seconds())
    requests += [run_request(r, last_day, key_suffix=f":retry-{window}") for r in retries]
    return requests, new_cursor


@dg.sensor(
    job=webhook_events_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests runs of webhook_events_job for pending webhook events, one per contiguous day range, "
    "so webhook changes reach core and the warehouse within seconds.",
)
def webhook_events_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    cursor = int(context.cursor or 0)
    requests, new_cursor = plan_requests(postgres.store(), cursor)
    context.update_cursor(str(new_cursor))
    if not requests:
        return dg.SkipReason("no pending webhook events")
    for request in requests:
        context.log.info(f"{request.run_key}: {request.tags['kingtavo/webhook_events']} event(s), days "
                         f"{request.tags['dagster/asset_partition_range_start']}..."
                         f"{request.tags['dagster/asset_partition_range_end']}")
    return requests
