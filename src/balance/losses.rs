//! Balancing loss terms, as differentiable device tensors. Counts (`f_j`, `c_j`) come from the
//! routing plan and are constants; the mean scores carry the gradient to the router.

use burn::tensor::{Device, Tensor, TensorData};

use crate::routing::RoutingPlan;

fn constant(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Top-1 choice counts per group, `[groups, experts]`.
fn top1_counts(plan: &RoutingPlan, groups: usize) -> Vec<f32> {
    let group_len = plan.tokens / groups;
    let mut counts = vec![0.0f32; groups * plan.experts];
    for t in 0..plan.tokens {
        counts[(t / group_len) * plan.experts + plan.choices[t * plan.top_k] as usize] += 1.0;
    }
    counts
}

/// Switch: `alpha * m * sum_j f_j * P_j`, `f_j` the fraction of tokens whose top-1 is `j`, `P_j`
/// the mean score of `j`. Equals `alpha` at perfect balance.
pub fn switch_aux(scores: Tensor<2>, plan: &RoutingPlan, alpha: f64) -> Tensor<1> {
    let [n, m] = scores.dims();
    let f: Vec<f32> = top1_counts(plan, 1).iter().map(|c| c / n as f32).collect();
    let f = constant(f, [1, m], &scores.device());
    (scores.mean_dim(0) * f).sum() * (alpha * m as f64)
}

/// GShard: per group of `S` tokens `(1/m) sum_j (c_j / S) * mean_gate_j`, averaged over groups.
pub fn gshard_aux(scores: Tensor<2>, plan: &RoutingPlan, groups: usize, alpha: f64) -> Tensor<1> {
    let [n, m] = scores.dims();
    let s = n / groups;
    let c: Vec<f32> = top1_counts(plan, groups)
        .iter()
        .map(|c| c / s as f32)
        .collect();
    let c = constant(c, [groups, m], &scores.device());
    let mean_gate = scores
        .reshape([groups, s, m])
        .mean_dim(1)
        .reshape([groups, m]);
    (mean_gate * c).sum() * (alpha / (m * groups) as f64)
}

/// DeepSeek-V3 sequence-wise: per sequence of `seq_len` tokens,
/// `f_j = m / (k T) * #{t: j in TopK(s_t)}`, `P_j = mean_t s_tj / sum_l s_tl`,
/// `L = alpha * sum_j f_j P_j`, averaged over the sequences.
pub fn seq_aux(scores: Tensor<2>, plan: &RoutingPlan, seq_len: usize, alpha: f64) -> Tensor<1> {
    let [n, m] = scores.dims();
    let (k, seqs) = (plan.top_k, n / seq_len);
    let mut f = vec![0.0f32; seqs * m];
    let scale = m as f32 / (k * seq_len) as f32;
    for (a, &e) in plan.choices.iter().enumerate() {
        f[(a / k / seq_len) * m + e as usize] += scale;
    }
    let f = constant(f, [seqs, m], &scores.device());
    let normalised = scores.clone() / scores.sum_dim(1);
    let p = normalised
        .reshape([seqs, seq_len, m])
        .mean_dim(1)
        .reshape([seqs, m]);
    (p * f).sum() * (alpha / seqs as f64)
}

/// Router z-loss (ST-MoE): `weight * (1/n) * sum_i logsumexp_j(logits_ij)^2`.
pub fn z_loss(logits: Tensor<2>, weight: f64) -> Tensor<1> {
    let max = logits.clone().max_dim(1).detach();
    let lse = (logits - max.clone()).exp().sum_dim(1).log() + max;
    lse.powi_scalar(2).mean() * weight
}
