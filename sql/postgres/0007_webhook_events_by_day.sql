-- The webhook events' quality checks and the overdue check read one UTC day of received events at
-- a time (WHERE (received_at AT TIME ZONE 'UTC')::date BETWEEN ...): index that expression.
CREATE INDEX IF NOT EXISTS webhook_events_received_day_idx
    ON webhook_events (((received_at AT TIME ZONE 'UTC')::date), status);
