//! `photolabel enqueue FILE`: one job message per line of a jobs file.

use std::io::BufRead;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage as Publish};
use futures_util::stream::{FuturesUnordered, StreamExt as _};

use super::job::parse_line;
use super::{connect, jobs_stream, jobs_subject, EnqueueArgs, Progress, QueueError};

/// What an `enqueue` run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueSummary {
    /// Jobs the stream stored.
    pub published: u64,
    /// Jobs the stream already had inside its duplicate window (same id).
    pub duplicates: u64,
    /// Lines skipped as malformed (each reported with its number).
    pub malformed: u64,
}

/// `photolabel enqueue` for a synchronous `main`.
pub fn enqueue_main(args: EnqueueArgs, progress: &dyn Progress) -> anyhow::Result<EnqueueSummary> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let input: Box<dyn BufRead + Send> = if args.file.as_os_str() == "-" {
            Box::new(std::io::BufReader::new(std::io::stdin()))
        } else {
            let file = std::fs::File::open(&args.file)
                .with_context(|| format!("cannot open {}", args.file.display()))?;
            if let Ok(meta) = file.metadata() {
                progress.set_total(meta.len());
            }
            Box::new(std::io::BufReader::new(file))
        };
        let client = connect(&args.nats).await?;
        let js = jetstream::new(client.clone());
        let summary = enqueue(&js, &args, input, progress).await?;
        client.flush().await.context("flushing to NATS")?;
        Ok(summary)
    })
}

/// Reads jobs from `input` and publishes each to the jobs stream (created
/// if absent), with its id as the message id. Up to `--publish-window`
/// publications wait for their confirmation at once.
pub async fn enqueue(
    js: &jetstream::Context,
    args: &EnqueueArgs,
    mut input: impl BufRead,
    progress: &dyn Progress,
) -> Result<EnqueueSummary, QueueError> {
    let stream = &args.nats.jobs_stream;
    jobs_stream(js, stream, args.nats.duplicate_window()).await?;
    let subject = jobs_subject(stream);
    let window = args.publish_window.max(1);
    let mut summary = EnqueueSummary::default();
    let mut pending = FuturesUnordered::new();
    let mut line = Vec::new();
    let (mut number, mut read) = (0u64, 0u64);
    loop {
        line.clear();
        let n = input.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        number += 1;
        read += n as u64;
        let job = match std::str::from_utf8(&line) {
            Ok(text) => parse_line(text).map_err(|e| e.to_string()),
            Err(_) => Err("not UTF-8 text".to_owned()),
        };
        let job = match job {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(reason) => {
                summary.malformed += 1;
                progress.note(&format!("line {number}: skipped: {reason}"));
                continue;
            }
        };
        let payload = serde_json::to_vec(&job).map_err(|e| QueueError::Publish {
            subject: subject.clone(),
            detail: e.to_string(),
        })?;
        let ack = publish_retrying(
            js,
            &subject,
            Publish::build()
                .payload(payload.into())
                .message_id(job.id.as_str()),
        )
        .await?;
        pending.push(std::future::IntoFuture::into_future(ack));
        while pending.len() >= window {
            settle(pending.next().await, &subject, &mut summary)?;
        }
        progress.set_done(read);
    }
    while let Some(ack) = pending.next().await {
        settle(Some(ack), &subject, &mut summary)?;
    }
    progress.set_done(read);
    Ok(summary)
}

/// Publishing can fail for a moment (the client's outbound buffer is
/// full); try a few times before giving up.
async fn publish_retrying(
    js: &jetstream::Context,
    subject: &str,
    message: Publish,
) -> Result<jetstream::context::PublishAckFuture, QueueError> {
    let mut attempt = 0;
    loop {
        match js.send_publish(subject.to_owned(), message.clone()).await {
            Ok(ack) => return Ok(ack),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "publish failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Err(e) => {
                return Err(QueueError::Publish {
                    subject: subject.to_owned(),
                    detail: e.to_string(),
                })
            }
        }
    }
}

fn settle(
    ack: Option<Result<jetstream::publish::PublishAck, jetstream::context::PublishError>>,
    subject: &str,
    summary: &mut EnqueueSummary,
) -> Result<(), QueueError> {
    match ack {
        Some(Ok(ack)) if ack.duplicate => summary.duplicates += 1,
        Some(Ok(_)) => summary.published += 1,
        Some(Err(e)) => {
            return Err(QueueError::Publish {
                subject: subject.to_owned(),
                detail: format!("the server did not confirm a job: {e}"),
            })
        }
        None => {}
    }
    Ok(())
}
