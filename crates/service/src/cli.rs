//! `photolabel keys`: create, list and revoke API keys.
//!
//! `keys create` writes only the new key to stdout, so that
//! `KEY=$(photolabel keys create --name acme)` works; its message for the
//! person goes to stderr. `keys list` writes its table to stdout.

use std::io::Write;

use anyhow::Context as _;

use crate::config::{KeysArgs, KeysCommand};
use crate::keys::NewKey;
use crate::store::{open_store, Revoked, Store};

/// `photolabel keys` for a synchronous `main`.
pub fn keys_main(args: KeysArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run_keys(args))
}

pub async fn run_keys(args: KeysArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store)
        .await
        .context("cannot open the key database")?;
    let result = run(
        &*store,
        args.command,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    )
    .await;
    store.close().await.context("closing the key database")?;
    result
}

/// The command itself, writing to the given streams (for tests).
pub async fn run(
    store: &dyn Store,
    command: KeysCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            name,
            rate_limit,
            quota,
        } => {
            let name = name.trim();
            anyhow::ensure!(!name.is_empty(), "--name must not be empty");
            let key = NewKey::generate().context("no randomness from the operating system")?;
            let record = store.create_key(name, key.hash, rate_limit, quota).await?;
            writeln!(out, "{}", key.secret)?;
            out.flush()?;
            writeln!(
                err,
                "created key {} for `{}`; it is shown only this once, store it now",
                record.id, record.name
            )?;
        }
        KeysCommand::List => {
            let keys = store.list_keys().await?;
            writeln!(
                out,
                "{:>4}  {:<24}  {:<20}  {:<20}  {:>10}  {:>10}  {:>9}",
                "id", "name", "created", "revoked", "calls", "quota", "rate/min"
            )?;
            for key in keys {
                writeln!(
                    out,
                    "{:>4}  {:<24}  {:<20}  {:<20}  {:>10}  {:>10}  {:>9}",
                    key.id,
                    key.name,
                    key.created_at,
                    key.revoked_at.as_deref().unwrap_or("-"),
                    key.calls_used,
                    key.quota.map_or("-".to_owned(), |q| q.to_string()),
                    key.rate_limit_per_minute
                        .map_or("-".to_owned(), |r| r.to_string()),
                )?;
            }
        }
        KeysCommand::Revoke { id_or_name } => match store.revoke_key(&id_or_name).await? {
            Revoked::Revoked(id, name) => writeln!(err, "revoked key {id} (`{name}`)")?,
            Revoked::AlreadyRevoked(id, name) => {
                writeln!(err, "key {id} (`{name}`) was already revoked")?
            }
            Revoked::NotFound => anyhow::bail!("no key with id or name `{id_or_name}`"),
        },
    }
    Ok(())
}
