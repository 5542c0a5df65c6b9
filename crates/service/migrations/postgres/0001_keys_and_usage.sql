-- The same tables as the SQLite store's, in PostgreSQL types, plus the
-- rate-limit buckets that several replicas must share.

-- API keys: only the SHA-256 of each key is stored, never the key.
CREATE TABLE api_keys (
    id                    BIGSERIAL PRIMARY KEY,
    name                  TEXT    NOT NULL UNIQUE,
    key_hash              BYTEA   NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    rate_limit_per_minute BIGINT  CHECK (rate_limit_per_minute IS NULL OR rate_limit_per_minute > 0),
    quota                 BIGINT  CHECK (quota IS NULL OR quota >= 0),
    -- Successful calls in total; kept with the quota so that one conditional
    -- UPDATE both checks and counts, whatever the number of replicas.
    calls_used            BIGINT  NOT NULL DEFAULT 0,
    created_at            TEXT    NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
    revoked_at            TEXT
);

-- The usage ledger: successful calls per key and endpoint.
CREATE TABLE key_usage (
    key_id   BIGINT NOT NULL REFERENCES api_keys (id),
    endpoint TEXT   NOT NULL,
    calls    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, endpoint)
);

-- One token bucket per rate-limited key, refilled and taken from in one
-- statement (see PgStore::take_token).
CREATE TABLE rate_buckets (
    key_id     BIGINT PRIMARY KEY REFERENCES api_keys (id),
    tokens     DOUBLE PRECISION NOT NULL,
    updated_at TIMESTAMPTZ      NOT NULL
);
