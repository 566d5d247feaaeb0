"""Shared, real stores for the whole test session.

PostgreSQL: a fresh database on the server named by ``KINGTAVO_TEST_POSTGRES_URL`` (CI points it
at 127.0.0.1:5432), else the embedded server started in a temporary folder. ClickHouse: chDB in
a temporary folder. Both are created once per session and cleaned between tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from kingtavo_pipeline.settings import Settings
from kingtavo_pipeline.storage.clickhouse import open_clickhouse
from kingtavo_pipeline.storage.postgres import PostgresStore, forget_stores, get_store, start_embedded_postgres

KEEP_SCHEMAS = ("public", "information_schema")
KEEP_CH_DATABASES = ("system", "default", "information_schema", "INFORMATION_SCHEMA")


def _with_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0]
    return f"{base}/{database}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[str]:
    server = os.environ.get("KINGTAVO_TEST_POSTGRES_URL")
    if not server:
        yield start_embedded_postgres(tmp_path_factory.mktemp("embedded-pg") / "postgres", "kingtavo_test")
        return
    name = f"kingtavo_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _with_database(server, name)
    finally:
        forget_stores()
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def kingtavo_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kingtavo-home")


@pytest.fixture(scope="session")
def clickhouse_dsn(kingtavo_home) -> str:
    return f"chdb://{kingtavo_home / 'clickhouse'}"


@pytest.fixture(scope="session", autouse=True)
def kingtavo_env(postgres_url, clickhouse_dsn, kingtavo_home) -> Iterator[None]:
    """Point every Settings() in this process (and the Dagster runs it starts) at the test stores."""
    values = {
        "KINGTAVO_POSTGRES_URL": postgres_url,
        "KINGTAVO_CLICKHOUSE_URL": clickhouse_dsn,
        "KINGTAVO_HOME": str(kingtavo_home),
        "KINGTAVO_CLICKHOUSE_DATABASE": "kingtavo",
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def settings(kingtavo_env) -> Settings:
    return Settings()


@pytest.fixture
def store(settings) -> Iterator[PostgresStore]:
    """The migrated test database, emptied before each test (schema_migrations kept)."""
    store = get_store(settings)
    with store.transaction() as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
            ).fetchall()
        ]
        if tables:
            conn.execute(
                sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier("public", t) for t in tables)
                )
            )
        for (schema,) in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%%' AND nspname <> ALL(%s)",
            (list(KEEP_SCHEMAS),),
        ).fetchall():
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    yield store


@pytest.fixture
def clickhouse(settings):
    """A migrated chDB client, emptied before the test and closed after it (chDB is one process at a time)."""
    with open_clickhouse(settings) as client:
        for (name,) in client.query(
            "SELECT name FROM system.tables WHERE database = {db:String} AND name <> 'schema_migrations'",
            parameters={"db": settings.clickhouse_database},
        ).result_rows:
            client.command(f"TRUNCATE TABLE `{settings.clickhouse_database}`.`{name}`")
        for (name,) in client.query("SELECT name FROM system.databases").result_rows:
            if name not in KEEP_CH_DATABASES and name != settings.clickhouse_database:
                client.command(f"DROP DATABASE `{name}`")
        yield client
