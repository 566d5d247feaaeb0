"""Data-quality monitoring of every layer: standalone asset checks, freshness, scores and alerts.

What is checked is declared here (which columns, rules, keys); how strictly is the quality file's
business (``kingtavo_pipeline/quality.yaml`` or ``KINGTAVO_QUALITY_FILE``). Checks of the raw
sources come from the sources file, so a new CSV or feed source gets its checks without code.

The API sources, the core entity tables, the orders star and the webhook events are checked by
the declarations in ``defs/quality/entities.py``.

Checks embedded elsewhere and kept as they are: ``core_reflects_raw`` (in the core asset: raw ->
core reconciliation) and ``row_count_matches_core`` (``defs/warehouse/checks.py``: core ->
warehouse row counts, built with the same factories).
"""

from __future__ import annotations

import datetime as dt
import warnings
from functools import cache

import dagster as dg

from kingtavo_pipeline.defs.ingest.assets import SOURCES
from kingtavo_pipeline.defs.quality.checks import (
    DISTINCT_RECORDS,
    QualityCheck,
    build_checks,
    completeness_check,
    enabled_checks,
    money_check,
    schema_drift_check,
    sql_rule_check,
    uniqueness_check,
    validity_check,
    reconciliation_check,
    volume_check,
)
from kingtavo_pipeline.defs.quality.entities import (
    CUSTOMERS,
    CUSTOMERS_DIM,
    ORDER_LINES,
    ORDERS,
    ORDERS_FACT,
    PRODUCTS,
    PRODUCTS_DIM,
    WEBHOOK_EVENTS,
    CheckGroup,
    entity_check_groups,
)
from kingtavo_pipeline.defs.quality.scores import SCORES_KEY, build_scores_asset
from kingtavo_pipeline.defs.quality.sensors import build_monitor_sensor
from kingtavo_pipeline.quality.config import QualityConfig, load_quality_config
from kingtavo_pipeline.quality.rules import NotInFuture, OneOf, SqlRule, sql_literal

CORE_ITEMS = dg.AssetKey(["core", "unified_items"])
WAREHOUSE_ITEMS = dg.AssetKey(["warehouse", "unified_items"])
ITEM_KEY = ("source_type", "source_name", "external_id")
SOURCE_TYPES = ("csv", "rss", "rest", "printavo", "salla", "strapi")
FRESHNESS_SENSOR = "quality_freshness"
# assets that exist only with API sources configured: the quality file may tune them regardless
OPTIONAL_ASSETS = frozenset(k.to_user_string() for k in (
    CUSTOMERS, PRODUCTS, ORDERS, ORDER_LINES, ORDERS_FACT, CUSTOMERS_DIM, PRODUCTS_DIM, WEBHOOK_EVENTS))

# Lineage consistency: a core row names the raw observation it came from, of the same record.
CORE_ROW_HAS_RAW_RECORD = SqlRule(
    "core_row_has_raw_record",
    """SELECT u.partition_date, u.source_name || '/' || u.external_id AS key
       FROM unified_items u
       WHERE u.partition_date >= %(start)s AND u.partition_date < %(end)s
         AND NOT EXISTS (SELECT 1 FROM raw_data r
                         WHERE r.id = u.raw_data_id AND r.source_type = u.source_type
                           AND r.source_name = u.source_name AND r.source_id = u.source_id)""",
    description="every core row points at the raw observation (raw_data) of the same record it was mapped from",
    tables=("unified_items", "raw_data"),
)


def raw_source_checks() -> list[QualityCheck]:
    """Schema drift and landed volume for every configured CSV and feed source."""
    checks: list[QualityCheck] = []
    for source in SOURCES.all():
        key = dg.AssetKey(["raw", source.source_type, source.name])
        where = f"source_type = {sql_literal(source.source_type)} AND source_name = {sql_literal(source.name)}"
        checks.append(schema_drift_check(key, source.source_type, source.name,
                                         {field: None for field in source.field_map.values()}))
        checks.append(volume_check(key, "raw_data", where=where, count_expr=DISTINCT_RECORDS))
    return checks


def core_item_checks() -> list[QualityCheck]:
    keys = ("source_name", "external_id")
    return [
        # amount and category are mapped by every CSV source; feeds carry neither
        completeness_check(CORE_ITEMS, "unified_items", ["category", "amount"], where="source_type = 'csv'",
                           key_columns=keys),
        validity_check(CORE_ITEMS, "unified_items", [NotInFuture("published_at"), OneOf("source_type", SOURCE_TYPES)],
                       key_columns=keys),
        money_check(CORE_ITEMS, "unified_items", ["amount"], key_columns=keys),
        sql_rule_check(CORE_ITEMS, CORE_ROW_HAS_RAW_RECORD),
        volume_check(CORE_ITEMS, "unified_items", money_columns=["amount"]),
    ]


def warehouse_item_checks() -> list[QualityCheck]:
    return [
        uniqueness_check(WAREHOUSE_ITEMS, "unified_items", ITEM_KEY),
        reconciliation_check(WAREHOUSE_ITEMS, "unified_items", "unified_items", money_columns=["amount"],
                             compare_counts=False, name="amount_sum_matches_core"),
    ]


def check_groups() -> dict[str, CheckGroup]:
    """Op name -> the checks it runs and their partitions (one step per layer, and per core
    table of the API entities, keeps runs short and a blocking failure narrow)."""
    groups = {
        "raw_quality_checks": CheckGroup(raw_source_checks()),
        "core_unified_items_quality_checks": CheckGroup(core_item_checks()),
        "warehouse_unified_items_quality_checks": CheckGroup(warehouse_item_checks()),
        **entity_check_groups(SOURCES),
    }
    return {name: group for name, group in groups.items() if group.checks}


def all_checks() -> dict[str, list[QualityCheck]]:
    """Op name -> the checks it runs."""
    return {name: group.checks for name, group in check_groups().items()}


def freshness_checks(config: QualityConfig, asset_keys: list[dg.AssetKey]) -> list[dg.AssetChecksDefinition]:
    """Dagster's freshness checks, per rule of the quality file (the first matching rule wins)."""
    groups: dict[int, list[dg.AssetKey]] = {}
    for key in asset_keys:
        rule = config.freshness_for(key.to_user_string())
        if rule is not None:
            groups.setdefault(config.freshness.index(rule), []).append(key)
    built: list[dg.AssetChecksDefinition] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the builders are marked superseded by FreshnessPolicy; chosen on purpose
        for index, keys in sorted(groups.items()):
            rule = config.freshness[index]
            severity = dg.AssetCheckSeverity.ERROR if rule.severity == "ERROR" else dg.AssetCheckSeverity.WARN
            if rule.deadline_cron:
                built.extend(dg.build_time_partition_freshness_checks(
                    assets=keys, deadline_cron=rule.deadline_cron, timezone="UTC", severity=severity))
            else:
                built.extend(dg.build_last_update_freshness_checks(
                    assets=keys, lower_bound_delta=dt.timedelta(minutes=rule.max_lag_minutes), severity=severity))
    return built


@cache
def quality_definitions() -> tuple[dg.Definitions, tuple[dg.AssetChecksDefinition, ...]]:
    """(the definitions, the freshness checks among them); built once per process."""
    config = load_quality_config()
    groups = check_groups()
    known: dict[str, set[str]] = {}
    for group in groups.values():
        for check in group.checks:
            known.setdefault(check.asset_key.to_user_string(), set()).add(check.name)
    known.setdefault(WAREHOUSE_ITEMS.to_user_string(), set()).add("row_count_matches_core")
    config.check_known(known, optional=OPTIONAL_ASSETS)
    asset_checks = [build_checks(name, group.checks, config, group.partitions_def)
                    for name, group in groups.items() if enabled_checks(group.checks, config)]
    # freshness: every checked asset, the raw CSV/feed sources and core/warehouse unified items included
    monitored = list(dict.fromkeys(
        [dg.AssetKey(["raw", s.source_type, s.name]) for s in SOURCES.all()] + [CORE_ITEMS, WAREHOUSE_ITEMS]
        + [check.asset_key for group in groups.values() for check in group.checks]))
    fresh = freshness_checks(config, monitored)
    sensors = [build_monitor_sensor(config)]
    if fresh:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # superseded by FreshnessPolicy, like the builders above
            sensors.append(dg.build_sensor_for_freshness_checks(
                freshness_checks=fresh, minimum_interval_seconds=300, name=FRESHNESS_SENSOR,
                default_status=dg.DefaultSensorStatus.RUNNING))
    definitions = dg.Definitions(assets=[build_scores_asset(config)], asset_checks=[*asset_checks, *fresh], sensors=sensors)
    return definitions, tuple(fresh)


def defs() -> dg.Definitions:
    return quality_definitions()[0]


def freshness_check_defs() -> tuple[dg.AssetChecksDefinition, ...]:
    """The freshness checks: for a job selection that should leave them to their sensor
    (``selection - dg.AssetSelection.checks(*freshness_check_defs())``)."""
    return quality_definitions()[1]


__all__ = ["SCORES_KEY", "defs", "freshness_check_defs", "quality_definitions"]
