"""CSV extraction: rows/s and peak memory of our streaming reader beside whole-file reads.

Generates one semicolon CSV of N rows (default 1,000,000), then reads it, each in a fresh
process so peak RSS is that reader's alone:

* ``stream``       kingtavo_pipeline.sources.csv_source.iter_raw_batches (detects encoding and
                   delimiter, builds RAW FRAMES with JSON payloads, hashes ids when missing)
* ``pandas_full``  pandas.read_csv of the whole file (dtype=str): the naive peer
* ``arrow_full``   pyarrow.csv.read_csv of the whole file: raw parsing speed, no payloads

    python bench/csv_streaming.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(path: Path, rows: int) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    chunk = 200_000
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("order_id;order_date;product;category;qty;total;notes;link\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            ids = np.arange(start, start + n)
            frame = pd.DataFrame(
                {
                    "order_id": [f"ORD-{i:09d}" for i in ids],
                    "order_date": pd.Timestamp("2024-11-01") + pd.to_timedelta(ids % (3 * 86400), unit="s"),
                    "product": [f"Product {i % 977}" for i in ids],
                    "category": np.array(["shirts", "mugs", "caps", "posters"])[ids % 4],
                    "qty": rng.integers(1, 50, n),
                    "total": [f"{v:.2f}".replace(".", ",") for v in rng.uniform(1, 500, n)],
                    "notes": "rush order; gift wrap",
                    "link": [f"https://shop.example/o/{i}" for i in ids],
                }
            )
            frame.to_csv(fh, sep=";", header=False, index=False)


def run_mode(mode: str, path: Path) -> dict:
    start = time.perf_counter()
    rows = 0
    if mode == "stream":
        from kingtavo_pipeline.sources.config import CsvSource
        from kingtavo_pipeline.sources.csv_source import iter_raw_batches

        source = CsvSource(
            name="bench", path=str(path), id_column="order_id", date_column="order_date",
            fields={"external_id": "order_id", "title": "product"},
        )
        for batch in iter_raw_batches(source, batch_size=50_000):
            rows += len(batch)
    elif mode == "pandas_full":
        import pandas as pd

        rows = len(pd.read_csv(path, sep=";", dtype=str, keep_default_na=False))
    elif mode == "arrow_full":
        import pyarrow.csv as pacsv

        rows = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=";")).num_rows
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mib": peak_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, Path(args.file))))
        return

    with tempfile.TemporaryDirectory(prefix="kingtavo-csv-bench-") as tmp:
        path = Path(tmp) / "orders.csv"
        generate(path, args.rows)
        size_mib = path.stat().st_size / 2**20
        print(f"CSV: {args.rows:,} rows, {size_mib:,.1f} MiB")
        print(f"{'reader':<14}{'rows':>12}{'seconds':>10}{'rows/s':>12}{'peak RSS MiB':>15}")
        results = {}
        for mode in ("stream", "pandas_full", "arrow_full"):
            out = subprocess.run(
                [sys.executable, __file__, "--mode", mode, "--file", str(path)], capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode] = r
            print(f"{mode:<14}{r['rows']:>12,}{r['seconds']:>10.2f}{r['rows_per_s']:>12,.0f}{r['peak_rss_mib']:>15,.0f}")
        s, p = results["stream"], results["pandas_full"]
        print(
            f"\nstream vs pandas_full: {s['rows_per_s'] / p['rows_per_s']:.2f}x the speed, "
            f"{s['peak_rss_mib'] / p['peak_rss_mib']:.2f}x the peak memory "
            "(stream also builds a JSON payload per row, and its memory does not grow with the file)"
        )


if __name__ == "__main__":
    main()
