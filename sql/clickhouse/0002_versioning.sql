-- The warehouse keeps what decides versions in core: the source's modification time and the
-- observation a row came from. _version is core's row_version (grows with every accepted change),
-- so FINAL keeps the copy core holds now, whichever partition an older copy was left in.
ALTER TABLE unified_items ADD COLUMN IF NOT EXISTS source_updated_at Nullable(DateTime64(6, 'UTC')) AFTER updated_at;
ALTER TABLE unified_items ADD COLUMN IF NOT EXISTS observed_seq Int64 DEFAULT 0 AFTER source_updated_at;
