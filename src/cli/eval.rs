//! `photolabel eval`: measure the labeller on a labelled photo set.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use photolabel_taxonomy::{
    decide, DecisionRules, ImageClass, Label, LabelDetail, RoomClass, StageProbabilities,
    TaxonomyClass,
};
use serde::Serialize;

use super::ModelArgs;
use crate::dataset::{read_labels, LabelledPhoto};
use crate::embedding::{embed_labelled, Variant};
use crate::evaluation::{
    chance_ece, expected_calibration_error, ChanceEce, LevelReport, LevelSummary, LevelTally,
};

/// Measure accuracy, macro-F1, per-class precision/recall, confusion
/// matrices and calibration on a labels CSV, overall and per data source.
///
/// A row counts only at the levels it is labelled for: the room over rows
/// labelled indoor with a room, the subclass over rows labelled
/// `other_room` with a subclass, the scene over rows labelled outdoor with
/// a scene (each scored on the head's own choice, given the true class
/// above it), the leaf (room, subclass, scene or `other`) end to end.
///
/// Every accuracy comes with its 95 % interval (Wilson), and every ECE
/// with what a perfectly calibrated model would show by chance on the same
/// rows (simulated, fixed seed): on a source of a few dozen photos that is
/// 0.1 or more, and only an ECE above its 95th percentile (marked `*`) says
/// the confidences are off.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Labels CSV in the format of shared/data/labels.csv.
    pub labels: PathBuf,
    /// Only rows of this split.
    #[arg(long)]
    pub split: Option<String>,
    /// Only rows of these sources (the CSV's `source` column; repeat the
    /// flag or separate names with commas).
    #[arg(long, value_delimiter = ',')]
    pub source: Vec<String>,
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
    /// When the mirrored view was run (`--second-view` or the heads').
    pub second_view: String,
    /// Backbone passes per photo that labelling would have run.
    pub views_per_photo: f64,
    pub image_class: LevelReport,
    pub room: LevelReport,
    pub subclass: LevelReport,
    pub scene: LevelReport,
    pub leaf: LevelReport,
    /// Expected calibration error of every stage decision pooled (image
    /// class on all rows, room, subclass and scene on their rows).
    pub ece: f64,
    /// What `ece` would come to by chance alone on these rows.
    pub ece_if_calibrated: ChanceEce,
    /// Every level's accuracy and ECE per data source.
    pub by_source: BTreeMap<String, GroupReport>,
    /// The same for rows whose `source_label` says whether the picture is a
    /// `photo` or a `render` (`label|photo-or-render|sure-or-unsure`).
    pub by_kind: BTreeMap<String, GroupReport>,
    /// Outdoor photos given a second scene, and how often the truth was the first or second.
    pub second_scene: SecondSceneReport,
    pub engine: String,
    pub backbone_sha256: String,
}

/// Accuracy and ECE of every level over one group of rows.
#[derive(Debug, Serialize)]
pub struct GroupReport {
    pub count: usize,
    pub image_class: LevelSummary,
    pub room: LevelSummary,
    pub subclass: LevelSummary,
    pub scene: LevelSummary,
    pub leaf: LevelSummary,
    /// Pooled stage ECE over the group's rows.
    pub ece: f64,
    /// What `ece` would come to by chance alone on these rows.
    pub ece_if_calibrated: ChanceEce,
}

#[derive(Debug, Serialize, Default)]
pub struct SecondSceneReport {
    pub outdoor_rows: usize,
    pub with_second_scene: usize,
    pub first_or_second_correct: f64,
}

/// The tallies of every level over a set of rows.
#[derive(Debug, Default)]
struct Tallies {
    count: usize,
    image: LevelTally,
    room: LevelTally,
    subclass: LevelTally,
    scene: LevelTally,
    leaf: LevelTally,
}

impl Tallies {
    fn add(&mut self, photo: &LabelledPhoto, p: &StageProbabilities, label: &Label) {
        self.count += 1;
        let (predicted, confidence) = p.image.top();
        self.image
            .add(photo.image_class.name(), predicted.name(), confidence);
        if let (ImageClass::Indoor, Some(truth)) = (photo.image_class, photo.room) {
            let (predicted, confidence) = p.room.top();
            self.room.add(truth.name(), predicted.name(), confidence);
            if let (RoomClass::OtherRoom, Some(truth)) = (truth, photo.subclass) {
                let (predicted, confidence) = p.subclass.top();
                self.subclass
                    .add(truth.name(), predicted.name(), confidence);
            }
        }
        if let (ImageClass::Outdoor, Some(truth)) = (photo.image_class, photo.scene) {
            let (predicted, confidence) = p.scene.top();
            self.scene.add(truth.name(), predicted.name(), confidence);
        }
        if let Some(truth) = photo.leaf() {
            // End-to-end confidence: the product of the stages' confidences.
            self.leaf
                .add(truth, label.leaf(), end_to_end_confidence(label));
        }
    }

    /// Every stage decision, pooled: (correct?, confidence).
    fn stage_outcomes(&self) -> impl Iterator<Item = (bool, f64)> + '_ {
        self.image
            .outcomes()
            .chain(self.room.outcomes())
            .chain(self.subclass.outcomes())
            .chain(self.scene.outcomes())
    }

    /// Pooled ECE of the stage decisions, and what chance alone would give.
    fn ece(&self) -> (f64, ChanceEce) {
        (
            expected_calibration_error(self.stage_outcomes()),
            chance_ece(self.stage_outcomes().map(|(_, c)| c)),
        )
    }

    fn summary(&self) -> GroupReport {
        let (ece, ece_if_calibrated) = self.ece();
        GroupReport {
            count: self.count,
            image_class: self.image.summary(),
            room: self.room.summary(),
            subclass: self.subclass.summary(),
            scene: self.scene.summary(),
            leaf: self.leaf.summary(),
            ece,
            ece_if_calibrated,
        }
    }
}

const CHANCE_LEGEND: &str = "* ECE above the 95th percentile of what a perfectly calibrated model \
with these confidences would show by chance on this many rows (`ece_if_calibrated` in --json); \
an ECE without * is within the noise of its group's size";

/// `*` where an ECE is more than chance explains (see [`CHANCE_LEGEND`]).
fn beyond_chance(ece: f64, chance: ChanceEce) -> &'static str {
    if ece > chance.p95 {
        "*"
    } else {
        " "
    }
}

/// `photo` or `render` from a `label|photo-or-render|sure` source label.
fn picture_kind(source_label: &str) -> Option<&str> {
    let mut parts = source_label.split('|');
    let kind = parts.nth(1)?;
    matches!(kind, "photo" | "render").then_some(kind)
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mut photos = read_labels(&args.labels, args.split.as_deref())?;
    if !args.source.is_empty() {
        photos.retain(|p| args.source.contains(&p.source));
    }
    if photos.is_empty() {
        anyhow::bail!(
            "{} has no rows for split {:?} and sources {:?}",
            args.labels.display(),
            args.split.as_deref().unwrap_or("(any)"),
            args.source
        );
    }
    let mut labeller = args.model.load()?;
    let embeddings = embed_labelled(
        labeller.embedder_mut(),
        &photos
            .iter()
            .map(|p| (p, Variant::Photo))
            .collect::<Vec<_>>(),
        &args.model.limits(),
        args.cache.as_deref(),
        "evaluating",
    )?;

    let rules = DecisionRules::default();
    let mut all = Tallies::default();
    let mut by_source: BTreeMap<String, Tallies> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, Tallies> = BTreeMap::new();
    let mut second = SecondSceneReport::default();
    let mut second_hits = 0usize;
    let mut failed = 0usize;
    let mut passes = 0usize;
    for (photo, embedding) in photos.iter().zip(&embeddings) {
        let Ok(embedding) = embedding else {
            failed += 1;
            continue;
        };
        // Both views are embedded (and cached); the heads' second-view rule
        // picks what labelling would have run.
        let outcome = labeller.heads().label_views(embedding.views.view());
        passes += outcome.views;
        let p = outcome.probabilities;
        let label = decide(&p, &rules);
        all.add(photo, &p, &label);
        by_source
            .entry(photo.source.clone())
            .or_default()
            .add(photo, &p, &label);
        if let Some(kind) = picture_kind(&photo.source_label) {
            by_kind
                .entry(kind.to_owned())
                .or_default()
                .add(photo, &p, &label);
        }
        if let (
            Some(truth),
            LabelDetail::Outdoor {
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
    let count = photos.len() - failed;
    let (ece, ece_if_calibrated) = all.ece();
    let report = EvalReport {
        count,
        failed,
        second_view: labeller.heads().second_view.to_string(),
        views_per_photo: passes as f64 / count.max(1) as f64,
        image_class: all.image.report(),
        room: all.room.report(),
        subclass: all.subclass.report(),
        scene: all.scene.report(),
        leaf: all.leaf.report(),
        ece,
        ece_if_calibrated,
        by_source: by_source
            .into_iter()
            .map(|(source, tallies)| (source, tallies.summary()))
            .collect(),
        by_kind: by_kind
            .into_iter()
            .map(|(kind, tallies)| (kind, tallies.summary()))
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

fn end_to_end_confidence(label: &Label) -> f64 {
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
        "{} photos scored ({} unreadable), engine {}, backbone {}, second view {} ({:.2} passes per photo)",
        report.count,
        report.failed,
        report.engine,
        &report.backbone_sha256[..16],
        report.second_view,
        report.views_per_photo
    )
    .ok();
    let levels = [
        ("image_class", &report.image_class),
        ("room", &report.room),
        ("subclass", &report.subclass),
        ("scene", &report.scene),
        ("leaf", &report.leaf),
    ];
    writeln!(
        out,
        "\n{:<12} {:>6} {:>9} {:>15} {:>9} {:>7} {:>16}",
        "level", "count", "accuracy", "95 % interval", "macro-F1", "ECE", "by chance (p95)"
    )
    .ok();
    for (name, level) in levels {
        let [lo, hi] = level.accuracy_95;
        writeln!(
            out,
            "{name:<12} {:>6} {:>9.4} {:>15} {:>9.4} {:>7.4}{} {:>16}",
            level.count,
            level.accuracy,
            format!("{lo:.3}-{hi:.3}"),
            level.macro_f1,
            level.ece,
            beyond_chance(level.ece, level.ece_if_calibrated),
            format!(
                "{:.4} ({:.4})",
                level.ece_if_calibrated.mean, level.ece_if_calibrated.p95
            )
        )
        .ok();
    }
    writeln!(
        out,
        "pooled stage ECE {:.4}{}, by chance {:.4} (p95 {:.4})",
        report.ece,
        beyond_chance(report.ece, report.ece_if_calibrated).trim_end(),
        report.ece_if_calibrated.mean,
        report.ece_if_calibrated.p95
    )
    .ok();
    writeln!(out, "{CHANCE_LEGEND}").ok();
    for (name, level) in levels {
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
    for (title, groups) in [
        ("source", &report.by_source),
        ("photo or render", &report.by_kind),
    ] {
        if groups.is_empty() {
            continue;
        }
        writeln!(
            out,
            "\nby {title}: accuracy (ECE, * beyond chance), n = rows at that level"
        )
        .ok();
        writeln!(
            out,
            "{:<18} {:>6} {:>18} {:>18} {:>18} {:>18} {:>18} {:>8}",
            "", "photos", "image", "room", "subclass", "scene", "leaf", "ECE"
        )
        .ok();
        for (name, group) in groups {
            write!(out, "{name:<18} {:>6}", group.count).ok();
            for level in [
                &group.image_class,
                &group.room,
                &group.subclass,
                &group.scene,
                &group.leaf,
            ] {
                if level.count == 0 {
                    write!(out, " {:>18}", "-").ok();
                } else {
                    let cell = format!(
                        "{:.3} ({:.3}{}) {}",
                        level.accuracy,
                        level.ece,
                        beyond_chance(level.ece, level.ece_if_calibrated),
                        level.count
                    );
                    write!(out, " {cell:>18}").ok();
                }
            }
            writeln!(
                out,
                " {:>7.4}{}",
                group.ece,
                beyond_chance(group.ece, group.ece_if_calibrated)
            )
            .ok();
        }
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

#[cfg(test)]
mod tests {
    use super::picture_kind;

    #[test]
    fn picture_kind_reads_the_middle_field() {
        assert_eq!(picture_kind("room|photo|sure"), Some("photo"));
        assert_eq!(picture_kind("view|render|unsure"), Some("render"));
        assert_eq!(picture_kind("kitchen"), None);
        assert_eq!(picture_kind("a|b|c"), None);
    }
}
