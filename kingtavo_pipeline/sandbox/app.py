"""The sandbox: simulated Printavo GraphQL and Salla Admin REST APIs on one Starlette app.

URL layout under the base URL::

    POST /printavo/api/v2                       Printavo GraphQL (headers email, token)
    GET  /salla/admin/v2/orders|orders/{id}|orders/items?order_id=|products|customers   (Bearer)
    POST /salla/oauth2/token                    Salla OAuth2 (grant_type=refresh_token)
    GET  /_sandbox                              clock, merchants, fault switches
    GET|POST /_sandbox/faults                   read / replace the fault switches (Faults JSON)
    POST /_sandbox/advance                      {"days": .., "seconds": ..}
    GET  /_sandbox/truth/{api}/{entity}?merchant_id=&start=&end=
    GET  /_sandbox/credentials
    POST /_sandbox/salla/orders/update          {"merchant_id", "order_id", "status"} (webhook-free update)

The ``/_sandbox`` routes are test controls, not part of any real API.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timezone
from typing import Any

import httpx
import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from kingtavo_pipeline.sandbox.config import Faults, SandboxConfig, SandboxCredentials
from kingtavo_pipeline.sandbox.printavo import PrintavoApi
from kingtavo_pipeline.sandbox.salla import SallaApi
from kingtavo_pipeline.sandbox.server import serve_in_thread
from kingtavo_pipeline.sandbox.state import LoggedRequest, SandboxState, json_response
from kingtavo_pipeline.sandbox.truth import Truth
from kingtavo_pipeline.sandbox.webhooks import salla_webhook


class Sandbox:
    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.state = SandboxState(self.config)
        self.world = self.state.world
        self.credentials: SandboxCredentials = self.state.credentials
        self.truth = Truth(self.state)
        self.base_url: str | None = None  # set while running()
        self._app: Starlette | None = None
        self._app_lock = threading.Lock()

    # ------------------------------------------------------------ serving

    def app(self) -> Starlette:
        with self._app_lock:
            if self._app is None:
                self._app = Starlette(
                    routes=[
                        Mount("/salla", routes=SallaApi(self.state).routes()),
                        Mount("/printavo", routes=PrintavoApi(self.state).routes()),
                        Route("/_sandbox", self._info),
                        Route("/_sandbox/faults", self._faults, methods=["GET", "POST"]),
                        Route("/_sandbox/advance", self._advance, methods=["POST"]),
                        Route("/_sandbox/credentials", self._credentials),
                        Route("/_sandbox/truth/{api}/{entity}", self._truth),
                        Route("/_sandbox/salla/orders/update", self._update_salla_order, methods=["POST"]),
                    ]
                )
            return self._app

    @contextlib.contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve on ``host:port`` (0: a free port) in a background thread; yields the base URL."""
        with serve_in_thread(self.app(), host, port) as base_url:
            self.base_url = base_url
            try:
                yield base_url
            finally:
                self.base_url = None

    # ------------------------------------------------------------ controls

    @property
    def faults(self) -> Faults:
        return self.state.faults.faults

    def set_faults(self, faults: Faults | dict[str, Any] | None = None, **switches: Any) -> None:
        """Replace the fault switches (``Faults()`` turns everything off); same as POST /_sandbox/faults."""
        if faults is None or isinstance(faults, dict):
            faults = Faults.model_validate({**(faults or {}), **switches})
        self.state.faults.set(faults)

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.world.now_ts, timezone.utc)

    def advance(self, days: float = 0, seconds: float = 0) -> datetime:
        """Move the sandbox clock forward: scheduled updates (and new orders) up to then appear, and
        token lifetimes count the advance too."""
        self.world.advance(days, seconds)
        return self.now

    @property
    def merchant_ids(self) -> list[str]:
        return [m.merchant_id for m in self.world.merchants]

    def update_salla_order(
        self, merchant_id: str | int, order_id: int | str, status: str | None = None
    ) -> dict[str, Any]:
        """Apply an update now (a status slug, or None for an edit); returns the new detail with items."""
        return self.world.update_salla_order(str(merchant_id), order_id, status)

    def update_printavo_order(
        self, order_id: str, status: str | None = None, paid: float | None = None
    ) -> dict[str, Any]:
        """Apply an update to an invoice/quote now (status name or id, share paid 0..1)."""
        return self.world.update_printavo_order(order_id, status, paid)

    def revoke_salla_grant(self, merchant_id: str | int) -> None:
        """The merchant uninstalled the app: its tokens stop working."""
        self.state.oauth.revoke(str(merchant_id))

    def salla_refresh_count(self, merchant_id: str | int) -> int:
        """How many refreshes the token endpoint granted for a merchant."""
        return self.state.oauth.refresh_count(str(merchant_id))

    def requests(self, api: str | None = None) -> list[LoggedRequest]:
        """API requests served so far (newest last; bounded), optionally of one api."""
        return [r for r in list(self.state.requests) if api is None or r.api == api]

    # ------------------------------------------------------------ webhooks

    def salla_webhook(
        self, event: str, merchant_id: str | int, obj: dict[str, Any], secret: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """(raw body, headers) of a signed Salla webhook carrying ``obj``."""
        return salla_webhook(event, merchant_id, obj, secret or self.config.salla_webhook_secret, self.now)

    def salla_order_webhook(
        self,
        merchant_id: str | int,
        order_id: int | str,
        status: str | None = None,
        event: str = "order.updated",
        secret: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """Update an order now and return the webhook announcing it (the API then shows the same state)."""
        if status is not None or event == "order.updated":
            order = self.update_salla_order(merchant_id, order_id, status)
        else:  # e.g. order.created: announce the order as it is
            m = self.world.merchant(merchant_id)
            o = self.world.salla_order(m, order_id)
            if o is None:
                raise KeyError(f"no order {order_id} for merchant {merchant_id}")
            order = self.world.salla_order_full(m, o)
        return self.salla_webhook(event, merchant_id, order, secret)

    def send_salla_webhook(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float = 10.0
    ) -> httpx.Response:
        """POST a webhook built by :meth:`salla_webhook` to a receiver."""
        return httpx.post(url, content=body, headers=headers, timeout=timeout)

    # ------------------------------------------------------------ control endpoints

    async def _info(self, request: Request) -> Response:
        return json_response(
            {
                "now": self.now.isoformat(),
                "today": self.config.today.isoformat(),
                "days": self.config.days,
                "seed": self.config.seed,
                "salla_merchants": self.merchant_ids,
                "faults": self.faults.model_dump(),
                "storm_429_left": self.state.faults.storm_left,
            }
        )

    async def _faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.set_faults(Faults.model_validate_json(await request.body() or b"{}"))
            except ValidationError as exc:
                return json_response({"error": "invalid faults", "details": orjson.loads(exc.json())}, 422)
        return json_response(self.faults.model_dump())

    async def _advance(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
            now = self.advance(float(body.get("days", 0)), float(body.get("seconds", 0)))
        except (ValueError, TypeError, AttributeError) as exc:
            return json_response({"error": str(exc)}, 422)
        return json_response({"now": now.isoformat()})

    async def _credentials(self, request: Request) -> Response:
        return json_response(self.credentials.model_dump())

    async def _truth(self, request: Request) -> Response:
        q = request.query_params
        try:
            start = date.fromisoformat(q["start"]) if q.get("start") else None
            end = date.fromisoformat(q["end"]) if q.get("end") else None
            report = self.truth.report(
                request.path_params["api"], request.path_params["entity"], q.get("merchant_id"), start, end
            )
        except KeyError as exc:
            return json_response({"error": str(exc.args[0]) if exc.args else "not found"}, 404)
        except ValueError as exc:
            return json_response({"error": str(exc)}, 422)
        return json_response(report)

    async def _update_salla_order(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
            order = self.update_salla_order(body["merchant_id"], body["order_id"], body.get("status"))
        except KeyError as exc:
            return json_response({"error": str(exc.args[0]) if exc.args else "not found"}, 404)
        except (ValueError, TypeError) as exc:
            return json_response({"error": str(exc)}, 422)
        return json_response(order)


def describe(sandbox: Sandbox, base_url: str) -> str:
    """The banner ``kingtavo sandbox`` prints: where the APIs are and how to log in."""
    c = sandbox.credentials
    cfg = sandbox.config
    lines = [
        f"Kingtavo sandbox at {base_url} (seed {cfg.seed}, today {cfg.today}, {cfg.days} days)",
        "",
        f"Printavo GraphQL  POST {base_url}/printavo/api/v2",
        f"  email: {c.printavo_email}",
        f"  token: {c.printavo_token}",
        "",
        f"Salla Admin API   {base_url}/salla/admin/v2",
        f"Salla token URL   {base_url}/salla/oauth2/token",
        f"  client_id:     {c.salla_client_id}",
        f"  client_secret: {c.salla_client_secret}",
    ]
    for m in c.salla_merchants:
        lines += [
            f"  merchant {m.merchant_id}",
            f"    access_token:  {m.access_token}",
            f"    refresh_token: {m.refresh_token}",
        ]
    lines += ["", f"Controls          {base_url}/_sandbox (faults, advance, truth, credentials)"]
    return "\n".join(lines)


def serve(host: str, port: int, config: SandboxConfig | None = None) -> None:
    """Run the sandbox until interrupted (``kingtavo sandbox --host --port``); prints the base URL and
    the credentials on start."""
    sandbox = Sandbox(config)
    with sandbox.running(host, port) as base_url:
        print(describe(sandbox, base_url), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
