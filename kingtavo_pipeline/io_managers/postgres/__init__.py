"""PostgreSQL IO manager on Dagster's ``DbIOManager`` framework.

One output is one transaction: ``DbIOManager.handle_output`` opens :meth:`PostgresDbClient.connect`
(a psycopg connection inside :meth:`PostgresStore.transaction`), deletes the slice, and the type
handler COPYs the new rows; both commit together, so a failure anywhere leaves the old rows.

Types: pandas ``DataFrame``, ``pyarrow.Table`` and, for slices too large to hold at once,
``pyarrow.RecordBatchReader``. An input annotated ``pa.RecordBatchReader`` streams the slice out
through ``COPY ... TO STDOUT`` in batches of at most ``batch_rows`` rows (IO manager config), on a
connection of its own that is released when the reader is exhausted or closed. An output may be
a ``RecordBatchReader`` or any iterator of ``pa.RecordBatch``/``pa.Table`` (one schema): each part
is COPYed as it comes, in the one transaction. (Return a generator as ``dg.Output(generator)``:
Dagster takes a bare returned generator for a stream of events.)

Asset definition metadata the IO manager reads:

``partition_expr``
    SQL expression (usually a column) holding the partition value; a ``{dimension: expr}`` mapping
    for multi-partitioned assets. A time window is compared according to the expression's type:
    a ``date`` against the window's dates in the partitions' time zone (the day 2024-01-01 of a
    partitions definition in America/New_York is ``date '2024-01-01'``), ``timestamptz`` as
    instants, ``timestamp`` (no zone) as UTC, an integer as ``YYYYMMDD``. Static and dynamic keys
    compare as ``expr IN ('a', 'b')``. An expression such as ``(event_time::date)`` works as well
    as a column.
``schema``
    Overrides the IO manager's ``schema`` config for this asset.
``columns`` (on an input)
    Load only these columns.
``write_mode``
    ``"replace"`` (default): delete the slice, COPY the rows. ``"upsert"``: no delete; rows go
    through :func:`kingtavo_pipeline.storage.upsert.upsert` keyed on ``upsert_keys`` (required),
    guarded by ``version_column`` (default ``"updated_at"``; ``None`` for no version guard), so an
    older version never overwrites a newer one.

A missing table is created from the Arrow schema (plus an index on plain partition columns, and in
upsert mode a unique constraint on the keys). Columns are never added: an output with columns the
table lacks fails with an error naming them. Loading a table that does not exist yet (the first
partition of an asset that reads its own previous partition) gives an empty result: no rows, and
the input's ``columns`` (typed ``null``) if it names any, else no columns.

Output metadata: ``dagster/partition_row_count`` is each partition's own row count, counted in
the written slice inside the transaction (see
:func:`~kingtavo_pipeline.io_managers.slices.partition_count_metadata` for ranges);
``dagster/row_count`` is reported only where it is free and exact (an unpartitioned replace:
the rows written). Elsewhere counting the table would cost a scan on every write, so
``row_count_estimate`` carries PostgreSQL's planner estimate (``pg_class.reltuples``) once the
table has been analyzed.
"""

from kingtavo_pipeline.io_managers.postgres.ddl import create_table, postgres_type, table_columns
from kingtavo_pipeline.io_managers.postgres.manager import (
    PostgresArrowTypeHandler,
    PostgresDbClient,
    PostgresIOManager,
    PostgresPandasTypeHandler,
    PostgresStreamTypeHandler,
    store_for,
)
from kingtavo_pipeline.io_managers.postgres.query import count_slice, slice_kinds, slice_where
from kingtavo_pipeline.io_managers.postgres.read import STREAM_DECIMAL, read_arrow, stream_arrow
from kingtavo_pipeline.io_managers.postgres.write import (
    DEFAULT_VERSION_COLUMN,
    WRITE_MODE_REPLACE,
    WRITE_MODE_UPSERT,
    upsert_options,
    write_arrow,
    write_mode,
    write_parts,
)

__all__ = [
    # the IO manager (manager.py)
    "PostgresIOManager",
    "PostgresDbClient",
    "PostgresArrowTypeHandler",
    "PostgresPandasTypeHandler",
    "PostgresStreamTypeHandler",
    "store_for",
    # asset metadata and writes (write.py)
    "WRITE_MODE_REPLACE",
    "WRITE_MODE_UPSERT",
    "DEFAULT_VERSION_COLUMN",
    "write_mode",
    "upsert_options",
    "write_arrow",
    "write_parts",
    # reads (read.py)
    "read_arrow",
    "stream_arrow",
    "STREAM_DECIMAL",
    # slices in SQL (query.py)
    "slice_kinds",
    "slice_where",
    "count_slice",
    # tables (ddl.py)
    "postgres_type",
    "table_columns",
    "create_table",
]
