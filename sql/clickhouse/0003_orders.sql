-- The orders star: a fact with one row per order line (an order without lines has one row with
-- empty line columns) and customer and product dimensions. Partitions are replaced whole from core
-- (REPLACE PARTITION from a stage table); _version is core's row_version, so FINAL keeps what core
-- holds now.
CREATE TABLE IF NOT EXISTS orders_fact (
    source_type         LowCardinality(String),
    source_name         LowCardinality(String),
    merchant_id         String,
    order_source_id     String,
    line_source_id      String,
    order_number        Nullable(String),
    kind                LowCardinality(String),
    status              LowCardinality(String),
    customer_source_id  Nullable(String),
    product_source_id   Nullable(String),
    sku                 Nullable(String),
    line_name           Nullable(String),
    quantity            Nullable(Decimal(18, 4)),
    unit_price          Nullable(Decimal(18, 4)),
    line_total          Nullable(Decimal(18, 4)),
    currency            LowCardinality(String),
    order_total         Decimal(18, 4),
    ordered_at          Nullable(DateTime64(6, 'UTC')),
    source_updated_at   Nullable(DateTime64(6, 'UTC')),
    partition_date      Date,
    _version            UInt64
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY partition_date
ORDER BY (source_type, source_name, merchant_id, order_source_id, line_source_id);

CREATE TABLE IF NOT EXISTS customers_dim (
    source_type         LowCardinality(String),
    source_name         LowCardinality(String),
    merchant_id         String,
    source_id           String,
    email               Nullable(String),
    full_name           Nullable(String),
    phone               Nullable(String),
    city                Nullable(String),
    country             Nullable(String),
    created_at          Nullable(DateTime64(6, 'UTC')),
    source_updated_at   Nullable(DateTime64(6, 'UTC')),
    partition_date      Date,
    _version            UInt64
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY partition_date
ORDER BY (source_type, source_name, merchant_id, source_id);

CREATE TABLE IF NOT EXISTS products_dim (
    source_type         LowCardinality(String),
    source_name         LowCardinality(String),
    merchant_id         String,
    source_id           String,
    sku                 Nullable(String),
    name                String,
    status              LowCardinality(String),
    price               Nullable(Decimal(18, 4)),
    currency            Nullable(String),
    stock_quantity      Nullable(Int64),
    category            Nullable(String),
    created_at          Nullable(DateTime64(6, 'UTC')),
    source_updated_at   Nullable(DateTime64(6, 'UTC')),
    partition_date      Date,
    _version            UInt64
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY partition_date
ORDER BY (source_type, source_name, merchant_id, source_id);
