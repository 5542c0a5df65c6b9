//! Confidence strings exactly as the original (Python) API printed them.

/// Formats a probability (0–1) as the contract's confidence string: the
/// percentage rounded to two decimals and printed like Python's
/// `str(round(p * 100, 2))` — `"99.9"`, `"100.0"`, `"0.0"`, never `"99.90"`.
///
/// Python's `round` is correctly rounded on the exact binary value (ties to
/// even), and `str` prints the shortest string that reads back as the same
/// float. Rust's `{:.2}` is also exact, and its `{}` also prints the shortest
/// round-trip form, so the two steps map one to one; only Python's trailing
/// `.0` on whole numbers has to be added.
pub fn format_confidence(probability: f64) -> String {
    // Out-of-range or NaN inputs are a bug upstream, but a client must still
    // get a well-formed number, never "NaN" or "-0.0".
    let percent = if probability.is_nan() {
        0.0
    } else {
        (probability * 100.0).clamp(0.0, 100.0)
    };
    // `clamp` keeps the sign of -0.0; adding +0.0 turns it into +0.0.
    let percent = percent + 0.0;
    let rounded: f64 = format!("{percent:.2}")
        .parse()
        .expect("a formatted float parses back");
    let mut text = format!("{rounded}");
    if !text.contains('.') {
        text.push_str(".0");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::format_confidence;

    /// Expected values printed by CPython 3.11: `str(round(p * 100, 2))`.
    #[test]
    fn matches_python_str_round() {
        let cases = [
            (0.9999, "99.99"),
            (0.999, "99.9"),
            (1.0, "100.0"),
            (0.0, "0.0"),
            (0.99995, "100.0"),
            (0.5915, "59.15"),
            (0.3692, "36.92"),
            (0.9618, "96.18"),
            (0.00001, "0.0"),
            (0.7, "70.0"),
            (0.12345, "12.35"),
            (0.5, "50.0"),
            (0.0405, "4.05"),
        ];
        for (p, want) in cases {
            assert_eq!(format_confidence(p), want, "p = {p}");
        }
    }

    /// Python's `round` rounds the exact binary value, ties to even:
    /// `round(0.125, 2) == 0.12`, `round(0.375, 2) == 0.38`, and
    /// `round(2.675, 2) == 2.67` because 2.675 is stored as 2.67499999….
    #[test]
    fn rounds_the_exact_binary_value_like_python() {
        assert_eq!(format_confidence(0.00125), "0.12");
        assert_eq!(format_confidence(0.00375), "0.38");
        assert_eq!(format_confidence(0.02675), "2.67");
        assert_eq!(format_confidence(0.01005), "1.0");
    }

    #[test]
    fn never_prints_nan_or_negative_zero() {
        assert_eq!(format_confidence(f64::NAN), "0.0");
        assert_eq!(format_confidence(-0.0), "0.0");
        assert_eq!(format_confidence(-1e-9), "0.0");
        assert_eq!(format_confidence(1.0000001), "100.0");
    }
}
