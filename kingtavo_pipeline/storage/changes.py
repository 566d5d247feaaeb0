"""Fingerprints of what a check reads, and the verdicts remembered under them (``check_memo``).

A check over data that has not changed since its last evaluation would give the same verdict, so
an unchanged rerun need not read the data again. What "not changed" means, per store:

* PostgreSQL: every statement writing a watched table logs a row in ``table_changes`` from a
  trigger in the writer's transaction (migration 0008), visible exactly when the write commits. A
  table's fingerprint is the count and sum of its log ids.
* ClickHouse: the block numbers a table's active parts cover (every insert or attached part takes
  new ones; a background merge only joins ranges, so it does not count as a change) and the
  mutations run on it.

:func:`remembered` reads the fingerprint before and after evaluating; only when both agree (no
write committed in between, so every query of the evaluation saw the state the fingerprint names)
is the verdict stored. A table that is not watched, or a store that cannot say, gives no
fingerprint, and the check is simply evaluated every time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# A remembered verdict older than this is evaluated again even if nothing changed (checks that
# compare with the clock, e.g. "not in the future", may change their mind with time alone).
MEMO_MAX_AGE = dt.timedelta(hours=6)
# A table's change log is cut back to its newest row past this many rows, so reading a fingerprint
# stays a short index scan however long the pipeline runs.
COMPACT_AFTER = 10_000

TABLE_FINGERPRINT_SQL = """
SELECT t.name, count(c.id), coalesce(sum(c.id), 0),
       EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgname = t.name || '_changes' AND NOT g.tgisinternal)
FROM unnest(%(tables)s::text[]) AS t(name)
LEFT JOIN table_changes c ON c.table_name = t.name
GROUP BY t.name ORDER BY t.name
"""

# Block numbers: every insert (or attached part) takes new ones, a merge only joins neighbouring
# ranges, so the union of the active parts' ranges changes with the data and not with background
# merges. Mutations (ALTER UPDATE/DELETE, lightweight deletes) keep the ranges and are counted apart.
CLICKHOUSE_BLOCKS_SQL = (
    "SELECT table, partition_id, min_block_number, max_block_number FROM system.parts "
    "WHERE database = currentDatabase() AND active AND table IN ({tables}) "
    "ORDER BY table, partition_id, min_block_number"
)
CLICKHOUSE_MUTATIONS_SQL = (
    "SELECT table, count(), max(mutation_id) FROM system.mutations "
    "WHERE database = currentDatabase() AND table IN ({tables}) GROUP BY table"
)


def postgres_fingerprint(store, tables: Iterable[str]) -> str | None:
    """The tables' change log, or None when one of them is not watched (or the log is missing)."""
    names = sorted(set(tables))
    if not names:
        return ""
    if store.fetch_value("SELECT to_regclass('table_changes') IS NOT NULL") is not True:
        return None
    rows = store.fetch_all(TABLE_FINGERPRINT_SQL, {"tables": names})
    if not all(r[3] for r in rows):
        return None
    long = [name for name, count, _, _ in rows if count > COMPACT_AFTER]
    if long:
        compact(store, long)
        return None  # the log just changed under this evaluation: evaluate, remember next time
    return ";".join(f"{name}:{count}:{total}" for name, count, total, _ in rows)


def compact(store, tables: Iterable[str]) -> int:
    """Keep only the newest visible log row of each table. The tables' fingerprints change once
    (their checks are evaluated again once); a write not committed yet keeps its row, which
    counts when it commits."""
    with store.transaction() as conn:
        return conn.execute(
            "DELETE FROM table_changes c WHERE c.table_name = ANY(%(tables)s) AND c.id < "
            "(SELECT max(n.id) FROM table_changes n WHERE n.table_name = c.table_name)",
            {"tables": sorted(set(tables))},
        ).rowcount


def block_ranges(rows: Iterable[tuple[str, str, int, int]]) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """Parts' block ranges per (table, partition), neighbouring ranges joined: what a merge keeps."""
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for table, partition, lo, hi in sorted(rows):
        ranges = out.setdefault((table, partition), [])
        if ranges and lo <= ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], max(hi, ranges[-1][1]))
        else:
            ranges.append((lo, hi))
    return out


def clickhouse_fingerprint(client, tables: Iterable[str]) -> str:
    names = sorted(set(tables))
    if not names:
        return ""
    quoted = ", ".join("'" + n.replace("\\", "\\\\").replace("'", "\\'") + "'" for n in names)
    ranges = block_ranges(client.query(CLICKHOUSE_BLOCKS_SQL.format(tables=quoted)).result_rows)
    mutations = {r[0]: (int(r[1]), str(r[2])) for r in client.query(CLICKHOUSE_MUTATIONS_SQL.format(tables=quoted)).result_rows}
    # a table without parts is empty (or missing): its first rows change this
    return ";".join(
        f"{n}:{sorted((p, r) for (t, p), r in ranges.items() if t == n)}:{mutations.get(n, (0, ''))}" for n in names)


def fingerprint_of(definition: str, parts: Iterable[str | None]) -> str | None:
    """One fingerprint from a check's definition and its stores' fingerprints (None if any is None)."""
    parts = list(parts)
    if any(p is None for p in parts):
        return None
    return hashlib.sha256("\n".join([definition, *parts]).encode()).hexdigest()


def load_memo(store, check_key: str, window_key: str) -> tuple[str, Any, dt.datetime] | None:
    rows = store.fetch_all(
        "SELECT fingerprint, results, evaluated_at FROM check_memo WHERE check_key = %s AND window_key = %s",
        (check_key, window_key),
    )
    return tuple(rows[0]) if rows else None


def save_memo(store, check_key: str, window_key: str, fingerprint: str, results: Any, run_id: str | None) -> None:
    with store.transaction() as conn:
        conn.execute(
            """INSERT INTO check_memo (check_key, window_key, fingerprint, results, evaluated_at, run_id)
               VALUES (%s, %s, %s, %s::jsonb, now(), %s)
               ON CONFLICT (check_key, window_key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
                   results = EXCLUDED.results, evaluated_at = EXCLUDED.evaluated_at, run_id = EXCLUDED.run_id""",
            (check_key, window_key, fingerprint, json.dumps(results, default=str), run_id),
        )


def remembered(
    store,
    check_key: str,
    window_key: str,
    fingerprint: Callable[[], str | None],
    evaluate: Callable[[], Any],
    *,
    encode: Callable[[Any], Any],
    decode: Callable[[Any, dt.datetime], Any],
    run_id: str | None = None,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
) -> tuple[Any, dt.datetime | None]:
    """``evaluate()``'s result, or the one remembered for the same fingerprint.

    Returns ``(result, evaluated_at of the remembered verdict or None when evaluated now)``.
    ``encode``/``decode`` turn the result into JSON and back.
    """
    before = fingerprint()
    if before is not None:
        memo = load_memo(store, check_key, window_key)
        if memo is not None and memo[0] == before and now() - memo[2] < MEMO_MAX_AGE:
            return decode(memo[1], memo[2]), memo[2]
    result = evaluate()
    if before is not None and fingerprint() == before:
        save_memo(store, check_key, window_key, before, encode(result), run_id)
    return result, None


def definition_of(*parts: Any) -> str:
    """A stable text for what defines a check (its dataclass repr, its settings)."""
    return "\n".join(json.dumps(p, sort_keys=True, default=str) if isinstance(p, Mapping) else repr(p) for p in parts)
