//! [`MoeOutput`]: the layer output plus the routing facts of the call.

use burn::tensor::Tensor;

use crate::routing::RoutingPlan;

/// Result of [`Moe::forward`](crate::moe::Moe::forward).
#[derive(Debug, Clone)]
pub struct MoeOutput {
    /// Layer output `[batch, seq, d_model]`: routed experts (gated) plus shared experts. Tokens
    /// dropped by all their experts get only the shared part (zero without shared experts); add
    /// the layer input as the residual connection, as with any FFN.
    pub output: Tensor<3>,
    /// Router logits `[tokens, experts]` (tokens = batch * seq, batch-major), for losses such as
    /// the router z-loss.
    pub logits: Tensor<2>,
    /// Router scores `[tokens, experts]` (softmax or sigmoid of the logits).
    pub scores: Tensor<2>,
    /// Gate weight of each chosen expert `[tokens, top_k]`, rank 0 first: the raw score, or the
    /// score normalised over the chosen experts. Carries gradients to the router.
    pub gates: Tensor<2>,
    /// Every routing decision of the call (chosen experts, drops, counts), on the host.
    pub routing: RoutingPlan,
    /// The `U(0,1)` draw of each token used by GShard random routing (training only).
    pub second_expert_draws: Option<Vec<f32>>,
    /// The weighted balancing loss (aux loss of the configured kind plus router z-loss), to add
    /// to the training loss; `None` when the layer has no loss term.
    pub balance_loss: Option<Tensor<1>>,
    /// The offset balancer's state after this training batch; apply it with
    /// [`Moe::update_balancer`](crate::moe::Moe::update_balancer). `None` in eval mode.
    pub balancer_state: Option<Vec<f32>>,
    /// Mean entropy (nats) of the tokens' normalised expert scores.
    pub router_entropy: f32,
}

impl MoeOutput {
    /// Tokens each expert was asked to take (before capacity).
    pub fn requested_counts(&self) -> &[usize] {
        &self.routing.requested_counts
    }

    /// Tokens each expert computed (after capacity).
    pub fn computed_counts(&self) -> &[usize] {
        &self.routing.computed_counts
    }

    /// Tokens none of whose experts computed them.
    pub fn dropped_tokens(&self) -> usize {
        self.routing.dropped_tokens
    }
}
