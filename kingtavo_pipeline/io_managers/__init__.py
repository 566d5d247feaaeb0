"""Dagster IO managers for the operational store (PostgreSQL) and the warehouse (ClickHouse).

Both are built on Dagster's ``DbIOManager`` framework and store pandas DataFrames and Arrow tables
(``pyarrow.Table``) one table per asset, replacing a partition atomically:

* :class:`PostgresIOManager`: DELETE of the slice and COPY of the new rows in one transaction, or
  a guarded upsert for core tables (``write_mode: "upsert"``).
* :class:`ClickHouseIOManager`: REPLACE/DROP PARTITION from a stage table, never a mutation.

Asset metadata conventions (see the modules for detail):

==================  =====================================================================
``partition_expr``  column/expression of the partition value; ``{dimension: expr}`` for multi
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
    PartitionLayoutError,
)
from kingtavo_pipeline.io_managers.postgres import (
    PostgresArrowTypeHandler,
    PostgresDbClient,
    PostgresIOManager,
    PostgresPandasTypeHandler,
)

__all__ = [
    "ClickHouseArrowTypeHandler",
    "ClickHouseDbClient",
    "ClickHouseIOManager",
    "ClickHousePandasTypeHandler",
    "PartitionLayoutError",
    "PostgresArrowTypeHandler",
    "PostgresDbClient",
    "PostgresIOManager",
    "PostgresPandasTypeHandler",
]
