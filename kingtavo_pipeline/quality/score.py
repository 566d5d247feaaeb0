"""A quality score per integration: the share of passed checks, weighted by severity.

Each (check, partition) counts once, at its latest evaluation in the window, so a partition that
was fixed and checked again counts as passed. An ERROR check weighs more than a WARN one (weights
come from the quality file).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckOutcome:
    asset_key: str  # "core/unified_items"
    check_name: str
    partition: str | None
    passed: bool
    severity: str  # "ERROR" | "WARN"
    timestamp: float = 0.0


@dataclass(frozen=True)
class IntegrationScore:
    integration: str
    score: float  # 0..1
    evaluations: int
    failed: int
    failed_checks: tuple[str, ...]  # "asset/check" of failed evaluations, sorted, distinct


def integration_of(asset_key: str, integrations: Mapping[str, Sequence[str]]) -> str:
    """The integration an asset belongs to: the first whose patterns match, else the source part
    of a ``raw/<source>/...`` key, else the key's first part (its layer)."""
    for name, patterns in integrations.items():
        if any(fnmatch.fnmatchcase(asset_key, p) for p in patterns):
            return name
    parts = asset_key.split("/")
    return parts[1] if parts[0] == "raw" and len(parts) > 2 else parts[0]


def latest_outcomes(outcomes: Iterable[CheckOutcome]) -> list[CheckOutcome]:
    """One outcome per (asset, check, partition): the newest."""
    newest: dict[tuple[str, str, str | None], CheckOutcome] = {}
    for outcome in outcomes:
        key = (outcome.asset_key, outcome.check_name, outcome.partition)
        if key not in newest or outcome.timestamp >= newest[key].timestamp:
            newest[key] = outcome
    return list(newest.values())


def quality_scores(
    outcomes: Iterable[CheckOutcome],
    weights: Mapping[str, float],
    integrations: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, IntegrationScore]:
    """Score per integration over the newest outcome of each (asset, check, partition)."""
    groups: dict[str, list[CheckOutcome]] = {}
    for outcome in latest_outcomes(outcomes):
        groups.setdefault(integration_of(outcome.asset_key, integrations or {}), []).append(outcome)
    scores = {}
    for name, group in sorted(groups.items()):
        total = sum(weights.get(o.severity, 1.0) for o in group)
        good = sum(weights.get(o.severity, 1.0) for o in group if o.passed)
        failed = [o for o in group if not o.passed]
        scores[name] = IntegrationScore(
            integration=name,
            score=good / total if total else 1.0,
            evaluations=len(group),
            failed=len(failed),
            failed_checks=tuple(sorted({f"{o.asset_key}/{o.check_name}" for o in failed})),
        )
    return scores


def score_drops(previous: Mapping[str, float], current: Mapping[str, float], threshold: float) -> dict[str, float]:
    """Integrations whose score fell by more than ``threshold`` since ``previous``: name -> drop."""
    return {
        name: round(previous[name] - score, 6)
        for name, score in current.items()
        if name in previous and previous[name] - score > threshold
    }
