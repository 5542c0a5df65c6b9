//! Accuracy, macro-F1, per-class precision/recall, confusion matrices and
//! expected calibration error, as `photolabel eval` reports them.

use std::collections::BTreeMap;

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
    pub macro_f1: f64,
    /// Expected calibration error of this level's confidences.
    pub ece: f64,
    pub per_class: BTreeMap<String, ClassScore>,
    /// truth → prediction → count.
    pub confusion: BTreeMap<String, BTreeMap<String, usize>>,
}

/// Accuracy and calibration of one level over a group of rows.
#[derive(Debug, Serialize)]
pub struct LevelSummary {
    pub count: usize,
    pub accuracy: f64,
    pub ece: f64,
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
            ece: expected_calibration_error(self.outcomes()),
        }
    }

    pub fn report(&self) -> LevelReport {
        let LevelSummary {
            count,
            accuracy,
            ece,
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
            macro_f1,
            ece,
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
}
