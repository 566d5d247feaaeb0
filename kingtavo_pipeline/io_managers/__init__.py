"""Dagster IO managers for the operational store (PostgreSQL) and the warehouse (ClickHouse).

Both are built on Dagster's ``DbIOManager`` framework and store pandas DataFrames and Arrow tables
(``pyarrow.Table``) one table per asset, replacing a partition atomically, and stream
``pyarrow.RecordBatchReader`` in (batches of at most ``batch_rows`` rows) and out (a reader, or an
iterator of ``RecordBatch``/``Table``):

* :class:`PostgresIOManager`: DELETE of the slice and COPY of the new rows in one transaction, or
  a guarded upsert for core tables (``write_mode: "upsert"``).
* :class:`ClickHouseIOManager`: REPLACE/DROP PARTITION from a stage table, never a mutation; an
  output whose values the table's column types cannot hold is refused (:class:`ColumnTypeError`).

What does not depend on the store (how time windows compare, per-partition counts, streaming
plumbing) lives in :mod:`kingtavo_pipeline.io_managers.slices`; each store's module keeps its SQL.

A time window compares with ``partition_expr`` by the expression's type: dates as dates in the
partitions' time zone, timestamps as instants, integers as ``YYYYMMDD``. Loading a table that does
not exist yet gives an empty result. Each written partition's row count is reported as its own
``dagster/partition_row_count``.

Asset metadata conventions (see the modules for detail):

==================  =====================================================================
``partition_expr``  column or SQL expression of the partition value; ``{dimension: expr}`` for multi
``schema``          PostgreSQL schema / ClickHouse database overriding the IO manager's config
``columns``         on an input: load only these columns
``write_mode``      PostgreSQL: ``"replace"`` (default) or ``"upsert"``
``upsert_keys``     PostgreSQL upsert: the unique key columns (required with ``"upsert"``)
``version_column``  PostgreSQL upsert: newer-wins column, default ``"updated_at"``; ``None`` disables
``order_by``        ClickHouse: ORDER BY (dedup key) for a table the IO manager creates (required then)
==================  =====================================================================
"""

from kingtavo_pipeline.io_managers.clickhouse import (
    ClickHouseArrowTypeHandler,
    ClickHouseDbClient,
    ClickHouseIOManager,
    ClickHousePandasTypeHandler,
    ClickHouseStreamTypeHandler,
    ColumnTypeError,
    PartitionLayoutError,
)
from kingtavo_pipeline.io_managers.postgres import (
    PostgresArrowTypeHandler,
    PostgresDbClient,
    PostgresIOManager,
    PostgresPandasTypeHandler,
    PostgresStreamTypeHandler,
)

__all__ = [
    "ClickHouseArrowTypeHandler",
    "ClickHouseDbClient",
    "ClickHouseIOManager",
    "ClickHousePandasTypeHandler",
    "ClickHouseStreamTypeHandler",
    "ColumnTypeError",
    "PartitionLayoutError",
    "PostgresArrowTypeHandler",
    "PostgresDbClient",
    "PostgresIOManager",
    "PostgresPandasTypeHandler",
    "PostgresStreamTypeHandler",
]
