//! [`MoeOutput`]: the layer output plus the routing of the call, which stays on the device
//! until asked for ([`Routing::host`]).

use std::sync::OnceLock;

use burn::tensor::{IndexingUpdateOp, Int, Tensor, Transaction};

use crate::error::{MoeError, Result};
use crate::moe::DeviceRouting;
use crate::moe::router::{check_finite, read_as, read_f32};
use crate::routing::{RoutingPlan, RoutingRule, plan_from_positions};

/// Result of [`Moe::forward`](crate::moe::Moe::forward): what a model embedding the layer needs.
#[derive(Debug, Clone)]
pub struct MoeOutput {
    /// Layer output `[batch, seq, d_model]`: routed experts (gated) plus shared experts. Tokens
    /// dropped by all their experts get only the shared part (zero without shared experts); add
    /// the layer input as the residual connection, as with any FFN.
    pub output: Tensor<3>,
    /// The weighted balancing loss (aux loss of the configured kind plus router z-loss), to add
    /// to the training loss; `None` when the layer has no loss term.
    pub balance_loss: Option<Tensor<1>>,
    /// Every routing decision of the call, on the device; [`Routing::host`] reads it back.
    pub routing: Routing,
}

/// Result of [`Moe::route`](crate::moe::Moe::route): the routing stage alone, with the router's
/// tensors the layer combines with.
#[derive(Debug, Clone)]
pub struct RouterOutput {
    /// Router logits `[tokens, experts]` (tokens = batch * seq, batch-major); noisy in training
    /// under noisy top-k gating.
    pub logits: Tensor<2>,
    /// Router scores `[tokens, experts]` (softmax or sigmoid of the logits).
    pub scores: Tensor<2>,
    /// Gate weight of each chosen expert `[tokens, top_k]`, rank 0 first: the raw score, or the
    /// score normalised over the chosen experts, times `routed_scaling_factor`. Carries
    /// gradients to the router.
    pub gates: Tensor<2>,
    /// The weighted balancing loss, as in [`MoeOutput::balance_loss`].
    pub balance_loss: Option<Tensor<1>>,
    /// Every routing decision of the call, on the device.
    pub routing: Routing,
}

/// The routing of one call on the host: what telemetry, metrics and tests look at.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRouting {
    /// Every routing decision (chosen experts, drops, counts).
    pub plan: RoutingPlan,
    /// The `U(0,1)` draw of each token used by GShard random routing (training only).
    pub draws: Option<Vec<f32>>,
    /// Mean entropy (nats) of the tokens' normalised expert scores.
    pub entropy: f32,
}

/// Per-expert token counts of one call on the host ([`Routing::counts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertCounts {
    /// Tokens each expert was asked to take (before capacity).
    pub requested: Vec<usize>,
    /// Tokens each expert computed (after capacity).
    pub computed: Vec<usize>,
}

impl ExpertCounts {
    fn of(plan: &RoutingPlan) -> Self {
        ExpertCounts {
            requested: plan.requested_counts.clone(),
            computed: plan.computed_counts.clone(),
        }
    }
}

/// A call's routing decisions on the layer's device. Reading them costs one device-to-host
/// transfer, made the first time [`host`](Self::host) is called and kept after that; the layer
/// itself never reads them.
#[derive(Debug, Clone)]
pub struct Routing {
    /// What the dispatcher uses: chosen experts, queue slots, admitted counts.
    pub device: DeviceRouting,
    /// The offset balancer's state `[experts]` after this training batch, on the device; apply
    /// it with [`Moe::update_balancer`](crate::moe::Moe::update_balancer). `None` in eval mode
    /// and for balancers without state.
    pub balancer_state: Option<Tensor<1>>,
    /// `[tokens, k]`: 0 for a 2nd choice GShard's random rule switched off, else 1.
    pub(crate) used: Tensor<2, Int>,
    /// `[tokens]` draws of random routing.
    pub(crate) draws: Option<Tensor<1>>,
    /// `[1]`: mean entropy of the normalised scores.
    pub(crate) entropy: Tensor<1>,
    /// The logits, for the exact report of a non-finite one.
    pub(crate) logits: Tensor<2>,
    pub(crate) rule: RoutingRule,
    pub(crate) experts: usize,
    pub(crate) host: OnceLock<HostRouting>,
}

impl Routing {
    /// The routing on the host, read back on the first call (one transfer).
    ///
    /// # Errors
    /// [`MoeError::NonFinite`] when a token's router logits were NaN or infinite (such a token
    /// is routed nowhere and its output is not meaningful); a failed device read.
    pub fn host(&self) -> Result<&HostRouting> {
        if let Some(host) = self.host.get() {
            return Ok(host);
        }
        let host = self.read()?;
        Ok(self.host.get_or_init(|| host))
    }

    /// The routing plan on the host (see [`host`](Self::host)).
    pub fn plan(&self) -> Result<&RoutingPlan> {
        self.host().map(|h| &h.plan)
    }

    /// Tokens each expert was asked to take and computed: one read of `2 m + 1` values (what a
    /// training loop's trace needs), or none when the routing was read already.
    ///
    /// # Errors
    /// As [`host`](Self::host).
    pub fn counts(&self) -> Result<ExpertCounts> {
        if let Some(host) = self.host.get() {
            return Ok(ExpertCounts::of(&host.plan));
        }
        let [n, k] = self.device.indices.dims();
        let m = self.experts;
        let chosen = self.device.indices.clone().reshape([n * k]);
        // A -1 (non-finite logit) or an unused 2nd choice is requested from no expert.
        let asked = chosen.clone().greater_equal_elem(0).int() * self.used.clone().reshape([n * k]);
        let requested = Tensor::<1, Int>::zeros([m], &chosen.device()).scatter(
            0,
            chosen.clone().clamp(0, m as i64 - 1),
            asked,
            IndexingUpdateOp::Add,
        );
        let computed = self.device.admitted.clone().sum_dim(0).reshape([m]);
        crate::moe::count_read();
        let mut data = Transaction::default()
            .register(requested)
            .register(computed)
            .register(chosen.min())
            .try_execute()
            .map_err(|e| MoeError::Backend(format!("routing read-back failed: {e:?}")))?
            .into_iter();
        let mut counts = || -> Result<Vec<usize>> {
            Ok(read_as::<i64>(data.next())?
                .into_iter()
                .map(|c| c.max(0) as usize)
                .collect())
        };
        let (requested, computed) = (counts()?, counts()?);
        if read_as::<i64>(data.next())?.first().is_some_and(|&i| i < 0) {
            return Err(self.non_finite());
        }
        Ok(ExpertCounts {
            requested,
            computed,
        })
    }

    /// The error for a token the kernels routed nowhere: the logits are read for the exact
    /// report (one more read).
    fn non_finite(&self) -> MoeError {
        crate::moe::count_read();
        match read_f32(Some(self.logits.clone().into_data()))
            .and_then(|host| check_finite(&host, self.experts))
        {
            Err(e) => e,
            Ok(()) => MoeError::Backend(
                "routing kernels flagged a non-finite logit the host did not find".into(),
            ),
        }
    }

    fn read(&self) -> Result<HostRouting> {
        let mut transaction = Transaction::default()
            .register(self.device.indices.clone())
            .register(self.used.clone())
            .register(self.device.slots.clone())
            .register(self.entropy.clone());
        if let Some(d) = &self.draws {
            transaction = transaction.register(d.clone());
        }
        crate::moe::count_read();
        let mut data = transaction
            .try_execute()
            .map_err(|e| MoeError::Backend(format!("routing read-back failed: {e:?}")))?
            .into_iter();
        let indices = read_as::<i64>(data.next())?;
        let used = read_as::<i64>(data.next())?;
        let slots = read_as::<i64>(data.next())?;
        let entropy = read_f32(data.next())?.first().copied().unwrap_or(0.0);
        let draws = self
            .draws
            .as_ref()
            .map(|_| read_f32(data.next()))
            .transpose()?;
        if indices.iter().any(|&i| i < 0) {
            return Err(self.non_finite());
        }
        let plan = plan_from_positions(
            self.experts,
            &self.rule,
            indices.iter().map(|&i| i as u32).collect(),
            used.iter().map(|&u| u != 0).collect(),
            &slots,
        )?;
        Ok(HostRouting {
            plan,
            draws,
            entropy,
        })
    }
}
