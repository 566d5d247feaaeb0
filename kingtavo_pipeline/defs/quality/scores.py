"""``quality/scores``: the quality score per integration, one materialization per day.

The score reads the check evaluations Dagster recorded (no store is touched): for every check in
the code location, the newest evaluation of each (check, partition) among those recorded in the
``scores.window_days`` before the end of the day. A check step that failed to run (a store it
could not reach) counts as a failed evaluation. Scores go into numeric metadata (``score:<integration>``),
which the UI plots over the partitions; a drop since the previous materialization larger than
``scores.drop_alert`` is recorded in ``score_drops`` for the alert sensor.
"""

import datetime as dt
from collections.abc import Iterable

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from kingtavo_pipeline.defs.ingest.assets import OWNER
from kingtavo_pipeline.defs.partitions import FIRST_DAY
from kingtavo_pipeline.quality.config import QualityConfig
from kingtavo_pipeline.quality.score import CheckOutcome, quality_scores, score_drops

SCORES_KEY = dg.AssetKey(["quality", "scores"])
# one partition per day, today's included (end_offset=1): the score of a day is kept up to date
# while the day runs
score_partitions = dg.DailyPartitionsDefinition(start_date=FIRST_DAY, timezone="UTC", end_offset=1)
HISTORY_LIMIT = 2000  # evaluations read per check: a window of daily partitions of a year fits


def resolved_status(instance: dg.DagsterInstance, record, runs: dict) -> str:
    """SUCCEEDED, FAILED, EXECUTION_FAILED (planned in a run that failed: the check could not run),
    SKIPPED or IN_PROGRESS, as the UI resolves it. ``runs`` caches run lookups."""
    if record.status != AssetCheckExecutionRecordStatus.PLANNED:
        return record.status.value
    if record.run_id not in runs:
        runs[record.run_id] = instance.get_run_by_id(record.run_id)
    run = runs[record.run_id]
    if run is None:
        return "SKIPPED"
    if not run.is_finished:
        return "IN_PROGRESS"
    return "EXECUTION_FAILED" if run.status == dg.DagsterRunStatus.FAILURE else "SKIPPED"


def check_outcomes(instance: dg.DagsterInstance, check_specs: dict[dg.AssetCheckKey, str],
                   since: float, until: float) -> Iterable[CheckOutcome]:
    """Recorded evaluations of the checks between two times (``check_specs``: key -> severity,
    for checks whose step failed before it could say)."""
    storage = instance.event_log_storage
    runs: dict = {}
    for key, default_severity in check_specs.items():
        for record in storage.get_asset_check_execution_history(key, limit=HISTORY_LIMIT):
            if record.create_timestamp >= until:
                continue
            if record.create_timestamp < since:
                break  # newest first: the rest are older
            status = resolved_status(instance, record, runs)
            evaluation = evaluation_of(record)
            if status in ("SUCCEEDED", "FAILED") and evaluation:
                # the event's time (sub-second), not the row's (whole seconds in SQLite): what is newest
                yield CheckOutcome(key.asset_key.to_user_string(), key.name, evaluation.partition or record.partition,
                                   evaluation.passed, evaluation.severity.value, record.event.timestamp)
            elif status == "EXECUTION_FAILED":
                yield CheckOutcome(key.asset_key.to_user_string(), key.name, record.partition, False,
                                   default_severity, record.create_timestamp)


def evaluation_of(record) -> dg.AssetCheckEvaluation | None:
    """The evaluation an execution record carries (None while planned or when the step failed)."""
    event = record.event.dagster_event if record.event else None
    if event is None or event.event_type_value != "ASSET_CHECK_EVALUATION":
        return None
    return event.asset_check_evaluation_data


def spec_severities(repository_def) -> dict[dg.AssetCheckKey, str]:
    """Every asset check of the code location -> its configured severity (ERROR when unknown)."""
    return _severities(repository_def.asset_graph.assets_defs)


def _severities(assets_defs) -> dict[dg.AssetCheckKey, str]:
    severities = {}
    for assets_def in assets_defs:
        for spec in assets_def.check_specs:
            severities[spec.key] = str((spec.metadata or {}).get("severity", "ERROR"))
    return severities


def location_severities(context) -> dict[dg.AssetCheckKey, str]:
    """The checks of the code location the step runs in; an in-process run has no repository
    (``execute_in_process``), so then the code location is loaded to find them."""
    try:
        return spec_severities(context.repository_def)
    except Exception:  # noqa: BLE001 - dagster's invariant error: no repository on this step
        from kingtavo_pipeline.definitions import defs as load_definitions
        from kingtavo_pipeline.defs.quality import quality_definitions

        location = load_definitions()
        if SCORES_KEY not in location.resolve_asset_graph().get_all_asset_keys():
            location = dg.Definitions.merge(location, quality_definitions()[0])
        return _severities(location.resolve_asset_graph().assets_defs)


def build_scores_asset(config: QualityConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=SCORES_KEY,
        description="Data-quality score per integration (share of passed checks weighted by severity: "
        f"{dict(config.scores.weights)}) over the last {config.scores.window_days} day(s) of check evaluations "
        "up to the end of the partition's day. Plotted from the score:<integration> metadata.",
        group_name="quality",
        kinds={"dagster"},
        owners=[OWNER],
        partitions_def=score_partitions,
        # no table: the scores live in this asset's materialization metadata, one per day
        metadata={"partition_expr": "day the scores are computed for (materialization metadata, no table)"},
        tags={"layer": "quality"},
    )
    def quality_scores_asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        window = context.partition_time_window
        until = min(window.end.timestamp(), dt.datetime.now(dt.timezone.utc).timestamp())
        since = window.end.timestamp() - config.scores.window_days * 86400
        severities = location_severities(context)
        outcomes = list(check_outcomes(context.instance, severities, since, until))
        scores = quality_scores(outcomes, config.scores.weights, config.scores.integrations)
        previous = previous_scores(context.instance, context.partition_key)
        current = {name: s.score for name, s in scores.items()}
        drops = score_drops(previous, current, config.scores.drop_alert)
        metadata: dict = {"integrations": dg.MetadataValue.int(len(scores)),
                          "evaluations": dg.MetadataValue.int(sum(s.evaluations for s in scores.values())),
                          "score_drops": dg.MetadataValue.json(drops),
                          "failed_checks": dg.MetadataValue.json({n: list(s.failed_checks) for n, s in scores.items()})}
        for name, s in scores.items():
            metadata[f"score:{name}"] = dg.MetadataValue.float(round(s.score, 6))
            metadata[f"evaluations:{name}"] = dg.MetadataValue.int(s.evaluations)
            metadata[f"failed:{name}"] = dg.MetadataValue.int(s.failed)
        if drops:
            context.log.warning(f"quality score dropped: {drops}")
        return dg.MaterializeResult(metadata=metadata)

    return quality_scores_asset


def previous_scores(instance: dg.DagsterInstance, partition_key: str | None) -> dict[str, float]:
    """Scores of the newest materialization of an earlier day (or an earlier one of this day)."""
    records = instance.fetch_materializations(SCORES_KEY, limit=20).records
    for record in records:  # newest first
        materialization = record.asset_materialization
        if materialization is None or (partition_key and materialization.partition and materialization.partition > partition_key):
            continue
        return {k.split(":", 1)[1]: float(v.value) for k, v in materialization.metadata.items()
                if k.startswith("score:") and v.value is not None}
    return {}
