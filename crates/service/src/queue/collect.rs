//! `photolabel collect --out FILE.jsonl`: the results stream as JSON lines,
//! one per job id.
//!
//! It reads the stream from its first message with an ordered consumer (no
//! acks, nothing removed: `collect` can be run again, and the results stay
//! until the stream's limits or an operator remove them). A second result
//! for an id already written (a job finished twice outside the duplicate
//! window) is dropped, so memory grows with the number of distinct ids.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::job::ResultId;
use super::{connect, results_stream, results_subject, CollectArgs, Progress, QueueError};

/// What a `collect` run wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectSummary {
    /// Lines written: distinct job ids.
    pub written: u64,
    /// Results dropped because their id was written already.
    pub doubles: u64,
    /// Messages that are not results (no string `id`).
    pub unreadable: u64,
    /// False when `--timeout` passed before `--expect` ids were seen.
    pub complete: bool,
}

/// `photolabel collect` for a synchronous `main`.
pub fn collect_main(args: CollectArgs, progress: &dyn Progress) -> anyhow::Result<CollectSummary> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let out: Box<dyn Write> = if args.out.as_os_str() == "-" {
            Box::new(std::io::stdout().lock())
        } else {
            let file = std::fs::File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?;
            Box::new(file)
        };
        let mut out = std::io::BufWriter::new(out);
        let client = connect(&args.nats).await?;
        let js = jetstream::new(client);
        let summary = collect(&js, &args, &mut out, progress).await?;
        out.flush().context("writing the results")?;
        Ok(summary)
    })
}

/// Writes one line per distinct job id in the results stream to `out`:
/// everything the stream holds now, or (with `--expect N`) until N ids
/// were written or `--timeout` passed.
pub async fn collect(
    js: &jetstream::Context,
    args: &CollectArgs,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<CollectSummary, QueueError> {
    let name = &args.nats.results_stream;
    let receive = |detail: String| QueueError::Receive {
        stream: name.clone(),
        detail,
    };
    let mut stream = results_stream(js, name, args.nats.duplicate_window()).await?;
    let held = stream
        .info()
        .await
        .map_err(|e| receive(e.to_string()))?
        .state
        .messages;
    progress.set_total(args.expect.unwrap_or(held));
    let mut summary = CollectSummary::default();
    let done = |summary: &CollectSummary| args.expect.is_some_and(|n| summary.written >= n);
    if done(&summary) || (args.expect.is_none() && held == 0) {
        summary.complete = true;
        return Ok(summary);
    }
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            filter_subject: results_subject(name),
            ..Default::default()
        })
        .await
        .map_err(|e| receive(e.to_string()))?;
    let mut messages = ordered
        .messages()
        .await
        .map_err(|e| receive(e.to_string()))?;
    let deadline = args
        .expect
        .and(args.timeout)
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut seen = HashSet::new();
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(next) => next,
                Err(_) => return Ok(summary),
            },
            None => messages.next().await,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                // The ordered consumer recreates itself after most errors.
                tracing::debug!(error = %e, "results stream hiccup");
                continue;
            }
            None => return Err(receive("the subscription ended".into())),
        };
        let pending = message.info().map(|i| i.pending).unwrap_or(u64::MAX);
        let fresh = serde_json::from_slice::<ResultId>(&message.payload).map(|r| seen.insert(r.id));
        match fresh {
            Ok(true) => {
                if message.payload.contains(&b'\n') {
                    let value: serde_json::Value = serde_json::from_slice(&message.payload)
                        .map_err(|e| receive(e.to_string()))?;
                    serde_json::to_writer(&mut *out, &value).map_err(std::io::Error::from)?;
                } else {
                    out.write_all(&message.payload)?;
                }
                out.write_all(b"\n")?;
                summary.written += 1;
                progress.set_done(summary.written);
            }
            Ok(false) => summary.doubles += 1,
            Err(_) => summary.unreadable += 1,
        }
        if done(&summary) || (args.expect.is_none() && pending == 0) {
            summary.complete = true;
            return Ok(summary);
        }
    }
}
