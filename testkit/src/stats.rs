//! Medians and quantiles of benchmark measurements.

/// The `q` quantile (0 ≤ q ≤ 1) of `v` by the nearest-rank method: the smallest value with
/// at least `q` of the values at or below it (`q = 0.5` the lower median, `q = 0.99` the
/// p99). `None` for an empty slice or a `q` outside [0, 1]. NaNs sort last.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    // Rank ceil(q * n), 1-based; at least 1.
    let n = s.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    s.get(rank - 1).copied()
}

/// The median of `v` ([`quantile`] 0.5), `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    quantile(v, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(quantile(&v, 1.5), None);
        // One slow outlier in a hundred is the p99 of 101 values, not of 100.
        let mut w = vec![1.0; 100];
        w.push(1000.0);
        assert_eq!(quantile(&w, 0.99), Some(1.0));
        w.push(1000.0);
        assert_eq!(quantile(&w, 0.99), Some(1000.0));
    }
}
