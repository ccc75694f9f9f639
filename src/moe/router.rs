//! The router: logits, scores and the host-side routing plan.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{sigmoid, softmax, softplus};
use std::sync::OnceLock;

use burn::tensor::{Device, Distribution, Tensor, TensorData, Transaction};

use crate::balance::{BatchShape, offset_before_routing, state_after_routing};
use crate::error::{MoeError, Result};
use crate::moe::{DeviceRouting, HostRouting, MoeConfig, Routing, ScoreFunction};
use crate::routing::scores::scores_from_logits;
use crate::routing::{RoutingRule, plan_routing};

/// Router weights: `W_g` (`[d_model, experts]`, no bias) and, for noisy top-k, `W_noise`.
#[derive(Module, Debug)]
pub struct Router {
    /// Gate projection to one logit per expert.
    pub gate: Linear,
    /// Noise-scale projection of noisy top-k gating.
    pub noise: Option<Linear>,
}

/// What the router hands the rest of the layer.
pub(crate) struct Routed {
    pub logits: Tensor<2>,
    pub scores: Tensor<2>,
    pub routing: Routing,
    /// The offset balancer's new state (training only).
    pub new_state: Option<Tensor<1>>,
}

impl Router {
    pub(crate) fn new(config: &MoeConfig, device: &Device) -> Self {
        let linear = LinearConfig::new(config.d_model, config.num_experts).with_bias(false);
        Router {
            gate: linear.init(device),
            noise: config.noisy_gating.then(|| linear.init(device)),
        }
    }

    /// Router logits `[tokens, experts]` for `x: [tokens, d_model]`; noisy during training.
    pub fn logits(&self, x: Tensor<2>, training: bool) -> Tensor<2> {
        let logits = self.gate.forward(x.clone());
        match (&self.noise, training) {
            (Some(noise), true) => {
                let scale = softplus(noise.forward(x), 1.0);
                let eps = scale.random_like(Distribution::Normal(0.0, 1.0));
                logits + eps * scale
            }
            _ => logits,
        }
    }

    /// Routes `x: [tokens, d_model]`: device logits and scores (with gradients), and the plan
    /// made on the host from the same logits. `state` is the offset balancer's state (`b` or
    /// `q`), read in the same round trip as the logits.
    pub(crate) fn route(
        &self,
        x: Tensor<2>,
        config: &MoeConfig,
        state: Option<Tensor<1>>,
        training: bool,
    ) -> Result<Routed> {
        match config.kernel_path {
            Some(path) => self.route_on_device(x, config, state, training, path),
            None => self.route_on_host(x, config, state, training),
        }
    }

    /// The reference path: logits to the host, [`plan_routing`] there.
    fn route_on_host(
        &self,
        x: Tensor<2>,
        config: &MoeConfig,
        state: Option<Tensor<1>>,
        training: bool,
    ) -> Result<Routed> {
        let [tokens, _] = x.dims();
        let experts = config.num_experts;
        let logits = self.logits(x, training);
        let random_second = config.random_routing && training;
        let draws_tensor = random_second.then(|| {
            Tensor::<1>::random([tokens], Distribution::Uniform(0.0, 1.0), &logits.device())
        });

        // One round trip for the logits, the draws and the balancer state.
        let mut transaction = Transaction::default().register(logits.clone());
        for t in draws_tensor.iter().chain(state.iter()) {
            transaction = transaction.register(t.clone());
        }
        crate::moe::count_read();
        let mut data = transaction
            .try_execute()
            .map_err(|e| MoeError::Backend(format!("router read-back failed: {e:?}")))?
            .into_iter();
        let host_logits = read_f32(data.next())?;
        let draws = draws_tensor
            .as_ref()
            .map(|_| read_f32(data.next()))
            .transpose()?;
        let state = state.map(|_| read_f32(data.next())).transpose()?;
        check_finite(&host_logits, experts)?;

        let host_scores = scores_from_logits(&host_logits, experts, config.score_function);
        let shape = BatchShape {
            tokens,
            experts,
            top_k: config.top_k,
        };
        let step = offset_before_routing(
            &config.balancer,
            state.as_deref(),
            &host_scores,
            &shape,
            training,
        );
        let rule = RoutingRule {
            top_k: config.top_k,
            groups: config.groups,
            capacity_factor: config.capacity_factor,
            random_second,
            group_limit: config.group_limit(),
        };
        let plan = plan_routing(
            &host_scores,
            step.offset.as_deref(),
            tokens,
            experts,
            &rule,
            draws.as_deref(),
        )?;
        let new_state = state_after_routing(
            &config.balancer,
            state.as_deref(),
            step,
            &host_scores,
            &plan,
            training,
        );
        let scores = match config.score_function {
            ScoreFunction::Softmax => softmax(logits.clone(), 1),
            ScoreFunction::Sigmoid => sigmoid(logits.clone()),
        };
        let device = logits.device();
        let used = plan.used.iter().map(|&u| u as i64).collect();
        let entropy = mean_entropy(&host_scores, experts);
        let routing = Routing {
            device: DeviceRouting::from_plan(&plan, config.groups, &device),
            used: Tensor::from_data(TensorData::new(used, [tokens, config.top_k]), &device),
            draws: draws_tensor,
            entropy: Tensor::from_data(TensorData::new(vec![entropy], [1]), &device),
            logits: logits.clone(),
            rule,
            experts,
            host: OnceLock::from(HostRouting {
                plan,
                draws,
                entropy,
            }),
        };
        let new_state =
            new_state.map(|s| Tensor::from_data(TensorData::new(s, [experts]), &device));
        Ok(Routed {
            logits,
            scores,
            routing,
            new_state,
        })
    }
}

/// Mean over tokens of the entropy (nats) of each token's scores, normalised to sum to 1.
fn mean_entropy(scores: &[f32], experts: usize) -> f32 {
    let rows = scores.len() / experts;
    let total: f32 = scores
        .chunks_exact(experts)
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

pub(crate) fn read_f32(data: Option<burn::tensor::TensorData>) -> Result<Vec<f32>> {
    read_as(data)
}

/// One tensor of a read-back transaction as a host vector of `E`.
pub(crate) fn read_as<E: burn::tensor::Element>(
    data: Option<burn::tensor::TensorData>,
) -> Result<Vec<E>> {
    data.ok_or_else(|| MoeError::Backend("router read-back returned nothing".into()))?
        .convert::<E>()
        .try_into_vec::<E>()
        .map_err(|e| MoeError::Backend(format!("router read-back: {e:?}")))
}

pub(crate) fn check_finite(logits: &[f32], experts: usize) -> Result<()> {
    let count = logits.iter().filter(|v| !v.is_finite()).count();
    match logits.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(MoeError::NonFinite {
            count,
            token: i / experts,
            expert: i % experts,
        }),
    }
}
