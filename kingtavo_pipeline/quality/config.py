"""Thresholds, windows and severities of the data-quality checks, read from YAML.

The packaged ``kingtavo_pipeline/quality.yaml`` is used unless ``KINGTAVO_QUALITY_FILE`` names
another file (which replaces it). A check's settings are, from weakest to strongest: the built-in
fallback for its kind (below), ``defaults.<kind>``, then ``assets.<asset key>.<check name>``.
Errors are one line naming the file and the key.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from kingtavo_pipeline.config_errors import format_validation_errors

QUALITY_FILE_ENV = "KINGTAVO_QUALITY_FILE"

Severity = Literal["ERROR", "WARN"]
CheckKind = Literal[
    "completeness", "validity", "money", "uniqueness", "consistency", "reconciliation", "volume", "schema_drift",
    "timeliness",
]
CHECK_KINDS: tuple[str, ...] = CheckKind.__args__  # type: ignore[attr-defined]


class QualityConfigError(ValueError):
    """The quality file is unreadable or invalid; the message names the file and the key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckSettings(_Model):
    """Settings of one check (every field optional: unset means inherited)."""

    enabled: bool | None = None
    severity: Severity | None = None
    blocking: bool | None = None
    max_rate: float | None = Field(None, ge=0, le=1, description="largest share of bad/missing rows that passes")
    columns: dict[str, float] | None = Field(None, description="per-column max_rate (completeness)")
    tolerance: float | None = Field(None, ge=0, description="absolute money difference that still passes")
    window_days: int | None = Field(None, ge=1, description="trailing partitions a volume check compares with")
    min_history: int | None = Field(None, ge=1, description="partitions of history needed before a volume check alarms")
    threshold: float | None = Field(None, gt=0, description="robust z-score above which a volume check alarms")
    min_scale_fraction: float | None = Field(None, ge=0, description="smallest spread, as a share of the median")
    min_scale: float | None = Field(None, ge=0, description="smallest spread, absolute")
    baseline_days: int | None = Field(None, ge=1, description="partitions of history a schema-drift check compares with")
    sample_size: int | None = Field(None, ge=0, le=50, description="failing keys sampled into metadata")
    max_age_minutes: float | None = Field(None, gt=0, description="timeliness: how long a row may wait unprocessed")

    @model_validator(mode="after")
    def _columns_are_rates(self) -> CheckSettings:
        for column, rate in (self.columns or {}).items():
            if not 0 <= rate <= 1:
                raise ValueError(f"columns.{column}: a rate between 0 and 1, got {rate}")
        return self

    def over(self, base: CheckSettings) -> CheckSettings:
        """These settings with ``base`` filling what is unset."""
        mine = self.model_dump(exclude_none=True)
        return base.model_copy(update=mine)


# What a kind means when neither the file's defaults nor the asset say otherwise. Checks that guard
# the warehouse (uniqueness, reconciliation, money, consistency) block; the rest warn.
BUILTIN: dict[str, CheckSettings] = {
    "completeness": CheckSettings(enabled=True, severity="WARN", blocking=False, max_rate=0.0, sample_size=5),
    "validity": CheckSettings(enabled=True, severity="WARN", blocking=False, max_rate=0.0, sample_size=5),
    "money": CheckSettings(enabled=True, severity="ERROR", blocking=True, max_rate=0.0, sample_size=5),
    "uniqueness": CheckSettings(enabled=True, severity="ERROR", blocking=True, sample_size=5),
    "consistency": CheckSettings(enabled=True, severity="ERROR", blocking=True, tolerance=0.01, sample_size=5),
    "reconciliation": CheckSettings(enabled=True, severity="ERROR", blocking=True, tolerance=0.01, sample_size=5),
    "volume": CheckSettings(enabled=True, severity="WARN", blocking=False, window_days=28, min_history=7,
                            threshold=3.5, min_scale_fraction=0.05, min_scale=1.0),
    "schema_drift": CheckSettings(enabled=True, severity="WARN", blocking=False, baseline_days=28, sample_size=10),
    "timeliness": CheckSettings(enabled=True, severity="WARN", blocking=False, max_age_minutes=60, sample_size=5),
}


class FreshnessRule(_Model):
    """Freshness of the assets matching ``assets`` (patterns such as ``raw/csv/*``): either the
    latest time partition must be in by ``deadline_cron`` (daily sources), or the asset must have
    been updated within ``max_lag_minutes`` (15-minute sources)."""

    assets: list[str] = Field(min_length=1)
    deadline_cron: str | None = None
    max_lag_minutes: int | None = Field(None, ge=1)
    severity: Severity = "WARN"

    @model_validator(mode="after")
    def _one_kind(self) -> FreshnessRule:
        if (self.deadline_cron is None) == (self.max_lag_minutes is None):
            raise ValueError("give exactly one of deadline_cron (time partitions) or max_lag_minutes (last update)")
        return self


class ScoreSettings(_Model):
    weights: dict[Severity, float] = Field(default_factory=lambda: {"ERROR": 3.0, "WARN": 1.0})
    window_days: int = Field(7, ge=1, description="check evaluations of the last N days count")
    drop_alert: float = Field(0.05, ge=0, le=1, description="a score falling by more than this alerts")
    integrations: dict[str, list[str]] = Field(default_factory=dict, description="integration -> asset key patterns")


class AlertSettings(_Model):
    per_check_minutes: float = Field(60, ge=0, description="one alert per check (or score) per this many minutes")
    max_per_hour: int = Field(20, ge=1, description="alerts sent per hour at most; the rest are summarised")
    timeout_seconds: float = Field(10, gt=0)


class QualityConfig(_Model):
    defaults: dict[CheckKind, CheckSettings] = Field(default_factory=dict)
    assets: dict[str, dict[str, CheckSettings]] = Field(default_factory=dict)
    freshness: list[FreshnessRule] = Field(default_factory=list)
    scores: ScoreSettings = Field(default_factory=ScoreSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    _origin: str = PrivateAttr("<quality config>")

    @property
    def origin(self) -> str:
        """The file the settings came from (errors name it)."""
        return self._origin

    def settings(self, asset_key: str, check_name: str, kind: str) -> CheckSettings:
        """The resolved settings of one check: every field set."""
        if kind not in BUILTIN:
            raise ValueError(f"unknown check kind {kind!r}; one of {', '.join(CHECK_KINDS)}")
        resolved = self.defaults.get(kind, CheckSettings()).over(BUILTIN[kind])  # type: ignore[arg-type]
        override = self.assets.get(asset_key, {}).get(check_name)
        return override.over(resolved) if override else resolved

    def check_known(self, known: dict[str, set[str]], optional: Iterable[str] = ()) -> None:
        """Fail when ``assets`` names an asset or a check that does not exist (a typo would
        otherwise silently leave a threshold unapplied). ``known``: asset key -> check names;
        ``optional``: assets that exist only with some sources configured (settings for them are
        kept, unused, while they are absent)."""
        optional = set(optional)
        for asset, checks in self.assets.items():
            if asset not in known and asset in optional:
                continue
            if asset not in known:
                raise QualityConfigError(f"{self.origin}: assets.{asset}: no checked asset by that key{_hint(asset, known)}")
            for name in checks:
                if name not in known[asset]:
                    raise QualityConfigError(
                        f"{self.origin}: assets.{asset}.{name}: no such check on this asset{_hint(name, known[asset])}")

    def freshness_for(self, asset_key: str) -> FreshnessRule | None:
        """The first freshness rule whose patterns match ``asset_key`` (``raw/csv/orders``)."""
        for rule in self.freshness:
            if any(fnmatch.fnmatchcase(asset_key, pattern) for pattern in rule.assets):
                return rule
        return None


def _hint(name: str, allowed) -> str:
    close = difflib.get_close_matches(name, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(allowed))})" if allowed else ""


def default_quality_path() -> Path:
    return Path(__file__).resolve().parent.parent / "quality.yaml"


def parse_quality_config(data: Any, origin: str = "<quality config>") -> QualityConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise QualityConfigError(f"{origin}: the top level must be a mapping, got {type(data).__name__}")
    try:
        config = QualityConfig.model_validate(data)
    except ValidationError as exc:
        raise QualityConfigError(f"{origin}: {format_validation_errors(exc)}") from None
    config._origin = origin
    return config


def load_quality_config(path: str | Path | None = None) -> QualityConfig:
    """The file at ``path``, else ``$KINGTAVO_QUALITY_FILE``, else the packaged ``quality.yaml``."""
    chosen = Path(path or os.environ.get(QUALITY_FILE_ENV, "").strip() or default_quality_path()).expanduser()
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise QualityConfigError(f"{chosen}: cannot read the quality file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise QualityConfigError(f"{chosen}: not valid YAML{where}") from None
    return parse_quality_config(data, origin=str(chosen))
