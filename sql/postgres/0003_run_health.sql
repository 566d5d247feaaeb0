-- The process writing an etl_runs row (pid, host, and its start time from /proc, which tells a
-- reused pid from the original), so a row left 'running' by a process that died without
-- finishing (kill -9, OOM killer) can be told from a live one and closed as failed.
ALTER TABLE etl_runs ADD COLUMN IF NOT EXISTS pid integer;
ALTER TABLE etl_runs ADD COLUMN IF NOT EXISTS host text;
ALTER TABLE etl_runs ADD COLUMN IF NOT EXISTS pid_start text;
CREATE INDEX IF NOT EXISTS etl_runs_running_idx ON etl_runs (run_id) WHERE status = 'running';
