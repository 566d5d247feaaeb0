"""Alerts on failed checks and score drops, to a Slack-compatible and a Microsoft Teams webhook.

Where they go comes from the environment: ``KINGTAVO_ALERT_SLACK_URL`` (a Slack incoming webhook,
or anything that takes Slack's ``{"text": ...}``, e.g. Mattermost or Rocket.Chat) and
``KINGTAVO_ALERT_TEAMS_URL`` (a Teams Workflows webhook; the body is an Adaptive Card message).
Every alert links to the asset in the Dagster UI under ``KINGTAVO_DAGSTER_URL``.

Rate limiting is by alert key (one check, or one integration's score) and overall per hour; its
state is a plain dict the caller persists (the alert sensor keeps it in its cursor), so limits hold
across processes. Webhook URLs are secrets: they never appear in messages, logs or errors.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import quote, urlencode

from kingtavo_pipeline.extract.http import HttpError, HttpPolicy, ResilientClient

SLACK_URL_ENV = "KINGTAVO_ALERT_SLACK_URL"
TEAMS_URL_ENV = "KINGTAVO_ALERT_TEAMS_URL"
DAGSTER_URL_ENV = "KINGTAVO_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
HOUR = 3600.0


@dataclass(frozen=True)
class AlertTargets:
    slack_url: str | None = None
    teams_url: str | None = None
    dagster_url: str = DEFAULT_DAGSTER_URL

    @classmethod
    def from_env(cls) -> AlertTargets:
        def env(name: str) -> str | None:
            return os.environ.get(name, "").strip() or None

        return cls(env(SLACK_URL_ENV), env(TEAMS_URL_ENV), (env(DAGSTER_URL_ENV) or DEFAULT_DAGSTER_URL).rstrip("/"))

    @property
    def channels(self) -> list[tuple[str, str]]:
        return [(name, url) for name, url in (("slack", self.slack_url), ("teams", self.teams_url)) if url]


def asset_url(dagster_url: str, asset_key: Sequence[str], *, view: str = "checks", partition: str | None = None) -> str:
    """The asset's page in the Dagster UI (``/assets/core/unified_items?view=checks``)."""
    path = "/".join(quote(part, safe="") for part in asset_key)
    query = {"view": view, **({"partition": partition} if partition else {})}
    return f"{dagster_url.rstrip('/')}/assets/{path}?{urlencode(query)}"


@dataclass(frozen=True)
class Alert:
    key: str  # what rate limiting counts by: "core/unified_items:completeness", "score:csv"
    title: str
    text: str
    link: str
    severity: str = "ERROR"


def slack_payload(alert: Alert) -> dict:
    """Slack's incoming-webhook body: ``text`` (mrkdwn, with the link) is what every compatible
    receiver reads."""
    icon = ":red_circle:" if alert.severity == "ERROR" else ":warning:"
    return {"text": f"{icon} *{alert.title}*\n{alert.text}\n<{alert.link}|Open in Dagster>"}


def teams_payload(alert: Alert) -> dict:
    """A Teams Workflows webhook body: one Adaptive Card with an "Open in Dagster" action."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "text": alert.title, "weight": "Bolder", "size": "Medium",
                         "color": "Attention" if alert.severity == "ERROR" else "Warning", "wrap": True},
                        {"type": "TextBlock", "text": alert.text, "wrap": True},
                    ],
                    "actions": [{"type": "Action.OpenUrl", "title": "Open in Dagster", "url": alert.link}],
                },
            }
        ],
    }


@dataclass
class RateLimiter:
    """At most one alert per key per ``per_key_seconds`` and ``max_per_hour`` overall.

    ``state`` is JSON-able: ``{"sent": {key: time}, "recent": [times], "suppressed": n}``.
    """

    per_key_seconds: float = HOUR
    max_per_hour: int = 20
    state: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = {"sent": dict(self.state.get("sent", {})), "recent": list(self.state.get("recent", [])),
                      "suppressed": int(self.state.get("suppressed", 0))}

    def allow(self, key: str, now: float) -> bool:
        """Whether an alert for ``key`` may go out at ``now``; records it when it may."""
        recent = [t for t in self.state["recent"] if now - t < HOUR]
        last = self.state["sent"].get(key)
        if (last is not None and now - last < self.per_key_seconds) or len(recent) >= self.max_per_hour:
            self.state["recent"] = recent
            self.state["suppressed"] += 1
            return False
        self.state["recent"] = [*recent, now]
        self.state["sent"][key] = now
        # forget keys whose quiet period is over: the state stays small
        self.state["sent"] = {k: t for k, t in self.state["sent"].items() if now - t < max(self.per_key_seconds, HOUR)}
        return True

    def take_suppressed(self) -> int:
        n, self.state["suppressed"] = self.state["suppressed"], 0
        return n


@dataclass
class SendReport:
    sent: list[str] = field(default_factory=list)  # alert keys delivered to at least one channel
    suppressed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "slack: retryable (HTTP 503)"; never the URL


def _client(timeout: float) -> ResilientClient:
    policy = HttpPolicy(connect_timeout=timeout, read_timeout=timeout, max_attempts=3, backoff_initial=0.5,
                        backoff_max=5.0, max_retry_after=30.0, max_response_bytes=2**20)
    return ResilientClient("quality-alerts", policy)


def send_alerts(
    alerts: Iterable[Alert],
    targets: AlertTargets,
    limiter: RateLimiter,
    *,
    timeout: float = 10.0,
    now: Callable[[], float] = time.time,
    client: ResilientClient | None = None,
) -> SendReport:
    """Post each alert the limiter allows to every configured channel.

    Alerts suppressed by the limiter are counted, and the next alert that goes out says how many
    were held back. With no channel configured nothing is sent and nothing is counted as sent.
    """
    report = SendReport()
    channels = targets.channels
    if not channels:
        return report
    own = client is None
    client = client or _client(timeout)
    try:
        for alert in alerts:
            if not limiter.allow(alert.key, now()):
                report.suppressed.append(alert.key)
                continue
            held = limiter.take_suppressed()
            if held:
                alert = replace(alert, text=f"{alert.text}\n({held} other alert(s) were held back by rate limiting)")
            delivered = False
            for name, url in channels:
                body = slack_payload(alert) if name == "slack" else teams_payload(alert)
                try:
                    client.post(url, json=body)
                    delivered = True
                except HttpError as exc:
                    report.errors.append(f"{name}: {exc.kind}" + (f" (HTTP {exc.status})" if exc.status else ""))
            if delivered:
                report.sent.append(alert.key)
    finally:
        if own:
            client.close()
    return report
