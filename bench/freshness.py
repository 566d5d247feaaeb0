"""Webhook freshness: the time from POSTing a signed Salla order webhook to its row being visible in
the ClickHouse warehouse (``orders_fact``), through the real service and the real Dagster pieces.

    python bench/freshness.py [--events 100] [--seconds 60] [--tick 5] [--postgres-url URL]

The stores are the configured ones (``KINGTAVO_POSTGRES_URL`` / ``--postgres-url``: a scratch
database is created on that server and dropped at the end; else the embedded PostgreSQL; the
warehouse is ``KINGTAVO_CLICKHOUSE_URL`` or chDB, both under a temporary ``KINGTAVO_HOME``).

* the service: ``kingtavo serve``'s app (a ``salla`` source, the sandbox's webhook secret) under
  uvicorn on 127.0.0.1, in a thread of this process;
* the orchestration, daemon-less: a loop that ticks ``webhook_events_sensor`` every ``--tick``
  seconds (its ``minimum_interval_seconds`` is 5, what the daemon honours) and executes the runs it
  requests (``webhook_events_job``: raw -> core -> the orders star, with their checks) in process,
  one after the other, against a temporary Dagster instance. ``dagster-daemon`` would launch each
  run in a process of its own; with chDB (one process per data path) the runs have to stay here.
* the load: ``--events`` ``order.updated`` webhooks of distinct sandbox orders (each a new status,
  so a new version), posted over loopback at random moments spread over ``--seconds``.

After every run the loop reads ``orders_fact FINAL`` and stamps each posted order whose row shows
the posted version (``source_updated_at``): rows only change when a run ends, so this is when they
became visible. Printed: p50/p95/max of POST -> visible, with the share spent waiting for a tick
and in runs, and, for comparison, a single direct ``INSERT`` of one fact row into a copy of the
table followed by the SELECT that sees it (the floor of any path into the warehouse).

Target: p95 < 30 s.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SECRET_ENV = "BENCH_SALLA_WEBHOOK_SECRET"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _with_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{database}" + (f"?{query}" if query else "")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Loop:
    """The daemon's part, in this thread: tick the sensor, run what it requests, note visibility."""

    def __init__(self, definitions, instance, store, settings, tick: float):
        self.definitions, self.instance, self.store, self.settings, self.tick = definitions, instance, store, settings, tick
        self.cursor: str | None = None
        self.runs: list[tuple[float, float, int]] = []  # (start, seconds, events)
        self.ticks = 0
        self.expected: dict[str, datetime] = {}  # order id -> posted version (naive UTC)
        self.posted_at: dict[str, float] = {}
        self.visible_at: dict[str, float] = {}

    def once(self) -> int:
        import dagster as dg

        from kingtavo_pipeline.defs.resources import PostgresResource
        from kingtavo_pipeline.defs.webhooks.runs import execute_requests
        from kingtavo_pipeline.defs.webhooks.sensors import webhook_events_sensor

        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor,
                                          resources={"postgres": PostgresResource()})
        result = webhook_events_sensor(context)
        self.cursor = context.cursor
        self.ticks += 1
        requests = [] if isinstance(result, dg.SkipReason) else list(result)
        for request in requests:
            started = time.time()
            [run] = execute_requests(self.definitions, self.instance, [request], run_config=QUIET)
            if not run.success:
                failures = [e.message for e in run.all_events if e.is_failure]
                raise SystemExit(f"run {run.run_id} of {request.run_key} failed: {failures[:3]}")
            self.runs.append((started, time.time() - started, int(request.tags["kingtavo/webhook_events"])))
            self.observe()
        return len(requests)

    def observe(self) -> None:
        from kingtavo_pipeline.storage.clickhouse import open_clickhouse

        waiting = [o for o in self.expected if o not in self.visible_at and o in self.posted_at]
        if not waiting:
            return
        with open_clickhouse(self.settings, migrate=False) as client:
            rows = client.query(
                "SELECT order_source_id, max(source_updated_at) FROM orders_fact FINAL "
                "WHERE source_type = 'salla' AND order_source_id IN {ids:Array(String)} GROUP BY 1",
                parameters={"ids": waiting}).result_rows
        now = time.time()
        for order_id, version in rows:
            if version is not None and version >= self.expected[order_id]:
                self.visible_at.setdefault(order_id, now)

    def run_until(self, done, deadline: float) -> None:
        while time.time() < deadline:
            started = time.time()
            self.once()
            if done():
                return
            time.sleep(max(0.0, self.tick - (time.time() - started)))
        raise SystemExit("the events did not all become visible before the deadline")


def direct_insert_baseline(settings, repeat: int = 5) -> list[float]:
    """One fact row straight into a copy of orders_fact, then the SELECT that sees it (seconds)."""
    from kingtavo_pipeline.storage.clickhouse import open_clickhouse

    times = []
    with open_clickhouse(settings, migrate=False) as client:
        client.command("DROP TABLE IF EXISTS bench_orders_fact_direct")
        client.command("CREATE TABLE bench_orders_fact_direct AS orders_fact")
        names = [r[0] for r in client.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                                            "AND table = 'bench_orders_fact_direct' ORDER BY position").result_rows]
        template = client.query("SELECT * FROM orders_fact LIMIT 1").result_rows[0]
        for n in range(repeat):
            row = list(template)
            row[names.index("order_source_id")] = f"direct-{n}"
            started = time.perf_counter()
            client.insert("bench_orders_fact_direct", [row], column_names=names)
            seen = client.query("SELECT count() FROM bench_orders_fact_direct FINAL WHERE order_source_id = "
                                "{o:String}", parameters={"o": f"direct-{n}"}).result_rows[0][0]
            times.append(time.perf_counter() - started)
            assert seen == 1
        client.command("DROP TABLE bench_orders_fact_direct")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0, help="spread the POSTs over this many seconds")
    parser.add_argument("--tick", type=float, default=5.0, help="sensor tick interval (the sensor's minimum: 5)")
    parser.add_argument("--postgres-url", default=os.environ.get("KINGTAVO_POSTGRES_URL"))
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="kingtavo-freshness-"))
    os.environ["KINGTAVO_HOME"] = str(home)
    os.environ.setdefault("KINGTAVO_CLICKHOUSE_URL", f"chdb://{home / 'clickhouse'}")
    os.environ.setdefault("KINGTAVO_CLICKHOUSE_DATABASE", "kingtavo_freshness_bench")
    os.environ.pop("KINGTAVO_SOURCES_FILE", None)  # the packaged sources: a salla source
    scratch = None
    if args.postgres_url:
        import psycopg

        scratch = f"kingtavo_bench_freshness_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{scratch}"')
        os.environ["KINGTAVO_POSTGRES_URL"] = _with_database(args.postgres_url, scratch)
    else:
        os.environ.pop("KINGTAVO_POSTGRES_URL", None)
    try:
        run(args)
    finally:
        if scratch:
            import psycopg

            from kingtavo_pipeline.storage.postgres import forget_stores

            forget_stores()
            with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


def run(args) -> None:
    import dagster as dg
    import httpx

    from kingtavo_pipeline.definitions import defs
    from kingtavo_pipeline.sandbox import Sandbox, SandboxConfig
    from kingtavo_pipeline.settings import Settings
    from kingtavo_pipeline.storage.clickhouse import open_clickhouse
    from kingtavo_pipeline.storage.postgres import get_store
    from kingtavo_pipeline.transform.webhook_events import parse_salla_datetime
    from kingtavo_pipeline.webhooks.app import create_app, serving
    from kingtavo_pipeline.webhooks.config import parse_webhooks

    settings = Settings()
    store = get_store(settings)
    with open_clickhouse(settings):
        pass  # migrated
    today = datetime.now(timezone.utc).date() - timedelta(days=1)
    days = max(3, args.events // 10 + 2)
    box = Sandbox(SandboxConfig(seed=args.seed, today=today, days=days, salla_merchants=1, orders_per_day=12))
    merchant = box.merchant_ids[0]
    orders = box.truth.salla_orders(merchant, today - timedelta(days=days - 1), today)
    if len(orders) < args.events:
        raise SystemExit(f"the sandbox has {len(orders)} orders, fewer than --events {args.events}")
    orders = random.Random(args.seed).sample(orders, args.events)
    customers = {c["id"]: c for c in box.truth.salla_customers(merchant)}

    config = parse_webhooks({"webhooks": [{"name": "salla", "provider": "salla", "secrets_env": SECRET_ENV}]})
    app = create_app(config, store.url, environ={SECRET_ENV: box.config.salla_webhook_secret})
    definitions = defs()
    statuses = ("shipped", "delivered", "canceled", "completed", "in_progress")
    with dg.instance_for_test() as instance, serving(app) as base, httpx.Client(timeout=10) as client:
        url = f"{base}/webhooks/salla"
        loop = Loop(definitions, instance, store, settings, args.tick)
        print(f"ingress {url}; PostgreSQL {store.url.split('@')[-1]}; warehouse {settings.clickhouse_dsn.split('://')[0]}")

        # warm-up (not timed): the orders' customers (core's blocking check wants them) and the
        # orders as they are now, applied once, so the timed events are updates of known orders
        warm = [box.salla_webhook("customer.updated", merchant, customers[o["customer"]["id"]])
                for o in orders if o["customer"]["id"] in customers]
        warm += [box.salla_webhook("order.created", merchant, o) for o in orders]
        for body, headers in warm:
            client.post(url, content=body, headers=headers).raise_for_status()
        started = time.time()
        while loop.once():
            pass
        print(f"warm-up: {len(warm)} events applied in {time.time() - started:.1f} s "
              f"({len(loop.runs)} runs); {len(orders)} orders in orders_fact")
        loop.runs.clear()

        # the timed events: a new status of each order, at random moments over --seconds
        rng = random.Random(args.seed + 1)
        moments = sorted(rng.uniform(0, args.seconds) for _ in orders)
        answers: list[float] = []

        def sender() -> None:
            t0 = time.time()
            for n, (order, at) in enumerate(zip(orders, moments)):
                time.sleep(max(0.0, t0 + at - time.time()))
                box.advance(seconds=1)
                body, headers = box.salla_order_webhook(merchant, order["id"], status=statuses[n % len(statuses)])
                data = __import__("orjson").loads(body)["data"]
                order_id = str(order["id"])
                version = parse_salla_datetime(data["updated_at"]).astimezone(timezone.utc).replace(tzinfo=None)
                loop.expected[order_id] = version
                posted = time.time()
                response = client.post(url, content=body, headers=headers)
                answers.append(time.time() - posted)
                response.raise_for_status()
                loop.posted_at[order_id] = posted

        thread = threading.Thread(target=sender, name="bench-sender")
        timed = time.time()
        thread.start()
        # the loop starts on its own schedule (a tick every --tick s), not in step with the sender
        loop.run_until(lambda: not thread.is_alive() and len(loop.visible_at) == len(orders),
                       deadline=timed + args.seconds + 600)
        thread.join()
        elapsed = time.time() - timed

    latencies = [loop.visible_at[o] - loop.posted_at[o] for o in loop.posted_at]
    run_seconds = [r[1] for r in loop.runs]
    baseline = direct_insert_baseline(settings)
    print(f"\n{len(latencies)} order.updated webhooks over {args.seconds:.0f} s, sensor tick {args.tick:g} s; "
          f"{len(loop.runs)} runs ({statistics.mean([r[2] for r in loop.runs]):.1f} events each), "
          f"{loop.ticks} ticks, {elapsed:.0f} s in all")
    print(f"POST answered (stored):    p50 {percentile(answers, .5) * 1000:7.1f} ms   "
          f"p95 {percentile(answers, .95) * 1000:7.1f} ms")
    print(f"run of webhook_events_job: p50 {percentile(run_seconds, .5):7.2f} s    "
          f"p95 {percentile(run_seconds, .95):7.2f} s    max {max(run_seconds):.2f} s")
    print(f"POST -> visible in orders_fact: p50 {percentile(latencies, .5):6.2f} s   "
          f"p95 {percentile(latencies, .95):6.2f} s   max {max(latencies):6.2f} s   (target p95 < 30 s: "
          f"{'met' if percentile(latencies, .95) < 30 else 'MISSED'})")
    print(f"baseline, one direct INSERT + SELECT into a copy of orders_fact: p50 "
          f"{percentile(baseline, .5) * 1000:.1f} ms (best {min(baseline) * 1000:.1f} ms)")
    assert len(latencies) == args.events


if __name__ == "__main__":
    main()
