"""Run a mapping over a batch of raw rows: decode, extract, then evaluate every field as a column.

Input: raw rows (pandas DataFrame or Arrow table) with ``payload`` (JSON text, as
``raw_data.payload::text``), ``raw_data_id``, ``source_id`` and optionally ``merchant_id``,
``partition_date``, ``observed_seq``, ``source_type``, ``source_name``. Output: one DataFrame per
target (the mapped columns, then the raw row's bookkeeping, with the raw ``source_id`` as
``raw_source_id``) and one reject row per failed record. A record with any problem in any target is
rejected whole: none of its rows are output, so an order never lands without one of its lines.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from kingtavo_pipeline.mapping.columns import (
    CONVERTERS,
    ArrowColumn,
    OUTPUT_DTYPES,
    Problem,
    arrow_text,
    enum_map,
    fill_default,
    is_null,
    to_arrow,
)
from kingtavo_pipeline.mapping.extract import BatchExtractor, Expand, Leaf, column_name, zone_column_name
from kingtavo_pipeline.mapping.fast import fast_extractor
from kingtavo_pipeline.mapping.spec import FieldSpec, MappingSpec
from kingtavo_pipeline.mapping.transforms import REGISTRY, first_input_complete

# Raise when the engine maps the same file to other results (a fix in a transform or a conversion):
# core's entity step then maps every record of each API source again. 2: concat/join kept rows
# whose inputs were all missing (before, later rows of the batch took the next record's value).
ENGINE_VERSION = 2
# Lower rank wins when a record has several problems of different kinds.
ERROR_TYPES = ("malformed_payload", "missing_required", "invalid_type", "invalid_value")
RANK = {name: rank for rank, name in enumerate(ERROR_TYPES)}
REJECT_COLUMNS = ("source_id", "raw_data_id", "partition_date", "payload", "error_type", "error_message", "merchant_id")
# Raw columns carried onto every output row (``source_id`` of the raw row as ``raw_source_id``).
BOOKKEEPING = ("source_type", "source_name", "merchant_id", "raw_data_id", "raw_source_id", "partition_date", "observed_seq")


# --------------------------------------------------------------------------- one field, one column


@dataclass
class Evaluated:
    values: pd.Series
    problems: list[Problem]


def evaluate(spec: FieldSpec, inputs: Sequence[Any], *, zones: Any = None, timezone: str = "UTC",
             memo: dict | None = None) -> Evaluated:
    """Evaluate one field over a column: ``inputs`` holds one sequence of raw values per input of
    ``spec`` (a single one for ``path``; ``const`` needs one of the right length, e.g. ``[None] * n``).

    Order: transforms, enum map, default, type conversion, required check. Problems carry reasons
    only ("'abc' is not a number"); the caller names the field. ``memo`` (a dict kept for one batch)
    lets fields converting the very same input column the same way share one conversion.
    """
    values: Any = inputs[0]
    if spec.is_const:
        values = _const_column(spec.const, len(inputs[0])) if not spec.transform else [spec.const] * len(inputs[0])
    if spec.transform:
        columns = list(inputs)
        for call in spec.transform:
            columns = [REGISTRY[call.name].fn(columns, **call.params)]
        values = columns[0]
    problems: list[Problem] = []
    if spec.enum is not None:
        values, problem = enum_map(values, spec.enum.map, default=spec.enum.default, case_insensitive=spec.enum.case_insensitive)
        if problem is not None:
            problems.append(problem)
    if spec.default is not None:
        values = fill_default(values, spec.default)
    options: dict[str, Any] = {}
    if spec.type == "timestamp":
        options = {"zones": zones, "timezone": spec.timezone or timezone, "dayfirst": spec.dayfirst,
                   "format": spec.format, "unit": spec.unit}
    elif spec.type == "integer":
        options = {"min": spec.min}
    key = None
    if memo is not None and values is inputs[0] and not spec.is_const:  # the raw input, unchanged
        key = (id(values), id(zones), spec.type, tuple((k, v) for k, v in options.items() if k != "zones"))
    hit = memo.get(key) if key is not None else None
    if hit is not None:
        converted = hit[2]
    else:
        converted = CONVERTERS[spec.type](values, **options)
        if key is not None:  # the inputs are held too, so their ids stay theirs for the batch
            memo[key] = (values, zones, converted)
    problems += converted.problems
    if spec.required:
        missing = np.array(converted.values.isna(), dtype=bool)  # a writable copy
        for problem in problems:
            missing &= ~problem.mask
        if missing.any():
            problems.insert(0, Problem(missing, "missing_required", "required value missing"))
    return Evaluated(converted.values.reset_index(drop=True), problems)


# evaluate builds a constant's column as its Arrow array at once (see _const_column)
_CONST_AT_ONCE = True


def _const_column(value: Any, n: int) -> Any:
    """``n`` copies of a constant as the column the converters read: the array ``pa.array`` makes
    of one copy, taken ``n`` times (what it makes of the list of ``n`` copies, without converting
    each); the list itself when Arrow takes no such value (the converters then read the list)."""
    if not _CONST_AT_ONCE:
        return [value] * n
    try:
        one = pa.array([value], from_pandas=True)
    except (pa.ArrowException, OverflowError, TypeError, ValueError):
        return [value] * n
    return one.take(pa.array(np.zeros(n, dtype=np.int64)))


# ------------------------------------------------------------------------------------ plans

Scope = Literal["elem", "root", "parent", "column", "index", "const"]


@dataclass(frozen=True)
class Input:
    scope: Scope
    leaf: Leaf | None = None
    column: str | None = None


@dataclass
class FieldPlan:
    target: str
    name: str
    spec: FieldSpec
    inputs: list[Input]
    zone: Input | None
    record_level: bool  # all inputs read the record itself: evaluated once per record
    where: str


@dataclass
class TargetPlan:
    name: str
    expand: str | None
    required: bool
    fields: dict[str, FieldPlan]
    overrides: dict[str, dict[str, FieldPlan]] = field(default_factory=dict)  # field -> merchant -> plan


class MappingError(ValueError):
    """A mapping that cannot be compiled (the loader reports file problems before this)."""


def _leaf_kind(spec: FieldSpec) -> str:
    if spec.transform or spec.enum is not None or spec.paths is not None:
        return "plain"
    return {"decimal": "money", "timestamp": "datetime"}.get(spec.type, "plain")


class CompiledMapping:
    """A :class:`MappingSpec` ready to run: paths gathered into one extractor per level."""

    # decode with msgspec Structs (fast.py) where the mapping's shape allows; False: per record only
    fast_path = True

    def __init__(self, spec: MappingSpec, name: str = "mapping") -> None:
        self.spec = spec
        self.name = name
        self._root_leaves: dict[Leaf, None] = {}
        self._expand_leaves: dict[str, tuple[dict[Leaf, None], dict[Leaf, None]]] = {}
        self.targets: dict[str, TargetPlan] = {}
        for target_name, target in spec.targets.items():
            if target.expand:
                self._expand_leaves.setdefault(target.expand, ({}, {}))
            plans = {fname: self._plan(target_name, target.expand, fname, fspec) for fname, fspec in target.fields.items()}
            self.targets[target_name] = TargetPlan(target_name, target.expand, target.required, plans)
        for merchant, override in spec.overrides.items():
            for key, fspec in override.fields.items():
                target_name, fname = spec.resolve_override(key)
                base = spec.targets[target_name].fields[fname]
                if fspec.type != base.type:
                    raise MappingError(f"{name}: overrides.{merchant}.fields.{key}: type must stay {base.type!r} (got {fspec.type!r})")
                plan = self._plan(target_name, spec.targets[target_name].expand, fname, fspec)
                self.targets[target_name].overrides.setdefault(fname, {})[merchant] = plan
        self._expand_order = list(self._expand_leaves)
        expands = [Expand(_levels(e), list(own), list(parent)) for e, (own, parent) in self._expand_leaves.items()]
        self._extractor = BatchExtractor(list(self._root_leaves), expands)
        # msgspec Structs for these paths; records they cannot take go through _extractor
        self._fast_extractor = fast_extractor(list(self._root_leaves), expands, self._extractor)
        # fallback paths read only when needed (see _lazy_inputs): the Structs of the other paths
        self._lazy = self._lazy_inputs() if _LAZY_FALLBACKS else {}
        self._lean_extractor = self._fast_extractor
        if self._lazy:
            lazy = {i.leaf for i in self._lazy}
            lean = [Expand(e.levels, [f for f in e.leaves if f not in lazy], e.parent_leaves) for e in expands]
            self._lean_extractor = fast_extractor([f for f in self._root_leaves if f not in lazy], lean, self._extractor)

    def _lazy_inputs(self) -> dict[Input, list[tuple[str | None, Input]]]:
        """Inputs read only as a later path of a ``first_non_null`` (``currency`` of ``paths:
        [currency, amounts.total.currency]``), each with the (level, first input) of those fields.

        That transform reads its later inputs only where its first one is not complete
        (:func:`~.transforms.first_input_complete`), which for a shop's data is never: the run
        extracts without these paths, and only a batch where some first input is incomplete is
        extracted again with them. Taken only where the field reads the columns as extracted (the
        later input at the first one's level; no merchant overrides) and nothing else reads them."""
        uses: dict[Input, list[tuple[str | None, Input] | None]] = {}
        for target in self.targets.values():
            for name, plan in target.fields.items():
                spec = plan.spec
                plain = (spec.transform and spec.transform[0].name == "first_non_null" and not target.overrides.get(name)
                         and plan.inputs[0].scope in ("root", "elem") and (plan.inputs[0].scope == "elem") == bool(target.expand))
                for position, inp in enumerate([*plan.inputs, *([plan.zone] if plan.zone else [])]):
                    ok = plain and 0 < position < len(plan.inputs) and inp.scope == plan.inputs[0].scope
                    uses.setdefault(inp, []).append((target.expand, plan.inputs[0]) if ok else None)
            for overrides in target.overrides.values():
                for plan in overrides.values():
                    for inp in [*plan.inputs, *([plan.zone] if plan.zone else [])]:
                        uses.setdefault(inp, []).append(None)
        lazy = {inp: guards for inp, guards in uses.items() if inp.leaf is not None and None not in guards}
        for inp in list(lazy):  # a leaf read by another scope too (a root leaf as $. of a level, say) stays
            if any(other.leaf == inp.leaf and other not in lazy for other in uses):
                del lazy[inp]
        return {inp: guards for inp, guards in lazy.items() if all(first not in lazy for _, first in guards)}  # type: ignore[misc]

    def _input(self, expand: str | None, ref: str, kind: str) -> Input:
        if ref == "$index":
            return Input("index")
        if ref.startswith("@"):
            return Input("column", column=ref[1:])
        if ref.startswith("$.") or not expand:
            leaf = Leaf(ref[2:] if ref.startswith("$.") else ref, kind)  # type: ignore[arg-type]
            self._root_leaves[leaf] = None
            return Input("root", leaf)
        own, parent = self._expand_leaves[expand]
        if ref.startswith("^."):
            leaf = Leaf(ref[2:], kind)  # type: ignore[arg-type]
            parent[leaf] = None
            return Input("parent", leaf)
        leaf = Leaf(ref, kind)  # type: ignore[arg-type]
        own[leaf] = None
        return Input("elem", leaf)

    def _plan(self, target: str, expand: str | None, name: str, spec: FieldSpec) -> FieldPlan:
        kind = _leaf_kind(spec)
        refs = spec.inputs
        inputs = [self._input(expand, ref, kind) for ref in refs] if refs else [Input("const")]
        zone = self._input(expand, spec.timezone_path, "plain") if spec.timezone_path else None
        scopes = {i.scope for i in inputs} | ({zone.scope} if zone else set())
        record_level = scopes <= {"root", "column", "const"}
        return FieldPlan(target, name, spec, inputs, zone, record_level, _where(expand, refs, spec))

    def run(self, raw: pd.DataFrame | pa.Table) -> MappingOutput:
        return _Run(self, raw).execute()


def _levels(expand: str) -> list[str]:
    return [part.strip(".") for part in expand.split("[]") if part.strip(".")]


def _where(expand: str | None, refs: list[str], spec: FieldSpec) -> str:
    if spec.is_const:
        return " (constant)"

    def show(ref: str) -> str:
        if ref.startswith("$."):
            return ref[2:]
        if ref.startswith(("@", "$index")):
            return ref
        if ref.startswith("^.") and expand:
            return expand.rsplit("[]", 2)[0] + "[]." + ref[2:]
        return f"{expand}.{ref}" if expand else ref

    shown = [show(r) for r in refs]
    return f" (path {shown[0]})" if len(shown) == 1 else f" (paths {', '.join(shown)})"


def compile_mapping(spec: MappingSpec, name: str = "mapping") -> CompiledMapping:
    return CompiledMapping(spec, name)


# -------------------------------------------------------------------------------------- run


@dataclass
class MappingOutput:
    frames: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, target: str) -> pd.DataFrame:
        return self.frames[target]


@dataclass
class _Level:
    """The rows of one target: records themselves, or the elements of an expanded array."""

    n: int
    parent_row: np.ndarray | None  # record of each row (None: the rows are the records)
    index: np.ndarray | None
    elem: dict[str, list] = field(default_factory=dict)
    parent: dict[str, list] = field(default_factory=dict)
    present: np.ndarray | None = None


class _Run:
    def __init__(self, mapping: CompiledMapping, raw: pd.DataFrame | pa.Table) -> None:
        self.mapping = mapping
        if isinstance(raw, pa.Table):
            payloads = raw.column("payload").to_pylist() if "payload" in raw.column_names else None
            raw = raw.drop_columns(["payload"]).to_pandas() if payloads is not None else raw.to_pandas()
            if payloads is not None:
                raw["payload"] = pd.Series(payloads, dtype=object)
        missing = [c for c in ("payload", "raw_data_id", "source_id") if c not in raw.columns]
        if missing:
            raise ValueError(f"raw frame lacks columns {missing}")
        self.raw = raw.reset_index(drop=True)
        self.n = len(self.raw)
        merchant = self.raw["merchant_id"] if "merchant_id" in self.raw else pd.Series("", index=self.raw.index)
        self.merchant = _merchants(merchant)
        self._merchant_text: Any = None  # see _merchant_column
        self.issues: list[tuple[np.ndarray, int, np.ndarray]] = []  # (records, rank, messages)
        self._cache: dict[tuple, Any] = {}
        self._converted: dict[tuple, Any] = {}  # conversions shared by fields (see evaluate)

    def execute(self) -> MappingOutput:
        # The collector stays off for the whole run: extraction makes millions of tuples (no cycles)
        # that live until their columns are converted; re-enabled after they are freed, it has
        # nothing to scan (re-enabled straight after extraction, its first pass took 0.3 s per 100k).
        with _gc_paused():
            return self._execute()

    def _execute(self) -> MappingOutput:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        payloads = self.raw["payload"].tolist()
        extracted = self._extract(payloads)
        t2 = time.perf_counter()
        timings["decode_extract_s"] = t2 - t0
        self.root = extracted.root
        malformed = np.zeros(self.n, dtype=bool)
        if extracted.errors:
            rows = np.fromiter(extracted.errors, dtype=np.int64)
            malformed[rows] = True
            self.issues.append((rows, RANK["malformed_payload"], np.array(list(extracted.errors.values()), dtype=object)))
        self.malformed = malformed
        levels: dict[str | None, _Level] = {None: _Level(self.n, None, None)}
        for expand, ex in zip(self.mapping._expand_order, extracted.expanded):
            levels[expand] = _Level(
                len(ex.rows), np.asarray(ex.rows, dtype=np.int64), np.asarray(ex.index, dtype=np.int64),
                ex.columns, ex.parent_columns, np.asarray(ex.present, dtype=bool),
            )
        values: dict[str, dict[str, pd.Series]] = {}
        for target in self.mapping.targets.values():
            level = levels[target.expand]
            if target.required and level.present is not None:
                absent = ~level.present & ~malformed
                if absent.any():
                    rows = np.flatnonzero(absent)
                    message = f"{target.name}: required array missing (path {target.expand})"
                    self.issues.append((rows, RANK["missing_required"], np.full(len(rows), message, dtype=object)))
            values[target.name] = {name: self._field(target, plan, level, levels[None]) for name, plan in target.fields.items()}
        t3 = time.perf_counter()
        timings["map_s"] = t3 - t2
        rejected, rejects = self._rejects()
        frames = {t.name: self._frame(t, values[t.name], levels[t.expand], rejected) for t in self.mapping.targets.values()}
        timings["output_s"] = time.perf_counter() - t3
        self.root, self._cache, self._converted = {}, {}, {}  # the raw values, freed before the collector is back
        return MappingOutput(frames, rejects, timings)

    def _extract(self, payloads: list) -> Any:
        """The raw columns of every path: without the lazy ones where no field reads them (they
        stand as columns of None, never read), else with them (see CompiledMapping._lazy_inputs)."""
        mapping = self.mapping
        if not mapping.fast_path:
            return mapping._extractor(payloads)
        if mapping._lean_extractor is mapping._fast_extractor:
            return mapping._fast_extractor(payloads)
        extracted = mapping._lean_extractor(payloads)
        expanded = dict(zip(mapping._expand_order, extracted.expanded))
        unread = []
        for inp, guards in mapping._lazy.items():
            for level, first in guards:
                source = extracted.root if first.scope == "root" else expanded[level].columns
                if not first_input_complete(source[column_name(first.leaf)]):
                    return mapping._fast_extractor(payloads)
                unread.append((source, column_name(inp.leaf), self.n if level is None else len(expanded[level].rows)))
        for columns, name, n in unread:
            # (present when the lean extraction fell back to the general one, which reads every path)
            columns.setdefault(name, [None] * n)
        return extracted

    # ---- inputs

    def _column(self, level: _Level, inp: Input, record_level: bool) -> Any:
        """Raw values of one input at the level's rows (records when ``record_level``)."""
        key = (id(level), inp, record_level)
        if key in self._cache:
            return self._cache[key]
        if inp.scope == "root" or inp.scope == "column":
            if inp.scope == "root":
                base = self.root[column_name(inp.leaf)]
            else:
                base = self.raw[inp.column].to_numpy(dtype=object) if inp.column != "merchant_id" else self.merchant
            out = base if (record_level or level.parent_row is None) else _take(base, level.parent_row)
        elif inp.scope == "elem":
            out = level.elem[column_name(inp.leaf)]
        elif inp.scope == "parent":
            out = level.parent[column_name(inp.leaf)]
        elif inp.scope == "index":
            out = level.index
        else:
            out = [None] * (self.n if record_level or level.parent_row is None else level.n)
        self._cache[key] = out
        return out

    def _zones(self, level: _Level, plan: FieldPlan, record_level: bool) -> Any:
        """Each row's zone for times without an offset: the ``timezone_path`` value, else the zone
        of a PHP DateTime object the value came in, else None (the configured zone applies)."""
        sources = []
        if plan.zone is not None:
            sources.append(self._column(level, plan.zone, record_level))
        first = plan.inputs[0]
        if first.leaf is not None and first.leaf.kind == "datetime":
            source = self.root if first.scope == "root" else (level.elem if first.scope == "elem" else level.parent)
            zones = source[zone_column_name(first.leaf)]
            if first.scope == "root" and not record_level and level.parent_row is not None:
                zones = _take(zones, level.parent_row)
            sources.append(zones)
        if len(sources) < 2:
            return sources[0] if sources else None
        return pc.coalesce(*(arrow_text(to_arrow(z)[0]) for z in sources))

    # ---- fields

    def _field(self, target: TargetPlan, plan: FieldPlan, level: _Level, records: _Level) -> pd.Series:
        record_level = plan.record_level and level.parent_row is not None
        space = records if record_level else level
        overrides: dict[str, FieldPlan] = {}
        if target.overrides.get(plan.name):  # each row's merchant, only needed for overrides
            owner = self.merchant if space.parent_row is None else _take(self.merchant, space.parent_row)
            overrides = {m: p for m, p in target.overrides[plan.name].items() if (owner == m).any()}
        pieces: list[tuple[np.ndarray | None, FieldPlan]] = []
        if overrides:
            taken = np.zeros(len(owner), dtype=bool)
            for merchant, oplan in overrides.items():
                rows = owner == merchant
                taken |= rows
                pieces.append((np.flatnonzero(rows), oplan))
            pieces.insert(0, (np.flatnonzero(~taken), plan))
        else:
            pieces.append((None, plan))
        results = []
        for rows, p in pieces:
            inputs = [_subset(self._column(level, i, record_level), rows) for i in p.inputs]
            zones = self._zones(level, p, record_level)
            result = evaluate(p.spec, inputs, zones=None if zones is None else _subset(zones, rows),
                              timezone=self.mapping.spec.timezone, memo=self._converted)
            self._report(target, p, result.problems, level, record_level, rows)
            results.append((rows, result.values))
        values = results[0][1] if len(results) == 1 else _combine(results, len(owner), plan.spec.type)
        if record_level:
            values = values.take(level.parent_row).reset_index(drop=True)
        return values

    def _report(self, target: TargetPlan, plan: FieldPlan, problems: list[Problem], level: _Level,
                record_level: bool, rows: np.ndarray | None) -> None:
        for problem in problems:
            mask = problem.mask
            where = np.flatnonzero(mask)
            if not len(where):
                continue
            reasons = problem.reasons if isinstance(problem.reasons, np.ndarray) else np.full(len(where), problem.reasons, dtype=object)
            positions = where if rows is None else rows[where]  # rows of the level (or records)
            if level.parent_row is None or record_level:
                records = positions
                labels = np.full(len(records), f"{target.name}.{plan.name}", dtype=object)
                if record_level:  # only records that have rows of this target
                    has_rows = np.zeros(self.n, dtype=bool)
                    has_rows[level.parent_row] = True
                    keep = has_rows[records]
                    records, labels, reasons = records[keep], labels[keep], reasons[keep]
            else:
                records = level.parent_row[positions]
                labels = np.array([f"{target.name}[{k}].{plan.name}" for k in level.index[positions]], dtype=object)
            keep = ~self.malformed[records]
            if keep.any():
                messages = np.array([f"{l}: {r}{plan.where}" for l, r in zip(labels[keep], reasons[keep])], dtype=object)
                self.issues.append((records[keep], RANK[problem.error_type], messages))

    # ---- output

    def _rejects(self) -> tuple[np.ndarray, pd.DataFrame]:
        rejected = np.zeros(self.n, dtype=bool)
        if not self.issues:
            return rejected, _empty_rejects()
        records = np.concatenate([r for r, _, _ in self.issues])
        ranks = np.concatenate([np.full(len(r), k) for r, k, _ in self.issues])
        messages = np.concatenate([m for _, _, m in self.issues])
        issues = pd.DataFrame({"record": records, "rank": ranks, "message": messages})
        grouped = issues.groupby("record", sort=True)
        summary = pd.DataFrame({"rank": grouped["rank"].min(), "message": grouped["message"].agg("; ".join)})
        rows = summary.index.to_numpy()
        rejected[rows] = True
        raw = self.raw.iloc[rows]
        rejects = pd.DataFrame(
            {
                "source_id": raw["source_id"].astype(object).where(raw["source_id"].notna(), "").to_numpy(),
                "raw_data_id": raw["raw_data_id"].astype("int64").to_numpy(),
                "partition_date": raw["partition_date"].astype(object).to_numpy() if "partition_date" in raw else None,
                "payload": raw["payload"].astype(object).to_numpy(),
                "error_type": [ERROR_TYPES[k] for k in summary["rank"]],
                "error_message": summary["message"].to_numpy(dtype=object),
                "merchant_id": self.merchant[rows],
            }
        )
        return rejected, rejects[list(REJECT_COLUMNS)]

    def _frame(self, target: TargetPlan, values: dict[str, pd.Series], level: _Level, rejected: np.ndarray) -> pd.DataFrame:
        parent = level.parent_row if level.parent_row is not None else np.arange(self.n)
        columns: dict[str, Any] = dict(values)  # then the bookkeeping (one of the same name replaced in place)
        for column in BOOKKEEPING:
            source = "source_id" if column == "raw_source_id" else column
            if column == "merchant_id":
                columns[column] = self._merchant_column(parent)
            elif source in self.raw:
                columns[column] = self.raw[source].take(parent).reset_index(drop=True)
        frame = pd.DataFrame(_unindexed(columns, len(parent)))  # at once: a column set into a frame costs ~0.1 ms
        keep = ~rejected[parent]
        return frame if keep.all() else frame[keep].reset_index(drop=True)

    def _merchant_column(self, rows: np.ndarray) -> Any:
        """Each row's merchant as the frame's column: the text pandas infers from the merchants'
        object array (``str``), inferred once per run and taken for each target's rows, rather than
        inferred again from every target's copy (the same values). Pandas infers an empty object
        array as ``object``: no rows, the array as it is."""
        if not (_MERCHANT_ONCE and len(rows)):
            return _take(self.merchant, rows)
        if self._merchant_text is None:
            self._merchant_text = pd.Series(self.merchant).array
        return self._merchant_text.take(rows)


# fallback paths of first_non_null extracted only for batches where a first input is incomplete
_LAZY_FALLBACKS = True
# _merchants takes a column of text as it is
_TEXT_AS_IS = True
# _Run._merchant_column infers the merchants' text once per run
_MERCHANT_ONCE = True


def _merchants(merchant: pd.Series) -> np.ndarray:
    """Each row's merchant as text ("" when missing). A column holding only ``str`` values is that
    text already (nothing is missing, ``str`` of each is itself): it is taken as it is, without a
    ``str`` call per row; so is a column of a pandas text dtype with nothing missing (what pandas
    makes of a merchant id given as one string, as core and the bench give it)."""
    if _TEXT_AS_IS and merchant.dtype == object and set(map(type, merchant.to_numpy(dtype=object))) == {str}:
        return merchant.to_numpy(dtype=object)
    if _TEXT_AS_IS and isinstance(merchant.dtype, pd.StringDtype) and not merchant.hasnans:
        return merchant.to_numpy(dtype=object)
    return merchant.astype(object).where(merchant.notna(), "").astype(str).to_numpy(dtype=object)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Extraction builds millions of tuples that all stay alive until converted; the cyclic collector
    would rescan them again and again (they hold no cycles), which doubled the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# _Run._frame gives the constructor the arrays of typed Series with the frame's own index
_FRAME_ARRAYS = True


def _unindexed(columns: dict[str, Any], n: int) -> dict[str, Any]:
    """An output frame's columns with each Series of a dtype other than object given as its array,
    when every Series has the frame's index (0 .. n-1): the constructor then aligns no indexes (a
    frame of ~15 Series: ~0.55 -> ~0.15 ms). An object Series stays one (pandas would infer text
    from its array). A Series of another index (or length) is aligned as before: columns unchanged."""
    if not _FRAME_ARRAYS:
        return columns
    out = {}
    for name, values in columns.items():
        if values.__class__ is pd.Series:
            index = values.index
            if not (len(values) == n and index.__class__ is pd.RangeIndex and index.start == 0 and index.step == 1):
                return columns
            if values.dtype != object:
                values = values.array
        out[name] = values
    return out


def _take(values: Any, rows: np.ndarray) -> Any:
    if values.__class__ is ArrowColumn:
        return values.take(rows)
    if not isinstance(values, np.ndarray):
        values = np.fromiter(values, dtype=object, count=len(values))
    return values[rows]


def _subset(values: Any, rows: np.ndarray | None) -> Any:
    return values if rows is None else _take(values, rows)


def _combine(results: list[tuple[np.ndarray, pd.Series]], n: int, type_: str) -> pd.Series:
    order = np.concatenate([rows for rows, _ in results])
    combined = pd.concat([v.reset_index(drop=True) for _, v in results], ignore_index=True)
    out = combined.iloc[np.argsort(order, kind="stable")].reset_index(drop=True)
    return out.astype(OUTPUT_DTYPES[type_]) if str(out.dtype) != str(OUTPUT_DTYPES[type_]) else out


def _empty_rejects() -> pd.DataFrame:
    return _EMPTY_REJECTS.copy()  # a copy of one built once (~10 us, building it ~0.35 ms)


_EMPTY_REJECTS = pd.DataFrame({c: pd.Series(dtype="int64" if c == "raw_data_id" else object) for c in REJECT_COLUMNS})


def map_batch(mapping: CompiledMapping | MappingSpec, raw: pd.DataFrame | pa.Table) -> MappingOutput:
    """Map one batch (see the module docstring)."""
    compiled = mapping if isinstance(mapping, CompiledMapping) else CompiledMapping(mapping)
    return compiled.run(raw)


__all__ = [
    "BOOKKEEPING",
    "ERROR_TYPES",
    "REJECT_COLUMNS",
    "CompiledMapping",
    "Evaluated",
    "MappingError",
    "MappingOutput",
    "compile_mapping",
    "evaluate",
    "is_null",
    "map_batch",
]
