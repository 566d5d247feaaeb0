"""The mapping reads payloads decoded by PostgreSQL (core's path) exactly as it reads them decoded
in Python: the same valid rows and the same rejects, on the packaged samples and on edge cases."""

from __future__ import annotations

import json

import pandas as pd
from psycopg import sql

from kingtavo_pipeline.defs.ingest.assets import configured_sources
from kingtavo_pipeline.sources import iter_raw_batches, read_feed
from kingtavo_pipeline.transform.unified import extraction_sql, map_to_unified, rename_extracted

EDGE_PAYLOADS = [
    {"id": "1", "name": "plain", "total": "19,90", "qty": "2", "extra": {"nested": [1, 2]}},
    {"id": "2", "name": None, "total": 5, "qty": 1.0},  # JSON null title, numbers as numbers
    {"id": "3", "name": "unicode ✓ \"quoted\"", "total": "n/a"},
    [1, 2, 3],  # not an object
    "just text",
]
EDGE_FIELDS = {"external_id": "id", "title": "name", "amount": "total", "quantity": "qty"}


def _both_ways(store, raw: pd.DataFrame, fields: dict) -> tuple:
    """Map ``raw`` (payload JSON text) in Python, and again from what SQL extracts of it as jsonb."""
    in_python = map_to_unified(raw, fields)
    items, params = extraction_sql(fields)
    select = sql.SQL("SELECT ord, " + items.replace("%s", "{}") + " FROM (SELECT ord, p::jsonb AS payload "
                     "FROM unnest(%s::text[]) WITH ORDINALITY AS t(p, ord)) s ORDER BY ord").format(
        *(sql.Literal(p) for p in params))
    with store.transaction() as conn:
        cursor = conn.execute(select, (raw["payload"].tolist(),))
        extracted = pd.DataFrame(cursor.fetchall(), columns=[d.name for d in cursor.description])
    extracted = rename_extracted(extracted.drop(columns="ord"), fields)
    in_sql = map_to_unified(pd.concat([raw.drop(columns="payload"), extracted], axis=1), fields)
    return in_python, in_sql


def _comparable(result) -> tuple:
    valid = result.valid.drop(columns="metadata").astype(str).values.tolist()
    metadata = [json.loads(m) for m in result.valid["metadata"]]
    rejects = result.rejects[["source_id", "error_type", "error_message"]].values.tolist()
    return valid, metadata, rejects


def _raw(payloads: list, source_name: str = "edge") -> pd.DataFrame:
    n = len(payloads)
    return pd.DataFrame({
        "source_type": "csv", "source_name": source_name, "source_id": [f"s{i}" for i in range(n)],
        "raw_data_id": range(1, n + 1), "partition_date": pd.Timestamp("2024-11-01").date(),
        "payload": [p if isinstance(p, str) and p.startswith("{") else json.dumps(p, ensure_ascii=False)
                    for p in payloads],
        "observed_seq": range(1, n + 1),
    })


def test_edge_payloads_map_the_same_from_sql(store):
    in_python, in_sql = _both_ways(store, _raw(EDGE_PAYLOADS), EDGE_FIELDS)
    assert _comparable(in_sql) == _comparable(in_python)
    assert len(in_python.valid) == 1 and len(in_python.rejects) == 4
    assert set(in_python.rejects["error_type"]) == {"missing_required", "invalid_type", "malformed_payload"}


def test_packaged_samples_map_the_same_from_sql(store):
    sources = configured_sources()
    for source in sources.all():
        frames = list(iter_raw_batches(source)) if source.source_type == "csv" else [read_feed(source)]
        frame = pd.concat(frames, ignore_index=True)
        raw = _raw(frame["payload"].tolist(), source.name)
        in_python, in_sql = _both_ways(store, raw, source.field_map)
        assert _comparable(in_sql) == _comparable(in_python), source.name
        assert len(in_python.valid) > 0
