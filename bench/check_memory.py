"""Peak memory of the unified_items quality checks, per check and per size.

```bash
.venv/bin/python bench/check_memory.py --rows 1000000,10000000 --days 5
.venv/bin/python bench/check_memory.py --rows 200000 --days 5 --only unique_keys
```

For each ``--rows`` size it builds synthetic ``unified_items`` rows over ``--days`` days in
PostgreSQL (a database of its own, ``bench_checks_<rows>`` on ``--postgres-url``'s server, created
and dropped) and in chDB (a temporary data path, deleted afterwards), both through the project's
migrations, with ``generate_series`` and ``INSERT ... SELECT FROM numbers()``. Row i has external_id
``str(i)`` and day ``i % days``, as ``bench/end_to_end.py``'s CSV. The warehouse copy is written as
the warehouse step leaves it: batches of 100,000 rows (the IO manager's stage batches) each holding
every day, so each batch leaves a part in every partition (100 parts a day at 10M rows over 5 days),
overlapping in key ranges (FINAL has to merge them), unmerged.

Then every check of the ``core_unified_items_quality_checks`` and
``warehouse_unified_items_quality_checks`` steps, and ``row_count_matches_core``, is evaluated
alone in a fresh subprocess: the real check objects and settings, their ``evaluate()`` with real
``Stores`` as ``evaluate_all`` calls it, over the whole window as a single-run backfill evaluates it
(``evaluate_all``'s memo of verdicts is left out: a remembered verdict measures nothing). Each
step's checks run once more together in one subprocess, as the step runs them. Before each
subprocess the chDB data path is reset to the state the build left, so each one opens 500 unmerged
parts as the first check step after a load does, and chDB's background merges run in it as they
would in that step. It prints the peak RSS of each subprocess (``ru_maxrss`` from ``wait4``), wall
time and the verdicts (days passed; every check should pass on the synthetic rows), and two
reference subprocesses: ``baseline`` opens both stores and runs ``SELECT 1``; ``merges`` opens them
and waits (up to 3 minutes) until chDB's background merges are done, running no check.
``--stop-merges`` runs ``SYSTEM STOP MERGES`` in each subprocess first: the checks' queries alone.

``--json FILE`` also writes every result with the checks' full per-day metadata, to compare two
versions of the checks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
START = dt.date(2024, 11, 1)
PART_ROWS = 100_000  # the ClickHouse IO manager's stage batches (io_managers/slices.py DEFAULT_BATCH_ROWS)
DATABASE = "bench_checks"  # + _<rows>
PG_LAYOUT, CH_LAYOUT = 2, 3  # of the built rows: a kept --workdir built otherwise is built again
CH_DATABASE = "kingtavo_bench"
ROW_COUNT_OP = "row_count_matches_core"
STEPS = ("core_unified_items_quality_checks", "warehouse_unified_items_quality_checks", ROW_COUNT_OP)


# --- child: evaluate checks ------------------------------------------------------------------------


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


def _step_checks() -> dict[str, list]:
    from kingtavo_pipeline.defs.quality import all_checks
    from kingtavo_pipeline.defs.quality.checks import reconciliation_check

    groups = all_checks()
    out = {op: groups[op] for op in STEPS[:2]}
    # defs/warehouse/checks.py builds its step from this very declaration
    out[ROW_COUNT_OP] = [reconciliation_check(["warehouse", "unified_items"], "unified_items", "unified_items",
                                              name=ROW_COUNT_OP)]
    return out


def child(spec: str, start: dt.date, end: dt.date) -> None:
    """``spec``: ``baseline``, ``<op>`` (all its checks, one process) or ``<op>:<check>``."""
    from kingtavo_pipeline.defs.quality.checks import Stores
    from kingtavo_pipeline.defs.resources import ClickHouseResource, PostgresResource
    from kingtavo_pipeline.quality.config import load_quality_config
    from contextlib import ExitStack

    config = load_quality_config()
    postgres, clickhouse = PostgresResource(), ClickHouseResource()
    report: dict = {"imported_mib": _vm("VmHWM")}
    t = time.perf_counter()
    stop_merges = os.environ.get("BENCH_STOP_MERGES") == "1"
    if spec in ("baseline", "merges"):
        with ExitStack() as stack:
            stores = Stores(postgres, clickhouse, stack)
            if stop_merges:
                stores.clickhouse.command("SYSTEM STOP MERGES")
            stores.pg_rows("SELECT 1")
            stores.ch_rows("SELECT 1")
            deadline, idle = time.monotonic() + 180, 0
            while spec == "merges" and time.monotonic() < deadline and idle < 5:  # 5 s without a merge
                time.sleep(1)
                idle = 0 if stores.ch_rows("SELECT count() FROM system.merges")[0][0] else idle + 1
            if spec == "merges":
                report["parts_after"] = stores.ch_rows(
                    "SELECT count() FROM system.parts WHERE active AND table = 'unified_items' "
                    "AND database = currentDatabase()")[0][0]
        report.update(seconds=time.perf_counter() - t, results={})
    else:
        op, _, name = spec.partition(":")
        checks = [c for c in _step_checks()[op] if not name or c.name == name]
        assert checks, spec
        settings = {c.key: config.settings(c.asset_key.to_user_string(), c.name, c.kind) for c in checks}
        # as evaluate_all runs them (one Stores for the step's checks, in order), without its memo:
        # a verdict remembered from an earlier evaluation would measure nothing
        with ExitStack() as stack:
            stores = Stores(postgres, clickhouse, stack)
            if stop_merges:
                stores.clickhouse.command("SYSTEM STOP MERGES")
            results = {c.key: c.evaluate(stores, start, end, settings[c.key]) for c in checks}
        report["seconds"] = time.perf_counter() - t
        report["results"] = {
            key.name: {day.isoformat(): {"passed": r.passed, "severity": r.severity, "description": r.description,
                                         "metadata": r.metadata} for day, r in sorted(days.items())}
            for key, days in results.items()
        }
    report["peak_mib"] = _vm("VmHWM")
    print("@@" + json.dumps(report, default=str), flush=True)


# --- parent: build the data and run the children ---------------------------------------------------


def pg_url(base: str, database: str) -> str:
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}"


def recreate_database(base_url: str, database: str, drop_only: bool = False) -> None:
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        if not drop_only:
            conn.execute(f"CREATE DATABASE {database}")


def build(what: str, rows: int, days: int, env: dict[str, str], with_raw: bool) -> None:
    """One store (``postgres`` or ``clickhouse``) migrated and filled, in a subprocess (chDB holds its
    path for its process's life)."""
    subprocess.run([sys.executable, __file__, "--build", what, "--rows", str(rows), "--days", str(days)]
                   + ([] if with_raw else ["--no-raw"]), env=env, check=True, cwd=ROOT)


def fill_postgres(rows: int, days: int, with_raw: bool) -> None:
    from kingtavo_pipeline.storage.postgres import get_store

    params = {"rows": rows, "days": days, "start": START}
    t = time.perf_counter()
    store = get_store()
    with store.transaction() as conn:
        conn.execute("SET LOCAL synchronous_commit = off")
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        # indexes built after the rows (faster than row by row), as the migrations define them
        conn.execute("DROP INDEX IF EXISTS unified_items_partition_idx")
        conn.execute("DROP INDEX IF EXISTS unified_items_record_idx")
        conn.execute("""
            INSERT INTO unified_items (source_type, source_name, external_id, source_id, title, description, category,
                                       url, amount, quantity, metadata, published_at, partition_date, raw_data_id,
                                       updated_at, source_updated_at, observed_seq, row_version)
            SELECT 'csv', 'bench_orders', i::text, i::text,
                   'Product ' || (i %% 1000), 'notes for order ' || i, 'cat-' || (i %% 20), NULL,
                   ((i %% 100000) / 100.0)::numeric(18, 4), i %% 7 + 1,
                   jsonb_build_object('coupon', 'C' || (i %% 50), 'channel', 'web'),
                   %(start)s::date + (i %% %(days)s)::int + make_interval(secs => (i %% 86400)::int),
                   %(start)s::date + (i %% %(days)s)::int, i + 1,
                   timestamptz '2024-12-01 00:00:00+00', NULL, i + 1, i + 1
            FROM generate_series(0, %(rows)s - 1) i""", params)
        conn.execute("CREATE INDEX unified_items_partition_idx ON unified_items (partition_date)")
        conn.execute("CREATE INDEX unified_items_record_idx ON unified_items (source_type, source_name, source_id)")
        if with_raw:  # the observation each core row names (core_row_has_raw_record)
            conn.execute("DROP INDEX IF EXISTS raw_data_day_seq_idx")
            conn.execute("ALTER TABLE raw_data DROP CONSTRAINT IF EXISTS raw_data_content_key")
            conn.execute("""
                INSERT INTO raw_data (id, source_type, source_name, entity, source_id, partition_date, payload,
                                      payload_hash, observed_seq)
                SELECT i + 1, 'csv', 'bench_orders', 'orders', i::text,
                       %(start)s::date + (i %% %(days)s)::int, '{"order_id": 1}'::jsonb, md5(i::text), i + 1
                FROM generate_series(0, %(rows)s - 1) i""", params)
            conn.execute("ALTER TABLE raw_data ADD CONSTRAINT raw_data_content_key "
                         "UNIQUE (source_type, source_name, entity, source_id, payload_hash)")
            conn.execute("CREATE INDEX raw_data_day_seq_idx ON raw_data (partition_date, source_type, source_name, observed_seq)")
    with store.transaction() as conn:
        conn.execute("ANALYZE unified_items")
        conn.execute("ANALYZE raw_data")
    print(f"  PostgreSQL: {rows:,} rows in {time.perf_counter() - t:.1f}s", flush=True)


def fill_clickhouse(rows: int, days: int) -> None:
    from kingtavo_pipeline.storage.clickhouse import open_clickhouse

    t = time.perf_counter()
    with open_clickhouse() as ch:
        # as the warehouse step writes it: core's rows in batches of the IO manager's stage size, each
        # batch holding every day of the window (the CSV interleaves days), so every batch leaves a
        # part in every partition; left unmerged (the check step's process merges what it can)
        ch.command("SYSTEM STOP MERGES unified_items")
        settings = {"max_insert_block_size": PART_ROWS, "min_insert_block_size_rows": PART_ROWS,
                    "min_insert_block_size_bytes": 0, "max_block_size": PART_ROWS, "max_threads": 1,
                    "max_partitions_per_insert_block": 0}
        for lo in range(0, rows, PART_ROWS):  # row i: external_id str(i), day i % days (bench/end_to_end.py's CSV)
            ch.command(f"""
                INSERT INTO unified_items (source_type, source_name, external_id, title, description, category, url,
                                           amount, quantity, metadata, published_at, partition_date, raw_data_id,
                                           updated_at, source_updated_at, observed_seq, _version)
                SELECT 'csv', 'bench_orders', toString(number), concat('Product ', toString(number % 1000)),
                       concat('notes for order ', toString(number)), concat('cat-', toString(number % 20)), NULL,
                       toDecimal64(number % 100000, 4) / 100, toInt64(number % 7 + 1),
                       concat('{{"coupon": "C', toString(number % 50), '", "channel": "web"}}'),
                       toDateTime64(toDate('{START}') + number % {days}, 6, 'UTC') + toIntervalSecond(number % 86400),
                       toDate('{START}') + number % {days}, toInt64(number + 1),
                       toDateTime64('2024-12-01 00:00:00', 6, 'UTC'), NULL, toInt64(number + 1), number + 1
                FROM numbers({lo}, {min(PART_ROWS, rows - lo)})""", settings=settings)
        parts = ch.query("SELECT count(), sum(rows) FROM system.parts WHERE database = currentDatabase() "
                         "AND table = 'unified_items' AND active").result_rows[0]
    print(f"  ClickHouse: {rows:,} rows in {time.perf_counter() - t:.1f}s, {parts[0]} active parts", flush=True)


def run_child(spec: str, days: int, env: dict[str, str]) -> dict:
    """One fresh subprocess; its peak RSS from the kernel (wait4), whatever the child reports."""
    end = START + dt.timedelta(days=days)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", spec, "--start", START.isoformat(),
                             "--end", end.isoformat()], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    line = next((l for l in out.splitlines() if l.startswith("@@")), None)
    if proc.returncode != 0 or line is None:
        return {"spec": spec, "error": f"exit {proc.returncode}", "peak_mib": usage.ru_maxrss / 1024, "wall": wall}
    report = json.loads(line[2:])
    report.update(spec=spec, peak_mib=usage.ru_maxrss / 1024, wall=wall)
    return report


def verdict(report: dict) -> str:
    if "error" in report:
        return report["error"]
    if "parts_after" in report:
        return f"{report['parts_after']} active parts after the merges"
    days = [d for r in report["results"].values() for d in r.values()]
    failed = sum(not d["passed"] for d in days)
    return f"{len(days) - failed}/{len(days)} days pass" if days else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000,10000000", help="sizes, comma-separated (default 1M and 10M)")
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--only", default="", help="check names (or step names) to run, comma-separated")
    parser.add_argument("--no-steps", action="store_true", help="skip the whole-step subprocesses")
    parser.add_argument("--stop-merges", action="store_true", help="SYSTEM STOP MERGES in each subprocess first")
    parser.add_argument("--no-raw", action="store_true", help="no raw_data rows (core_row_has_raw_record then fails)")
    parser.add_argument("--postgres-url", default=os.environ.get("KINGTAVO_POSTGRES_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--json", help="write every result (with per-day metadata) to this file")
    parser.add_argument("--workdir", help="keep the built stores here (and the database) and reuse them when "
                        "they hold --rows over --days: one size only; drop with --drop")
    parser.add_argument("--drop", action="store_true", help="with --workdir: delete it and the database at the end")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--build", choices=["postgres", "clickhouse"], help=argparse.SUPPRESS)
    parser.add_argument("--start", help=argparse.SUPPRESS)
    parser.add_argument("--end", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        rows = int(float(args.rows))
        fill_postgres(rows, args.days, not args.no_raw) if args.build == "postgres" else fill_clickhouse(rows, args.days)
        return
    if args.child:
        child(args.child, dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end))
        return

    sizes = [int(float(s)) for s in args.rows.split(",") if s.strip()]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    sys.path.insert(0, str(ROOT))
    specs = ["baseline", "merges"]
    for op in STEPS:
        names = [c.name for c in _checks_of(op)]
        specs += [f"{op}:{n}" for n in names if not only or n in only or op in only]
        if not args.no_steps and len(names) > 1 and (not only or op in only):
            specs.append(op)
    if args.workdir and len(sizes) != 1:
        parser.error("--workdir keeps one size")
    everything = []
    for rows in sizes:
        work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench_checks_"))
        work.mkdir(parents=True, exist_ok=True)
        chdb, pristine, marker = work / "clickhouse", work / "clickhouse.pristine", work / "built.json"
        database = f"{DATABASE}_{rows}"
        env = {**os.environ, "KINGTAVO_HOME": str(work / "home"), "KINGTAVO_POSTGRES_URL": pg_url(args.postgres_url, database),
               "KINGTAVO_CLICKHOUSE_URL": f"chdb://{chdb}", "KINGTAVO_CLICKHOUSE_DATABASE": CH_DATABASE,
               "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore",
               "BENCH_STOP_MERGES": "1" if args.stop_merges else "0"}
        wanted = {"postgres": {"rows": rows, "days": args.days, "raw": not args.no_raw, "layout": PG_LAYOUT},
                  "clickhouse": {"rows": rows, "days": args.days, "layout": CH_LAYOUT}}
        try:
            print(f"== {rows:,} rows over {args.days} days", flush=True)
            built = json.loads(marker.read_text()) if marker.exists() else {}
            if not pristine.is_dir():
                built.pop("clickhouse", None)
            for what in ("postgres", "clickhouse"):
                if built.get(what) == wanted[what]:
                    print(f"  reusing {what} as built in {work}", flush=True)
                    continue
                built.pop(what, None)
                marker.write_text(json.dumps(built))
                if what == "postgres":
                    recreate_database(args.postgres_url, database)
                else:
                    shutil.rmtree(pristine, ignore_errors=True)
                    shutil.rmtree(chdb, ignore_errors=True)
                t = time.perf_counter()
                build(what, rows, args.days, env, with_raw=not args.no_raw)
                print(f"  built in {time.perf_counter() - t:.1f}s", flush=True)
                if what == "clickhouse":
                    shutil.copytree(chdb, pristine, symlinks=True)
                built[what] = wanted[what]
                marker.write_text(json.dumps(built))
            print(f"  {'check':<66}{'peak RSS MiB':>13}{'wall s':>9}  verdicts", flush=True)
            for spec in specs:
                shutil.rmtree(chdb, ignore_errors=True)
                shutil.copytree(pristine, chdb, symlinks=True)
                report = run_child(spec, args.days, env)
                report["rows"] = rows
                everything.append(report)
                print(f"  {spec:<66}{report['peak_mib']:>13,.0f}{report['wall']:>9.1f}  {verdict(report)}", flush=True)
        finally:
            if not args.workdir or args.drop:
                shutil.rmtree(work, ignore_errors=True)
                recreate_database(args.postgres_url, database, drop_only=True)
    if len(sizes) > 1:
        print("\n== peak RSS MiB by size")
        print(f"  {'check':<66}" + "".join(f"{r:>14,}" for r in sizes))
        for spec in specs:
            peaks = {r["rows"]: r["peak_mib"] for r in everything if r["spec"] == spec}
            print(f"  {spec:<66}" + "".join(f"{peaks.get(r, float('nan')):>14,.0f}" for r in sizes))
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1, default=str))


def _checks_of(op: str) -> list:
    return _step_checks()[op]


if __name__ == "__main__":
    main()
