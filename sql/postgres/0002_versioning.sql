-- Which version wins, late data and the dead-letter life cycle.
--
-- raw_data.observed_seq is the order in which we observed records: a record whose content differs
-- from its newest observation gets the next number, including a value that reverts (A -> B -> A:
-- the second A's row is re-stamped). Core compares (source_updated_at, observed_seq), never a
-- business date.

CREATE SEQUENCE IF NOT EXISTS raw_observation_seq;
ALTER TABLE raw_data ADD COLUMN IF NOT EXISTS observed_seq bigint;
UPDATE raw_data SET observed_seq = id WHERE observed_seq IS NULL;
SELECT setval('raw_observation_seq', coalesce((SELECT max(observed_seq) FROM raw_data), 0) + 1, false);
ALTER TABLE raw_data ALTER COLUMN observed_seq SET DEFAULT nextval('raw_observation_seq');
ALTER TABLE raw_data ALTER COLUMN observed_seq SET NOT NULL;
-- (the newest observation of a record is found through raw_data_content_key's leading columns:
-- a record has few observations, and a second index cost every landing ~10%)
-- a day's observations in order: core reads those after what it took last. The day leads, so
-- the landing's probe by record (source_type, source_name, entity, source_id) can only use the
-- content key: with this index led by the source, a planner without statistics picked it and
-- scanned the whole source for every staged record.
DROP INDEX IF EXISTS raw_data_partition_idx;
CREATE INDEX IF NOT EXISTS raw_data_day_seq_idx ON raw_data (partition_date, source_type, source_name, observed_seq);

-- Per source and day: the newest observation landed and the newest one a core run has taken. A day
-- with landed_seq > taken_seq holds records waiting for core (what the late-records sensor looks
-- for). Landers raise landed_seq in the transaction of their rows; core raises taken_seq in its own.
-- (This replaces marking every raw row processed: rewriting raw rows cost core more than mapping.)
CREATE TABLE IF NOT EXISTS raw_partitions (
    source_type     text        NOT NULL,
    source_name     text        NOT NULL,
    partition_date  date        NOT NULL,
    landed_seq      bigint      NOT NULL DEFAULT 0,
    taken_seq       bigint      NOT NULL DEFAULT 0,
    landed_at       timestamptz,
    landed_run_id   text,
    taken_at        timestamptz,
    PRIMARY KEY (source_type, source_name, partition_date)
);
INSERT INTO raw_partitions (source_type, source_name, partition_date, landed_seq, taken_seq, landed_at, taken_at)
SELECT source_type, source_name, partition_date, max(observed_seq),
       CASE WHEN bool_and(processed_at IS NOT NULL) THEN max(observed_seq) ELSE 0 END,
       max(extracted_at), max(processed_at)
FROM raw_data GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;
ALTER TABLE raw_data DROP COLUMN IF EXISTS processed_at;

-- core: the source's own modification time (when mapped), the observation it came from, and a
-- row version that grows on every accepted change (the warehouse's ReplacingMergeTree _version).
CREATE SEQUENCE IF NOT EXISTS unified_items_row_version_seq;
ALTER TABLE unified_items ADD COLUMN IF NOT EXISTS source_updated_at timestamptz;
ALTER TABLE unified_items ADD COLUMN IF NOT EXISTS observed_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE unified_items ADD COLUMN IF NOT EXISTS row_version bigint NOT NULL DEFAULT nextval('unified_items_row_version_seq');
-- the record a core row comes from (raw_data.source_id): how the core_reflects_raw check finds it
ALTER TABLE unified_items ADD COLUMN IF NOT EXISTS source_id text;
UPDATE unified_items u SET source_id = r.source_id FROM raw_data r WHERE r.id = u.raw_data_id AND u.source_id IS NULL;
CREATE INDEX IF NOT EXISTS unified_items_record_idx ON unified_items (source_type, source_name, source_id);

-- dead letters: one row per distinct failure; open -> retrying -> open | resolved | ignored
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS raw_data_id bigint;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS partition_date date;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS resolved_at timestamptz;
ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS resolution text;
CREATE INDEX IF NOT EXISTS dead_letters_record_idx
    ON dead_letters (source_type, source_name, source_id) WHERE status IN ('open', 'retrying');

-- what a source looked like when it was last landed whole (files' content and the source's
-- settings): an unchanged source is not read again
ALTER TABLE etl_checkpoints ADD COLUMN IF NOT EXISTS source_fingerprint text;
