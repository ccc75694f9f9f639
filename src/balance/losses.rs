//! Balancing loss terms, as differentiable device tensors. Counts (`f_j`, `c_j`) come from the
//! chosen experts on the device and are constants; the mean scores carry the gradient to the
//! router.

use burn::tensor::{Int, Tensor};

/// How often each expert is chosen at ranks `ranks` of each token: `[tokens, experts]`, a sum
/// of one-hot rows (a token whose index is -1, a non-finite logit, counts nowhere).
fn choice_counts(
    indices: Tensor<2, Int>,
    ranks: std::ops::Range<usize>,
    experts: usize,
) -> Tensor<2> {
    let [n, _] = indices.dims();
    let device = indices.device();
    let expert = Tensor::<1, Int>::arange(0..experts as i64, &device)
        .unsqueeze_dim::<2>(0)
        .expand([n, experts]);
    ranks
        .map(|r| {
            let chosen = indices.clone().narrow(1, r, 1).expand([n, experts]);
            chosen.equal(expert.clone()).float()
        })
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| Tensor::zeros([n, experts], &device))
}

/// Means of `t [n, m]` over `blocks` equal blocks of consecutive rows: `[blocks, m]`.
fn block_means(t: Tensor<2>, blocks: usize) -> Tensor<2> {
    let [n, m] = t.dims();
    t.reshape([blocks, n / blocks, m])
        .mean_dim(1)
        .reshape([blocks, m])
}

/// Switch: `alpha * m * sum_j f_j * P_j`, `f_j` the fraction of tokens whose top-1 is `j`, `P_j`
/// the mean score of `j`. Equals `alpha` at perfect balance.
///
/// `scores [tokens, experts]`, `indices [tokens, k]` (the chosen experts, rank 0 first).
pub fn switch_aux(scores: Tensor<2>, indices: Tensor<2, Int>, alpha: f64) -> Tensor<1> {
    let [_, m] = scores.dims();
    let f = choice_counts(indices, 0..1, m).mean_dim(0);
    (scores.mean_dim(0) * f).sum() * (alpha * m as f64)
}

/// GShard: per group of `S` tokens `(1/m) sum_j (c_j / S) * mean_gate_j`, averaged over groups.
pub fn gshard_aux(
    scores: Tensor<2>,
    indices: Tensor<2, Int>,
    groups: usize,
    alpha: f64,
) -> Tensor<1> {
    let [_, m] = scores.dims();
    let c = block_means(choice_counts(indices, 0..1, m), groups);
    (block_means(scores, groups) * c).sum() * (alpha / (m * groups) as f64)
}

/// DeepSeek-V3 sequence-wise: per sequence of `seq_len` tokens,
/// `f_j = m / (k T) * #{t: j in TopK(s_t)}`, `P_j = mean_t s_tj / sum_l s_tl`,
/// `L = alpha * sum_j f_j P_j`, averaged over the sequences.
pub fn seq_aux(
    scores: Tensor<2>,
    indices: Tensor<2, Int>,
    seq_len: usize,
    alpha: f64,
) -> Tensor<1> {
    let [n, m] = scores.dims();
    let [_, k] = indices.dims();
    let seqs = n / seq_len;
    let f = block_means(choice_counts(indices, 0..k, m), seqs) * (m as f64 / k as f64);
    let normalised = scores.clone() / scores.sum_dim(1);
    (block_means(normalised, seqs) * f).sum() * (alpha / seqs as f64)
}

/// Router z-loss (ST-MoE): `weight * (1/n) * sum_i logsumexp_j(logits_ij)^2`.
pub fn z_loss(logits: Tensor<2>, weight: f64) -> Tensor<1> {
    let max = logits.clone().max_dim(1).detach();
    let lse = (logits - max.clone()).exp().sum_dim(1).log() + max;
    lse.powi_scalar(2).mean() * weight
}
