"""Quality alerts over real HTTP to a local Slack/Teams-compatible receiver, and the monitor sensor
on check evaluations recorded from real loads."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import kingtavo_pipeline.defs.core.assets as core_assets
from kingtavo_pipeline.definitions import defs as load_definitions
from kingtavo_pipeline.defs.quality import SCORES_KEY
from kingtavo_pipeline.defs.quality.scores import score_partitions
from kingtavo_pipeline.defs.quality.sensors import MONITOR_SENSOR
from kingtavo_pipeline.defs.resources import PostgresResource
from kingtavo_pipeline.quality.alerts import (
    DAGSTER_URL_ENV,
    SLACK_URL_ENV,
    TEAMS_URL_ENV,
    Alert,
    AlertTargets,
    RateLimiter,
    send_alerts,
)
from kingtavo_pipeline_tests.http_servers import serve_app
from kingtavo_pipeline_tests.pipeline_helpers import one_csv_source
from kingtavo_pipeline_tests.quality_helpers import checks_def, quality_location, run_checks

DAGSTER = "http://dagster.example.test:3000"
SECRET_PATH = "/slack/T000/B000/s3cr3tT0ken"


@pytest.fixture
def receiver():
    """A local webhook receiver: records every POST body by path; /refuse answers 403."""
    received: list[tuple[str, dict]] = []

    async def hook(request: Request):
        if request.url.path == "/refuse":
            return JSONResponse({"error": "forbidden"}, status_code=403)
        received.append((request.url.path, json.loads(await request.body())))
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])
    with serve_app(app) as base:
        yield base, received


def test_alerts_reach_slack_and_teams_with_a_link_and_are_rate_limited(receiver):
    base, received = receiver
    targets = AlertTargets(slack_url=base + SECRET_PATH, teams_url=base + "/teams", dagster_url=DAGSTER)
    link = f"{DAGSTER}/assets/core/unified_items?view=checks"
    clock = iter([1000.0, 1001.0, 1002.0, 1003.0, 5000.0])
    limiter = RateLimiter(per_key_seconds=3600, max_per_hour=2)
    first = Alert("core/unified_items:completeness", "core/unified_items completeness failed (WARN)", "2 partitions", link, "WARN")
    report = send_alerts([first, first, Alert("b", "B", "b", link), Alert("c", "C", "c", link)], targets, limiter,
                         now=lambda: next(clock))
    # the repeat of a key within the hour, and a third alert within the hour, are held back
    assert report.sent == ["core/unified_items:completeness", "b"] and report.suppressed == ["core/unified_items:completeness", "c"]
    assert [path for path, _ in received] == [SECRET_PATH, "/teams", SECRET_PATH, "/teams"]
    slack, teams = received[0][1], received[1][1]
    assert slack["text"].startswith(":warning: *core/unified_items completeness failed (WARN)*")
    assert f"<{link}|Open in Dagster>" in slack["text"]
    card = teams["attachments"][0]["content"]
    assert teams["type"] == "message" and card["type"] == "AdaptiveCard"
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open in Dagster", "url": link}]
    assert card["body"][0]["text"] == "core/unified_items completeness failed (WARN)"
    # the next alert out says how many were held back before it: "b" the repeat, "d" (an hour later) "c"
    assert "(1 other alert(s) were held back by rate limiting)" in received[2][1]["text"]
    later = send_alerts([Alert("d", "D", "d", link)], targets, RateLimiter(3600, 2, json.loads(json.dumps(limiter.state))),
                        now=lambda: 5000.0)
    assert later.sent == ["d"] and "(1 other alert(s) were held back by rate limiting)" in received[-2][1]["text"]

    refused = send_alerts([Alert("e", "E", "e", link)], AlertTargets(slack_url=base + "/refuse"), RateLimiter())
    assert refused.sent == [] and refused.errors == ["slack: auth (HTTP 403)"]
    assert send_alerts([Alert("f", "F", "f", link)], AlertTargets(), RateLimiter()).sent == []


def tick(sensor, instance, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                      repository_def=quality_location().get_repository_def())
    result = sensor(context)
    return result, context.cursor


def materialize_scores(instance, day: str):
    job = dg.Definitions.merge(quality_location(), dg.Definitions(
        jobs=[dg.define_asset_job("scores_only", selection=[SCORES_KEY], partitions_def=score_partitions)]
    )).resolve_job_def("scores_only")
    result = job.execute_in_process(instance=instance, partition_key=day)
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_monitor_sensor_alerts_failed_checks_and_score_drops(store, clickhouse, tmp_path, monkeypatch, receiver):
    base, received = receiver
    monkeypatch.setenv(SLACK_URL_ENV, base + SECRET_PATH)
    monkeypatch.setenv(TEAMS_URL_ENV, base + "/teams")
    monkeypatch.setenv(DAGSTER_URL_ENV, DAGSTER + "/")
    raw, resources = one_csv_source(tmp_path, monkeypatch, "external_id: id, title: name, category: kind, amount: amount")
    (tmp_path / "orders.csv").write_text("id,day,name,kind,amount\n1,2024-11-01,a,k,5\n2,2024-11-01,b,k,6\n")
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([raw], partition_key="2024-11-01", resources=resources, instance=instance).success
    assert dg.materialize([core_assets.core_unified_items], partition_key="2024-11-01", resources=resources,
                          instance=instance).success
    core_checks = checks_def("core_unified_items_quality_checks")
    assert run_checks(core_checks, partition="2024-11-01", resources=resources, instance=instance).success

    sensor = quality_location().get_sensor_def(MONITOR_SENSOR)
    skipped, cursor = tick(sensor, instance, None)
    assert isinstance(skipped, dg.SkipReason) and "started watching" in skipped.skip_message
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    before = materialize_scores(instance, today)
    assert before["score:unified_items"] == 1.0 and before["evaluations:unified_items"] == 6

    with store.transaction() as conn:
        conn.execute("UPDATE unified_items SET amount = -5 WHERE external_id = '1'")
    assert not run_checks(core_checks, partition="2024-11-01", resources=resources, instance=instance).success
    request, cursor = tick(sensor, instance, cursor)
    assert isinstance(request, dg.RunRequest) and request.partition_key == today
    assert request.asset_selection == [SCORES_KEY]
    slack = [body["text"] for path, body in received if path == SECRET_PATH]
    assert len(slack) == 1 and len([p for p, _ in received if p == "/teams"]) == 1
    assert "core/unified_items money_non_negative failed (ERROR)" in slack[0]
    assert "on 1 partition(s): 2024-11-01" in slack[0] and "non_negative:amount" in slack[0]
    assert f"<{DAGSTER}/assets/core/unified_items?view=checks&partition=2024-11-01|Open in Dagster>" in slack[0]

    # the score falls from 1.0 (ERROR checks weigh 3, WARN 1: money is 3 of 12): recorded, then alerted
    after = materialize_scores(instance, today)
    assert after["score:unified_items"] == pytest.approx(0.75) and after["failed:unified_items"] == 1
    assert after["score_drops"] == {"unified_items": pytest.approx(0.25)}
    assert after["failed_checks"] == {"unified_items": ["core/unified_items/money_non_negative"]}
    _, cursor = tick(sensor, instance, cursor)
    assert "Quality score of unified_items dropped by 25.0% to 75.0%" in received[-2][1]["text"]
    assert f"{DAGSTER}/assets/quality/scores?view=plots" in received[-2][1]["text"]

    # a check step that cannot reach its store: alerted as "could not run", once
    unreachable = {**load_definitions().resources, "postgres": PostgresResource(postgres_url="postgresql://postgres@127.0.0.1:9/x")}
    assert not run_checks(core_checks, partition="2024-11-01", resources=unreachable, instance=instance).success
    sent = len(received)
    _, cursor = tick(sensor, instance, cursor)
    texts = [body["text"] for path, body in received[sent:] if path == SECRET_PATH]
    assert any("core/unified_items volume_anomaly could not run (ERROR)" in t for t in texts)
    # money_non_negative alerted an hour ago at most: rate-limited, not repeated
    assert not any("money_non_negative" in t for t in texts)
    sent = len(received)
    tick(sensor, instance, cursor)
    assert len(received) == sent
    assert "s3cr3tT0ken" not in json.dumps(json.loads(cursor)) and all("s3cr3tT0ken" not in json.dumps(b) for _, b in received)
