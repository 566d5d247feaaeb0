"""Dagster IO managers for the operational store (PostgreSQL) and the warehouse (ClickHouse).

Both are built on Dagster's ``DbIOManager`` framework and store pandas DataFrames and Arrow tables
(``pyarrow.Table``) one table per asset, replacing a partition atomically, and stream
``pyarrow.RecordBatchReader`` in (batches of at most ``batch_rows`` rows) and out (a reader, or an
iterator of ``RecordBatch``/``Table``):

* :class:`PostgresIOManager`: DELETE of the slice and COPY of the new rows in one transaction, or
  a guarded upsert for core tables (``write_mode: "upsert"``).
* :class:`ClickHouseIOManager`: REPLACE/DROP PARTITION from a stage table, never a mutation; an
  output whose values the table's column types cannot hold is refused (:class:`ColumnTypeError`).

What does not depend on the store lives in shared modules: :mod:`~kingtavo_pipeline.io_managers.slices`
(how time windows compare, per-partition counts, the checks of an output against its table and
slice, streaming plumbing), :mod:`~kingtavo_pipeline.io_managers.dialect` (a slice's WHERE and
SELECT, written in either store's SQL) and :mod:`~kingtavo_pipeline.io_managers.framework` (the
type handlers over a store's write, read and stream, and the DbClient's bookkeeping). Each store's
package keeps its SQL, split by concern: ``query`` (slices in its SQL), ``ddl`` (its tables),
``write``, ``read`` and ``manager`` (DbClient, type handlers, IO manager); ClickHouse adds
``checks`` (an output against its column types).

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
