"""Embedded stores: start-up from several processes at once, and clear errors when a store is out of reach."""

from __future__ import annotations

import logging
import multiprocessing
import subprocess
import sys
import time
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.clickhouse import connect_clickhouse
from kingtavo_pipeline.storage.errors import StoreUnavailableError
from kingtavo_pipeline.storage.postgres import PostgresStore, get_store, start_embedded_postgres


def _start_and_query(data_dir: str, queue) -> None:
    try:
        url = start_embedded_postgres(Path(data_dir))
        with psycopg.connect(url) as conn:
            queue.put((url, conn.execute("SELECT current_database()").fetchone()[0]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(exc)))


def test_embedded_server_starts_once_for_processes_asking_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    data_dir = tmp_path / "pg"
    workers = [ctx.Process(target=_start_and_query, args=(str(data_dir), queue)) for _ in range(3)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=180) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert all(r[0] != "error" for r in results), results
    assert {r[1] for r in results} == {"kingtavo"}
    assert len({r[0] for r in results}) == 1
    assert (data_dir / "PG_VERSION").exists()


def test_unreachable_postgres_is_one_clear_error():
    store = PostgresStore("postgresql://kingtavo:secret@127.0.0.1:1/kingtavo")
    with pytest.raises(StoreUnavailableError) as err:
        store.fetch_value("SELECT 1")
    message = str(err.value)
    assert "127.0.0.1:1" in message and "KINGTAVO_POSTGRES_URL" in message
    assert "secret" not in message


def test_embedded_postgres_failure_names_data_dir_and_log(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data folder should be")
    settings = Settings(home=blocker, postgres_url=None)
    with pytest.raises(StoreUnavailableError) as err:
        get_store(settings)
    message = str(err.value)
    assert str(blocker / "postgres") in message and "log" in message


def test_unusable_chdb_path_names_the_path(tmp_path):
    blocker = tmp_path / "ch-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreUnavailableError) as err:
        connect_clickhouse(f"chdb://{blocker}", "kingtavo")
    assert str(blocker) in str(err.value)


def test_settings_defaults(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("KINGTAVO_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.home_path == tmp_path / ".kingtavo"
    assert settings.embedded_postgres and settings.embedded_clickhouse
    assert settings.clickhouse_dsn == f"chdb://{tmp_path / '.kingtavo' / 'clickhouse'}"
    assert settings.clickhouse_database == "kingtavo"
    monkeypatch.setenv("KINGTAVO_CLICKHOUSE_URL", "https://ch.example:8443")
    assert not Settings().embedded_clickhouse


HOLD_CHDB = """
import sys
from kingtavo_pipeline.storage.clickhouse import connect_clickhouse
client = connect_clickhouse(sys.argv[1], "kingtavo")
print("held", flush=True)
sys.stdin.readline()  # the test says when to let go
client.close()
print("released", flush=True)
sys.stdin.read()  # then stay alive until the test closes stdin
"""


def test_chdb_path_held_by_another_process_is_waited_for(tmp_path, caplog):
    dsn = f"chdb://{tmp_path / 'ch'}"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_CHDB, dsn], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreUnavailableError) as err:
            connect_clickhouse(dsn, "kingtavo", busy_timeout=0)
        assert str(tmp_path / "ch") in str(err.value) and "one process at a time" in str(err.value)
        caplog.set_level(logging.INFO, logger="kingtavo_pipeline.storage.clickhouse")
        with ThreadPoolExecutor(max_workers=1) as pool:
            waiting = pool.submit(connect_clickhouse, dsn, "kingtavo", busy_timeout=120)
            # it is retrying against the held path before the holder lets go
            deadline = time.monotonic() + 60
            while "is busy in another process" not in caplog.text:
                assert time.monotonic() < deadline and not waiting.done(), "the second open neither waited nor failed"
                time.sleep(0.05)  # polling against a deadline
            assert not waiting.done()
            holder.stdin.write("release\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "released"
            client = waiting.result(timeout=120)  # re-raises what the thread raised
        try:
            assert client.query("SELECT 1").result_rows == [(1,)]
        finally:
            client.close()
    finally:
        holder.kill()
        holder.wait(timeout=30)
