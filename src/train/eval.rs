//! Validation: loss, perplexity and the global balance of every MoE layer.

use serde::Serialize;

use crate::balance::metrics::MaxVioTracker;
use crate::data::TextData;
use crate::error::{MoeError, Result};
use crate::model::MoeLm;

/// Validation results.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Mean next-token cross-entropy (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Tokens evaluated.
    pub tokens: usize,
    /// Per MoE layer: MaxVio of the loads summed over the whole evaluation set.
    pub maxvio_global: Vec<f64>,
    /// Per MoE layer: mean per-batch MaxVio.
    pub maxvio_batch: Vec<f64>,
    /// Per MoE layer: dropped assignments over used assignments.
    pub drop_rate: Vec<f64>,
    /// Per MoE layer, per batch: the requested per-expert loads (for what-if capacity checks).
    #[serde(skip)]
    pub batch_loads: Vec<Vec<Vec<usize>>>,
}

impl EvalReport {
    /// MaxVio_global averaged over layers.
    pub fn mean_maxvio_global(&self) -> f64 {
        self.maxvio_global.iter().sum::<f64>() / self.maxvio_global.len().max(1) as f64
    }

    /// Assignments a capacity of `capacity_factor * k * tokens / m` per expert (one group, as
    /// in [`RoutingRule::capacity`](crate::routing::RoutingRule::capacity)) would have dropped,
    /// over all assignments, pooled over the batches and MoE layers of this evaluation.
    pub fn drop_rate_at(&self, capacity_factor: f64, top_k: usize) -> f64 {
        let (mut dropped, mut asked) = (0usize, 0usize);
        for loads in self.batch_loads.iter().flatten() {
            let assignments: usize = loads.iter().sum();
            let tokens = assignments / top_k.max(1);
            let rule = crate::routing::RoutingRule {
                top_k,
                capacity_factor: Some(capacity_factor),
                groups: 1,
                random_second: false,
                group_limit: None,
            };
            let capacity = rule.capacity(tokens, loads.len()).unwrap_or(usize::MAX);
            dropped += overflow(loads, capacity);
            asked += assignments;
        }
        dropped as f64 / asked.max(1) as f64
    }
}

/// Assignments beyond `capacity` per expert: what first-come capacity dropping removes.
pub fn overflow(loads: &[usize], capacity: usize) -> usize {
    loads.iter().map(|&c| c.saturating_sub(capacity)).sum()
}

/// Evaluates `model` (in eval mode: a non-autodiff device) on up to `max_batches` consecutive
/// validation batches.
pub fn evaluate(
    model: &MoeLm,
    data: &TextData,
    batch: usize,
    seq_len: usize,
    max_batches: usize,
) -> Result<EvalReport> {
    if batch == 0 || seq_len == 0 || max_batches == 0 {
        return Err(MoeError::Config(format!(
            "evaluation needs at least one batch of at least one sequence of at least one token, \
             got {max_batches} batches of {batch} x {seq_len}"
        )));
    }
    data.check_seq_len(seq_len)?;
    let device = model.tokens.weight.val().device();
    let layers = model.moe_layers().count();
    let mut trackers = vec![MaxVioTracker::default(); layers];
    let mut asked = vec![0usize; layers];
    let mut dropped = vec![0usize; layers];
    let mut batch_loads = vec![Vec::new(); layers];
    let (mut loss_sum, mut tokens) = (0.0f64, 0usize);
    for b in data.val_batches(batch, seq_len, max_batches, &device) {
        let [rows, cols] = b.inputs.dims();
        let out = model.forward(b.inputs)?;
        let ce = MoeLm::cross_entropy(out.logits, b.targets).into_scalar::<f32>() as f64;
        loss_sum += ce * (rows * cols) as f64;
        tokens += rows * cols;
        for (l, m) in out.moe.iter().enumerate() {
            let plan = m.routing.plan()?;
            trackers[l].record(&plan.requested_counts);
            asked[l] += plan.requested_counts.iter().sum::<usize>();
            dropped[l] += plan.dropped_assignments();
            batch_loads[l].push(plan.requested_counts.clone());
        }
    }
    let loss = loss_sum / tokens.max(1) as f64;
    Ok(EvalReport {
        loss,
        perplexity: loss.exp(),
        tokens,
        maxvio_global: trackers.iter().map(MaxVioTracker::global).collect(),
        maxvio_batch: trackers.iter().map(MaxVioTracker::average).collect(),
        drop_rate: asked
            .iter()
            .zip(&dropped)
            .map(|(&a, &d)| d as f64 / a.max(1) as f64)
            .collect(),
        batch_loads,
    })
}
