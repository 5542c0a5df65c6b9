//! Which photos of a listing are the same shot.
//!
//! Two signals, each blind where the other sees:
//! - the backbone embedding (cosine similarity) survives crops, watermarks
//!   and re-encoding, but two angles of one room also score high on it;
//! - the perceptual hash ([`photolabel_vision::PhotoStats::hash`]) tells
//!   another angle from the same shot, but a crop or a banner moves it.
//!
//! A pair is the same shot when the embeddings are nearly identical, or
//! when they are fairly close and the hashes agree — the less alike the
//! embeddings, the closer the hashes must be. Pairs are joined into groups
//! transitively (a resized copy of a watermarked copy is still the photo).

/// When two photos count as the same shot. The defaults were set on the
/// generated benchmark of `tools/listing_bench.py` (BENCHMARKS.md, issue
/// 12), where different views of one room reached a similarity of 0.927
/// but never came within 12 bits, and copies of one photo came within 6
/// bits unless cropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DuplicateRules {
    /// Cosine similarity of the embeddings at or above which two photos
    /// are the same shot whatever their hashes say (re-encodes, resizes,
    /// exposure changes, most crops).
    pub same_shot_similarity: f32,
    /// A pair at least this similar is the same shot when its hashes differ
    /// in at most [`Self::close_hash_bits`] of 64 bits (the harder crops).
    pub close_similarity: f32,
    pub close_hash_bits: u32,
    /// A pair at least this similar is the same shot when its hashes differ
    /// in at most [`Self::matching_hash_bits`] (watermarks and banners,
    /// which move the embedding more than the hash of the photo's centre).
    pub matching_similarity: f32,
    pub matching_hash_bits: u32,
}

impl Default for DuplicateRules {
    fn default() -> Self {
        Self {
            same_shot_similarity: 0.93,
            close_similarity: 0.88,
            close_hash_bits: 18,
            matching_similarity: 0.60,
            matching_hash_bits: 10,
        }
    }
}

/// What the duplicate search needs of one photo.
pub struct Fingerprint<'a> {
    pub embedding: &'a [f32],
    pub hash: u64,
}

impl DuplicateRules {
    pub fn same_shot(&self, a: &Fingerprint<'_>, b: &Fingerprint<'_>) -> bool {
        let similarity = cosine(a.embedding, b.embedding);
        let bits = (a.hash ^ b.hash).count_ones();
        similarity >= self.same_shot_similarity
            || (similarity >= self.close_similarity && bits <= self.close_hash_bits)
            || (similarity >= self.matching_similarity && bits <= self.matching_hash_bits)
    }

    /// Groups of two or more photos that are the same shot, each sorted by
    /// index, the groups by their first index.
    pub fn groups(&self, photos: &[Fingerprint<'_>]) -> Vec<Vec<usize>> {
        let mut parent: Vec<usize> = (0..photos.len()).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for i in 0..photos.len() {
            for j in i + 1..photos.len() {
                if self.same_shot(&photos[i], &photos[j]) {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); photos.len()];
        for i in 0..photos.len() {
            let r = root(&mut parent, i);
            groups[r].push(i);
        }
        groups.retain(|g| g.len() > 1);
        groups
    }
}

/// Cosine similarity; 0 when either vector is zero.
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (dot / (aa.sqrt() * bb.sqrt())) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(embedding: &[f32], hash: u64) -> Fingerprint<'_> {
        Fingerprint { embedding, hash }
    }

    #[test]
    fn either_signal_alone_is_not_enough_unless_the_embeddings_all_but_match() {
        let rules = DuplicateRules::default();
        let a = [1.0, 0.0, 0.0];
        let near = [1.0, 0.3, 0.0]; // cosine 0.958
        let close = [1.0, 0.5, 0.0]; // cosine 0.894
        let loose = [1.0, 1.0, 0.0]; // cosine 0.707
        let far = [0.0, 1.0, 0.0];
        let bits = |n: u32| (1u64 << n) - 1;
        assert!(rules.same_shot(&print(&a, 0), &print(&near, u64::MAX)));
        assert!(rules.same_shot(&print(&a, 0), &print(&close, bits(18))));
        assert!(!rules.same_shot(&print(&a, 0), &print(&close, bits(19))));
        assert!(rules.same_shot(&print(&a, 0), &print(&loose, bits(10))));
        assert!(!rules.same_shot(&print(&a, 0), &print(&loose, bits(11))));
        // Another angle: close embedding, unrelated hash.
        assert!(!rules.same_shot(&print(&a, 0), &print(&close, u64::MAX)));
        // Same hash, different content.
        assert!(!rules.same_shot(&print(&a, 0), &print(&far, 0)));
        // A zero embedding is like nothing.
        assert!(!rules.same_shot(&print(&[0.0; 3], 0), &print(&a, 0)));
    }

    #[test]
    fn groups_join_transitively_and_leave_singletons_out() {
        let rules = DuplicateRules::default();
        // 0~2 and 2~3 are the same shot but 0 and 3 are not alike enough:
        // all three are one group.
        let e = [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [1.0, 0.3, 0.0],
            [1.0, 0.65, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 1.0, 0.05],
        ];
        // Hashes far apart for 0 and 3, so that only the embeddings decide.
        let photos: Vec<_> = e
            .iter()
            .enumerate()
            .map(|(i, v)| print(v, if i % 2 == 0 { 0 } else { u64::MAX }))
            .collect();
        assert!(!rules.same_shot(&photos[0], &photos[3]));
        assert_eq!(rules.groups(&photos), vec![vec![0, 2, 3], vec![1, 5]]);
        assert!(rules.groups(&[]).is_empty());
    }
}
