//! Accuracy, macro-F1, per-class precision/recall, confusion matrices and
//! expected calibration error, as `photolabel eval` reports them.

use std::collections::BTreeMap;

use photolabel_vision::random::Rng;
use serde::Serialize;

/// Predictions against truth at one level (image class, room, scene, leaf).
#[derive(Debug, Default)]
pub struct LevelTally {
    /// (truth, prediction, confidence of the prediction).
    pairs: Vec<(String, String, f64)>,
}

#[derive(Debug, Serialize)]
pub struct ClassScore {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Rows whose truth is this class.
    pub support: usize,
}

#[derive(Debug, Serialize)]
pub struct LevelReport {
    pub count: usize,
    pub accuracy: f64,
    /// 95 % interval of the accuracy (Wilson score).
    pub accuracy_95: [f64; 2],
    pub macro_f1: f64,
    /// Expected calibration error of this level's confidences.
    pub ece: f64,
    /// What `ece` would come to by chance alone on these rows.
    pub ece_if_calibrated: ChanceEce,
    pub per_class: BTreeMap<String, ClassScore>,
    /// truth → prediction → count.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
}

/// Accuracy and calibration of one level over a group of rows.
#[derive(Debug, Serialize)]
pub struct LevelSummary {
    pub count: usize,
    pub accuracy: f64,
    /// 95 % interval of the accuracy (Wilson score): on 45 photos, 0.80
    /// is anything from 0.66 to 0.89.
    pub accuracy_95: [f64; 2],
    pub ece: f64,
    /// What `ece` would come to by chance alone on these rows.
    pub ece_if_calibrated: ChanceEce,
}

/// The ECE a perfectly calibrated model would show on a group of rows: each
/// row right with exactly the probability it states, its confidence as given.
/// On a few dozen rows, 15 bins hold two or three rows each, so even such a
/// model shows an ECE of 0.1 or more; an ECE is a finding only where it is
/// above this group's `p95`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChanceEce {
    /// Mean over the simulated outcomes.
    pub mean: f64,
    /// 95th percentile over the simulated outcomes.
    pub p95: f64,
}

impl LevelTally {
    pub fn add(&mut self, truth: &str, prediction: &str, confidence: f64) {
        self.pairs
            .push((truth.to_owned(), prediction.to_owned(), confidence));
    }

    /// (correct?, confidence) of every prediction, for pooled calibration.
    pub fn outcomes(&self) -> impl Iterator<Item = (bool, f64)> + '_ {
        self.pairs.iter().map(|(t, p, c)| (t == p, *c))
    }

    pub fn summary(&self) -> LevelSummary {
        let correct = self.pairs.iter().filter(|(t, p, _)| t == p).count();
        LevelSummary {
            count: self.pairs.len(),
            accuracy: ratio(correct, self.pairs.len()),
            accuracy_95: wilson_interval(correct, self.pairs.len()),
            ece: expected_calibration_error(self.outcomes()),
            ece_if_calibrated: chance_ece(self.pairs.iter().map(|(_, _, c)| *c)),
        }
    }

    pub fn report(&self) -> LevelReport {
        let LevelSummary {
            count,
            accuracy,
            accuracy_95,
            ece,
            ece_if_calibrated,
        } = self.summary();
        let mut confusion: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for (t, p, _) in &self.pairs {
            *confusion
                .entry(t.clone())
                .or_default()
                .entry(p.clone())
                .or_default() += 1;
        }
        // Macro-F1 over the classes that occur as truth: a class the model
        // predicts but the set never contains has no recall to speak of.
        let mut per_class = BTreeMap::new();
        for class in confusion.keys() {
            let tp = self
                .pairs
                .iter()
                .filter(|(t, p, _)| t == class && p == class)
                .count() as f64;
            let predicted = self.pairs.iter().filter(|(_, p, _)| p == class).count() as f64;
            let support = self.pairs.iter().filter(|(t, _, _)| t == class).count();
            let precision = if predicted > 0.0 { tp / predicted } else { 0.0 };
            let recall = tp / support as f64;
            let f1 = if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            };
            per_class.insert(
                class.clone(),
                ClassScore {
                    precision,
                    recall,
                    f1,
                    support,
                },
            );
        }
        let macro_f1 = if per_class.is_empty() {
            0.0
        } else {
            per_class.values().map(|s| s.f1).sum::<f64>() / per_class.len() as f64
        };
        LevelReport {
            count,
            accuracy,
            accuracy_95,
            macro_f1,
            ece,
            ece_if_calibrated,
            per_class,
            confusion,
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// The 95 % Wilson score interval of `correct` right out of `count`: unlike
/// the normal approximation it stays within [0, 1] and is honest at 0 or
/// all right on a few rows. [0, 0] for no rows.
pub fn wilson_interval(correct: usize, count: usize) -> [f64; 2] {
    if count == 0 {
        return [0.0, 0.0];
    }
    const Z: f64 = 1.959_963_984_540_054; // the normal's 97.5th percentile
    let n = count as f64;
    let p = correct as f64 / n;
    let centre = p + Z * Z / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + Z * Z / (4.0 * n * n)).sqrt();
    let scale = 1.0 + Z * Z / n;
    [
        ((centre - spread) / scale).max(0.0),
        ((centre + spread) / scale).min(1.0),
    ]
}

/// Bins used for the expected calibration error (the usual choice).
const ECE_BINS: usize = 15;

/// ECE: the count-weighted mean gap between confidence and accuracy over 15
/// equal-width confidence bins.
pub fn expected_calibration_error(outcomes: impl Iterator<Item = (bool, f64)>) -> f64 {
    let mut bins = [(0usize, 0usize, 0.0f64); ECE_BINS];
    let mut total = 0usize;
    for (correct, confidence) in outcomes {
        let bin = ((confidence * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        bins[bin].0 += 1;
        bins[bin].1 += usize::from(correct);
        bins[bin].2 += confidence;
        total += 1;
    }
    if total == 0 {
        return 0.0;
    }
    bins.iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, correct, confidence)| {
            let n = *n as f64;
            (n / total as f64) * (*correct as f64 / n - confidence / n).abs()
        })
        .sum()
}

/// Simulated outcomes behind [`chance_ece`]: enough for its 95th percentile
/// to move by under 0.01 between seeds on a group of 25 rows (measured with
/// numpy: 20 seeds, confidences spread over 0.4-1, p95 from 0.263 to 0.271).
const CHANCE_DRAWS: usize = 2000;

/// [`ChanceEce`] of these confidences, by simulation: every draw marks each
/// row right with the probability of its confidence and measures the ECE.
/// The generator's seed is fixed, so a report is reproducible.
pub fn chance_ece(confidences: impl Iterator<Item = f64>) -> ChanceEce {
    let confidences: Vec<f64> = confidences.collect();
    if confidences.is_empty() {
        return ChanceEce {
            mean: 0.0,
            p95: 0.0,
        };
    }
    let mut random = Rng::new(0x5eed_ece0);
    let mut eces: Vec<f64> = (0..CHANCE_DRAWS)
        .map(|_| {
            expected_calibration_error(confidences.iter().map(|&c| (random.unit_f64() < c, c)))
        })
        .collect();
    eces.sort_by(f64::total_cmp);
    ChanceEce {
        mean: eces.iter().sum::<f64>() / CHANCE_DRAWS as f64,
        p95: eces[CHANCE_DRAWS * 95 / 100 - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_f1_and_confusion() {
        let mut tally = LevelTally::default();
        for (t, p) in [("a", "a"), ("a", "a"), ("a", "b"), ("b", "b"), ("c", "b")] {
            tally.add(t, p, 0.9);
        }
        let r = tally.report();
        assert_eq!(r.count, 5);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        let a = &r.per_class["a"];
        assert!((a.precision - 1.0).abs() < 1e-12 && (a.recall - 2.0 / 3.0).abs() < 1e-12);
        let b = &r.per_class["b"];
        assert!((b.precision - 1.0 / 3.0).abs() < 1e-12 && (b.recall - 1.0).abs() < 1e-12);
        assert_eq!(r.per_class["c"].f1, 0.0);
        // F1: a = 0.8, b = 0.5, c = 0.
        assert!((r.macro_f1 - 1.3 / 3.0).abs() < 1e-12);
        assert_eq!(r.confusion["c"]["b"], 1);
    }

    #[test]
    fn ece_is_zero_when_confidence_matches_accuracy() {
        // 80 % confidence, 8 of 10 right.
        let outcomes = (0..10).map(|i| (i < 8, 0.8));
        assert!(expected_calibration_error(outcomes) < 1e-12);
        // Always 100 % sure, half right: ECE 0.5.
        let outcomes = (0..10).map(|i| (i % 2 == 0, 1.0));
        assert!((expected_calibration_error(outcomes) - 0.5).abs() < 1e-12);
        assert_eq!(expected_calibration_error(std::iter::empty()), 0.0);
    }

    #[test]
    fn chance_ece_is_the_noise_of_a_calibrated_model() {
        // Sure and right: no noise at all.
        assert_eq!(
            chance_ece(std::iter::repeat_n(1.0, 25)),
            ChanceEce {
                mean: 0.0,
                p95: 0.0
            }
        );
        // 25 rows at 70 %: one bin; computed exactly, E|Bin(25, 0.7)/25 - 0.7|
        // is 0.0740 and its 95th percentile 0.18.
        let small = chance_ece(std::iter::repeat_n(0.7, 25));
        assert!((small.mean - 0.0740).abs() < 0.005, "{small:?}");
        assert!(small.p95 > 0.14 && small.p95 < 0.19, "{small:?}");
        // A hundred times the rows: a tenth of the noise.
        let large = chance_ece(std::iter::repeat_n(0.7, 2500));
        assert!((large.mean - 0.0073).abs() < 0.001, "{large:?}");
        // Reproducible: the seed is fixed.
        assert_eq!(small, chance_ece(std::iter::repeat_n(0.7, 25)));
        assert_eq!(chance_ece(std::iter::empty()).p95, 0.0);
    }

    #[test]
    fn wilson_interval_matches_the_textbook() {
        // 36 of 45 (vn_listings_dev's leaf): 0.8000 in [0.6618, 0.8910].
        let [lo, hi] = wilson_interval(36, 45);
        assert!(
            (lo - 0.6618).abs() < 1e-4 && (hi - 0.8910).abs() < 1e-4,
            "{lo} {hi}"
        );
        // All right on 5 rows is not certainty.
        let [lo, hi] = wilson_interval(5, 5);
        assert!((lo - 0.5655).abs() < 1e-4 && hi == 1.0, "{lo} {hi}");
        assert_eq!(wilson_interval(0, 0), [0.0, 0.0]);
        assert_eq!(wilson_interval(0, 10)[0], 0.0);
    }
}
