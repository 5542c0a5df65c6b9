//! The store for several replicas: one PostgreSQL database holds the keys,
//! the ledger and the rate-limit buckets, and every decision that must hold
//! across replicas (quota, rate limit) is one statement, so it is atomic
//! however many replicas ask at once. Nothing is cached: a revoked key is
//! refused by every replica at its next request.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

use super::{
    key_from_row, to_i64, usage_of, Endpoint, KeyRecord, Recorded, Revoked, Store, StoreError,
    StoreFuture, Usage,
};
use crate::keys::KeyHash;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a request waits for a connection before it gets 503: long
/// enough for a busy pool, short enough that a dead database is reported
/// at once instead of hanging the client.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects, then creates or upgrades the tables (the migrations take an
    /// advisory lock, so replicas starting together do not race).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection the server has dropped is noticed before use.
            .test_before_acquire(true)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }
}

impl Store for PgStore {
    same_sql_methods!();

    fn revoke_key<'a>(&'a self, id_or_name: &'a str) -> StoreFuture<'a, Revoked> {
        Box::pin(async move {
            // By id if it parses as one, else by name; the row is locked so
            // that two operators revoking at once get one `Revoked`.
            let id = id_or_name.parse::<i64>().ok();
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(concat!("SELECT ", key_columns!(), " FROM api_keys \
                 WHERE id = $1 OR (name = $2 AND NOT EXISTS (SELECT 1 FROM api_keys WHERE id = $1)) \
                 FOR UPDATE"))
            .bind(id)
            .bind(id_or_name)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(Revoked::NotFound);
            };
            let record = key_from_row(&row)?;
            if record.is_revoked() {
                return Ok(Revoked::AlreadyRevoked(record.id, record.name));
            }
            sqlx::query(
                "UPDATE api_keys \
                 SET revoked_at = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                 WHERE id = $1",
            )
            .bind(record.id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Revoked::Revoked(record.id, record.name))
        })
    }

    fn record_success(&self, key_id: i64, endpoint: Endpoint) -> StoreFuture<'_, Recorded> {
        Box::pin(async move {
            // One statement: the quota check, the total and the ledger row
            // commit together or not at all.
            let row = sqlx::query(
                "WITH counted AS ( \
                     UPDATE api_keys SET calls_used = calls_used + 1 \
                     WHERE id = $1 AND (quota IS NULL OR calls_used < quota) \
                     RETURNING id, calls_used \
                 ), ledger AS ( \
                     INSERT INTO key_usage (key_id, endpoint, calls) \
                     SELECT id, $2, 1 FROM counted \
                     ON CONFLICT (key_id, endpoint) DO UPDATE SET calls = key_usage.calls + 1 \
                 ) \
                 SELECT calls_used FROM counted",
            )
            .bind(key_id)
            .bind(endpoint.path())
            .fetch_optional(&self.pool)
            .await?;
            Ok(match row {
                Some(row) => {
                    Recorded::Counted(u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0))
                }
                None => Recorded::QuotaExhausted,
            })
        })
    }

    fn take_token(&self, key_id: i64, per_minute: u32) -> StoreFuture<'_, Result<(), u64>> {
        Box::pin(async move {
            // Refill by the time since the last update, then take one token
            // if there is one — in one statement, under the row's lock, so
            // the replicas share one bucket. A new bucket starts full.
            let capacity = f64::from(per_minute);
            let taken = sqlx::query(
                "INSERT INTO rate_buckets AS b (key_id, tokens, updated_at) \
                 VALUES ($1, $2 - 1, clock_timestamp()) \
                 ON CONFLICT (key_id) DO UPDATE SET \
                     tokens = LEAST($2, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at)) * $2 / 60) - 1, \
                     updated_at = GREATEST(b.updated_at, clock_timestamp()) \
                 WHERE LEAST($2, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - b.updated_at)) * $2 / 60) >= 1 \
                 RETURNING tokens",
            )
            .bind(key_id)
            .bind(capacity)
            .fetch_optional(&self.pool)
            .await?;
            if taken.is_some() {
                return Ok(Ok(()));
            }
            let wait: Option<f64> = sqlx::query_scalar(
                "SELECT (1 - LEAST($2, tokens + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - updated_at)) * $2 / 60)) * 60 / $2 \
                 FROM rate_buckets WHERE key_id = $1",
            )
            .bind(key_id)
            .bind(capacity)
            .fetch_optional(&self.pool)
            .await?;
            // At least 1: a client told "0" would retry at once and fail again.
            Ok(Err((wait.unwrap_or(1.0).ceil() as u64).max(1)))
        })
    }
}
