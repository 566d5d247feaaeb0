"""Configuration of the sandbox: what data it seeds, how it limits, which faults it injects."""

from __future__ import annotations

import datetime
from typing import Any

from pydantic import BaseModel, Field

DEFAULT_TODAY = datetime.date(2026, 11, 30)


class Faults(BaseModel):
    """Fault switches; probabilities are per request and drawn from an RNG seeded by the sandbox seed."""

    rate_5xx: float = Field(0.0, ge=0.0, le=1.0)
    rate_429: float = Field(0.0, ge=0.0, le=1.0)
    rate_timeout: float = Field(0.0, ge=0.0, le=1.0)
    slow_seconds: float = Field(0.0, ge=0.0)  # added latency per response
    timeout_seconds: float = Field(30.0, ge=0.0)  # how long a "timeout" request hangs before answering 504
    storm_429_requests: int = Field(0, ge=0)  # the next N API requests answer 429 (a storm)
    retry_after: str = "1"  # Retry-After on injected 429s (seconds or an HTTP-date)
    malformed_rate: float = Field(0.0, ge=0.0, le=1.0)  # share of records returned with a broken field
    rename_fields: dict[str, str] = Field(default_factory=dict)  # schema drift: {"total": "grand_total"}
    add_fields: dict[str, Any] = Field(default_factory=dict)  # schema drift: extra field on every object
    # share of Salla records the drift applies to (a stable hash of the record id picks them, so the
    # ground truth can name them: Truth.drifted_ids); an order's lines drift with their order.
    # Printavo's drift is in its GraphQL schema and applies to every record.
    drift_rate: float = Field(1.0, ge=0.0, le=1.0)


class SandboxConfig(BaseModel):
    seed: int = 7
    today: datetime.date = DEFAULT_TODAY
    days: int = Field(730, ge=1)  # history back from `today` (today included)
    salla_merchants: int = Field(3, ge=1, le=9)
    orders_per_day: float = Field(12.0, ge=0.0)
    printavo_invoices_per_day: float = Field(4.0, ge=0.0)
    salla_requests_per_minute: int = Field(120, ge=1)  # per merchant (store), like Salla's plans
    salla_customers_requests_per_10min: int = Field(500, ge=1)  # Salla's extra limit on /customers
    printavo_requests: int = Field(10, ge=1)
    printavo_window_seconds: float = Field(5.0, gt=0.0)
    access_token_ttl_seconds: int = Field(14 * 24 * 3600, ge=1)
    refresh_token_ttl_seconds: int = Field(30 * 24 * 3600, ge=1)
    salla_webhook_secret: str = "sandbox-salla-webhook-secret"
    faults: Faults = Field(default_factory=Faults)


class SallaMerchantCredentials(BaseModel):
    merchant_id: str
    access_token: str
    refresh_token: str

    def __getitem__(self, key: str) -> str:
        """``creds["access_token"]`` works too: callers written against the dict shape keep working."""
        return getattr(self, key)


class SandboxCredentials(BaseModel):
    printavo_email: str
    printavo_token: str
    salla_client_id: str
    salla_client_secret: str
    salla_merchants: list[SallaMerchantCredentials]

    def salla_merchant(self, merchant_id: str) -> SallaMerchantCredentials:
        for merchant in self.salla_merchants:
            if merchant.merchant_id == str(merchant_id):
                return merchant
        raise KeyError(f"no sandbox merchant {merchant_id}")
