//! Training the heads: L2-regularised multinomial logistic regression on
//! standardised embeddings, optimised with L-BFGS, then temperature scaling
//! fitted on photos the head never saw.
//!
//! Written here rather than pulled from a crate because the whole job is a
//! few hundred lines on dense 1608-wide data, and the crates that do it
//! (linfa-logistic + argmin) would pin a second `ndarray` version.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::heads::LinearHead;

/// A labelled design matrix: one embedding per row, class index per row.
pub struct Dataset<'a> {
    pub features: ArrayView2<'a, f32>,
    pub labels: &'a [usize],
    pub classes: usize,
}

/// Feature standardisation, folded into the weights when a head is saved.
#[derive(Debug, Clone)]
pub struct Standardiser {
    pub mean: Array1<f32>,
    pub scale: Array1<f32>,
}

impl Standardiser {
    pub fn fit(features: ArrayView2<'_, f32>) -> Self {
        let mean = features.mean_axis(Axis(0)).expect("at least one row");
        let std = features.std_axis(Axis(0), 0.0);
        let scale = std.mapv(|s| if s > 1e-6 { 1.0 / s } else { 1.0 });
        Self { mean, scale }
    }

    pub fn apply(&self, features: ArrayView2<'_, f32>) -> Array2<f32> {
        (&features - &self.mean) * &self.scale
    }
}

/// A trained softmax regression in standardised space.
#[derive(Debug, Clone)]
pub struct SoftmaxRegression {
    /// `[classes, dim]`.
    pub weights: Array2<f32>,
    pub bias: Array1<f32>,
}

/// Options of [`SoftmaxRegression::fit`].
#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    /// L2 penalty on the weights (not the bias), per example.
    pub l2: f64,
    pub max_iterations: usize,
    /// Stop when the gradient's max-norm falls below this.
    pub tolerance: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            l2: 1e-3,
            max_iterations: 300,
            tolerance: 1e-5,
        }
    }
}

impl SoftmaxRegression {
    /// Logits `[rows, classes]` for standardised features.
    pub fn logits(&self, features: ArrayView2<'_, f32>) -> Array2<f32> {
        features.dot(&self.weights.t()) + &self.bias
    }

    /// Fits by L-BFGS on the mean cross-entropy plus `l2/2·‖W‖²`.
    pub fn fit(data: &Dataset<'_>, options: &FitOptions) -> Self {
        let dim = data.features.ncols();
        let k = data.classes;
        let n_params = k * dim + k;
        let objective =
            |theta: &[f64]| -> (f64, Vec<f64>) { loss_and_gradient(data, theta, options.l2) };
        let theta = lbfgs(objective, vec![0.0; n_params], options);
        let weights = Array2::from_shape_fn((k, dim), |(c, j)| theta[c * dim + j] as f32);
        let bias = Array1::from_shape_fn(k, |c| theta[k * dim + c] as f32);
        Self { weights, bias }
    }

    /// Converts to a head on raw (unstandardised) embeddings:
    /// `W·((x − μ)·s) + b = (W·diag(s))·x + (b − W·diag(s)·μ)`.
    pub fn into_head(
        self,
        standardiser: &Standardiser,
        classes: Vec<String>,
        temperature: f32,
    ) -> LinearHead {
        let folded = &self.weights * &standardiser.scale;
        let bias = &self.bias - &folded.dot(&standardiser.mean);
        LinearHead {
            classes,
            weights: folded.outer_iter().map(|row| row.to_vec()).collect(),
            bias: bias.to_vec(),
            temperature,
        }
    }
}

/// Mean cross-entropy + L2, and its gradient, for parameters laid out as
/// `[W row-major (classes × dim), b (classes)]`.
fn loss_and_gradient(data: &Dataset<'_>, theta: &[f64], l2: f64) -> (f64, Vec<f64>) {
    let n = data.features.nrows();
    let dim = data.features.ncols();
    let k = data.classes;
    let weights = Array2::from_shape_fn((k, dim), |(c, j)| theta[c * dim + j] as f32);
    let bias = Array1::from_shape_fn(k, |c| theta[k * dim + c] as f32);
    let logits = data.features.dot(&weights.t()) + &bias;
    // Residuals P − Y, accumulated in f64 for the loss.
    let mut residual = Array2::<f32>::zeros((n, k));
    let mut loss = 0.0f64;
    for (i, row) in logits.outer_iter().enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = row.iter().map(|l| f64::from(l - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        let y = data.labels[i];
        loss -= (exps[y] / total).ln();
        for c in 0..k {
            let p = exps[c] / total;
            residual[(i, c)] = (p - if c == y { 1.0 } else { 0.0 }) as f32;
        }
    }
    let scale = 1.0 / n as f64;
    let grad_w = residual.t().dot(&data.features);
    let grad_b = residual.sum_axis(Axis(0));
    let mut gradient = Vec::with_capacity(theta.len());
    let mut penalty = 0.0;
    for c in 0..k {
        for j in 0..dim {
            let w = theta[c * dim + j];
            penalty += w * w;
            gradient.push(f64::from(grad_w[(c, j)]) * scale + l2 * w);
        }
    }
    gradient.extend(grad_b.iter().map(|g| f64::from(*g) * scale));
    (loss * scale + 0.5 * l2 * penalty, gradient)
}

/// Limited-memory BFGS with a backtracking (Armijo) line search. Small and
/// deterministic; the objective here is smooth and strictly convex.
fn lbfgs(
    mut objective: impl FnMut(&[f64]) -> (f64, Vec<f64>),
    mut x: Vec<f64>,
    options: &FitOptions,
) -> Vec<f64> {
    const MEMORY: usize = 10;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a * b).sum::<f64>();
    let (mut f, mut g) = objective(&x);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    for _ in 0..options.max_iterations {
        if g.iter().fold(0.0f64, |m, v| m.max(v.abs())) < options.tolerance {
            break;
        }
        // Two-loop recursion: direction = −H·g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(q, y)| *q -= a * y);
            alphas.push(a);
        }
        if let Some((s, y, _)) = history.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y, rho), a) in history.iter().zip(alphas.into_iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(q, s)| *q += (a - b) * s);
        }
        let mut direction: Vec<f64> = q.into_iter().map(|v| -v).collect();
        let mut slope = dot(&g, &direction);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            history.clear();
            direction = g.iter().map(|v| -v).collect();
            slope = dot(&g, &direction);
        }
        let mut step = if history.is_empty() {
            1.0 / g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..40 {
            let candidate: Vec<f64> = x
                .iter()
                .zip(&direction)
                .map(|(x, d)| x + step * d)
                .collect();
            let (fc, gc) = objective(&candidate);
            if fc <= f + 1e-4 * step * slope {
                accepted = Some((candidate, fc, gc));
                break;
            }
            step *= 0.5;
        }
        let Some((next, f_next, g_next)) = accepted else {
            break;
        };
        let s: Vec<f64> = next.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_next.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        let improvement = f - f_next;
        x = next;
        f = f_next;
        g = g_next;
        if improvement.abs() < 1e-10 * f.abs().max(1.0) {
            break;
        }
    }
    x
}

/// Mean negative log-likelihood of `softmax(logits / t)`.
pub fn nll(logits: ArrayView2<'_, f32>, labels: &[usize], temperature: f64) -> f64 {
    let mut total = 0.0;
    for (row, &y) in logits.outer_iter().zip(labels) {
        let scaled: Vec<f64> = row.iter().map(|l| f64::from(*l) / temperature).collect();
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_sum = scaled.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
        total += log_sum - scaled[y];
    }
    total / labels.len().max(1) as f64
}

/// The temperature minimising held-out NLL (golden-section search on log T;
/// the NLL is unimodal in T).
pub fn fit_temperature(logits: ArrayView2<'_, f32>, labels: &[usize]) -> f64 {
    let f = |log_t: f64| nll(logits, labels, log_t.exp());
    let (mut lo, mut hi) = ((0.05f64).ln(), (20.0f64).ln());
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let mut a = hi - ratio * (hi - lo);
    let mut b = lo + ratio * (hi - lo);
    let (mut fa, mut fb) = (f(a), f(b));
    for _ in 0..80 {
        if fa < fb {
            hi = b;
            b = a;
            fb = fa;
            a = hi - ratio * (hi - lo);
            fa = f(a);
        } else {
            lo = a;
            a = b;
            fa = fb;
            b = lo + ratio * (hi - lo);
            fb = f(b);
        }
    }
    ((lo + hi) / 2.0).exp()
}

/// Index of the largest value of each row.
pub fn argmax_rows(values: ArrayView2<'_, f32>) -> Vec<usize> {
    values
        .outer_iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, v)| {
                    if *v > best.1 {
                        (i, *v)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect()
}

/// Whether a photo belongs to the calibration hold-out, by its file name:
/// the first 32 bits of sha256(name) mod 100 below `percent`. The
/// fine-tuning script (`tools/finetune`) uses the same rule, so the
/// backbone never saw the photos the temperature is fitted on.
pub fn in_calibration_holdout(file_name: &str, percent: u32) -> bool {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(file_name.as_bytes());
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    head % 100 < percent
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Three well-separated blobs in 2-D, deterministic.
    fn blobs() -> (Array2<f32>, Vec<usize>) {
        let centres = [(0.0f32, 3.0f32), (3.0, -2.0), (-3.0, -2.0)];
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..300 {
            let c = i % 3;
            let jitter = ((i * 7919) % 100) as f32 / 100.0 - 0.5;
            let jitter2 = ((i * 104729) % 100) as f32 / 100.0 - 0.5;
            rows.extend([centres[c].0 + 1.5 * jitter, centres[c].1 + 1.5 * jitter2]);
            labels.push(c);
        }
        (Array2::from_shape_vec((300, 2), rows).unwrap(), labels)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (x, y) = blobs();
        let data = Dataset {
            features: x.view(),
            labels: &y,
            classes: 3,
        };
        let theta: Vec<f64> = (0..9).map(|i| (i as f64 * 0.37).sin() * 0.3).collect();
        let (_, g) = loss_and_gradient(&data, &theta, 0.01);
        for i in 0..theta.len() {
            let mut plus = theta.clone();
            plus[i] += 1e-4;
            let mut minus = theta.clone();
            minus[i] -= 1e-4;
            let numeric = (loss_and_gradient(&data, &plus, 0.01).0
                - loss_and_gradient(&data, &minus, 0.01).0)
                / 2e-4;
            assert!(
                (numeric - g[i]).abs() < 1e-3,
                "param {i}: {numeric} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn separates_blobs() {
        let (x, y) = blobs();
        let data = Dataset {
            features: x.view(),
            labels: &y,
            classes: 3,
        };
        let model = SoftmaxRegression::fit(
            &data,
            &FitOptions {
                l2: 1e-4,
                ..Default::default()
            },
        );
        let predicted = argmax_rows(model.logits(x.view()).view());
        let correct = predicted.iter().zip(&y).filter(|(p, y)| p == y).count();
        assert_eq!(correct, 300);
    }

    #[test]
    fn folding_the_standardiser_keeps_the_logits() {
        let (x, y) = blobs();
        let x = x.mapv(|v| v * 10.0 + 5.0);
        let standardiser = Standardiser::fit(x.view());
        let z = standardiser.apply(x.view());
        let data = Dataset {
            features: z.view(),
            labels: &y,
            classes: 3,
        };
        let model = SoftmaxRegression::fit(
            &data,
            &FitOptions {
                l2: 1e-3,
                max_iterations: 50,
                ..Default::default()
            },
        );
        let want = model.logits(z.view());
        let head = model.into_head(&standardiser, vec!["a".into(), "b".into(), "c".into()], 1.0);
        let mut padded = ndarray::Array1::<f32>::zeros(2);
        for (i, row) in x.outer_iter().enumerate().take(20) {
            padded.assign(&row);
            let got: Vec<f32> = head
                .weights
                .iter()
                .zip(&head.bias)
                .map(|(w, b)| w.iter().zip(padded.iter()).map(|(w, x)| w * x).sum::<f32>() + b)
                .collect();
            for c in 0..3 {
                assert!((got[c] - want[(i, c)]).abs() < 1e-3);
            }
        }
    }

    #[test]
    fn temperature_undoes_overconfidence() {
        // Logits that are 3× too sharp for the labels' real noise: the fitted
        // temperature must come out near 3.
        let mut logits = Vec::new();
        let mut labels = Vec::new();
        for i in 0..2000 {
            // True probability of class 0 is sigmoid(1) ≈ 0.73.
            logits.extend([3.0f32, 0.0]);
            labels.push(if (i * 37) % 100 < 73 { 0 } else { 1 });
        }
        let logits = Array2::from_shape_vec((2000, 2), logits).unwrap();
        let t = fit_temperature(logits.view(), &labels);
        assert!((t - 3.0).abs() < 0.15, "temperature {t}");
        assert!(nll(logits.view(), &labels, t) < nll(logits.view(), &labels, 1.0));
    }

    #[test]
    fn argmax_and_holdout_rule() {
        assert_eq!(
            argmax_rows(array![[0.1f32, 0.5, 0.2], [3.0, 1.0, 2.0]].view()),
            vec![1, 0]
        );
        // Values printed by tools/finetune/finetune.py's rule,
        // int(sha256(name)[:8], 16) % 100: 1, 14 and 64.
        assert!(in_calibration_holdout("p1.jpg", 15));
        assert!(in_calibration_holdout("houses-12_kitchen.jpg", 15));
        assert!(!in_calibration_holdout("houses-12_kitchen.jpg", 14));
        assert!(!in_calibration_holdout("miniplaces-003e1fc1823c.jpg", 15));
        let held: usize = (0..1000)
            .filter(|i| in_calibration_holdout(&format!("p{i}.jpg"), 15))
            .count();
        assert!(
            (100..200).contains(&held),
            "about 15 % held out, got {held}"
        );
    }
}
