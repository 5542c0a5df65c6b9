//! `photolabel bench`: milliseconds per photo for each pipeline step, and
//! optionally inference alone at several batch sizes and replica layouts
//! (the engine-only ceiling the HTTP service is measured against,
//! `scripts/bench.sh`).

use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use photolabel_vision::{prepare, EngineKind, Labeller, Prepared};

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
    /// Model replicas inferring side by side in the batch table (e.g. `1,2`),
    /// with the threads `serve --replicas` gives each.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub replicas: Vec<u16>,
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
    }
    if let (Some(first), false) = (args.photos.first(), args.batch_sizes.is_empty()) {
        let bytes = std::fs::read(first)?;
        for engine in &args.engines {
            for &replicas in &args.replicas {
                let mut model = args.model.clone();
                model.engine = *engine;
                let config = model.config();
                let mut labellers = Labeller::load_replicas(&config, replicas.into())?;
                let prepared = prepare(&bytes, &model.limits(), &labellers[0].preprocessing())?;
                for &size in &args.batch_sizes {
                    let batch = vec![prepared.clone(); size.into()];
                    let (ms, wall) = time_replicas(&mut labellers, &batch, args.iterations)?;
                    let photos = labellers.len() * args.iterations.max(1) * usize::from(size);
                    let per_photo = wall.as_secs_f64() * 1000.0 / photos as f64;
                    batch_rows.push(format!(
                        "| {} | {replicas}×{} | {size} | {ms:.1} | {per_photo:.1} | {:.1} |",
                        labellers[0].engine_name(),
                        config.engine.for_replicas(replicas.into()).threads,
                        1000.0 / per_photo
                    ));
                }
            }
        }
    }
    if !batch_rows.is_empty() {
        println!();
        println!(
            "| engine | replicas × threads | batch | inference ms per batch | ms per photo | photos/s |"
        );
        println!("|---|---|---|---|---|---|");
        for row in batch_rows {
            println!("{row}");
        }
    }
    Ok(())
}

/// Every replica labels `batch` `iterations` times on its own thread, all
/// starting together after 3 warm-ups each. Returns the median ms per call
/// and the wall time of the timed part (so photos/s counts every replica).
fn time_replicas(
    labellers: &mut [Labeller],
    batch: &[Prepared],
    iterations: usize,
) -> anyhow::Result<(f64, Duration)> {
    let start = Barrier::new(labellers.len() + 1);
    std::thread::scope(|scope| {
        let threads: Vec<_> = labellers
            .iter_mut()
            .map(|labeller| {
                let start = &start;
                scope.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let warm = (0..3).try_for_each(|_| labeller.label(batch).map(drop));
                    // Every thread reaches the barrier, failed or not, so
                    // none waits forever.
                    start.wait();
                    warm?;
                    (0..iterations.max(1))
                        .map(|_| {
                            let call = Instant::now();
                            labeller.label(batch)?;
                            Ok(call.elapsed())
                        })
                        .collect()
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let mut samples = Vec::new();
        for thread in threads {
            let timed = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a replica's thread panicked"))??;
            samples.extend(timed);
        }
        Ok((median_ms(samples), began.elapsed()))
    })
}
