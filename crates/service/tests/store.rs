//! The store's behaviour, written once and run against both stores: SQLite
//! in a temporary directory, and PostgreSQL — the server at
//! `PHOTOLABEL_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), in a fresh schema per test,
//! dropped afterwards. Where PostgreSQL does not answer, its half prints why
//! and skips.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use photolabel_service::keys::KeyHash;
use photolabel_service::store::{
    Endpoint, PgStore, Recorded, Revoked, SqliteStore, Store, StoreError,
};
use sqlx::Connection;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn admin_url() -> String {
    std::env::var("PHOTOLABEL_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.into())
}

/// A store and what must be cleaned up after it.
struct TestStore {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    schema: Option<String>,
}

impl TestStore {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open_file(&dir.path().join("t.db"))
            .await
            .expect("open sqlite");
        Self {
            store: Arc::new(store),
            _dir: Some(dir),
            schema: None,
        }
    }

    /// A PgStore in a schema of its own, or `None` (with the reason
    /// printed) where the server does not answer.
    async fn postgres() -> Option<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let admin = admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(e) => {
                println!("skipping the PostgreSQL store tests: {admin} does not answer ({e})");
                return None;
            }
        };
        let schema = format!(
            "photolabel_store_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        // The schema name is ours (digits and underscores), not input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        )))
        .execute(&mut conn)
        .await
        .expect("create schema");
        let url = format!("{admin}?options[search_path]={schema}");
        let store = PgStore::connect(&url, 16).await.expect("open postgres");
        Some(Self {
            store: Arc::new(store),
            _dir: None,
            schema: Some(schema),
        })
    }

    async fn finish(self) {
        self.store.close().await.expect("close");
        if let Some(schema) = self.schema {
            let mut conn = sqlx::PgConnection::connect(&admin_url())
                .await
                .expect("connect");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut conn)
                .await
                .expect("drop schema");
        }
    }
}

/// Each behaviour below as a test against SQLite and one against PostgreSQL.
macro_rules! on_both_stores {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $behaviour() {
                    let store = super::TestStore::sqlite().await;
                    super::$behaviour(store.store.clone()).await;
                    store.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $behaviour() {
                    let Some(store) = super::TestStore::postgres().await else { return };
                    super::$behaviour(store.store.clone()).await;
                    store.finish().await;
                }
            )*
        }
    };
}

on_both_stores!(
    keys_are_created_found_listed_and_revoked,
    the_ledger_counts_per_endpoint_up_to_the_quota,
    concurrent_calls_never_overspend_a_quota,
    the_rate_limit_bursts_then_says_how_long_to_wait,
    concurrent_callers_share_one_bucket,
    a_live_database_answers_the_ping,
);

async fn keys_are_created_found_listed_and_revoked(store: Arc<dyn Store>) {
    let hash = KeyHash::of("pl_acme");
    let created = store
        .create_key("acme", hash, Some(10), Some(5))
        .await
        .expect("create");
    assert_eq!(created.name, "acme");
    assert_eq!(created.rate_limit_per_minute, Some(10));
    assert_eq!(created.quota, Some(5));
    assert_eq!(created.calls_used, 0);
    assert!(created.created_at.ends_with('Z'), "{}", created.created_at);
    assert!(!created.is_revoked());

    let found = store.find_key(hash).await.expect("find").expect("some");
    assert_eq!(found.id, created.id);
    assert!(store
        .find_key(KeyHash::of("pl_other"))
        .await
        .expect("find")
        .is_none());
    assert!(matches!(
        store.create_key("acme", KeyHash::of("x"), None, None).await,
        Err(StoreError::DuplicateName(name)) if name == "acme"
    ));
    let second = store
        .create_key("beta", KeyHash::of("pl_beta"), None, None)
        .await
        .expect("create");
    let names: Vec<String> = store
        .list_keys()
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["acme", "beta"]);

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
    // A revoked key is still found, and says so; the other is untouched.
    let revoked = store.find_key(hash).await.expect("find").expect("some");
    assert!(revoked.is_revoked());
    assert!(revoked
        .revoked_at
        .as_deref()
        .is_some_and(|t| t.ends_with('Z')));
    let beta = store
        .find_key(KeyHash::of("pl_beta"))
        .await
        .expect("find")
        .expect("some");
    assert_eq!(beta.id, second.id);
    assert!(!beta.is_revoked());
}

async fn the_ledger_counts_per_endpoint_up_to_the_quota(store: Arc<dyn Store>) {
    let key = store
        .create_key("q", KeyHash::of("k"), None, Some(3))
        .await
        .expect("create");
    let mut answers = Vec::new();
    for endpoint in [
        Endpoint::LabelUpload,
        Endpoint::LabelUrl,
        Endpoint::LabelListing,
        Endpoint::LabelUrl,
    ] {
        answers.push(store.record_success(key.id, endpoint).await.expect("rec"));
    }
    assert_eq!(
        answers,
        [
            Recorded::Counted(1),
            Recorded::Counted(2),
            Recorded::Counted(3),
            Recorded::QuotaExhausted
        ]
    );
    let usage = store.usage(key.id).await.expect("usage").expect("some");
    assert_eq!(usage.name, "q");
    assert_eq!(usage.calls_used, 3);
    assert_eq!(usage.quota, Some(3));
    assert_eq!(usage.calls_remaining, Some(0));
    // The refused call left no trace in the ledger.
    assert_eq!(
        usage.calls_by_endpoint,
        [
            ("/labelling/img".to_owned(), 1),
            ("/labelling/listing".to_owned(), 1),
            ("/labelling/url".to_owned(), 1)
        ]
        .into_iter()
        .collect()
    );
    assert!(store.usage(key.id + 1000).await.expect("usage").is_none());
}

async fn concurrent_calls_never_overspend_a_quota(store: Arc<dyn Store>) {
    let key = store
        .create_key("busy", KeyHash::of("busy"), None, Some(50))
        .await
        .expect("create");
    let calls: Vec<_> = (0..120)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.record_success(key.id, Endpoint::LabelUpload).await })
        })
        .collect();
    let mut counted = 0;
    let mut refused = 0;
    for call in calls {
        match call.await.expect("join").expect("record") {
            Recorded::Counted(_) => counted += 1,
            Recorded::QuotaExhausted => refused += 1,
        }
    }
    assert_eq!((counted, refused), (50, 70));
    let usage = store.usage(key.id).await.expect("usage").expect("some");
    assert_eq!(usage.calls_used, 50);
    assert_eq!(usage.calls_by_endpoint.get("/labelling/img"), Some(&50));
}

async fn the_rate_limit_bursts_then_says_how_long_to_wait(store: Arc<dyn Store>) {
    let key = store
        .create_key("r", KeyHash::of("r"), Some(3), None)
        .await
        .expect("create");
    let other = store
        .create_key("s", KeyHash::of("s"), Some(3), None)
        .await
        .expect("create");
    for _ in 0..3 {
        assert_eq!(store.take_token(key.id, 3).await.expect("take"), Ok(()));
    }
    // 3 a minute: the next token is at most 20 s away.
    let wait = store
        .take_token(key.id, 3)
        .await
        .expect("take")
        .expect_err("bucket empty");
    assert!((1..=20).contains(&wait), "wait {wait}");
    // Another key has its own bucket.
    assert_eq!(store.take_token(other.id, 3).await.expect("take"), Ok(()));
}

async fn concurrent_callers_share_one_bucket(store: Arc<dyn Store>) {
    let key = store
        .create_key("burst", KeyHash::of("burst"), Some(30), None)
        .await
        .expect("create");
    let takers: Vec<_> = (0..60)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_token(key.id, 30).await })
        })
        .collect();
    let mut taken = 0;
    for taker in takers {
        if taker.await.expect("join").expect("take").is_ok() {
            taken += 1;
        }
    }
    // 60 within well under the 2 s a new token takes at 30/min.
    assert_eq!(taken, 30);
}

async fn a_live_database_answers_the_ping(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
}
