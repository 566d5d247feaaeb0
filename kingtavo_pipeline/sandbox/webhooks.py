"""Salla webhooks as Salla sends them: the envelope, signed with ``X-Salla-Signature``."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

import orjson

from kingtavo_pipeline.sandbox.data import RIYADH


def salla_signature(body: bytes, secret: str) -> str:
    """Hex HMAC-SHA256 of the raw body (Salla's "Signature" security strategy)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def salla_webhook(
    event: str, merchant_id: str | int, data: dict[str, Any], secret: str, created_at: datetime
) -> tuple[bytes, dict[str, str]]:
    """(raw body, headers) of a Salla webhook delivery: ``{"event", "merchant", "created_at", "data"}``."""
    envelope = {
        "event": event,
        "merchant": int(merchant_id),
        "created_at": created_at.astimezone(RIYADH).strftime("%Y-%m-%d %H:%M:%S"),
        "data": data,
    }
    body = orjson.dumps(envelope)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Salla-Webhook",
        "X-Salla-Security-Strategy": "Signature",
        "X-Salla-Signature": salla_signature(body, secret),
    }
    return body, headers
