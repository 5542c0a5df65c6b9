//! `photolabel keys`: create prints the key once and nothing else; list never
//! shows a key; revoke by id or name; both commands share one database.

use photolabel_service::cli::run;
use photolabel_service::config::{KeysCommand, StoreArgs};
use photolabel_service::keys::KeyHash;
use photolabel_service::store::open_store;

fn store_args(dir: &tempfile::TempDir) -> StoreArgs {
    StoreArgs {
        data_dir: dir.path().join("data"),
        database_url: None,
        database_max_connections: 10,
    }
}

async fn exec(args: &StoreArgs, command: KeysCommand) -> anyhow::Result<(String, String)> {
    let store = open_store(args).await?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let result = run(&*store, command, &mut out, &mut err).await;
    store.close().await?;
    result?;
    Ok((
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    ))
}

#[tokio::test]
async fn create_list_revoke() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = store_args(&dir);
    let (out, err) = exec(
        &args,
        KeysCommand::Create {
            name: "acme".into(),
            rate_limit: Some(60),
            quota: Some(1000),
        },
    )
    .await
    .expect("create");
    // stdout is exactly the key and a newline.
    let key = out.strip_suffix('\n').expect("newline");
    assert!(key.starts_with("pl_") && !key.contains(char::is_whitespace));
    assert!(!err.contains(key), "the message does not repeat the key");
    assert!(dir.path().join("data/photolabel.db").exists());

    let (list, _) = exec(&args, KeysCommand::List).await.expect("list");
    assert!(list.contains("acme"));
    assert!(list.contains("1000"));
    assert!(!list.contains(key), "list never shows the key");
    assert!(!list.contains(&key[3..12]), "nor part of it");

    // Stored only hashed.
    let db = std::fs::read(dir.path().join("data/photolabel.db")).expect("db");
    let wal = std::fs::read(dir.path().join("data/photolabel.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()));
    }
    let store = open_store(&args).await.expect("open");
    let record = store
        .find_key(KeyHash::of(key))
        .await
        .expect("find")
        .expect("found by hash");
    assert_eq!(record.name, "acme");
    assert_eq!(record.rate_limit_per_minute, Some(60));
    store.close().await.expect("close");

    let (_, err) = exec(
        &args,
        KeysCommand::Revoke {
            id_or_name: "1".into(),
        },
    )
    .await
    .expect("revoke");
    assert!(err.contains("revoked key 1"));
    let (list, _) = exec(&args, KeysCommand::List).await.expect("list");
    let line = list.lines().find(|l| l.contains("acme")).expect("row");
    assert!(line.matches('Z').count() >= 2, "revoked time shown: {line}");

    assert!(exec(
        &args,
        KeysCommand::Revoke {
            id_or_name: "nobody".into()
        }
    )
    .await
    .is_err());
}

#[tokio::test]
async fn duplicate_names_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = store_args(&dir);
    let create = || KeysCommand::Create {
        name: "acme".into(),
        rate_limit: None,
        quota: None,
    };
    exec(&args, create()).await.expect("first");
    let error = exec(&args, create()).await.expect_err("second");
    assert!(error.to_string().contains("already exists"));
}

#[tokio::test]
async fn an_unsupported_database_url_is_a_clear_error() {
    let args = StoreArgs {
        data_dir: "unused".into(),
        database_url: Some("mysql://user:secret@db/photolabel".into()),
        database_max_connections: 10,
    };
    let error = match open_store(&args).await {
        Ok(_) => panic!("mysql is not supported"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("use `sqlite:…` or `postgres://…`"),
        "{error}"
    );
    assert!(!error.contains("secret"), "credentials are not echoed");
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_clear_error_without_credentials() {
    // Port 1 on loopback: nothing listens, the connection is refused.
    let args = StoreArgs {
        data_dir: "unused".into(),
        database_url: Some("postgres://user:secret@127.0.0.1:1/photolabel".into()),
        database_max_connections: 10,
    };
    let error = match open_store(&args).await {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e,
    };
    assert!(error.is_unavailable(), "{error}");
    assert!(!error.to_string().contains("secret"), "{error}");
}

#[tokio::test]
async fn sqlite_database_url_is_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keys.db");
    let args = StoreArgs {
        data_dir: dir.path().join("unused"),
        database_url: Some(format!("sqlite://{}", path.display())),
        database_max_connections: 10,
    };
    exec(
        &args,
        KeysCommand::Create {
            name: "a".into(),
            rate_limit: None,
            quota: None,
        },
    )
    .await
    .expect("create");
    assert!(path.exists());
    assert!(!dir.path().join("unused").exists());
}
