"""Runs whose process dies or is told to stop: `kingtavo demo` in real subprocesses, killed with
SIGKILL or stopped with SIGTERM mid-run, then the next demo / `kingtavo status` repairing it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from contextlib import contextmanager
import sys
import threading
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from kingtavo_pipeline.run_health import HOST_TAG, PID_TAG, pid_alive, this_process
from kingtavo_pipeline.storage.clickhouse import CLICKHOUSE_POOL

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
BIG_ROWS = 40_000  # long enough a warehouse step (~1 s) to stop it while it runs


# --- helpers -------------------------------------------------------------------------------------


def wait_until(predicate, timeout: float, what: str, *, interval: float = 0.02, proc=None):
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Demo:
    """`kingtavo demo` in a subprocess; its output collected line by line by a reader thread."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([str(BIN / "kingtavo"), "demo"], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._error: BaseException | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread by output()
            self._error = exc

    def output(self) -> str:
        if self._error is not None:
            raise self._error
        return "\n".join(self.lines)

    def line_with(self, *parts: str) -> str | None:
        return next((line for line in list(self.lines) if all(p in line for p in parts)), None)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        self.output()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=30)


def demo_env(tmp_path: Path, postgres_url: str, sources: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KINGTAVO_", "DAGSTER_"))}
    env.update(
        KINGTAVO_HOME=str(tmp_path / "home"),
        KINGTAVO_POSTGRES_URL=postgres_url,
        KINGTAVO_CLICKHOUSE_URL=f"chdb://{tmp_path / 'clickhouse'}",
        PYTHONUNBUFFERED="1",
    )
    if sources is not None:
        env["KINGTAVO_SOURCES_FILE"] = str(sources)
    return env


def dagster_instance(tmp_path: Path) -> dg.DagsterInstance:
    """The instance demo uses ($KINGTAVO_HOME/dagster), created beforehand as demo would."""
    home = tmp_path / "home" / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


def big_sources(tmp_path: Path, rows: int = BIG_ROWS) -> Path:
    with (tmp_path / "orders.csv").open("w") as f:
        f.write("order_id,order_date,product,qty,total\n")
        for i in range(rows):
            f.write(f"O{i},2024-11-0{1 + i % 3}T10:{i % 60:02d}:00Z,Product {i},{1 + i % 5},{(i % 1000) / 10:.2f}\n")
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"csv": [{
        "name": "big_orders", "path": "orders.csv", "entity": "orders", "id_column": "order_id",
        "date_column": "order_date",
        "fields": {"external_id": "order_id", "title": "product", "amount": "total", "quantity": "qty",
                   "published_at": "order_date"},
    }]}))
    return path


def running_warehouse_row(store):
    rows = store.fetch_all(
        "SELECT id, run_id, status FROM etl_runs WHERE asset_key LIKE 'warehouse/%%' ORDER BY id DESC LIMIT 1")
    return rows[0] if rows and rows[0][2] == "running" else None


def slots_and_waits(instance, run_id: str) -> tuple[list, list]:
    info = instance.event_log_storage.get_concurrency_info(CLICKHOUSE_POOL)
    return ([s for s in info.claimed_slots if s.run_id == run_id],
            [p for p in info.pending_steps if p.run_id == run_id])


def hold_pool_slot(instance, pid: int) -> str:
    """A STARTED run of process ``pid`` on this host holding the clickhouse pool's one slot."""
    run_id = str(uuid.uuid4())
    instance.add_run(dg.DagsterRun(job_name="holder_job", run_id=run_id, status=dg.DagsterRunStatus.STARTED,
                                   tags={PID_TAG: str(pid), HOST_TAG: socket.gethostname()}))
    instance.event_log_storage.set_concurrency_slots(CLICKHOUSE_POOL, 1)
    assert instance.event_log_storage.claim_concurrency_slot(CLICKHOUSE_POOL, run_id, "holder_step").is_claimed
    return run_id


# --- tests ---------------------------------------------------------------------------------------


def test_process_liveness():
    me = this_process()
    assert pid_alive(me.pid, me.start)
    if me.start is not None:
        assert not pid_alive(me.pid, "not-its-start-time")  # a reused pid is not the original
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        # killed, not yet reaped: a zombie is dead
        wait_until(lambda: not pid_alive(child.pid), 10, "the killed child to read as dead")
    finally:
        child.kill()
        child.wait(timeout=10)
    assert not pid_alive(child.pid)


def test_demo_killed_mid_warehouse_step_is_repaired_by_the_next_demo(store, postgres_url, tmp_path):
    env = demo_env(tmp_path, postgres_url, big_sources(tmp_path))
    first = Demo(env)
    try:
        row_id, killed_run, _ = wait_until(lambda: running_warehouse_row(store), 300,
                                           "the warehouse step to start", interval=0.01, proc=first.proc)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
    finally:
        first.close()
    killed_pid = first.proc.pid
    status = store.fetch_value("SELECT status FROM etl_runs WHERE id = %s", (row_id,))
    assert status == "running", f"the warehouse step finished before the kill landed ({status}); raise BIG_ROWS"
    with dagster_instance(tmp_path) as instance:
        # the defect: the run looks alive and keeps the pool's one slot
        assert instance.get_run_by_id(killed_run).status == dg.DagsterRunStatus.STARTED
        assert slots_and_waits(instance, killed_run)[0]

    second = subprocess.run([str(BIN / "kingtavo"), "demo"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    expected = (f"process {killed_pid} on {socket.gethostname()} exited without finishing; "
                "marked failed by kingtavo demo")
    assert f"Repaired: run {killed_run}" in second.stdout and expected in second.stdout, second.stdout
    with dagster_instance(tmp_path) as instance:
        run = instance.get_run_by_id(killed_run)
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert slots_and_waits(instance, killed_run) == ([], [])
        assert instance.event_log_storage.get_concurrency_info(CLICKHOUSE_POOL).claimed_slots == []
    status, error = store.fetch_all("SELECT status, error_message FROM etl_runs WHERE id = %s", (row_id,))[0]
    assert status == "failed" and expected in error
    assert store.fetch_value("SELECT count(*) FROM etl_runs WHERE status = 'running'") == 0
    assert store.fetch_value("SELECT count(*) FROM unified_items") == BIG_ROWS


def test_demo_stopped_by_sigterm_mid_step_exits_promptly_and_records_it(store, postgres_url, tmp_path):
    env = demo_env(tmp_path, postgres_url, big_sources(tmp_path))
    demo = Demo(env)
    try:
        row_id, run_id, _ = wait_until(lambda: running_warehouse_row(store), 300,
                                       "the warehouse step to start", interval=0.01, proc=demo.proc)
        sent = time.monotonic()
        demo.proc.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        demo.close()
    assert code == 128 + signal.SIGTERM, demo.output()[-3000:]
    assert took < 15, f"took {took:.1f}s to stop"
    assert "received SIGTERM; run stopped" in demo.output()
    with dagster_instance(tmp_path) as instance:
        assert instance.get_run_by_id(run_id).status in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
        assert slots_and_waits(instance, run_id) == ([], [])
    status, error = store.fetch_all("SELECT status, error_message FROM etl_runs WHERE id = %s", (row_id,))[0]
    assert status == "failed" and ("interrupted" in error or "SIGTERM" in error), error
    assert store.fetch_value("SELECT count(*) FROM etl_runs WHERE status = 'running'") == 0


@contextmanager
def demo_waiting_on_a_live_holder(tmp_path, postgres_url):
    """A live process's run holds the clickhouse slot; a demo runs until its warehouse step reports
    waiting for it. Yields ``(holder process, holder run id, demo, the waiting line)``."""
    holder_process = subprocess.Popen(["sleep", "600"])
    try:
        with dagster_instance(tmp_path) as instance:
            holder = hold_pool_slot(instance, holder_process.pid)
        demo = Demo(demo_env(tmp_path, postgres_url))
        try:
            waiting = wait_until(lambda: demo.line_with("Waiting: step warehouse", holder), 300,
                                 "demo to report its warehouse step waiting", proc=demo.proc)
            yield holder_process, holder, demo, waiting
        finally:
            demo.close()
    finally:
        holder_process.kill()
        holder_process.wait(timeout=30)


def test_waiting_step_names_the_holder_and_goes_on_when_the_holder_dies(store, postgres_url, tmp_path):
    with demo_waiting_on_a_live_holder(tmp_path, postgres_url) as (holder_process, holder, demo, waiting):
        assert f"process {holder_process.pid} on {socket.gethostname()}, running" in waiting
        assert "pool 'clickhouse' (limit 1)" in waiting
        holder_process.kill()
        holder_process.wait(timeout=30)
        code = demo.wait(timeout=300)
    assert code == 0, demo.output()[-3000:]
    assert demo.line_with(f"Repaired: run {holder}", "exited without finishing"), demo.output()
    with dagster_instance(tmp_path) as instance:
        assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info(CLICKHOUSE_POOL).claimed_slots == []


def test_sigterm_while_waiting_for_a_slot_stops_promptly(store, postgres_url, tmp_path):
    """The reported hang: a run waiting for a pool slot ignored SIGTERM and spun at full CPU."""
    with demo_waiting_on_a_live_holder(tmp_path, postgres_url) as (_, holder, demo, waiting):
        run_id = waiting.split(" of run ", 1)[1].split()[0]
        sent = time.monotonic()
        demo.proc.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=30)
        took = time.monotonic() - sent
        assert code == 128 + signal.SIGTERM, demo.output()[-3000:]
        assert took < 15, f"took {took:.1f}s to stop"
        with dagster_instance(tmp_path) as instance:
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
            assert slots_and_waits(instance, run_id) == ([], [])
            # a live holder is left alone
            assert instance.get_run_by_id(holder).status == dg.DagsterRunStatus.STARTED
            assert slots_and_waits(instance, holder)[0]
        assert store.fetch_value("SELECT count(*) FROM etl_runs WHERE status = 'running'") == 0


# The main thread blocks SIGTERM, so the signal reaches the supervisor's thread and the main
# thread's sleep is never interrupted: no Python code runs there that an exception raised from
# another thread could ride on (without the mask, a main thread that is scheduled late runs the
# signal handler after the supervisor has raised RunInterrupted in it, and unwinds after all).
STUCK_SCRIPT = """
import signal
import time
import dagster as dg
from dagster._utils.interrupts import capture_interrupts
from kingtavo_pipeline.run_health import RunSupervisor

with dg.DagsterInstance.ephemeral() as instance, RunSupervisor(instance, None, by="stuck", force_after=2):
    with capture_interrupts():  # Dagster's handler: SIGTERM only sets a flag
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        print("ready", flush=True)
        time.sleep(120)  # a blocking call an exception raised from another thread cannot break
print("unwound")
"""


def test_main_thread_stuck_in_a_blocking_call_is_cut_short():
    proc = subprocess.Popen([sys.executable, "-c", STUCK_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - sent
        out = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert code == 128 + signal.SIGTERM and took < 10, (code, took, out)
    assert "received SIGTERM; run stopped" in out and "exiting without unwinding" in out and "unwound" not in out


def test_status_repairs_runs_and_rows_of_dead_processes(store, postgres_url, tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=30)
    host, me = socket.gethostname(), this_process()
    with dagster_instance(tmp_path) as instance:
        dead_run = hold_pool_slot(instance, gone.pid)
        finished_run = str(uuid.uuid4())
        instance.add_run(dg.DagsterRun(job_name="done_job", run_id=finished_run, status=dg.DagsterRunStatus.SUCCESS))
    with store.transaction() as conn:
        conn.execute(
            """INSERT INTO etl_runs (run_id, asset_key, status, pid, host, pid_start) VALUES
                   (%s, 'warehouse/unified_items', 'running', %s, %s, NULL),
                   ('live-run', 'core/unified_items', 'running', %s, %s, %s),
                   (%s, 'core/unified_items', 'running', NULL, NULL, NULL),
                   ('other-host-run', 'core/unified_items', 'running', %s, 'some-other-host', NULL)""",
            (dead_run, gone.pid, host, me.pid, host, me.start, finished_run, gone.pid),
        )
    out = subprocess.run([str(BIN / "kingtavo"), "status"], env=demo_env(tmp_path, postgres_url),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"run {dead_run} (holder_job, was STARTED): process {gone.pid} on {host} exited without finishing; " \
           "marked failed by kingtavo status" in out.stdout, out.stdout
    assert "1 concurrency slot(s) freed, 1 etl_runs row(s) closed" in out.stdout
    assert "its Dagster run ended SUCCESS without closing this row" in out.stdout
    states = dict(store.fetch_all("SELECT run_id, status FROM etl_runs"))
    assert states == {dead_run: "failed", finished_run: "failed", "live-run": "running", "other-host-run": "running"}
    with dagster_instance(tmp_path) as instance:
        assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
        assert instance.event_log_storage.get_concurrency_info(CLICKHOUSE_POOL).claimed_slots == []
    again = subprocess.run([str(BIN / "kingtavo"), "status"], env=demo_env(tmp_path, postgres_url),
                           capture_output=True, text=True, timeout=300)
    assert "Repaired (process gone, marked failed): none" in again.stdout, again.stdout


def test_docker_instance_enables_run_monitoring_its_launcher_supports(tmp_path):
    """docker/dagster.yaml's run_monitoring loads with its run launcher (storage swapped for SQLite:
    no PostgreSQL server here); Dagster refuses resume attempts a launcher cannot honour."""
    config = yaml.safe_load((REPO / "docker" / "dagster.yaml").read_text())
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    assert {"start_timeout_seconds", "cancel_timeout_seconds", "max_resume_run_attempts",
            "poll_interval_seconds", "free_slots_after_run_end_seconds"} <= set(monitoring)
    del config["storage"]
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        if not instance.run_launcher.supports_resume_run:
            assert instance.run_monitoring_max_resume_run_attempts == 0
