//! `photolabel train`: fit the heads on a labelled photo set.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use ndarray::{s, Array1, Array2, Array3, Axis};
use photolabel_taxonomy::{ImageClass, RoomClass, RoomSubclass, SceneClass, TaxonomyClass};
use photolabel_vision::heads::{Heads, LinearHead, TrainingRecord, HEADS_FORMAT};
use photolabel_vision::train::{
    argmax_rows, fit_temperature, in_calibration_holdout, nll, Dataset, FitOptions,
    SoftmaxRegression, Standardiser,
};
use photolabel_vision::{Embedder, Preprocessing, View};

use super::ModelArgs;
use crate::dataset::{read_labels, LabelledPhoto};
use crate::embedding::{self, PhotoEmbedding, Variant};

/// Train the heads on a labels CSV (e.g. ../shared/data/labels.csv).
///
/// Photos whose file name falls in the calibration hold-out (about 15 %,
/// chosen by a hash of the name) are kept out of the heads' fit: the L2
/// strength and each head's temperature are chosen on them.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Labels CSV (paths relative to its folder).
    #[arg(long)]
    pub labels: PathBuf,
    /// Only rows of this split (the CSV's `split` column).
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Where to write the heads file.
    #[arg(long)]
    pub out: PathBuf,
    /// How photos become the 260×260 input.
    #[arg(long, value_parser = parse_view, default_value = "squash")]
    pub view: View,
    /// Also embed the mirrored photo and average (one more backbone pass).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub flip: bool,
    /// Augmented copies of every training photo (random crop, tilt, colour,
    /// watermark, grayscale, downscale and JPEG re-encoding;
    /// `photolabel_vision::augment`), each one more training row. They make
    /// the heads less sensitive to how a portal's photos differ from the
    /// training sources; the hold-out is always scored on the photos
    /// themselves. Each copy is one more backbone pass per photo, once
    /// (cached with `--cache`).
    #[arg(long, default_value_t = 1)]
    pub augment: usize,
    /// Percent of photos held out for calibration.
    #[arg(long, default_value_t = 15)]
    pub holdout_percent: u32,
    /// Cache embeddings here between runs (keyed by backbone and preprocessing).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn parse_view(s: &str) -> Result<View, String> {
    match s {
        "squash" => Ok(View::Squash),
        "crop" | "centre_crop" | "center_crop" => Ok(View::CentreCrop),
        other => Err(format!("unknown view {other:?} (expected squash or crop)")),
    }
}

/// L2 strengths tried, about a factor 1.7 apart (a factor 3 left the choice
/// coarse); the one with the lowest held-out NLL wins.
const L2_GRID: [f64; 11] = [3e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2, 0.1, 0.2, 0.3, 0.5, 1.0];

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let photos = read_labels(&args.labels, Some(&args.split))?;
    if photos.is_empty() {
        bail!(
            "{} has no rows in split {:?}",
            args.labels.display(),
            args.split
        );
    }
    let preprocessing = Preprocessing {
        view: args.view,
        flip: args.flip,
    };
    let mut embedder = Embedder::load(&args.model.config(), preprocessing)?;
    let (features, photos) = embed_training_set(
        &mut embedder,
        &photos,
        args.augment,
        &args.model,
        args.cache.as_deref(),
    )?;

    let holdout: Vec<bool> = photos
        .iter()
        .map(|p| in_calibration_holdout(p.file_name(), args.holdout_percent))
        .collect();
    let mut notes = Vec::new();
    let image = train_head::<ImageClass>(
        &features,
        &photos,
        &holdout,
        |p| Some(p.image_class),
        &mut notes,
    )?;
    let room = train_head::<RoomClass>(
        &features,
        &photos,
        &holdout,
        |p| {
            (p.image_class == ImageClass::Indoor)
                .then_some(p.room)
                .flatten()
        },
        &mut notes,
    )?;
    let scene = train_head::<SceneClass>(
        &features,
        &photos,
        &holdout,
        |p| {
            (p.image_class == ImageClass::Outdoor)
                .then_some(p.scene)
                .flatten()
        },
        &mut notes,
    )?;
    let subclass = train_head::<RoomSubclass>(
        &features,
        &photos,
        &holdout,
        |p| {
            (p.image_class == ImageClass::Indoor && p.room == Some(RoomClass::OtherRoom))
                .then_some(p.subclass)
                .flatten()
        },
        &mut notes,
    )?;
    let heads = Heads {
        format: HEADS_FORMAT.to_owned(),
        backbone_sha256: embedder.backbone_sha256().to_owned(),
        preprocessing,
        image: image.0,
        room: room.0,
        scene: scene.0,
        subclass: subclass.0,
        training: TrainingRecord {
            labels: format!("{} (split {})", args.labels.display(), args.split),
            rows_fit: holdout.iter().filter(|h| !**h).count(),
            rows_calibration: holdout.iter().filter(|h| **h).count(),
            l2: image.1,
            notes,
        },
    };
    heads.validate()?;
    std::fs::write(&args.out, heads.to_json() + "\n")
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// The training photos' embeddings: per view, averaged, and of their copies.
struct TrainingFeatures {
    /// `[photos, views, dim]`: each view is a training row of its own (the
    /// mirrored photo is a labelled example too), which slightly lowered the
    /// hold-out NLL of every head compared with fitting on the averages.
    views: Array3<f32>,
    /// `[photos, dim]`: what the heads see when labelling, so the hold-out
    /// (L2 and temperature) is scored on these.
    mean: Array2<f32>,
    /// Each photo's augmented copies (`--augment`): training rows like the
    /// views.
    augmented: Vec<Vec<Array1<f32>>>,
}

impl TrainingFeatures {
    /// Every view and augmented copy of the given photos as rows, with
    /// their labels repeated.
    fn training_rows(&self, rows: &[usize], labels: &[usize]) -> (Array2<f32>, Vec<usize>) {
        let mut out = Vec::new();
        let mut out_labels = Vec::new();
        for (&row, &label) in rows.iter().zip(labels) {
            let views = (0..self.views.dim().1).map(|v| self.views.slice(s![row, v, ..]));
            for view in views.chain(self.augmented[row].iter().map(|c| c.view())) {
                out.push(view);
                out_labels.push(label);
            }
        }
        let out = ndarray::stack(Axis(0), &out)
            .unwrap_or_else(|_| Array2::zeros((0, self.views.dim().2)));
        (out, out_labels)
    }
}

/// Embeds the labelled photos and `copies` augmented copies of each;
/// photos that cannot be read are reported and left out (training on the
/// rest), and so are copies that fail.
fn embed_training_set(
    embedder: &mut Embedder,
    photos: &[LabelledPhoto],
    copies: usize,
    model: &ModelArgs,
    cache: Option<&std::path::Path>,
) -> anyhow::Result<(TrainingFeatures, Vec<LabelledPhoto>)> {
    let mut jobs: Vec<(&LabelledPhoto, Variant)> =
        photos.iter().map(|p| (p, Variant::Photo)).collect();
    for copy in 1..=copies {
        jobs.extend(
            photos
                .iter()
                .map(|p| (p, Variant::Augmented(embedding::augment_seed(&p.key, copy)))),
        );
    }
    let mut results =
        embedding::embed_labelled(embedder, &jobs, &model.limits(), cache, "embedding")?;
    let copy_results = results.split_off(photos.len());
    let mut rows = Vec::new();
    let mut kept = Vec::new();
    let mut augmented = Vec::new();
    for (i, (photo, result)) in photos.iter().zip(results).enumerate() {
        match result {
            Ok(embedding) => {
                rows.push(embedding.views);
                kept.push(photo.clone());
                augmented.push(
                    (0..copies)
                        .filter_map(|c| copy_results[c * photos.len() + i].as_ref().ok())
                        .map(PhotoEmbedding::mean)
                        .collect(),
                );
            }
            Err(reason) => tracing::warn!(path = %photo.path.display(), %reason, "skipped"),
        }
    }
    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
    let views = ndarray::stack(Axis(0), &views).context("no photo could be embedded")?;
    let mean = views.mean_axis(Axis(1)).context("no views")?;
    Ok((
        TrainingFeatures {
            views,
            mean,
            augmented,
        },
        kept,
    ))
}

/// Fits one head: standardise, pick L2 on the hold-out, fit the temperature
/// on the hold-out. Returns the head and the chosen L2.
fn train_head<C: TaxonomyClass>(
    features: &TrainingFeatures,
    photos: &[LabelledPhoto],
    holdout: &[bool],
    class_of: impl Fn(&LabelledPhoto) -> Option<C>,
    notes: &mut Vec<String>,
) -> anyhow::Result<(LinearHead, f64)> {
    let mut fit_rows = Vec::new();
    let mut fit_labels = Vec::new();
    let mut cal_rows = Vec::new();
    let mut cal_labels = Vec::new();
    for (i, photo) in photos.iter().enumerate() {
        if let Some(class) = class_of(photo) {
            if holdout[i] {
                cal_rows.push(i);
                cal_labels.push(class.index());
            } else {
                fit_rows.push(i);
                fit_labels.push(class.index());
            }
        }
    }
    let (fit_x, fit_view_labels) = features.training_rows(&fit_rows, &fit_labels);
    let cal_x = features.mean.select(Axis(0), &cal_rows);
    if fit_x.nrows() == 0 || cal_x.nrows() == 0 {
        bail!(
            "the {} head has no training or no hold-out photos",
            C::STAGE
        );
    }
    let standardiser = Standardiser::fit(fit_x.view());
    let fit_z = standardiser.apply(fit_x.view());
    let cal_z = standardiser.apply(cal_x.view());
    let data = Dataset {
        features: fit_z.view(),
        labels: &fit_view_labels,
        classes: C::ALL.len(),
    };
    let mut best: Option<(f64, f64, SoftmaxRegression)> = None;
    for l2 in L2_GRID {
        let model = SoftmaxRegression::fit(
            &data,
            &FitOptions {
                l2,
                ..FitOptions::default()
            },
        );
        let logits = model.logits(cal_z.view());
        let t = fit_temperature(logits.view(), &cal_labels);
        let loss = nll(logits.view(), &cal_labels, t);
        let accuracy = accuracy(&argmax_rows(logits.view()), &cal_labels);
        tracing::info!(
            stage = C::STAGE,
            l2,
            temperature = t,
            holdout_nll = loss,
            holdout_accuracy = accuracy,
            "fitted"
        );
        if best.as_ref().is_none_or(|(b, _, _)| loss < *b) {
            best = Some((loss, l2, model));
        }
    }
    let (_, l2, model) = best.expect("the grid is not empty");
    let logits = model.logits(cal_z.view());
    let temperature = fit_temperature(logits.view(), &cal_labels);
    let holdout_accuracy = accuracy(&argmax_rows(logits.view()), &cal_labels);
    // The hold-out has done its job (choosing L2 and T); the final head is
    // refitted on every row, with the same standardisation, so no labelled
    // photo is wasted. T fitted on the 85 % model carries over: the refit has
    // the same regularisation and only ~17 % more data.
    let all_rows: Vec<usize> = fit_rows.iter().chain(&cal_rows).copied().collect();
    let all_labels: Vec<usize> = fit_labels.iter().chain(&cal_labels).copied().collect();
    let (all_x, all_view_labels) = features.training_rows(&all_rows, &all_labels);
    let all_z = standardiser.apply(all_x.view());
    let model = SoftmaxRegression::fit(
        &Dataset {
            features: all_z.view(),
            labels: &all_view_labels,
            classes: C::ALL.len(),
        },
        &FitOptions {
            l2,
            ..FitOptions::default()
        },
    );
    let note = format!(
        "{}: l2 {l2} and temperature {temperature:.3} chosen on {} hold-out photos (hold-out accuracy {holdout_accuracy:.4}), final fit on {} rows of {} photos",
        C::STAGE,
        cal_labels.len(),
        all_view_labels.len(),
        all_rows.len()
    );
    eprintln!("{note}");
    notes.push(note);
    let classes = C::ALL.iter().map(|c| c.name().to_owned()).collect();
    Ok((
        model.into_head(&standardiser, classes, temperature as f32),
        l2,
    ))
}

fn accuracy(predicted: &[usize], truth: &[usize]) -> f64 {
    predicted.iter().zip(truth).filter(|(p, t)| p == t).count() as f64 / truth.len().max(1) as f64
}
