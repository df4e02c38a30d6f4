//! Medians and spreads of small samples.

use std::time::Duration;

/// The median (mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len().is_multiple_of(2) {
        f64::midpoint(s[m - 1], s[m])
    } else {
        s[m]
    })
}

pub fn min_max(v: &[f64]) -> Option<(f64, f64)> {
    let lo = v
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .min_by(f64::total_cmp)?;
    let hi = v
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .max_by(f64::total_cmp)?;
    Some((lo, hi))
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `median (min–max)` with `digits` decimals, or `-`.
pub fn spread(v: &[f64], digits: usize) -> String {
    match (median(v), min_max(v)) {
        (Some(m), Some((lo, hi))) => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        _ => "-".into(),
    }
}

/// Median of durations in milliseconds.
pub fn median_ms(v: &[Duration]) -> Option<f64> {
    median(
        &v.iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>(),
    )
}
