//! The routing steps as Burn tensor ops: the implementation on the CPU backends, and the
//! comparison path on wgpu. Same contract and same answers as the WGSL kernels.

use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use super::{GateRule, Histogram, TopK};
use crate::routing::{GroupLimit, GroupScore};

/// See [`super::RoutingKernels::gate_topk`].
pub fn gate_topk(
    logits: Tensor<2>,
    offset: Tensor<1>,
    draws: Option<Tensor<1>>,
    rule: GateRule,
) -> TopK {
    let [n, m] = logits.dims();
    let top_k = rule.top_k;
    let device = logits.device();
    let bad_rows = logits
        .clone()
        .is_nan()
        .bool_or(logits.clone().is_inf())
        .int()
        .sum_dim(1)
        .greater_elem(0); // [n, 1]
    let scores = if rule.sigmoid {
        sigmoid(logits)
    } else {
        softmax(logits, 1)
    };

    let mut selection = scores.clone() + offset.unsqueeze_dim::<2>(0).expand([n, m]);
    if let Some(limit) = &rule.group_limit {
        selection = keep_top_groups(selection, limit);
    }
    let indices = take_top_k(selection, top_k);
    let mut gates = scores.gather(1, indices.clone());
    let mut used = Tensor::<2, Int>::ones([n, top_k], &device);
    if let Some(draws) = draws.filter(|_| top_k >= 2) {
        let s1 = gates.clone().slice([0..n, 0..1]);
        let s2 = gates.clone().slice([0..n, 1..2]);
        let keep = (s2.clone() / (s1 + s2))
            .mul_scalar(2.0)
            .greater(draws.unsqueeze_dim(1))
            .int();
        used = used.slice_assign([0..n, 1..2], keep);
    }
    if rule.normalize {
        gates = gates.clone() / gates.sum_dim(1).expand([n, top_k]);
    }
    let bad = bad_rows.expand([n, top_k]);
    TopK {
        indices: indices.mask_fill(bad.clone(), -1),
        gates: gates.mask_fill(bad.clone(), 0.0),
        used: used.mask_fill(bad, 0),
    }
}

/// Indices `[n, k]` of the `k` largest values of each row, largest first, ties to the lower
/// index: `k` rounds of "take the best, then mask it out".
fn take_top_k(mut values: Tensor<2>, k: usize) -> Tensor<2, Int> {
    let [n, m] = values.dims();
    let device = values.device();
    let iota = Tensor::<1, Int>::arange(0..m as i64, &device)
        .unsqueeze_dim::<2>(0)
        .expand([n, m]);
    let reverse = iota.clone().neg().add_scalar(m as i64); // m - j: larger for lower j
    let mut picks = Vec::with_capacity(k);
    for _ in 0..k {
        let best = values.clone().max_dim(1).expand([n, m]);
        let is_best = values.clone().equal(best).int();
        let pick = (is_best * reverse.clone())
            .max_dim(1)
            .neg()
            .add_scalar(m as i64)
            .clamp(0, m as i64 - 1); // [n, 1]
        let chosen = iota.clone().equal(pick.clone().expand([n, m]));
        values = values.mask_fill(chosen, f32::NEG_INFINITY);
        picks.push(pick);
    }
    Tensor::cat(picks, 1)
}

/// `selection [n, m]` with every expert outside each row's best `top_groups` groups set to
/// `-inf` (see [`GroupLimit::mask_row`]).
fn keep_top_groups(selection: Tensor<2>, limit: &GroupLimit) -> Tensor<2> {
    let [n, m] = selection.dims();
    let (g, per_group) = (limit.groups, m / limit.groups);
    let grouped = selection.clone().reshape([n, g, per_group]);
    let first = grouped.clone().max_dim(2); // [n, g, 1]
    let group_score = match limit.score {
        GroupScore::Max => first,
        GroupScore::TopTwoSum => {
            // Mask out one (the lowest-index) maximum, then take the max again.
            let flat = grouped.reshape([n * g, per_group]);
            let top = take_top_k(flat.clone(), 2);
            let two = flat.gather(1, top).sum_dim(1); // [n * g, 1]
            two.reshape([n, g, 1])
        }
    }
    .reshape([n, g]);
    let kept = take_top_k(group_score, limit.top_groups); // [n, M]
    let device = selection.device();
    let group_of = Tensor::<1, Int>::arange(0..g as i64, &device)
        .reshape([1, g, 1])
        .expand([n, g, limit.top_groups]);
    let is_kept = group_of
        .equal(kept.unsqueeze_dim::<3>(1).expand([n, g, limit.top_groups]))
        .int()
        .sum_dim(2) // [n, g, 1]
        .expand([n, g, per_group])
        .reshape([n, m])
        .equal_elem(0);
    selection.mask_fill(is_kept, f32::NEG_INFINITY)
}

/// See [`super::RoutingKernels::expert_histogram`].
pub fn expert_histogram(
    indices: Tensor<2, Int>,
    used: Tensor<2, Int>,
    experts: usize,
    groups: usize,
    capacity: u32,
) -> Histogram {
    let [n, k] = indices.dims();
    let device = indices.device();
    let s = n / groups;
    let valid = indices.clone().greater_equal_elem(0).int() * used;
    // Invalid assignments become expert `m`, which matches no column of the one-hot.
    let expert = indices.mask_fill(valid.equal_elem(0), experts as i64);
    // Admission order inside a group: rank-major, then token order.
    let ordered = expert
        .reshape([groups, s, k])
        .swap_dims(1, 2)
        .reshape([groups, k * s]);
    let iota = Tensor::<1, Int>::arange(0..experts as i64, &device)
        .reshape([1, 1, experts])
        .expand([groups, k * s, experts]);
    let one_hot = ordered
        .clone()
        .unsqueeze_dim::<3>(2)
        .expand([groups, k * s, experts])
        .equal(iota)
        .int();
    let running = one_hot.cumsum(1); // inclusive counts in admission order
    let requested = running
        .clone()
        .slice([0..groups, k * s - 1..k * s, 0..experts])
        .reshape([groups, experts]);
    let lookup = ordered
        .clone()
        .clamp_max(experts as i64 - 1)
        .unsqueeze_dim::<3>(2);
    let positions = running
        .gather(2, lookup)
        .reshape([groups, k * s])
        .sub_scalar(1)
        .mask_fill(ordered.equal_elem(experts as i64), -1)
        .reshape([groups, k, s])
        .swap_dims(1, 2)
        .reshape([n, k]);
    let admitted = requested.clone().clamp_max(capacity as i64);
    Histogram {
        requested,
        positions,
        admitted,
    }
}

/// See [`super::RoutingKernels::loss_free_update`].
pub fn loss_free_update(
    bias: Tensor<1>,
    requested: Tensor<2, Int>,
    rate: f32,
    proportional: bool,
) -> Tensor<1> {
    let [m] = bias.dims();
    let loads = requested.sum_dim(0).reshape([m]).float();
    let mean = loads.clone().sum().div_scalar(m as f32).expand([m]);
    let error = mean.clone() - loads;
    let step = if proportional {
        // An all-zero batch has error 0 everywhere, so the floor only avoids 0 / 0.
        error / mean.clamp_min(f32::MIN_POSITIVE)
    } else {
        error.sign()
    };
    bias + step.mul_scalar(rate)
}

/// See [`super::RoutingKernels::bip_dual`].
pub fn bip_dual(
    scores: Tensor<2>,
    mut q: Tensor<1>,
    top_k: usize,
    iterations: usize,
    clamp: bool,
) -> Tensor<1> {
    let [n, m] = scores.dims();
    let device = scores.device();
    let admitted = top_k * n / m;
    let clamp_fn = |t: Tensor<2>| if clamp { t.clamp_min(0.0) } else { t };
    for _ in 0..iterations {
        let p = token_cutoffs(scores.clone(), q, top_k);
        let column = scores.clone() - p.unsqueeze_dim::<2>(1).expand([n, m]);
        q = if admitted < n {
            // Between the last admitted and the first rejected value (equal on a tie).
            let sorted = column.sort_descending(0);
            let rejected = sorted.clone().slice([admitted..admitted + 1, 0..m]);
            let price = match admitted {
                0 => rejected,
                _ => (sorted.slice([admitted - 1..admitted, 0..m]) + rejected).mul_scalar(0.5),
            };
            clamp_fn(price).reshape([m])
        } else {
            Tensor::zeros([m], &device)
        };
    }
    q
}

/// See [`super::RoutingKernels::token_cutoffs`].
pub fn token_cutoffs(scores: Tensor<2>, q: Tensor<1>, top_k: usize) -> Tensor<1> {
    let [n, m] = scores.dims();
    if top_k >= m {
        return Tensor::zeros([n], &scores.device());
    }
    (scores - q.unsqueeze_dim::<2>(0).expand([n, m]))
        .sort_descending(1)
        .slice([0..n, top_k..top_k + 1])
        .reshape([n])
}

/// See [`super::RoutingKernels::cutoff_histogram`].
pub fn cutoff_histogram(
    scores: Tensor<2>,
    cutoffs: Tensor<1>,
    bounds: Tensor<1>,
    bins: usize,
) -> Tensor<2, Int> {
    let [n, m] = scores.dims();
    let device = scores.device();
    let at = |i: usize| {
        bounds
            .clone()
            .narrow(0, i, 1)
            .unsqueeze_dim::<2>(0)
            .expand([n, m])
    };
    let bin = ((scores - cutoffs.unsqueeze_dim::<2>(1).expand([n, m]) - at(0)) * at(1))
        .floor()
        .clamp(0.0, (bins - 1) as f32)
        .int();
    let expert = Tensor::<1, Int>::arange(0..m as i64, &device)
        .mul_scalar(bins as i64)
        .unsqueeze_dim::<2>(0)
        .expand([n, m]);
    Tensor::<1, Int>::zeros([m * bins], &device)
        .scatter(
            0,
            (bin + expert).reshape([n * m]),
            Tensor::ones([n * m], &device),
            IndexingUpdateOp::Add,
        )
        .reshape([m, bins])
}
