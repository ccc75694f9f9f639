//! The router's kernel path: top-k, histograms and balancer updates run on the layer's device
//! (`crate::kernels`), and the routing stays there: nothing is read back to the host.

use std::sync::OnceLock;

use burn::tensor::{Distribution, Tensor};

use crate::balance::{BalancerConfig, BipOrder};
use crate::error::Result;
use crate::kernels::{self, GateRule};
use crate::moe::router::Routed;
use crate::moe::{DeviceRouting, MoeConfig, Router, Routing, ScoreFunction};
use crate::routing::RoutingRule;

impl Router {
    /// Routes `x: [tokens, d_model]` with the routing kernels on its device. `state` is the
    /// offset balancer's state (`b` or `q`); `training` turns on noise, random routing and the
    /// balancer's proposed new state.
    pub(crate) fn route(
        &self,
        x: Tensor<2>,
        config: &MoeConfig,
        state: Option<Tensor<1>>,
        training: bool,
    ) -> Result<Routed> {
        let path = config.kernel_path;
        let [tokens, _] = x.dims();
        let (m, k) = (config.num_experts, config.top_k);
        let logits = self.logits(x, training);
        let device = logits.device();
        let scores = config.score_function.apply(logits.clone());
        let decisions = scores.clone().detach();
        let random_second = config.random_routing && training;
        let draws = random_second
            .then(|| Tensor::<1>::random([tokens], Distribution::Uniform(0.0, 1.0), &device));

        // Selection offset, and BIP's update-then-route prices.
        let (offset, pending) = match (&config.balancer, state.clone()) {
            (BalancerConfig::LossFree { .. } | BalancerConfig::Quantile { .. }, Some(b)) => {
                (b, None)
            }
            (
                &BalancerConfig::Bip {
                    iterations,
                    clamp,
                    order,
                },
                Some(q),
            ) => {
                if training && order == BipOrder::UpdateThenRoute {
                    let q = kernels::bip_dual(decisions.clone(), q, k, iterations, clamp, path)?;
                    (q.clone().neg(), Some(q))
                } else {
                    (q.neg(), None)
                }
            }
            _ => (Tensor::zeros([m], &device), None),
        };
        let top = kernels::gate_topk(
            logits.clone().detach(),
            offset,
            draws.clone(),
            GateRule {
                top_k: k,
                sigmoid: config.score_function == ScoreFunction::Sigmoid,
                normalize: false,
                group_limit: config.group_limit(),
            },
            path,
        )?;
        let capacity = config.capacity(tokens / config.groups);
        let hist = kernels::expert_histogram(
            top.indices.clone(),
            top.used.clone(),
            m,
            config.groups,
            capacity,
            path,
        )?;
        let new_state = match (&config.balancer, state) {
            (_, None) => None,
            _ if !training => None,
            (&BalancerConfig::LossFree { rate, update }, Some(b)) => Some(
                kernels::loss_free_update(b, hist.requested.clone(), rate as f32, update, path)?,
            ),
            (
                &BalancerConfig::Bip {
                    iterations,
                    clamp,
                    order: BipOrder::RouteThenUpdate,
                },
                Some(q),
            ) => Some(kernels::bip_dual(
                decisions.clone(),
                q,
                k,
                iterations,
                clamp,
                path,
            )?),
            (&BalancerConfig::Quantile { estimator, ema }, Some(b)) => Some(kernels::qb_update(
                decisions.clone(),
                b,
                k,
                estimator,
                ema as f32,
                path,
            )?),
            _ => pending,
        };
        let normalized = decisions.clone() / decisions.sum_dim(1).expand([tokens, m]);
        let entropy = (normalized.clone() * normalized.clamp_min(f32::MIN_POSITIVE).log())
            .sum_dim(1)
            .mean()
            .neg();

        let slots = match capacity {
            Some(c) => {
                let past = hist.positions.clone().greater_equal_elem(c as i64);
                hist.positions.clone().mask_fill(past, -1)
            }
            None => hist.positions.clone(),
        };
        let rule = RoutingRule {
            top_k: k,
            groups: config.groups,
            capacity_factor: config.capacity_factor,
            random_second,
            group_limit: config.group_limit(),
        };
        let routing = Routing {
            device: DeviceRouting {
                indices: top.indices,
                slots,
                admitted: hist.admitted,
            },
            balancer_state: new_state,
            used: top.used,
            draws,
            entropy: entropy.reshape([1]),
            logits: logits.clone(),
            rule,
            experts: m,
            host: OnceLock::new(),
        };
        Ok(Routed {
            logits,
            scores,
            routing,
        })
    }
}
