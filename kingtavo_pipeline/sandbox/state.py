"""What every simulated endpoint shares: the world, credentials, limits, faults and a request log."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from kingtavo_pipeline.sandbox.auth import FixedWindowLimiter, SallaOAuth, SlidingWindowLimiter
from kingtavo_pipeline.sandbox.config import (
    SallaMerchantCredentials,
    SandboxConfig,
    SandboxCredentials,
)
from kingtavo_pipeline.sandbox.data import rng_for
from kingtavo_pipeline.sandbox.faults import Decision, FaultInjector
from kingtavo_pipeline.sandbox.world import World

def _gateway_page(title: str) -> str:
    return f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center></body></html>"


# what a reverse proxy in front of an API answers: HTML, not the API's JSON
GATEWAY_PAGES = {
    502: _gateway_page("502 Bad Gateway"),
    503: _gateway_page("503 Service Temporarily Unavailable"),
    504: _gateway_page("504 Gateway Time-out"),
}


@dataclass(frozen=True)
class LoggedRequest:
    at: float  # time.monotonic()
    wall: float  # time.time()
    api: str  # "salla" | "salla_oauth" | "printavo"
    method: str
    path: str
    status: int
    key: str  # merchant id / Printavo email / "" when unauthenticated
    fault: str | None


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


class SandboxState:
    def __init__(self, config: SandboxConfig):
        self.config = config
        self.world = World(config)
        self.faults = FaultInjector(config.seed, config.faults)
        rng = rng_for("credentials", config.seed)
        self.oauth = SallaOAuth(
            client_id=f"sandbox-client-{rng.getrandbits(64):016x}",
            client_secret=f"sandbox-secret-{rng.getrandbits(128):032x}",
            access_ttl=config.access_token_ttl_seconds,
            refresh_ttl=config.refresh_token_ttl_seconds,
            clock=self.token_clock,
        )
        merchants = []
        for m in self.world.merchants:
            access, refresh = self.oauth.install(m.merchant_id, config.seed)
            merchants.append(
                SallaMerchantCredentials(merchant_id=m.merchant_id, access_token=access, refresh_token=refresh)
            )
        self.credentials = SandboxCredentials(
            printavo_email="shop@example.com",
            printavo_token=f"sandbox-printavo-{rng.getrandbits(128):032x}",
            salla_client_id=self.oauth.client_id,
            salla_client_secret=self.oauth.client_secret,
            salla_merchants=merchants,
        )
        self.salla_limiter = FixedWindowLimiter(config.salla_requests_per_minute, 60.0)
        self.salla_customers_limiter = FixedWindowLimiter(config.salla_customers_requests_per_10min, 600.0)
        self.printavo_limiter = SlidingWindowLimiter(config.printavo_requests, config.printavo_window_seconds)
        self.requests: deque[LoggedRequest] = deque(maxlen=100_000)
        self._log_lock = threading.Lock()

    def token_clock(self) -> float:
        return time.time() + self.world.clock_offset

    def log(self, request: Request, api: str, status: int, key: str = "", fault: str | None = None) -> None:
        entry = LoggedRequest(time.monotonic(), time.time(), api, request.method, request.url.path, status, key, fault)
        with self._log_lock:
            self.requests.append(entry)

    async def inject(self, request: Request, api: str, error_body: Any) -> Response | None:
        """Apply the fault switches to an API request: a response to send instead, or None to serve it
        (after any added latency). ``error_body(status, message)`` builds the API's error shape."""
        decision: Decision = self.faults.decide()
        if decision.delay:
            await asyncio.sleep(decision.delay)
        if decision.kind is None:
            return None
        if decision.kind == "timeout":
            response: Response = Response(GATEWAY_PAGES[504], status_code=504, media_type="text/html")
        elif decision.kind in ("storm", "429"):
            response = json_response(
                error_body(429, "Too Many Attempts."), 429, {"Retry-After": decision.retry_after or "1"}
            )
        elif decision.status in GATEWAY_PAGES:  # a proxy answers 502/503 with HTML, not the API's JSON
            response = Response(GATEWAY_PAGES[decision.status], status_code=decision.status, media_type="text/html")
        else:
            response = json_response(error_body(decision.status, "Internal Server Error"), decision.status)
        self.log(request, api, response.status_code, fault=decision.kind)
        return response
