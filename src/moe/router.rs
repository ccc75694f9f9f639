//! The router: its weights and logits (the routing itself is in `device_routing.rs`).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softplus;
use burn::tensor::{Device, Distribution, Tensor};

use crate::error::{MoeError, Result};
use crate::moe::{MoeConfig, Routing};

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
