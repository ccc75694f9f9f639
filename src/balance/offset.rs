//! The offset balancers' steps around routing on the host (the reference path): the offset to
//! select with, and the state proposed after a training batch.

use super::{BalancerConfig, BipOrder, bip, loss_free, quantile};
use crate::routing::RoutingPlan;

/// Selection offset of an offset balancer, and the state it proposes after this batch.
pub(crate) struct OffsetStep {
    /// Added to the scores for selection (`b`, or `-q`).
    pub offset: Option<Vec<f32>>,
    /// New state computed before routing (BIP update-then-route).
    pending: Option<Vec<f32>>,
}

/// The shapes the offset balancers need.
pub(crate) struct BatchShape {
    pub tokens: usize,
    pub experts: usize,
    pub top_k: usize,
}

/// Before routing: the offset to select with. In training, BIP update-then-route first runs its
/// dual iterations on this batch's scores.
pub(crate) fn offset_before_routing(
    config: &BalancerConfig,
    state: Option<&[f32]>,
    scores: &[f32],
    shape: &BatchShape,
    training: bool,
) -> OffsetStep {
    let Some(state) = state else {
        return OffsetStep {
            offset: None,
            pending: None,
        };
    };
    match *config {
        BalancerConfig::LossFree { .. } | BalancerConfig::Quantile { .. } => OffsetStep {
            offset: Some(state.to_vec()),
            pending: None,
        },
        BalancerConfig::Bip {
            iterations,
            clamp,
            order,
        } => {
            let q = if training && order == BipOrder::UpdateThenRoute {
                bip::dual_prices(
                    scores,
                    state,
                    shape.tokens,
                    shape.experts,
                    shape.top_k,
                    iterations,
                    clamp,
                )
            } else {
                state.to_vec()
            };
            let offset = q.iter().map(|v| -v).collect();
            let pending = (training && order == BipOrder::UpdateThenRoute).then_some(q);
            OffsetStep {
                offset: Some(offset),
                pending,
            }
        }
        _ => OffsetStep {
            offset: None,
            pending: None,
        },
    }
}

/// After routing, in training: the new balancer state.
pub(crate) fn state_after_routing(
    config: &BalancerConfig,
    state: Option<&[f32]>,
    step: OffsetStep,
    scores: &[f32],
    plan: &RoutingPlan,
    training: bool,
) -> Option<Vec<f32>> {
    let state = state.filter(|_| training)?;
    match *config {
        BalancerConfig::LossFree { rate, update } => Some(loss_free::update_bias(
            state,
            &plan.requested_counts,
            rate as f32,
            update,
        )),
        BalancerConfig::Bip {
            iterations,
            clamp,
            order: BipOrder::RouteThenUpdate,
        } => Some(bip::dual_prices(
            scores,
            state,
            plan.tokens,
            plan.experts,
            plan.top_k,
            iterations,
            clamp,
        )),
        BalancerConfig::Bip { .. } => step.pending,
        BalancerConfig::Quantile { estimator, ema } => Some(quantile::quantile_bias(
            scores,
            state,
            plan.experts,
            plan.top_k,
            estimator,
            ema as f32,
        )),
        _ => None,
    }
}
