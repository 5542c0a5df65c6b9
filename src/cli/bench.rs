//! `photolabel bench`: milliseconds per photo for each pipeline step.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use photolabel_vision::{prepare, EngineKind};

use super::ModelArgs;

/// Time decode+preprocess and inference per photo, per engine.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// JPEG/PNG files to time (e.g. tests/fixtures/bench/*.jpg).
    #[arg(required = true)]
    pub photos: Vec<PathBuf>,
    /// Timed repetitions per photo and step (after 3 warm-up runs).
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
    /// Engines to time.
    #[arg(long, value_delimiter = ',', default_value = "ort,tract")]
    pub engines: Vec<EngineKind>,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn time(iterations: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed());
    }
    Ok(median_ms(samples))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    println!("| photo | engine | decode+preprocess ms | inference ms | end to end ms |");
    println!("|---|---|---|---|---|");
    for engine in &args.engines {
        let mut model = args.model.clone();
        model.engine = *engine;
        let mut labeller = model.load()?;
        let limits = model.limits();
        let preprocessing = labeller.preprocessing();
        for path in &args.photos {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let prepared = prepare(&bytes, &limits, &preprocessing)?;
            let pre_ms = time(args.iterations, || {
                Ok(prepare(&bytes, &limits, &preprocessing).map(drop)?)
            })?;
            let batch = [prepared];
            let infer_ms = time(args.iterations, || Ok(labeller.label(&batch).map(drop)?))?;
            let total_ms = time(args.iterations, || {
                let prepared = prepare(&bytes, &limits, &preprocessing)?;
                Ok(labeller.label(&[prepared]).map(drop)?)
            })?;
            println!(
                "| {} | {} | {pre_ms:.1} | {infer_ms:.1} | {total_ms:.1} |",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                labeller.engine_name()
            );
        }
    }
    Ok(())
}
