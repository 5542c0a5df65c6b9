//! The trained heads: one linear softmax classifier per stage on the
//! backbone's embedding (image class, room, room subclass, scene), each with
//! its calibration temperature, stored in a small versioned JSON file bound
//! to the backbone it was trained on.

use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use photolabel_taxonomy::{
    decide, DecisionRules, Distribution, ImageClass, RoomClass, RoomSubclass, SceneClass,
    StageProbabilities, TaxonomyClass,
};
use serde::{Deserialize, Serialize};

use crate::backbone::{EMBEDDING_DIM, POOLED_DIM};
use crate::image::Preprocessing;

/// The heads compiled into the binary, one file per built-in backbone
/// (int8 and fp32); each names the backbone it was trained on.
static EMBEDDED_HEADS: [&str; 2] = [
    include_str!("../../../models/heads-int8.json"),
    include_str!("../../../models/heads.json"),
];

/// Identifies the file type; bumped when the layout changes.
/// `/2`: the room subclass is a trained head (in `/1` it was a constant).
pub const HEADS_FORMAT: &str = "photolabel-heads/2";

#[derive(Debug, thiserror::Error)]
pub enum HeadsError {
    #[error("cannot read heads file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("heads file is not valid: {0}")]
    Invalid(String),
    #[error(
        "these heads were trained for backbone sha256 {expected}, but the loaded backbone is {actual}; \
         retrain them with `photolabel train` or load the backbone they belong to"
    )]
    BackboneMismatch { expected: String, actual: String },
    #[error(
        "no heads are built in for backbone sha256 {0}; pass --heads with heads \
         `photolabel train` made for it"
    )]
    NoEmbeddedHeads(String),
}

/// One linear softmax classifier: `softmax((W·x + b) / T)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinearHead {
    /// Class names in output order (the taxonomy's wire names).
    pub classes: Vec<String>,
    /// `[classes][EMBEDDING_DIM]`.
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
    /// Calibration temperature fitted on held-out photos (> 0).
    pub temperature: f32,
}

impl LinearHead {
    /// Logits before temperature, one per class.
    pub fn logits(&self, embedding: ArrayView1<'_, f32>) -> Vec<f32> {
        self.weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| {
                w.iter()
                    .zip(embedding.iter())
                    .map(|(w, x)| w * x)
                    .sum::<f32>()
                    + b
            })
            .collect()
    }

    /// Calibrated probabilities, one per class.
    pub fn probabilities(&self, embedding: ArrayView1<'_, f32>) -> Vec<f64> {
        let logits = self.logits(embedding);
        softmax(&logits, self.temperature)
    }

    /// The weight matrix as an array, for batch evaluation.
    pub fn weight_matrix(&self) -> Array2<f32> {
        let rows = self.weights.len();
        let flat: Vec<f32> = self.weights.iter().flatten().copied().collect();
        Array2::from_shape_vec((rows, EMBEDDING_DIM), flat).expect("validated on load")
    }

    pub fn bias_vector(&self) -> Array1<f32> {
        Array1::from(self.bias.clone())
    }

    fn validate<C: TaxonomyClass>(&self) -> Result<(), HeadsError> {
        let expected: Vec<&str> = C::ALL.iter().map(|c| c.name()).collect();
        if self.classes != expected {
            return Err(HeadsError::Invalid(format!(
                "{} head has classes {:?}, expected {:?}",
                C::STAGE,
                self.classes,
                expected
            )));
        }
        if self.weights.len() != expected.len()
            || self.bias.len() != expected.len()
            || self.weights.iter().any(|row| row.len() != EMBEDDING_DIM)
        {
            return Err(HeadsError::Invalid(format!(
                "{} head must have {} rows of {EMBEDDING_DIM} weights and {} biases",
                C::STAGE,
                expected.len(),
                expected.len()
            )));
        }
        let finite = self
            .weights
            .iter()
            .flatten()
            .chain(&self.bias)
            .all(|v| v.is_finite());
        let temperature_ok = self.temperature.is_finite() && self.temperature > 0.0;
        if !finite || !temperature_ok {
            return Err(HeadsError::Invalid(format!(
                "{} head has non-finite weights or a non-positive temperature",
                C::STAGE
            )));
        }
        Ok(())
    }
}

/// Numerically stable `softmax(logits / temperature)` in f64.
pub fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let t = f64::from(temperature);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits
        .iter()
        .map(|l| ((f64::from(*l) - f64::from(max)) / t).exp())
        .collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// What `photolabel train` records about a heads file, for the model card.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TrainingRecord {
    pub labels: String,
    pub rows_fit: usize,
    pub rows_calibration: usize,
    pub l2: f64,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// When labelling runs the mirrored second view of a photo (heads trained
/// with `flip`): the second backbone pass costs as much as the first, and
/// on most photos it changes nothing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SecondView {
    /// On every photo (heads files from before the choice existed).
    Always,
    /// Only when the least sure decision of the first view's answer
    /// ([`photolabel_taxonomy::Label::least_sure`]) is below this
    /// probability; 0 never runs it.
    Below(f32),
}

impl SecondView {
    fn always() -> Self {
        Self::Always
    }

    fn is_valid(self) -> bool {
        match self {
            Self::Always => true,
            Self::Below(p) => (0.0..=1.0).contains(&p),
        }
    }
}

impl std::fmt::Display for SecondView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Below(p) => write!(f, "below {p}"),
        }
    }
}

impl std::str::FromStr for SecondView {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let view = match s {
            "always" => Self::Always,
            "never" => Self::Below(0.0),
            number => Self::Below(number.parse().map_err(|_| {
                format!("{s:?} is not `always`, `never` or a probability between 0 and 1")
            })?),
        };
        if !view.is_valid() {
            return Err(format!("{s:?} is not a probability between 0 and 1"));
        }
        Ok(view)
    }
}

/// What the heads made of a photo's views.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewsOutcome {
    pub probabilities: StageProbabilities,
    /// The embedding the probabilities came from: the first view's, or the
    /// average of both.
    pub embedding: Array1<f32>,
    /// Views used (backbone passes the answer needed): 1 or 2.
    pub views: usize,
}

impl ViewsOutcome {
    /// The last layer's pooled features of [`ViewsOutcome::embedding`]:
    /// what the listing's duplicate search compares.
    pub fn pooled(&self) -> Vec<f32> {
        self.embedding.slice(ndarray::s![..POOLED_DIM]).to_vec()
    }
}

/// The heads file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heads {
    pub format: String,
    /// sha256 of the backbone ONNX file these heads were trained on.
    pub backbone_sha256: String,
    /// What the heads were trained on. With `flip`, labelling may also run
    /// the mirrored view, as `second_view` says.
    pub preprocessing: Preprocessing,
    /// Chosen by `photolabel train` on its hold-out.
    #[serde(default = "SecondView::always")]
    pub second_view: SecondView,
    pub image: LinearHead,
    pub room: LinearHead,
    pub scene: LinearHead,
    /// Conditional on `other_room`: hall/corridor, empty room or scullery.
    pub subclass: LinearHead,
    pub training: TrainingRecord,
}

impl Heads {
    /// The built-in heads trained on the backbone with this sha256.
    pub fn embedded_for(backbone_sha256: &str) -> Result<Self, HeadsError> {
        for json in EMBEDDED_HEADS {
            let heads = Self::from_json(json)?;
            if heads.backbone_sha256 == backbone_sha256 {
                return Ok(heads);
            }
        }
        Err(HeadsError::NoEmbeddedHeads(backbone_sha256.to_owned()))
    }

    pub fn from_file(path: &Path) -> Result<Self, HeadsError> {
        let text = std::fs::read_to_string(path).map_err(|source| HeadsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Self, HeadsError> {
        let invalid = |e: serde_json::Error| HeadsError::Invalid(e.to_string());
        let value: serde_json::Value = serde_json::from_str(text).map_err(invalid)?;
        // The format is checked before the layout, so a file of another
        // version is refused for what it is rather than for a missing field.
        let format = value.get("format").and_then(|f| f.as_str());
        if format != Some(HEADS_FORMAT) {
            return Err(HeadsError::Invalid(format!(
                "format {format:?} is not {HEADS_FORMAT:?}; retrain the heads with `photolabel train`"
            )));
        }
        let heads: Heads = serde_json::from_value(value).map_err(invalid)?;
        heads.validate()?;
        Ok(heads)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("heads serialise")
    }

    pub fn validate(&self) -> Result<(), HeadsError> {
        if self.format != HEADS_FORMAT {
            return Err(HeadsError::Invalid(format!(
                "format {:?} is not {HEADS_FORMAT:?}",
                self.format
            )));
        }
        self.image.validate::<ImageClass>()?;
        self.room.validate::<RoomClass>()?;
        self.scene.validate::<SceneClass>()?;
        self.subclass.validate::<RoomSubclass>()?;
        if !self.second_view.is_valid() {
            return Err(HeadsError::Invalid(format!(
                "second_view {} is not a probability between 0 and 1",
                self.second_view
            )));
        }
        Ok(())
    }

    /// Whether labelling may run the mirrored view at all.
    pub fn uses_second_view(&self) -> bool {
        self.preprocessing.flip && self.second_view != SecondView::Below(0.0)
    }

    /// Whether a photo whose first view gave `first` gets the mirrored view.
    pub fn wants_second_view(&self, first: &StageProbabilities) -> bool {
        self.preprocessing.flip
            && match self.second_view {
                SecondView::Always => true,
                SecondView::Below(p) => {
                    decide(first, &DecisionRules::default()).least_sure() < f64::from(p)
                }
            }
    }

    /// Labels a photo from its views' embeddings (`[views, EMBEDDING_DIM]`, the
    /// upright view first): the first view alone, or with the second
    /// averaged in when [`Heads::wants_second_view`] and it is there. The
    /// one rule for every caller — the model worker, which embeds the
    /// mirrored view only after asking, and `eval` and `train`, which have
    /// both views cached.
    pub fn label_views(&self, views: ArrayView2<'_, f32>) -> ViewsOutcome {
        let first = views.row(0);
        let probabilities = self.stage_probabilities(first);
        if views.nrows() < 2 || !self.wants_second_view(&probabilities) {
            return ViewsOutcome {
                probabilities,
                embedding: first.to_owned(),
                views: 1,
            };
        }
        let embedding = views
            .slice(ndarray::s![0..2, ..])
            .mean_axis(Axis(0))
            .expect("two rows");
        ViewsOutcome {
            probabilities: self.stage_probabilities(embedding.view()),
            embedding,
            views: 2,
        }
    }

    /// Refuses heads trained on another backbone: their numbers would be
    /// silently meaningless.
    pub fn check_backbone(&self, backbone_sha256: &str) -> Result<(), HeadsError> {
        if self.backbone_sha256 != backbone_sha256 {
            return Err(HeadsError::BackboneMismatch {
                expected: self.backbone_sha256.clone(),
                actual: backbone_sha256.to_owned(),
            });
        }
        Ok(())
    }

    /// All stages' probabilities for one embedding.
    pub fn stage_probabilities(&self, embedding: ArrayView1<'_, f32>) -> StageProbabilities {
        StageProbabilities {
            image: distribution(self.image.probabilities(embedding)),
            room: distribution(self.room.probabilities(embedding)),
            subclass: distribution(self.subclass.probabilities(embedding)),
            scene: distribution(self.scene.probabilities(embedding)),
        }
    }
}

fn distribution<C: TaxonomyClass>(probabilities: Vec<f64>) -> Distribution<C> {
    Distribution::new(probabilities).expect("heads are validated against the taxonomy on load")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;

    fn head<C: TaxonomyClass>(hot: usize) -> LinearHead {
        let k = C::ALL.len();
        let mut weights = vec![vec![0.0; EMBEDDING_DIM]; k];
        weights[hot][0] = 4.0;
        LinearHead {
            classes: C::ALL.iter().map(|c| c.name().to_owned()).collect(),
            weights,
            bias: vec![0.0; k],
            temperature: 1.0,
        }
    }

    fn heads() -> Heads {
        Heads {
            format: HEADS_FORMAT.into(),
            backbone_sha256: "abc".into(),
            preprocessing: Preprocessing {
                view: crate::image::View::Squash,
                flip: true,
            },
            second_view: SecondView::Always,
            image: head::<ImageClass>(1),
            room: head::<RoomClass>(1),
            scene: head::<SceneClass>(3),
            subclass: head::<RoomSubclass>(2),
            training: TrainingRecord::default(),
        }
    }

    #[test]
    fn round_trips_and_predicts() {
        let h = Heads::from_json(&heads().to_json()).unwrap();
        let mut x = Array1::<f32>::zeros(EMBEDDING_DIM);
        x[0] = 1.0;
        let p = h.stage_probabilities(x.view());
        assert_eq!(p.image.top().0, ImageClass::Outdoor);
        assert_eq!(p.room.top().0, RoomClass::Kitchen);
        assert_eq!(p.scene.top().0, SceneClass::BalconyGarden);
        assert_eq!(p.subclass.top().0, RoomSubclass::Scullery);
        // softmax([0, 4, 0]) = e^4 / (e^4 + 2)
        let want = 4f64.exp() / (4f64.exp() + 2.0);
        assert!((p.image.top().1 - want).abs() < 1e-9);
    }

    #[test]
    fn second_view_only_where_the_first_is_unsure() {
        let mut h = heads();
        // View 0 points (weakly) at outdoor/balcony-garden; view 1 nowhere.
        let mut views = ndarray::Array2::<f32>::zeros((2, EMBEDDING_DIM));
        views[[0, 0]] = 0.3;
        let least_sure = decide(
            &h.stage_probabilities(views.row(0)),
            &DecisionRules::default(),
        )
        .least_sure() as f32;
        assert!((0.3..0.5).contains(&least_sure), "{least_sure}");
        let both = views.mean_axis(Axis(0)).unwrap();

        let always = h.label_views(views.view());
        assert_eq!(always.views, 2);
        assert_eq!(always.embedding, both);

        h.second_view = SecondView::Below(least_sure - 0.01);
        let confident = h.label_views(views.view());
        assert_eq!(confident.views, 1);
        assert_eq!(confident.embedding, views.row(0));
        assert_eq!(confident.probabilities, h.stage_probabilities(views.row(0)));

        h.second_view = SecondView::Below(least_sure + 0.01);
        assert_eq!(h.label_views(views.view()).views, 2);
        // Only one view at hand: the answer is that view's.
        assert_eq!(h.label_views(views.slice(ndarray::s![0..1, ..])).views, 1);
        // Heads trained without the mirror never ask for it.
        h.preprocessing.flip = false;
        assert_eq!(h.label_views(views.view()).views, 1);
        assert!(!h.uses_second_view());
    }

    #[test]
    fn second_view_parses_and_round_trips() {
        assert_eq!("always".parse::<SecondView>(), Ok(SecondView::Always));
        assert_eq!("never".parse::<SecondView>(), Ok(SecondView::Below(0.0)));
        assert_eq!("0.9".parse::<SecondView>(), Ok(SecondView::Below(0.9)));
        assert!("1.5".parse::<SecondView>().is_err());
        assert!("sometimes".parse::<SecondView>().is_err());
        let mut h = heads();
        h.second_view = SecondView::Below(0.85);
        assert_eq!(Heads::from_json(&h.to_json()).unwrap(), h);
        // A file without the field runs both views, as it was calibrated.
        let mut old: serde_json::Value = serde_json::from_str(&heads().to_json()).unwrap();
        old.as_object_mut().unwrap().remove("second_view");
        assert_eq!(
            Heads::from_json(&old.to_string()).unwrap().second_view,
            SecondView::Always
        );
        h.second_view = SecondView::Below(-1.0);
        assert!(Heads::from_json(&h.to_json()).is_err());
    }

    #[test]
    fn temperature_softens() {
        assert!(softmax(&[0.0, 2.0], 2.0)[1] < softmax(&[0.0, 2.0], 1.0)[1]);
        let p = softmax(&[1000.0, 0.0], 1.0);
        assert!(
            p[0].is_finite() && (p[0] - 1.0).abs() < 1e-12,
            "no overflow"
        );
    }

    #[test]
    fn refuses_other_backbone() {
        let err = heads().check_backbone("def").unwrap_err();
        assert!(
            err.to_string().contains("trained for backbone sha256 abc"),
            "{err}"
        );
        heads().check_backbone("abc").unwrap();
    }

    /// Each built-in backbone finds its own built-in heads; any other
    /// backbone is told to bring heads of its own.
    #[test]
    fn built_in_heads_follow_the_backbone() {
        use crate::backbone::{BackboneModel, Precision};
        for precision in [Precision::Int8, Precision::Fp32] {
            let sha = BackboneModel::embedded(precision).sha256;
            let heads = Heads::embedded_for(&sha).unwrap();
            assert_eq!(heads.backbone_sha256, sha, "{precision:?}");
        }
        let err = Heads::embedded_for("0123").unwrap_err();
        assert!(
            err.to_string()
                .contains("no heads are built in for backbone sha256 0123"),
            "{err}"
        );
    }

    #[test]
    fn refuses_malformed_files() {
        let mut h = heads();
        h.room.classes.swap(0, 1);
        assert!(
            Heads::from_json(&h.to_json()).is_err(),
            "class order matters"
        );
        let mut h = heads();
        h.scene.weights[0].pop();
        assert!(Heads::from_json(&h.to_json()).is_err());
        let mut h = heads();
        h.image.temperature = 0.0;
        assert!(Heads::from_json(&h.to_json()).is_err());
        let mut h = heads();
        h.format = "photolabel-heads/0".into();
        assert!(Heads::from_json(&h.to_json()).is_err());
        let mut h = heads();
        h.subclass.classes[0] = "garage".into();
        assert!(Heads::from_json(&h.to_json()).is_err());
        // A file from before the subclass head was trained is refused with
        // a reason, not misread.
        let mut old: serde_json::Value = serde_json::from_str(&heads().to_json()).unwrap();
        old["format"] = "photolabel-heads/1".into();
        old["subclass"] = serde_json::json!({"kind": "constant", "class": "hall_corridor"});
        let err = Heads::from_json(&old.to_string()).unwrap_err();
        assert!(err.to_string().contains("photolabel-heads/1"), "{err}");
        assert!(Heads::from_json("{}").is_err());
    }
}
