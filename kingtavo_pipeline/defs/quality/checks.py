"""Asset-check factories: one declaration per check, evaluated per daily partition in the store.

A :class:`QualityCheck` says what to measure on one asset (completeness of some columns, validity
rules, a consistency rule, uniqueness, reconciliation, volume, schema drift). :func:`build_checks`
turns a list of them into one standalone ``multi_asset_check`` (subsettable, so the UI's Execute
button runs any one of them alone) whose thresholds, severities and blocking come from the quality
file. Adding checks for a new asset is a few lines::

    build_checks("core_orders_quality", [
        completeness_check(ORDERS, "orders", ["customer_id", "currency"]),
        validity_check(ORDERS, "orders", [CurrencyCode("currency"), NotInFuture("ordered_at")]),
        money_check(ORDERS, "orders", ["total"]),
        sql_rule_check(ORDERS, sum_matches_rule("order_total_matches_lines", ...)),
        volume_check(ORDERS, "orders", money_columns=["total"]),
    ], config)

plus, optionally, ``assets: {core/orders: {completeness: {max_rate: 0.01}}}`` in the quality file.

Per partition: every check queries the whole run window once, grouped by ``partition_date``, and
yields one ``AssetCheckEvaluation`` per day with ``partition=<day>`` (a single-run backfill's
``AssetCheckResult`` would carry no partition), then the bare outputs the check step requires. A
blocking check that fails on any day fails the step, so the downstream step of that run (which
covers the whole range) does not run; the per-day evaluations say which days to fix.

A store that cannot be reached, or a query that fails, fails the step with a message naming the
store and the checks: a check that could not look never passes.

Memory: chDB runs in the step's process, so what a ClickHouse query holds is the step's RSS. A
ClickHouse query reads one day (one partition) at a time (:meth:`Stores.ch_by_day`): a FINAL over
the whole window merges the parts of every partition at once, even on one thread, so its memory
grew with the window (10M rows over 5 days in 100 parts a day: +330 MiB for the window's query,
+55 MiB for a day's). Uniqueness across partitions compares the window's key hashes in slices of at
most ``slice_keys`` keys. PostgreSQL queries keep the window (their memory is the server's).
chDB's background merges of parts a load left unmerged also run in whichever process opens the
warehouse next, often a check step: that memory is the parts' (``bench/check_memory.py`` shows it
apart), not the checks'.
"""

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import dagster as dg

from kingtavo_pipeline.defs.partitions import daily_partitions
from kingtavo_pipeline.defs.resources import ClickHouseResource, PostgresResource
from kingtavo_pipeline.defs.runs import utc_window
from kingtavo_pipeline.quality.config import CheckSettings, QualityConfig
from kingtavo_pipeline.quality.drift import schema_drift
from kingtavo_pipeline.quality.rules import (
    NonNegative,
    SqlRule,
    ValueRule,
    ident,
    missing_sql,
    null_rate,
    sql_literal,
)
from kingtavo_pipeline.quality.stats import assess_volume
from kingtavo_pipeline.storage.changes import (
    clickhouse_fingerprint,
    definition_of,
    fingerprint_of,
    postgres_fingerprint,
    remembered,
)
from kingtavo_pipeline.storage.clickhouse import CLICKHOUSE_POOL
from kingtavo_pipeline.storage.errors import StoreUnavailableError, describe_error

Store = Literal["postgres", "clickhouse"]

# Warehouse check queries stay well under 1 GiB: one thread (a FINAL read on 10M rows peaked at
# ~1 GiB with the default threads, ~0.5 GiB with one), FINAL merged per partition only, one
# partition per query (Stores.ch_by_day), groupings and sorts spilled to disk past 100 MB, and a
# hard cap that fails the query (and so the check) rather than the process.
CLICKHOUSE_SETTINGS = (
    " SETTINGS max_threads = 1, do_not_merge_across_partitions_select_final = 1,"
    " max_bytes_before_external_group_by = 100000000, max_bytes_before_external_sort = 100000000,"
    " max_memory_usage = 700000000"
)


# keys of a uniqueness check's window compared per query: its IN set and grouping hold at most this
# many 64-bit hashes (tens of MiB), however large the window
CROSS_CHECK_KEYS = 1_000_000

# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayResult:
    """One check's verdict on one partition."""

    passed: bool
    metadata: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None
    severity: str | None = None  # overrides the configured severity (e.g. a WARN-level finding)


class Stores:
    """The stores a check step reads, opened on first use and closed when the step ends."""

    def __init__(self, postgres: PostgresResource | None, clickhouse: ClickHouseResource | None, stack: ExitStack):
        self._postgres, self._clickhouse, self._stack = postgres, clickhouse, stack
        self._pg = self._ch = None

    @property
    def postgres(self):
        if self._pg is None:
            self._pg = self._postgres.store()
        return self._pg

    @property
    def clickhouse(self):
        if self._ch is None:
            self._ch = self._stack.enter_context(self._clickhouse.open())
        return self._ch

    def pg_rows(self, query: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        return self.postgres.fetch_all(query, params)

    def ch_rows(self, query: str) -> list[tuple]:
        return self.clickhouse.query(query + CLICKHOUSE_SETTINGS).result_rows

    def ch_by_day(self, query: Callable[[dt.date, dt.date], str], start: dt.date, end: dt.date) -> list[tuple]:
        """The rows of ``query(day, next day)`` for every day of [start, end), one query per day.

        Warehouse tables are partitioned by day: each query then reads (and FINAL merges) the parts
        of one partition, so it holds a day's worth of part readers, not the window's.
        """
        rows: list[tuple] = []
        for day in _days(start, end):
            rows += self.ch_rows(query(day, day + dt.timedelta(days=1)))
        return rows


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def _date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else dt.date.fromisoformat(str(value)[:10])


def _day_literal(day: dt.date, store: Store) -> str:
    return f"DATE {sql_literal(day.isoformat())}" if store == "postgres" else f"toDate({sql_literal(day.isoformat())})"


def _range_sql(column: str, start: dt.date, end: dt.date, store: Store) -> str:
    return f"{column} >= {_day_literal(start, store)} AND {column} < {_day_literal(end, store)}"


def _key_sql(columns: Sequence[str], store: Store) -> str:
    if not columns:
        return "''"
    cast = "coalesce({}::text, '')" if store == "postgres" else "ifNull(toString({}), '')"
    return " || '/' || ".join(cast.format(ident(c)) for c in columns)


# --- the checks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityCheck:
    """One check on one asset. Subclasses implement :meth:`evaluate` for a window of days."""

    asset_key: dg.AssetKey
    name: str
    kind: str
    description: str
    stores: tuple[Store, ...]

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset_key, self.name)

    def evaluate(self, stores: Stores, start: dt.date, end: dt.date, settings: CheckSettings) -> dict[dt.date, DayResult]:
        raise NotImplementedError

    def reads(self) -> tuple[tuple[Store, str], ...] | None:
        """The tables the check's verdict depends on, or None when that is not known (or it also
        depends on the clock): then it is evaluated every time rather than remembered."""
        return None

    def for_merchant(self, merchant: str) -> "QualityCheck":
        """This check narrowed to one merchant of a (date x merchant) partitioned asset."""
        raise NotImplementedError(f"{self.asset_key.to_user_string()}/{self.name} is not evaluated per merchant")


@dataclass(frozen=True)
class _TableCheck(QualityCheck):
    table: str = ""
    store: Store = "postgres"
    where: str | None = None  # SQL from code (never from data), e.g. "source_type = 'csv'"
    key_columns: tuple[str, ...] = ()
    partition_column: str = "partition_date"
    final: bool = False  # read a ReplacingMergeTree with FINAL (ClickHouse)
    # SQL from code giving a row's day when the table has no partition column, e.g.
    # "(received_at AT TIME ZONE 'UTC')::date"
    partition_expr: str | None = None
    # per merchant (date x merchant partitions): (column, value prefix); the merchant's rows are
    # those whose column equals prefix + merchant id (raw_data.source_name = 'salla/<merchant>')
    merchant_filter: tuple[str, str] | None = None

    @property
    def _part(self) -> str:
        return self.partition_expr or ident(self.partition_column)

    def _from(self) -> str:
        return f"{ident(self.table)}{' FINAL' if self.final and self.store == 'clickhouse' else ''}"

    def _filter(self, start: dt.date, end: dt.date) -> str:
        window = _range_sql(self._part, start, end, self.store)
        return f"{window} AND ({self.where})" if self.where else window

    def for_merchant(self, merchant: str) -> "_TableCheck":
        if self.merchant_filter is None:
            return super().for_merchant(merchant)
        column, prefix = self.merchant_filter
        only = f"{ident(column)} = {sql_literal(prefix + merchant)}"
        return replace(self, where=f"({self.where}) AND {only}" if self.where else only, merchant_filter=None)

    def _rows(self, stores: Stores, query: str) -> list[tuple]:
        return stores.pg_rows(query) if self.store == "postgres" else stores.ch_rows(query)

    def reads(self):
        return ((self.store, self.table),)

    def _window_rows(self, stores: Stores, query: Callable[[dt.date, dt.date], str], start: dt.date,
                     end: dt.date) -> list[tuple]:
        """``query(start, end)`` in PostgreSQL; in ClickHouse, ``query`` a day at a time."""
        return stores.pg_rows(query(start, end)) if self.store == "postgres" else stores.ch_by_day(query, start, end)

    def _counts(self, stores: Stores, start: dt.date, end: dt.date, predicates: Sequence[str]) -> dict[dt.date, tuple[int, list[int]]]:
        """``{day: (rows, [rows matching each predicate])}`` for the days that have rows."""
        sums = "".join(f", sum(CASE WHEN {p} THEN 1 ELSE 0 END)" for p in predicates)
        rows = self._window_rows(stores, lambda lo, hi: (f"SELECT {self._part} AS day, count(*){sums} FROM {self._from()} "
                                                         f"WHERE {self._filter(lo, hi)} GROUP BY 1"), start, end)
        return {_date(r[0]): (int(r[1]), [int(v or 0) for v in r[2:]]) for r in rows}

    def _sample(self, stores: Stores, day: dt.date, predicate: str, n: int) -> list[str]:
        """Up to ``n`` keys of rows matching ``predicate`` on ``day`` (keys only: never payloads)."""
        if n <= 0 or not self.key_columns:
            return []
        query = (f"SELECT DISTINCT {_key_sql(self.key_columns, self.store)} AS k FROM {self._from()} "
                 f"WHERE {self._filter(day, day + dt.timedelta(days=1))} AND {predicate} ORDER BY k LIMIT {int(n)}")
        return [str(r[0]) for r in self._rows(stores, query)]


@dataclass(frozen=True)
class CompletenessCheck(_TableCheck):
    columns: tuple[str, ...] = ()
    blank_is_missing: bool = True

    def evaluate(self, stores, start, end, settings):
        preds = [missing_sql(c, self.store, blank_is_missing=self.blank_is_missing) for c in self.columns]
        counts = self._counts(stores, start, end, preds)
        limits = {c: (settings.columns or {}).get(c, settings.max_rate) for c in self.columns}
        out = {}
        for day in _days(start, end):
            rows, missing = counts.get(day, (0, [0] * len(self.columns)))
            rates = {c: null_rate(m, rows) for c, m in zip(self.columns, missing)}
            failing = [c for c in self.columns if rates[c] > limits[c]]
            metadata: dict[str, Any] = {"rows": rows, **{f"missing_rate:{c}": rates[c] for c in self.columns},
                                        **{f"max_rate:{c}": float(limits[c]) for c in self.columns}}
            if failing:
                metadata["failing_columns"] = failing
                metadata["sample_keys"] = self._sample(stores, day, " OR ".join(preds[self.columns.index(c)] for c in failing),
                                                       settings.sample_size)
            out[day] = DayResult(not failing, metadata, None if not failing else
                                 "missing values above the limit in " + ", ".join(
                                     f"{c} ({rates[c]:.1%} > {limits[c]:.1%})" for c in failing))
        return out


@dataclass(frozen=True)
class ValidityCheck(_TableCheck):
    rules: tuple[ValueRule, ...] = ()

    def evaluate(self, stores, start, end, settings):
        preds = [r.violation_sql(self.store) for r in self.rules]
        counts = self._counts(stores, start, end, preds)
        out = {}
        for day in _days(start, end):
            rows, bad = counts.get(day, (0, [0] * len(self.rules)))
            rates = {r.label: null_rate(b, rows) for r, b in zip(self.rules, bad)}
            failing = [r for r in self.rules if rates[r.label] > settings.max_rate]
            metadata: dict[str, Any] = {"rows": rows, "max_rate": float(settings.max_rate),
                                        **{f"invalid:{r.label}": b for r, b in zip(self.rules, bad)},
                                        **{f"invalid_rate:{r.label}": rates[r.label] for r in self.rules}}
            if failing:
                metadata["failing_rules"] = [r.label for r in failing]
                metadata["sample_keys"] = self._sample(stores, day, " OR ".join(r.violation_sql(self.store) for r in failing),
                                                       settings.sample_size)
            out[day] = DayResult(not failing, metadata, None if not failing else
                                 "invalid values: " + ", ".join(f"{r.label} ({rates[r.label]:.1%})" for r in failing))
        return out


@dataclass(frozen=True)
class SqlRuleCheck(QualityCheck):
    """A consistency rule in PostgreSQL: its query selects the violating rows (``partition_date``, ``key``)."""

    rule: SqlRule | None = None

    def reads(self):
        return tuple(("postgres", t) for t in self.rule.tables) or None

    def evaluate(self, stores, start, end, settings):
        params = {"start": start, "end": end, **dict(self.rule.params)}
        if "tolerance" in params and settings.tolerance is not None:
            params["tolerance"] = settings.tolerance
        n = int(settings.sample_size or 0)
        query = (f"SELECT partition_date, count(*), (array_agg(key ORDER BY key))[1:{n}] "
                 f"FROM ({self.rule.violations_sql}) violations GROUP BY 1")
        found = {_date(r[0]): (int(r[1]), list(r[2] or [])) for r in stores.pg_rows(query, params)}
        out = {}
        for day in _days(start, end):
            count, sample = found.get(day, (0, []))
            metadata: dict[str, Any] = {"violations": count}
            if "tolerance" in params:
                metadata["tolerance"] = float(params["tolerance"])
            if count:
                metadata["sample_keys"] = [str(k) for k in sample]
            out[day] = DayResult(count == 0, metadata, None if count == 0 else
                                 f"{count} row(s) break the rule: {self.rule.description or self.rule.name}")
        return out


@dataclass(frozen=True)
class UniquenessCheck(_TableCheck):
    """Natural keys unique in a ClickHouse ReplacingMergeTree: after FINAL within the day, and
    across days (FINAL never merges rows of different partitions). Extra versions of a key that
    FINAL hides are reported at WARN severity rather than passed over."""

    key_is_sorting_key: bool = True  # the natural key is the table's ORDER BY (as for unified_items)
    # window keys compared across partitions per query (the hash slices' size); bounds its memory
    slice_keys: int = CROSS_CHECK_KEYS

    def evaluate(self, stores, start, end, settings):
        keys = ", ".join(ident(c) for c in self.key_columns)
        # keys compared as 64-bit hashes: a fixed 8 bytes per key in every set and group, whatever the
        # key's length (a collision, ~1e-6 at 10M keys, would show as a false duplicate, never hide one)
        hashed = f"cityHash64({keys})"
        where = self._filter(start, end)
        base = f"FROM {ident(self.table)}"
        extra = f" AND ({self.where})" if self.where else ""
        raw = {_date(r[0]): int(r[1]) for r in stores.ch_by_day(lambda lo, hi: (
            f"SELECT {self.partition_column}, count() {base} WHERE {self._filter(lo, hi)} GROUP BY 1"), start, end)}
        # FINAL keeps one row per sorting key and partition: when the natural key is the sorting key,
        # no duplicate can survive it inside a partition, and the (memory-hungry) distinct count is skipped
        distinct = "count()" if self.key_is_sorting_key else f"uniqExact({hashed})"
        # a day at a time: FINAL merges that partition's parts only (the window's at once grew with it)
        final = {_date(r[0]): (int(r[1]), int(r[2])) for r in stores.ch_by_day(lambda lo, hi: (
            f"SELECT {self.partition_column}, count(), {distinct} {base} FINAL WHERE {self._filter(lo, hi)} GROUP BY 1"),
            start, end)}
        n = int(settings.sample_size or 0)
        # Keys of the window that also live in another partition (FINAL never merges across
        # partitions). The window's key hashes are taken in slices of at most slice_keys, so the set
        # and the grouping stay bounded however large the window is.
        slices = max(1, -(-sum(raw.values()) // max(1, int(self.slice_keys))))
        cross: dict[dt.date, tuple[int, list[str]]] = {}
        for i in range(slices):
            part = f"{hashed} % {slices} = {i}"
            for r in stores.ch_rows(
                f"SELECT {self.partition_column}, count(), groupArray({n})(k) FROM ("
                f" SELECT DISTINCT {self.partition_column}, {_key_sql(self.key_columns, 'clickhouse')} AS k {base}"
                f" WHERE {where} AND {part} AND {hashed} IN ("
                f"  SELECT h FROM (SELECT {hashed} AS h, min({self.partition_column}) AS lo, max({self.partition_column}) AS hi"
                f"  {base} WHERE {part} AND {hashed} IN (SELECT {hashed} {base} WHERE {where} AND {part}){extra}"
                f"  GROUP BY h) WHERE lo != hi)"
                f") GROUP BY 1"
            ):
                count, sample = cross.get(_date(r[0]), (0, []))
                cross[_date(r[0])] = (count + int(r[1]), (sample + [str(k) for k in r[2]])[:n])
        out = {}
        for day in _days(start, end):
            rows = raw.get(day, 0)
            rows_final, keys_final = final.get(day, (0, 0))
            in_other, sample = cross.get(day, (0, []))
            after_final = (rows_final - keys_final) + in_other
            hidden = rows - rows_final
            metadata = {"rows": rows, "rows_final": rows_final, "duplicates_after_final": after_final,
                        "keys_in_other_partitions": in_other, "duplicates_hidden_by_final": hidden}
            if sample:
                metadata["sample_keys"] = sample
            if after_final:
                out[day] = DayResult(False, metadata, f"{after_final} duplicate key(s) after FINAL "
                                     f"({in_other} also in another partition)", "ERROR")
            elif hidden:
                out[day] = DayResult(False, metadata, f"{hidden} older row version(s) of keys are still stored; "
                                     "FINAL hides them (an unmerged or repeated load)", "WARN")
            else:
                out[day] = DayResult(True, metadata)
        return out


@dataclass(frozen=True)
class ReconciliationCheck(QualityCheck):
    """PostgreSQL core vs the ClickHouse warehouse per day: row counts (``compare_counts``) and
    sums of money columns (within the configured tolerance)."""

    core_table: str = ""
    warehouse_table: str = ""
    money_columns: tuple[str, ...] = ()
    compare_counts: bool = True
    partition_column: str = "partition_date"

    def reads(self):
        return (("postgres", self.core_table), ("clickhouse", self.warehouse_table))

    def evaluate(self, stores, start, end, settings):
        sums = "".join(f", sum({ident(c)})" for c in self.money_columns)
        group = f"GROUP BY {ident(self.partition_column)}"
        core = {_date(r[0]): r[1:] for r in stores.pg_rows(
            f"SELECT {self.partition_column}, count(*){sums} FROM {ident(self.core_table)} "
            f"WHERE {_range_sql(self.partition_column, start, end, 'postgres')} {group}")}
        warehouse = {_date(r[0]): r[1:] for r in stores.ch_by_day(lambda lo, hi: (
            f"SELECT {self.partition_column}, count(){sums} FROM {ident(self.warehouse_table)} FINAL "
            f"WHERE {_range_sql(self.partition_column, lo, hi, 'clickhouse')} {group}"), start, end)}
        tolerance = float(settings.tolerance or 0)
        empty = (0, *([None] * len(self.money_columns)))
        out = {}
        for day in _days(start, end):
            c, w = core.get(day, empty), warehouse.get(day, empty)
            problems = []
            metadata: dict[str, Any] = {"core_rows": int(c[0]), "warehouse_rows": int(w[0]),
                                        "difference": int(w[0]) - int(c[0])}
            if self.compare_counts and c[0] != w[0]:
                problems.append(f"rows: core {c[0]}, warehouse {w[0]}")
            for i, column in enumerate(self.money_columns, start=1):
                core_sum, wh_sum = float(c[i] or 0), float(w[i] or 0)
                metadata.update({f"core_sum:{column}": core_sum, f"warehouse_sum:{column}": wh_sum,
                                 f"sum_difference:{column}": wh_sum - core_sum})
                if abs(wh_sum - core_sum) > tolerance:
                    problems.append(f"sum({column}): core {core_sum:.4f}, warehouse {wh_sum:.4f}")
            if self.money_columns:
                metadata["tolerance"] = tolerance
            out[day] = DayResult(not problems, metadata, "; ".join(problems) or None)
        return out


@dataclass(frozen=True)
class VolumeCheck(_TableCheck):
    """Rows (``count_expr``) and money sums per day against the trailing window (robust z-score).

    A day that is not over yet (today, UTC: the daily partitions include the current day) is not
    judged: its partial volume would read as a drop. It passes with ``status: partial_day`` and is
    judged when it is checked again after midnight.
    """

    money_columns: tuple[str, ...] = ()
    count_expr: str = "count(*)"

    def evaluate(self, stores, start, end, settings):
        window = int(settings.window_days)
        current_day = dt.datetime.now(dt.timezone.utc).date()
        metrics = ["rows", *(f"sum:{c}" for c in self.money_columns)]
        sums = "".join(f", sum({ident(c)})" for c in self.money_columns)
        history_start = start - dt.timedelta(days=window)
        values = {_date(r[0]): [float(v or 0) for v in r[1:]] for r in self._window_rows(stores, lambda lo, hi: (
            f"SELECT {self._part} AS day, {self.count_expr}{sums} FROM {self._from()} "
            f"WHERE {self._filter(lo, hi)} GROUP BY 1"), history_start, end)}
        first = self._rows(stores, f"SELECT min({self._part}) FROM {self._from()}"
                                   + (f" WHERE {self.where}" if self.where else ""))[0][0]
        first_day = _date(first) if first is not None else None
        zero = [0.0] * len(metrics)
        out = {}
        for day in _days(start, end):
            if day >= current_day:  # not over yet: what landed so far is reported, not judged
                so_far = values.get(day, zero)
                out[day] = DayResult(True, {"status": "partial_day", "partial_day": True,
                                            **{m: (so_far[i] if i else int(so_far[i])) for i, m in enumerate(metrics)}},
                                     "the day is not over: its volume is judged once it is complete")
                continue
            # days before the source's first data are not history; quiet days since then are zeros
            history_days = [day - dt.timedelta(days=i) for i in range(window, 0, -1)]
            history_days = [d for d in history_days if first_day is not None and d >= first_day]
            today = values.get(day, zero)
            metadata: dict[str, Any] = {"history_days": len(history_days), "threshold": float(settings.threshold),
                                        "min_history": int(settings.min_history), "partial_day": False}
            anomalies = []
            for i, metric in enumerate(metrics):
                verdict = assess_volume([values.get(d, zero)[i] for d in history_days], today[i],
                                        threshold=settings.threshold, min_history=settings.min_history,
                                        min_scale_fraction=settings.min_scale_fraction, min_scale=settings.min_scale)
                metadata[metric] = today[i] if i else int(today[i])
                if verdict.z is not None:
                    metadata[f"{metric}_median"] = verdict.median
                    metadata[f"{metric}_z"] = round(verdict.z, 4)
                if not verdict.passed:
                    anomalies.append(f"{metric} {today[i]:g} vs median {verdict.median:g} (z={verdict.z:.1f})")
            metadata["status"] = ("anomaly" if anomalies else
                                  "ok" if len(history_days) >= settings.min_history else "insufficient_history")
            out[day] = DayResult(not anomalies, metadata, "; ".join(anomalies) or None)
        return out


@dataclass(frozen=True)
class SchemaDriftCheck(QualityCheck):
    """Fields of raw payloads (``raw_data``) against what the mapping reads and earlier days carried."""

    source_type: str = ""
    source_name: str = ""
    expected: tuple[tuple[str, str | None], ...] = ()
    strict: bool = False
    baseline_records: int = 5000
    entity: str | None = None  # raw_data.entity, where one source lands several entities (APIs)
    known: tuple[str, ...] = ()  # keys the mapping may read but need not find
    per_merchant: bool = False  # raw source name <source_name>/<merchant> (date x merchant partitions)

    def reads(self):
        return (("postgres", "raw_data"),)

    def _source(self) -> str:
        where = f"r.source_type = {sql_literal(self.source_type)} AND r.source_name = {sql_literal(self.source_name)}"
        return where + (f" AND r.entity = {sql_literal(self.entity)}" if self.entity is not None else "")

    def for_merchant(self, merchant: str) -> "SchemaDriftCheck":
        if not self.per_merchant:
            return super().for_merchant(merchant)
        return replace(self, source_name=f"{self.source_name}/{merchant}", per_merchant=False)

    def evaluate(self, stores, start, end, settings):
        baseline_start = start - dt.timedelta(days=int(settings.baseline_days))
        by_day: dict[dt.date, dict[str, set[str]]] = {}
        for day, key, kind in stores.pg_rows(
            f"SELECT r.partition_date, k.key, jsonb_typeof(k.value) FROM raw_data r, jsonb_each(r.payload) k "
            f"WHERE {self._source()} AND {_range_sql('r.partition_date', start, end, 'postgres')} "
            f"AND jsonb_typeof(r.payload) = 'object' GROUP BY 1, 2, 3"
        ):
            by_day.setdefault(_date(day), {}).setdefault(key, set()).add(kind)
        # the newest records before the window stand for the baseline (bounded, whatever the volume)
        baseline: dict[str, set[str]] = {}
        for key, kind in stores.pg_rows(
            f"SELECT k.key, jsonb_typeof(k.value) FROM (SELECT payload FROM raw_data r WHERE {self._source()} "
            f"AND {_range_sql('r.partition_date', baseline_start, start, 'postgres')} AND jsonb_typeof(r.payload) = 'object' "
            f"ORDER BY r.partition_date DESC, r.observed_seq DESC LIMIT {int(self.baseline_records)}) b, "
            f"jsonb_each(b.payload) k GROUP BY 1, 2"
        ):
            baseline.setdefault(key, set()).add(kind)
        expected = dict(self.expected)
        n = int(settings.sample_size or 0)
        out = {}
        for day in _days(start, end):
            observed = by_day.get(day)
            if observed is None:  # nothing landed that day: nothing drifted
                out[day] = DayResult(True, {"fields": 0, "new_fields": 0, "missing_fields": 0, "retyped_fields": 0})
                continue
            drift = schema_drift(observed, expected=expected, baseline=baseline, strict=self.strict, known=self.known)
            metadata: dict[str, Any] = {"fields": len(observed), "new_fields": len(drift.new),
                                        "missing_fields": len(drift.missing), "retyped_fields": len(drift.retyped)}
            for label, names in (("new", drift.new), ("missing", drift.missing), ("retyped", drift.retyped)):
                if names:
                    metadata[f"{label}_field_names"] = list(names[:n])  # field names only, never values
            out[day] = DayResult(drift.passed, metadata, None if drift.passed else "; ".join(
                f"{label}: {', '.join(names)}" for label, names in
                (("new fields", drift.new), ("missing fields", drift.missing), ("retyped", drift.retyped)) if names))
            for key, types in observed.items():  # a later day of the window compares with this one too
                baseline.setdefault(key, set()).update(types)
        return out


@dataclass(frozen=True)
class OverdueCheck(_TableCheck):
    """Rows still waiting to be processed (``waiting``, SQL from code) longer than
    ``max_age_minutes`` since ``since_column``: e.g. webhook events pending too long."""

    waiting: str = ""
    since_column: str = ""

    def reads(self):
        return None  # "waiting longer than" changes with the clock alone

    def evaluate(self, stores, start, end, settings):
        minutes = float(settings.max_age_minutes)
        overdue = (f"({self.waiting}) AND {ident(self.since_column)} < now() - "
                   f"make_interval(secs => {minutes * 60:.0f})")
        counts = self._counts(stores, start, end, [f"({self.waiting})", overdue])
        oldest = {_date(r[0]): float(r[1] or 0) for r in self._window_rows(stores, lambda lo, hi: (
            f"SELECT {self._part} AS day, extract(epoch FROM now() - min({ident(self.since_column)})) / 60 "
            f"FROM {self._from()} WHERE {self._filter(lo, hi)} AND ({self.waiting}) GROUP BY 1"), start, end)}
        out = {}
        for day in _days(start, end):
            rows, (waiting, late) = counts.get(day, (0, [0, 0]))
            metadata: dict[str, Any] = {"rows": rows, "waiting": waiting, "overdue": late,
                                        "max_age_minutes": minutes, "oldest_waiting_minutes": round(oldest.get(day, 0.0), 2)}
            if late:
                metadata["sample_keys"] = self._sample(stores, day, overdue, settings.sample_size)
            out[day] = DayResult(not late, metadata, None if not late else
                                 f"{late} row(s) waiting longer than {minutes:g} minutes "
                                 f"(oldest {oldest.get(day, 0.0):.0f} minutes)")
        return out


@dataclass(frozen=True)
class MetricReconciliationCheck(QualityCheck):
    """PostgreSQL vs ClickHouse per day on named metrics, each side computed by its own query
    (``partition_date`` then the metrics, in order, over ``%(start)s``/``%(end)s`` in PostgreSQL and
    ``{start}``/``{end}`` date literals in ClickHouse). Counts must match exactly, money sums
    within the configured tolerance."""

    core_sql: str = ""
    warehouse_sql: str = ""
    counts: tuple[str, ...] = ()
    sums: tuple[str, ...] = ()

    def evaluate(self, stores, start, end, settings):
        names = [*self.counts, *self.sums]
        core = {_date(r[0]): r[1:] for r in stores.pg_rows(self.core_sql, {"start": start, "end": end})}
        warehouse = {_date(r[0]): r[1:] for r in stores.ch_by_day(lambda lo, hi: self.warehouse_sql.format(
            start=_day_literal(lo, "clickhouse"), end=_day_literal(hi, "clickhouse")), start, end)}
        tolerance = float(settings.tolerance or 0)
        empty = (None,) * len(names)
        out = {}
        for day in _days(start, end):
            c, w = core.get(day, empty), warehouse.get(day, empty)
            metadata: dict[str, Any] = {"tolerance": tolerance}
            problems = []
            for i, name in enumerate(names):
                if name in self.counts:
                    cv, wv = int(c[i] or 0), int(w[i] or 0)
                    metadata.update({f"core_{name}": cv, f"warehouse_{name}": wv, f"difference:{name}": wv - cv})
                    if cv != wv:
                        problems.append(f"{name}: core {cv}, warehouse {wv}")
                else:
                    cv, wv = float(c[i] or 0), float(w[i] or 0)
                    metadata.update({f"core_sum:{name}": cv, f"warehouse_sum:{name}": wv, f"sum_difference:{name}": wv - cv})
                    if abs(wv - cv) > tolerance:
                        problems.append(f"sum({name}): core {cv:.4f}, warehouse {wv:.4f}")
            out[day] = DayResult(not problems, metadata, "; ".join(problems) or None)
        return out


# --- factories -----------------------------------------------------------------------------------


def _key(asset_key: dg.AssetKey | Sequence[str] | str) -> dg.AssetKey:
    if isinstance(asset_key, dg.AssetKey):
        return asset_key
    return dg.AssetKey.from_user_string(asset_key) if isinstance(asset_key, str) else dg.AssetKey(list(asset_key))


def completeness_check(asset_key, table: str, required_columns: Sequence[str], *, store: Store = "postgres",
                       where: str | None = None, key_columns: Sequence[str] = (), name: str = "completeness",
                       final: bool = False, blank_is_missing: bool = True) -> CompletenessCheck:
    """Share of rows per partition missing each of ``required_columns`` (NULL or blank) is at most
    ``max_rate`` (``columns.<column>`` overrides per column)."""
    return CompletenessCheck(_key(asset_key), name, "completeness",
                             f"Share of rows missing {', '.join(required_columns)} is within the configured limit.",
                             (store,), table=table, store=store, where=where, key_columns=tuple(key_columns),
                             final=final, columns=tuple(ident(c) for c in required_columns),
                             blank_is_missing=blank_is_missing)


def validity_check(asset_key, table: str, rules: Sequence[ValueRule], *, store: Store = "postgres",
                   where: str | None = None, key_columns: Sequence[str] = (), name: str = "validity",
                   kind: str = "validity", final: bool = False, partition_expr: str | None = None,
                   description: str | None = None) -> ValidityCheck:
    """Formats and allowed values (emails, currency codes, enumerations, dates not in the future)."""
    return ValidityCheck(_key(asset_key), name, kind,
                         description or "Values are valid: " + ", ".join(r.label for r in rules) + ".",
                         (store,), table=table, store=store, where=where, key_columns=tuple(key_columns),
                         final=final, rules=tuple(rules), partition_expr=partition_expr)


def money_check(asset_key, table: str, money_columns: Sequence[str], *, store: Store = "postgres",
                where: str | None = None, key_columns: Sequence[str] = (), name: str = "money_non_negative",
                final: bool = False) -> ValidityCheck:
    """Money columns are not negative: a blocking ERROR by default (it guards warehouse sums)."""
    return validity_check(asset_key, table, [NonNegative(c) for c in money_columns], store=store, where=where,
                          key_columns=key_columns, name=name, kind="money", final=final)


def sql_rule_check(asset_key, rule: SqlRule, *, kind: str = "consistency") -> SqlRuleCheck:
    """A cross-field or cross-table rule in PostgreSQL (see :mod:`kingtavo_pipeline.quality.rules`)."""
    return SqlRuleCheck(_key(asset_key), rule.name, kind, rule.description or rule.name, ("postgres",), rule=rule)


def uniqueness_check(asset_key, table: str, key_columns: Sequence[str], *, where: str | None = None,
                     name: str = "unique_keys", key_is_sorting_key: bool = True) -> UniquenessCheck:
    """Natural keys unique in a ClickHouse ReplacingMergeTree after FINAL and across partitions."""
    return UniquenessCheck(_key(asset_key), name, "uniqueness",
                           f"({', '.join(key_columns)}) is unique after FINAL and across partitions; "
                           "duplicates FINAL hides are a WARN.",
                           ("clickhouse",), table=table, store="clickhouse", where=where,
                           key_columns=tuple(key_columns), key_is_sorting_key=key_is_sorting_key)


def reconciliation_check(asset_key, core_table: str, warehouse_table: str, *, money_columns: Sequence[str] = (),
                         compare_counts: bool = True, name: str = "matches_core") -> ReconciliationCheck:
    """Per partition, PostgreSQL and ClickHouse agree on row counts and money sums."""
    what = (["row counts"] if compare_counts else []) + [f"sum({c})" for c in money_columns]
    return ReconciliationCheck(_key(asset_key), name, "reconciliation",
                               f"PostgreSQL {core_table} and ClickHouse {warehouse_table} agree per partition on "
                               + " and ".join(what) + ".", ("postgres", "clickhouse"),
                               core_table=core_table, warehouse_table=warehouse_table,
                               money_columns=tuple(money_columns), compare_counts=compare_counts)


# Records (not observations) per day of raw_data; ids compared byte-wise, which counts the same
# in any deterministic collation and sorts cheaper than the database's own collation.
DISTINCT_RECORDS = 'count(DISTINCT source_id COLLATE "C")'


def volume_check(asset_key, table: str, *, store: Store = "postgres", where: str | None = None,
                 money_columns: Sequence[str] = (), count_expr: str = "count(*)", name: str = "volume_anomaly",
                 final: bool = False, partition_expr: str | None = None,
                 merchant_filter: tuple[str, str] | None = None) -> VolumeCheck:
    """Rows and money sums per partition within the trailing window's robust range (a day not
    over yet is reported, not judged)."""
    return VolumeCheck(_key(asset_key), name, "volume",
                       "Rows" + "".join(f" and sum({c})" for c in money_columns)
                       + " per partition are not anomalous against the trailing window (robust z-score); "
                       "the current, unfinished day is not judged.",
                       (store,), table=table, store=store, where=where, final=final,
                       money_columns=tuple(money_columns), count_expr=count_expr, partition_expr=partition_expr,
                       merchant_filter=merchant_filter)


def overdue_check(asset_key, table: str, *, waiting: str, since_column: str, partition_expr: str | None = None,
                  key_columns: Sequence[str] = (), name: str = "overdue", where: str | None = None) -> OverdueCheck:
    """Rows waiting (``waiting``) longer than ``max_age_minutes`` (timeliness) per day (PostgreSQL)."""
    return OverdueCheck(_key(asset_key), name, "timeliness",
                        f"No row waits ({waiting}) longer than the configured minutes since {since_column}.",
                        ("postgres",), table=table, store="postgres", where=where, key_columns=tuple(key_columns),
                        partition_expr=partition_expr, waiting=waiting, since_column=since_column)


def metric_reconciliation_check(asset_key, *, core_sql: str, warehouse_sql: str, counts: Sequence[str] = (),
                                sums: Sequence[str] = (), name: str = "matches_core",
                                description: str | None = None) -> MetricReconciliationCheck:
    """Per partition, PostgreSQL and ClickHouse agree on ``counts`` (exactly) and ``sums`` (within
    the tolerance), each side computed by its own query (see :class:`MetricReconciliationCheck`)."""
    return MetricReconciliationCheck(
        _key(asset_key), name, "reconciliation",
        description or "PostgreSQL and ClickHouse agree per partition on " + ", ".join([*counts, *(f"sum({s})" for s in sums)]) + ".",
        ("postgres", "clickhouse"), core_sql=core_sql, warehouse_sql=warehouse_sql, counts=tuple(counts), sums=tuple(sums))


def schema_drift_check(asset_key, source_type: str, source_name: str, expected_fields: Mapping[str, str | None],
                       *, strict: bool = False, name: str = "schema_drift", entity: str | None = None,
                       known_fields: Sequence[str] = (), per_merchant: bool = False) -> SchemaDriftCheck:
    """Raw payload fields vs the mapping (``expected_fields``: key -> JSON type or None;
    ``known_fields``: keys it may read but need not find) and history. ``entity`` narrows to one
    entity of the source; ``per_merchant`` evaluates ``<source_name>/<merchant>`` per partition."""
    return SchemaDriftCheck(_key(asset_key), name, "schema_drift",
                            "No new, missing or retyped fields in raw payloads compared with the mapping and "
                            "earlier partitions.", ("postgres",), source_type=source_type, source_name=source_name,
                            expected=tuple(sorted(expected_fields.items())), strict=strict, entity=entity,
                            known=tuple(sorted(set(known_fields))), per_merchant=per_merchant)


# --- building the Dagster definitions ----------------------------------------------------------------


def _metadata(values: Mapping[str, Any]) -> dict[str, dg.MetadataValue]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            out[key] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            out[key] = dg.MetadataValue.float(value)
        elif isinstance(value, (list, tuple, dict)):
            out[key] = dg.MetadataValue.json(json.loads(json.dumps(value, default=str)))
        else:
            out[key] = dg.MetadataValue.text(str(value))
    return out


def _severity(name: str) -> dg.AssetCheckSeverity:
    return dg.AssetCheckSeverity.ERROR if name == "ERROR" else dg.AssetCheckSeverity.WARN


def enabled_checks(checks: Sequence[QualityCheck], config: QualityConfig) -> list[QualityCheck]:
    return [c for c in checks if config.settings(c.asset_key.to_user_string(), c.name, c.kind).enabled]


def build_checks(name: str, checks: Sequence[QualityCheck], config: QualityConfig,
                 partitions_def: dg.PartitionsDefinition = daily_partitions) -> dg.AssetChecksDefinition:
    """One subsettable ``multi_asset_check`` (op ``name``) running ``checks`` per partition.

    Checks disabled in the quality file are left out. The step runs in the ClickHouse pool when a
    check reads the warehouse (chDB is one process at a time).
    """
    checks = enabled_checks(checks, config)
    if not checks:
        raise ValueError(f"{name}: every check is disabled in {config.origin}")
    settings = {c.key: config.settings(c.asset_key.to_user_string(), c.name, c.kind) for c in checks}
    by_key = {c.key: c for c in checks}
    if len(by_key) != len(checks):
        raise ValueError(f"{name}: two checks share a name on the same asset")
    specs = [
        dg.AssetCheckSpec(
            c.name, asset=c.asset_key, description=f"{c.description} [{c.kind}; {settings[c.key].severity}"
            f"{', blocking' if settings[c.key].blocking else ''}]",
            blocking=bool(settings[c.key].blocking), partitions_def=partitions_def,
            metadata={"quality_kind": c.kind, "severity": settings[c.key].severity},
        )
        for c in checks
    ]
    uses = {s for c in checks for s in c.stores}

    @dg.multi_asset_check(name=name, specs=specs, can_subset=True, pool=CLICKHOUSE_POOL if "clickhouse" in uses else None,
                          description=f"Data-quality checks ({', '.join(sorted({c.kind for c in checks}))}), "
                          "evaluated per daily partition.")
    def _checks(context: dg.AssetCheckExecutionContext, postgres: PostgresResource,
                clickhouse: ClickHouseResource) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
        selected = [by_key[k] for k in sorted(context.selected_asset_check_keys, key=str) if k in by_key]
        found: list[tuple[QualityCheck, str, DayResult]] = []
        if isinstance(partitions_def, dg.MultiPartitionsDefinition):
            # one window per merchant, evaluated on that merchant's rows, reported per (date, merchant)
            for merchant, days in merchant_days(context.partition_keys, partitions_def).items():
                narrowed = [c.for_merchant(merchant) for c in selected]
                results = evaluate_all(context, narrowed, settings, postgres, clickhouse, min(days),
                                       max(days) + dt.timedelta(days=1))
                for check in selected:
                    for day, result in sorted(results[check.key].items()):
                        if day in days:
                            found.append((check, str(multi_key(partitions_def, day, merchant)), result))
        else:
            start, end = (ts.date() for ts in utc_window(context))
            results = evaluate_all(context, selected, settings, postgres, clickhouse, start, end)
            found = [(c, day.isoformat(), result) for c in selected for day, result in sorted(results[c.key].items())]
        for check, partition, result in found:
            spec_settings = settings[check.key]
            yield dg.AssetCheckEvaluation(
                asset_key=check.asset_key,
                check_name=check.name,
                passed=result.passed,
                metadata=_metadata(result.metadata),
                severity=_severity(result.severity or spec_settings.severity),
                description=result.description,
                blocking=bool(spec_settings.blocking),
                partition=partition,
            )
        outputs = {s.key: n for n, s in context.op_execution_context.assets_def.check_specs_by_output_name.items()}
        for check in selected:
            # the step's outputs (what downstream steps wait for); the evaluations above are the results
            yield dg.Output(None, output_name=outputs[check.key])

    return _checks


def _dimensions(partitions_def: dg.MultiPartitionsDefinition) -> tuple[str, str]:
    """(the time dimension's name, the other dimension's name) of a date x merchant definition."""
    time_dim = partitions_def.time_window_dimension.name
    [other] = [d.name for d in partitions_def.partitions_defs if d.name != time_dim]
    return time_dim, other


def merchant_days(partition_keys: Sequence[str], partitions_def: dg.MultiPartitionsDefinition
                  ) -> dict[str, set[dt.date]]:
    """Multi-partition keys of a run -> {merchant: its days}."""
    time_dim, other = _dimensions(partitions_def)
    out: dict[str, set[dt.date]] = {}
    for key in partition_keys:
        dims = (key if isinstance(key, dg.MultiPartitionKey) else dg.MultiPartitionKey.from_str(key)).keys_by_dimension
        out.setdefault(dims[other], set()).add(dt.date.fromisoformat(dims[time_dim]))
    return dict(sorted(out.items()))


def multi_key(partitions_def: dg.MultiPartitionsDefinition, day: dt.date, merchant: str) -> dg.MultiPartitionKey:
    time_dim, other = _dimensions(partitions_def)
    return dg.MultiPartitionKey({time_dim: day.isoformat(), other: merchant})


def _encode(results: Mapping[dt.date, DayResult]) -> dict[str, Any]:
    return {day.isoformat(): {"passed": r.passed, "metadata": dict(r.metadata), "description": r.description,
                              "severity": r.severity} for day, r in results.items()}


def _decode(stored: Mapping[str, Any], evaluated_at: dt.datetime) -> dict[dt.date, DayResult]:
    return {dt.date.fromisoformat(day): DayResult(r["passed"], {**r["metadata"], "evaluated_at": evaluated_at.isoformat()},
                                                  r["description"], r["severity"]) for day, r in stored.items()}


def _evaluate(check: QualityCheck, stores: Stores, start: dt.date, end: dt.date, settings: CheckSettings,
              run_id: str | None) -> tuple[dict[dt.date, DayResult], dt.datetime | None]:
    """The check's verdicts over the window; remembered (``check_memo``) and reused while nothing
    it reads changed, for windows that are over (a day still open changes with the clock)."""
    reads = check.reads()
    if reads is None or end > dt.datetime.now(dt.timezone.utc).date():
        return check.evaluate(stores, start, end, settings), None
    pg = [t for s, t in reads if s == "postgres"]
    ch = [t for s, t in reads if s == "clickhouse"]
    definition = definition_of(check, settings)

    def fingerprint() -> str | None:
        return fingerprint_of(definition, [postgres_fingerprint(stores.postgres, pg) if pg else "",
                                           clickhouse_fingerprint(stores.clickhouse, ch) if ch else ""])

    # one entry per variant of the check too: a check narrowed to each merchant (date x merchant
    # partitions) is remembered once per merchant, not overwritten by the next merchant's
    variant = hashlib.sha256(definition.encode()).hexdigest()[:16]
    return remembered(stores.postgres, f"{check.asset_key.to_user_string()}/{check.name}",
                      f"{start}/{end}#{variant}", fingerprint, lambda: check.evaluate(stores, start, end, settings),
                      encode=_encode, decode=_decode, run_id=run_id)


def evaluate_all(context, checks: Sequence[QualityCheck], settings: Mapping[dg.AssetCheckKey, CheckSettings],
                 postgres: PostgresResource, clickhouse: ClickHouseResource, start: dt.date, end: dt.date
                 ) -> dict[dg.AssetCheckKey, dict[dt.date, DayResult]]:
    """Every selected check over the window, before anything is reported: a store failing half-way
    fails the step instead of leaving some checks reported as passed."""
    results = {}
    names = ", ".join(c.name for c in checks)
    with ExitStack() as stack:
        stores = Stores(postgres, clickhouse, stack)
        run_id = getattr(getattr(context, "run", None), "run_id", None)
        for check in checks:
            try:
                results[check.key], reused = _evaluate(check, stores, start, end, settings[check.key], run_id)
                if reused is not None:
                    context.log.info(f"{check.asset_key.to_user_string()}/{check.name} [{start}, {end}): nothing it "
                                     f"reads changed since its evaluation at {reused:%Y-%m-%d %H:%M:%S} UTC; that verdict stands")
            except StoreUnavailableError as exc:
                raise dg.Failure(
                    description=f"quality checks [{names}] could not reach their store: {exc}",
                    metadata={"check": check.name, "asset": check.asset_key.to_user_string()},
                ) from None
            except Exception as exc:  # noqa: BLE001 - a query that failed is a check that did not run
                raise dg.Failure(
                    description=f"quality check {check.asset_key.to_user_string()}/{check.name} could not run: "
                    f"{describe_error(exc, limit=1000)}",
                    metadata={"check": check.name, "asset": check.asset_key.to_user_string()},
                ) from exc
    return results
