//! Command-line configuration of `enqueue`, `worker` and `collect`. Every
//! flag is also an environment variable (`PHOTOLABEL_…`), as for `serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::FetchArgs;

/// Where the queue is: shared by the three commands, so that a pipeline
/// (one jobs stream and one results stream) is named the same way in each,
/// and several pipelines can share one server.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated for a cluster, e.g.
    /// `nats://10.0.0.5:4222` or `tls://nats.example.com`. A user and
    /// password or a token may be given in the URL.
    #[arg(
        long,
        env = "PHOTOLABEL_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats: String,

    /// NATS credentials file (`.creds`: user JWT and NKey seed) for a
    /// secured server.
    #[arg(long, env = "PHOTOLABEL_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// Seconds to wait for the connection to the NATS server.
    #[arg(long, env = "PHOTOLABEL_NATS_CONNECT_TIMEOUT", default_value_t = 10)]
    pub nats_connect_timeout: u64,

    /// JetStream stream of jobs (a work queue, subject `<name>.job`);
    /// created if absent.
    #[arg(long, env = "PHOTOLABEL_JOBS_STREAM", default_value = "PHOTOLABEL_JOBS", value_parser = parse_stream_name)]
    pub jobs_stream: String,

    /// JetStream stream of results (subject `<name>.result`); created if
    /// absent.
    #[arg(long, env = "PHOTOLABEL_RESULTS_STREAM", default_value = "PHOTOLABEL_RESULTS", value_parser = parse_stream_name)]
    pub results_stream: String,

    /// Seconds within which a second job (or result) with the same id is
    /// dropped by the server. Applies only when this command creates a
    /// stream; an existing stream keeps its own window.
    #[arg(long, env = "PHOTOLABEL_DUPLICATE_WINDOW", default_value_t = 3600)]
    pub duplicate_window: u64,
}

impl NatsArgs {
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window.max(1))
    }
}

/// A stream name JetStream accepts (and that makes a valid subject prefix).
fn parse_stream_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}`: a stream name is 1 to 200 of A-Z, a-z, 0-9, `_` and `-`"
        ))
    }
}

/// `photolabel enqueue`: publish one job per line of a file.
#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Jobs file: JSON lines `{"id": "…", "url": "…"}` or CSV rows `id,url`
    /// (an `id,url` header is skipped); `-` reads standard input. A
    /// malformed line is reported with its number and skipped.
    pub file: PathBuf,

    /// Jobs published and not yet confirmed by the server at once.
    #[arg(long, env = "PHOTOLABEL_ENQUEUE_WINDOW", default_value_t = 256)]
    pub publish_window: usize,
}

/// `photolabel collect`: write the results stream to a JSON lines file.
#[derive(Debug, Clone, Args)]
pub struct CollectArgs {
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Output file, one JSON line per job id: `{"id": …, "Output": {…}}` or
    /// `{"id": …, "error": {"kind": …, "detail": …}}`. `-` writes to
    /// standard output.
    #[arg(long, env = "PHOTOLABEL_COLLECT_OUT")]
    pub out: PathBuf,

    /// Wait until this many distinct job ids have results (otherwise write
    /// what the stream holds now and stop).
    #[arg(long, env = "PHOTOLABEL_COLLECT_EXPECT")]
    pub expect: Option<u64>,

    /// With `--expect`: give up after this many seconds (exit status 1,
    /// the results so far written). Without it, wait as long as it takes.
    #[arg(long, env = "PHOTOLABEL_COLLECT_TIMEOUT")]
    pub timeout: Option<u64>,
}

/// `photolabel worker`: label jobs from the jobs stream.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub nats: NatsArgs,

    /// Durable consumer the workers of one pipeline share (each job goes to
    /// one of them).
    #[arg(long, env = "PHOTOLABEL_CONSUMER", default_value = "photolabel-workers", value_parser = parse_stream_name)]
    pub consumer: String,

    /// Attempts at a job that fails for a reason that may pass (timeout,
    /// 5xx, connection error) before it gets an error result. A job whose
    /// worker died with it counts an attempt too.
    #[arg(long, env = "PHOTOLABEL_MAX_DELIVER", default_value_t = 5)]
    pub max_deliver: u32,

    /// Seconds before the first retry of a transient failure; each further
    /// retry waits twice as long (at most 10 minutes).
    #[arg(long, env = "PHOTOLABEL_RETRY_BACKOFF", default_value_t = 2.0)]
    pub retry_backoff: f64,

    /// Seconds the server waits for a job's ack before giving it to another
    /// worker (when the worker holding it died). Set when the consumer is
    /// created; longer than `--url-timeout` plus labelling.
    #[arg(long, env = "PHOTOLABEL_ACK_WAIT", default_value_t = 60)]
    pub ack_wait: u64,

    /// Jobs this worker holds at once (downloading, decoding, labelling).
    /// 0 = twice the model replicas.
    #[arg(long, env = "PHOTOLABEL_IN_FLIGHT", default_value_t = 0)]
    pub in_flight: usize,

    /// Copies of the model labelling in parallel. 0 = auto: one per core
    /// on machines of up to 4 cores, then 4.
    #[arg(long, env = "PHOTOLABEL_REPLICAS", default_value_t = 0)]
    pub replicas: usize,

    /// In percent: when the top scene's confidence is at or below this, the
    /// result also carries the second scene.
    #[arg(long, env = "PHOTOLABEL_SECOND_SCENE_THRESHOLD", default_value_t = photolabel_taxonomy::DEFAULT_SECOND_SCENE_THRESHOLD)]
    pub second_scene_threshold: f64,

    #[command(flatten)]
    pub fetch: FetchArgs,

    /// Serve `GET /health` and `GET /metrics` (Prometheus text) on this
    /// address, e.g. `127.0.0.1:9464`. Not served when absent.
    #[arg(long, env = "PHOTOLABEL_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// Seconds in-flight jobs get to finish after SIGTERM or Ctrl-C; those
    /// still running then are handed back to the queue (nak).
    #[arg(long, env = "PHOTOLABEL_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
}

impl WorkerArgs {
    /// `--replicas` with 0 resolved for a machine of `cores` cores.
    pub fn replicas_for(&self, cores: usize) -> usize {
        match self.replicas {
            0 => photolabel_vision::default_replicas(cores),
            n => n,
        }
    }

    /// The wait before retry number `attempt` (1 = the first retry).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.retry_backoff.clamp(0.0, 600.0);
        let factor = 2f64.powi(attempt.saturating_sub(1).min(20) as i32);
        Duration::from_secs_f64((base * factor).min(600.0))
    }

    /// Checks the flags that clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_deliver >= 1, "--max-deliver must be at least 1");
        anyhow::ensure!(self.ack_wait >= 1, "--ack-wait must be at least 1 second");
        anyhow::ensure!(
            (0.0..=100.0).contains(&self.second_scene_threshold),
            "--second-scene-threshold must be a percentage between 0 and 100"
        );
        anyhow::ensure!(self.replicas <= 64, "--replicas must be at most 64");
        anyhow::ensure!(
            self.retry_backoff.is_finite() && self.retry_backoff >= 0.0,
            "--retry-backoff must be a number of seconds"
        );
        self.fetch.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    #[test]
    fn defaults_and_backoff() {
        let args = Wrapper::parse_from(["worker"]).worker;
        assert_eq!(args.nats.jobs_stream, "PHOTOLABEL_JOBS");
        assert_eq!(args.nats.results_stream, "PHOTOLABEL_RESULTS");
        assert_eq!(args.max_deliver, 5);
        assert!(!args.fetch.allow_private_urls);
        assert_eq!(args.backoff(1), Duration::from_secs(2));
        assert_eq!(args.backoff(3), Duration::from_secs(8));
        assert_eq!(args.backoff(40), Duration::from_secs(600));
        args.validate().expect("defaults are valid");
    }

    #[test]
    fn stream_names() {
        assert!(parse_stream_name("JOBS_1-a").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            assert!(parse_stream_name(bad).is_err(), "{bad}");
        }
    }
}
