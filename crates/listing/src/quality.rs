//! Quality flags from what a photo's pixels measure.

use photolabel_vision::PhotoStats;
use serde::Serialize;

/// A reason a photo is not fit to publish as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// Longer side under [`QualityThresholds::min_long_side`].
    Small,
    /// Sharpness under [`QualityThresholds::blurry_below`].
    Blurry,
    /// Mean luma under [`QualityThresholds::dark_below`].
    Dark,
    /// More clipped highlights than [`QualityThresholds::overexposed_above`].
    Overexposed,
}

impl Flag {
    pub fn name(self) -> &'static str {
        match self {
            Flag::Small => "small",
            Flag::Blurry => "blurry",
            Flag::Dark => "dark",
            Flag::Overexposed => "overexposed",
        }
    }
}

/// Where each flag starts. The defaults were set on generated degradations
/// of real listing photos (BENCHMARKS.md, issue 12): a Gaussian blur of
/// σ = 2 px on a 1024 px photo brings the sharpness under 0.2 while photos
/// in focus stay above 0.3; photos darkened to 25 % measure a mean luma
/// under 0.21 while the darkest originals measured 0.3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QualityThresholds {
    /// Portals ask for at least 1024 px on the longer side.
    pub min_long_side: u32,
    pub blurry_below: f32,
    pub dark_below: f32,
    /// Share of pixels at luma ≥ 247 of 255.
    pub overexposed_above: f32,
}

impl Default for QualityThresholds {
    fn default() -> Self {
        Self {
            min_long_side: 1024,
            blurry_below: 0.25,
            dark_below: 0.22,
            overexposed_above: 0.30,
        }
    }
}

impl QualityThresholds {
    /// The flags a photo earns. `document` photos (plans, scans: the `other`
    /// class) are mostly white paper, so their exposure is not judged.
    pub fn flags(&self, stats: &PhotoStats, document: bool) -> Vec<Flag> {
        let mut flags = Vec::new();
        if stats.width.max(stats.height) < self.min_long_side {
            flags.push(Flag::Small);
        }
        if stats.sharpness < self.blurry_below {
            flags.push(Flag::Blurry);
        }
        if !document && stats.brightness < self.dark_below {
            flags.push(Flag::Dark);
        }
        if !document && stats.highlights > self.overexposed_above {
            flags.push(Flag::Overexposed);
        }
        flags
    }
}

/// Orders photos from best to worst: fewer flags, then more pixels, then
/// sharper. Pixels before sharpness because a downsized copy measures
/// sharper per pixel than its full-size original, which is the better one.
pub(crate) fn better(a: (&PhotoStats, &[Flag]), b: (&PhotoStats, &[Flag])) -> std::cmp::Ordering {
    better_by_flags_and_size(a, b).then_with(|| b.0.sharpness.total_cmp(&a.0.sharpness))
}

/// [`better`] without the sharpness.
pub(crate) fn better_by_flags_and_size(
    a: (&PhotoStats, &[Flag]),
    b: (&PhotoStats, &[Flag]),
) -> std::cmp::Ordering {
    let pixels = |s: &PhotoStats| u64::from(s.width) * u64::from(s.height);
    a.1.len()
        .cmp(&b.1.len())
        .then_with(|| pixels(b.0).cmp(&pixels(a.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::stats;

    #[test]
    fn each_flag_at_its_threshold() {
        let t = QualityThresholds::default();
        let good = stats(1440, 960, 0.5, 0.45, 0.0);
        assert!(t.flags(&good, false).is_empty());
        assert_eq!(
            t.flags(&stats(1023, 700, 0.5, 0.45, 0.0), false),
            [Flag::Small]
        );
        assert!(t.flags(&stats(700, 1024, 0.5, 0.45, 0.0), false).is_empty());
        assert_eq!(
            t.flags(&stats(1440, 960, 0.2, 0.45, 0.0), false),
            [Flag::Blurry]
        );
        assert_eq!(
            t.flags(&stats(1440, 960, 0.5, 0.1, 0.0), false),
            [Flag::Dark]
        );
        assert_eq!(
            t.flags(&stats(1440, 960, 0.5, 0.9, 0.6), false),
            [Flag::Overexposed]
        );
        assert_eq!(
            t.flags(&stats(800, 600, 0.1, 0.1, 0.0), false),
            [Flag::Small, Flag::Blurry, Flag::Dark]
        );
    }

    #[test]
    fn documents_are_not_judged_on_exposure() {
        let t = QualityThresholds::default();
        assert!(t.flags(&stats(1440, 960, 0.5, 0.95, 0.9), true).is_empty());
        assert!(t.flags(&stats(1440, 960, 0.5, 0.05, 0.0), true).is_empty());
    }

    #[test]
    fn better_prefers_fewer_flags_then_pixels_then_sharpness() {
        use std::cmp::Ordering::*;
        let big = stats(2000, 1500, 0.3, 0.5, 0.0);
        let small = stats(1000, 750, 0.6, 0.5, 0.0);
        assert_eq!(better((&big, &[]), (&small, &[])), Less);
        assert_eq!(better((&big, &[Flag::Dark]), (&small, &[])), Greater);
        let sharper = stats(2000, 1500, 0.5, 0.5, 0.0);
        assert_eq!(better((&sharper, &[]), (&big, &[])), Less);
        assert_eq!(better((&big, &[]), (&big, &[])), Equal);
    }
}
