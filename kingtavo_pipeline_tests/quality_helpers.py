"""Helpers for the data-quality tests: the code location with the quality checks, and check-only runs."""

from __future__ import annotations

import dagster as dg

from kingtavo_pipeline.definitions import defs as load_definitions
from kingtavo_pipeline.defs.core.assets import core_unified_items
from kingtavo_pipeline.defs.ingest.assets import raw_assets
from kingtavo_pipeline.defs.quality import SCORES_KEY, quality_definitions
from kingtavo_pipeline.defs.warehouse.assets import warehouse_unified_items

FRESHNESS = "freshness_check"


def quality_location() -> dg.Definitions:
    """The code location with the quality definitions (merged here while definitions.py lacks them)."""
    base = load_definitions()
    if SCORES_KEY in base.resolve_asset_graph().get_all_asset_keys():
        return base
    return dg.Definitions.merge(base, quality_definitions()[0])


def checks_def(op_name: str) -> dg.AssetChecksDefinition:
    return next(c for c in quality_definitions()[0].asset_checks if c.node_def.name == op_name)


def range_tags(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


def run_checks(checks: dg.AssetChecksDefinition, *, partition: str | None = None, start: str | None = None,
               end: str | None = None, resources=None, instance=None, raise_on_error: bool = False):
    """Run only ``checks`` (as the UI's Execute button does) for one partition or a range."""
    tags = {"dagster/partition": partition} if partition else range_tags(start, end)
    return dg.materialize(
        [core_unified_items, warehouse_unified_items, *raw_assets, checks],
        selection=dg.AssetSelection.checks(checks),
        tags=tags,
        resources=resources or dict(load_definitions().resources),
        instance=instance,
        raise_on_error=raise_on_error,
    )


def evaluations(result) -> dict[tuple[str, str, str | None], dg.AssetCheckEvaluation]:
    """(asset, check, partition) -> evaluation, freshness checks left out."""
    return {(e.asset_key.to_user_string(), e.check_name, e.partition): e
            for e in result.get_asset_check_evaluations() if e.check_name != FRESHNESS}


def values(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {k: v.value for k, v in evaluation.metadata.items()}
