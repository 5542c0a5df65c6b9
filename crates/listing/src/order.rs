//! The order photos are shown in, and the cover photo.

use std::cmp::Ordering;

use photolabel_taxonomy::{RoomClass, SceneClass, TaxonomyClass};

/// The leaf of plans, documents and anything that is not a photo of a
/// property.
pub const DOCUMENT_LEAF: &str = "other";

/// The default order: what portals and MLS rules ask for — the front
/// exterior first, the main rooms, the other rooms, the outside, and plans
/// and documents last.
pub const DEFAULT_ORDER: [&str; 14] = [
    "facade",
    "living_room",
    "kitchen",
    "bedroom",
    "bathroom",
    "hall_corridor",
    "room",
    "scullery",
    "balcony-garden",
    "view",
    "building_part",
    "street",
    "no_building",
    DOCUMENT_LEAF,
];

/// A name in a leaf order that is not a leaf of the taxonomy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a leaf class (leaves: {})", DEFAULT_ORDER.join(", "))]
pub struct UnknownLeaf {
    pub name: String,
}

/// The order of leaves: every leaf exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafOrder(Vec<&'static str>);

impl Default for LeafOrder {
    fn default() -> Self {
        Self(DEFAULT_ORDER.to_vec())
    }
}

impl LeafOrder {
    /// Leaves named first, in the given order (comma-separated); the leaves
    /// not named follow in the default order. `""` is the default order.
    pub fn parse(text: &str) -> Result<Self, UnknownLeaf> {
        let mut order: Vec<&'static str> = Vec::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let leaf = DEFAULT_ORDER
                .iter()
                .find(|&&leaf| leaf == name)
                .ok_or_else(|| UnknownLeaf { name: name.into() })?;
            if !order.contains(leaf) {
                order.push(leaf);
            }
        }
        let rest: Vec<&'static str> = DEFAULT_ORDER
            .into_iter()
            .filter(|leaf| !order.contains(leaf))
            .collect();
        order.extend(rest);
        Ok(Self(order))
    }

    pub fn leaves(&self) -> &[&'static str] {
        &self.0
    }

    fn rank(&self, leaf: &str) -> usize {
        self.0
            .iter()
            .position(|&l| l == leaf)
            .unwrap_or(self.0.len())
    }

    /// The photo order: `kept` photos by leaf rank, better quality first
    /// within a leaf, each followed by the rest of its duplicate group.
    pub(crate) fn arrange(
        &self,
        kept: &[usize],
        leaves: &[&str],
        groups: &[Vec<usize>],
        quality: impl Fn(usize, usize) -> Ordering,
    ) -> Vec<usize> {
        let mut sorted = kept.to_vec();
        sorted.sort_by(|&a, &b| {
            self.rank(leaves[a])
                .cmp(&self.rank(leaves[b]))
                .then_with(|| quality(a, b))
        });
        let mut order = Vec::with_capacity(leaves.len());
        for i in sorted {
            order.push(i);
            if let Some(group) = groups.iter().find(|g| g[0] == i) {
                order.extend(&group[1..]);
            }
        }
        order
    }
}

/// The best facade; without one, the best living room; without one, the
/// best photo. Only kept photos compete (a duplicate is never better than
/// the photo it duplicates).
pub(crate) fn cover(
    kept: &[usize],
    leaves: &[&str],
    quality: impl Fn(usize, usize) -> Ordering,
) -> Option<usize> {
    let best = |leaf: Option<&str>| {
        kept.iter()
            .copied()
            .filter(|&i| leaf.is_none_or(|l| leaves[i] == l))
            .min_by(|&a, &b| quality(a, b))
    };
    best(Some(SceneClass::Facade.name()))
        .or_else(|| best(Some(RoomClass::LivingRoom.name())))
        .or_else(|| best(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use photolabel_taxonomy::{ImageClass, RoomSubclass};

    /// The order must name every leaf the taxonomy can produce, or some
    /// photos would sort after the documents.
    #[test]
    fn the_default_order_has_every_leaf_once() {
        let mut leaves: Vec<&str> = RoomClass::ALL
            .iter()
            .filter(|&&r| r != RoomClass::OtherRoom)
            .map(|r| r.name())
            .chain(RoomSubclass::ALL.iter().map(|s| s.name()))
            .chain(SceneClass::ALL.iter().map(|s| s.name()))
            .chain([ImageClass::Other.name()])
            .collect();
        leaves.sort_unstable();
        let mut order = DEFAULT_ORDER.to_vec();
        order.sort_unstable();
        assert_eq!(order, leaves);
    }

    #[test]
    fn a_custom_order_puts_the_named_leaves_first() {
        let order = LeafOrder::parse("kitchen, facade,kitchen").expect("valid");
        assert_eq!(&order.leaves()[..3], ["kitchen", "facade", "living_room"]);
        assert_eq!(order.leaves().len(), DEFAULT_ORDER.len());
        assert_eq!(LeafOrder::parse("").expect("valid"), LeafOrder::default());
        let error = LeafOrder::parse("garage").expect_err("not a leaf");
        assert_eq!(error.name, "garage");
        assert!(error
            .to_string()
            .starts_with("`garage` is not a leaf class"));
    }

    #[test]
    fn cover_falls_back_from_facade_to_living_room_to_the_best_photo() {
        // Lower index = better quality here.
        let quality = |a: usize, b: usize| a.cmp(&b);
        let leaves = ["kitchen", "living_room", "facade", "facade", "living_room"];
        assert_eq!(cover(&[0, 1, 2, 3, 4], &leaves, quality), Some(2));
        assert_eq!(cover(&[0, 1, 4], &leaves, quality), Some(1));
        assert_eq!(cover(&[0, 4], &leaves, quality), Some(4));
        assert_eq!(cover(&[0], &leaves, quality), Some(0));
        assert_eq!(cover(&[], &leaves, quality), None);
        // Among facades, the better one, wherever it is.
        let worse_first = |a: usize, b: usize| b.cmp(&a);
        assert_eq!(cover(&[0, 1, 2, 3, 4], &leaves, worse_first), Some(3));
    }

    #[test]
    fn ties_within_a_leaf_go_to_quality_then_duplicates_follow_their_photo() {
        let order = LeafOrder::default();
        let leaves = [
            "bedroom", "facade", "bedroom", "other", "bedroom", "kitchen",
        ];
        // Photo 2 is better than 0; 4 duplicates 2 (kept photos: 0,1,2,3,5).
        let quality = |a: usize, b: usize| {
            let score = |i: usize| [5, 0, 1, 0, 9, 0][i];
            score(a).cmp(&score(b)).then(a.cmp(&b))
        };
        let arranged = order.arrange(&[0, 1, 2, 3, 5], &leaves, &[vec![2, 4]], quality);
        assert_eq!(arranged, vec![1, 5, 2, 4, 0, 3]);
        let kitchen_last = LeafOrder::parse("facade,bedroom,other").expect("valid");
        let arranged = kitchen_last.arrange(&[0, 1, 2, 3, 5], &leaves, &[vec![2, 4]], quality);
        assert_eq!(arranged, vec![1, 2, 4, 0, 3, 5]);
    }
}
