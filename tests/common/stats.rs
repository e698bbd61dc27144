//! Percentiles and medians, one definition for tests and benchmarks
//! (benches/auth includes this file with `#[path]`: a copy there could
//! drift to another formula, as it once had).

use std::time::Duration;

/// The `p`-th percentile (0.0 to 1.0) of `sorted` (ascending, not empty) by
/// the nearest-rank method: the smallest value with at least `p` of all
/// values at or below it, i.e. the value of rank ⌈p·n⌉ (rank 1 for p = 0,
/// so 0.0 gives the minimum and 1.0 the maximum).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
