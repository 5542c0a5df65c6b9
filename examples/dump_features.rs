//! Dumps, for every row of a labels CSV, the backbone's embedding and
//! ImageNet logits (1608 + 1000 floats; 1280 + 1000 before the mid-level
//! context of 2026-12-03) of the photo and its mirror image,
//! and of augmented copies of the `train` rows (two for the real-listing
//! sources and Houses, one for the others), for the head-lever study of
//! `tools/head_levers.py` (MODEL_CARD.md, "What was tried for real listing
//! photos"). Not part of the product: the heads are trained by
//! `photolabel train`.
//!
//! ```text
//! cargo run --release --example dump_features -- ../shared/data/labels.csv OUT_DIR
//! ```
//! writes `OUT_DIR/features.f32` (rows × 2608 little-endian f32) and
//! `OUT_DIR/index.csv` (`csv row, view`: `o0` photo, `o1` mirror, `aN_0` copy N).

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use photolabel_vision::augment::augment;
use photolabel_vision::backbone::{load_backbone, BackboneModel, EngineConfig, Precision};
use photolabel_vision::{prepare, ImageLimits, Preprocessing, View};

/// Sources whose training photos get two augmented copies instead of one.
const LISTING_SOURCES: [&str; 4] = [
    "es_gray",
    "vn_listings_dev",
    "zind_empty_home",
    "houses_dataset",
];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(csv_path), Some(out)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: dump_features LABELS.csv OUT_DIR");
    };
    let csv_path = std::path::PathBuf::from(csv_path);
    let out = std::path::PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    let base = csv_path
        .parent()
        .context("the CSV has a folder")?
        .to_path_buf();
    let mut reader = csv::Reader::from_path(&csv_path)?;
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .context(name.to_owned())
    };
    let (path_col, split_col, source_col) = (column("path")?, column("split")?, column("source")?);
    let rows: Vec<(String, String, String)> = reader
        .records()
        .map(|r| {
            let r = r?;
            Ok((
                r[path_col].to_owned(),
                r[split_col].to_owned(),
                r[source_col].to_owned(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String, Vec<f32>)>();
    let limits = ImageLimits::default();
    // fp32: the backbone the issue-11 study (MODEL_CARD.md) was measured on.
    let model = BackboneModel::embedded(Precision::Fp32);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // One single-threaded engine per core: the photos are small.
        let mut workers = Vec::new();
        for _ in 0..photolabel_vision::cores() {
            let tx = tx.clone();
            let (rows, next, base, limits, model) = (&rows, &next, &base, &limits, &model);
            workers.push(scope.spawn(move || -> anyhow::Result<()> {
                let config = EngineConfig {
                    threads: 1,
                    ..Default::default()
                };
                let mut backbone = load_backbone(model, &config)?;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((path, split, source)) = rows.get(i) else {
                        return Ok(());
                    };
                    let bytes = std::fs::read(base.join(path))?;
                    let mut emit = |name: String, bytes: &[u8], flip: bool| -> anyhow::Result<()> {
                        let preprocessing = Preprocessing {
                            view: View::Squash,
                            flip,
                        };
                        let Ok(prepared) = prepare(bytes, limits, &preprocessing) else {
                            eprintln!("cannot prepare {path} ({name})");
                            return Ok(());
                        };
                        let output = backbone.infer(prepared.tensor.view())?;
                        for v in 0..output.embedding.nrows() {
                            let mut row = output.embedding.row(v).to_vec();
                            row.extend(output.logits.row(v).iter());
                            // The receiver only stops when the writer failed.
                            let _ = tx.send((i, format!("{name}{v}"), row));
                        }
                        Ok(())
                    };
                    emit("o".into(), &bytes, true)?;
                    if split == "train" {
                        let copies = if LISTING_SOURCES.contains(&source.as_str()) {
                            2
                        } else {
                            1
                        };
                        for copy in 0..copies {
                            let seed = i as u64 * 1000 + copy;
                            if let Ok(copy_bytes) = augment(&bytes, seed, limits) {
                                emit(format!("a{copy}_"), &copy_bytes, false)?;
                            }
                        }
                    }
                }
            }));
        }
        drop(tx);
        let mut features =
            std::io::BufWriter::new(std::fs::File::create(out.join("features.f32"))?);
        let mut index = std::io::BufWriter::new(std::fs::File::create(out.join("index.csv"))?);
        for (n, (i, view, row)) in rx.into_iter().enumerate() {
            for x in row {
                features.write_all(&x.to_le_bytes())?;
            }
            writeln!(index, "{i},{view}")?;
            if n % 2000 == 1999 {
                eprintln!("{} rows", n + 1);
            }
        }
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(())
}
