"""Simulated Printavo GraphQL and Salla Admin REST APIs with seeded data, faults and ground truth."""

from __future__ import annotations

from kingtavo_pipeline.sandbox.app import Sandbox, describe, serve
from kingtavo_pipeline.sandbox.config import (
    Faults,
    SallaMerchantCredentials,
    SandboxConfig,
    SandboxCredentials,
)
from kingtavo_pipeline.sandbox.truth import Truth
from kingtavo_pipeline.sandbox.webhooks import salla_signature

__all__ = [
    "Faults",
    "SallaMerchantCredentials",
    "Sandbox",
    "SandboxConfig",
    "SandboxCredentials",
    "Truth",
    "describe",
    "salla_signature",
    "serve",
]
