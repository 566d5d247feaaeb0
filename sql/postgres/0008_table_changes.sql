-- What a check read is known to be unchanged, so its last verdict can stand (check_memo).
--
-- Every statement that writes a watched table leaves one row in table_changes, from a statement
-- trigger in the writer's own transaction: the row becomes visible exactly when the write commits,
-- and a write that rolls back leaves none. A table's fingerprint (count and sum of its rows' ids)
-- read before and after an evaluation is therefore equal only if no write to the table committed
-- in between, so every query of that evaluation saw the state the fingerprint names. Writers never
-- wait for each other here (the log is insert-only); out-of-band edits (a manual UPDATE) are
-- caught as well as the pipeline's own.
CREATE TABLE IF NOT EXISTS table_changes (
    id          bigserial   PRIMARY KEY,
    table_name  text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS table_changes_table_idx ON table_changes (table_name, id);

CREATE OR REPLACE FUNCTION kingtavo_log_table_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO table_changes (table_name) VALUES (TG_TABLE_NAME);
    RETURN NULL;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['raw_data', 'raw_partitions', 'dead_letters', 'unified_items', 'webhook_events',
                             'customers', 'products', 'orders', 'order_lines'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', t || '_changes', t);
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION kingtavo_log_table_change()', t || '_changes', t);
    END LOOP;
END
$$;

-- A check's verdicts per partition window, with the fingerprint of what it read (its definition,
-- its settings and the tables' changes). Reused while the fingerprint holds and the entry is fresh.
CREATE TABLE IF NOT EXISTS check_memo (
    check_key     text        NOT NULL,
    window_key    text        NOT NULL,
    fingerprint   text        NOT NULL,
    results       jsonb       NOT NULL,
    evaluated_at  timestamptz NOT NULL DEFAULT now(),
    run_id        text,
    PRIMARY KEY (check_key, window_key)
);
