//! The SQLite store: one file, WAL, `synchronous=FULL`.
//!
//! Durability: in WAL mode `synchronous=NORMAL` already survives a crash of
//! the *process* (SIGKILL), but a power cut or kernel panic can roll back
//! the last commits. `FULL` fsyncs the WAL on every commit, so a count that
//! was committed — and so a 200 that was sent — is never lost. One fsync per
//! successful call is small next to a model inference.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::bucket::RateLimiter;
use super::{
    key_from_row, to_i64, usage_of, Endpoint, KeyRecord, Recorded, Revoked, Store, StoreError,
    StoreFuture, Usage,
};
use crate::keys::KeyHash;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    buckets: RateLimiter,
}

impl SqliteStore {
    pub async fn open_file(path: &Path) -> Result<Self, StoreError> {
        Self::open(SqliteConnectOptions::new().filename(path)).await
    }

    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        Self::open(SqliteConnectOptions::from_str(url)?).await
    }

    async fn open(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            buckets: RateLimiter::default(),
        })
    }

    /// `PRAGMA integrity_check`: `["ok"]` for a sound database, otherwise
    /// the problems SQLite found (for checks after a crash).
    pub async fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("PRAGMA integrity_check")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| row.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }
}

impl Store for SqliteStore {
    same_sql_methods!();

    fn revoke_key<'a>(&'a self, id_or_name: &'a str) -> StoreFuture<'a, Revoked> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            // A number is an id first; a name otherwise (or if no id matches).
            let mut row = None;
            if let Ok(id) = id_or_name.parse::<i64>() {
                row = sqlx::query(concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM api_keys WHERE id = ?"
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            }
            if row.is_none() {
                row = sqlx::query(concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM api_keys WHERE name = ?"
                ))
                .bind(id_or_name.to_owned())
                .fetch_optional(&mut *tx)
                .await?;
            }
            let Some(row) = row else {
                return Ok(Revoked::NotFound);
            };
            let record = key_from_row(&row)?;
            if record.is_revoked() {
                return Ok(Revoked::AlreadyRevoked(record.id, record.name));
            }
            sqlx::query(
                "UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now') \
                 WHERE id = ?",
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
            let mut tx = self.pool.begin().await?;
            // Checks the quota and counts in one statement, so concurrent
            // calls can never overshoot it.
            let row = sqlx::query(
                "UPDATE api_keys SET calls_used = calls_used + 1 \
                 WHERE id = ? AND (quota IS NULL OR calls_used < quota) \
                 RETURNING calls_used",
            )
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(Recorded::QuotaExhausted);
            };
            let total: i64 = row.try_get("calls_used")?;
            sqlx::query(
                "INSERT INTO key_usage (key_id, endpoint, calls) VALUES (?, ?, 1) \
                 ON CONFLICT (key_id, endpoint) DO UPDATE SET calls = calls + 1",
            )
            .bind(key_id)
            .bind(endpoint.path())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Recorded::Counted(u64::try_from(total).unwrap_or(0)))
        })
    }

    fn take_token(&self, key_id: i64, per_minute: u32) -> StoreFuture<'_, Result<(), u64>> {
        Box::pin(async move { Ok(self.buckets.try_acquire(key_id, per_minute)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open_file(&dir.path().join("t.db"))
            .await
            .expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn a_fresh_database_passes_the_integrity_check() {
        let (_dir, store) = store().await;
        assert_eq!(store.integrity_check().await.expect("check"), ["ok"]);
    }

    #[tokio::test]
    async fn counts_survive_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.db");
        let id = {
            let store = SqliteStore::open_file(&path).await.expect("open");
            let key = store
                .create_key("p", KeyHash::of("k"), None, None)
                .await
                .expect("create");
            for _ in 0..3 {
                store
                    .record_success(key.id, Endpoint::LabelUpload)
                    .await
                    .expect("rec");
            }
            store.close().await.expect("close");
            key.id
        };
        let store = SqliteStore::open_file(&path).await.expect("reopen");
        let usage = store.usage(id).await.expect("usage").expect("some");
        assert_eq!(usage.calls_used, 3);
    }
}
