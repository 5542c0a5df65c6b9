//! The analysis of a whole listing over its photos' results: which photos
//! are the same shot, which are unfit to publish, in which order to show
//! them, which one is the cover, and what the listing lacks.
//!
//! Pure: it works on what labelling already produced (the label, the
//! embedding, [`PhotoStats`]) and does no I/O and no inference, so every
//! rule is testable with hand-made inputs. The command line and the HTTP
//! service both build their answer with [`report::ListingReport`].
//!
//! - [`quality`]: the flags and what "better quality" means;
//! - [`duplicates`]: same-shot detection;
//! - [`order`]: the order of leaves, the photo order and the cover;
//! - [`checks`]: the inventory and the completeness checks.

pub mod checks;
pub mod duplicates;
pub mod order;
pub mod quality;
pub mod report;

use std::cmp::Ordering;

use photolabel_taxonomy::Label;
use photolabel_vision::PhotoStats;

pub use checks::{Check, CheckCode, Inventory};
pub use duplicates::DuplicateRules;
pub use order::{LeafOrder, UnknownLeaf};
pub use quality::{Flag, QualityThresholds};
pub use report::{ListingReport, PhotoOutcome};

/// One labelled photo, as the labelling left it.
#[derive(Debug, Clone)]
pub struct PhotoFacts {
    pub label: Label,
    /// The backbone embedding (views averaged), any scale.
    pub embedding: Vec<f32>,
    pub stats: PhotoStats,
}

/// Every rule's setting; the defaults are documented on each part.
#[derive(Debug, Clone, Default)]
pub struct ListingConfig {
    pub quality: QualityThresholds,
    pub duplicates: DuplicateRules,
    pub order: LeafOrder,
    pub checks: checks::CheckRules,
}

/// The analysis; photo numbers are positions in the slice given to
/// [`analyse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// Per photo.
    pub flags: Vec<Vec<Flag>>,
    /// Per photo: the kept photo of its duplicate group, `None` for kept
    /// photos and photos without duplicates.
    pub duplicate_of: Vec<Option<usize>>,
    /// Each group of the same shot: the kept photo first, then the others
    /// from best to worst quality. Groups in the order of their kept photo.
    pub duplicates: Vec<Vec<usize>>,
    /// Every photo, in the order to show them.
    pub order: Vec<usize>,
    /// `None` only for an empty listing.
    pub cover: Option<usize>,
    pub inventory: Inventory,
    pub checks: Vec<Check>,
}

/// Analyses a listing's labelled photos.
pub fn analyse(photos: &[PhotoFacts], config: &ListingConfig) -> Analysis {
    let flags: Vec<Vec<Flag>> = photos
        .iter()
        .map(|p| {
            config
                .quality
                .flags(&p.stats, p.label.leaf() == order::DOCUMENT_LEAF)
        })
        .collect();
    let quality_order = |a: usize, b: usize| -> Ordering {
        quality::better((&photos[a].stats, &flags[a]), (&photos[b].stats, &flags[b]))
            .then(a.cmp(&b))
    };

    let fingerprints: Vec<_> = photos
        .iter()
        .map(|p| duplicates::Fingerprint {
            embedding: &p.embedding,
            hash: p.stats.hash,
        })
        .collect();
    let mut groups = config.duplicates.groups(&fingerprints);
    let mut duplicate_of = vec![None; photos.len()];
    for group in &mut groups {
        // Among copies of equal quality, keep the one most like the others:
        // the common ancestor of re-encodes, crops and watermarks, which a
        // watermark's sharp text would otherwise beat on sharpness.
        let mut ranked: Vec<(usize, f32)> = group
            .iter()
            .map(|&i| {
                let typicality = group
                    .iter()
                    .map(|&j| duplicates::cosine(&photos[i].embedding, &photos[j].embedding))
                    .sum();
                (i, typicality)
            })
            .collect();
        ranked.sort_by(|&(a, typical_a), &(b, typical_b)| {
            quality::better_by_flags_and_size(
                (&photos[a].stats, &flags[a]),
                (&photos[b].stats, &flags[b]),
            )
            .then_with(|| typical_b.total_cmp(&typical_a))
            .then_with(|| quality_order(a, b))
        });
        *group = ranked.into_iter().map(|(i, _)| i).collect();
        for &other in &group[1..] {
            duplicate_of[other] = Some(group[0]);
        }
    }
    groups.sort_by_key(|g| g[0]);

    let kept: Vec<usize> = (0..photos.len())
        .filter(|&i| duplicate_of[i].is_none())
        .collect();
    let leaves: Vec<&'static str> = photos.iter().map(|p| p.label.leaf()).collect();
    let order = config.order.arrange(&kept, &leaves, &groups, quality_order);
    let cover = order::cover(&kept, &leaves, quality_order);
    let inventory = Inventory::count(kept.iter().map(|&i| leaves[i]), &config.order);
    let checks = config.checks.run(
        &inventory,
        kept.len(),
        photos.len() - kept.len(),
        flags.iter().filter(|f| !f.is_empty()).count(),
    );
    Analysis {
        flags,
        duplicate_of,
        duplicates: groups,
        order,
        cover,
        inventory,
        checks,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use photolabel_taxonomy::{decide, DecisionRules, Distribution, StageProbabilities};

    pub fn stats(
        width: u32,
        height: u32,
        sharpness: f32,
        brightness: f32,
        highlights: f32,
    ) -> PhotoStats {
        PhotoStats {
            width,
            height,
            sharpness,
            brightness,
            shadows: 0.0,
            highlights,
            hash: 0,
        }
    }

    /// A label whose leaf is `leaf`, decided by the taxonomy's own rules.
    pub fn label(leaf: &str) -> Label {
        let one_hot = |names: &[&str]| -> Vec<f64> {
            names
                .iter()
                .map(|n| if *n == leaf { 1.0 } else { 0.0 })
                .collect()
        };
        let rooms = [
            "living_room",
            "kitchen",
            "bathroom",
            "bedroom",
            "other_room",
        ];
        let subclasses = ["hall_corridor", "room", "scullery"];
        let scenes = [
            "facade",
            "view",
            "street",
            "balcony-garden",
            "building_part",
            "no_building",
        ];
        let mut room = one_hot(&rooms);
        let subclass = one_hot(&subclasses);
        if subclass.contains(&1.0) {
            room[4] = 1.0;
        }
        let scene = one_hot(&scenes);
        let image = if room.contains(&1.0) {
            vec![1.0, 0.0, 0.0]
        } else if scene.contains(&1.0) {
            vec![0.0, 1.0, 0.0]
        } else {
            assert_eq!(leaf, "other", "unknown leaf {leaf}");
            vec![0.0, 0.0, 1.0]
        };
        let label = decide(
            &StageProbabilities {
                image: Distribution::new(image).expect("valid"),
                room: Distribution::new(room).expect("valid"),
                subclass: Distribution::new(subclass).expect("valid"),
                scene: Distribution::new(scene).expect("valid"),
            },
            &DecisionRules::default(),
        );
        assert_eq!(label.leaf(), leaf);
        label
    }

    /// A photo of `leaf`, 1440×960 and sharp unless `stats` says otherwise,
    /// with an embedding that points along axis `shot` (same axis = same shot).
    pub fn photo(leaf: &str, shot: usize) -> PhotoFacts {
        let mut embedding = vec![0.0; 16];
        embedding[shot] = 1.0;
        PhotoFacts {
            label: label(leaf),
            embedding,
            stats: PhotoStats {
                hash: (shot as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ..stats(1440, 960, 0.5, 0.45, 0.0)
            },
        }
    }

    #[test]
    fn a_listing_with_a_duplicate_a_small_photo_and_no_plan() {
        let mut photos = vec![
            photo("kitchen", 1),
            photo("facade", 2),
            photo("bedroom", 3),
            photo("kitchen", 1),
            photo("bathroom", 4),
            photo("living_room", 5),
        ];
        // The second kitchen is the same shot at a smaller size: it is
        // the duplicate, the first is kept.
        photos[3].stats.width = 720;
        photos[3].stats.height = 480;
        let analysis = analyse(&photos, &ListingConfig::default());
        assert_eq!(analysis.duplicates, vec![vec![0, 3]]);
        assert_eq!(
            analysis.duplicate_of,
            vec![None, None, None, Some(0), None, None]
        );
        assert_eq!(analysis.flags[3], vec![Flag::Small]);
        assert_eq!(analysis.order, vec![1, 5, 0, 3, 2, 4]);
        assert_eq!(analysis.cover, Some(1));
        assert_eq!(
            serde_json::to_string(&analysis.inventory).expect("json"),
            r#"{"facade":1,"living_room":1,"kitchen":1,"bedroom":1,"bathroom":1}"#
        );
        let codes: Vec<CheckCode> = analysis.checks.iter().map(|c| c.code).collect();
        assert_eq!(
            codes,
            [
                CheckCode::NoFloorPlan,
                CheckCode::Duplicates,
                CheckCode::LowQuality
            ]
        );
    }

    #[test]
    fn the_kept_photo_is_the_best_even_when_it_comes_last() {
        let mut photos = vec![
            photo("bedroom", 1),
            photo("bedroom", 1),
            photo("bedroom", 1),
        ];
        photos[0].stats.sharpness = 0.1; // blurry
        photos[1].stats.width = 2000; // the biggest
        let analysis = analyse(&photos, &ListingConfig::default());
        assert_eq!(analysis.duplicates, vec![vec![1, 2, 0]]);
        assert_eq!(analysis.duplicate_of, vec![Some(1), None, Some(1)]);
        assert_eq!(analysis.order, vec![1, 2, 0]);
    }

    #[test]
    fn among_equal_copies_the_most_typical_is_kept_not_the_sharpest() {
        let mut photos = vec![
            photo("kitchen", 1),
            photo("kitchen", 1),
            photo("kitchen", 1),
        ];
        photos[1].embedding[2] = 0.05;
        // A watermarked copy: its text makes it the sharpest, its embedding
        // the odd one out.
        photos[2].embedding[2] = 0.3;
        photos[2].stats.sharpness = 0.9;
        let analysis = analyse(&photos, &ListingConfig::default());
        assert_eq!(analysis.duplicates, vec![vec![1, 0, 2]]);
    }

    #[test]
    fn an_empty_listing_has_no_cover_and_fails_every_content_check() {
        let analysis = analyse(&[], &ListingConfig::default());
        assert_eq!(analysis.cover, None);
        assert!(analysis.order.is_empty());
        let codes: Vec<CheckCode> = analysis.checks.iter().map(|c| c.code).collect();
        assert_eq!(
            codes,
            [
                CheckCode::NoExterior,
                CheckCode::NoKitchen,
                CheckCode::NoBathroom,
                CheckCode::NoFloorPlan,
                CheckCode::FewPhotos
            ]
        );
    }
}
