-- OAuth credentials of API sources, one row per (source, account): a Salla merchant's token pair.
-- Tokens are stored encrypted (Fernet, key from KINGTAVO_SECRET_KEY); the database never sees them
-- in clear. A refresh takes the row lock (SELECT ... FOR UPDATE), so concurrent processes rotate a
-- single-use refresh token once.
CREATE TABLE IF NOT EXISTS source_credentials (
    source_type         text        NOT NULL,
    source_name         text        NOT NULL,
    account_id          text        NOT NULL,
    access_token_enc    bytea       NOT NULL,
    refresh_token_enc   bytea,
    access_expires_at   timestamptz,
    refresh_expires_at  timestamptz,
    status              text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    status_reason       text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    refreshed_at        timestamptz,
    refreshed_count     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (source_type, source_name, account_id)
);
