"""A historical import of one Salla merchant against the sandbox's rate limit.

    python bench/historical_import.py [--days 90] [--limit 1200] [--orders-per-day 12]

Starts the sandbox in a process of its own on 127.0.0.1 with one merchant whose plan allows
``--limit`` requests per minute (its fixed-window limiter answers 429 beyond it, like Salla), sets
the Salla source's ``requests_per_minute`` to the same, and imports the last ``--days`` days
(orders with their lines, products, customers) as one single-run backfill of the raw Salla assets
in a fresh Dagster instance, then maps them into core. Against ``KINGTAVO_POSTGRES_URL`` it works
in a database of its own (created and dropped), else in the embedded PostgreSQL under a temporary
``KINGTAVO_HOME``.

It prints records/s, the API requests made (counted by the HTTP layer: every attempt, retries
included), the elapsed time of the import, the share of the rate-limit budget used (requests made
/ (limit x elapsed); target >= 90 %), the 429s met, and the failed partitions (days without a
materialization, or whose raw orders differ from the sandbox's ground truth; target 0). It checks
that core holds exactly the sandbox's orders and lines of the window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from end_to_end import drop_postgres_database, fresh_postgres_database  # noqa: E402

SANDBOX_TODAY = date(2026, 11, 30)

SANDBOX_SCRIPT = """
import json, sys, time
from kingtavo_pipeline.sandbox import Sandbox, SandboxConfig
box = Sandbox(SandboxConfig.model_validate(json.loads(sys.argv[1])))
with box.running() as base_url:
    print(base_url, flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
"""


def start_sandbox(config: dict) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-c", SANDBOX_SCRIPT, json.dumps(config)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    base_url = process.stdout.readline().strip()
    if not base_url.startswith("http"):
        process.kill()
        raise SystemExit(f"the sandbox did not start: {base_url!r}")
    return process, base_url


def requests_sent(source: str) -> Counter:
    """The HTTP layer's request counter of one source, by status class."""
    from kingtavo_pipeline.extract.http import REQUESTS

    counts: Counter = Counter()
    for metric in REQUESTS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("source") == source:
                counts[sample.labels["status_class"]] += int(sample.value)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=90, help="days to import (default 90)")
    parser.add_argument("--limit", type=int, default=1200,
                        help="the merchant's rate limit, requests per minute, in the sandbox and the source (default 1200)")
    parser.add_argument("--orders-per-day", type=float, default=12.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kingtavo-import-"))
    os.environ.setdefault("KINGTAVO_HOME", str(work / "home"))
    os.environ.pop("DAGSTER_HOME", None)  # an ephemeral instance: nothing of this bench stays behind
    last_day = SANDBOX_TODAY - timedelta(days=1)  # the last complete day
    first_day = last_day - timedelta(days=args.days - 1)
    sandbox, base_url = start_sandbox({"days": args.days + 5, "salla_merchants": 1,
                                       "orders_per_day": args.orders_per_day,
                                       "salla_requests_per_minute": args.limit, "today": SANDBOX_TODAY.isoformat()})
    bench_db = None
    try:
        import dagster as dg
        import httpx

        creds = httpx.get(f"{base_url}/_sandbox/credentials").json()
        merchant = creds["salla_merchants"][0]
        (work / "sources.yaml").write_text(
            f"salla:\n  - name: salla\n    base_url: {base_url}/salla/admin/v2\n"
            f"    token_url: {base_url}/salla/oauth2/token\n    requests_per_minute: {args.limit}\n"
            f"    merchants: ['{merchant['merchant_id']}']\n")
        os.environ["KINGTAVO_SOURCES_FILE"] = str(work / "sources.yaml")
        os.environ["SALLA_CLIENT_ID"] = creds["salla_client_id"]
        os.environ["SALLA_CLIENT_SECRET"] = creds["salla_client_secret"]
        bench_db = fresh_postgres_database()

        from kingtavo_pipeline.definitions import defs
        from kingtavo_pipeline.defs.core.entities import core_entities
        from kingtavo_pipeline.defs.ingest.api import SALLA_MERCHANTS, api_raw_assets
        from kingtavo_pipeline.settings import Settings
        from kingtavo_pipeline.storage.credentials import save_credentials
        from kingtavo_pipeline.storage.postgres import get_store

        store = get_store(Settings())
        merchant_id = merchant["merchant_id"]
        save_credentials(store, "salla", "salla", merchant_id, merchant["access_token"], merchant["refresh_token"], 3600)
        resources = dict(defs().resources)
        raw = [a for a in api_raw_assets if isinstance(a.partitions_def, dg.MultiPartitionsDefinition)]
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(SALLA_MERCHANTS.name, [merchant_id])
        print(f"sandbox {base_url}: merchant {merchant_id}, {args.limit} requests/min; importing "
              f"{first_day} .. {last_day} ({args.days} days; orders, products, customers)")

        started = time.monotonic()
        result = dg.materialize(raw, resources=resources, instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": f"{first_day}|{merchant_id}",
            "dagster/asset_partition_range_end": f"{last_day}|{merchant_id}"})
        elapsed = time.monotonic() - started
        sent = requests_sent(f"salla:{merchant_id}")
        started_core = time.monotonic()
        core_ok = dg.materialize([core_entities], resources=resources, instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": first_day.isoformat(),
            "dagster/asset_partition_range_end": last_day.isoformat()}).success
        core_s = time.monotonic() - started_core

        # ground truth: the orders created in the window's UTC days (the sandbox's truth is by local date)
        truth = httpx.get(f"{base_url}/_sandbox/truth/salla/orders", timeout=120, params={
            "merchant_id": merchant_id, "start": (first_day - timedelta(days=1)).isoformat(),
            "end": (last_day + timedelta(days=1)).isoformat()}).json()["data"]
        from kingtavo_pipeline.connectors.salla import parse_salla_datetime

        window = (datetime.combine(first_day, datetime.min.time(), timezone.utc),
                  datetime.combine(last_day + timedelta(days=1), datetime.min.time(), timezone.utc))
        truth = [o for o in truth if window[0] <= parse_salla_datetime(o["date"]) < window[1]]
        truth_days = Counter(parse_salla_datetime(o["date"]).date().isoformat() for o in truth)
        raw_days = dict(store.fetch_all(
            "SELECT partition_date::text, count(*) FROM raw_data WHERE source_type = 'salla' AND entity = 'orders' "
            "AND source_name = %s GROUP BY 1", (f"salla/{merchant_id}",)))
        materialized = {k.split("|")[0]  # "<date>|<merchant>"
                        for k in instance.get_materialized_partitions(dg.AssetKey(["raw", "salla", "orders"]))}
        days = [(first_day + timedelta(days=i)).isoformat() for i in range(args.days)]
        failed = [d for d in days if d not in materialized or raw_days.get(d, 0) != truth_days.get(d, 0)]
        records = store.fetch_value("SELECT count(*) FROM raw_data WHERE source_type = 'salla'")
        orders = sum(raw_days.values())
        core_orders = store.fetch_value("SELECT count(*) FROM orders WHERE source_type = 'salla'")
        core_lines = store.fetch_value("SELECT count(*) FROM order_lines WHERE source_type = 'salla'")
        requests = sum(sent.values())
        budget = requests / (args.limit / 60.0 * elapsed)

        print(f"\nimport run {'succeeded' if result.success else 'FAILED'} in {elapsed:.1f} s")
        print(f"  records landed       {records:,} ({orders:,} orders with their lines; products, customers)")
        print(f"  records/s            {records / elapsed:,.1f} ({orders / elapsed:,.1f} orders/s)")
        print(f"  requests made        {requests:,} ({', '.join(f'{k}: {v:,}' for k, v in sorted(sent.items()))})")
        print(f"  requests/s           {requests / elapsed:,.2f} (limit {args.limit / 60:,.2f}/s)")
        print(f"  rate-limit budget    {budget:.1%} used (target >= 90%)")
        print(f"  failed partitions    {len(failed)} of {args.days} (target 0){': ' + ', '.join(failed[:10]) if failed else ''}")
        print(f"core run {'succeeded' if core_ok else 'FAILED'} in {core_s:.1f} s: {core_orders:,} orders, "
              f"{core_lines:,} lines; ground truth {len(truth):,} orders, {sum(len(o['items']) for o in truth):,} lines")
        ok = (result.success and core_ok and not failed and core_orders == len(truth)
              and core_lines == sum(len(o["items"]) for o in truth))
        if not ok:
            raise SystemExit("the import does not match the sandbox's ground truth")
    finally:
        sandbox.stdin.close()
        try:
            sandbox.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sandbox.kill()
        if bench_db:
            drop_postgres_database(bench_db)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
