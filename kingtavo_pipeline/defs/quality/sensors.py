"""``quality_monitor``: alerts on failed checks and score drops, and keeps the scores current.

A sensor rather than a run-status sensor or a hook: it sees every check evaluation whatever
launched it (a job, a backfill, the UI's Execute button, the freshness sensor), including check
steps that failed to run, and its cursor carries the alert rate limiter's state across ticks and
processes. Each tick it reads the evaluations recorded since the last tick, sends one alert per
failing check (the partitions listed together), one per integration whose score dropped, and asks
for ``quality/scores`` of today when new evaluations arrived. The first tick only starts watching:
history is not replayed.
"""

import datetime as dt
import json
from collections.abc import Iterable

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from kingtavo_pipeline.defs.quality.scores import (
    SCORES_KEY,
    evaluation_of,
    resolved_status,
    spec_severities,
)
from kingtavo_pipeline.quality.alerts import Alert, AlertTargets, RateLimiter, asset_url, send_alerts
from kingtavo_pipeline.quality.config import QualityConfig

MONITOR_SENSOR = "quality_monitor"
DONE = (AssetCheckExecutionRecordStatus.SUCCEEDED, AssetCheckExecutionRecordStatus.FAILED)
PER_CHECK_READ = 200  # newest executions read per check and tick
# a check planned in a run that then failed could not run; such runs are looked for this far back
FAILED_RUN_LOOKBACK_S = 86400
REMEMBERED_RUNS = 200


def _when(record) -> float:
    return record.event.timestamp if record.event else record.create_timestamp


def new_executions(instance: dg.DagsterInstance, keys: Iterable[dg.AssetCheckKey], since: float,
                   seen_runs: Iterable[str] = (), now: float | None = None) -> tuple[list, list]:
    """(evaluations recorded after ``since``, oldest first; checks that could not run: planned in a
    failed run not in ``seen_runs``, within the lookback)."""
    evaluated, not_run, runs = [], [], {}
    seen = set(seen_runs)
    horizon = (now or dt.datetime.now(dt.timezone.utc).timestamp()) - FAILED_RUN_LOOKBACK_S
    for key in keys:
        for record in instance.event_log_storage.get_asset_check_execution_history(key, limit=PER_CHECK_READ):
            if record.status in DONE:
                if _when(record) > since:
                    evaluated.append(record)
            elif record.create_timestamp > horizon and record.run_id not in seen:
                if resolved_status(instance, record, runs) == "EXECUTION_FAILED":
                    not_run.append(record)
    return sorted(evaluated, key=_when), not_run


def failure_alerts(records: Iterable, dagster_url: str, not_run: Iterable = ()) -> list[Alert]:
    """One alert per failing check: the partitions that failed, the first reason, and a link."""
    grouped: dict[dg.AssetCheckKey, list] = {}
    for record in records:
        evaluation = evaluation_of(record)
        if evaluation is not None and not evaluation.passed:
            grouped.setdefault(record.key, []).append((record, evaluation))
    for record in not_run:
        grouped.setdefault(record.key, []).append((record, None))
    alerts = []
    for key, failures in grouped.items():
        asset = key.asset_key.to_user_string()
        partitions = sorted({(e.partition if e else None) or r.partition or "" for r, e in failures} - {""})
        severities = {e.severity.value for _, e in failures if e is not None}
        could_not_run = not severities
        severity = "ERROR" if could_not_run or "ERROR" in severities else "WARN"
        reason = next((e.description for _, e in failures if e is not None and e.description), None)
        runs = sorted({r.run_id for r, e in failures if e is None})
        where = (f" on {len(partitions)} partition(s): {', '.join(partitions[:5])}{' ...' if len(partitions) > 5 else ''}"
                 if partitions else "")
        verb = "could not run" if could_not_run else "failed"
        text = f"Check {key.name} of {asset} {verb}{where}."
        if reason:
            text += f"\n{reason}"
        if could_not_run:
            text += f"\nIts run failed before the check could report (run {', '.join(r[:8] for r in runs[:3])})."
        alerts.append(Alert(f"{asset}:{key.name}", f"{asset} {key.name} {verb} ({severity})", text,
                            asset_url(dagster_url, key.asset_key.path, view="checks",
                                      partition=partitions[0] if len(partitions) == 1 else None), severity))
    return alerts


def score_drop_alerts(instance: dg.DagsterInstance, after_storage_id: int, dagster_url: str) -> tuple[list[Alert], int]:
    """Alerts for score drops recorded by ``quality/scores`` materializations after the cursor."""
    records = instance.fetch_materializations(SCORES_KEY, limit=50).records
    alerts, newest = [], after_storage_id
    for record in sorted(records, key=lambda r: r.storage_id):
        if record.storage_id <= after_storage_id:
            continue
        newest = record.storage_id
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        drops = metadata.get("score_drops").value if "score_drops" in metadata else {}
        for integration, drop in (drops or {}).items():
            score = metadata.get(f"score:{integration}")
            now = f" to {float(score.value):.1%}" if score is not None else ""
            alerts.append(Alert(
                f"score:{integration}", f"Quality score of {integration} dropped by {float(drop):.1%}{now}",
                f"The data-quality score of {integration} fell by {float(drop):.1%} since its previous computation"
                f"{now}. Failed checks are listed on the scores asset.",
                asset_url(dagster_url, SCORES_KEY.path, view="plots"), "ERROR"))
    return alerts, newest


def newest_score_id(instance: dg.DagsterInstance) -> int:
    records = instance.fetch_materializations(SCORES_KEY, limit=1).records
    return records[0].storage_id if records else 0


def build_monitor_sensor(config: QualityConfig, minimum_interval_seconds: int = 60) -> dg.SensorDefinition:
    @dg.sensor(
        name=MONITOR_SENSOR,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=[SCORES_KEY],
        description="Posts failed checks and quality-score drops to KINGTAVO_ALERT_SLACK_URL / "
        "KINGTAVO_ALERT_TEAMS_URL (rate-limited, linked to the asset under KINGTAVO_DAGSTER_URL) and "
        "recomputes quality/scores when new check evaluations arrive.",
    )
    def quality_monitor(context: dg.SensorEvaluationContext):
        instance = context.instance
        keys = list(spec_severities(context.repository_def))
        if not context.cursor:
            evaluated, not_run = new_executions(instance, keys, 0.0)
            cursor = {"since": _when(evaluated[-1]) if evaluated else 0.0, "score_id": newest_score_id(instance),
                      "runs": sorted({r.run_id for r in not_run})[-REMEMBERED_RUNS:], "limiter": {}}
            context.update_cursor(json.dumps(cursor))
            return dg.SkipReason("started watching check evaluations (earlier ones are not alerted)")
        cursor = json.loads(context.cursor)
        targets = AlertTargets.from_env()
        executions, not_run = new_executions(instance, keys, float(cursor.get("since", 0.0)), cursor.get("runs", []))
        alerts = failure_alerts(executions, targets.dagster_url, not_run)
        drops, score_id = score_drop_alerts(instance, int(cursor.get("score_id", 0)), targets.dagster_url)
        limiter = RateLimiter(per_key_seconds=config.alerts.per_check_minutes * 60,
                              max_per_hour=config.alerts.max_per_hour, state=cursor.get("limiter", {}))
        report = send_alerts([*alerts, *drops], targets, limiter, timeout=config.alerts.timeout_seconds)
        for error in report.errors:
            context.log.warning(f"alert not delivered: {error}")
        if executions:
            cursor["since"] = _when(executions[-1])
        runs = [*cursor.get("runs", []), *sorted({r.run_id for r in not_run})]
        cursor.update(score_id=score_id, limiter=limiter.state, runs=runs[-REMEMBERED_RUNS:])
        context.update_cursor(json.dumps(cursor))
        summary = (f"{len(executions)} new evaluation(s), {len(alerts) + len(drops)} alert(s): "
                   f"{len(report.sent)} sent, {len(report.suppressed)} rate-limited, {len(report.errors)} delivery error(s)"
                   + ("" if targets.channels else "; no alert URL configured"))
        context.log.info(summary)
        if not executions:
            return dg.SkipReason(summary)
        today = dt.datetime.now(dt.timezone.utc).date().isoformat()  # a partition: score_partitions ends tomorrow
        return dg.RunRequest(run_key=f"quality-scores-{cursor['since']}", partition_key=today,
                             asset_selection=[SCORES_KEY], tags={"kingtavo/trigger": MONITOR_SENSOR})

    return quality_monitor
