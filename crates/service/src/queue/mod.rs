//! Back-filling an archive through NATS JetStream: `photolabel enqueue`,
//! `photolabel worker` and `photolabel collect`.
//!
//! - The **jobs stream** (`--jobs-stream`, default `PHOTOLABEL_JOBS`) is a
//!   work queue (retention `WorkQueue`): a job is stored until a worker acks
//!   it. Its subject is `<stream>.job`, so several pipelines (stream pairs)
//!   can share one server. Each job is published with its id as
//!   `Nats-Msg-Id`, so re-enqueuing within the stream's duplicate window
//!   (`--duplicate-window`, set when the stream is created) stores it once.
//! - Workers share one durable pull consumer (`--consumer`, default
//!   `photolabel-workers`) with explicit acks. A worker pulls only as many
//!   jobs as it has free places (`--in-flight`, by default twice the model
//!   replicas), so memory stays bounded however long the queue.
//! - The **results stream** (`--results-stream`, default
//!   `PHOTOLABEL_RESULTS`, subject `<stream>.result`, retention `Limits`)
//!   gets one message per finished job with the job id as `Nats-Msg-Id`: a
//!   job finished twice (redelivered after a crash) is stored once inside
//!   the duplicate window, and `collect` drops any later double by id.
//!
//! Delivery: at least once into a worker (a job is acked only after its
//! result is stored), once per id in what `collect` writes.

pub mod collect;
pub mod config;
pub mod enqueue;
pub mod job;
pub mod worker;
pub mod worker_http;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

pub use collect::{collect, collect_main, CollectSummary};
pub use config::{CollectArgs, EnqueueArgs, NatsArgs, WorkerArgs};
pub use enqueue::{enqueue, enqueue_main, EnqueueSummary};
pub use job::{parse_line, ErrorKind, Failure, Job, JobError, JobResult};
pub use worker::{run_worker, worker_main};

/// What can go wrong talking to NATS, per step.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot read the NATS credentials file {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot create or open the stream `{stream}`: {detail}")]
    Stream { stream: String, detail: String },
    #[error("cannot create or open the consumer `{consumer}`: {detail}")]
    Consumer { consumer: String, detail: String },
    #[error("cannot publish to `{subject}`: {detail}")]
    Publish { subject: String, detail: String },
    #[error("cannot receive from `{stream}`: {detail}")]
    Receive { stream: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The jobs stream's subject.
pub fn jobs_subject(stream: &str) -> String {
    format!("{stream}.job")
}

/// The results stream's subject.
pub fn results_subject(stream: &str) -> String {
    format!("{stream}.result")
}

/// Connects to the server named by `--nats` (with `--nats-creds` if given).
pub async fn connect(args: &NatsArgs) -> Result<async_nats::Client, QueueError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(concat!("photolabel/", env!("CARGO_PKG_VERSION")))
        .connection_timeout(Duration::from_secs(args.nats_connect_timeout.max(1)));
    if let Some(path) = &args.nats_creds {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| QueueError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    let servers: Vec<&str> = args
        .nats
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    options
        .connect(servers)
        .await
        .map_err(|source| QueueError::Connect {
            url: args.nats.clone(),
            source,
        })
}

/// Opens the jobs stream, creating it (work queue, `duplicate_window`) if
/// absent. An existing stream is used as it is.
pub async fn jobs_stream(
    js: &jetstream::Context,
    name: &str,
    duplicate_window: Duration,
) -> Result<stream::Stream, QueueError> {
    open_stream(
        js,
        stream::Config {
            name: name.to_owned(),
            subjects: vec![jobs_subject(name)],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window,
            description: Some("photolabel jobs: {\"id\", \"url\"} per message".into()),
            ..Default::default()
        },
    )
    .await
}

/// Opens the results stream, creating it (limits retention,
/// `duplicate_window`) if absent.
pub async fn results_stream(
    js: &jetstream::Context,
    name: &str,
    duplicate_window: Duration,
) -> Result<stream::Stream, QueueError> {
    open_stream(
        js,
        stream::Config {
            name: name.to_owned(),
            subjects: vec![results_subject(name)],
            retention: stream::RetentionPolicy::Limits,
            duplicate_window,
            description: Some("photolabel results: one per job id".into()),
            ..Default::default()
        },
    )
    .await
}

/// Gets the stream `config` names, or creates it on disk (jobs and results
/// must survive a server restart).
async fn open_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, QueueError> {
    let name = config.name.clone();
    js.get_or_create_stream(stream::Config {
        storage: stream::StorageType::File,
        ..config
    })
    .await
    .map_err(|e| QueueError::Stream {
        stream: name,
        detail: e.to_string(),
    })
}

/// Progress for a long command; the binary shows it as a progress bar.
pub trait Progress: Send + Sync {
    /// The total, once known (bytes for `enqueue`, results for `collect`).
    fn set_total(&self, _total: u64) {}
    /// The position moved to `done`.
    fn set_done(&self, _done: u64) {}
    /// A line for the person (a malformed job line, say), above the bar.
    fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// No progress shown.
pub struct NoProgress;

impl Progress for NoProgress {}
