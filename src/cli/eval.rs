//! `photolabel eval`: measure the labeller on a labelled photo set.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use photolabel_taxonomy::{decide, DecisionRules, ImageClass, TaxonomyClass};
use serde::Serialize;

use super::ModelArgs;
use crate::dataset::read_labels;
use crate::embedding::embed_labelled;
use crate::evaluation::{expected_calibration_error, LevelReport, LevelTally};

/// Measure accuracy, macro-F1, per-class precision/recall, confusion
/// matrices and calibration on a labels CSV.
///
/// A row counts only at the levels it is labelled for: the room over rows
/// labelled indoor with a room, the scene over rows labelled outdoor with a
/// scene (both scored on the head's own choice, given the true image
/// class), the leaf (room, subclass, scene or `other`) end to end.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Labels CSV in the format of shared/data/labels.csv.
    pub labels: PathBuf,
    /// Only rows of this split.
    #[arg(long)]
    pub split: Option<String>,
    /// One JSON object on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Cache embeddings here between runs (keyed by backbone and preprocessing).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    /// Rows scored (photos that could be read).
    pub count: usize,
    /// Rows that could not be read or decoded.
    pub failed: usize,
    pub image_class: LevelReport,
    pub room: LevelReport,
    pub scene: LevelReport,
    pub leaf: LevelReport,
    /// Expected calibration error of every stage decision pooled (image
    /// class on all rows, room and scene on their rows).
    pub ece: f64,
    /// Leaf accuracy per data source.
    pub leaf_accuracy_by_source: BTreeMap<String, SourceScore>,
    /// Outdoor photos given a second scene, and how often the truth was the first or second.
    pub second_scene: SecondSceneReport,
    pub engine: String,
    pub backbone_sha256: String,
}

#[derive(Debug, Serialize)]
pub struct SourceScore {
    pub count: usize,
    pub accuracy: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct SecondSceneReport {
    pub outdoor_rows: usize,
    pub with_second_scene: usize,
    pub first_or_second_correct: f64,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let photos = read_labels(&args.labels, args.split.as_deref())?;
    let mut labeller = args.model.load()?;
    let embeddings = embed_labelled(
        labeller.embedder_mut(),
        &photos,
        &args.model.limits(),
        args.cache.as_deref(),
        "evaluating",
    )?;

    let rules = DecisionRules::default();
    let mut image = LevelTally::default();
    let mut room = LevelTally::default();
    let mut scene = LevelTally::default();
    let mut leaf = LevelTally::default();
    let mut by_source: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut second = SecondSceneReport::default();
    let mut second_hits = 0usize;
    let mut failed = 0usize;
    for (photo, embedding) in photos.iter().zip(&embeddings) {
        let Ok(embedding) = embedding else {
            failed += 1;
            continue;
        };
        let p = labeller
            .heads()
            .stage_probabilities(embedding.mean().view());
        let (predicted, confidence) = p.image.top();
        image.add(photo.image_class.name(), predicted.name(), confidence);
        if let (ImageClass::Indoor, Some(truth)) = (photo.image_class, photo.room) {
            let (predicted, confidence) = p.room.top();
            room.add(truth.name(), predicted.name(), confidence);
        }
        if let (ImageClass::Outdoor, Some(truth)) = (photo.image_class, photo.scene) {
            let (predicted, confidence) = p.scene.top();
            scene.add(truth.name(), predicted.name(), confidence);
        }
        let label = decide(&p, &rules);
        if let Some(truth) = photo.leaf() {
            // End-to-end confidence: the product of the stages' confidences.
            let confidence = end_to_end_confidence(&label);
            leaf.add(truth, label.leaf(), confidence);
            let entry = by_source.entry(photo.source.clone()).or_default();
            entry.0 += 1;
            entry.1 += usize::from(truth == label.leaf());
        }
        if let (
            Some(truth),
            photolabel_taxonomy::LabelDetail::Outdoor {
                scene,
                second_scene,
            },
        ) = (photo.scene, &label.detail)
        {
            second.outdoor_rows += 1;
            if let Some(second_scene) = second_scene {
                second.with_second_scene += 1;
                second_hits += usize::from(scene.0 == truth || second_scene.0 == truth);
            }
        }
    }
    second.first_or_second_correct = if second.with_second_scene > 0 {
        second_hits as f64 / second.with_second_scene as f64
    } else {
        0.0
    };
    let ece = expected_calibration_error(
        image
            .outcomes()
            .chain(room.outcomes())
            .chain(scene.outcomes()),
    );
    let report = EvalReport {
        count: photos.len() - failed,
        failed,
        image_class: image.report(),
        room: room.report(),
        scene: scene.report(),
        leaf: leaf.report(),
        ece,
        leaf_accuracy_by_source: by_source
            .into_iter()
            .map(|(source, (count, correct))| {
                (
                    source,
                    SourceScore {
                        count,
                        accuracy: correct as f64 / count.max(1) as f64,
                    },
                )
            })
            .collect(),
        second_scene: second,
        engine: labeller.engine_name().to_owned(),
        backbone_sha256: labeller.backbone_sha256().to_owned(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&report);
    }
    Ok(())
}

fn end_to_end_confidence(label: &photolabel_taxonomy::Label) -> f64 {
    use photolabel_taxonomy::LabelDetail;
    label.image_confidence
        * match &label.detail {
            LabelDetail::Indoor { room, subclass } => room.1 * subclass.map_or(1.0, |s| s.1),
            LabelDetail::Outdoor { scene, .. } => scene.1,
            LabelDetail::Other => 1.0,
        }
}

/// Tables for a person; written in one go so that `| head` closing the pipe
/// ends the output quietly instead of panicking in `println!`.
fn print_tables(report: &EvalReport) {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let mut out = String::new();
    writeln!(
        out,
        "{} photos scored ({} unreadable), engine {}, backbone {}",
        report.count,
        report.failed,
        report.engine,
        &report.backbone_sha256[..16]
    )
    .ok();
    writeln!(
        out,
        "\n{:<12} {:>6} {:>9} {:>9} {:>7}",
        "level", "count", "accuracy", "macro-F1", "ECE"
    )
    .ok();
    for (name, level) in [
        ("image_class", &report.image_class),
        ("room", &report.room),
        ("scene", &report.scene),
        ("leaf", &report.leaf),
    ] {
        writeln!(
            out,
            "{name:<12} {:>6} {:>9.4} {:>9.4} {:>7.4}",
            level.count, level.accuracy, level.macro_f1, level.ece
        )
        .ok();
    }
    writeln!(out, "pooled stage ECE {:.4}", report.ece).ok();
    for (name, level) in [
        ("image_class", &report.image_class),
        ("room", &report.room),
        ("scene", &report.scene),
        ("leaf", &report.leaf),
    ] {
        writeln!(out, "\n{name}: per class").ok();
        writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>7}",
            "class", "precision", "recall", "support"
        )
        .ok();
        for (class, score) in &level.per_class {
            writeln!(
                out,
                "{class:<16} {:>9.4} {:>9.4} {:>7}",
                score.precision, score.recall, score.support
            )
            .ok();
        }
        let predicted: std::collections::BTreeSet<&String> = level
            .confusion
            .values()
            .flat_map(|row| row.keys())
            .collect();
        writeln!(out, "confusion (rows truth, columns prediction):").ok();
        write!(out, "{:<16}", "").ok();
        for p in &predicted {
            write!(out, " {:>8.8}", p).ok();
        }
        writeln!(out).ok();
        for (truth, row) in &level.confusion {
            write!(out, "{truth:<16}").ok();
            for p in &predicted {
                write!(out, " {:>8}", row.get(*p).copied().unwrap_or(0)).ok();
            }
            writeln!(out).ok();
        }
    }
    writeln!(out, "\nleaf accuracy by source:").ok();
    for (source, score) in &report.leaf_accuracy_by_source {
        writeln!(
            out,
            "{source:<18} {:>6} {:>9.4}",
            score.count, score.accuracy
        )
        .ok();
    }
    let s = &report.second_scene;
    writeln!(
        out,
        "\nsecond scene: {} of {} outdoor photos; first or second right {:.4}",
        s.with_second_scene, s.outdoor_rows, s.first_or_second_correct
    )
    .ok();
    let _ = std::io::stdout().write_all(out.as_bytes());
}
