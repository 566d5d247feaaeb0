"""Extraction: the resilient HTTP layer every connector uses (see :mod:`.http`)."""

from __future__ import annotations

from .clock import SYSTEM_CLOCK, Clock, SystemClock
from .http import (
    AuthError,
    BadPayloadError,
    CircuitOpenError,
    HttpError,
    HttpPolicy,
    NotFoundError,
    RateLimitedError,
    ResilientClient,
    RetryableError,
)

__all__ = [
    "SYSTEM_CLOCK",
    "AuthError",
    "BadPayloadError",
    "CircuitOpenError",
    "Clock",
    "HttpError",
    "HttpPolicy",
    "NotFoundError",
    "RateLimitedError",
    "ResilientClient",
    "RetryableError",
    "SystemClock",
]
