//! `photolabel`: label real-estate photos the way Altum AI's Photo Labelling
//! API did — from the command line or as an HTTP service.

mod cli;
mod dataset;
mod embedding;
mod evaluation;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "photolabel", version, about, long_about = None)]
struct Cli {
    /// Log filter (e.g. `info`, `photolabel=debug`); logs go to stderr.
    #[arg(long, env = "PHOTOLABEL_LOG", default_value = "info", global = true)]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "PHOTOLABEL_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Label(cli::label::LabelArgs),
    Listing(cli::listing::ListingArgs),
    Eval(cli::eval::EvalArgs),
    Train(cli::train::TrainArgs),
    Bench(cli::bench::BenchArgs),
    Serve(ServeCommand),
    Keys(photolabel_service::KeysArgs),
    Enqueue(cli::queue::EnqueueCommand),
    Worker(cli::queue::WorkerCommand),
    Collect(cli::queue::CollectCommand),
}

/// Run the Altum-compatible HTTP API (POST /labelling/img and /labelling/url).
#[derive(Debug, clap::Args)]
struct ServeCommand {
    #[command(flatten)]
    serve: photolabel_service::ServeArgs,
    #[command(flatten)]
    model: cli::ModelArgs,
}

fn init_logging(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_json);
    let outcome = match cli.command {
        Command::Label(args) => cli::label::run(args),
        Command::Listing(args) => cli::listing::run(args),
        Command::Eval(args) => cli::eval::run(args).map(|()| ExitCode::SUCCESS),
        Command::Train(args) => cli::train::run(args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => cli::bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => {
            photolabel_service::serve_main(args.serve, args.model.config(), args.model.limits())
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Keys(args) => photolabel_service::keys_main(args).map(|()| ExitCode::SUCCESS),
        Command::Enqueue(args) => cli::queue::enqueue(args),
        Command::Worker(args) => cli::queue::worker(args),
        Command::Collect(args) => cli::queue::collect(args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("photolabel: {error:#}");
            ExitCode::from(2)
        }
    }
}
