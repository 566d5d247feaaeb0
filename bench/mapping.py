"""Mapping throughput: Salla order details (with 1-5 items) -> orders + order_lines.

Generates N order details shaped as Salla's GET /orders/{id} ``data`` with the lines under
``items`` (money as ``{"amount", "currency"}``, dates as PHP DateTime objects in Asia/Riyadh), as
JSON text like ``raw_data.payload::text``; then maps them with the shipped ``salla_orders.yaml`` in
batches of the size core maps (``transform.entities.ENTITY_BATCH_ROWS``) and reports orders/s,
lines/s, the time split (decode+extract, which is one pass per record, then the column work: map,
output), peak RSS, and two baselines measured in the same run
(CPU time is reported too: on a shared machine it varies less than wall time):

* ``orjson.loads`` alone over every payload: the floor any Python mapping pays to read JSON;
* a plain per-record Python loop doing the same mapping (dict navigation, Decimal, datetime
  parsing, enum dict) on a sample: what the engine replaces.

    python bench/mapping.py --rows 1000000   # --rows 100000 for a quick look; --batch to try other sizes
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kingtavo_pipeline.mapping import shipped_mapping  # noqa: E402
from kingtavo_pipeline.transform.entities import ENTITY_BATCH_ROWS  # noqa: E402

STATUSES = ("payment_pending", "under_review", "in_progress", "shipped", "delivered", "completed", "canceled", "restored")
NAMES = ("Oud Perfume", "Arabic Coffee Beans", "Dates Gift Box", "Cotton Thobe", "Silk Shemagh", "Prayer Mat")
RIYADH = timezone(timedelta(hours=3))


def _money(cents: int) -> dict:
    return {"amount": cents // 100 if cents % 100 == 0 else cents / 100, "currency": "SAR"}


def _date(ts: int) -> dict:
    local = datetime.fromtimestamp(ts, RIYADH)
    return {"date": local.strftime("%Y-%m-%d %H:%M:%S.000000"), "timezone_type": 3, "timezone": "Asia/Riyadh"}


def generate(first: int, rows: int, seed: int = 7) -> list[bytes]:
    """Order details ``first`` .. ``first + rows - 1`` as JSON bytes (deterministic per row range)."""
    rng = random.Random(f"{seed}:{first}")
    start = int(datetime(2025, 1, 1, tzinfo=timezone.utc).timestamp())
    out = []
    for n in range(first, first + rows):
        order_id = 900_000_000 + n
        created = start + n * 7
        items, sub_total, tax_total = [], 0, 0
        for i in range(rng.choice((1, 1, 2, 2, 3, 4, 5))):
            unit, qty = rng.randint(1500, 90000), rng.choice((1, 1, 1, 2, 3))
            discount = 0 if rng.random() < 0.9 else unit * qty // 10
            net = unit * qty - discount
            tax = (net * 15 + 50) // 100
            sub_total += unit * qty
            tax_total += tax
            items.append({
                "id": order_id * 10 + i, "name": NAMES[i % len(NAMES)], "sku": f"SKU-{rng.randrange(5000):04d}",
                "product_id": 1_500_000_000 + rng.randrange(5000), "product_type": "product", "quantity": qty,
                "currency": "SAR", "weight": 0.5,
                "amounts": {"price_without_tax": _money(unit), "total_discount": _money(discount),
                            "tax": {"percent": "15.00", "amount": _money(tax)}, "total": _money(net + tax)},
                "options": [], "notes": "",
            })
        shipping = 0 if sub_total >= 30000 else 2500
        tax_total += (shipping * 15 + 50) // 100
        total = sub_total + shipping + tax_total - sum(it["amounts"]["total_discount"]["amount"] * 100 for it in items)
        status = STATUSES[rng.randrange(len(STATUSES))]
        detail = {
            "id": order_id, "reference_id": 10_000 + n, "date": _date(created), "updated_at": _date(created + 3600),
            "source": "store", "source_device": "mobile", "payment_method": "mada", "currency": "SAR",
            "amounts": {"sub_total": _money(sub_total), "shipping_cost": _money(shipping), "cash_on_delivery": _money(0),
                        "tax": {"percent": "15.00", "amount": _money(tax_total)}, "discounts": [],
                        "total": _money(int(total))},
            "status": {"id": 566146469, "name": status.title(), "slug": status, "customized": {"id": 1, "name": status}},
            "customer": {"id": 1_100_000_000 + rng.randrange(50_000), "full_name": "Sara Alharbi", "first_name": "Sara",
                         "last_name": "Alharbi", "mobile": 555555555, "mobile_code": "+966",
                         "email": "sara@example.com", "city": "Riyadh", "country": "Saudi Arabia", "country_code": "SA"},
            "shipping": {"company": "SMSA", "receiver": {"name": "Sara Alharbi", "phone": "+966555555555"},
                         "address": {"country": "Saudi Arabia", "country_code": "SA", "city": "Riyadh"}},
            "tags": [],
            "items": items,
        }
        out.append(orjson.dumps(detail))
    return out


_STATUS = {"payment_pending": "pending", "under_review": "processing", "in_progress": "processing", "shipped": "completed",
           "delivered": "completed", "completed": "completed", "canceled": "cancelled", "restored": "refunded"}
_ZONE = ZoneInfo("Asia/Riyadh")


def _ts(value: dict) -> datetime:
    local = datetime.strptime(value["date"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=ZoneInfo(value["timezone"]))
    return local.astimezone(timezone.utc)


def _dec(money: dict) -> Decimal:
    return Decimal(str(money["amount"])).quantize(Decimal("0.0001"))


def per_record_python(payloads: list[bytes]) -> tuple[int, int]:
    """The baseline: one record at a time, one field at a time (what the engine vectorises)."""
    orders, lines = [], []
    for payload in payloads:
        d = orjson.loads(payload)
        updated = _ts(d["updated_at"])
        orders.append((str(d["id"]), str(d["reference_id"]), "order", _STATUS.get(d["status"]["slug"], "unknown"),
                       d["status"]["slug"], str(d["customer"]["id"]), d["currency"].upper(), _dec(d["amounts"]["sub_total"]),
                       _dec(d["amounts"]["tax"]["amount"]), _dec(d["amounts"]["shipping_cost"]), _dec(d["amounts"]["total"]),
                       _ts(d["date"]), updated))
        for item in d["items"]:
            a = item["amounts"]
            lines.append((str(item["id"]), str(d["id"]), str(item["product_id"]), item["sku"], item["name"],
                          Decimal(item["quantity"]), _dec(a["price_without_tax"]), _dec(a["total_discount"]),
                          _dec(a["tax"]["amount"]), _dec(a["total"]), item["currency"], updated))
    return len(orders), len(lines)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=ENTITY_BATCH_ROWS,
                        help=f"orders mapped per batch (default {ENTITY_BATCH_ROWS:,}: what core maps per batch, "
                             "transform.entities.ENTITY_BATCH_ROWS)")
    parser.add_argument("--baseline-sample", type=int, default=50_000)
    args = parser.parse_args()

    mapping = shipped_mapping("salla", "orders")
    totals = {"decode_extract_s": 0.0, "map_s": 0.0, "output_s": 0.0}
    orders = lines = rejects = 0
    elapsed = loads = generating = cpu = 0.0
    size = 0
    for first in range(0, args.rows, args.batch):
        # generated batch by batch (untimed), so memory holds one batch as the pipeline does
        t = time.perf_counter()
        chunk = generate(first, min(args.batch, args.rows - first))
        size += sum(len(p) for p in chunk)
        raw = pd.DataFrame({
            "payload": pd.Series(chunk, dtype=object),
            "raw_data_id": range(first, first + len(chunk)),
            "source_id": pd.Series([str(900_000_000 + i) for i in range(first, first + len(chunk))], dtype=object),
            "merchant_id": "1608226078",
        })
        generating += time.perf_counter() - t
        t = time.perf_counter()
        for p in chunk:  # baseline: the decode alone, same payloads, same process
            orjson.loads(p)
        loads += time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        out = mapping.run(raw)
        elapsed += time.perf_counter() - t
        cpu += time.process_time() - c
        orders += len(out["orders"])
        lines += len(out["order_lines"])
        rejects += len(out.rejects)
        for key in totals:
            totals[key] += out.timings.get(key, 0.0)
        del out, raw, chunk
    mib = size / 2**20
    print(f"{args.rows:,} Salla order details, {mib:,.0f} MiB of JSON ({size / args.rows:,.0f} B each), "
          f"generated in {generating:.1f} s (untimed)")
    print(f"\nengine (shipped salla_orders.yaml, batches of {args.batch:,}): {elapsed:.2f} s, one process, one core")
    print(f"  {orders / elapsed:>12,.0f} orders/s   {lines / elapsed:>12,.0f} lines/s   "
          f"({orders:,} orders, {lines:,} lines, {rejects} rejects; {mib / elapsed:,.0f} MiB/s of JSON)")
    print(f"  CPU time {cpu:.2f} s: {cpu / args.rows * 100_000:.2f} s per 100k orders "
          f"({orders / cpu:,.0f} orders per CPU second; less noisy than wall time on a shared machine)")
    split = ", ".join(f"{k[:-2]} {v:.2f} s ({v / elapsed:.0%})" for k, v in totals.items())
    print(f"  split: {split}")
    print(f"  peak RSS {peak_rss_mib():,.0f} MiB")
    print(f"\nbaseline orjson.loads alone (the decode floor): {args.rows / loads:>12,.0f} orders/s ({loads:.2f} s)"
          f" -> engine at {loads / elapsed:.2f}x its speed (steadier across machines than orders/s)")
    sample = generate(0, min(args.baseline_sample, args.rows))
    t = time.perf_counter()
    per_record_python(sample)
    loop = time.perf_counter() - t
    print(f"baseline per-record Python loop (sample of {len(sample):,}): {len(sample) / loop:>12,.0f} orders/s "
          f"-> engine is {(orders / elapsed) / (len(sample) / loop):.1f}x")
    if rejects:
        sys.exit("unexpected rejects")


if __name__ == "__main__":
    main()
