"""The pure data-quality logic: statistics, rules, drift, configuration, scores and alert payloads."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from kingtavo_pipeline.quality.alerts import Alert, AlertTargets, RateLimiter, asset_url, slack_payload, teams_payload
from kingtavo_pipeline.quality.config import (
    QUALITY_FILE_ENV,
    QualityConfigError,
    default_quality_path,
    load_quality_config,
    parse_quality_config,
)
from kingtavo_pipeline.quality.drift import schema_drift
from kingtavo_pipeline.quality.rules import (
    CurrencyCode,
    Email,
    Matches,
    NonNegative,
    NotInFuture,
    OneOf,
    SqlRule,
    ident,
    missing_sql,
    reference_exists_rule,
    sql_literal,
    sum_matches_rule,
)
from kingtavo_pipeline.quality.score import CheckOutcome, integration_of, quality_scores, score_drops
from kingtavo_pipeline.quality.stats import assess_volume, mad, robust_zscore


# --- stats -----------------------------------------------------------------------------------------


def test_no_alarm_until_enough_history():
    verdict = assess_volume([100, 100, 5000], 1_000_000, min_history=4)
    assert verdict.status == "insufficient_history" and verdict.passed and verdict.z is None


def test_robust_zscore_ignores_an_outlier_in_the_window():
    history = [100, 104, 98, 101, 97, 103, 5000]  # one bad day does not widen the band
    assert mad(history) == 3
    ok = assess_volume(history, 106, min_history=7, threshold=3.5)
    spike = assess_volume(history, 140, min_history=7, threshold=3.5)
    assert ok.status == "ok" and ok.median == 101
    assert spike.status == "anomaly" and not spike.passed and spike.z > 3.5
    assert assess_volume(history, 10, min_history=7).status == "anomaly"  # drops alarm too (negative z)


def test_flat_history_uses_a_floor_so_small_changes_do_not_alarm():
    flat = [200] * 10
    assert assess_volume(flat, 210, min_history=7).status == "ok"  # 10 < 3.5 x 5% of 200
    assert assess_volume(flat, 240, min_history=7).status == "anomaly"
    assert robust_zscore(flat, 210) == pytest.approx(1.0)
    assert assess_volume([0] * 8, 0, min_history=7).z == 0.0


def test_sensitivity_and_missing_values():
    history = [10, 12, 11, 9, 10, float("nan"), None, 11, 10]
    assert assess_volume(history, 14, min_history=7).history_size == 7
    assert assess_volume(history, 14, min_history=7, threshold=1.0).status == "anomaly"
    assert assess_volume(history, 14, min_history=7, threshold=5.0).status == "ok"
    with pytest.raises(ValueError):
        assess_volume(history, 1, threshold=0)


# --- rules -------------------------------------------------------------------------------------------


def test_value_rules_in_python():
    assert Email("e").is_valid("ana.lopez+shop@example.co.uk") and not Email("e").is_valid("ana@localhost")
    assert not Email("e").is_valid("no at sign") and Email("e").is_valid(None)
    assert CurrencyCode("c").is_valid("SAR") and CurrencyCode("c").is_valid("USD")
    assert not CurrencyCode("c").is_valid("usd") and not CurrencyCode("c").is_valid("XYZ")
    assert NonNegative("m").is_valid("0") and NonNegative("m").is_valid(12.5) and not NonNegative("m").is_valid("-0.01")
    assert not NonNegative("m").is_valid("NaN") and not NonNegative("m").is_valid("abc")
    now = dt.datetime(2024, 11, 2, 12, tzinfo=dt.timezone.utc)
    rule = NotInFuture("d", skew_seconds=300)
    assert rule.is_valid("2024-11-02T12:04:00Z", now=now) and not rule.is_valid("2024-11-02T12:06:00Z", now=now)
    assert rule.is_valid(dt.datetime(2024, 11, 1), now=now) and not rule.is_valid("garbage", now=now)
    assert OneOf("s", ("open", "paid")).is_valid("paid") and not OneOf("s", ("open", "paid")).is_valid("void")
    assert Matches("u", r"^https?://").is_valid("https://x") and not Matches("u", r"^https?://").is_valid("ftp://x")
    with pytest.raises(ValueError):
        OneOf("s", ())


def test_value_rules_as_sql():
    assert Email("customer_email").violation_sql("postgres").startswith("(customer_email IS NOT NULL AND NOT (customer_email::text ~ E'^")
    assert "match(toString(customer_email)" in Email("customer_email").violation_sql("clickhouse")
    assert "'SAR'" in CurrencyCode("currency").violation_sql("postgres") and "'usd'" not in CurrencyCode("currency").violation_sql("postgres")
    assert NonNegative("total").violation_sql("clickhouse") == "(total IS NOT NULL AND NOT (total >= 0))"
    assert "now() + interval '300 seconds'" in NotInFuture("ordered_at").violation_sql("postgres")
    assert "now64(6, 'UTC') + INTERVAL 300 SECOND" in NotInFuture("ordered_at").violation_sql("clickhouse")
    assert OneOf("status", ("o'k",)).valid_sql("postgres") == "(status::text IN ('o''k'))"
    assert missing_sql("title", "postgres") == "(title IS NULL OR btrim(title::text) = '')"
    assert missing_sql("amount", "clickhouse", blank_is_missing=False) == "(amount IS NULL)"
    assert Email("e").label == "email:e" and NonNegative("total").label == "non_negative:total"
    assert sql_literal("a\\'b") == "'a\\\\''b'" and sql_literal(3) == "3" and sql_literal(None) == "NULL"
    for bad in ("a; DROP TABLE x", "1abc", "a b", "t.c.d"):
        with pytest.raises(ValueError):
            ident(bad)
    with pytest.raises(ValueError):
        Email("email; --")


def test_consistency_rule_builders():
    lines = reference_exists_rule("line_has_order", child_table="order_lines", child_columns=["order_id"],
                                  parent_table="orders", parent_columns=["id"], child_key=["id"])
    assert "NOT EXISTS (SELECT 1 FROM orders p WHERE p.id = c.order_id)" in lines.violations_sql
    assert "c.order_id IS NOT NULL" in lines.violations_sql and "%(start)s" in lines.violations_sql
    total = sum_matches_rule("order_total_matches_lines", parent_table="orders", parent_key=["id"], parent_amount="total",
                             child_table="order_lines", child_key=["order_id"], child_amount="line_total", tolerance=0.05)
    assert dict(total.params) == {"tolerance": 0.05} and "> %(tolerance)s" in total.violations_sql
    assert "sum(l.line_total)" in total.violations_sql
    with pytest.raises(ValueError, match="must filter the range"):
        SqlRule("no_range", "SELECT 1")
    with pytest.raises(ValueError, match="pair up"):
        reference_exists_rule("x", child_table="a", child_columns=["a", "b"], parent_table="p", parent_columns=["id"],
                              child_key=["id"])


# --- drift -------------------------------------------------------------------------------------------


def test_schema_drift_against_mapping_and_baseline():
    expected = {"order_id": None, "total": None, "day": None}
    base = {"order_id": {"string"}, "total": {"string"}, "day": {"string"}, "note": {"string", "null"}, "_line": {"number"}}
    same = {"order_id": {"string"}, "total": {"string", "null"}, "day": {"string"}, "_file": {"string"}}
    assert schema_drift(same, expected=expected, baseline=base).passed
    drifted = schema_drift({"order_id": {"string"}, "total": {"number"}, "coupon": {"string"}},
                           expected=expected, baseline=base)
    assert drifted.new == ("coupon",) and drifted.missing == ("day",) and drifted.retyped == ("total: string -> number",)
    # a first load has no baseline: unmapped fields are not "new" unless the expectation is strict
    assert schema_drift({"order_id": {"string"}, "total": {"string"}, "day": {"string"}, "x": {"string"}},
                        expected=expected).passed
    strict = schema_drift({"id": {"number"}, "x": {"string"}}, expected={"id": "string"}, strict=True)
    assert strict.new == ("x",) and strict.retyped == ("id: string -> number",)


# --- config ------------------------------------------------------------------------------------------


def test_packaged_quality_file_resolves_settings(monkeypatch):
    monkeypatch.delenv(QUALITY_FILE_ENV, raising=False)
    config = load_quality_config()
    assert config.origin == str(default_quality_path())
    completeness = config.settings("core/unified_items", "completeness", "completeness")
    assert completeness.max_rate == 0.05 and completeness.severity == "WARN" and not completeness.blocking
    money = config.settings("core/orders", "money_non_negative", "money")
    assert money.severity == "ERROR" and money.blocking and money.max_rate == 0.0
    volume = config.settings("raw/csv/x", "volume_anomaly", "volume")
    assert (volume.window_days, volume.min_history, volume.threshold) == (28, 7, 3.5)
    assert config.freshness_for("raw/csv/shop_orders").max_lag_minutes == 1560
    assert config.freshness_for("quality/scores") is None


def test_quality_file_override_and_errors_name_file_and_key(tmp_path, monkeypatch):
    path = tmp_path / "q.yaml"
    path.write_text("defaults:\n  volume: {threshold: 5}\nassets:\n  core/orders:\n    volume_anomaly: {min_history: 3}\n")
    monkeypatch.setenv(QUALITY_FILE_ENV, str(path))
    config = load_quality_config()
    settings = config.settings("core/orders", "volume_anomaly", "volume")
    assert (settings.threshold, settings.min_history, settings.window_days) == (5, 3, 28)
    cases = {
        "defaults:\n  volume: {thresold: 5}\n": "defaults.volume.thresold: unknown key",
        "defaults:\n  volumes: {}\n": "defaults.volumes: unknown key",
        "assets:\n  core/x:\n    completeness: {max_rate: 2}\n": "assets.core/x.completeness.max_rate",
        "freshness:\n  - {assets: ['raw/*']}\n": "freshness[0]: give exactly one of deadline_cron",
        "defaults: [\n": "not valid YAML (line",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(QualityConfigError) as err:
            load_quality_config(path)
        assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)
    with pytest.raises(QualityConfigError, match="cannot read"):
        load_quality_config(tmp_path / "missing.yaml")
    typo = parse_quality_config({"assets": {"core/unified_items": {"completness": {}}}}, "q.yaml")
    with pytest.raises(QualityConfigError, match=r"q.yaml: assets.core/unified_items.completness: .*did you mean 'completeness'"):
        typo.check_known({"core/unified_items": {"completeness", "validity"}})


# --- scores ------------------------------------------------------------------------------------------


def test_scores_weight_severity_and_count_the_latest_evaluation():
    outcomes = [
        CheckOutcome("core/orders", "money", "2024-11-01", False, "ERROR", 1.0),
        CheckOutcome("core/orders", "money", "2024-11-01", True, "ERROR", 2.0),  # fixed and re-checked
        CheckOutcome("core/orders", "money", "2024-11-02", False, "ERROR", 2.0),
        CheckOutcome("core/orders", "completeness", "2024-11-02", False, "WARN", 2.0),
        CheckOutcome("raw/salla/orders", "schema_drift", "2024-11-02", True, "WARN", 2.0),
    ]
    scores = quality_scores(outcomes, {"ERROR": 3, "WARN": 1}, {"salla": ["raw/salla/*", "core/orders"]})
    assert set(scores) == {"salla"}
    assert scores["salla"].score == pytest.approx((3 + 1) / (3 + 3 + 1 + 1))
    assert scores["salla"].failed == 2 and scores["salla"].failed_checks == ("core/orders/completeness", "core/orders/money")
    assert integration_of("raw/printavo/invoices", {}) == "printavo" and integration_of("warehouse/x", {}) == "warehouse"
    assert score_drops({"a": 0.9, "b": 0.9}, {"a": 0.8, "b": 0.88, "c": 0.1}, 0.05) == {"a": pytest.approx(0.1)}
    assert quality_scores([], {"ERROR": 3}) == {}


# --- alerts ------------------------------------------------------------------------------------------


def test_alert_payloads_and_links():
    link = asset_url("http://dagster.local:3000/", ["core", "unified items"], partition="2024-11-02")
    assert link == "http://dagster.local:3000/assets/core/unified%20items?view=checks&partition=2024-11-02"
    alert = Alert("k", "Title", "Body", link, "ERROR")
    assert slack_payload(alert) == {"text": f":red_circle: *Title*\nBody\n<{link}|Open in Dagster>"}
    card = teams_payload(alert)["attachments"][0]["content"]
    assert card["body"][0]["color"] == "Attention" and card["actions"][0]["url"] == link


def test_alert_targets_from_env(monkeypatch):
    for name in ("KINGTAVO_ALERT_SLACK_URL", "KINGTAVO_ALERT_TEAMS_URL", "KINGTAVO_DAGSTER_URL"):
        monkeypatch.delenv(name, raising=False)
    assert AlertTargets.from_env().channels == [] and AlertTargets.from_env().dagster_url == "http://127.0.0.1:3000"
    monkeypatch.setenv("KINGTAVO_ALERT_TEAMS_URL", "http://127.0.0.1:9/teams")
    monkeypatch.setenv("KINGTAVO_DAGSTER_URL", "https://dagster.internal/")
    targets = AlertTargets.from_env()
    assert targets.channels == [("teams", "http://127.0.0.1:9/teams")] and targets.dagster_url == "https://dagster.internal"


def test_rate_limiter_per_key_and_per_hour():
    limiter = RateLimiter(per_key_seconds=600, max_per_hour=3)
    assert limiter.allow("a", 0) and not limiter.allow("a", 599) and limiter.allow("a", 600)
    assert limiter.allow("b", 601) and not limiter.allow("c", 602)  # 3 sent within the hour
    assert limiter.take_suppressed() == 2 and limiter.take_suppressed() == 0
    assert limiter.allow("c", 3601)  # the first send left the hour
    restored = RateLimiter(600, 3, state=limiter.state)
    assert not restored.allow("c", 3700) and restored.allow("d", 4300)
    assert not math.isnan(limiter.state["recent"][0])
