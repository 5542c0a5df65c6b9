//! `photolabel enqueue`, `worker` and `collect`: back-filling an archive
//! through NATS JetStream. The work is in `photolabel_service::queue`; here
//! are the arguments and the progress bars.

use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use photolabel_service::queue::{self, CollectArgs, EnqueueArgs, Progress, WorkerArgs};

use super::ModelArgs;

/// Publish one labelling job per line of FILE to the jobs stream.
///
/// FILE holds JSON lines `{"id": "…", "url": "…"}` or CSV rows `id,url`.
/// The job id is the message id: enqueuing the same file again within the
/// stream's duplicate window adds nothing. A malformed line is reported
/// with its number and skipped. Start `photolabel worker` anywhere to label
/// the jobs and `photolabel collect` to write the results.
#[derive(Debug, Args)]
pub struct EnqueueCommand {
    #[command(flatten)]
    pub args: EnqueueArgs,
}

/// Label jobs from the jobs stream until SIGTERM or Ctrl-C.
///
/// Each job's URL is fetched with the SSRF-safe fetcher of
/// `/labelling/url`, labelled with the same model and decision rules, and
/// its result published to the results stream before the job is acked. Run
/// as many workers, on as many machines, as you like: they share the jobs.
#[derive(Debug, Args)]
pub struct WorkerCommand {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Write the results stream to a JSON lines file, one line per job id.
///
/// Lines are `{"id": …, "Output": {…}}` (the object `/labelling/img`
/// returns under "Output") or `{"id": …, "error": {"kind": …, "detail": …}}`.
/// Error kinds: url_refused, not_found, http_status, too_large,
/// not_an_image (permanent); timeout, server_error, unreachable, internal
/// (after --max-deliver attempts); abandoned, invalid_job.
#[derive(Debug, Args)]
pub struct CollectCommand {
    #[command(flatten)]
    pub args: CollectArgs,
}

/// An indicatif bar on stderr (hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Bar {
    fn new(template: &str, what: &str) -> Bar {
        let bar = ProgressBar::new(0);
        bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
        bar.set_message(what.to_owned());
        Bar(bar)
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }
    fn set_done(&self, done: u64) {
        self.0.set_position(done);
    }
    fn note(&self, line: &str) {
        self.0.suspend(|| eprintln!("{line}"));
    }
}

pub fn enqueue(command: EnqueueCommand) -> anyhow::Result<ExitCode> {
    let bar = Bar::new(
        "{msg} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        "enqueue",
    );
    let summary = queue::enqueue_main(command.args, &bar)?;
    bar.0.finish_and_clear();
    eprintln!(
        "enqueued {} jobs; {} already in the stream (same id); {} malformed lines skipped",
        summary.published, summary.duplicates, summary.malformed
    );
    Ok(ExitCode::SUCCESS)
}

pub fn worker(command: WorkerCommand) -> anyhow::Result<ExitCode> {
    queue::worker_main(
        command.worker,
        command.model.config(),
        command.model.limits(),
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn collect(command: CollectCommand) -> anyhow::Result<ExitCode> {
    let bar = Bar::new(
        "{msg} {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
        "collect",
    );
    let summary = queue::collect_main(command.args, &bar)?;
    bar.0.finish_and_clear();
    eprintln!(
        "wrote {} results; {} doubles dropped; {} unreadable messages",
        summary.written, summary.doubles, summary.unreadable
    );
    if summary.complete {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("photolabel: --timeout passed before --expect results arrived");
        Ok(ExitCode::FAILURE)
    }
}
