-- API keys: only the SHA-256 of each key is stored, never the key.
CREATE TABLE api_keys (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    name                  TEXT    NOT NULL UNIQUE,
    key_hash              BLOB    NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    rate_limit_per_minute INTEGER CHECK (rate_limit_per_minute IS NULL OR rate_limit_per_minute > 0),
    quota                 INTEGER CHECK (quota IS NULL OR quota >= 0),
    -- Successful calls in total; kept with the quota so that one conditional
    -- UPDATE both checks and counts.
    calls_used            INTEGER NOT NULL DEFAULT 0,
    created_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    revoked_at            TEXT
);

-- The usage ledger: successful calls per key and endpoint.
CREATE TABLE key_usage (
    key_id   INTEGER NOT NULL REFERENCES api_keys (id),
    endpoint TEXT    NOT NULL,
    calls    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, endpoint)
) WITHOUT ROWID;
