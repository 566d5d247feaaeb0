"""Run bookkeeping, checkpoints, raw landing and dead letters: the writes every asset shares."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pandas as pd
import psycopg
from psycopg import sql

from kingtavo_pipeline.storage.postgres import PostgresStore
from kingtavo_pipeline.storage.upsert import UpsertResult, upsert

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


@contextmanager
def etl_run(store: PostgresStore, *, run_id: str, asset_key: str, partition_key: str | None) -> Iterator[RunCounts]:
    """Record one asset run in ``etl_runs``: 'running' first, then 'success' or 'failed' with the error.

    The row is written in transactions of its own, so a failed load that rolls back still leaves
    the run's failure on record.
    """
    with store.transaction() as conn:
        (row_id,) = conn.execute(
            "INSERT INTO etl_runs (run_id, asset_key, partition_key, status) VALUES (%s, %s, %s, 'running') RETURNING id",
            (run_id, asset_key, partition_key),
        ).fetchone()
    counts = RunCounts()
    try:
        yield counts
    except BaseException as exc:
        if isinstance(exc, GeneratorExit):
            # A generator asset closed at its yield: the IO manager failed to store the output.
            message = "the output was not stored (the IO manager's write failed; see the Dagster run log)"
        else:
            message = f"{type(exc).__name__}: {exc}"[:4000]
        with store.transaction() as conn:
            conn.execute(
                """UPDATE etl_runs SET status = 'failed', finished_at = now(), records_extracted = %s,
                       records_loaded = 0, records_failed = %s, error_message = %s WHERE id = %s""",
                (counts.extracted, counts.failed, message, row_id),
            )
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


# --- raw_data ----------------------------------------------------------------------------------


def land_raw(
    conn: psycopg.Connection,
    raw: pd.DataFrame,
    *,
    source_type: str,
    source_name: str,
    entity: str,
    run_id: str | None,
) -> UpsertResult:
    """Store raw records (columns ``source_id``, ``partition_date``, ``payload`` as JSON text).

    Identical re-extractions are kept once (content hash in the key); a changed record is a new row.
    """
    frame = pd.DataFrame(
        {
            "source_type": source_type,
            "source_name": source_name,
            "entity": entity,
            "source_id": raw["source_id"].astype(str),
            "partition_date": raw["partition_date"],
            "payload": raw["payload"],
            "payload_hash": [payload_hash(p) for p in raw["payload"]],
            "run_id": run_id,
        }
    )
    return upsert(conn, "raw_data", frame, RAW_KEY, version_column=None, on_conflict="ignore")


# --- dead_letters ------------------------------------------------------------------------------


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
    """Store rejects (columns ``source_id``, ``payload``, ``error_type``, ``error_message``).

    The same record failing again bumps ``attempts`` and ``last_seen_at`` instead of adding a row.
    """
    if rejects.empty:
        return 0
    payloads = [as_json_payload(p) for p in rejects["payload"]]
    frame = pd.DataFrame(
        {
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
    )
    frame = frame.drop_duplicates(list(DEAD_LETTER_KEY), keep="last")
    upsert(
        conn,
        "dead_letters",
        frame,
        DEAD_LETTER_KEY,
        version_column=None,
        set_expressions={"attempts": "t.attempts + 1", "last_seen_at": "now()", "status": "'open'"},
    )
    return len(frame)

