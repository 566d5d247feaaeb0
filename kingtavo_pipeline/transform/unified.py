"""The unified item schema (Kasparro requirements) and the vectorised raw -> unified mapping.

Pure pandas: no Dagster, no database. One call maps one batch of raw rows; every row ends up either
in ``valid`` (one row per item, deduplicated) or in ``rejects`` (one row per bad record, all its
problems listed).

The fields are evaluated by the mapping engine (:mod:`kingtavo_pipeline.mapping`): a source's
``fields`` become engine field specs (:func:`unified_field_specs`) and run through the same column
converters, validators and transforms as the API mappings. What stays here is what is particular to
the unified table: flat payload keys (CSV headers may hold any character, so they are not dotted
paths), their extraction in SQL (:func:`extraction_sql`), ``metadata`` (the unmapped keys), the
message wording, and the newest-version deduplication.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from kingtavo_pipeline.mapping.columns import parse_amounts, parse_timestamps  # noqa: F401 - public here too
from kingtavo_pipeline.mapping.engine import evaluate
from kingtavo_pipeline.mapping.extract import decode_json
from kingtavo_pipeline.mapping.spec import FieldSpec as EngineFieldSpec
from kingtavo_pipeline.mapping.spec import TransformCall

FieldKind = Literal["text", "url", "amount", "quantity", "timestamp"]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: FieldKind
    required: bool = False


# Order is the column order of the unified table.
UNIFIED_FIELDS: Mapping[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec("external_id", "text", required=True),
        FieldSpec("title", "text", required=True),
        FieldSpec("description", "text"),
        FieldSpec("category", "text"),
        FieldSpec("url", "url"),
        FieldSpec("amount", "amount"),
        FieldSpec("quantity", "quantity"),
        FieldSpec("published_at", "timestamp"),
        # the source's own modification time: when mapped, it decides which version is newer
        FieldSpec("updated_at", "timestamp"),
    )
}

RAW_INPUT_COLUMNS = ("source_type", "source_name", "source_id", "raw_data_id", "partition_date", "payload")
# Optional raw columns: the observation order and time (raw_data.observed_seq / extracted_at).
OBSERVATION_COLUMNS = ("observed_seq", "extracted_at")

VALID_COLUMNS = (
    "source_type",
    "source_name",
    "external_id",
    "title",
    "description",
    "category",
    "url",
    "amount",
    "quantity",
    "metadata",
    "published_at",
    "partition_date",
    "raw_data_id",
    "updated_at",
    "source_updated_at",
    "observed_seq",
    "source_id",
)
# Raise when the mapping's rules change (parsing, validation): core then maps every record again.
MAPPING_VERSION = 1
# The version of a row, compared left to right (NULL oldest): never a business date.
VERSION_COLUMNS = ("source_updated_at", "observed_seq")
REJECT_COLUMNS = ("source_id", "raw_data_id", "partition_date", "payload", "error_type", "error_message")

# Lower rank wins when a record has several problems of different kinds.
ERROR_TYPES = ("malformed_payload", "missing_required", "invalid_type", "invalid_value")
_RANK = {name: rank for rank, name in enumerate(ERROR_TYPES)}

TS_DTYPE = "datetime64[us, UTC]"
# One encoder for all rows: json.dumps(**options) would build a new one per call.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


@dataclass
class MappingResult:
    valid: pd.DataFrame
    rejects: pd.DataFrame


# --------------------------------------------------------------------------------------- helpers


def _as_string(values: pd.Series) -> pd.Series:
    """Any JSON scalars -> pandas ``string``, stripped; None/NaN/"" -> <NA>."""
    obj = pd.Series(values, copy=False).astype(object)
    text = obj.where(obj.notna(), None).astype("string").str.strip()
    return text.mask(text == "")


def _clean_text(values: pd.Series) -> pd.Series:
    """Like :func:`_as_string` but object dtype with ``None`` for missing (what DB drivers expect)."""
    text = _as_string(values)
    return text.astype(object).where(text.notna(), None)


def _empty_valid() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_type": pd.Series(dtype=object),
            "source_name": pd.Series(dtype=object),
            "external_id": pd.Series(dtype=object),
            "title": pd.Series(dtype=object),
            "description": pd.Series(dtype=object),
            "category": pd.Series(dtype=object),
            "url": pd.Series(dtype=object),
            "amount": pd.Series(dtype="float64"),
            "quantity": pd.Series(dtype="Int64"),
            "metadata": pd.Series(dtype=object),
            "published_at": pd.Series(dtype=TS_DTYPE),
            "partition_date": pd.Series(dtype=object),
            "raw_data_id": pd.Series(dtype="int64"),
            "updated_at": pd.Series(dtype=TS_DTYPE),
            "source_updated_at": pd.Series(dtype=TS_DTYPE),
            "observed_seq": pd.Series(dtype="int64"),
            "source_id": pd.Series(dtype=object),
        }
    )


def _empty_rejects() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_id": pd.Series(dtype=object),
            "raw_data_id": pd.Series(dtype="int64"),
            "partition_date": pd.Series(dtype=object),
            "payload": pd.Series(dtype=object),
            "error_type": pd.Series(dtype=object),
            "error_message": pd.Series(dtype=object),
        }
    )


def _partition_dates(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """-> (python ``date`` objects, midnight UTC timestamps)."""
    ts = pd.to_datetime(values, errors="coerce")
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    ts = ts.dt.normalize()
    dates = pd.Series(ts.dt.date, index=values.index, dtype=object).where(ts.notna(), None)
    return dates, ts.dt.tz_localize("UTC").astype(TS_DTYPE)


# ------------------------------------------------------------------------ payloads, decoded once
#
# The mapping works on columns: one per mapped payload key (``key:<name>``, text or JSON scalars),
# the unmapped rest as JSON text (``metadata``), and why a payload could not be read
# (``payload_error``, None when it is a JSON object). A database can hand that shape over directly
# (core extracts it from jsonb in SQL, see :func:`extraction_sql`); otherwise the payload text is
# decoded here.

KEY_PREFIX = "key:"
METADATA_COLUMN = "metadata"
PAYLOAD_ERROR_COLUMN = "payload_error"


def is_extracted(raw: pd.DataFrame, fields: Mapping[str, str]) -> bool:
    needed = [METADATA_COLUMN, PAYLOAD_ERROR_COLUMN, *(KEY_PREFIX + k for k in fields.values())]
    return all(c in raw.columns for c in needed)


def decode_payloads(payloads: pd.Series, fields: Mapping[str, str]) -> pd.DataFrame:
    """JSON payload text -> the extracted shape (the mapping engine's bulk decode: orjson per row)."""
    index = payloads.index
    docs, errors = decode_json(payloads.tolist())
    dicts = [d if d is not None else {} for d in docs]
    mapped_keys = list(dict.fromkeys(fields.values()))
    cols = pd.DataFrame.from_records(dicts, columns=mapped_keys, index=index) if mapped_keys else pd.DataFrame(index=index)
    mapped_set = set(mapped_keys)
    out = {KEY_PREFIX + k: cols[k] for k in mapped_keys}
    out[METADATA_COLUMN] = pd.Series(
        [_dumps({k: v for k, v in d.items() if k not in mapped_set}) for d in dicts], index=index, dtype=object
    )
    out[PAYLOAD_ERROR_COLUMN] = pd.Series(errors, index=index, dtype=object)
    return pd.DataFrame(out, index=index)


def extraction_sql(fields: Mapping[str, str], payload: str = "payload") -> tuple[str, list[str]]:
    """SQL select items that extract the shape from a ``jsonb`` column, and their parameters.

    The database does the decoding, so no payload is parsed in Python: ``->>`` gives a key's text
    (JSON null -> NULL), ``-`` drops the mapped keys for ``metadata``.
    """
    keys = list(dict.fromkeys(fields.values()))
    items = [
        f"CASE WHEN jsonb_typeof({payload}) = 'object' THEN NULL "
        f"ELSE 'payload: not a JSON object (got ' || jsonb_typeof({payload}) || ')' END AS {PAYLOAD_ERROR_COLUMN}",
        f"CASE WHEN jsonb_typeof({payload}) = 'object' THEN ({payload} - %s::text[])::text END AS {METADATA_COLUMN}",
    ]
    params: list = [keys]
    for i, key in enumerate(keys):
        items.append(f'{payload} ->> %s AS "{KEY_PREFIX}{i}"')
        params.append(key)
    return ", ".join(items), params


def rename_extracted(frame: pd.DataFrame, fields: Mapping[str, str]) -> pd.DataFrame:
    """Columns named by :func:`extraction_sql` (by position, so keys need no quoting) -> ``key:<name>``."""
    keys = list(dict.fromkeys(fields.values()))
    return frame.rename(columns={f"{KEY_PREFIX}{i}": KEY_PREFIX + key for i, key in enumerate(keys)})


# ------------------------------------------------------------------------------------ the mapping

# Unified kinds -> the engine's types (the engine's "number" is parse_amounts' float64).
_ENGINE_TYPES = {"text": "text", "url": "url", "amount": "number", "quantity": "integer", "timestamp": "timestamp"}


def unified_field_specs(
    fields: Mapping[str, str], *, dayfirst: bool = False, date_format: str | None = None
) -> dict[str, EngineFieldSpec]:
    """A source's ``fields`` (unified field -> payload key) as mapping-engine field specs.

    Inputs are payload keys (flat, so any header text works) and ``@source_id``; ``external_id``
    falls back to the raw record's id.
    """
    specs = {}
    for name, spec in UNIFIED_FIELDS.items():
        options: dict[str, Any] = {"type": _ENGINE_TYPES[spec.kind], "required": spec.required}
        if spec.kind == "quantity":
            options["min"] = 0
        if spec.kind == "timestamp":
            options.update(dayfirst=dayfirst, format=date_format)
        key = fields.get(name)
        if name == "external_id":
            inputs = [key, "@source_id"] if key is not None else ["@source_id"]
            specs[name] = EngineFieldSpec.model_construct(paths=inputs, **_defaults({**options, "transform": _FIRST_NON_NULL}))
        elif key is None:
            specs[name] = EngineFieldSpec.model_construct(const=None, **_defaults(options))
        else:
            specs[name] = EngineFieldSpec.model_construct(path=key, **_defaults(options))
    return specs


def _defaults(options: dict[str, Any]) -> dict[str, Any]:
    # model_construct skips validation (payload keys are not dotted paths), so defaults come from the model
    base = {k: f.get_default(call_default_factory=True) for k, f in EngineFieldSpec.model_fields.items() if k not in ("path", "paths", "const")}
    return {**base, **options}


_FIRST_NON_NULL = [TransformCall(name="first_non_null")]


def map_to_unified(
    raw: pd.DataFrame,
    fields: Mapping[str, str],
    *,
    dayfirst: bool = False,
    date_format: str | None = None,
) -> MappingResult:
    """Map a batch of raw rows to the unified schema.

    ``raw`` holds the payload as JSON text, or already decoded (see :func:`extraction_sql`), in which
    case ``payload`` may be left out and rejects carry ``None`` for it.
    ``fields`` maps unified field -> payload key. ``dayfirst``/``date_format`` apply to
    ``published_at`` (pass the CSV source's settings so dates parse as they did for partitioning).
    Optional text columns hold ``None`` when absent; ``amount`` NaN; ``quantity`` <NA>.
    """
    required = [c for c in RAW_INPUT_COLUMNS if not (c == "payload" and is_extracted(raw, fields))]
    missing_cols = [c for c in required if c not in raw.columns]
    if missing_cols:
        raise ValueError(f"raw frame lacks columns {missing_cols}; expected {list(RAW_INPUT_COLUMNS)}")
    unknown = sorted(set(fields) - set(UNIFIED_FIELDS))
    if unknown:
        raise ValueError(f"unknown unified field(s) {unknown}; known: {list(UNIFIED_FIELDS)}")
    if raw.empty:
        return MappingResult(_empty_valid(), _empty_rejects())

    raw = raw.reset_index(drop=True)
    index = raw.index
    if not is_extracted(raw, fields):
        raw = pd.concat([raw, decode_payloads(raw["payload"], fields)], axis=1)
    payload_error = raw[PAYLOAD_ERROR_COLUMN].astype(object)
    malformed = payload_error.notna()
    cols = {key: raw[KEY_PREFIX + key] for key in dict.fromkeys(fields.values())}
    metadata = raw[METADATA_COLUMN].astype(object).where(~malformed, "{}")
    payloads = raw["payload"].astype(object) if "payload" in raw else pd.Series(None, index=index, dtype=object)

    def _input(ref: str) -> pd.Series:
        return raw["source_id"] if ref == "@source_id" else cols[ref]

    problems: list[tuple[pd.Index, str, pd.Series]] = []  # (rows, error_type, message per row)

    def problem(mask: pd.Series, error_type: str, messages: pd.Series | str) -> None:
        # Malformed payloads get their own single message, not a cascade of "missing" ones.
        rows = index[mask.fillna(False).astype(bool) & ~malformed]
        if len(rows):
            if isinstance(messages, str) or not hasattr(messages, "loc"):
                messages = pd.Series(messages, index=rows, dtype=object)
            problems.append((rows, error_type, messages.loc[rows].astype(object)))

    specs = unified_field_specs(fields, dayfirst=dayfirst, date_format=date_format)
    out: dict[str, pd.Series] = {}
    for name, spec in UNIFIED_FIELDS.items():
        inputs = [_input(ref) for ref in specs[name].inputs] or [pd.Series(None, index=index, dtype=object)]
        if spec.kind == "timestamp":
            inputs = [_clean_text(values) for values in inputs]  # digits are text here, never epoch seconds
        result = evaluate(specs[name], inputs)
        where = f" (payload key {fields[name]!r})" if name in fields else " (not mapped)"
        for p in result.problems:
            suffix = where if p.error_type == "missing_required" else ""
            mask = pd.Series(p.mask, index=index)
            reasons = p.reasons if isinstance(p.reasons, str) else pd.Series(p.reasons, index=index[p.mask], dtype=object)
            problem(mask, p.error_type, f"{name}: " + reasons + suffix)
        values = result.values.set_axis(index)
        if spec.kind in ("text", "url"):
            values = values.astype(object).where(values.notna(), None)
        out[name] = values

    # ---- combine problems: one reject row per record, most serious type, all messages in field order.
    rank = pd.Series(np.where(malformed, _RANK["malformed_payload"], len(ERROR_TYPES)), index=index)
    messages = payload_error.fillna("").astype(object)
    for rows, error_type, msgs in problems:
        rank.loc[rows] = np.minimum(rank.loc[rows], _RANK[error_type])
        current = messages.loc[rows]
        messages.loc[rows] = (current + "; ").where(current != "", "") + msgs
    rejected = rank < len(ERROR_TYPES)

    rejects = _empty_rejects()
    if rejected.any():
        rejects = pd.DataFrame(
            {
                "source_id": raw.loc[rejected, "source_id"].astype(object).where(raw.loc[rejected, "source_id"].notna(), ""),
                "raw_data_id": raw.loc[rejected, "raw_data_id"].astype("int64"),
                "partition_date": raw.loc[rejected, "partition_date"].astype(object),
                "payload": payloads[rejected],
                "error_type": rank[rejected].map(dict(enumerate(ERROR_TYPES))).astype(object),
                "error_message": messages[rejected].astype(object),
            }
        ).reset_index(drop=True)

    ok = ~rejected
    if not ok.any():
        return MappingResult(_empty_valid(), rejects)

    partition_date, partition_ts = _partition_dates(raw["partition_date"])
    # Observation order: raw_data.observed_seq, else the batch order (the caller's read order).
    if "observed_seq" in raw:
        observed_seq = raw["observed_seq"].astype("int64")
    else:
        observed_seq = pd.Series(np.arange(len(raw), dtype="int64"), index=index)
    if "extracted_at" in raw:
        observed_at = pd.to_datetime(raw["extracted_at"], utc=True).astype(TS_DTYPE)
    else:
        observed_at = partition_ts
    source_updated = out["updated_at"]
    valid = pd.DataFrame(
        {
            "source_type": raw["source_type"].astype(object),
            "source_name": raw["source_name"].astype(object),
            **{name: out[name] for name in UNIFIED_FIELDS if name not in ("published_at", "updated_at")},
            "metadata": metadata,
            "published_at": out["published_at"],
            "partition_date": partition_date,
            "raw_data_id": raw["raw_data_id"].astype("int64"),
            # when the record last changed, as far as we know: the source's word, else when we saw it
            "updated_at": source_updated.where(source_updated.notna(), observed_at).astype(TS_DTYPE),
            "source_updated_at": source_updated.astype(TS_DTYPE),
            "observed_seq": observed_seq,
            "source_id": raw["source_id"].astype(object),
        },
        index=index,
    )[list(VALID_COLUMNS)][ok]

    # The newest version of an item wins (NaT sorts first, so it never beats a real time).
    valid = (
        valid.sort_values(list(VERSION_COLUMNS), na_position="first", kind="stable")
        .drop_duplicates(subset=["source_type", "source_name", "external_id"], keep="last")
        .sort_values("raw_data_id", kind="stable")
        .reset_index(drop=True)
    )
    return MappingResult(valid, rejects)
