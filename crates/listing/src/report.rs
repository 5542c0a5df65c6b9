//! The answer for a listing, as `POST /labelling/listing` and
//! `photolabel listing` give it: every photo with its label, quality and
//! duplicate, or its error, then the listing's order, cover, duplicate
//! groups, inventory and checks. Photo numbers are the photos' places in
//! the listing as sent, failed photos included.

use photolabel_taxonomy::Label;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::{analyse, Check, Flag, Inventory, ListingConfig, PhotoFacts};

/// What became of one photo of the listing.
#[derive(Debug, Clone)]
pub enum PhotoOutcome {
    Labelled(PhotoFacts),
    /// The status and body the single-photo endpoints would have answered.
    Failed {
        status: u16,
        body: Value,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ListingReport {
    pub photos: Vec<PhotoEntry>,
    pub order: Vec<usize>,
    pub cover: Option<usize>,
    pub duplicates: Vec<Vec<usize>>,
    pub inventory: Inventory,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhotoEntry {
    pub index: usize,
    /// The upload's file name, the URL, or the file's path.
    pub name: String,
    #[serde(flatten)]
    pub result: EntryResult,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EntryResult {
    Labelled {
        #[serde(rename = "Output")]
        output: Label,
        quality: QualityReport,
        duplicate_of: Option<usize>,
    },
    Failed {
        /// `{"status": …}` plus the fields of the single-photo body.
        error: Value,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    pub width: u32,
    pub height: u32,
    /// Rounded to 3 decimals: more digits only show noise.
    pub sharpness: f64,
    pub brightness: f64,
    pub flags: Vec<Flag>,
}

fn round3(value: f32) -> f64 {
    (f64::from(value) * 1000.0).round() / 1000.0
}

impl ListingReport {
    /// Analyses the labelled photos of a listing and reports every photo.
    pub fn build(photos: Vec<(String, PhotoOutcome)>, config: &ListingConfig) -> Self {
        // The analysis sees only the labelled photos; `places` maps its
        // numbers back to the listing's.
        let mut places = Vec::new();
        let mut facts = Vec::new();
        let mut names = Vec::with_capacity(photos.len());
        let mut errors = Vec::with_capacity(photos.len());
        for (index, (name, outcome)) in photos.into_iter().enumerate() {
            names.push(name);
            errors.push(match outcome {
                PhotoOutcome::Labelled(fact) => {
                    places.push(index);
                    facts.push(fact);
                    None
                }
                PhotoOutcome::Failed { status, body } => {
                    let mut error = Map::new();
                    error.insert("status".into(), status.into());
                    if let Value::Object(fields) = body {
                        error.extend(fields);
                    }
                    Some(Value::Object(error))
                }
            });
        }
        let analysis = analyse(&facts, config);
        let place = |i: usize| places[i];
        let mut labelled = facts.into_iter().enumerate();
        let photos = names
            .into_iter()
            .zip(errors)
            .enumerate()
            .filter_map(|(index, (name, error))| {
                let result = match error {
                    Some(error) => EntryResult::Failed { error },
                    // One fact per photo without an error, in order.
                    None => {
                        let (i, fact) = labelled.next()?;
                        EntryResult::Labelled {
                            output: fact.label,
                            quality: QualityReport {
                                width: fact.stats.width,
                                height: fact.stats.height,
                                sharpness: round3(fact.stats.sharpness),
                                brightness: round3(fact.stats.brightness),
                                flags: analysis.flags[i].clone(),
                            },
                            duplicate_of: analysis.duplicate_of[i].map(place),
                        }
                    }
                };
                Some(PhotoEntry {
                    index,
                    name,
                    result,
                })
            })
            .collect();
        Self {
            photos,
            order: analysis.order.into_iter().map(place).collect(),
            cover: analysis.cover.map(place),
            duplicates: analysis
                .duplicates
                .into_iter()
                .map(|g| g.into_iter().map(place).collect())
                .collect(),
            inventory: analysis.inventory,
            checks: analysis.checks,
        }
    }

    /// Photos that were labelled.
    pub fn labelled(&self) -> usize {
        self.photos
            .iter()
            .filter(|p| matches!(p.result, EntryResult::Labelled { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::photo;
    use serde_json::json;

    #[test]
    fn failed_photos_keep_their_place_and_numbers_are_the_listings() {
        let failed = || PhotoOutcome::Failed {
            status: 400,
            body: json!({"detail": "bad"}),
        };
        let report = ListingReport::build(
            vec![
                ("broken.jpg".into(), failed()),
                (
                    "kitchen.jpg".into(),
                    PhotoOutcome::Labelled(photo("kitchen", 1)),
                ),
                (
                    "front.jpg".into(),
                    PhotoOutcome::Labelled(photo("facade", 2)),
                ),
                (
                    "again.jpg".into(),
                    PhotoOutcome::Labelled(photo("kitchen", 1)),
                ),
            ],
            &ListingConfig::default(),
        );
        let value = serde_json::to_value(&report).expect("json");
        assert_eq!(
            value["photos"][0],
            json!({"index": 0, "name": "broken.jpg", "error": {"status": 400, "detail": "bad"}})
        );
        assert_eq!(value["photos"][1]["duplicate_of"], json!(null));
        assert_eq!(value["photos"][3]["duplicate_of"], json!(1));
        assert_eq!(
            value["photos"][2]["quality"],
            json!({"width": 1440, "height": 960, "sharpness": 0.5, "brightness": 0.45, "flags": []})
        );
        assert_eq!(
            value["photos"][2]["Output"]["Scene_Class1"],
            json!("facade")
        );
        assert_eq!(value["order"], json!([2, 1, 3]));
        assert_eq!(value["cover"], json!(2));
        assert_eq!(value["duplicates"], json!([[1, 3]]));
        assert_eq!(value["inventory"], json!({"facade": 1, "kitchen": 1}));
        assert_eq!(report.labelled(), 3);
    }

    #[test]
    fn a_listing_of_failures_has_no_cover() {
        let report = ListingReport::build(
            vec![(
                "x".into(),
                PhotoOutcome::Failed {
                    status: 400,
                    body: json!({"detail": "bad"}),
                },
            )],
            &ListingConfig::default(),
        );
        let value = serde_json::to_value(&report).expect("json");
        assert_eq!(value["cover"], json!(null));
        assert_eq!(value["order"], json!([]));
        assert_eq!(report.labelled(), 0);
    }
}
