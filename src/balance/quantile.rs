//! Quantile balancing (QB): a per-expert bias `b`, selection by the top-k of `s + b`, and after
//! each training batch a new bias from the batch's own quantiles. Formulas and sources:
//! `docs/algorithms.md`.
//!
//! For a batch of `n` tokens, token `i`'s cutoff `a_i` is the (k+1)-th largest `s_ij + b_j`;
//! expert `j`'s new bias is minus the value that `C = floor(k n / m)` of the `s_ij - a_i` lie
//! above (the (1 - k/m) quantile), centred to mean zero:
//!
//! ```text
//! bhat_j = -quantile_{1 - k/m}(s_ij - a_i over i);   b = bhat - mean(bhat)
//! ```
//!
//! optionally smoothed, `b <- ema * b_old + (1 - ema) * b`. The exact quantile is the midpoint
//! of the C-th and (C+1)-th largest values (the BIP expert price without the clamp, see
//! [`super::bip::column_price`]); the histogram estimator counts the values in `B` equal bins
//! (over [`histogram_range`])
//! and interpolates inside the bin that holds the C-th largest, so distributed training needs
//! one integer sum of `m x B` counts per layer.
//!
//! This module is the plain-Rust rule: the tests' reference. The layer runs the same steps on
//! its device (`crate::kernels::qb_update`).

use burn::config::Config;

use super::bip::{column_price, kth_largest};

/// How QB finds each expert's quantile.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum QuantileEstimator {
    /// By selection over the batch's values: exact.
    Exact,
    /// From a histogram of `bins` equal bins over the values' range (see [`histogram_range`]).
    Histogram {
        /// Number of bins `B` (Kimi K3: 1,000), 2 to [`MAX_BINS`].
        bins: usize,
    },
}

/// Most histogram bins: one `u32` per bin in WebGPU's guaranteed 16 KiB of workgroup memory.
pub const MAX_BINS: usize = 4096;

/// Range of the histogram: the values `s_ij - a_i` of scores in `[0, 1]` lie in
/// `[lo, hi] = [-1 - max(b), 1 - min(b)]`, a range every rank knows from the bias alone (no
/// communication). Returns `(lo, scale, width)`: `scale = (1 / (hi - lo)) * bins` bins per unit and
/// `width = (hi - lo) / bins`.
pub fn histogram_range(bias: &[f32], bins: usize) -> (f32, f32, f32) {
    let max = bias.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = bias.iter().copied().fold(f32::INFINITY, f32::min);
    let lo = -1.0 - max;
    let hi = 1.0 - min;
    (lo, (1.0 / (hi - lo)) * bins as f32, (hi - lo) / bins as f32)
}

/// The bin of `v`: `floor((v - lo) * scale)`, clamped to the first and last bin.
pub fn bin_of(v: f32, lo: f32, scale: f32, bins: usize) -> usize {
    ((v - lo) * scale).floor().clamp(0.0, (bins - 1) as f32) as usize
}

/// The value with `admitted` of the histogrammed values above it: inside the bin holding the
/// admitted-th largest value, at the point where the values above it would sit if the bin's
/// values were spread evenly (`admitted = 0`: the top of the range).
pub fn histogram_quantile(counts: &[u32], admitted: usize, lo: f32, width: f32) -> f32 {
    let mut above = 0usize; // values in the bins above `bin`
    for (bin, &count) in counts.iter().enumerate().rev() {
        let count = count as usize;
        if above + count >= admitted || bin == 0 {
            let inside = (admitted - above.min(admitted)) as f32 / count.max(1) as f32;
            return lo + ((bin + 1) as f32 - inside) * width;
        }
        above += count;
    }
    lo
}

/// The QB bias after a training batch of `scores [tokens, experts]` routed with `bias`.
pub fn quantile_bias(
    scores: &[f32],
    bias: &[f32],
    experts: usize,
    k: usize,
    estimator: QuantileEstimator,
    ema: f32,
) -> Vec<f32> {
    let tokens = scores.len() / experts;
    let admitted = k * tokens / experts;
    let cutoffs: Vec<f32> = scores
        .chunks_exact(experts)
        .map(|s| {
            let mut row: Vec<f32> = s.iter().zip(bias).map(|(s, b)| s + b).collect();
            kth_largest(&mut row, k + 1).unwrap_or(0.0)
        })
        .collect();
    let column = |j: usize| -> Vec<f32> {
        (0..tokens)
            .map(|i| scores[i * experts + j] - cutoffs[i])
            .collect()
    };
    let quantiles: Vec<f32> = match estimator {
        QuantileEstimator::Exact => (0..experts)
            .map(|j| column_price(&mut column(j), admitted).unwrap_or(0.0))
            .collect(),
        QuantileEstimator::Histogram { bins } => {
            let (lo, scale, width) = histogram_range(bias, bins);
            (0..experts)
                .map(|j| {
                    let mut counts = vec![0u32; bins];
                    column(j)
                        .into_iter()
                        .for_each(|v| counts[bin_of(v, lo, scale, bins)] += 1);
                    histogram_quantile(&counts, admitted, lo, width)
                })
                .collect()
        }
    };
    let mean = quantiles.iter().sum::<f32>() / experts as f32;
    bias.iter()
        .zip(&quantiles)
        .map(|(&old, &v)| ema * old + (1.0 - ema) * (mean - v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantile_interpolates_inside_the_bin() {
        // Bins of width 1 from 0: counts 2 in [0,1), 4 in [1,2), 1 in [2,3).
        let counts = [2, 4, 1];
        assert_eq!(histogram_quantile(&counts, 0, 0.0, 1.0), 3.0);
        assert_eq!(histogram_quantile(&counts, 1, 0.0, 1.0), 2.0);
        assert_eq!(histogram_quantile(&counts, 3, 0.0, 1.0), 1.5); // 2 of 4 in [1,2)
        assert_eq!(histogram_quantile(&counts, 7, 0.0, 1.0), 0.0);
    }

    #[test]
    fn qb_balances_a_skewed_batch_in_one_step() {
        // 2 experts, top-1: every token prefers expert 0.
        let scores: Vec<f32> = (0..8)
            .flat_map(|i| [0.9 - 0.01 * i as f32, 0.1 + 0.01 * i as f32])
            .collect();
        for estimator in [
            QuantileEstimator::Exact,
            QuantileEstimator::Histogram { bins: 1000 },
        ] {
            let b = quantile_bias(&scores, &[0.0, 0.0], 2, 1, estimator, 0.0);
            assert!((b[0] + b[1]).abs() < 1e-6, "centred: {b:?}");
            let to_zero = (0..8)
                .filter(|i| scores[2 * i] + b[0] > scores[2 * i + 1] + b[1])
                .count();
            assert_eq!(to_zero, 4, "{estimator:?}: {b:?}");
        }
    }
}
