-- Verified inbound webhooks, stored before the sender gets a 2xx. The ingress service inserts
-- ('pending'); the Dagster sensor reads pending rows by id and sets status/processed_at/run_id/error.
CREATE TABLE IF NOT EXISTS webhook_events (
    id            bigserial PRIMARY KEY,
    source_name   text        NOT NULL,  -- the configured source (route /webhooks/<source_name>)
    provider      text        NOT NULL,  -- salla | salla_token | github | slack | stripe | shopify | standard | hmac
    event_type    text,                  -- Salla event, X-GitHub-Event, Stripe type, X-Shopify-Topic, Slack type/command, payload type
    -- the provider's delivery id (X-GitHub-Delivery, Stripe event id, X-Shopify-Webhook-Id,
    -- webhook-id, Slack event_id/trigger_id), else the SHA-256 of the raw body (Salla)
    dedupe_key    text        NOT NULL,
    account       text,                  -- merchant / account: Salla merchant, Shopify shop domain, GitHub repository, Stripe account, Slack team
    received_at   timestamptz NOT NULL DEFAULT now(),
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- for audit; signatures, credentials and cookies removed
    payload       jsonb       NOT NULL,  -- the body (Slack form data as a JSON object)
    status        text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'applied', 'failed', 'ignored')),
    processed_at  timestamptz,
    run_id        text,
    error         text,
    -- a redelivery is acknowledged and stored once
    CONSTRAINT webhook_events_dedupe UNIQUE (source_name, dedupe_key)
);
-- the sensor's scan: WHERE status = 'pending' AND id > cursor ORDER BY id
CREATE INDEX IF NOT EXISTS webhook_events_status_idx ON webhook_events (status, id);
