-- Foundation tables: raw landing zone, run bookkeeping, checkpoints, dead letters, unified items.

CREATE TABLE IF NOT EXISTS raw_data (
    id              bigserial PRIMARY KEY,
    source_type     text        NOT NULL,
    source_name     text        NOT NULL,
    entity          text        NOT NULL,
    source_id       text        NOT NULL,
    partition_date  date        NOT NULL,
    payload         jsonb       NOT NULL,
    payload_hash    text        NOT NULL,
    extracted_at    timestamptz NOT NULL DEFAULT now(),
    run_id          text,
    processed_at    timestamptz,
    -- a re-extracted identical record is stored once
    CONSTRAINT raw_data_content_key UNIQUE (source_type, source_name, entity, source_id, payload_hash)
);
CREATE INDEX IF NOT EXISTS raw_data_partition_idx ON raw_data (source_type, source_name, partition_date);

CREATE TABLE IF NOT EXISTS etl_runs (
    id                 bigserial PRIMARY KEY,
    run_id             text        NOT NULL,
    asset_key          text        NOT NULL,
    partition_key      text,
    status             text        NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz,
    records_extracted  bigint      NOT NULL DEFAULT 0,
    records_loaded     bigint      NOT NULL DEFAULT 0,
    records_failed     bigint      NOT NULL DEFAULT 0,
    error_message      text
);
CREATE INDEX IF NOT EXISTS etl_runs_asset_idx ON etl_runs (asset_key, started_at DESC);

CREATE TABLE IF NOT EXISTS etl_checkpoints (
    source_type              text        NOT NULL,
    source_name              text        NOT NULL,
    entity                   text        NOT NULL,
    checkpoint_value         text,
    status                   text        NOT NULL DEFAULT 'idle',
    last_run_at              timestamptz,
    last_success_at          timestamptz,
    total_records_processed  bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (source_type, source_name, entity)
);

CREATE TABLE IF NOT EXISTS dead_letters (
    id             bigserial PRIMARY KEY,
    stage          text        NOT NULL,
    source_type    text        NOT NULL,
    source_name    text        NOT NULL,
    entity         text        NOT NULL,
    source_id      text        NOT NULL DEFAULT '',
    payload        jsonb,
    payload_hash   text        NOT NULL,
    error_type     text        NOT NULL,
    error_message  text        NOT NULL,
    attempts       integer     NOT NULL DEFAULT 1,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    status         text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'retrying', 'resolved', 'ignored')),
    run_id         text,
    CONSTRAINT dead_letters_record_key UNIQUE (stage, source_type, source_name, entity, source_id, payload_hash)
);
CREATE INDEX IF NOT EXISTS dead_letters_open_idx ON dead_letters (status, last_seen_at DESC);

-- The unified schema of the Kasparro requirements: one row per item from any CSV/RSS/API source.
CREATE TABLE IF NOT EXISTS unified_items (
    id              bigserial PRIMARY KEY,
    source_type     text          NOT NULL,
    source_name     text          NOT NULL,
    external_id     text          NOT NULL,
    title           text          NOT NULL,
    description     text,
    category        text,
    url             text,
    amount          numeric(18, 4),
    quantity        bigint,
    metadata        jsonb         NOT NULL DEFAULT '{}'::jsonb,
    published_at    timestamptz,
    partition_date  date          NOT NULL,
    raw_data_id     bigint,
    updated_at      timestamptz   NOT NULL,
    loaded_at       timestamptz   NOT NULL DEFAULT now(),
    CONSTRAINT unified_items_source_key UNIQUE (source_type, source_name, external_id)
);
CREATE INDEX IF NOT EXISTS unified_items_partition_idx ON unified_items (partition_date);
