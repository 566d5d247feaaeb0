"""Webhook ingress: verify inbound webhooks, store them durably in ``webhook_events``.

``serve(host, port, config_path)`` runs the HTTP service (``kingtavo serve``), ``serving(app)`` runs
it in a background thread; ``create_app`` builds the Starlette app; :mod:`.schemes` verifies and
signs (pure), :mod:`.config` loads the YAML file.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "app_from_settings", "serve", "serving"]


def __getattr__(name: str) -> Any:
    # lazy: the pure modules (schemes, events, config) must not pull in psycopg and Starlette
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
