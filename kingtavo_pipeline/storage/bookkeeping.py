"""Run bookkeeping, checkpoints, raw landing and dead letters: the writes every asset shares."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from kingtavo_pipeline.storage.postgres import PostgresStore, copy_arrow
from kingtavo_pipeline.storage.upsert import Staged, has_duplicate_keys, upsert

DEAD_LETTER_KEY = ("stage", "source_type", "source_name", "entity", "source_id", "payload_hash")
RAW_KEY = ("source_type", "source_name", "entity", "source_id", "payload_hash")


def payload_hash(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()


# --- etl_runs ----------------------------------------------------------------------------------


@dataclass
class RunCounts:
    extracted: int = 0
    loaded: int = 0
    failed: int = 0
    extra: dict = field(default_factory=dict)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is an interrupt, or was raised while handling one (a query cut short by the
    interrupt fails its clean-up: "can't change 'autocommit' now", a closed cursor...)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "DagsterExecutionInterruptedError":
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def etl_run(store: PostgresStore, *, run_id: str, asset_key: str, partition_key: str | None) -> Iterator[RunCounts]:
    """Record one asset run in ``etl_runs``: 'running' first, then 'success' or 'failed' with the error.

    The row is written in transactions of its own, so a failed load that rolls back still leaves
    the run's failure on record.
    """
    from kingtavo_pipeline.run_health import this_process

    # the writing process, so a row left 'running' by a killed process can be told and closed
    me = this_process()
    with store.transaction() as conn:
        (row_id,) = conn.execute(
            "INSERT INTO etl_runs (run_id, asset_key, partition_key, status, pid, host, pid_start) "
            "VALUES (%s, %s, %s, 'running', %s, %s, %s) RETURNING id",
            (run_id, asset_key, partition_key, me.pid, me.host, me.start),
        ).fetchone()
    counts = RunCounts()
    try:
        yield counts
    except BaseException as exc:
        if isinstance(exc, GeneratorExit):
            # A generator asset closed at its yield: the IO manager failed to store the output.
            message = "the output was not stored (the IO manager's write failed; see the Dagster run log)"
        else:
            from kingtavo_pipeline.storage.errors import describe_error

            # Not str(exc): a database error's text carries the failing row and the statement's
            # parameters (payload data), and a connection error may carry a URL.
            message = describe_error(exc, limit=4000)
            from kingtavo_pipeline.run_health import received_signal

            signal_name = received_signal()
            if signal_name or _interrupted(exc):
                # Dagster's interrupt carries no text of its own, and a step stopped inside a query
                # may die of the broken query rather than of the interrupt
                message += f" (interrupted: {signal_name or 'a termination signal or a cancel request'} stopped the run)"
        with store.transaction() as conn:
            conn.execute(
                """UPDATE etl_runs SET status = 'failed', finished_at = now(), records_extracted = %s,
                       records_loaded = 0, records_failed = %s, error_message = %s WHERE id = %s""",
                (counts.extracted, counts.failed, message, row_id),
            )
        from kingtavo_pipeline.storage.errors import DatabaseError, is_database_error

        if isinstance(exc, Exception) and is_database_error(exc):
            # what Dagster records of the step's failure holds no row values either
            raise DatabaseError(message).with_traceback(exc.__traceback__) from None
        raise
    with store.transaction() as conn:
        conn.execute(
            """UPDATE etl_runs SET status = 'success', finished_at = now(), records_extracted = %s,
                   records_loaded = %s, records_failed = %s WHERE id = %s""",
            (counts.extracted, counts.loaded, counts.failed, row_id),
        )


# --- etl_checkpoints ---------------------------------------------------------------------------


def get_checkpoint(conn: psycopg.Connection, source_type: str, source_name: str, entity: str) -> str | None:
    row = conn.execute(
        "SELECT checkpoint_value FROM etl_checkpoints WHERE source_type = %s AND source_name = %s AND entity = %s",
        (source_type, source_name, entity),
    ).fetchone()
    return row[0] if row else None


def set_checkpoint(
    conn: psycopg.Connection,
    source_type: str,
    source_name: str,
    entity: str,
    value: str,
    records: int,
    *,
    monotonic: bool = False,
) -> None:
    """Move a checkpoint. Call it in the same transaction as the data it covers, so it never runs ahead.

    ``monotonic`` keeps the greater of the stored and the new value (ISO timestamps compare as
    text), so a backfill of old partitions does not pull a high-water mark back.
    """
    new_value = sql.SQL("GREATEST(c.checkpoint_value, EXCLUDED.checkpoint_value)" if monotonic else "EXCLUDED.checkpoint_value")
    conn.execute(
        sql.SQL(
            """INSERT INTO etl_checkpoints AS c (source_type, source_name, entity, checkpoint_value, status,
                                                 last_run_at, last_success_at, total_records_processed)
               VALUES (%s, %s, %s, %s, 'ok', now(), now(), %s)
               ON CONFLICT (source_type, source_name, entity) DO UPDATE SET
                   checkpoint_value = {}, status = 'ok', last_run_at = now(), last_success_at = now(),
                   total_records_processed = c.total_records_processed + EXCLUDED.total_records_processed"""
        ).format(new_value),
        (source_type, source_name, entity, value, records),
    )


def get_source_fingerprint(conn: psycopg.Connection, source_type: str, source_name: str, entity: str) -> str | None:
    row = conn.execute(
        "SELECT source_fingerprint FROM etl_checkpoints WHERE source_type = %s AND source_name = %s AND entity = %s",
        (source_type, source_name, entity),
    ).fetchone()
    return row[0] if row else None


def set_source_fingerprint(conn: psycopg.Connection, source_type: str, source_name: str, entity: str,
                           fingerprint: str | None) -> None:
    """Record what the source looked like when it was landed whole; call it after the last batch
    committed, so a run that failed half-way leaves the source to be read again."""
    conn.execute(
        """INSERT INTO etl_checkpoints AS c (source_type, source_name, entity, status, last_run_at, source_fingerprint)
           VALUES (%s, %s, %s, 'ok', now(), %s)
           ON CONFLICT (source_type, source_name, entity) DO UPDATE
               SET source_fingerprint = EXCLUDED.source_fingerprint, last_run_at = now()""",
        (source_type, source_name, entity, fingerprint),
    )


# --- raw_data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandResult:
    """What landing a batch did: new content, content seen before that is current again, no-ops."""

    staged: int
    inserted: int
    reobserved: int
    partitions: dict  # partition_date -> records newly observed there
    source_ids: list = field(default_factory=list)  # the records newly observed

    @property
    def observed(self) -> int:
        return self.inserted + self.reobserved

    @property
    def unchanged(self) -> int:
        return self.staged - self.observed


# The newest observation of a record is looked up only when the staged content is already stored
# (the conflict's WHERE): content new to the record is always a new observation, so the common
# case -- new records, changed records -- costs no probe at all (a probe per staged row was a
# fifth of the landing). Stored content is re-stamped only when a newer observation of the record
# holds other content (A -> B -> A); equal to the newest, nothing changes.
_LAND_SQL = """
WITH written AS (
    INSERT INTO raw_data AS t (source_type, source_name, entity, source_id, partition_date, payload,
                               payload_hash, run_id, observed_seq)
    SELECT %(source_type)s, %(source_name)s, %(entity)s, s.source_id, s.partition_date, s.payload::jsonb,
           s.payload_hash, %(run_id)s, nextval('raw_observation_seq')
    FROM {stage} s
    ORDER BY s.ord
    ON CONFLICT (source_type, source_name, entity, source_id, payload_hash) DO UPDATE
        SET observed_seq = EXCLUDED.observed_seq, extracted_at = now(), run_id = EXCLUDED.run_id,
            partition_date = EXCLUDED.partition_date
        WHERE t.observed_seq < (
            SELECT max(r.observed_seq) FROM raw_data r
            WHERE r.source_type = t.source_type AND r.source_name = t.source_name AND r.entity = t.entity
              AND r.source_id = t.source_id)
    RETURNING (xmax = 0) AS inserted, partition_date, source_id, observed_seq
), progress AS (
    INSERT INTO raw_partitions AS p (source_type, source_name, partition_date, landed_seq, landed_at, landed_run_id)
    SELECT %(source_type)s, %(source_name)s, partition_date, max(observed_seq), now(), %(run_id)s
    FROM written GROUP BY partition_date
    ON CONFLICT (source_type, source_name, partition_date) DO UPDATE
        SET landed_seq = greatest(p.landed_seq, EXCLUDED.landed_seq), landed_at = now(),
            landed_run_id = EXCLUDED.landed_run_id
)
SELECT partition_date, count(*) FILTER (WHERE inserted), count(*), {ids} FROM written GROUP BY partition_date
"""


def _raw_arrow(raw: pd.DataFrame) -> pa.Table:
    """The staged columns as Arrow, without a Python object per value where the frame allows it."""
    def text(column: pd.Series) -> pa.Array:
        return pa.array(column, pa.string())

    days = raw["partition_date"]
    if pd.api.types.is_datetime64_any_dtype(days.dtype):
        if getattr(days.dtype, "tz", None) is not None:
            days = days.dt.tz_convert("UTC").dt.tz_localize(None)
        partition_date = pc.cast(pc.floor_temporal(pa.array(days), unit="day"), pa.date32())
    else:
        partition_date = pa.array(days, pa.date32())
    payload = text(raw["payload"])
    # a reader may hash content without provenance (a CSV row's file and line)
    hashes = (text(raw["content_hash"]) if "content_hash" in raw
              else pa.array([payload_hash(p) for p in raw["payload"]], pa.string()))
    return pa.table({
        "source_id": text(raw["source_id"].astype(str)),
        "partition_date": partition_date,
        "payload": payload,
        "payload_hash": hashes,
        "ord": pa.array(np.arange(len(raw), dtype="int64")),
    })


# the columns raw records are staged in before land_raw's statement
RAW_STAGE_COLUMNS = "source_id text, partition_date date, payload text, payload_hash text, ord bigint"


def stage_raw(stager, raw: pd.DataFrame) -> Staged:
    """``raw`` (as for :func:`land_raw`) COPYed by a :class:`~kingtavo_pipeline.storage.staging.Stager`
    made with ``definition=RAW_STAGE_COLUMNS, key_columns=["source_id"]``; give the result to land_raw."""
    return stager.stage(_raw_arrow(raw) if not raw.empty else pa.table({"source_id": pa.array([], pa.string())}))


def land_raw(
    conn: psycopg.Connection,
    raw: pd.DataFrame | Staged,
    *,
    source_type: str,
    source_name: str,
    entity: str,
    run_id: str | None,
    source_ids: bool = False,
) -> LandResult:
    """Store raw records (columns ``source_id``, ``partition_date`` -- dates, or timestamps whose
    UTC day is meant --, ``payload`` as JSON text, and optionally ``content_hash``) as observations.

    Each record gets the next ``observed_seq`` when its content differs from its newest
    observation: new content is a new row; content seen before (a value that reverts, A -> B -> A)
    re-stamps its row, which makes it the newest again. Either way the day's ``raw_partitions.landed_seq``
    moves past what core has taken, which queues it for core. Content equal to the newest observation changes nothing. Within one batch the last
    row of a record is its observation (file order). Landers of one source take turns, so two runs
    cannot both decide they hold the newest observation. ``source_ids=True`` also returns the ids
    of the records newly observed (``LandResult.source_ids``; else it stays empty).
    """
    if isinstance(raw, Staged):  # staged by a Stager with RAW_STAGE_COLUMNS (see stage_raw)
        if raw.rows == 0:
            conn.execute(sql.SQL("DROP TABLE {}").format(raw.table))
            return LandResult(0, 0, 0, {})
        stage, staged_rows, duplicates = raw.table, raw.rows, raw.duplicate_keys
    else:
        if raw.empty:
            return LandResult(0, 0, 0, {})
        frame = _raw_arrow(raw)
        stage = sql.Identifier(f"_land_{uuid.uuid4().hex[:12]}")
        staged_rows, duplicates = frame.num_rows, has_duplicate_keys(frame, ["source_id"])
        conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(stage, sql.SQL(RAW_STAGE_COLUMNS)))
        copy_arrow(conn, stage, frame)
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                 (f"kingtavo_raw:{source_type}:{source_name}:{entity}",))
    if duplicates:
        # the last row of a record in the batch is what we observe now
        conn.execute(
            sql.SQL("DELETE FROM {s} a USING {s} b WHERE a.source_id = b.source_id AND a.ord < b.ord").format(s=stage)
        )
    conn.execute("SET LOCAL work_mem = '64MB'")  # the batch sorts in memory
    rows = conn.execute(
        sql.SQL(_LAND_SQL).format(stage=stage, ids=sql.SQL("array_agg(source_id)" if source_ids else "NULL::text[]")),
        {"source_type": source_type, "source_name": source_name, "entity": entity, "run_id": run_id},
    ).fetchall()
    conn.execute(sql.SQL("DROP TABLE {}").format(stage))
    inserted = sum(r[1] for r in rows)
    observed = sum(r[2] for r in rows)
    return LandResult(staged_rows, inserted, observed - inserted, {day: n for day, _, n, _ in rows},
                      [i for r in rows for i in (r[3] or ())])


def unprocessed_partitions(conn: psycopg.Connection, after_seq: int = 0) -> list[tuple[date, int, int, int, list[str]]]:
    """Days holding landed observations no core run has taken yet (``landed_seq > taken_seq``):
    ``(partition_date, records, lowest untaken seq, newest landed seq, landing run ids)``."""
    return conn.execute(
        """SELECT p.partition_date,
                  sum((SELECT count(*) FROM raw_data r
                       WHERE r.source_type = p.source_type AND r.source_name = p.source_name
                         AND r.partition_date = p.partition_date AND r.observed_seq > p.taken_seq)),
                  min(p.taken_seq) + 1, max(p.landed_seq), array_agg(DISTINCT coalesce(p.landed_run_id, ''))
           FROM raw_partitions p
           WHERE p.landed_seq > p.taken_seq AND p.landed_seq > %s
           GROUP BY p.partition_date ORDER BY p.partition_date""",
        (after_seq,),
    ).fetchall()


def requeue(conn: psycopg.Connection, source_type: str, source_name: str,
            start: date | None = None, end: date | None = None) -> int:
    """Let core take a source's days again (all of them, or ``[start, end)``); returns the days."""
    window = "AND partition_date >= %s AND partition_date < %s" if start is not None else ""
    cursor = conn.execute(
        f"UPDATE raw_partitions SET taken_seq = 0 WHERE source_type = %s AND source_name = %s AND taken_seq > 0 {window}",
        (source_type, source_name, *((start, end) if start is not None else ())),
    )
    return cursor.rowcount


# --- dead_letters ------------------------------------------------------------------------------

DEAD_LETTER_STATUSES = ("open", "retrying", "resolved", "ignored")


def as_json_payload(payload: object) -> str | None:
    """Dead letters keep whatever came in: a JSON object as is, anything else as a JSON string."""
    if payload is None:
        return None
    if isinstance(payload, str):
        try:
            json.loads(payload)
            return payload
        except ValueError:
            return json.dumps(payload)
    return json.dumps(payload, default=str)


def record_dead_letters(
    conn: psycopg.Connection,
    rejects: pd.DataFrame,
    *,
    stage: str,
    source_type: str,
    source_name: str,
    entity: str,
    run_id: str | None,
) -> int:
    """Store rejects (columns ``source_id``, ``payload``, ``error_type``, ``error_message``; optional
    ``raw_data_id``, ``partition_date``). Returns the number of failures that are new.

    One row per distinct failure (stage, record, content): the same bad record read again by
    another partition run is the failure already on record and changes nothing. It counts again
    only when it had been retried (``retrying`` -> ``open``; the retry counted the attempt) or
    resolved (the bad content came back); an ``ignored`` one stays ignored.
    """
    if rejects.empty:
        return 0
    payloads = [as_json_payload(p) for p in rejects["payload"]]
    columns = {
        "stage": stage,
        "source_type": source_type,
        "source_name": source_name,
        "entity": entity,
        "source_id": rejects["source_id"].fillna("").astype(str).to_numpy(),
        "payload": payloads,
        "payload_hash": [payload_hash(p or "") for p in payloads],
        "error_type": rejects["error_type"].astype(str).to_numpy(),
        "error_message": rejects["error_message"].astype(str).to_numpy(),
        "run_id": run_id,
    }
    if "raw_data_id" in rejects:
        columns["raw_data_id"] = pd.array(rejects["raw_data_id"], dtype="Int64")
    if "partition_date" in rejects:
        columns["partition_date"] = rejects["partition_date"].to_numpy()
    frame = pd.DataFrame(columns).drop_duplicates(list(DEAD_LETTER_KEY), keep="last")
    result = upsert(
        conn,
        "dead_letters",
        frame,
        DEAD_LETTER_KEY,
        version_column=None,
        set_expressions={
            "last_seen_at": "now()",
            "status": "'open'",
            "resolved_at": "NULL",
            "resolution": "NULL",
        },
        update_where="t.status IN ('retrying', 'resolved')",
    )
    return result.inserted + result.updated


def resolve_landed_dead_letters(
    conn: psycopg.Connection, *, stage: str, source_type: str, source_name: str, entity: str,
    source_ids: list[str], run_id: str | None,
) -> int:
    """Resolve open dead letters of records that a later run has now landed (new observations only)."""
    if not source_ids:
        return 0
    cursor = conn.execute(
        """UPDATE dead_letters SET status = 'resolved', resolved_at = now(),
                  resolution = 'landed by run ' || coalesce(%s, '?')
           WHERE stage = %s AND status IN ('open', 'retrying') AND source_type = %s AND source_name = %s
             AND entity = %s AND source_id = ANY(%s) AND last_seen_at < now()""",
        (run_id, stage, source_type, source_name, entity, source_ids),
    )
    return cursor.rowcount


def resolve_mapped_dead_letters(conn: psycopg.Connection, raw_data_ids: list[int], run_id: str | None) -> int:
    """Resolve open map-stage dead letters of records whose failed observation, or a newer one, now mapped."""
    if not raw_data_ids:
        return 0
    cursor = conn.execute(
        """UPDATE dead_letters d SET status = 'resolved', resolved_at = now(),
                  resolution = 'newer observation mapped by run ' || coalesce(%s, '?')
           FROM raw_data v, raw_data r
           WHERE v.id = ANY(%s) AND d.stage = 'map' AND d.status IN ('open', 'retrying')
             AND d.source_type = v.source_type AND d.source_name = v.source_name AND d.entity = v.entity
             AND d.source_id = v.source_id AND r.id = d.raw_data_id AND r.observed_seq <= v.observed_seq""",
        (run_id, raw_data_ids),
    )
    return cursor.rowcount


# --- the dead-letter life cycle (kingtavo dead-letters) ----------------------------------------

DEAD_LETTER_FIELDS = ("id", "stage", "source_type", "source_name", "source_id", "error_type", "error_message",
                      "attempts", "status", "first_seen_at", "last_seen_at", "partition_date", "resolution")


def _dead_letter_filter(ids: list[int] | None, status: str | None, source: str | None, stage: str | None):
    conditions, params = [], []
    if ids:
        conditions.append("id = ANY(%s)")
        params.append(list(ids))
    if status:
        conditions.append("status = %s")
        params.append(status)
    if source:
        conditions.append("source_name = %s")
        params.append(source)
    if stage:
        conditions.append("stage = %s")
        params.append(stage)
    return sql.SQL(" AND ").join(sql.SQL(c) for c in conditions) if conditions else sql.SQL("true"), params


def list_dead_letters(conn: psycopg.Connection, *, ids: list[int] | None = None, status: str | None = "open",
                      source: str | None = None, stage: str | None = None, limit: int = 50) -> list[dict]:
    where, params = _dead_letter_filter(ids, status, source, stage)
    cursor = conn.execute(
        sql.SQL("SELECT {} FROM dead_letters WHERE {} ORDER BY last_seen_at DESC, id DESC LIMIT %s").format(
            sql.SQL(", ").join(sql.Identifier(f) for f in DEAD_LETTER_FIELDS), where),
        [*params, limit],
    )
    return [dict(zip(DEAD_LETTER_FIELDS, row)) for row in cursor]


def mark_for_retry(conn: psycopg.Connection, *, ids: list[int] | None = None, source: str | None = None,
                   stage: str | None = None) -> list[tuple[int, str, str, str]]:
    """Open dead letters -> ``retrying`` (one more attempt). A map-stage record's day is queued for
    core again from just before its observation; an extract-stage record needs its source read
    again. Returns ``(id, stage, source_type, source_name)`` of the letters marked."""
    where, params = _dead_letter_filter(ids, None, source, stage)
    rows = conn.execute(
        sql.SQL("""UPDATE dead_letters SET status = 'retrying', attempts = attempts + 1, resolved_at = NULL,
                          resolution = NULL
                   WHERE status = 'open' AND {} RETURNING id, stage, source_type, source_name, raw_data_id""").format(where),
        params,
    ).fetchall()
    raw_ids = [r[4] for r in rows if r[1] == "map" and r[4] is not None]
    if raw_ids:
        # core takes the observation's day again from just before it
        conn.execute(
            """UPDATE raw_partitions p SET taken_seq = least(p.taken_seq, r.observed_seq - 1)
               FROM raw_data r WHERE r.id = ANY(%s) AND p.source_type = r.source_type
                 AND p.source_name = r.source_name AND p.partition_date = r.partition_date""",
            (raw_ids,),
        )
    return [r[:4] for r in rows]


def close_dead_letters(conn: psycopg.Connection, *, ids: list[int] | None = None, source: str | None = None,
                       stage: str | None = None, status: str = "resolved", note: str = "") -> int:
    """Mark open or retrying dead letters ``resolved`` (fixed by hand) or ``ignored`` (never to be loaded)."""
    if status not in ("resolved", "ignored"):
        raise ValueError(f"status must be 'resolved' or 'ignored', not {status!r}")
    where, params = _dead_letter_filter(ids, None, source, stage)
    cursor = conn.execute(
        sql.SQL("""UPDATE dead_letters SET status = %s, resolved_at = now(), resolution = %s
                   WHERE status IN ('open', 'retrying') AND {}""").format(where),
        [status, note or f"{status} by hand", *params],
    )
    return cursor.rowcount
