"""The resilient HTTP layer over real HTTP to a local uvicorn server; time advances on a fake clock."""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
import uuid
from collections import Counter

import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from kingtavo_pipeline.extract.breaker import reset_breakers
from kingtavo_pipeline.extract.http import (
    AuthError,
    BadPayloadError,
    CircuitOpenError,
    HttpPolicy,
    NotFoundError,
    RateLimitedError,
    ResilientClient,
    RetryableError,
)
from kingtavo_pipeline.extract.ratelimit import reset_limiters
from kingtavo_pipeline_tests.http_servers import free_port, serve_app

WALL = 1_700_000_000.0
SECRET = "s3cr3t-T0KEN-value"


class FakeClock:
    """Monotonic and wall time that only move when the code under test sleeps."""

    def __init__(self) -> None:
        self.mono = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return WALL + self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.mono += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.mono += seconds


class Scripts:
    """Per-key response scripts: each hit takes the next response; the last one repeats."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[tuple[int, dict, bytes]]] = {}
        self.hits: Counter[str] = Counter()

    def set(self, *responses: tuple[int, dict, bytes | str]) -> str:
        key = uuid.uuid4().hex[:8]
        self.scripts[key] = [(s, h, b.encode() if isinstance(b, str) else b) for s, h, b in responses]
        return f"/s/{key}"

    def replace(self, path: str, *responses: tuple[int, dict, bytes | str]) -> None:
        self.scripts[path.rsplit("/", 1)[1]] = [(s, h, b.encode() if isinstance(b, str) else b) for s, h, b in responses]

    def hit(self, key: str) -> tuple[int, dict, bytes]:
        self.hits[key] += 1
        script = self.scripts[key]
        return script.pop(0) if len(script) > 1 else script[0]

    def count(self, path: str) -> int:
        return self.hits[path.rsplit("/", 1)[1]]


OK = (200, {"content-type": "application/json"}, b'{"ok": true}')


def make_app(scripts: Scripts) -> Starlette:
    async def scripted(request: Request) -> Response:
        status, headers, body = scripts.hit(request.path_params["key"])
        return Response(body, status_code=status, headers=headers)

    async def slow(request: Request) -> Response:
        scripts.hits["slow"] += 1
        await asyncio.sleep(float(request.query_params["delay"]))
        return JSONResponse({"ok": True})

    async def big(request: Request) -> Response:
        size = int(request.query_params["n"])
        if request.query_params.get("chunked"):
            async def chunks():
                for _ in range(size // 100):
                    yield b"x" * 100
            return StreamingResponse(chunks(), media_type="application/octet-stream")
        return PlainTextResponse("x" * size)

    return Starlette(routes=[Route("/s/{key}", scripted), Route("/slow", slow), Route("/big", big)])


@pytest.fixture(scope="module")
def server():
    scripts = Scripts()
    with serve_app(make_app(scripts)) as base_url:
        yield base_url, scripts


@pytest.fixture(autouse=True)
def fresh_state():
    # breakers are per host and limiters per key, process-wide: every test starts from closed/full
    reset_breakers()
    reset_limiters()
    yield
    reset_breakers()
    reset_limiters()


def client(base_url: str, clock: FakeClock, name: str | None = None, **policy) -> ResilientClient:
    defaults = {"max_attempts": 4, "backoff_initial": 0.5, "backoff_max": 8.0}
    return ResilientClient(
        name or f"test-{uuid.uuid4().hex[:6]}", HttpPolicy(**{**defaults, **policy}), base_url=base_url, clock=clock,
        headers={"Authorization": f"Bearer {SECRET}"},
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def host_of(base_url: str) -> str:
    return base_url.split("://", 1)[1]


def test_5xx_is_retried_with_jittered_backoff_then_succeeds(server):
    base_url, scripts = server
    path = scripts.set((503, {}, "busy"), (500, {}, "oops"), OK)
    clock = FakeClock()
    with client(base_url, clock, name="retry5xx") as http:
        assert http.json("GET", path) == {"ok": True}
    assert scripts.count(path) == 3
    assert len(clock.sleeps) == 2
    # full jitter: each wait within [0, initial * 2**(n-1)]
    assert 0 <= clock.sleeps[0] <= 0.5 and 0 <= clock.sleeps[1] <= 1.0
    host = host_of(base_url)
    assert metric("kingtavo_http_retries_total", source="retry5xx", host=host, reason="server_error") == 2
    assert metric("kingtavo_http_requests_total", source="retry5xx", host=host, status_class="5xx") == 2
    assert metric("kingtavo_http_requests_total", source="retry5xx", host=host, status_class="2xx") == 1


def test_5xx_gives_up_after_max_attempts_with_a_clear_error(server):
    base_url, scripts = server
    path = scripts.set((502, {}, "bad gateway"))
    clock = FakeClock()
    with client(base_url, clock, name="giveup", max_attempts=3) as http, pytest.raises(RetryableError) as info:
        http.get(path)
    assert scripts.count(path) == 3
    message = str(info.value)
    assert message.startswith(f"giveup: GET {base_url}{path} -> 502")
    assert "attempt 3/3" in message and "\n" not in message
    assert info.value.status == 502 and info.value.kind == "server_error"


def test_429_honours_retry_after_seconds(server):
    base_url, scripts = server
    path = scripts.set((429, {"Retry-After": "7"}, "slow down"), OK)
    clock = FakeClock()
    with client(base_url, clock) as http:
        assert http.get(path).status_code == 200
    assert scripts.count(path) == 2
    assert clock.sleeps and clock.sleeps[0] >= 7


def test_429_honours_retry_after_http_date(server):
    base_url, scripts = server
    when = email.utils.formatdate(WALL + 12, usegmt=True)
    path = scripts.set((429, {"Retry-After": when}, ""), (503, {"Retry-After": email.utils.formatdate(WALL + 20, usegmt=True)}, ""), OK)
    clock = FakeClock()
    with client(base_url, clock) as http:
        assert http.get(path).status_code == 200
    assert scripts.count(path) == 3
    assert clock.sleeps[0] >= 12
    # the second date is 20s after WALL and the clock has moved by the first wait
    assert clock.sleeps[0] + clock.sleeps[1] >= 20


def test_retry_after_beyond_the_maximum_fails_fast(server):
    base_url, scripts = server
    path = scripts.set((429, {"Retry-After": "3600"}, ""), OK)
    clock = FakeClock()
    with client(base_url, clock, max_retry_after=60) as http, pytest.raises(RateLimitedError) as info:
        http.get(path)
    assert scripts.count(path) == 1 and clock.sleeps == []
    assert "Retry-After 3600s exceeds max_retry_after 60s" in str(info.value)
    assert info.value.retry_after == 3600


def test_network_error_is_retried_then_raises_retryable(server):
    port = free_port()  # nothing listens there
    clock = FakeClock()
    http = ResilientClient("closed-port", HttpPolicy(max_attempts=3), clock=clock)
    with http, pytest.raises(RetryableError) as info:
        http.get(f"http://127.0.0.1:{port}/x?api_key={SECRET}&page=2")
    assert len(clock.sleeps) == 2
    assert info.value.kind == "network"
    message = str(info.value)
    assert message.startswith(f"closed-port: GET http://127.0.0.1:{port}/x?api_key=***&page=2 -> network error")
    assert "attempt 3/3" in message and SECRET not in message


def test_read_timeout_is_retried_then_fails_clearly(server):
    base_url, scripts = server
    before = scripts.hits["slow"]
    clock = FakeClock()
    with client(base_url, clock, name="slowpoke", read_timeout=0.2, max_attempts=2) as http:
        with pytest.raises(RetryableError) as info:
            http.get("/slow", params={"delay": "1.5"})
    assert scripts.hits["slow"] - before == 2
    assert info.value.kind == "timeout"
    assert "slowpoke: GET" in str(info.value) and "timed out" in str(info.value) and "attempt 2/2" in str(info.value)


def test_401_fails_fast_without_leaking_the_token(server):
    base_url, scripts = server
    # the server echoes the token back, as some APIs do
    path = scripts.set((401, {}, f'{{"error": "invalid token {SECRET}"}}'))
    clock = FakeClock()
    with client(base_url, clock, name="authy") as http, pytest.raises(AuthError) as info:
        http.get(path, params={"access_token": SECRET})
    assert scripts.count(path) == 1 and clock.sleeps == []
    message = str(info.value)
    assert SECRET not in message and SECRET not in info.value.url
    assert message.startswith(f"authy: GET {base_url}{path}?access_token=*** -> 401 Unauthorized")
    assert info.value.status == 401 and info.value.kind == "auth"


def test_403_is_an_auth_error_and_404_is_not_found(server):
    base_url, scripts = server
    forbidden = scripts.set((403, {}, "no scope"))
    missing = scripts.set((404, {}, "nope"))
    with client(base_url, FakeClock()) as http:
        with pytest.raises(AuthError):
            http.get(forbidden)
        with pytest.raises(NotFoundError) as info:
            http.get(missing)
    assert scripts.count(forbidden) == 1 and scripts.count(missing) == 1
    assert info.value.status == 404 and "-> 404 Not Found" in str(info.value)


def test_other_4xx_is_a_bad_payload_error_not_retried(server):
    base_url, scripts = server
    path = scripts.set((422, {}, '{"error": "filters[updatedAt] is invalid"}'))
    with client(base_url, FakeClock()) as http, pytest.raises(BadPayloadError) as info:
        http.get(path)
    assert scripts.count(path) == 1
    assert "422" in str(info.value) and "filters[updatedAt] is invalid" in str(info.value)


def test_invalid_json_is_a_bad_payload_error(server):
    base_url, scripts = server
    path = scripts.set((200, {"content-type": "application/json"}, "<html>login</html>"))
    with client(base_url, FakeClock(), name="jsony") as http, pytest.raises(BadPayloadError) as info:
        http.json("GET", path)
    assert scripts.count(path) == 1
    assert "not valid JSON" in str(info.value) and str(info.value).startswith("jsony: GET")


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_a_bad_payload_error(server, chunked):
    base_url, _ = server
    params = {"n": "5000", **({"chunked": "1"} if chunked else {})}
    with client(base_url, FakeClock(), max_response_bytes=1000) as http:
        with pytest.raises(BadPayloadError, match="exceeds max_response_bytes 1000"):
            http.get("/big", params=params)
        # under the cap the same body is returned whole
        assert len(http.get("/big", params={**params, "n": "900"}).content) == 900


def test_breaker_opens_half_opens_and_closes(server):
    base_url, scripts = server
    path = scripts.set((500, {}, "down"))
    clock = FakeClock()
    host = host_of(base_url)
    with client(base_url, clock, max_attempts=1, breaker_failures=3, breaker_cooldown=30) as http:
        for _ in range(3):
            with pytest.raises(RetryableError):
                http.get(path)
        assert metric("kingtavo_http_circuit_state", host=host) == 2
        # open: requests fail without reaching the server
        with pytest.raises(CircuitOpenError, match="circuit breaker for .* is open"):
            http.get(path)
        assert scripts.count(path) == 3
        # after the cool-down one probe goes through; it fails, so the breaker opens again
        clock.advance(30)
        with pytest.raises(RetryableError):
            http.get(path)
        assert scripts.count(path) == 4
        with pytest.raises(CircuitOpenError):
            http.get(path)
        assert scripts.count(path) == 4
        # next cool-down: the probe succeeds and the breaker closes
        scripts.replace(path, OK)
        clock.advance(30)
        assert metric("kingtavo_http_circuit_state", host=host) == 2
        assert http.get(path).status_code == 200
        assert metric("kingtavo_http_circuit_state", host=host) == 0
        assert http.get(path).status_code == 200
    assert scripts.count(path) == 6
    assert metric("kingtavo_http_circuit_transitions_total", host=host, state="half_open") >= 2


def test_an_open_breaker_is_waited_out_while_attempts_remain(server):
    """A long import meets a bad minute of its source: the request waits for the breaker's probe
    instead of failing, and fails fast only when the probe is further away than max_retry_after."""
    base_url, scripts = server
    path = scripts.set((503, {}, ""))
    clock = FakeClock()
    with client(base_url, clock, max_attempts=1, breaker_failures=2, breaker_cooldown=30) as http:
        for _ in range(2):
            with pytest.raises(RetryableError):
                http.get(path)
    scripts.replace(path, OK)
    started = clock.monotonic()
    with client(base_url, clock, max_attempts=3, breaker_failures=2, breaker_cooldown=30) as http:
        assert http.get(path).status_code == 200
    assert clock.monotonic() - started >= 30  # slept until the probe was allowed, on the injected clock
    assert scripts.count(path) == 3
    with client(base_url, clock, max_attempts=1, breaker_failures=1, breaker_cooldown=600,
                max_retry_after=60) as http:
        scripts.replace(path, (503, {}, ""))
        with pytest.raises(RetryableError):
            http.get(path)
    with client(base_url, clock, max_attempts=5, breaker_failures=1, breaker_cooldown=600,
                max_retry_after=60) as http:
        with pytest.raises(CircuitOpenError):  # the probe is 600 s away: no point in waiting
            http.get(path)
    assert scripts.count(path) == 4


def test_breaker_is_shared_by_clients_of_the_same_host(server):
    base_url, scripts = server
    path = scripts.set((503, {}, ""))
    clock = FakeClock()
    first = client(base_url, clock, max_attempts=1, breaker_failures=2)
    second = client(base_url, clock, max_attempts=1, breaker_failures=2)
    with first, second:
        for http in (first, second):
            with pytest.raises(RetryableError):
                http.get(path)
        with pytest.raises(CircuitOpenError):
            first.get(path)
    assert scripts.count(path) == 2


def test_token_bucket_paces_requests_on_the_injected_clock(server):
    base_url, scripts = server
    path = scripts.set(OK)
    clock = FakeClock()
    name = f"paced-{uuid.uuid4().hex[:6]}"
    with client(base_url, clock, name=name, requests_per_second=2, burst=2) as http:
        for _ in range(6):
            http.get(path)
    # 6 requests at 2/s with a burst of 2: at least (6 - 2) / 2 seconds
    assert sum(clock.sleeps) >= 2.0 - 1e-9
    assert metric("kingtavo_http_rate_limit_waits_total", limiter=name) == 4
    assert metric("kingtavo_http_rate_limit_wait_seconds_total", limiter=name) >= 2.0 - 1e-9


def test_token_bucket_is_shared_across_clients_and_threads(server):
    base_url, scripts = server
    path = scripts.set(OK)
    policy = HttpPolicy(requests_per_second=30, burst=1)
    clients = [ResilientClient(f"worker-{i}", policy, base_url=base_url, limiter_key="shop:cred-1") for i in range(3)]
    started = time.monotonic()

    def work(http: ResilientClient) -> None:
        for _ in range(3):
            http.get(path)

    threads = [threading.Thread(target=work, args=(http,)) for http in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    for http in clients:
        http.close()
    assert scripts.count(path) == 9
    # one bucket for the key: 9 requests at 30/s with a burst of 1 take at least 8/30 s
    assert elapsed >= 8 / 30 - 0.01


def test_limiter_waits_for_reset_when_remaining_hits_zero(server):
    base_url, scripts = server
    exhausted = {"X-RateLimit-Limit": "120", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(WALL + 20))}
    path = scripts.set((200, exhausted, "{}"), OK)
    clock = FakeClock()
    with client(base_url, clock, name="quota") as http:
        http.get(path)
        assert clock.sleeps == []
        http.get(path)
    assert clock.sleeps == [20.0]


def test_limiter_fails_fast_when_reset_is_too_far(server):
    base_url, scripts = server
    exhausted = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(WALL + 3600))}
    path = scripts.set((200, exhausted, "{}"), OK)
    clock = FakeClock()
    with client(base_url, clock, max_retry_after=60) as http:
        http.get(path)
        with pytest.raises(RateLimitedError, match="quota exhausted"):
            http.get(path)
    assert scripts.count(path) == 1 and clock.sleeps == []


def test_remote_feed_is_fetched_through_the_http_layer(server):
    from pathlib import Path

    from kingtavo_pipeline.sources import RssSource, read_feed

    base_url, scripts = server
    feed = (Path(__file__).resolve().parents[1] / "kingtavo_pipeline" / "samples" / "feeds" / "release_notes_atom.xml").read_bytes()
    path = scripts.set((503, {}, "warming up"), (200, {"content-type": "application/atom+xml"}, feed))
    frame = read_feed(RssSource(name="notes", url=f"{base_url}{path}"))
    assert len(frame) == 6
    assert scripts.count(path) == 2  # the 503 was retried
    assert metric("kingtavo_http_requests_total", source="rss:notes", host=host_of(base_url), status_class="5xx") == 1

    missing = scripts.set((404, {}, "gone"))
    with pytest.raises(ValueError) as info:
        read_feed(RssSource(name="notes", url=f"{base_url}{missing}?token={SECRET}"))
    message = str(info.value)
    assert message.startswith("rss source 'notes': cannot fetch feed (not_found): rss:notes: GET")
    assert "404" in message and SECRET not in message and scripts.count(missing) == 1


def test_retry_after_pauses_every_client_of_the_same_quota(server):
    base_url, scripts = server
    limited = scripts.set((429, {"Retry-After": "9"}, ""))
    fine = scripts.set(OK)
    clock = FakeClock()
    policy = HttpPolicy(max_attempts=1)
    first = ResilientClient("quota-a", policy, base_url=base_url, limiter_key="shop:1", clock=clock)
    second = ResilientClient("quota-b", policy, base_url=base_url, limiter_key="shop:1", clock=clock)
    with first, second:
        with pytest.raises(RateLimitedError) as info:
            first.get(limited)
        assert info.value.status == 429 and info.value.retry_after == 9
        assert second.get(fine).status_code == 200
    assert clock.sleeps == [9.0]
