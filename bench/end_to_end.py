"""End to end: a generated CSV through raw -> core -> warehouse in real Dagster runs.

    python bench/end_to_end.py [--rows 1000000] [--days 5] [--keep DIR]

Generates an N-row, 8-column CSV over ``--days`` days, configures it as the only source
(``KINGTAVO_SOURCES_FILE``), and runs ``unified_items_job`` over its days as one single-run
backfill in a fresh Dagster instance with the multiprocess executor (every step in its own
process, as a deployment runs it), against the configured stores (``KINGTAVO_POSTGRES_URL`` /
``KINGTAVO_CLICKHOUSE_URL`` when set, else embedded PostgreSQL and chDB under a temporary
``KINGTAVO_HOME``; on a server it creates and drops a database of its own, and in ClickHouse it
uses the database ``kingtavo_e2e_bench``). Then it runs the job again on the unchanged file.

It prints, for the first run and the unchanged rerun: each step's wall time (from Dagster's
step events), end-to-end rows/s, each step's time against a raw PostgreSQL ``COPY`` of the same
file into a text table measured in the same run, and the peak RSS of every process of the run
(the run process and each step subprocess, read from ``/proc/<pid>/status`` VmHWM while they
live), with the CPU seconds each used and, when the PostgreSQL server runs on this machine, the
CPU seconds of its backends serving the run: their sum over the machine's cores is the shortest
wall time the same work could take here. The row counts of both stores are checked at the end. Last, it times PostgreSQL writing
the rows the run wrote into copies of ``raw_data`` and ``unified_items`` (same columns and
indexes): the storage design's own floor under the raw and core steps.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

START = date(2024, 11, 1)
COLUMNS = ["order_id", "order_date", "customer", "product", "category", "total", "qty", "notes"]


def generate_csv(path: Path, rows: int, days: int, chunk: int = 500_000) -> int:
    """Write the CSV chunk by chunk (vectorised; memory bounded by ``chunk``). Returns bytes."""
    rng = np.random.default_rng(7)
    products = np.array([f"Product {i:04d}" for i in range(500)], dtype=object)
    categories = np.array(["tools", "garden", "kitchen", "toys", "books", "sports"], dtype=object)
    customers = np.array([f"customer-{i:06d}@example.com" for i in range(20_000)], dtype=object)
    day_strings = np.array([(START + timedelta(days=d)).isoformat() for d in range(days)], dtype=object)
    with open(path, "wb") as out:
        for first in range(0, rows, chunk):
            n = min(chunk, rows - first)
            idx = np.arange(first, first + n)
            seconds = rng.integers(0, 86_400, n)
            hms = [f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in seconds]
            table = pa.table(
                {
                    "order_id": pc.cast(pa.array(idx), pa.string()),
                    "order_date": pa.array(day_strings[idx % days] + np.array(hms, dtype=object)),
                    "customer": pa.array(customers[rng.integers(0, len(customers), n)]),
                    "product": pa.array(products[idx % len(products)]),
                    "category": pa.array(categories[idx % len(categories)]),
                    "total": pc.cast(pa.array(np.round(rng.uniform(1, 500, n), 2)), pa.string()),
                    "qty": pc.cast(pa.array(rng.integers(1, 20, n)), pa.string()),
                    "notes": pa.array(np.where(idx % 3 == 0, "gift wrap, please", "")),
                }
            )
            pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=first == 0))
    return path.stat().st_size


SOURCES_YAML = """csv:
  - name: bench_orders
    path: {path}
    entity: orders
    id_column: order_id
    date_column: order_date
    delimiter: ","
    encoding: utf-8
    fields:
      external_id: order_id
      title: product
      description: notes
      category: category
      amount: total
      quantity: qty
      published_at: order_date
"""


_PARALLEL_WORKER = re.compile(r"parallel worker for PID (\d+)")
_CLIENT_PORT = re.compile(r" 127\.0\.0\.1\((\d+)\) ")


def _socket_inodes_by_local_port() -> dict[int, str]:
    """Local TCP port -> socket inode, for this machine's TCP sockets (both IPv4 and IPv6 tables)."""
    out: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            out.setdefault(int(fields[1].rpartition(":")[2], 16), fields[9])
    return out


class RssSampler:
    """Polls the peak RSS (VmHWM) and CPU time of this process and every descendant while they
    live, and the CPU time of the PostgreSQL backends serving ``database`` when the server runs
    on this machine (found by their process titles, ``postgres: ... <database> ...``), with the
    parallel workers they start (``parallel worker for PID <backend>``). A worker's last tenth of
    a second before it exits is not seen: the backends' figure is a slight undercount."""

    def __init__(self, interval: float = 0.05, database: str | None = None):
        self.interval = interval
        self.database = database
        self.peaks: dict[int, tuple[str, int]] = {}
        self.cpu: dict[int, float] = {}  # seconds (user + system), newest reading per process
        self.backend_cpu: dict[int, float] = {}
        # backend -> the process of ours it serves (matched by the client's TCP port; a parallel
        # worker counts for its leader's client); backends over a Unix socket stay unattributed
        self.backend_client: dict[int, int] = {}
        self._backend_port: dict[int, int] = {}
        self._worker_leader: dict[int, int] = {}
        self._baseline: dict[int, float] = {}  # backends alive before the run: only what they add counts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._rounds = 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        kids = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return kids

    def _cpu_of(self, pid: int) -> float | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / self._ticks

    def _sample(self) -> None:
        todo = [os.getpid()]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            name = self.peaks.get(pid, (cmd, 0))[0] or cmd
            self.peaks[pid] = (name, max(hwm, self.peaks.get(pid, ("", 0))[1]))
            cpu = self._cpu_of(pid)
            if cpu is not None:
                self.cpu[pid] = cpu
            todo += self._children(pid)

    def _sample_backends(self, first: bool = False) -> None:
        if not self.database:
            return
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            worker = _PARALLEL_WORKER.search(title)
            ours = f" {self.database} " in title or (worker is not None and int(worker.group(1)) in self.backend_cpu)
            if title.startswith("postgres:") and ours:  # a backend of the run, or a parallel worker of one
                pid = int(entry.name)
                if worker is not None:
                    self._worker_leader[pid] = int(worker.group(1))
                elif pid not in self._backend_port and (port := _CLIENT_PORT.search(title)):
                    self._backend_port[pid] = int(port.group(1))
                cpu = self._cpu_of(pid)
                if cpu is not None:
                    if first:
                        self._baseline[int(entry.name)] = cpu
                    self.backend_cpu[int(entry.name)] = cpu - self._baseline.get(int(entry.name), 0.0)

    def _match_clients(self) -> None:
        """Find the process of ours holding the client end of each new backend's connection."""
        pending = {port: backend for backend, port in self._backend_port.items() if backend not in self.backend_client}
        if not pending:
            return
        inodes = _socket_inodes_by_local_port()
        wanted = {f"socket:[{inodes[port]}]": backend for port, backend in pending.items() if port in inodes}
        for pid in list(self.peaks):
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    backend = wanted.get(os.readlink(fd))
                except OSError:
                    continue
                if backend is not None:
                    self.backend_client[backend] = pid

    def backend_cpu_by_client(self) -> dict[int | None, float]:
        """PostgreSQL backend CPU seconds per process of ours (None: not matched to one)."""
        out: dict[int | None, float] = {}
        for backend, cpu in self.backend_cpu.items():
            client = self.backend_client.get(self._worker_leader.get(backend, backend))
            out[client] = out.get(client, 0.0) + cpu
        return out

    def cpu_used(self, pid: int) -> float:
        """CPU seconds a process spent while sampled (a process older than the run: since the start)."""
        return self.cpu.get(pid, 0.0) - self._baseline.get(pid, 0.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            if self._rounds % 2 == 0:  # a scan of every process (parallel workers live briefly): every 0.1 s
                self._sample_backends()
                self._match_clients()
            self._rounds += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._baseline.update({pid: cpu for pid, cpu in self.cpu.items()})  # processes from before the run
        self._sample_backends(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._sample_backends()


def label(cmd: str) -> str:
    if "postgres" in cmd.split(" ")[0]:
        return "postgres server"
    if "multiprocessing" in cmd:
        return "executor helper process"
    return cmd[:48]


def raw_copy_seconds(store, csv_path: Path) -> float:
    """COPY the file as is into an 8-text-column table: the floor for landing it in PostgreSQL."""
    from psycopg import sql

    with store.transaction() as conn:
        conn.execute("DROP TABLE IF EXISTS bench_raw_copy")
        conn.execute(sql.SQL("CREATE TABLE bench_raw_copy ({})").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in COLUMNS)))
    started = time.perf_counter()
    with store.transaction() as conn, conn.cursor() as cur:
        with cur.copy("COPY bench_raw_copy FROM STDIN (FORMAT CSV, HEADER true)") as copy, open(csv_path, "rb") as f:
            while chunk := f.read(1 << 20):
                copy.write(chunk)
    elapsed = time.perf_counter() - started
    with store.transaction() as conn:
        conn.execute("DROP TABLE bench_raw_copy")
    return elapsed


def table_write_floors(store) -> dict[str, float]:
    """Seconds PostgreSQL itself needs to write the rows the run wrote, into a copy of each table
    with the same columns and indexes (INSERT ... SELECT, logged like the real one): the floor of
    the storage design under each step, measured on the same rows, in the same run."""
    floors = {}
    for table in ("raw_data", "unified_items"):
        with store.transaction() as conn:
            conn.execute(f"DROP TABLE IF EXISTS bench_floor_{table}")
            conn.execute(f"CREATE TABLE bench_floor_{table} (LIKE {table} INCLUDING DEFAULTS INCLUDING INDEXES)")
        started = time.perf_counter()
        with store.transaction() as conn:
            conn.execute(f"INSERT INTO bench_floor_{table} SELECT * FROM {table}")
        floors[table] = time.perf_counter() - started
        with store.transaction() as conn:
            conn.execute(f"DROP TABLE bench_floor_{table}")
    return floors


def fresh_postgres_database() -> tuple[str, str] | None:
    """On a configured server, work in a database of our own (never in the server's data)."""
    import uuid

    import psycopg
    from psycopg import sql

    server = os.environ.get("KINGTAVO_POSTGRES_URL")
    if not server:
        return None
    name = f"kingtavo_e2e_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base, _, query = server.partition("?")
    os.environ["KINGTAVO_POSTGRES_URL"] = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    return server, name


def drop_postgres_database(bench_db: tuple[str, str]) -> None:
    import psycopg
    from psycopg import sql

    from kingtavo_pipeline.storage.postgres import forget_stores

    forget_stores()
    server, name = bench_db
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def run_job(instance, start: str, end: str, database: str | None = None):
    import dagster as dg
    from dagster._core.events import DagsterEventType

    from kingtavo_pipeline.defs.schedules import unified_items_job  # noqa: F401 - the job's module

    job = dg.reconstructable(_job)
    started = time.perf_counter()
    with RssSampler(database=database) as sampler:
        result = dg.execute_job(
            job, instance=instance,
            tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end},
        )
    wall = time.perf_counter() - started
    if not result.success:
        raise SystemExit(f"run {result.run_id} failed; see the Dagster instance at {instance.root_directory}")
    steps: dict[str, list[float]] = {}
    names = {os.getpid(): "run process (this script)"}
    for record in instance.all_logs(result.run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}):
        steps.setdefault(record.step_key, []).append(record.timestamp)
        if record.dagster_event and record.dagster_event.pid:
            names[record.dagster_event.pid] = f"step {record.step_key}"
    step_seconds = {k: max(v) - min(v) for k, v in steps.items() if len(v) == 2}
    peaks = {pid: (names.get(pid) or label(cmd), kib, sampler.cpu_used(pid))
             for pid, (cmd, kib) in sampler.peaks.items()}
    by_client: dict[str, float] = {}
    for pid, cpu in sampler.backend_cpu_by_client().items():
        name = (names.get(pid) or label(sampler.peaks.get(pid, ("?", 0))[0])) if pid is not None else "not matched to a process"
        by_client[name] = by_client.get(name, 0.0) + cpu
    return wall, step_seconds, peaks, (sum(sampler.backend_cpu.values()), by_client) if database else None


def _job():
    from kingtavo_pipeline.definitions import defs

    return defs().resolve_job_def("unified_items_job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--keep", help="work folder to keep (default: a temporary one, deleted); on a server, "
                                       "the bench's database is kept too, for a look at what the run wrote")
    args = parser.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="kingtavo-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KINGTAVO_HOME", str(work / "home"))
    dagster_home = work / "dagster"
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster.yaml", dagster_home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    csv_path = work / "orders.csv"
    size = generate_csv(csv_path, args.rows, args.days)
    (work / "sources.yaml").write_text(SOURCES_YAML.format(path=csv_path))
    os.environ["KINGTAVO_SOURCES_FILE"] = str(work / "sources.yaml")
    print(f"{args.rows:,} rows, {size / 2**20:.0f} MiB, {args.days} days in {csv_path}")

    import dagster as dg

    from kingtavo_pipeline.settings import Settings
    from kingtavo_pipeline.storage.clickhouse import open_clickhouse
    from kingtavo_pipeline.storage.postgres import EMBEDDED_DATABASE, get_store

    bench_db = fresh_postgres_database()
    os.environ["KINGTAVO_CLICKHOUSE_DATABASE"] = "kingtavo_e2e_bench"
    settings = Settings()
    with open_clickhouse(settings, migrate=False) as client:
        client.command("DROP DATABASE IF EXISTS kingtavo_e2e_bench")
    store = get_store(settings)  # keeps an embedded server up for the steps
    copy_s = raw_copy_seconds(store, csv_path)
    print(f"PostgreSQL {store!r}; ClickHouse {settings.clickhouse_dsn.split('@')[-1]}")
    print(f"raw PostgreSQL COPY of the file: {copy_s:.2f} s ({args.rows / copy_s:,.0f} rows/s)\n")

    start, end = START.isoformat(), (START + timedelta(days=args.days - 1)).isoformat()
    with dg.DagsterInstance.get() as instance:
        database = bench_db[1] if bench_db else (EMBEDDED_DATABASE if settings.embedded_postgres else None)
        runs = [("first run", *run_job(instance, start, end, database)),
                ("unchanged rerun", *run_job(instance, start, end, database))]

    cores = os.cpu_count() or 1
    for name, wall, steps, peaks, backend_cpu in runs:
        print(f"== {name}: {wall:.1f} s wall, {args.rows / wall:,.0f} rows/s end to end, {wall / copy_s:.1f}x raw COPY")
        print(f"  {'step':<48} {'s':>8} {'x COPY':>8}")
        for step, seconds in sorted(steps.items(), key=lambda kv: kv[0]):
            print(f"  {step:<48} {seconds:>8.2f} {seconds / copy_s:>8.2f}")
        print(f"  {'process':<48} {'peak RSS MiB':>12} {'CPU s':>8}")
        for pid, (cmd, kib, cpu) in sorted(peaks.items(), key=lambda kv: -kv[1][1]):
            if kib > 50 * 1024:
                print(f"  {cmd + f' ({pid})':<48} {kib / 1024:>12.0f} {cpu:>8.1f}")
        ours = sum(cpu for _, _, cpu in peaks.values())
        if backend_cpu:
            backend_cpu, by_client = backend_cpu
            served = [f"{name.removeprefix('step ')} {cpu:.1f}"
                      for name, cpu in sorted(by_client.items(), key=lambda kv: -kv[1]) if cpu >= 0.05]
            if served:
                print("  PostgreSQL backend CPU s, by the process they served: " + ", ".join(served))
            # what the run cost in CPU, wherever it ran: the wall time cannot drop below total / cores
            total = ours + backend_cpu
            print(f"  CPU: our processes {ours:.1f} s, PostgreSQL backends {backend_cpu:.1f} s "
                  f"({backend_cpu / total:.0%}); {total:.1f} s in all = {total / cores:.1f} s on {cores} cores "
                  f"at best ({args.rows / (total / cores):,.0f} rows/s) against {wall:.1f} s wall")
        else:
            print(f"  CPU: our processes {ours:.1f} s (PostgreSQL backends not on this machine, not counted)")
    first, rerun = runs[0][1], runs[1][1]
    print(f"\nunchanged rerun: {first / rerun:.1f}x faster than the first run")
    floors = table_write_floors(store)
    print("PostgreSQL writing the same rows into copies of the tables (same columns and indexes): "
          + ", ".join(f"{t} {s:.2f} s ({args.rows / s:,.0f} rows/s)" for t, s in floors.items()))

    core = store.fetch_value("SELECT count(*) FROM unified_items")
    with open_clickhouse(settings) as client:
        warehouse = client.query("SELECT count() FROM unified_items FINAL").result_rows[0][0]
    print(f"rows: core {core:,}, warehouse {warehouse:,}")
    assert core == warehouse == args.rows, "the stores disagree with the file"
    with open_clickhouse(settings, migrate=False) as client:
        client.command("DROP DATABASE IF EXISTS kingtavo_e2e_bench")
    if bench_db and not args.keep:
        drop_postgres_database(bench_db)
    elif bench_db:
        print(f"kept the PostgreSQL database {bench_db[1]} and the work folder {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
