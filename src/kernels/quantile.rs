//! Quantile balancing's update on the layer's device (the rule: `crate::balance::quantile`).
//!
//! Exact: one unclamped BIP dual iteration from `q = -b` ([`super::bip_dual`]: per-token
//! cutoffs, then per-expert midpoint quantiles by radix select). Histogram: the per-token
//! cutoffs, per-expert counts in `B` bins ([`super::RoutingKernels::cutoff_histogram`]; on a
//! cluster the one integer sum), and the quantile read from the counts with tensor ops. Then
//! `b = mean(v) - v` and the optional EMA. No host read on any path.

use burn::backend::Dispatch;
use burn::tensor::{Int, Tensor};

use super::{KernelPath, RoutingKernels, ensure, portable, uses_wgsl};
use crate::balance::QuantileEstimator;
use crate::balance::quantile::MAX_BINS;
use crate::error::Result;

/// The QB bias after a training batch of `scores [tokens, experts]` routed with `bias [experts]`.
pub fn qb_update(
    scores: Tensor<2>,
    bias: Tensor<1>,
    top_k: usize,
    estimator: QuantileEstimator,
    ema: f32,
    path: KernelPath,
) -> Result<Tensor<1>> {
    let [n, m] = scores.dims();
    ensure(bias.dims() == [m], || {
        format!("bias has shape {:?}, expected [{m}]", bias.dims())
    })?;
    ensure(top_k >= 1 && top_k <= m, || {
        format!("top_k must be in 1..={m}, got {top_k}")
    })?;
    let quantiles = match estimator {
        QuantileEstimator::Exact => {
            super::bip_dual(scores, bias.clone().neg(), top_k, 1, false, path)?
        }
        QuantileEstimator::Histogram { bins } => {
            ensure((2..=MAX_BINS).contains(&bins), || {
                format!("histogram bins must be in 2..={MAX_BINS}, got {bins}")
            })?;
            ensure(n <= 65_535 * 64 && m <= 65_535, || {
                format!(
                    "the QB histogram takes up to {} tokens and 65,535 experts",
                    65_535 * 64
                )
            })?;
            // Values s - a of scores in [0, 1] lie in [-1 - max b, 1 - min b].
            let lo = bias.clone().max().neg().sub_scalar(1.0);
            let hi = bias.clone().min().neg().add_scalar(1.0);
            let span = hi - lo.clone();
            let scale = span.clone().recip().mul_scalar(bins as f32);
            let width = span.div_scalar(bins as f32);
            let bounds = Tensor::cat(vec![lo.clone(), scale], 0);
            let counts = if uses_wgsl(path, &scores.device())? {
                let cutoffs =
                    Tensor::<1>::from_dispatch(<Dispatch as RoutingKernels>::token_cutoffs(
                        scores.clone().into_dispatch(),
                        bias.clone().neg().into_dispatch(),
                        top_k,
                    ));
                Tensor::<2, Int>::from_dispatch(<Dispatch as RoutingKernels>::cutoff_histogram(
                    scores.into_dispatch(),
                    cutoffs.into_dispatch(),
                    bounds.into_dispatch(),
                    bins,
                ))
            } else {
                let cutoffs = portable::token_cutoffs(scores.clone(), bias.clone().neg(), top_k);
                portable::cutoff_histogram(scores, cutoffs, bounds, bins)
            };
            histogram_quantile(counts, top_k * n / m, lo, width)
        }
    };
    let centred = quantiles.clone().mean().expand([m]) - quantiles;
    Ok(bias.mul_scalar(ema) + centred.mul_scalar(1.0 - ema))
}

/// Per expert, the value with `admitted` of the counted values above it, interpolated inside
/// the bin that holds the admitted-th largest (`crate::balance::quantile::histogram_quantile`).
///
/// # Shapes
/// - counts: `[experts, bins]`; lo, width: `[1]`
/// - output: `[experts]`
pub fn histogram_quantile(
    counts: Tensor<2, Int>,
    admitted: usize,
    lo: Tensor<1>,
    width: Tensor<1>,
) -> Tensor<1> {
    let [m, _] = counts.dims();
    // Values in this bin and the bins above it.
    let from_top = counts.clone().flip([1]).cumsum(1).flip([1]);
    // The last bin whose count from the top reaches `admitted` (bin 0 always does).
    let bin = from_top
        .clone()
        .greater_equal_elem(admitted as i64)
        .int()
        .sum_dim(1)
        .sub_scalar(1); // [m, 1]
    let count = counts.gather(1, bin.clone());
    let above = from_top.gather(1, bin.clone()) - count.clone();
    let inside = above.neg().add_scalar(admitted as i64).float() / count.clamp_min(1).float();
    let edge = (bin.add_scalar(1).float() - inside) * width.unsqueeze_dim::<2>(0).expand([m, 1]);
    (lo.unsqueeze_dim::<2>(0).expand([m, 1]) + edge).reshape([m])
}
