//! Keys and the usage ledger, behind [`Store`] so that a Postgres backend can
//! be added later next to [`SqliteStore`].

mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::config::StoreArgs;
use crate::keys::KeyHash;

pub use sqlite::SqliteStore;

/// The file inside `--data-dir` that holds the keys and the ledger.
pub const DATABASE_FILE: &str = "photolabel.db";

/// A boxed future, so that [`Store`] can be used as `dyn Store`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL `{0}`: only `sqlite:` URLs are supported for now")]
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
    /// Returns only after the count is committed.
    fn record_success(&self, key_id: i64, endpoint: Endpoint) -> StoreFuture<'_, Recorded>;

    fn usage(&self, key_id: i64) -> StoreFuture<'_, Option<Usage>>;

    /// Flushes and closes; called once at shutdown.
    fn close(&self) -> StoreFuture<'_, ()>;
}

/// Opens the store that `--database-url` or `--data-dir` names, creating
/// and migrating it if needed.
pub async fn open_store(args: &StoreArgs) -> Result<Arc<dyn Store>, StoreError> {
    match &args.database_url {
        Some(url) if url.starts_with("sqlite:") => Ok(Arc::new(SqliteStore::open_url(url).await?)),
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
