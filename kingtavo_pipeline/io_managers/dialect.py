"""How a partition slice is written in a store's SQL, whatever the store: the WHERE condition
selecting it and the SELECT of it. A :class:`Dialect` says how the store composes SQL (plain
strings for ClickHouse, psycopg's ``sql.Composable`` for PostgreSQL) and writes its literals; what
is specific to a store (which kinds its expressions have, how it counts, its DDL) stays in its
package."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from dagster._core.definitions.partitions.utils import TimeWindow
from dagster._core.storage.db_io_manager import TableSlice

Q = TypeVar("Q")  # the store's SQL: str, or a psycopg Composable


@dataclass(frozen=True)
class Dialect(Generic[Q]):
    """A store's way of writing SQL pieces of type ``Q``.

    ``partition_expr`` is trusted code from the asset definition (a column or an expression) and
    goes in as SQL text; partition keys and window boundaries always go in as escaped literals.
    """

    text: Callable[[str], Q]  # trusted SQL text
    format: Callable[..., Q]  # a template whose ``{}`` take the pieces in order
    join: Callable[[str, Iterable[Q]], Q]  # pieces with a separator between them
    identifier: Callable[[str], Q]  # a quoted column name
    boundary: Callable[[str | None, datetime], Q]  # a window boundary for an expression of a kind
    key: Callable[[str], Q]  # a partition key as a string literal
    false: str  # the condition no row meets

    def expr(self, partition_expr: str) -> Q:
        """A partition expression, parenthesized so that any expression compares as one value."""
        return self.format("({})", self.text(partition_expr))

    def where(self, table_slice: TableSlice, kinds: Sequence[str | None] | None = None) -> Q | None:
        """The WHERE condition selecting the slice, or ``None`` for an unpartitioned asset.

        ``kinds`` (from the store's ``slice_kinds``) says how each time window compares; without it
        windows compare as instants. A window is ``[start, end)``; keys compare as ``expr IN (...)``.
        """
        conditions: list[Q] = []
        for i, dim in enumerate(table_slice.partition_dimensions or []):
            expr = self.expr(dim.partition_expr)
            if isinstance(dim.partitions, TimeWindow):
                kind = kinds[i] if kinds else None
                start, end = self.boundary(kind, dim.partitions.start), self.boundary(kind, dim.partitions.end)
                conditions.append(self.format("{} >= {} AND {} < {}", expr, start, expr, end))
            else:
                keys = [self.key(str(k)) for k in dim.partitions]
                conditions.append(self.format("{} IN ({})", expr, self.join(", ", keys)) if keys else self.text(self.false))
        if not conditions:
            return None
        return self.join(" AND ", [self.format("({})", c) for c in conditions])

    def column_list(self, columns: Sequence[str] | None) -> Q:
        """The columns as a select list; ``*`` when none are named."""
        return self.join(", ", [self.identifier(c) for c in columns]) if columns else self.text("*")

    def filtered(self, statement: Q, table_slice: TableSlice, kinds: Sequence[str | None] | None = None) -> Q:
        """``statement`` restricted to the slice (a WHERE added unless the asset is unpartitioned)."""
        where = self.where(table_slice, kinds)
        return statement if where is None else self.format("{} WHERE {}", statement, where)

    def select(
        self,
        table_slice: TableSlice,
        source: Q,
        select_list: Q | None = None,
        kinds: Sequence[str | None] | None = None,
    ) -> Q:
        """``SELECT`` of the slice from ``source``: ``select_list``, else the slice's ``columns``."""
        if select_list is None:
            select_list = self.column_list(table_slice.columns)
        return self.filtered(self.format("SELECT {} FROM {}", select_list, source), table_slice, kinds)

