"""ClickHouse IO manager on Dagster's ``DbIOManager`` framework: partition-scoped atomic replace.

Writing a slice never runs ``ALTER TABLE ... DELETE`` (a mutation). The type handler writes the new
rows into a fresh stage table (``CREATE TABLE <db>.<table>__stage_<hex> AS <db>.<table>``) in
inserts of at most ``batch_rows`` rows, counts them per partition of the slice (one ``GROUP BY``
over the stage, which also finds rows outside the slice), then per ClickHouse partition id:

* ``ALTER TABLE target REPLACE PARTITION ID '<id>' FROM stage`` for every id the new rows fill
  (atomic per partition: readers see the old rows or the new ones, never a mix);
* ``ALTER TABLE target DROP PARTITION ID '<id>'`` for every id of the slice the new rows leave
  empty (REPLACE refuses an empty source).

Before touching anything it verifies that the target's rows in those partition ids all lie inside
the slice; if not, the table's ``PARTITION BY`` is coarser than the asset's partitions and the
write fails instead of destroying neighbouring data. The stage table is dropped in ``finally``
(a ``__stage_`` table left by a killed process is safe to drop). An insert into the stage may span
any number of partitions (``max_partitions_per_insert_block`` is lifted for it: a single-run
backfill of 400 days is one slice, and the stage is private until the checks pass); memory stays
bounded by ``batch_rows``, not by the number of partitions.

Before the stage is written, the output's columns are checked against the table's types: a
value ClickHouse would turn into NULL or a default (text into ``Int64``, a timestamp into an
integer, a fractional float into an integer, NULL into a non-Nullable ORDER BY/PARTITION BY
column) fails the write with an error naming the columns, and the old partitions stay.

Types: pandas ``DataFrame``, ``pyarrow.Table`` and ``pyarrow.RecordBatchReader``. An input
annotated ``pa.RecordBatchReader`` is read one partition of the slice at a time (through
``query_arrow_stream``, which streams from a server; chDB hands each query over whole) in batches
of at most ``batch_rows`` rows, on a client of its own that is closed when the reader is exhausted
or closed. An output may be a ``RecordBatchReader`` or any iterator of ``RecordBatch``/``Table``
(a generator returned as ``dg.Output(generator)``): each part goes into the stage as it comes.

The DbIOManager "schema" is the ClickHouse database (the IO manager's ``database`` config, or
asset metadata ``schema``), whatever the asset key prefix.

``partition_expr`` is a column or an SQL expression (``toDate(event_time)``,
``toYYYYMMDD(ts)``). A time window compares by the expression's type: ``Date``/``Date32`` against
the window's dates in the partitions' time zone, ``DateTime``/``DateTime64`` as instants, an
integer as ``YYYYMMDD``.

Tables come from our DDL: a table created by ``sql/clickhouse`` migrations is used as it is. A
missing one is created from the Arrow schema:

* ``ENGINE = ReplacingMergeTree(_version)``;
* ``ORDER BY`` from asset metadata ``order_by`` (a column list or one expression), **required** to
  create a table: it is the deduplication key of ReplacingMergeTree, so there is no safe default.
  The PARTITION BY expressions are put in front of it (``ORDER BY (toDate(day), shop, id)`` for
  ``order_by: [shop, id]``), because ``SELECT ... FINAL`` deduplicates *across* partitions: without
  them, rows of two days sharing ``(shop, id)`` would collapse into one. (A table that should
  deduplicate across partitions, like ``unified_items``, is created by a migration.);
* ``PARTITION BY`` following the asset's partitions: a daily (or coarser) time window ->
  ``toDate(expr)`` (``toDate(expr, '<tz>')`` for a timestamp; the expression itself when it is
  already a ``YYYYMMDD`` integer), an hourly one -> ``toStartOfHour(expr, '<tz>')``;
  static/dynamic -> ``expr``; multi-dimensional -> a tuple of those; unpartitioned -> none;
* column types mapped from Arrow, ``Nullable`` where the field is nullable, except the columns
  that ORDER BY and ``partition_expr`` name or their expressions use (ClickHouse keys cannot be
  Nullable); timestamps are stored as ``DateTime64(p, tz)`` with naive timestamps taken as UTC;
  structs and maps are stored as JSON text.

``_version UInt64`` is set to ``time.time_ns()`` on write when the output lacks it, and left out on
load unless the input's ``columns`` metadata asks for it. Loads read ``FINAL``; loading a table
that does not exist yet gives an empty result (the input's ``columns``, typed null, if it names
any, else no columns).

Output metadata: ``dagster/partition_row_count`` is each partition's rows written (see
:func:`~kingtavo_pipeline.io_managers.slices.partition_count_metadata` for ranges);
``dagster/row_count`` is the rows stored in the table's active parts (``system.parts``), read
without scanning: duplicates that ``FINAL`` would collapse are still counted.
"""

from kingtavo_pipeline.io_managers.clickhouse.checks import ColumnTypeError, check_types, check_values, conform
from kingtavo_pipeline.io_managers.clickhouse.ddl import (
    VERSION_COLUMN,
    PartitionLayoutError,
    TableInfo,
    clickhouse_type,
    create_table_ddl,
    order_by_columns,
    partition_buckets,
    table_info,
)
from kingtavo_pipeline.io_managers.clickhouse.manager import (
    ClickHouseArrowTypeHandler,
    ClickHouseDbClient,
    ClickHouseIOManager,
    ClickHousePandasTypeHandler,
    ClickHouseStreamTypeHandler,
)
from kingtavo_pipeline.io_managers.clickhouse.query import expression_types, referenced_columns, slice_kinds, slice_where
from kingtavo_pipeline.io_managers.clickhouse.read import read_arrow, slice_pieces, stream_arrow
from kingtavo_pipeline.io_managers.clickhouse.write import STAGE_MARKER, write_arrow, write_parts

__all__ = [
    # the IO manager (manager.py)
    "ClickHouseIOManager",
    "ClickHouseDbClient",
    "ClickHouseArrowTypeHandler",
    "ClickHousePandasTypeHandler",
    "ClickHouseStreamTypeHandler",
    # writes (write.py) and the checks before them (checks.py)
    "STAGE_MARKER",
    "write_arrow",
    "write_parts",
    "ColumnTypeError",
    "check_types",
    "check_values",
    "conform",
    # reads (read.py)
    "read_arrow",
    "stream_arrow",
    "slice_pieces",
    # tables (ddl.py)
    "VERSION_COLUMN",
    "PartitionLayoutError",
    "TableInfo",
    "table_info",
    "clickhouse_type",
    "create_table_ddl",
    "order_by_columns",
    "partition_buckets",
    # slices in SQL (query.py)
    "slice_kinds",
    "slice_where",
    "expression_types",
    "referenced_columns",
]
