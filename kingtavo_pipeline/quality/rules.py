"""Validity and completeness rules, and cross-table consistency rules, as SQL for the stores.

A rule is evaluated where the data lives (PostgreSQL or ClickHouse), so a check counts violations
per partition without pulling rows into Python. Each value rule also has a Python form
(:meth:`ValueRule.is_valid`) for payload samples and unit tests; both forms come from the same
constants (pattern, code list) so they cannot drift apart.

Conventions: a value rule never flags NULL (missing values are completeness's business); SQL
identifiers come from code and are checked by :func:`ident`; literals are quoted by
:func:`sql_literal`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Literal

Dialect = Literal["postgres", "clickhouse"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

# Pragmatic address syntax (what a mailer accepts in practice); RE2, POSIX ARE and Python agree on it.
EMAIL_PATTERN = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$"

# ISO 4217 active alphabetic codes (incl. funds and precious-metal codes in use by payment APIs).
ISO_4217: frozenset[str] = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP
    BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR
    FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS
    KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN
    MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR
    SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD
    USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU
    XTS XUA XXX YER ZAR ZMW ZWG ZWL""".split()
)


def ident(name: str) -> str:
    """``name`` if it is a plain (optionally schema-qualified) SQL identifier, else ValueError."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def sql_literal(value: object) -> str:
    """A SQL literal both dialects read the same way (strings with '' and \\\\ escaped)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    text = str(value).replace("\\", "\\\\").replace("'", "''")
    return f"'{text}'"


def _text(column: str, dialect: Dialect) -> str:
    return f"{column}::text" if dialect == "postgres" else f"toString({column})"


def _now(dialect: Dialect) -> str:
    return "now()" if dialect == "postgres" else "now64(6, 'UTC')"


def _plus_seconds(expr: str, seconds: int, dialect: Dialect) -> str:
    return f"({expr} + interval '{int(seconds)} seconds')" if dialect == "postgres" else f"({expr} + INTERVAL {int(seconds)} SECOND)"


def _regex(column: str, pattern: str, dialect: Dialect) -> str:
    if dialect == "postgres":
        # an escape string: sql_literal doubles backslashes, which E'' reads back as one
        return f"({_text(column, dialect)} ~ E{sql_literal(pattern)})"
    return f"match({_text(column, dialect)}, {sql_literal(pattern)})"


# --- value rules (validity) ----------------------------------------------------------------------


@dataclass(frozen=True)
class ValueRule:
    """One column's validity rule. ``label`` names it in metadata (``email:customer_email``)."""

    column: str
    kind: str = field(default="value", init=False)

    def __post_init__(self) -> None:
        ident(self.column)

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.column}"

    def valid_sql(self, dialect: Dialect) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def violation_sql(self, dialect: Dialect) -> str:
        """True for a present value that breaks the rule (NULL is never a violation here)."""
        return f"({self.column} IS NOT NULL AND NOT {self.valid_sql(dialect)})"

    def is_valid(self, value: object) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Email(ValueRule):
    kind: str = field(default="email", init=False)

    def valid_sql(self, dialect: Dialect) -> str:
        return _regex(self.column, EMAIL_PATTERN, dialect)

    def is_valid(self, value: object) -> bool:
        return value is None or bool(re.match(EMAIL_PATTERN, str(value)))


@dataclass(frozen=True)
class CurrencyCode(ValueRule):
    """An ISO 4217 alphabetic code, upper case as the standard writes it."""

    kind: str = field(default="currency", init=False)

    def valid_sql(self, dialect: Dialect) -> str:
        return f"({_text(self.column, dialect)} IN ({', '.join(sql_literal(c) for c in sorted(ISO_4217))}))"

    def is_valid(self, value: object) -> bool:
        return value is None or str(value) in ISO_4217


@dataclass(frozen=True)
class NonNegative(ValueRule):
    """Money (or a count) that must not be negative."""

    kind: str = field(default="non_negative", init=False)

    def valid_sql(self, dialect: Dialect) -> str:
        return f"({self.column} >= 0)"

    def is_valid(self, value: object) -> bool:
        if value is None:
            return True
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return False
        return number.is_finite() and number >= 0


@dataclass(frozen=True)
class NotInFuture(ValueRule):
    """A timestamp no later than now plus ``skew_seconds`` (clocks of sources are not ours)."""

    skew_seconds: int = 300
    kind: str = field(default="not_in_future", init=False)

    def valid_sql(self, dialect: Dialect) -> str:
        return f"({self.column} <= {_plus_seconds(_now(dialect), self.skew_seconds, dialect)})"

    def is_valid(self, value: object, now: dt.datetime | None = None) -> bool:
        if value is None:
            return True
        if not isinstance(value, dt.datetime):
            try:
                value = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            except ValueError:
                return False
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        limit = (now or dt.datetime.now(dt.timezone.utc)) + dt.timedelta(seconds=self.skew_seconds)
        return value <= limit


@dataclass(frozen=True)
class OneOf(ValueRule):
    """An enumeration: the value is one of ``allowed`` (compared as text)."""

    allowed: tuple[str, ...] = ()
    kind: str = field(default="one_of", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.allowed:
            raise ValueError(f"one_of:{self.column} needs at least one allowed value")

    def valid_sql(self, dialect: Dialect) -> str:
        return f"({_text(self.column, dialect)} IN ({', '.join(sql_literal(v) for v in self.allowed)}))"

    def is_valid(self, value: object) -> bool:
        return value is None or str(value) in self.allowed


@dataclass(frozen=True)
class Matches(ValueRule):
    """A format given as a regular expression (RE2 and POSIX syntax in common, e.g. ``^https?://``)."""

    pattern: str = ""
    kind: str = field(default="matches", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        re.compile(self.pattern)

    def valid_sql(self, dialect: Dialect) -> str:
        return _regex(self.column, self.pattern, dialect)

    def is_valid(self, value: object) -> bool:
        return value is None or bool(re.search(self.pattern, str(value)))


@dataclass(frozen=True)
class Predicate(ValueRule):
    """A row-level condition written in SQL by code (never from data), named for metadata:
    ``Predicate("status", "failed", "status = 'failed'")`` counts failed rows as ``failed:status``.
    Rows where ``violation`` holds are the violations; it should read the same in both dialects
    (or be used with one store only)."""

    name: str = ""
    violation: str = ""
    kind: str = field(default="predicate", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        ident(self.name)
        if not self.violation.strip():
            raise ValueError(f"predicate {self.name}: the violation condition is empty")

    @property
    def label(self) -> str:
        return f"{self.name}:{self.column}"

    def valid_sql(self, dialect: Dialect) -> str:
        return f"(NOT ({self.violation}))"

    def violation_sql(self, dialect: Dialect) -> str:
        return f"({self.column} IS NOT NULL AND ({self.violation}))"

    def is_valid(self, value: object) -> bool:  # evaluated in the store only
        raise NotImplementedError("a predicate rule is evaluated in the store")


# --- completeness ----------------------------------------------------------------------------------


def missing_sql(column: str, dialect: Dialect, *, blank_is_missing: bool = True) -> str:
    """True when ``column`` holds no value: NULL, or (text columns) only whitespace."""
    ident(column)
    if not blank_is_missing:
        return f"({column} IS NULL)"
    if dialect == "postgres":
        return f"({column} IS NULL OR btrim({column}::text) = '')"
    return f"({column} IS NULL OR trimBoth(toString({column})) = '')"


def null_rate(missing: int, rows: int) -> float:
    """Share of rows missing a value; an empty partition has nothing missing."""
    return float(missing) / rows if rows else 0.0


# --- consistency rules (PostgreSQL) ----------------------------------------------------------------
#
# A consistency rule is a query returning the violating rows of a date range: columns
# ``partition_date`` and ``key`` (text identifying the record, sampled into metadata), with the
# parameters %(start)s and %(end)s (dates, end exclusive) and any of its own.


@dataclass(frozen=True)
class SqlRule:
    """A named consistency rule: ``violations_sql`` selects ``partition_date, key`` of bad rows."""

    name: str
    violations_sql: str
    params: tuple[tuple[str, object], ...] = ()
    description: str = ""
    # the tables violations_sql reads: a verdict is reused while none of them changed (empty: never)
    tables: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ident(self.name)
        for needed in ("%(start)s", "%(end)s"):
            if needed not in self.violations_sql:
                raise ValueError(f"rule {self.name}: violations_sql must filter the range with {needed}")


def _key_expr(alias: str, columns: Sequence[str]) -> str:
    return " || '/' || ".join(f"coalesce({alias}.{ident(c)}::text, '')" for c in columns)


def reference_exists_rule(
    name: str,
    *,
    child_table: str,
    child_columns: Sequence[str],
    parent_table: str,
    parent_columns: Sequence[str],
    child_key: Sequence[str],
    partition_column: str = "partition_date",
    description: str = "",
    child_where: str | None = None,
) -> SqlRule:
    """Every child row's reference (``child_columns``) names an existing parent row
    (``parent_columns``): "every order line has its order", "every order's customer exists".
    A NULL reference is not checked (make it required with completeness). ``child_where`` (SQL
    from code, child alias ``c``) narrows the rows checked, e.g. to sources that pull the parent."""
    if len(child_columns) != len(parent_columns) or not child_columns:
        raise ValueError(f"rule {name}: child_columns and parent_columns must pair up")
    on = " AND ".join(f"p.{ident(pc)} = c.{ident(cc)}" for cc, pc in zip(child_columns, parent_columns))
    present = " AND ".join(f"c.{ident(cc)} IS NOT NULL" for cc in child_columns)
    sql = (
        f"SELECT c.{ident(partition_column)} AS partition_date, {_key_expr('c', child_key)} AS key "
        f"FROM {ident(child_table)} c "
        f"WHERE c.{partition_column} >= %(start)s AND c.{partition_column} < %(end)s AND {present} "
        + (f"AND ({child_where}) " if child_where else "")
        + f"AND NOT EXISTS (SELECT 1 FROM {ident(parent_table)} p WHERE {on})"
    )
    return SqlRule(name, sql, tables=(child_table, parent_table), description=description or
                   f"every {child_table} row's ({', '.join(child_columns)}) exists in {parent_table}")


def sum_matches_rule(
    name: str,
    *,
    parent_table: str,
    parent_key: Sequence[str],
    parent_amount: str,
    child_table: str,
    child_key: Sequence[str],
    child_amount: str,
    tolerance: float = 0.01,
    partition_column: str = "partition_date",
    description: str = "",
) -> SqlRule:
    """A parent's amount equals the sum of its children's within ``tolerance`` (absolute):
    "order total = sum of its lines". A parent with no children sums to 0."""
    if len(parent_key) != len(child_key) or not parent_key:
        raise ValueError(f"rule {name}: parent_key and child_key must pair up")
    join = " AND ".join(f"l.{ident(ck)} = p.{ident(pk)}" for pk, ck in zip(parent_key, child_key))
    sql = (
        f"SELECT p.{ident(partition_column)} AS partition_date, {_key_expr('p', parent_key)} AS key "
        f"FROM {ident(parent_table)} p "
        f"LEFT JOIN LATERAL (SELECT sum(l.{ident(child_amount)}) AS total FROM {ident(child_table)} l WHERE {join}) s ON true "
        f"WHERE p.{partition_column} >= %(start)s AND p.{partition_column} < %(end)s "
        f"AND abs(coalesce(p.{ident(parent_amount)}, 0) - coalesce(s.total, 0)) > %(tolerance)s"
    )
    return SqlRule(name, sql, params=(("tolerance", tolerance),), tables=(parent_table, child_table),
                   description=description or
                   f"{parent_table}.{parent_amount} equals the sum of {child_table}.{child_amount} within {tolerance}")
