//! Keys, the usage ledger and rate-limit buckets, behind [`Store`]:
//! [`SqliteStore`], embedded, for one machine; [`PgStore`], for any number
//! of replicas sharing one PostgreSQL database.

/// The columns every key query selects, in [`key_from_row`]'s terms; a
/// macro so that queries stay `&'static str` (sqlx refuses built strings).
macro_rules! key_columns {
    () => {
        "id, name, key_hash, rate_limit_per_minute, quota, calls_used, created_at, revoked_at"
    };
}

/// The `Store` methods whose SQL is the same in both databases (`$n`
/// placeholders work in SQLite too): one body, expanded in each store's
/// `impl Store` against its own pool.
macro_rules! same_sql_methods {
    () => {
        fn create_key<'a>(
            &'a self,
            name: &'a str,
            hash: KeyHash,
            rate_limit_per_minute: Option<u32>,
            quota: Option<u64>,
        ) -> StoreFuture<'a, KeyRecord> {
            Box::pin(async move {
                let result = sqlx::query(concat!(
                    "INSERT INTO api_keys (name, key_hash, rate_limit_per_minute, quota) \
                     VALUES ($1, $2, $3, $4) RETURNING ",
                    key_columns!()
                ))
                .bind(name)
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
                let row = sqlx::query(concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM api_keys WHERE key_hash = $1"
                ))
                .bind(hash.0.to_vec())
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let record = key_from_row(&row)?;
                Ok(record.hash.matches(&hash).then_some(record))
            })
        }

        fn list_keys(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
            Box::pin(async move {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    key_columns!(),
                    " FROM api_keys ORDER BY id"
                ))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.iter().map(key_from_row).collect::<Result<_, _>>()?)
            })
        }

        fn usage(&self, key_id: i64) -> StoreFuture<'_, Option<Usage>> {
            Box::pin(async move {
                // One statement, so the total and the ledger come from one
                // snapshot in either database.
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    key_columns!(),
                    ", endpoint, calls FROM api_keys LEFT JOIN key_usage ON key_id = id \
                     WHERE id = $1 ORDER BY endpoint"
                ))
                .bind(key_id)
                .fetch_all(&self.pool)
                .await?;
                let Some(first) = rows.first() else {
                    return Ok(None);
                };
                let record = key_from_row(first)?;
                let mut ledger = Vec::with_capacity(rows.len());
                for row in &rows {
                    let endpoint: Option<String> = row.try_get("endpoint")?;
                    let calls: Option<i64> = row.try_get("calls")?;
                    if let (Some(endpoint), Some(calls)) = (endpoint, calls) {
                        ledger.push((endpoint, calls));
                    }
                }
                Ok(Some(usage_of(record, ledger)))
            })
        }

        fn ping(&self) -> StoreFuture<'_, ()> {
            Box::pin(async move {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            })
        }

        fn close(&self) -> StoreFuture<'_, ()> {
            Box::pin(async move {
                self.pool.close().await;
                Ok(())
            })
        }
    };
}

mod bucket;
mod postgres;
mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::config::StoreArgs;
use crate::keys::KeyHash;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The file inside `--data-dir` that holds the keys and the ledger.
pub const DATABASE_FILE: &str = "photolabel.db";

/// A boxed future, so that [`Store`] can be used as `dyn Store`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL `{0}`: use `sqlite:…` or `postgres://…`")]
    UnsupportedUrl(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("a key named `{0}` already exists")]
    DuplicateName(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// Whether the database could not be reached (down, cut off, every
    /// connection busy): worth a retry, unlike a failing statement.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // PostgreSQL's connection exceptions (class 08) and
                // operator intervention (57P01–57P03: shutdown, crash,
                // cannot connect now).
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
                _ => false,
            },
            _ => false,
        }
    }
}

/// The endpoints whose successful calls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    LabelUpload,
    LabelUrl,
    /// Counted once per labelled photo of the listing.
    LabelListing,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::LabelUpload => "/labelling/img",
            Endpoint::LabelUrl => "/labelling/url",
            Endpoint::LabelListing => "/labelling/listing",
        }
    }
}

/// One API key as stored: never the key itself, only its hash.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: i64,
    pub name: String,
    pub hash: KeyHash,
    pub rate_limit_per_minute: Option<u32>,
    pub quota: Option<u64>,
    pub calls_used: u64,
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl KeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// A key's successful calls, as `GET /credit` reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// The key's name.
    pub name: String,
    /// Successful labelling calls made with this key.
    pub calls_used: u64,
    /// The key's total allowance of successful calls, if it has one.
    pub quota: Option<u64>,
    /// Calls left before the quota is spent, if the key has a quota.
    pub calls_remaining: Option<u64>,
    /// Successful calls per endpoint path.
    pub calls_by_endpoint: std::collections::BTreeMap<String, u64>,
}

/// What recording one successful call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Committed; the key's total is now this.
    Counted(u64),
    /// The quota was already spent: nothing was counted.
    QuotaExhausted,
}

/// What revoking did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    Revoked(i64, String),
    AlreadyRevoked(i64, String),
    NotFound,
}

/// Keys and the usage ledger.
pub trait Store: Send + Sync {
    fn create_key<'a>(
        &'a self,
        name: &'a str,
        hash: KeyHash,
        rate_limit_per_minute: Option<u32>,
        quota: Option<u64>,
    ) -> StoreFuture<'a, KeyRecord>;

    /// The key with this hash, revoked or not.
    fn find_key(&self, hash: KeyHash) -> StoreFuture<'_, Option<KeyRecord>>;

    fn list_keys(&self) -> StoreFuture<'_, Vec<KeyRecord>>;

    /// Revokes by numeric id or by name.
    fn revoke_key<'a>(&'a self, id_or_name: &'a str) -> StoreFuture<'a, Revoked>;

    /// Counts one successful call, durably, unless the quota is spent.
    /// Returns only after the count is committed. One statement decides,
    /// so no number of concurrent callers can overspend a quota.
    fn record_success(&self, key_id: i64, endpoint: Endpoint) -> StoreFuture<'_, Recorded>;

    fn usage(&self, key_id: i64) -> StoreFuture<'_, Option<Usage>>;

    /// Takes a token from the key's bucket (`per_minute` tokens, refilled
    /// continuously), or gives the whole seconds until the next one.
    fn take_token(&self, key_id: i64, per_minute: u32) -> StoreFuture<'_, Result<(), u64>>;

    /// Whether the database answers, for `/health`.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Flushes and closes; called once at shutdown.
    fn close(&self) -> StoreFuture<'_, ()>;
}

/// Opens the store that `--database-url` or `--data-dir` names, creating
/// and migrating it if needed.
pub async fn open_store(args: &StoreArgs) -> Result<Arc<dyn Store>, StoreError> {
    match &args.database_url {
        Some(url) if url.starts_with("sqlite:") => Ok(Arc::new(SqliteStore::open_url(url).await?)),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => Ok(
            Arc::new(PgStore::connect(url, args.database_max_connections).await?),
        ),
        Some(url) => {
            // Never echo credentials that may be in the URL.
            let scheme = url.split(':').next().unwrap_or_default();
            Err(StoreError::UnsupportedUrl(format!("{scheme}:…")))
        }
        None => {
            std::fs::create_dir_all(&args.data_dir).map_err(|source| StoreError::DataDir {
                path: args.data_dir.display().to_string(),
                source,
            })?;
            let path = args.data_dir.join(DATABASE_FILE);
            Ok(Arc::new(SqliteStore::open_file(&path).await?))
        }
    }
}

/// A key row of either database.
fn key_from_row<'r, R>(row: &'r R) -> Result<KeyRecord, sqlx::Error>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
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

/// `GET /credit`'s answer from a key and its ledger rows.
fn usage_of(record: KeyRecord, ledger: Vec<(String, i64)>) -> Usage {
    Usage {
        name: record.name,
        calls_used: record.calls_used,
        quota: record.quota,
        calls_remaining: record.quota.map(|q| q.saturating_sub(record.calls_used)),
        calls_by_endpoint: ledger
            .into_iter()
            .map(|(endpoint, calls)| (endpoint, u64::try_from(calls).unwrap_or(0)))
            .collect(),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
