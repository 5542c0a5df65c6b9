//! `photolabel worker`: pulls jobs, fetches each URL with the SSRF-safe
//! [`Fetcher`], labels the photo with the model worker of `serve`
//! ([`crate::worker`]) and the same decision rules, publishes the result and
//! only then acks the job.
//!
//! - **Back-pressure**: a job is pulled only when one of `--in-flight`
//!   places is free (by default twice the model replicas, so a download
//!   overlaps the labelling of another photo); the pull asks the server for
//!   exactly as many jobs as there are free places.
//! - **Failures**: a permanent one ([`ErrorKind::is_transient`] false) gets
//!   its error result at once; a transient one is handed back (nak) with a
//!   back-off of `--retry-backoff` × 2^(attempt−1), and on attempt
//!   `--max-deliver` (or any later one, when deliveries were lost to
//!   workers that died) gets its error result. A job delivered more than
//!   twice `--max-deliver` times (its workers kept dying) gets `abandoned`
//!   without another try.
//! - **SIGTERM / Ctrl-C**: no more pulls; in-flight jobs get
//!   `--shutdown-grace` seconds to finish, the rest are handed back (nak)
//!   for another worker; exit status 0.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, message::PublishMessage, AckKind};
use futures_util::StreamExt as _;
use photolabel_taxonomy::{decide, DecisionRules, Label};
use photolabel_vision::{ImageLimits, Labeller, ModelConfig};
use tokio::sync::{watch, Semaphore};

use super::job::{ErrorKind, Job, JobResult};
use super::{connect, jobs_stream, jobs_subject, results_stream, results_subject, WorkerArgs};
use crate::api::prepare_off_thread;
use crate::fetch::{FetchError, Fetcher};
use crate::worker::{spawn_worker, Model, ModelState, WorkerHandle};

/// How long one pull waits for jobs before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// `photolabel worker` for a synchronous `main`: loads the model's
/// replicas, works until SIGTERM or Ctrl-C.
pub fn worker_main(
    args: WorkerArgs,
    model: ModelConfig,
    limits: ImageLimits,
) -> anyhow::Result<()> {
    let replicas = args.replicas_for(photolabel_vision::cores());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("photolabel-queue")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_worker(
        args,
        limits,
        move || Labeller::load_replicas(&model, replicas).map_err(|e| e.to_string()),
        crate::server::shutdown_signal(),
    ))
}

/// Counters behind `/metrics`.
#[derive(Default)]
pub struct WorkerMetrics {
    /// Jobs that got labels.
    pub done: AtomicU64,
    /// Jobs that got an error result.
    pub failed: AtomicU64,
    /// Transient failures handed back for a retry.
    pub retried: AtomicU64,
    /// Jobs held right now.
    pub in_flight: AtomicU64,
}

/// What every job task shares.
struct Shared {
    js: jetstream::Context,
    results_subject: String,
    fetcher: Fetcher,
    model: WorkerHandle,
    limits: ImageLimits,
    rules: DecisionRules,
    args: WorkerArgs,
    metrics: Arc<WorkerMetrics>,
}

/// Runs a worker until `shutdown` resolves. `load` returns the model
/// replicas (on the model thread).
pub async fn run_worker<M, F>(
    args: WorkerArgs,
    limits: ImageLimits,
    load: F,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    M: Model,
    F: FnOnce() -> Result<Vec<M>, String> + Send + 'static,
{
    args.validate()?;
    args.fetch.warn_if_private_allowed();
    let fetcher = Fetcher::new(args.fetch.config()).context("cannot build the URL fetcher")?;
    // The model loads on its own thread while we connect. Its queue never
    // refuses: it is as large as the places a worker holds.
    let places = match args.in_flight {
        0 => 2 * args.replicas_for(photolabel_vision::cores()),
        n => n,
    }
    .max(1);
    let (model, model_thread) =
        spawn_worker(load, places, 1).context("cannot start the model worker")?;

    let client = connect(&args.nats).await?;
    let js = jetstream::new(client.clone());
    let window = args.nats.duplicate_window();
    let stream = jobs_stream(&js, &args.nats.jobs_stream, window).await?;
    results_stream(&js, &args.nats.results_stream, window).await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &args.consumer,
            consumer::pull::Config {
                durable_name: Some(args.consumer.clone()),
                description: Some("photolabel workers".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(args.ack_wait),
                // The worker counts attempts itself (so the last one still
                // gets a result); the server never drops a job.
                max_deliver: -1,
                filter_subject: jobs_subject(&args.nats.jobs_stream),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| super::QueueError::Consumer {
            consumer: args.consumer.clone(),
            detail: e.to_string(),
        })?;

    match model.wait_loaded().await {
        ModelState::Ready(info) => tracing::info!(
            engine = %info.engine,
            replicas = info.replicas,
            in_flight = places,
            stream = %args.nats.jobs_stream,
            consumer = %args.consumer,
            "worker ready"
        ),
        ModelState::Failed(cause) => anyhow::bail!("the model failed to load: {cause}"),
        ModelState::Loading => unreachable!("wait_loaded returns once loaded"),
    }

    let metrics = Arc::new(WorkerMetrics::default());
    let (stop_metrics, metrics_stopped) = watch::channel(false);
    let metrics_server = match args.metrics_bind {
        Some(bind) => Some(
            super::worker_http::serve(
                bind,
                super::worker_http::MetricsState {
                    metrics: metrics.clone(),
                    client: client.clone(),
                    consumer: consumer.clone(),
                    model: model.clone(),
                },
                metrics_stopped,
            )
            .await?,
        ),
        None => None,
    };

    let shared = Arc::new(Shared {
        js: js.clone(),
        results_subject: results_subject(&args.nats.results_stream),
        fetcher,
        model,
        limits,
        rules: DecisionRules {
            second_scene_threshold: args.second_scene_threshold,
        },
        args: args.clone(),
        metrics: metrics.clone(),
    });
    let (abort_tx, abort_rx) = watch::channel(false);
    let semaphore = Arc::new(Semaphore::new(places));
    pull_loop(&consumer, &shared, &semaphore, &abort_rx, shutdown).await;

    tracing::info!(
        in_flight = metrics.in_flight.load(Ordering::SeqCst),
        "stopping: no more jobs pulled"
    );
    let all = u32::try_from(places).unwrap_or(u32::MAX);
    let grace = Duration::from_secs(args.shutdown_grace);
    if tokio::time::timeout(grace, semaphore.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace over: handing the jobs still in flight back");
        let _ = abort_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), semaphore.acquire_many(all)).await;
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "could not flush to NATS");
    }
    let _ = stop_metrics.send(true);
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    drop(shared);
    let joined = tokio::task::spawn_blocking(move || model_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("model worker ended abnormally");
    }
    tracing::info!(
        done = metrics.done.load(Ordering::SeqCst),
        failed = metrics.failed.load(Ordering::SeqCst),
        "stopped"
    );
    Ok(())
}

/// Pulls as many jobs as there are free places, and starts a task for each,
/// until `shutdown` resolves.
async fn pull_loop(
    consumer: &consumer::PullConsumer,
    shared: &Arc<Shared>,
    semaphore: &Arc<Semaphore>,
    abort: &watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            () = &mut shutdown => return,
            permit = semaphore.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let mut permits = vec![first];
        while let Ok(permit) = semaphore.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull jobs; retrying in 1 s");
                drop(permits);
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                () = &mut shutdown => return,
                next = batch.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let Some(permit) = permits.pop() else {
                        // More than asked for: hand it back at once.
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        continue;
                    };
                    let shared = shared.clone();
                    let abort = abort.clone();
                    shared.metrics.in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        handle(&shared, message, abort).await;
                        shared.metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "pull ended");
                    break;
                }
                None => break,
            }
        }
    }
}

/// One job, from delivery to ack (or nak).
async fn handle(shared: &Shared, message: jetstream::Message, mut abort: watch::Receiver<bool>) {
    let (delivered, sequence) = match message.info() {
        Ok(info) => (info.delivered.max(1) as u32, info.stream_sequence),
        Err(_) => (1, 0),
    };
    let max = shared.args.max_deliver;
    let job = match Job::from_json(&message.payload) {
        Ok(job) => job,
        Err(e) => {
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_else(|| format!("seq:{sequence}"));
            let result = JobResult::failed(id, ErrorKind::InvalidJob, e.to_string());
            finish(shared, &message, result).await;
            return;
        }
    };
    // A job whose workers died with it still gets its attempts (a kill
    // must not cost it its last one), but not forever: a photo that kills
    // every worker that tries it must not go round without end.
    if delivered > max.saturating_mul(2) {
        let result = JobResult::failed(
            job.id,
            ErrorKind::Abandoned,
            format!("delivered {delivered} times, at most {max} with an outcome (the workers holding it stopped)"),
        );
        finish(shared, &message, result).await;
        return;
    }
    let outcome = tokio::select! {
        outcome = label(shared, &job) => outcome,
        _ = async { let _ = abort.wait_for(|aborted| *aborted).await; } => {
            tracing::info!(id = %job.id, "handed back unfinished");
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(id = %job.id, error = %e, "cannot hand the job back");
            }
            return;
        }
    };
    let result = match outcome {
        Ok(label) => JobResult::labelled(job.id, label),
        Err((kind, detail)) if kind.is_transient() && delivered < max => {
            let delay = shared.args.backoff(delivered);
            tracing::info!(id = %job.id, kind = kind.as_str(), %detail, attempt = delivered, retry_in_s = delay.as_secs_f64(), "transient failure; retrying");
            shared.metrics.retried.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = message.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(id = %job.id, error = %e, "cannot hand the job back");
            }
            return;
        }
        Err((kind, detail)) if kind.is_transient() => JobResult::failed(
            job.id,
            kind,
            format!("{detail} (attempt {delivered} of {max})"),
        ),
        Err((kind, detail)) => JobResult::failed(job.id, kind, detail),
    };
    finish(shared, &message, result).await;
}

/// Publishes the result (id = job id) and, once the server has stored it,
/// acks the job. If the result cannot be stored the job is handed back.
async fn finish(shared: &Shared, message: &jetstream::Message, result: JobResult) {
    let failed = result.error.is_some();
    let id = result.id.clone();
    let stored = match serde_json::to_vec(&result) {
        Ok(payload) => publish(shared, &id, payload).await,
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = stored {
        tracing::warn!(%id, error = %e, "cannot store the result; handing the job back");
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    }
    if let Err(e) = message.double_ack().await {
        // The result is stored; a redelivery is deduplicated by id.
        tracing::warn!(%id, error = %e, "cannot ack the job");
    }
    let counter = if failed {
        &shared.metrics.failed
    } else {
        &shared.metrics.done
    };
    counter.fetch_add(1, Ordering::SeqCst);
    match &result.error {
        Some(error) => {
            tracing::info!(%id, kind = error.kind.as_str(), detail = %error.detail, "job failed")
        }
        None => tracing::debug!(%id, "job labelled"),
    }
}

async fn publish(shared: &Shared, id: &str, payload: Vec<u8>) -> Result<(), String> {
    let ack = shared
        .js
        .send_publish(
            shared.results_subject.clone(),
            PublishMessage::build()
                .payload(payload.into())
                .message_id(id),
        )
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(|_| ()).map_err(|e| e.to_string())
}

/// Fetch, decode, label, decide: the photo's labels, or why not.
async fn label(shared: &Shared, job: &Job) -> Result<Label, (ErrorKind, String)> {
    let bytes = shared
        .fetcher
        .fetch(&job.url)
        .await
        .map_err(|e| (fetch_error_kind(&e), e.to_string()))?;
    let slot = shared
        .model
        .reserve()
        .map_err(|e| (ErrorKind::Internal, e.to_string()))?;
    let prepared = prepare_off_thread(bytes, shared.limits, slot.preprocessing(), false)
        .await
        .map_err(|e| (ErrorKind::NotAnImage, e.to_string()))?;
    let labelled = slot
        .label(prepared)
        .await
        .map_err(|e| (ErrorKind::Internal, e.to_string()))?;
    Ok(decide(&labelled.probabilities, &shared.rules))
}

/// Which results' error kind a download failure is.
pub fn fetch_error_kind(error: &FetchError) -> ErrorKind {
    match error {
        FetchError::TooLong(_)
        | FetchError::Malformed(_)
        | FetchError::Scheme(_)
        | FetchError::NoHost
        | FetchError::Credentials
        | FetchError::ForbiddenAddress(_)
        | FetchError::TooManyRedirects(_)
        | FetchError::BadRedirect => ErrorKind::UrlRefused,
        FetchError::Status(404 | 410) => ErrorKind::NotFound,
        FetchError::Status(408 | 429 | 500..=599) => ErrorKind::ServerError,
        FetchError::Status(_) => ErrorKind::HttpStatus,
        FetchError::TooLarge(_) => ErrorKind::TooLarge,
        FetchError::Timeout => ErrorKind::Timeout,
        FetchError::Unresolvable | FetchError::Http(_) => ErrorKind::Unreachable,
        FetchError::Client(_) => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_errors_map_to_kinds() {
        let ip = "127.0.0.1".parse().expect("ip");
        assert_eq!(
            fetch_error_kind(&FetchError::ForbiddenAddress(ip)),
            ErrorKind::UrlRefused
        );
        assert_eq!(
            fetch_error_kind(&FetchError::Status(404)),
            ErrorKind::NotFound
        );
        assert_eq!(
            fetch_error_kind(&FetchError::Status(503)),
            ErrorKind::ServerError
        );
        assert_eq!(
            fetch_error_kind(&FetchError::Status(403)),
            ErrorKind::HttpStatus
        );
        assert_eq!(fetch_error_kind(&FetchError::Timeout), ErrorKind::Timeout);
        assert!(fetch_error_kind(&FetchError::Http("reset".into())).is_transient());
        assert!(!fetch_error_kind(&FetchError::TooLarge(1)).is_transient());
    }
}
