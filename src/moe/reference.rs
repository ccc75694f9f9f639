//! The plain-Rust reference of the layer's routing: the rules of [`crate::routing`] and the
//! balancers' host updates applied to one call's scores. The layer routes on its device; tests
//! check it against this, and tools that hold host scores can route with it.

use crate::balance::{BatchShape, offset_before_routing, state_after_routing};
use crate::error::Result;
use crate::moe::MoeConfig;
use crate::routing::{RoutingPlan, RoutingRule, plan_routing};

/// One call's routing on the host, as [`Moe::route`](crate::moe::Moe::route) decides it on the
/// device: `scores` `[tokens, experts]` row-major (after noise, if any), the balancer `state`
/// the layer held, `draws` the call's random-routing draws (training only).
///
/// Returns the plan and, in training, the balancer state the layer would propose.
pub fn route_reference(
    config: &MoeConfig,
    scores: &[f32],
    state: Option<&[f32]>,
    draws: Option<&[f32]>,
    training: bool,
) -> Result<(RoutingPlan, Option<Vec<f32>>)> {
    let experts = config.num_experts;
    let tokens = scores.len() / experts.max(1);
    let state = state.filter(|_| config.balancer.has_state());
    let shape = BatchShape {
        tokens,
        experts,
        top_k: config.top_k,
    };
    let step = offset_before_routing(&config.balancer, state, scores, &shape, training);
    let rule = RoutingRule {
        top_k: config.top_k,
        groups: config.groups,
        capacity_factor: config.capacity_factor,
        random_second: config.random_routing && training,
        group_limit: config.group_limit(),
    };
    let plan = plan_routing(
        scores,
        step.offset.as_deref(),
        tokens,
        experts,
        &rule,
        draws,
    )?;
    let new_state = state_after_routing(&config.balancer, state, step, scores, &plan, training);
    Ok((plan, new_state))
}

/// Mean over tokens of the entropy (nats) of each token's scores normalised to sum to 1.
pub fn mean_entropy(scores: &[f32], experts: usize) -> f32 {
    let rows = scores.len() / experts.max(1);
    let total: f32 = scores
        .chunks_exact(experts.max(1))
        .map(|row| {
            let z: f32 = row.iter().sum();
            -row.iter()
                .map(|&s| s / z)
                .filter(|&p| p > 0.0)
                .map(|p| p * p.ln())
                .sum::<f32>()
        })
        .sum();
    total / rows.max(1) as f32
}
