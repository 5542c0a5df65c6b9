//! From per-stage probabilities to the contract's answer.

use std::marker::PhantomData;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::classes::{ImageClass, RoomClass, RoomSubclass, SceneClass, TaxonomyClass};
use crate::confidence::format_confidence;

/// The contract's default for the 70 % rule, in percent.
pub const DEFAULT_SECOND_SCENE_THRESHOLD: f64 = 70.0;

/// A probability vector that does not fit its stage.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidDistribution {
    #[error("{stage} stage expects {expected} probabilities, got {got}")]
    WrongLength {
        stage: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{stage} stage has a probability that is negative or not finite")]
    NotAProbability { stage: &'static str },
}

/// Probabilities over one stage's classes, in [`TaxonomyClass::ALL`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution<C: TaxonomyClass> {
    probabilities: Vec<f64>,
    _class: PhantomData<C>,
}

impl<C: TaxonomyClass> Distribution<C> {
    /// Checks the length and the values; the vector is renormalised so that
    /// rounding in the model's softmax never shows up as "100.01".
    pub fn new(probabilities: Vec<f64>) -> Result<Self, InvalidDistribution> {
        if probabilities.len() != C::ALL.len() {
            return Err(InvalidDistribution::WrongLength {
                stage: C::STAGE,
                expected: C::ALL.len(),
                got: probabilities.len(),
            });
        }
        if probabilities.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(InvalidDistribution::NotAProbability { stage: C::STAGE });
        }
        let total: f64 = probabilities.iter().sum();
        let probabilities = if total > 0.0 {
            probabilities.iter().map(|p| p / total).collect()
        } else {
            // No evidence at all: a uniform answer rather than a division by zero.
            vec![1.0 / C::ALL.len() as f64; C::ALL.len()]
        };
        Ok(Self {
            probabilities,
            _class: PhantomData,
        })
    }

    /// A distribution that puts all its mass on one class.
    pub fn certain(class: C) -> Self {
        let mut probabilities = vec![0.0; C::ALL.len()];
        probabilities[class.index()] = 1.0;
        Self {
            probabilities,
            _class: PhantomData,
        }
    }

    pub fn probability(&self, class: C) -> f64 {
        self.probabilities[class.index()]
    }

    pub fn as_slice(&self) -> &[f64] {
        &self.probabilities
    }

    /// Classes from most to least probable; ties keep taxonomy order so the
    /// answer is deterministic.
    pub fn ranked(&self) -> Vec<(C, f64)> {
        let mut ranked: Vec<(C, f64)> = C::ALL
            .iter()
            .copied()
            .zip(self.probabilities.iter().copied())
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked
    }

    pub fn top(&self) -> (C, f64) {
        self.ranked()[0]
    }
}

/// Everything the model says about one photo, before any decision.
#[derive(Debug, Clone, PartialEq)]
pub struct StageProbabilities {
    pub image: Distribution<ImageClass>,
    /// Conditional on `indoor`.
    pub room: Distribution<RoomClass>,
    /// Conditional on `other_room`.
    pub subclass: Distribution<RoomSubclass>,
    /// Conditional on `outdoor`.
    pub scene: Distribution<SceneClass>,
}

/// The configurable part of the decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionRules {
    /// In percent: a top scene at or below this also reports the runner-up.
    pub second_scene_threshold: f64,
}

impl Default for DecisionRules {
    fn default() -> Self {
        Self {
            second_scene_threshold: DEFAULT_SECOND_SCENE_THRESHOLD,
        }
    }
}

/// The answer for one photo: what the contract's `Output` object carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub image_class: ImageClass,
    pub image_confidence: f64,
    pub detail: LabelDetail,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LabelDetail {
    Indoor {
        room: (RoomClass, f64),
        /// Present exactly when the room is `other_room`.
        subclass: Option<(RoomSubclass, f64)>,
    },
    Outdoor {
        scene: (SceneClass, f64),
        /// Present exactly when the top scene's shown confidence is at or
        /// below the threshold.
        second_scene: Option<(SceneClass, f64)>,
    },
    Other,
}

impl Label {
    /// The finest class: room subclass, room, scene or `other` — what the
    /// end-to-end ("leaf") accuracy is measured on.
    pub fn leaf(&self) -> &'static str {
        match &self.detail {
            LabelDetail::Indoor {
                subclass: Some((sub, _)),
                ..
            } => sub.name(),
            LabelDetail::Indoor { room, .. } => room.0.name(),
            LabelDetail::Outdoor { scene, .. } => scene.0.name(),
            LabelDetail::Other => ImageClass::Other.name(),
        }
    }

    /// The confidence of the least sure decision on the way to the leaf
    /// (image class, then room and subclass, or scene; a second scene is not
    /// a decision). What decides whether a photo is worth a second look.
    pub fn least_sure(&self) -> f64 {
        let below = match &self.detail {
            LabelDetail::Indoor { room, subclass } => subclass.map_or(room.1, |s| room.1.min(s.1)),
            LabelDetail::Outdoor { scene, .. } => scene.1,
            LabelDetail::Other => 1.0,
        };
        self.image_confidence.min(below)
    }

    pub fn room(&self) -> Option<RoomClass> {
        match &self.detail {
            LabelDetail::Indoor { room, .. } => Some(room.0),
            _ => None,
        }
    }

    pub fn scene(&self) -> Option<SceneClass> {
        match &self.detail {
            LabelDetail::Outdoor { scene, .. } => Some(scene.0),
            _ => None,
        }
    }
}

/// Serialises as the inner object of the contract, keys in the contract's
/// order and only those that apply.
impl Serialize for Label {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("Image_Class", &self.image_class)?;
        map.serialize_entry(
            "ConfidencePercent_Image_Class",
            &format_confidence(self.image_confidence),
        )?;
        match &self.detail {
            LabelDetail::Indoor { room, subclass } => {
                map.serialize_entry("Room_Class", &room.0)?;
                map.serialize_entry("ConfidencePercent_Room_Class", &format_confidence(room.1))?;
                if let Some((sub, p)) = subclass {
                    map.serialize_entry("Room_Subclass", sub)?;
                    map.serialize_entry("ConfidencePercent_Room_Subclass", &format_confidence(*p))?;
                }
            }
            LabelDetail::Outdoor {
                scene,
                second_scene,
            } => {
                map.serialize_entry("Scene_Class1", &scene.0)?;
                map.serialize_entry(
                    "ConfidencePercent_Scene_Class1",
                    &format_confidence(scene.1),
                )?;
                if let Some((second, p)) = second_scene {
                    map.serialize_entry("Scene_Class2", second)?;
                    map.serialize_entry("ConfidencePercent_Scene_Class2", &format_confidence(*p))?;
                }
            }
            LabelDetail::Other => {}
        }
        map.end()
    }
}

/// The contract's response body: `{"Output": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Output {
    #[serde(rename = "Output")]
    pub output: Label,
}

/// Applies the two-stage decision of the contract.
pub fn decide(probabilities: &StageProbabilities, rules: &DecisionRules) -> Label {
    let (image_class, image_confidence) = probabilities.image.top();
    let detail = match image_class {
        ImageClass::Indoor => {
            let room = probabilities.room.top();
            let subclass = (room.0 == RoomClass::OtherRoom).then(|| probabilities.subclass.top());
            LabelDetail::Indoor { room, subclass }
        }
        ImageClass::Outdoor => {
            let ranked = probabilities.scene.ranked();
            let scene = ranked[0];
            // Compare what the client will read: a top scene shown as "70.0"
            // always comes with its runner-up, even if it was 70.004 %.
            let shown: f64 = format_confidence(scene.1)
                .parse()
                .expect("confidence strings are numbers");
            let second_scene = (shown <= rules.second_scene_threshold).then(|| ranked[1]);
            LabelDetail::Outdoor {
                scene,
                second_scene,
            }
        }
        ImageClass::Other => LabelDetail::Other,
    };
    Label {
        image_class,
        image_confidence,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probabilities(
        image: [f64; 3],
        room: [f64; 5],
        sub: [f64; 3],
        scene: [f64; 6],
    ) -> StageProbabilities {
        StageProbabilities {
            image: Distribution::new(image.to_vec()).unwrap(),
            room: Distribution::new(room.to_vec()).unwrap(),
            subclass: Distribution::new(sub.to_vec()).unwrap(),
            scene: Distribution::new(scene.to_vec()).unwrap(),
        }
    }

    fn json(p: &StageProbabilities, rules: &DecisionRules) -> String {
        serde_json::to_string(&Output {
            output: decide(p, rules),
        })
        .unwrap()
    }

    const SUB: [f64; 3] = [0.8785, 0.1, 0.0215];

    #[test]
    fn least_sure_follows_the_decision_path() {
        let rules = DecisionRules::default();
        let scene = [0.6, 0.3, 0.1, 0.0, 0.0, 0.0];
        // Indoor kitchen: the room is the least sure; the unused scene
        // head's 0.6 does not count.
        let p = probabilities([0.9, 0.1, 0.0], [0.0, 0.8, 0.2, 0.0, 0.0], SUB, scene);
        assert!((decide(&p, &rules).least_sure() - 0.8).abs() < 1e-12);
        // other_room: the subclass is a decision too.
        let p = probabilities([0.95, 0.05, 0.0], [0.0, 0.0, 0.0, 0.1, 0.9], SUB, scene);
        assert!((decide(&p, &rules).least_sure() - 0.8785).abs() < 1e-12);
        // Outdoor: the image class and the first scene.
        let p = probabilities([0.3, 0.7, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], SUB, scene);
        assert!((decide(&p, &rules).least_sure() - 0.6).abs() < 1e-12);
        // Other: only the image class.
        let p = probabilities([0.2, 0.1, 0.7], [0.2, 0.2, 0.2, 0.2, 0.2], SUB, scene);
        assert!((decide(&p, &rules).least_sure() - 0.7).abs() < 1e-12);
    }

    #[test]
    fn indoor_room_without_subclass() {
        let p = probabilities(
            [0.999, 0.001, 0.0],
            [0.02, 0.95, 0.01, 0.01, 0.01],
            SUB,
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        );
        assert_eq!(
            json(&p, &DecisionRules::default()),
            r#"{"Output":{"Image_Class":"indoor","ConfidencePercent_Image_Class":"99.9","Room_Class":"kitchen","ConfidencePercent_Room_Class":"95.0"}}"#
        );
    }

    #[test]
    fn other_room_carries_its_subclass() {
        let p = probabilities(
            [0.999, 0.001, 0.0],
            [0.01, 0.01, 0.01, 0.0082, 0.9618],
            SUB,
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        );
        assert_eq!(
            json(&p, &DecisionRules::default()),
            r#"{"Output":{"Image_Class":"indoor","ConfidencePercent_Image_Class":"99.9","Room_Class":"other_room","ConfidencePercent_Room_Class":"96.18","Room_Subclass":"hall_corridor","ConfidencePercent_Room_Subclass":"87.85"}}"#
        );
    }

    #[test]
    fn confident_scene_has_no_second_scene() {
        let p = probabilities(
            [0.0001, 0.9999, 0.0],
            [0.2; 5],
            SUB,
            [0.9389, 0.02, 0.02, 0.0111, 0.01, 0.0],
        );
        assert_eq!(
            json(&p, &DecisionRules::default()),
            r#"{"Output":{"Image_Class":"outdoor","ConfidencePercent_Image_Class":"99.99","Scene_Class1":"facade","ConfidencePercent_Scene_Class1":"93.89"}}"#
        );
    }

    #[test]
    fn uncertain_scene_carries_the_runner_up() {
        let p = probabilities(
            [0.0001, 0.9999, 0.0],
            [0.2; 5],
            SUB,
            [0.3692, 0.01, 0.01, 0.5915, 0.0193, 0.0],
        );
        assert_eq!(
            json(&p, &DecisionRules::default()),
            r#"{"Output":{"Image_Class":"outdoor","ConfidencePercent_Image_Class":"99.99","Scene_Class1":"balcony-garden","ConfidencePercent_Scene_Class1":"59.15","Scene_Class2":"facade","ConfidencePercent_Scene_Class2":"36.92"}}"#
        );
    }

    #[test]
    fn seventy_percent_rule_boundary() {
        let rules = DecisionRules::default();
        let at = probabilities(
            [0.0, 1.0, 0.0],
            [0.2; 5],
            SUB,
            [0.70, 0.2, 0.1, 0.0, 0.0, 0.0],
        );
        assert!(matches!(
            decide(&at, &rules).detail,
            LabelDetail::Outdoor {
                second_scene: Some((SceneClass::View, _)),
                ..
            }
        ));
        // 70.004 % is shown as "70.0", so it is treated as at the threshold.
        let shown_at = probabilities(
            [0.0, 1.0, 0.0],
            [0.2; 5],
            SUB,
            [0.70004, 0.19996, 0.1, 0.0, 0.0, 0.0],
        );
        assert!(matches!(
            decide(&shown_at, &rules).detail,
            LabelDetail::Outdoor {
                second_scene: Some(_),
                ..
            }
        ));
        let above = probabilities(
            [0.0, 1.0, 0.0],
            [0.2; 5],
            SUB,
            [0.7001, 0.1999, 0.1, 0.0, 0.0, 0.0],
        );
        assert!(matches!(
            decide(&above, &rules).detail,
            LabelDetail::Outdoor {
                second_scene: None,
                ..
            }
        ));
    }

    #[test]
    fn threshold_is_configurable() {
        let p = probabilities(
            [0.0, 1.0, 0.0],
            [0.2; 5],
            SUB,
            [0.0, 0.85, 0.15, 0.0, 0.0, 0.0],
        );
        assert!(matches!(
            decide(&p, &DecisionRules::default()).detail,
            LabelDetail::Outdoor {
                second_scene: None,
                ..
            }
        ));
        let strict = DecisionRules {
            second_scene_threshold: 90.0,
        };
        let label = decide(&p, &strict);
        assert_eq!(
            label.detail,
            LabelDetail::Outdoor {
                scene: (SceneClass::View, 0.85),
                second_scene: Some((SceneClass::Street, 0.15))
            }
        );
        let never = DecisionRules {
            second_scene_threshold: 0.0,
        };
        assert!(matches!(
            decide(&p, &never).detail,
            LabelDetail::Outdoor {
                second_scene: None,
                ..
            }
        ));
    }

    #[test]
    fn other_gives_only_the_image_class() {
        let p = probabilities(
            [0.1, 0.2, 0.7],
            [0.2; 5],
            SUB,
            [0.2, 0.2, 0.2, 0.2, 0.1, 0.1],
        );
        let label = decide(&p, &DecisionRules::default());
        assert_eq!(label.leaf(), "other");
        assert_eq!(
            json(&p, &DecisionRules::default()),
            r#"{"Output":{"Image_Class":"other","ConfidencePercent_Image_Class":"70.0"}}"#
        );
    }

    #[test]
    fn ties_resolve_in_taxonomy_order() {
        let p = probabilities(
            [0.5, 0.5, 0.0],
            [0.2; 5],
            SUB,
            [0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
        );
        let label = decide(&p, &DecisionRules::default());
        assert_eq!(label.image_class, ImageClass::Indoor);
        assert_eq!(label.leaf(), "living_room");
        assert_eq!(label.room(), Some(RoomClass::LivingRoom));
        assert_eq!(label.scene(), None);
    }

    #[test]
    fn leaf_names_each_branch() {
        let indoor_other = probabilities(
            [1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 1.0],
            [0.0, 0.0, 1.0],
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        );
        assert_eq!(
            decide(&indoor_other, &DecisionRules::default()).leaf(),
            "scullery"
        );
        let outdoor = probabilities(
            [0.0, 1.0, 0.0],
            [0.2; 5],
            SUB,
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        );
        let label = decide(&outdoor, &DecisionRules::default());
        assert_eq!(label.leaf(), "no_building");
        assert_eq!(label.scene(), Some(SceneClass::NoBuilding));
    }

    #[test]
    fn distributions_are_validated_and_normalised() {
        assert_eq!(
            Distribution::<ImageClass>::new(vec![0.5, 0.5]).unwrap_err(),
            InvalidDistribution::WrongLength {
                stage: "image",
                expected: 3,
                got: 2
            }
        );
        assert!(Distribution::<ImageClass>::new(vec![f64::NAN, 0.5, 0.5]).is_err());
        assert!(Distribution::<ImageClass>::new(vec![-0.1, 0.6, 0.5]).is_err());
        let d = Distribution::<ImageClass>::new(vec![2.0, 1.0, 1.0]).unwrap();
        assert_eq!(d.probability(ImageClass::Indoor), 0.5);
        let zero = Distribution::<ImageClass>::new(vec![0.0, 0.0, 0.0]).unwrap();
        assert!((zero.probability(ImageClass::Other) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            Distribution::certain(SceneClass::View).top(),
            (SceneClass::View, 1.0)
        );
    }
}
