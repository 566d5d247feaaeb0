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
-- what the late-records sensor looks for: landed, not yet taken by a core run
CREATE INDEX IF NOT EXISTS raw_data_unprocessed_idx ON raw_data (observed_seq) WHERE processed_at IS NULL;

-- core: the source's own modification time (when mapped), the observation it came from, and a
-- row version that grows on every accepted change (the warehouse's ReplacingMergeTree _version).
CREATE SEQUENCE IF NOT EXISTS unified_items_row_version_seq;
ALTER TABLE unified_items ADD COLUMN IF NOT EXISTS source_updated_at timestamptz;
ALTER TABLE unified_items ADD COLUMN IF NOT EXISTS observed_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE unified_items ADD COLUMN IF NOT EXISTS row_version bigint NOT NULL DEFAULT nextval('unified_items_row_version_seq');
CREATE INDEX IF NOT EXISTS unified_items_raw_idx ON unified_items (raw_data_id);

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
