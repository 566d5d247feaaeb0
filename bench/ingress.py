"""Webhook ingress throughput: signed webhooks over loopback against the real service and a baseline.

    python bench/ingress.py [--concurrency 1,8,32,64] [--seconds 5] [--postgres-url URL]

A scratch database is created on the server at ``--postgres-url`` / ``KINGTAVO_POSTGRES_URL``
(else the embedded PostgreSQL under a temporary folder) and dropped at the end. For each app, the
server runs in its own process under uvicorn (httptools + uvloop when installed) and a client
process posts Salla-signed ``order.created`` webhooks (each body unique, ~450 bytes) over
keep-alive connections at each concurrency level, one request in flight per connection, written
with raw asyncio streams so the client is not the bottleneck. Per level it prints requests/s,
p50/p99 latency, and lost events: 2xx answers minus rows committed (must be 0).

Apps measured in the same run:

* ``ingress``: ``kingtavo_pipeline.webhooks.create_app`` (verify, parse, audit headers, group commit);
* ``baseline``: a minimal Starlette app that verifies the HMAC and inserts one row per request with
  its own commit (a pool of connections).

Target on 2 cores: ingress >= 5,000 webhooks/s with p99 < 25 ms and 0 lost.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import importlib.util
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECRET = "bench-secret"
DATABASE = "kingtavo_bench_ingress"
BASELINE_POOL = 16

BASELINE_DDL = """
CREATE TABLE IF NOT EXISTS bench_baseline_events (
    id bigserial PRIMARY KEY, source_name text NOT NULL, payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now())
"""


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _with_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{database}" + (f"?{query}" if query else "")


# --- apps ---------------------------------------------------------------------------------------


def baseline_app(url: str):
    """Verify the HMAC, insert one row, commit, answer: the simplest correct ingress."""
    import psycopg
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    pool: asyncio.Queue | None = None

    async def get_pool() -> asyncio.Queue:
        nonlocal pool
        if pool is None:
            pool = asyncio.Queue()
            for _ in range(BASELINE_POOL):
                pool.put_nowait(await psycopg.AsyncConnection.connect(url))
        return pool

    async def receive(request):
        body = await request.body()
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, request.headers.get("x-salla-signature", "")):
            return JSONResponse({"error": "bad signature"}, 401)
        connections = await get_pool()
        conn = await connections.get()
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO bench_baseline_events (source_name, payload) VALUES (%s, %s::jsonb)",
                    (request.path_params["name"], body.decode()),
                )
        finally:
            connections.put_nowait(conn)
        return JSONResponse({"status": "stored"})

    return Starlette(routes=[Route("/webhooks/{name}", receive, methods=["POST"])])


def ingress_app(url: str):
    from kingtavo_pipeline.webhooks.app import create_app
    from kingtavo_pipeline.webhooks.config import parse_webhooks

    config = parse_webhooks({"webhooks": [{"name": "salla", "provider": "salla", "secrets_env": "BENCH_SECRET"}]})
    return create_app(config, url, environ={"BENCH_SECRET": SECRET})


def run_server(kind: str, url: str, sock: socket.socket) -> None:
    import logging

    import uvicorn

    logging.getLogger("kingtavo_pipeline").setLevel(logging.WARNING)
    app = ingress_app(url) if kind == "ingress" else baseline_app(url)
    config = uvicorn.Config(
        app,
        http="httptools" if _have("httptools") else "h11",
        loop="uvloop" if _have("uvloop") else "asyncio",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )
    uvicorn.Server(config).run(sockets=[sock])


# --- client -------------------------------------------------------------------------------------


def _request(path: str, host: str, n: int, worker: int) -> bytes:
    body = (
        '{"event":"order.created","merchant":%d,"created_at":"2024-11-01T10:00:00+03:00","data":{"id":%d,'
        '"reference_id":%d,"status":{"id":566146469,"name":"under_review","slug":"under_review"},'
        '"amounts":{"total":{"amount":%d.5,"currency":"SAR"}},"customer":{"id":%d,"first_name":"Bench",'
        '"last_name":"Client","email":"bench%d@example.com"},"items":[{"id":1,"name":"T-shirt","quantity":2}],'
        '"updated_at":"2024-11-01T10:00:00+03:00"}}' % (1000 + worker, n, n, n % 900, worker, worker)
    ).encode()
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-Salla-Security-Strategy: Signature\r\nX-Salla-Signature: {signature}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _connection(host: str, port: int, tag: int, deadline: float, warmup_until: float, out: dict) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    n = 0
    try:
        while time.perf_counter() < deadline:
            n += 1
            request = _request("/webhooks/salla", f"{host}:{port}", tag * 10_000_000 + n, tag)
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            status = int(head[9:12])
            out["ok" if 200 <= status < 300 else "failed"] += 1
            if started >= warmup_until:
                out["latencies"].append(time.perf_counter() - started)
    finally:
        writer.close()


def run_client(port: int, concurrency: int, seconds: float, level: int, queue) -> None:
    if _have("uvloop"):
        import uvloop

        uvloop.install()

    async def main() -> dict:
        out = {"ok": 0, "failed": 0, "latencies": []}
        start = time.perf_counter()
        warmup = min(0.5, seconds / 5)
        tasks = [
            _connection("127.0.0.1", port, level * 1000 + i + 1, start + seconds, start + warmup, out)
            for i in range(concurrency)
        ]
        await asyncio.gather(*tasks)
        out["elapsed"] = time.perf_counter() - start
        return out

    result = asyncio.run(main())
    lat = sorted(result.pop("latencies"))
    result["p50_ms"] = lat[len(lat) // 2] * 1000 if lat else float("nan")
    result["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
    queue.put(result)


# --- driver -------------------------------------------------------------------------------------


def _count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def measure(kind: str, url: str, levels: list[int], seconds: float) -> list[dict]:
    table = "webhook_events" if kind == "ingress" else "bench_baseline_events"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    server = ctx.Process(target=run_server, args=(kind, url, sock), daemon=True)
    server.start()
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    rows = []
    try:
        for level, concurrency in enumerate(levels):
            before = _count(url, table)
            queue = ctx.Queue()
            client = ctx.Process(target=run_client, args=(port, concurrency, seconds, level, queue))
            client.start()
            result = queue.get(timeout=seconds + 120)
            client.join()
            stored = _count(url, table) - before
            result.update(kind=kind, concurrency=concurrency, rps=result["ok"] / result["elapsed"], lost=result["ok"] - stored)
            rows.append(result)
            print(
                f"{kind:9s} c={concurrency:<3d} {result['rps']:8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                f"p99 {result['p99_ms']:6.2f} ms  2xx {result['ok']:7d}  non-2xx {result['failed']:5d}  "
                f"rows {stored:7d}  lost {result['lost']}",
                flush=True,
            )
    finally:
        server.terminate()
        server.join(10)
        sock.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--postgres-url", default=os.environ.get("KINGTAVO_POSTGRES_URL"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    import psycopg
    from psycopg import sql

    from kingtavo_pipeline.storage.postgres import PostgresStore, start_embedded_postgres
    from kingtavo_pipeline.storage.migrations import migrate_postgres

    temp = None
    if args.postgres_url:
        server_url = args.postgres_url
    else:
        temp = tempfile.TemporaryDirectory(prefix="kingtavo-bench-")
        server_url = start_embedded_postgres(Path(temp.name) / "postgres", "postgres")
    url = _with_database(server_url, DATABASE)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    try:
        store = PostgresStore(url)
        migrate_postgres(store)
        store.dispose()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(BASELINE_DDL)
        print(
            f"cores {os.cpu_count()}; http {'httptools' if _have('httptools') else 'h11'}, "
            f"loop {'uvloop' if _have('uvloop') else 'asyncio'}; {args.seconds:g}s per level",
            flush=True,
        )
        results = measure("ingress", url, levels, args.seconds) + measure("baseline", url, levels, args.seconds)
        best = max((r for r in results if r["kind"] == "ingress"), key=lambda r: r["rps"])
        base = max((r for r in results if r["kind"] == "baseline"), key=lambda r: r["rps"])
        lost = sum(r["lost"] for r in results)
        print(
            f"best ingress {best['rps']:.0f} req/s (c={best['concurrency']}, p99 {best['p99_ms']:.1f} ms) vs "
            f"baseline {base['rps']:.0f} req/s (c={base['concurrency']}, p99 {base['p99_ms']:.1f} ms): "
            f"{best['rps'] / base['rps']:.1f}x; lost events {lost}"
        )
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        if temp is not None:
            temp.cleanup()


if __name__ == "__main__":
    main()
