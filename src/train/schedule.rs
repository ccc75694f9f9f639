//! Learning-rate schedule: linear warmup, then cosine decay to a floor.

/// Learning rate at `step` (from 1) of `total`: `peak * step / warmup` during warmup, then a
/// cosine from `peak` down to `peak * min_fraction` at the last step.
pub fn learning_rate(step: u64, total: u64, warmup: u64, peak: f64, min_fraction: f64) -> f64 {
    if warmup > 0 && step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let floor = peak * min_fraction;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_peak_and_floor() {
        assert!((learning_rate(1, 100, 10, 1e-3, 0.1) - 1e-4).abs() < 1e-12);
        assert!((learning_rate(10, 100, 10, 1e-3, 0.1) - 1e-3).abs() < 1e-12);
        assert!((learning_rate(100, 100, 10, 1e-3, 0.1) - 1e-4).abs() < 1e-12);
        assert!((learning_rate(55, 100, 10, 1e-3, 0.1) - 5.5e-4).abs() < 1e-12); // half-way
        assert!((learning_rate(1, 1, 0, 1e-3, 0.0)).abs() < 1e-12);
    }
}
