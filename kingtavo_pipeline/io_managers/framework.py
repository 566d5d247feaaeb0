"""What both IO managers share on Dagster's ``DbIOManager`` framework, whatever the store.

One family of type handlers over a store's three operations on a slice (write its parts, read it
as an Arrow table, stream it as a ``RecordBatchReader``): ``pyarrow.Table``, pandas ``DataFrame``
(through Arrow; the index is not stored), and streams in (``RecordBatchReader``) and out (a reader,
or an iterator of ``RecordBatch``/``Table``). A store's handlers are these classes with the store's
:class:`SliceOperations` mixed in front, e.g.
``class PostgresArrowTypeHandler(PostgresOperations, ArrowTypeHandler)``.

And :class:`SliceDbClient`, the part of a ``DbClient`` that remembers how a written slice's time
windows compared, for the "Query" metadata Dagster shows.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import pandas as pd
import pyarrow as pa
from dagster import InputContext, OutputContext
from dagster._core.storage.db_io_manager import DbClient, DbTypeHandler, TableSlice

from kingtavo_pipeline.io_managers.slices import DEFAULT_BATCH_ROWS, output_parts, slice_id, slice_name
from kingtavo_pipeline.storage.errors import row_data_kept_out
from kingtavo_pipeline.storage.postgres import to_arrow

T = TypeVar("T")
C = TypeVar("C")  # the store's connection


class SliceOperations:
    """A store's operations on a slice, which its type handlers call (each store mixes its own in)."""

    batch_rows: int = DEFAULT_BATCH_ROWS

    def write_parts(
        self,
        context: OutputContext,
        table_slice: TableSlice,
        schema: pa.Schema | None,
        parts: Iterator[pa.Table],
        connection: Any,
    ) -> dict[str, Any]:
        """Write the parts into the slice (``schema`` is ``None`` only for an output without parts);
        returns the output metadata."""
        raise NotImplementedError

    def read_arrow(self, context: InputContext, table_slice: TableSlice, connection: Any) -> pa.Table:
        """The slice as one Arrow table; an empty one when the table does not exist yet."""
        raise NotImplementedError

    def stream_arrow(self, context: InputContext, table_slice: TableSlice, connection: Any) -> pa.RecordBatchReader:
        """The slice as a reader of batches of at most ``batch_rows`` rows, on a connection of its
        own (the IO manager's closes when ``load_input`` returns)."""
        raise NotImplementedError


class ArrowTypeHandler(SliceOperations, DbTypeHandler[pa.Table]):
    """Writes and loads ``pyarrow.Table`` slices."""

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pa.Table]

    # a database error leaves the IO manager as DatabaseError: Dagster's event log gets no row values
    def handle_output(self, context: OutputContext, table_slice: TableSlice, obj: Any, connection: Any) -> Mapping[str, Any]:
        arrow = to_arrow(obj)
        with row_data_kept_out():
            return self.write_parts(context, table_slice, arrow.schema, iter([arrow]), connection)

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: Any) -> Any:
        with row_data_kept_out():
            return self.read_arrow(context, table_slice, connection)


class PandasTypeHandler(ArrowTypeHandler):
    """Writes and loads ``pandas.DataFrame`` slices, through Arrow (the index is not stored)."""

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pd.DataFrame]

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: Any) -> pd.DataFrame:
        return super().load_input(context, table_slice, connection).to_pandas()


class StreamTypeHandler(SliceOperations, DbTypeHandler[pa.RecordBatchReader]):
    """Streams: loads a ``pyarrow.RecordBatchReader``; writes a ``RecordBatchReader`` or an iterator
    of ``RecordBatch``/``Table`` (one schema), part by part as it comes."""

    @property
    def supported_types(self) -> Sequence[type[object]]:
        return [pa.RecordBatchReader, collections.abc.Iterator]

    def handle_output(self, context: OutputContext, table_slice: TableSlice, obj: Any, connection: Any) -> Mapping[str, Any]:
        with row_data_kept_out():
            schema, parts = output_parts(obj)
            return self.write_parts(context, table_slice, schema, parts, connection)

    def load_input(self, context: InputContext, table_slice: TableSlice, connection: Any) -> pa.RecordBatchReader:
        with row_data_kept_out():  # (its later batches fail in the consumer: see postgres/read.py)
            return self.stream_arrow(context, table_slice, connection)


class SliceDbClient(DbClient[C]):
    """Remembers, per table, how its time windows compared in the last write (the "Query" metadata
    that ``get_select_statement`` gives is asked for after the connection has closed)."""

    def __init__(self) -> None:
        self._written_kinds: dict[tuple, list[str | None]] = {}

    def remember_kinds(self, table_slice: TableSlice, kinds: list[str | None]) -> None:
        self._written_kinds[slice_id(table_slice)] = kinds

    def written_kinds(self, table_slice: TableSlice) -> list[str | None] | None:
        return self._written_kinds.get(slice_id(table_slice))

    @staticmethod
    def get_table_name(table_slice: TableSlice) -> str:
        return slice_name(table_slice)
