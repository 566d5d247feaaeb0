-- Core entity tables for the API sources (Printavo, Salla, Strapi, REST): customers, products,
-- orders and their lines. One row per record and source: keyed by (source_type, source_name,
-- merchant_id, source_id); merchant_id is '' for single-tenant sources.
--
-- Which version wins: (source_updated_at, observed_seq) compared left to right, NULL oldest:
-- the API's own modification time, else the order in which we observed the record. Never a
-- business date (ordered_at). Every accepted change takes the next row_version: the warehouse's
-- ReplacingMergeTree _version. An order line carries its order's version: lines older than their
-- order's current version were not part of it and are deleted when the order is written.

CREATE SEQUENCE IF NOT EXISTS core_row_version_seq;

CREATE TABLE IF NOT EXISTS customers (
    id                 bigserial PRIMARY KEY,
    source_type        text        NOT NULL,
    source_name        text        NOT NULL,
    merchant_id        text        NOT NULL DEFAULT '',
    source_id          text        NOT NULL,
    email              text,
    first_name         text,
    last_name          text,
    full_name          text,
    phone              text,
    city               text,
    country            text,
    created_at         timestamptz,
    source_updated_at  timestamptz,
    partition_date     date        NOT NULL,
    raw_data_id        bigint,
    observed_seq       bigint      NOT NULL DEFAULT 0,
    row_version        bigint      NOT NULL DEFAULT nextval('core_row_version_seq'),
    loaded_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT customers_source_key UNIQUE (source_type, source_name, merchant_id, source_id)
);
CREATE INDEX IF NOT EXISTS customers_partition_idx ON customers (partition_date);

CREATE TABLE IF NOT EXISTS products (
    id                 bigserial PRIMARY KEY,
    source_type        text        NOT NULL,
    source_name        text        NOT NULL,
    merchant_id        text        NOT NULL DEFAULT '',
    source_id          text        NOT NULL,
    sku                text,
    name               text        NOT NULL,
    status             text        NOT NULL DEFAULT 'unknown',
    price              numeric(18, 4),
    currency           text,
    stock_quantity     bigint,
    category           text,
    created_at         timestamptz,
    source_updated_at  timestamptz,
    partition_date     date        NOT NULL,
    raw_data_id        bigint,
    observed_seq       bigint      NOT NULL DEFAULT 0,
    row_version        bigint      NOT NULL DEFAULT nextval('core_row_version_seq'),
    loaded_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_source_key UNIQUE (source_type, source_name, merchant_id, source_id)
);
CREATE INDEX IF NOT EXISTS products_partition_idx ON products (partition_date);

CREATE TABLE IF NOT EXISTS orders (
    id                  bigserial PRIMARY KEY,
    source_type         text           NOT NULL,
    source_name         text           NOT NULL,
    merchant_id         text           NOT NULL DEFAULT '',
    source_id           text           NOT NULL,
    order_number        text,
    kind                text           NOT NULL DEFAULT 'order',
    status              text           NOT NULL DEFAULT 'unknown',
    raw_status          text,
    customer_source_id  text,
    currency            text           NOT NULL,
    subtotal            numeric(18, 4),
    discount            numeric(18, 4),
    tax                 numeric(18, 4),
    shipping            numeric(18, 4),
    total               numeric(18, 4) NOT NULL,
    ordered_at          timestamptz,
    source_updated_at   timestamptz,
    partition_date      date           NOT NULL,
    raw_data_id         bigint,
    observed_seq        bigint         NOT NULL DEFAULT 0,
    row_version         bigint         NOT NULL DEFAULT nextval('core_row_version_seq'),
    loaded_at           timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT orders_source_key UNIQUE (source_type, source_name, merchant_id, source_id)
);
CREATE INDEX IF NOT EXISTS orders_partition_idx ON orders (partition_date);
CREATE INDEX IF NOT EXISTS orders_customer_idx ON orders (source_type, source_name, merchant_id, customer_source_id);

CREATE TABLE IF NOT EXISTS order_lines (
    id                 bigserial PRIMARY KEY,
    source_type        text           NOT NULL,
    source_name        text           NOT NULL,
    merchant_id        text           NOT NULL DEFAULT '',
    source_id          text           NOT NULL,
    order_source_id    text           NOT NULL,
    product_source_id  text,
    sku                text,
    name               text,
    quantity           numeric(18, 4) NOT NULL,
    unit_price         numeric(18, 4),
    discount           numeric(18, 4),
    tax                numeric(18, 4),
    total              numeric(18, 4),
    currency           text,
    source_updated_at  timestamptz,
    partition_date     date           NOT NULL,
    raw_data_id        bigint,
    observed_seq       bigint         NOT NULL DEFAULT 0,
    row_version        bigint         NOT NULL DEFAULT nextval('core_row_version_seq'),
    loaded_at          timestamptz    NOT NULL DEFAULT now(),
    CONSTRAINT order_lines_source_key UNIQUE (source_type, source_name, merchant_id, source_id)
);
CREATE INDEX IF NOT EXISTS order_lines_partition_idx ON order_lines (partition_date);
CREATE INDEX IF NOT EXISTS order_lines_order_idx ON order_lines (source_type, source_name, merchant_id, order_source_id);
