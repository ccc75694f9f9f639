//! The router's kernel path: top-k, histograms and balancer updates run on the layer's device
//! (`crate::kernels`); only the chosen experts, their queue positions and the new balancer
//! state come back to the host, where the plan is rebuilt in O(tokens * k).

use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Distribution, Tensor, Transaction};

use crate::balance::{BalancerConfig, BipOrder};
use crate::error::{MoeError, Result};
use crate::kernels::{self, GateRule, KernelPath};
use crate::moe::router::{Routed, check_finite, read_as, read_f32};
use crate::moe::{MoeConfig, Router, ScoreFunction};
use crate::routing::{RoutingRule, plan_from_positions};

impl Router {
    pub(crate) fn route_on_device(
        &self,
        x: Tensor<2>,
        config: &MoeConfig,
        state: Option<Tensor<1>>,
        training: bool,
        path: KernelPath,
    ) -> Result<Routed> {
        let [tokens, _] = x.dims();
        let (m, k) = (config.num_experts, config.top_k);
        let logits = self.logits(x, training);
        let device = logits.device();
        let scores = match config.score_function {
            ScoreFunction::Softmax => softmax(logits.clone(), 1),
            ScoreFunction::Sigmoid => sigmoid(logits.clone()),
        };
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
        let hist = kernels::expert_histogram(
            top.indices.clone(),
            top.used.clone(),
            m,
            config.groups,
            config.capacity(tokens / config.groups),
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

        // One round trip for everything the host needs.
        let mut transaction = Transaction::default()
            .register(top.indices)
            .register(top.used)
            .register(hist.positions)
            .register(entropy);
        for t in draws.iter().chain(new_state.iter()) {
            transaction = transaction.register(t.clone());
        }
        crate::moe::count_read();
        let mut data = transaction
            .try_execute()
            .map_err(|e| MoeError::Backend(format!("routing read-back failed: {e:?}")))?
            .into_iter();
        let indices = read_as::<i64>(data.next())?;
        let used = read_as::<i64>(data.next())?;
        let positions = read_as::<i64>(data.next())?;
        let entropy = read_f32(data.next())?.first().copied().unwrap_or(0.0);
        let draws = draws.map(|_| read_f32(data.next())).transpose()?;
        let new_state = new_state.map(|_| read_f32(data.next())).transpose()?;

        if indices.iter().any(|&i| i < 0) {
            // A token had a non-finite logit: read the logits for the exact report.
            crate::moe::count_read();
            let host = read_f32(Some(logits.into_data()))?;
            check_finite(&host, m)?;
            return Err(MoeError::Backend(
                "routing kernels flagged a non-finite logit the host did not find".into(),
            ));
        }
        let rule = RoutingRule {
            top_k: k,
            groups: config.groups,
            capacity_factor: config.capacity_factor,
            random_second,
            group_limit: config.group_limit(),
        };
        let plan = plan_from_positions(
            m,
            &rule,
            indices.iter().map(|&i| i as u32).collect(),
            used.iter().map(|&u| u != 0).collect(),
            &positions,
        )?;
        Ok(Routed {
            logits,
            scores,
            plan,
            draws,
            new_state,
            entropy,
        })
    }
}
