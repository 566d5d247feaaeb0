"""The one row-upsert every core table uses: COPY into a staging table, then one guarded
``INSERT ... ON CONFLICT`` — all inside the caller's transaction.

The guard: a staged row replaces the stored one only when its version column is newer, or equal
with different content, so an older version never overwrites a newer one and re-applying the same
rows changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import psycopg
import pyarrow as pa
from psycopg import sql

from kingtavo_pipeline.storage.postgres import copy_arrow, qualified, to_arrow


@dataclass(frozen=True)
class Staged:
    """Rows already COPYed into a table of their own (see :mod:`kingtavo_pipeline.storage.staging`),
    given to :func:`upsert` in place of a frame; the upsert drops the table in its transaction."""

    table: sql.Composable
    columns: tuple[str, ...]
    rows: int
    duplicate_keys: bool


@dataclass(frozen=True)
class UpsertResult:
    staged: int
    inserted: int
    updated: int

    @property
    def unchanged(self) -> int:
        """Staged rows that were duplicates in the batch, older than the stored row, or identical to it."""
        return self.staged - self.inserted - self.updated


def has_duplicate_keys(arrow: pa.Table, key_columns: Sequence[str]) -> bool:
    """Whether any key occurs twice in the batch (a vectorised group-by, ~0.1 s per million rows)."""
    return arrow.select(list(key_columns)).group_by(list(key_columns)).aggregate([]).num_rows < arrow.num_rows


def _versions(version_column: str | Sequence[str] | None) -> list[str]:
    if version_column is None:
        return []
    return [version_column] if isinstance(version_column, str) else list(version_column)


def newer_sql(versions: Sequence[str], new: str = "EXCLUDED", old: str = "t") -> sql.Composable:
    """``new`` is strictly newer than ``old``, comparing ``versions`` left to right (NULL oldest).

    A tuple, so a source's own modification time can lead and the observation order break ties:
    ``(source_updated_at, observed_seq)``. NULL sorts first: a value beats no value.
    """
    terms = []
    for i, column in enumerate(versions):
        v = sql.Identifier(column)
        equal_before = [
            sql.SQL("{n}.{c} IS NOT DISTINCT FROM {o}.{c}").format(n=sql.SQL(new), o=sql.SQL(old), c=sql.Identifier(c))
            for c in versions[:i]
        ]
        greater = sql.SQL("({n}.{v} > {o}.{v} OR ({o}.{v} IS NULL AND {n}.{v} IS NOT NULL))").format(
            n=sql.SQL(new), o=sql.SQL(old), v=v
        )
        terms.append(sql.SQL(" AND ").join([*equal_before, greater]))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(terms)) if terms else sql.SQL("false")


def upsert(
    conn: psycopg.Connection,
    table: str,
    frame: pd.DataFrame | pa.Table | Staged,
    key_columns: Sequence[str],
    *,
    version_column: str | Sequence[str] | None = "updated_at",
    on_conflict: str = "update",
    set_expressions: Mapping[str, str] | None = None,
    update_where: str | None = None,
) -> UpsertResult:
    """Upsert ``frame`` into ``table`` (``schema.table`` allowed) keyed on ``key_columns``.

    ``key_columns`` must match a unique constraint of the table. ``version_column`` is one column
    or a tuple compared left to right (NULL oldest); a stored row is replaced only by a newer
    version, or an equal one with different content, so re-applying rows changes nothing. Within
    the batch, the newest row per key wins. ``on_conflict="ignore"`` keeps the stored row.
    ``set_expressions`` overrides the update of given columns with SQL over ``t`` (the stored row)
    and ``EXCLUDED`` (e.g. ``{"attempts": "t.attempts + 1"}``); ``update_where`` replaces the
    guard with SQL of its own. Both are trusted code, not input.
    """
    if on_conflict not in ("update", "ignore"):
        raise ValueError(f"on_conflict must be 'update' or 'ignore', not {on_conflict!r}")
    versions = _versions(version_column)
    arrow = None if isinstance(frame, Staged) else to_arrow(frame)
    columns = list(frame.columns) if isinstance(frame, Staged) else arrow.column_names
    missing = [c for c in key_columns if c not in columns]
    if missing:
        raise ValueError(f"upsert into {table}: key columns {missing} are not in the frame")
    missing = [c for c in versions if c not in columns]
    if missing:
        raise ValueError(f"upsert into {table}: version column(s) {missing} are not in the frame")
    staged_rows = frame.rows if isinstance(frame, Staged) else arrow.num_rows
    if staged_rows == 0:
        if isinstance(frame, Staged):
            conn.execute(sql.SQL("DROP TABLE {}").format(frame.table))
        return UpsertResult(0, 0, 0)

    target = qualified(table)
    ident = {c: sql.Identifier(c) for c in columns}
    col_list = sql.SQL(", ").join(ident[c] for c in columns)
    keys = sql.SQL(", ").join(ident[c] for c in key_columns)

    if isinstance(frame, Staged):
        stage, duplicates = frame.table, frame.duplicate_keys
    else:
        stage = sql.Identifier(f"_stage_{uuid.uuid4().hex[:12]}")
        conn.execute(
            sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(stage, col_list, target)
        )
        copy_arrow(conn, stage, arrow, columns)
        duplicates = has_duplicate_keys(arrow, key_columns)

    if duplicates:
        order = keys
        if versions:
            order = sql.SQL(", ").join(
                [keys, *(sql.SQL("{} DESC NULLS LAST").format(ident[v]) for v in versions)]
            )
        select = sql.SQL("SELECT DISTINCT ON ({keys}) {cols} FROM {stage} ORDER BY {order}").format(
            keys=keys, cols=col_list, stage=stage, order=order
        )
    else:
        # The common case: no key twice in the batch, so no server-side sort is needed.
        select = sql.SQL("SELECT {cols} FROM {stage}").format(cols=col_list, stage=stage)

    overrides = dict(set_expressions or {})
    updatable = [c for c in columns if c not in key_columns]
    if on_conflict == "ignore" or not (updatable or overrides):
        conflict = sql.SQL("DO NOTHING")
    else:
        assignments = [
            sql.SQL("{} = {}").format(ident[c], sql.SQL(overrides.pop(c)) if c in overrides else sql.SQL("EXCLUDED.{}").format(ident[c]))
            for c in updatable
        ]
        assignments += [sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(expr)) for c, expr in overrides.items()]
        compared = [c for c in updatable if c not in versions]
        changed = (
            sql.SQL("({}) IS DISTINCT FROM ({})").format(
                sql.SQL(", ").join(sql.SQL("t.{}").format(ident[c]) for c in compared),
                sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(ident[c]) for c in compared),
            )
            if compared
            else sql.SQL("false")
        )
        if update_where is not None:
            guard = sql.SQL(update_where)
        elif versions:
            equal = sql.SQL(" AND ").join(
                sql.SQL("EXCLUDED.{v} IS NOT DISTINCT FROM t.{v}").format(v=ident[v]) for v in versions
            )
            guard = sql.SQL("{newer} OR ({equal} AND {changed})").format(
                newer=newer_sql(versions), equal=equal, changed=changed
            )
        else:
            guard = changed
        conflict = sql.SQL("DO UPDATE SET {} WHERE {}").format(sql.SQL(", ").join(assignments), guard)

    statement = sql.SQL(
        "WITH written AS (INSERT INTO {target} AS t ({cols}) {select} ON CONFLICT ({keys}) {conflict} "
        "RETURNING (xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written"
    ).format(target=target, cols=col_list, select=select, keys=keys, conflict=conflict)
    inserted, updated = conn.execute(statement).fetchone()
    conn.execute(sql.SQL("DROP TABLE {}").format(stage))
    return UpsertResult(staged=staged_rows, inserted=inserted, updated=updated)
