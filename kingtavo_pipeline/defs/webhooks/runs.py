"""Apply pending webhook events in this process, as the sensor and the daemon would: plan the run
requests (:func:`~kingtavo_pipeline.defs.webhooks.sensors.plan_requests`) and execute them with
``execute_in_process``. Used by ``kingtavo demo``, ``kingtavo dead-letters retry`` (stage
``webhook``) and the freshness benchmark; a deployment runs the sensor under the daemon instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta

import dagster as dg

from kingtavo_pipeline.defs.webhooks.assets import requeue_failed_events
from kingtavo_pipeline.defs.webhooks.sensors import plan_requests

JOB_NAME = "webhook_events_job"
# in-process drains never re-request events behind their own cursor (the sensor's straggler sweep)
NO_STRAGGLERS = timedelta(days=36500)


def execute_requests(definitions: dg.Definitions, instance: dg.DagsterInstance, requests: Iterable[dg.RunRequest],
                     *, run_config: Mapping | None = None,
                     tags: Mapping[str, str] | None = None) -> list[dg.ExecuteInProcessResult]:
    """Execute the sensor's run requests of ``webhook_events_job`` one after the other."""
    job = definitions.resolve_job_def(JOB_NAME)
    results = []
    for request in requests:
        selected = job if request.asset_selection is None else job.get_subset(
            asset_selection=set(request.asset_selection))
        results.append(selected.execute_in_process(instance=instance, run_config=dict(run_config or {}),
                                                   tags={**request.tags, **dict(tags or {})}, raise_on_error=False))
    return results


def apply_pending_now(definitions: dg.Definitions, instance: dg.DagsterInstance, store, *,
                      run_config: Mapping | None = None, tags: Mapping[str, str] | None = None,
                      max_rounds: int = 100) -> list[dg.ExecuteInProcessResult]:
    """Run ``webhook_events_job`` for every pending event, batch after batch, until none is left
    (or a round requests nothing new). Returns the run results."""
    cursor, results = 0, []
    for _ in range(max_rounds):
        requests, new_cursor = plan_requests(store, cursor, straggler_age=NO_STRAGGLERS)
        if not requests:
            break
        results += execute_requests(definitions, instance, requests, run_config=run_config, tags=tags)
        if new_cursor == cursor:
            break
        cursor = new_cursor
    return results


WEBHOOK_LETTER_EVENTS = """
SELECT source_id FROM dead_letters WHERE id = ANY(%s) AND stage = 'webhook' AND source_id ~ '^[0-9]+$'
"""


def requeue_dead_letter_events(conn, dead_letter_ids: Iterable[int]) -> list[int]:
    """The failed webhook events behind dead letters (stage ``webhook``; the letter's ``source_id``
    is the event id) back to ``pending``, for a retry. Returns the event ids requeued."""
    ids = list(dead_letter_ids)
    if not ids:
        return []
    events = [int(r[0]) for r in conn.execute(WEBHOOK_LETTER_EVENTS, (ids,)).fetchall()]
    return requeue_failed_events(conn, events)
