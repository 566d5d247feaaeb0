"""Webhook events into the pipeline: the ``raw/webhooks/events`` asset, ``webhook_events_job`` and
``webhook_events_sensor``."""

import dagster as dg

from kingtavo_pipeline.defs.webhooks.assets import WEBHOOK_EVENTS_KEY, raw_webhook_events
from kingtavo_pipeline.defs.webhooks.sensors import webhook_events_job, webhook_events_sensor

__all__ = ["WEBHOOK_EVENTS_KEY", "defs", "raw_webhook_events", "webhook_events_job", "webhook_events_sensor"]


def defs() -> dg.Definitions:
    return dg.Definitions(assets=[raw_webhook_events], jobs=[webhook_events_job], sensors=[webhook_events_sensor])
