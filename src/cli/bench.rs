//! `photolabel bench`: milliseconds per photo for each pipeline step, and
//! optionally inference alone at several batch sizes (the engine-only
//! ceiling the HTTP service is measured against, `scripts/bench.sh`).

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
    /// Also time inference alone on batches of these many copies of the
    /// first photo (e.g. `1,2,4,8`; each photo is all its views).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch_sizes: Vec<u16>,
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
    let mut batch_rows = Vec::new();
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
        if let Some(first) = args.photos.first() {
            let bytes = std::fs::read(first)?;
            let prepared = prepare(&bytes, &limits, &preprocessing)?;
            for &size in &args.batch_sizes {
                let batch = vec![prepared.clone(); size.into()];
                let ms = time(args.iterations, || Ok(labeller.label(&batch).map(drop)?))?;
                let per_photo = ms / f64::from(size);
                batch_rows.push(format!(
                    "| {} | {size} | {ms:.1} | {per_photo:.1} | {:.1} |",
                    labeller.engine_name(),
                    1000.0 / per_photo
                ));
            }
        }
    }
    if !batch_rows.is_empty() {
        println!();
        println!("| engine | batch | inference ms per batch | ms per photo | photos/s |");
        println!("|---|---|---|---|---|");
        for row in batch_rows {
            println!("{row}");
        }
    }
    Ok(())
}
