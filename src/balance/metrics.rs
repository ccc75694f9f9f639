//! Balance metrics from per-expert token counts (`docs/algorithms.md`).

use crate::error::Result;
use crate::moe::Routing;

/// `(max_j c_j - mean c) / mean c`; 0 when perfectly balanced (and for an empty batch).
pub fn max_vio(counts: &[usize]) -> f64 {
    let mean = mean(counts);
    if mean == 0.0 {
        return 0.0;
    }
    (counts.iter().copied().max().unwrap_or(0) as f64 - mean) / mean
}

/// Standard deviation of the loads over their mean.
pub fn coefficient_of_variation(counts: &[usize]) -> f64 {
    let mean = mean(counts);
    if mean == 0.0 {
        return 0.0;
    }
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / counts.len() as f64;
    var.sqrt() / mean
}

/// Smallest load over largest load: 1 when balanced, 0 with a dead expert.
pub fn min_max_ratio(counts: &[usize]) -> f64 {
    let max = counts.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return 0.0;
    }
    counts.iter().copied().min().unwrap_or(0) as f64 / max as f64
}

fn mean(counts: &[usize]) -> f64 {
    if counts.is_empty() {
        return 0.0;
    }
    counts.iter().sum::<usize>() as f64 / counts.len() as f64
}

/// Balance of one layer in one call.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct BalanceMetrics {
    /// MaxVio of the requested loads (what the router asked for).
    pub max_vio: f64,
    /// MaxVio of the computed loads (after capacity).
    pub max_vio_computed: f64,
    /// Coefficient of variation of the requested loads.
    pub cv: f64,
    /// Min/max ratio of the requested loads.
    pub min_max_ratio: f64,
    /// Dropped assignments over all used assignments.
    pub drop_rate: f64,
    /// Tokens dropped by every expert over all tokens.
    pub token_drop_rate: f64,
    /// Mean entropy (nats) of the tokens' expert distributions.
    pub router_entropy: f64,
    /// Experts that received no token.
    pub dead_experts: usize,
}

impl BalanceMetrics {
    /// Metrics of one layer call (reads its routing back, see
    /// [`Routing::host`](crate::moe::Routing::host)).
    pub fn from_routing(routing: &Routing) -> Result<Self> {
        let host = routing.host()?;
        let plan = &host.plan;
        let requested = &plan.requested_counts;
        let asked: usize = requested.iter().sum();
        Ok(BalanceMetrics {
            max_vio: max_vio(requested),
            max_vio_computed: max_vio(&plan.computed_counts),
            cv: coefficient_of_variation(requested),
            min_max_ratio: min_max_ratio(requested),
            drop_rate: if asked == 0 {
                0.0
            } else {
                plan.dropped_assignments() as f64 / asked as f64
            },
            token_drop_rate: plan.dropped_tokens as f64 / plan.tokens as f64,
            router_entropy: host.entropy as f64,
            dead_experts: requested.iter().filter(|&&c| c == 0).count(),
        })
    }

    /// Field-wise mean over layers (dead experts: summed).
    pub fn mean_over_layers(layers: &[BalanceMetrics]) -> BalanceMetrics {
        let n = layers.len().max(1) as f64;
        let avg = |f: fn(&BalanceMetrics) -> f64| layers.iter().map(f).sum::<f64>() / n;
        BalanceMetrics {
            max_vio: avg(|m| m.max_vio),
            max_vio_computed: avg(|m| m.max_vio_computed),
            cv: avg(|m| m.cv),
            min_max_ratio: avg(|m| m.min_max_ratio),
            drop_rate: avg(|m| m.drop_rate),
            token_drop_rate: avg(|m| m.token_drop_rate),
            router_entropy: avg(|m| m.router_entropy),
            dead_experts: layers.iter().map(|m| m.dead_experts).sum(),
        }
    }
}

/// MaxVio over a run: per step (for AvgMaxVio / SupMaxVio) and over all tokens seen (the
/// "global" MaxVio of an evaluation set, from summed counts).
#[derive(Debug, Clone, Default)]
pub struct MaxVioTracker {
    steps: Vec<f64>,
    totals: Vec<usize>,
}

impl MaxVioTracker {
    /// Records one batch's per-expert loads.
    pub fn record(&mut self, counts: &[usize]) {
        if self.totals.len() != counts.len() {
            self.totals = vec![0; counts.len()];
        }
        self.totals
            .iter_mut()
            .zip(counts)
            .for_each(|(t, c)| *t += c);
        self.steps.push(max_vio(counts));
    }

    /// MaxVio of each recorded batch.
    pub fn per_step(&self) -> &[f64] {
        &self.steps
    }

    /// Mean of the per-batch MaxVio (AvgMaxVio).
    pub fn average(&self) -> f64 {
        self.steps.iter().sum::<f64>() / self.steps.len().max(1) as f64
    }

    /// Largest per-batch MaxVio (SupMaxVio).
    pub fn supremum(&self) -> f64 {
        self.steps.iter().copied().fold(0.0, f64::max)
    }

    /// MaxVio of the summed loads of every recorded batch (MaxVio_global).
    pub fn global(&self) -> f64 {
        max_vio(&self.totals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_on_hand_checked_loads() {
        let c = [4, 2, 2, 0];
        assert!((max_vio(&c) - 1.0).abs() < 1e-12); // mean 2, max 4
        assert!((coefficient_of_variation(&c) - (2f64).sqrt() / 2.0).abs() < 1e-12);
        assert_eq!(min_max_ratio(&c), 0.0);
        assert_eq!(max_vio(&[3, 3, 3]), 0.0);
        assert_eq!(max_vio(&[0, 0]), 0.0);
    }

    #[test]
    fn tracker_global_differs_from_per_step() {
        let mut t = MaxVioTracker::default();
        t.record(&[2, 0]); // MaxVio 1
        t.record(&[0, 2]); // MaxVio 1
        assert_eq!(t.average(), 1.0);
        assert_eq!(t.supremum(), 1.0);
        assert_eq!(t.global(), 0.0); // balanced overall
    }
}
