-- Warehouse copy of core unified_items. Partitions are replaced whole (REPLACE PARTITION from a
-- stage table); _version lets ReplacingMergeTree keep the newest row if one ever lands twice.
CREATE TABLE IF NOT EXISTS unified_items (
    source_type     LowCardinality(String),
    source_name     LowCardinality(String),
    external_id     String,
    title           String,
    description     Nullable(String),
    category        Nullable(String),
    url             Nullable(String),
    amount          Nullable(Decimal(18, 4)),
    quantity        Nullable(Int64),
    metadata        String,
    published_at    Nullable(DateTime64(6, 'UTC')),
    partition_date  Date,
    raw_data_id     Nullable(Int64),
    updated_at      DateTime64(6, 'UTC'),
    _version        UInt64
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY partition_date
ORDER BY (source_type, source_name, external_id);
