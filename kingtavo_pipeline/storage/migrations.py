"""The one migration runner: numbered SQL files in ``sql/postgres`` and ``sql/clickhouse``.

Files are named ``NNNN_description.sql``, applied in order, once, and recorded in a
``schema_migrations`` table in each store. Applying is idempotent and safe from several processes
and threads: PostgreSQL takes an advisory lock; ClickHouse has none, so a file lock (beside the
chDB data path, or per server and database in the temp folder) plus a thread lock serialise it,
and each (location, database) is migrated once per process.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client
from filelock import FileLock

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_ADVISORY_LOCK_KEY = 7_316_480_211  # any fixed bigint; names the migration lock
MIGRATION_LOCK_TIMEOUT_S = 120

_clickhouse_lock = threading.Lock()
_clickhouse_migrated: set[tuple[str, str]] = set()


def sql_dir() -> Path:
    """``sql/`` beside the package in a checkout, or the copy packed into a wheel."""
    packaged = Path(__file__).resolve().parents[1] / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(kind: str) -> list[Migration]:
    folder = sql_dir() / kind
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path} is not named NNNN_description.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations in {folder} share a number: {versions}")
    return migrations


def split_statements(script: str) -> list[str]:
    """Split a ClickHouse script on ``;`` at line ends (our DDL never puts ``;`` inside strings)."""
    without_comments = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", without_comments) if s.strip()]


def migrate_postgres(store) -> list[str]:
    """Apply pending PostgreSQL migrations; returns the names applied now."""
    applied_now: list[str] = []
    with store.transaction() as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_ADVISORY_LOCK_KEY,))
        conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {v: c for v, c in conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()}
        for migration in load_migrations("postgres"):
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    log.warning("PostgreSQL migration %04d_%s changed after it was applied", migration.version, migration.name)
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied_now.append(f"{migration.version:04d}_{migration.name}")
    if applied_now:
        log.info("applied PostgreSQL migrations: %s", ", ".join(applied_now))
    return applied_now


def _clickhouse_location(client: Client) -> tuple[str, Path | None]:
    """(identity of the store, chDB data path or None) of a client; credentials are not part of it."""
    url = getattr(client, "url", None)  # HTTP client: scheme://host:port, no user or password
    if url:
        return str(url), None
    path = str(getattr(client, "path", "") or "")  # chDB client
    if not path or path in ("memory", ":memory:"):
        return f"chdb:{path or ':memory:'}", None
    resolved = Path(path).expanduser().resolve()
    return f"chdb://{resolved}", resolved


def clickhouse_migration_lock_path(client: Client) -> Path | None:
    """The file lock that serialises migrations of the client's database across processes."""
    location, path = _clickhouse_location(client)
    return _clickhouse_lock_file(location, str(client.database or "default"), path)


def _clickhouse_lock_file(location: str, database: str, path: Path | None) -> Path | None:
    if path is not None:
        return path.with_name(f"{path.name}.migrate.lock")
    if location.startswith("chdb:"):
        return None  # in-memory: this process only, the thread lock suffices
    # A server: serialises processes on this host; across hosts, IF NOT EXISTS DDL and
    # ReplacingMergeTree(version) keep a repeated migration harmless.
    digest = hashlib.sha256(f"{location}/{database}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"kingtavo-clickhouse-migrate-{digest}.lock"


def forget_clickhouse_migrations() -> None:
    """Forget which ClickHouse databases this process migrated (tests that drop them call this)."""
    with _clickhouse_lock:
        _clickhouse_migrated.clear()


def migrate_clickhouse(client: Client) -> list[str]:
    """Apply pending ClickHouse migrations in the client's database; returns the names applied now.

    Once per process per (store, database): later calls issue no queries at all.
    """
    location, path = _clickhouse_location(client)
    database = str(client.database or "default")
    key = (location, database)
    with _clickhouse_lock:
        if key in _clickhouse_migrated:
            return []
        lock_file = _clickhouse_lock_file(location, database, path)
        if lock_file is None:
            applied = _apply_clickhouse(client)
        else:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(lock_file), timeout=MIGRATION_LOCK_TIMEOUT_S):
                applied = _apply_clickhouse(client)
        _clickhouse_migrated.add(key)
        return applied


def _apply_clickhouse(client: Client) -> list[str]:
    client.command(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))
           ENGINE = ReplacingMergeTree ORDER BY version"""
    )
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations FINAL").result_rows}
    applied_now: list[str] = []
    for migration in load_migrations("clickhouse"):
        if migration.version in done:
            continue
        for statement in split_statements(migration.sql):
            client.command(statement)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied_now.append(f"{migration.version:04d}_{migration.name}")
    if applied_now:
        log.info("applied ClickHouse migrations: %s", ", ".join(applied_now))
    return applied_now
