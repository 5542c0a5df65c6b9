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
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use super::{Endpoint, KeyRecord, Recorded, Revoked, Store, StoreError, StoreFuture, Usage};
use crate::keys::KeyHash;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct SqliteStore {
    pool: SqlitePool,
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
        Ok(Self { pool })
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

fn key_from_row(row: &SqliteRow) -> Result<KeyRecord, sqlx::Error> {
    let hash: Vec<u8> = row.try_get("key_hash")?;
    let hash = KeyHash::from_slice(&hash).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "key_hash".into(),
        source: "key hash is not 32 bytes".into(),
    })?;
    let rate_limit: Option<i64> = row.try_get("rate_limit_per_minute")?;
    let quota: Option<i64> = row.try_get("quota")?;
    let calls_used: i64 = row.try_get("calls_used")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        hash,
        rate_limit_per_minute: rate_limit.and_then(|n| u32::try_from(n).ok()),
        quota: quota.and_then(|n| u64::try_from(n).ok()),
        calls_used: u64::try_from(calls_used).unwrap_or(0),
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn create_key<'a>(
        &'a self,
        name: &'a str,
        hash: KeyHash,
        rate_limit_per_minute: Option<u32>,
        quota: Option<u64>,
    ) -> StoreFuture<'a, KeyRecord> {
        Box::pin(async move {
            let result = sqlx::query(
                "INSERT INTO api_keys (name, key_hash, rate_limit_per_minute, quota) \
                 VALUES (?, ?, ?, ?) \
                 RETURNING id, name, key_hash, rate_limit_per_minute, quota, calls_used, \
                 created_at, revoked_at",
            )
            .bind(name.to_owned())
            .bind(hash.0.to_vec())
            .bind(rate_limit_per_minute.map(i64::from))
            .bind(quota.map(to_i64))
            .fetch_one(&self.pool)
            .await;
            match result {
                Ok(row) => Ok(key_from_row(&row)?),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    Err(StoreError::DuplicateName(name.to_owned()))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn find_key(&self, hash: KeyHash) -> StoreFuture<'_, Option<KeyRecord>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, name, key_hash, rate_limit_per_minute, quota, calls_used, \
                 created_at, revoked_at FROM api_keys WHERE key_hash = ?",
            )
            .bind(hash.0.to_vec())
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let record = key_from_row(&row)?;
            // The index lookup found it; compare again in constant time so
            // the match itself never depends on a short-circuiting `==`.
            Ok(record.hash.matches(&hash).then_some(record))
        })
    }

    fn list_keys(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, name, key_hash, rate_limit_per_minute, quota, calls_used, \
                 created_at, revoked_at FROM api_keys ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
        })
    }

    fn revoke_key<'a>(&'a self, id_or_name: &'a str) -> StoreFuture<'a, Revoked> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            // A number is an id first; a name otherwise (or if no id matches).
            let mut row = None;
            if let Ok(id) = id_or_name.parse::<i64>() {
                row = sqlx::query(
                    "SELECT id, name, key_hash, rate_limit_per_minute, quota, calls_used, \
                     created_at, revoked_at FROM api_keys WHERE id = ?",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            }
            if row.is_none() {
                row = sqlx::query(
                    "SELECT id, name, key_hash, rate_limit_per_minute, quota, calls_used, \
                     created_at, revoked_at FROM api_keys WHERE name = ?",
                )
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

    fn usage(&self, key_id: i64) -> StoreFuture<'_, Option<Usage>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(
                "SELECT id, name, key_hash, rate_limit_per_minute, quota, calls_used, \
                 created_at, revoked_at FROM api_keys WHERE id = ?",
            )
            .bind(key_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let record = key_from_row(&row)?;
            let rows = sqlx::query("SELECT endpoint, calls FROM key_usage WHERE key_id = ?")
                .bind(key_id)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            let mut calls_by_endpoint = std::collections::BTreeMap::new();
            for row in rows {
                let endpoint: String = row.try_get("endpoint")?;
                let calls: i64 = row.try_get("calls")?;
                calls_by_endpoint.insert(endpoint, u64::try_from(calls).unwrap_or(0));
            }
            Ok(Some(Usage {
                name: record.name,
                calls_used: record.calls_used,
                quota: record.quota,
                calls_remaining: record.quota.map(|q| q.saturating_sub(record.calls_used)),
                calls_by_endpoint,
            }))
        })
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.pool.close().await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::NewKey;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open_file(&dir.path().join("t.db"))
            .await
            .expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn create_find_revoke() {
        let (_dir, store) = store().await;
        let key = NewKey::generate().expect("random");
        let created = store
            .create_key("acme", key.hash, Some(10), Some(5))
            .await
            .expect("create");
        assert_eq!(created.name, "acme");
        assert_eq!(created.quota, Some(5));
        let found = store.find_key(key.hash).await.expect("find").expect("some");
        assert_eq!(found.id, created.id);
        assert!(store
            .find_key(KeyHash::of("pl_other"))
            .await
            .expect("find")
            .is_none());
        assert!(matches!(
            store.create_key("acme", KeyHash::of("x"), None, None).await,
            Err(StoreError::DuplicateName(_))
        ));
        assert_eq!(
            store.revoke_key("acme").await.expect("revoke"),
            Revoked::Revoked(created.id, "acme".into())
        );
        assert_eq!(
            store
                .revoke_key(&created.id.to_string())
                .await
                .expect("revoke"),
            Revoked::AlreadyRevoked(created.id, "acme".into())
        );
        assert_eq!(
            store.revoke_key("nobody").await.expect("revoke"),
            Revoked::NotFound
        );
        assert!(store
            .find_key(key.hash)
            .await
            .expect("find")
            .expect("some")
            .is_revoked());
    }

    #[tokio::test]
    async fn ledger_counts_and_enforces_quota() {
        let (_dir, store) = store().await;
        let key = store
            .create_key("q", KeyHash::of("k"), None, Some(2))
            .await
            .expect("create");
        assert_eq!(
            store
                .record_success(key.id, Endpoint::LabelUpload)
                .await
                .expect("rec"),
            Recorded::Counted(1)
        );
        assert_eq!(
            store
                .record_success(key.id, Endpoint::LabelUrl)
                .await
                .expect("rec"),
            Recorded::Counted(2)
        );
        assert_eq!(
            store
                .record_success(key.id, Endpoint::LabelUrl)
                .await
                .expect("rec"),
            Recorded::QuotaExhausted
        );
        let usage = store.usage(key.id).await.expect("usage").expect("some");
        assert_eq!(usage.calls_used, 2);
        assert_eq!(usage.calls_remaining, Some(0));
        assert_eq!(usage.calls_by_endpoint.get("/labelling/img"), Some(&1));
        assert_eq!(usage.calls_by_endpoint.get("/labelling/url"), Some(&1));
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
