//! [`Moe`]: the layer users drop into their models in place of an FFN.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{MoeError, Result};
use crate::moe::router::Routed;
use crate::moe::{ExpertFfn, MoeConfig, MoeOutput, Router, TokenDispatcher};

/// A Mixture-of-Experts FFN layer; build it with [`MoeConfig::init`].
#[derive(Module, Debug)]
pub struct Moe {
    /// Router weights.
    pub router: Router,
    /// The routed experts, weights stacked `[experts, ..]`.
    pub experts: ExpertFfn,
    /// Shared experts applied to every token (`None` when `num_shared_experts = 0`).
    pub shared: Option<ExpertFfn>,
    /// The config the layer was built from.
    #[module(skip)]
    pub config: MoeConfig,
}

impl Moe {
    pub(crate) fn new(config: MoeConfig, device: &Device) -> Self {
        let shared = (config.num_shared_experts > 0).then(|| {
            let width = config.num_shared_experts * config.d_ff_shared.unwrap_or(config.d_ff);
            ExpertFfn::new(1, config.d_model, width, config.activation, device)
        });
        Moe {
            router: Router::new(&config, device),
            experts: ExpertFfn::new(
                config.num_experts,
                config.d_model,
                config.d_ff,
                config.activation,
                device,
            ),
            shared,
            config,
        }
    }

    /// Routes every token to its experts and combines their outputs.
    ///
    /// Training behaviour (noisy gating, random routing) is on when `x` lives on an autodiff
    /// device, as with Burn's `Dropout`.
    ///
    /// # Shapes
    /// - x: `[batch, seq, d_model]`
    /// - output.output: `[batch, seq, d_model]`
    ///
    /// # Errors
    /// Wrong rank or width, an empty batch, a token count the groups do not divide, or NaN/Inf in
    /// the router logits.
    pub fn forward(&self, x: Tensor<3>) -> Result<MoeOutput> {
        self.forward_with_offset(x, None)
    }

    /// [`forward`](Self::forward) with a per-expert selection offset (`[experts]`): experts are
    /// chosen by `score + offset`, gates use the score alone. Balancers drive this.
    pub fn forward_with_offset(&self, x: Tensor<3>, offset: Option<&[f32]>) -> Result<MoeOutput> {
        let [batch, seq, d_model] = x.dims();
        let tokens = batch * seq;
        if d_model != self.config.d_model {
            return Err(MoeError::Input(format!(
                "input width is {d_model}, the layer expects d_model = {}",
                self.config.d_model
            )));
        }
        if tokens == 0 {
            return Err(MoeError::Input(format!(
                "empty batch: input shape [{batch}, {seq}, {d_model}]"
            )));
        }
        if !tokens.is_multiple_of(self.config.groups) {
            return Err(MoeError::Input(format!(
                "{tokens} tokens (batch {batch} x seq {seq}) are not divisible into groups = {}",
                self.config.groups
            )));
        }
        let device = x.device();
        let training = device.is_autodiff();
        let x = x.reshape([tokens, d_model]);

        // 1. Route.
        let Routed {
            logits,
            scores,
            plan,
            draws,
        } = self
            .router
            .route(x.clone(), &self.config, offset, training)?;
        let gates = self.gates(scores.clone(), &plan.choices, tokens, &device);

        // 2. Dispatch, 3. experts, 4. combine.
        let dispatcher = TokenDispatcher::new(&plan, self.config.groups, &device);
        let expert_out = self.experts.forward(dispatcher.dispatch(x.clone()));
        let mut y = dispatcher.combine(expert_out, gates.clone());
        if let Some(shared) = &self.shared {
            y = y + shared.forward(x.unsqueeze_dim(0)).squeeze_dim(0);
        }

        Ok(MoeOutput {
            output: y.reshape([batch, seq, d_model]),
            logits,
            scores,
            gates,
            routing: plan,
            second_expert_draws: draws,
        })
    }

    /// Gate weights `[tokens, k]` of the chosen experts, taken from the device scores so the
    /// router gets gradients; normalised over the chosen experts when configured (always for
    /// GShard random routing, whose rule is stated on normalised gates).
    fn gates(
        &self,
        scores: Tensor<2>,
        choices: &[u32],
        tokens: usize,
        device: &Device,
    ) -> Tensor<2> {
        let k = self.config.top_k;
        let index: Vec<i64> = choices.iter().map(|&c| c as i64).collect();
        let index = Tensor::<2, Int>::from_data(TensorData::new(index, [tokens, k]), device);
        let gates = scores.gather(1, index);
        if self.config.normalize_gates || self.config.random_routing {
            gates.clone() / gates.sum_dim(1)
        } else {
            gates
        }
    }
}
