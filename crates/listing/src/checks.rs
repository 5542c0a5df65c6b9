//! What the listing shows and what it lacks.

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::order::{LeafOrder, DOCUMENT_LEAF};

/// Distinct photos (duplicates not counted) per leaf, in the listing's leaf
/// order; leaves without photos are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory(Vec<(&'static str, usize)>);

impl Inventory {
    pub(crate) fn count<'a>(leaves: impl Iterator<Item = &'a str>, order: &LeafOrder) -> Self {
        let mut counts = vec![0usize; order.leaves().len()];
        for leaf in leaves {
            if let Some(i) = order.leaves().iter().position(|&l| l == leaf) {
                counts[i] += 1;
            }
        }
        Self(
            order
                .leaves()
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(&leaf, n)| (leaf, n))
                .collect(),
        )
    }

    pub fn get(&self, leaf: &str) -> usize {
        self.0
            .iter()
            .find(|(l, _)| *l == leaf)
            .map_or(0, |(_, n)| *n)
    }

    pub fn entries(&self) -> &[(&'static str, usize)] {
        &self.0
    }
}

impl Serialize for Inventory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (leaf, n) in &self.0 {
            map.serialize_entry(leaf, n)?;
        }
        map.end()
    }
}

/// A check's stable code: clients switch on it, the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckCode {
    /// No photo of the outside of the building (`facade` or `building_part`).
    NoExterior,
    NoKitchen,
    NoBathroom,
    /// No plan or document (`other`).
    NoFloorPlan,
    /// Fewer distinct photos than [`CheckRules::min_photos`].
    FewPhotos,
    /// Some photos are the same shot as another.
    Duplicates,
    /// Some photos carry a quality flag.
    LowQuality,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub code: CheckCode,
    pub message: String,
}

/// The checks' one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckRules {
    /// A listing with fewer distinct photos gets `few_photos`.
    pub min_photos: usize,
}

impl Default for CheckRules {
    fn default() -> Self {
        Self { min_photos: 5 }
    }
}

/// "1 photo is" / "3 photos are".
fn photos_are(n: usize) -> String {
    if n == 1 {
        "1 photo is".into()
    } else {
        format!("{n} photos are")
    }
}

impl CheckRules {
    /// The checks that fail, in [`CheckCode`] order.
    pub(crate) fn run(
        &self,
        inventory: &Inventory,
        distinct: usize,
        duplicates: usize,
        flagged: usize,
    ) -> Vec<Check> {
        let mut checks = Vec::new();
        let mut fail = |code, message: String| checks.push(Check { code, message });
        if inventory.get("facade") + inventory.get("building_part") == 0 {
            fail(
                CheckCode::NoExterior,
                "No photo of the building's exterior.".into(),
            );
        }
        if inventory.get("kitchen") == 0 {
            fail(CheckCode::NoKitchen, "No kitchen among the photos.".into());
        }
        if inventory.get("bathroom") == 0 {
            fail(
                CheckCode::NoBathroom,
                "No bathroom among the photos.".into(),
            );
        }
        if inventory.get(DOCUMENT_LEAF) == 0 {
            fail(
                CheckCode::NoFloorPlan,
                "No floor plan among the photos.".into(),
            );
        }
        if distinct < self.min_photos {
            fail(
                CheckCode::FewPhotos,
                format!(
                    "Only {distinct} distinct photo{}; a listing should show at least {}.",
                    if distinct == 1 { "" } else { "s" },
                    self.min_photos
                ),
            );
        }
        if duplicates > 0 {
            fail(
                CheckCode::Duplicates,
                format!(
                    "{} the same shot as another photo of the listing.",
                    photos_are(duplicates)
                ),
            );
        }
        if flagged > 0 {
            fail(
                CheckCode::LowQuality,
                format!(
                    "{} too small, blurred, dark or overexposed to publish.",
                    photos_are(flagged)
                ),
            );
        }
        checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(leaves: &[&str]) -> Inventory {
        Inventory::count(leaves.iter().copied(), &LeafOrder::default())
    }

    #[test]
    fn a_complete_listing_passes_every_check() {
        let inv = inventory(&["kitchen", "facade", "bathroom", "other", "bedroom"]);
        assert!(CheckRules::default().run(&inv, 5, 0, 0).is_empty());
        assert_eq!(inv.get("kitchen"), 1);
        assert_eq!(inv.get("street"), 0);
    }

    #[test]
    fn messages_are_sentences_with_the_counts() {
        let inv = inventory(&["building_part", "kitchen", "bathroom", "other"]);
        let checks = CheckRules::default().run(&inv, 4, 1, 2);
        let text: Vec<String> = checks
            .iter()
            .map(|c| serde_json::to_string(c).expect("json"))
            .collect();
        assert_eq!(
            text,
            [
                r#"{"code":"few_photos","message":"Only 4 distinct photos; a listing should show at least 5."}"#,
                r#"{"code":"duplicates","message":"1 photo is the same shot as another photo of the listing."}"#,
                r#"{"code":"low_quality","message":"2 photos are too small, blurred, dark or overexposed to publish."}"#,
            ]
        );
    }
}
