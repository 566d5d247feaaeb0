"""Staging on a connection of its own, so the COPY of the next batch overlaps the upsert of this one.

:func:`~kingtavo_pipeline.storage.upsert.upsert` stages a batch by COPYing it into a temporary table
on the caller's connection, then applies it with one ``INSERT ... ON CONFLICT``; the two run one
after the other, and for a bulk write the COPY (serialising in Python, parsing in the server) is a
third of the time. A :class:`Stager` COPYs batches into UNLOGGED tables in the schema
``kingtavo_stage`` on a second connection, each committed at once so the caller's transaction
sees it, from the thread that produces the batches; the caller's connection only applies them.
Nothing is visible in the target table before the caller commits: staging changes where the rows
wait, not when they land.

Each staged table is dropped by the upsert that applies it, in the caller's transaction. What a
rolled-back transaction leaves, the stager drops when it closes (after the caller's transaction
has ended: open the stager outside it), and tables of sessions that are gone (a killed process)
are dropped by the next stager to open.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import pandas as pd
import psycopg
import pyarrow as pa
from psycopg import sql

from kingtavo_pipeline.storage.postgres import SESSION_OPTIONS, PostgresStore, copy_arrow, qualified, to_arrow
from kingtavo_pipeline.storage.upsert import Staged, has_duplicate_keys

STAGE_SCHEMA = "kingtavo_stage"
_NAME = re.compile(r"^s_(\d+)_\d+$")  # s_<backend pid>_<n>


class Stager:
    """COPYs batches into staged tables shaped like ``target``'s columns (use as a context manager)."""

    def __init__(self, store: PostgresStore, target: str | None, key_columns: Sequence[str],
                 definition: str | None = None):
        """Tables take ``target``'s column types, or the column ``definition`` given (trusted SQL,
        e.g. ``"id text, n bigint"``); ``key_columns`` are what makes two staged rows the same record."""
        if (target is None) == (definition is None):
            raise ValueError("a Stager stages like a target table or to a column definition, one of the two")
        self.store = store
        self.target = target
        self.definition = definition
        self.key_columns = list(key_columns)
        self._conn: psycopg.Connection | None = None
        self._made: list[sql.Composable] = []
        self._numbers = itertools.count(1)

    def __enter__(self) -> Stager:
        self._conn = psycopg.connect(self.store.url, autocommit=True, options=SESSION_OPTIONS)
        self._conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(STAGE_SCHEMA)))
        self._sweep()
        return self

    def _sweep(self) -> None:
        """Drop staged tables whose session is gone (their process was killed mid-run)."""
        tables = self._conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'", (STAGE_SCHEMA,)).fetchall()
        live = {r[0] for r in self._conn.execute("SELECT pid FROM pg_stat_activity").fetchall()}
        for (name,) in tables:
            match = _NAME.match(name)
            if match and int(match.group(1)) not in live:
                self._conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(STAGE_SCHEMA, name)))

    def stage(self, frame: pd.DataFrame | pa.Table) -> Staged:
        """COPY ``frame`` into a new staged table, committed; for ``upsert(conn, target, staged, ...)``."""
        arrow = to_arrow(frame)
        columns = list(arrow.column_names)
        table = sql.Identifier(STAGE_SCHEMA, f"s_{self._conn.info.backend_pid}_{next(self._numbers)}")
        with self._conn.transaction():
            if self.definition is not None:
                self._conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(table, sql.SQL(self.definition)))
            else:
                self._conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT {} FROM {} WITH NO DATA").format(
                    table, sql.SQL(", ").join(sql.Identifier(c) for c in columns), qualified(self.target)))
            self._made.append(table)
            if arrow.num_rows:
                copy_arrow(self._conn, table, arrow, columns)
        duplicates = bool(arrow.num_rows) and has_duplicate_keys(arrow, self.key_columns)
        return Staged(table, tuple(columns), arrow.num_rows, duplicates)

    def __exit__(self, *exc) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            for table in self._made:  # applied ones are gone already
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        finally:
            conn.close()
