//! [`MoeConfig`]: every knob of the layer, with its default and its valid range.

use burn::config::Config;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{Device, Tensor};

use crate::balance::BalancerConfig;
use crate::error::{Result, ensure_config};
use crate::kernels::KernelPath;
use crate::moe::Moe;
use crate::routing::{GroupLimit, GroupScore};

/// How router logits become expert scores.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ScoreFunction {
    /// `softmax` over experts (Switch, GShard, Mixtral).
    Softmax,
    /// Element-wise `sigmoid` (DeepSeek-V3); usually paired with `normalize_gates = true`.
    Sigmoid,
}

impl ScoreFunction {
    /// The scores of router `logits` `[tokens, experts]`.
    pub fn apply(self, logits: Tensor<2>) -> Tensor<2> {
        match self {
            ScoreFunction::Softmax => softmax(logits, 1),
            ScoreFunction::Sigmoid => sigmoid(logits),
        }
    }
}

impl std::str::FromStr for ScoreFunction {
    type Err = crate::MoeError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "softmax" => Ok(ScoreFunction::Softmax),
            "sigmoid" => Ok(ScoreFunction::Sigmoid),
            other => Err(crate::MoeError::Config(format!(
                "unknown score function `{other}`: expected softmax or sigmoid"
            ))),
        }
    }
}

/// The feed-forward block inside each expert.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ExpertActivation {
    /// `W_out (silu(x W_gate) * (x W_in))` (LLaMA, Mixtral, DeepSeek).
    SwiGlu,
    /// `W_out gelu(x W_in)` (GPT-2, GShard, Switch).
    Gelu,
}

/// Configuration of a [`Moe`] layer, built with [`MoeConfig::init`].
///
/// Defaults follow the common modern setup: softmax scores, top-2, SwiGLU experts, dropless.
#[derive(Config, Debug)]
pub struct MoeConfig {
    /// Width of the token representation (input and output of the layer).
    pub d_model: usize,
    /// Hidden width of each routed expert's FFN.
    pub d_ff: usize,
    /// Number of routed experts `m`.
    pub num_experts: usize,
    /// Experts chosen per token, `1 <= k <= num_experts`.
    #[config(default = 2)]
    pub top_k: usize,
    /// Score function applied to the router logits.
    #[config(default = "ScoreFunction::Softmax")]
    pub score_function: ScoreFunction,
    /// Divide each token's chosen scores by their sum, so its gates add up to 1. With `top_k = 1`
    /// this makes every gate 1 and stops the router's gradient, so it stays off by default.
    #[config(default = false)]
    pub normalize_gates: bool,
    /// Multiplies every routed gate after normalisation (DeepSeek-V3's `routed_scaling_factor`).
    #[config(default = 1.0)]
    pub routed_scaling_factor: f64,
    /// Group-limited routing (DeepSeek-V2/V3): the experts form this many equal groups of
    /// consecutive indices, and each token chooses only inside its best `top_groups` groups.
    /// 1 turns it off. Must divide `num_experts`; at most 32.
    #[config(default = 1)]
    pub expert_groups: usize,
    /// Groups each token keeps under group-limited routing, `1..=expert_groups`.
    #[config(default = 1)]
    pub top_groups: usize,
    /// How an expert group is scored from its experts' selection values (scores plus the
    /// balancer's offset).
    #[config(default = "GroupScore::TopTwoSum")]
    pub group_score: GroupScore,
    /// Expert capacity factor: each expert takes at most `ceil(capacity_factor * k * S / m)`
    /// tokens of each group of `S` tokens; the rest are dropped and pass through the residual
    /// connection. `None` is dropless: every chosen (token, expert) pair is computed.
    #[config(default = "None")]
    pub capacity_factor: Option<f64>,
    /// GShard local groups: the tokens of one call are split into `groups` equal, contiguous
    /// groups, each with its own capacity. Must divide the token count of every call.
    #[config(default = 1)]
    pub groups: usize,
    /// GShard random routing (needs `top_k = 2`): during training the 2nd expert is used only
    /// when `2 * g2 > U(0,1)`, with `g2 = s2 / (s1 + s2)`; gates are normalised over the pair.
    #[config(default = false)]
    pub random_routing: bool,
    /// Noisy top-k gating (Shazeer 2017): during training add `N(0,1) * softplus(x W_noise)` to
    /// the router logits.
    #[config(default = false)]
    pub noisy_gating: bool,
    /// Shared experts applied to every token (DeepSeekMoE); 0 for none.
    #[config(default = 0)]
    pub num_shared_experts: usize,
    /// Hidden width of each shared expert; `None` means `d_ff`.
    #[config(default = "None")]
    pub d_ff_shared: Option<usize>,
    /// Scale the shared experts' output per token by `sigmoid(x w)`, with a learned `w`
    /// (`[d_model, 1]`; Qwen2-MoE's `shared_expert_gate`).
    #[config(default = false)]
    pub shared_expert_gate: bool,
    /// FFN form of routed and shared experts.
    #[config(default = "ExpertActivation::SwiGlu")]
    pub activation: ExpertActivation,
    /// Load balancer: a loss term, or a selection offset kept as layer state.
    #[config(default = "BalancerConfig::None")]
    pub balancer: BalancerConfig,
    /// Router z-loss weight (ST-MoE uses 1e-3); 0 turns it off. Combines with any balancer.
    #[config(default = 0.0)]
    pub z_loss_weight: f64,
    /// Where the routing kernels (top-k, histograms, balancer updates) run, always on the
    /// layer's device: `Auto` runs the WGSL shaders on wgpu and Burn tensor ops on the CPU
    /// backends; `Portable` runs the tensor ops everywhere; `Wgsl` insists on the shaders.
    #[config(default = "KernelPath::Auto")]
    pub kernel_path: KernelPath,
}

impl MoeConfig {
    /// Checks every field, and that the weights fit in this machine's memory; the error says
    /// which field is wrong and what would be right.
    pub fn validate(&self) -> Result<()> {
        ensure_config(self.d_model > 0, || "d_model must be at least 1".into())?;
        ensure_config(self.d_ff > 0, || "d_ff must be at least 1".into())?;
        ensure_config(self.num_experts > 0, || {
            "num_experts must be at least 1".into()
        })?;
        ensure_config(self.top_k >= 1 && self.top_k <= self.num_experts, || {
            format!(
                "top_k must be between 1 and num_experts ({}), got {}",
                self.num_experts, self.top_k
            )
        })?;
        if let Some(cf) = self.capacity_factor {
            ensure_config(cf.is_finite() && cf > 0.0, || {
                format!(
                    "capacity_factor must be a finite number > 0 (or None for dropless), got {cf}"
                )
            })?;
        }
        ensure_config(self.num_experts <= crate::kernels::MAX_EXPERTS, || {
            format!(
                "num_experts {} exceeds the {} experts the routing kernels take",
                self.num_experts,
                crate::kernels::MAX_EXPERTS
            )
        })?;
        ensure_config(self.groups >= 1, || "groups must be at least 1".into())?;
        ensure_config(!self.random_routing || self.top_k == 2, || {
            format!(
                "random_routing is GShard's rule for the 2nd expert and needs top_k = 2, got top_k = {}",
                self.top_k
            )
        })?;
        ensure_config(self.d_ff_shared != Some(0), || {
            "d_ff_shared must be at least 1 (or None for d_ff)".into()
        })?;
        if let Some(limit) = self.group_limit() {
            limit.validate(self.num_experts, self.top_k)?;
        }
        ensure_config(
            self.routed_scaling_factor.is_finite() && self.routed_scaling_factor > 0.0,
            || {
                format!(
                    "routed_scaling_factor must be a finite number > 0, got {}",
                    self.routed_scaling_factor
                )
            },
        )?;
        ensure_config(
            !self.shared_expert_gate || self.num_shared_experts > 0,
            || "shared_expert_gate needs num_shared_experts >= 1".into(),
        )?;
        self.balancer.validate()?;
        ensure_config(
            self.z_loss_weight.is_finite() && self.z_loss_weight >= 0.0,
            || {
                format!(
                    "z_loss_weight must be a finite number >= 0, got {}",
                    self.z_loss_weight
                )
            },
        )?;
        crate::memory::check_fits(4.0 * self.param_count(), "the MoE layer's weights")
    }

    /// The group limit of group-limited routing, `None` when `expert_groups` is 1.
    pub fn group_limit(&self) -> Option<GroupLimit> {
        (self.expert_groups > 1).then_some(GroupLimit {
            groups: self.expert_groups,
            top_groups: self.top_groups,
            score: self.group_score,
        })
    }

    /// Expert capacity for a group of `group_tokens` tokens, or `None` when dropless.
    ///
    /// `C = ceil(capacity_factor * k * S / m)` (GShard, Switch).
    pub fn capacity(&self, group_tokens: usize) -> Option<usize> {
        self.capacity_factor.map(|cf| {
            (cf * self.top_k as f64 * group_tokens as f64 / self.num_experts as f64).ceil() as usize
        })
    }

    /// Parameters of the layer (router, routed and shared experts), computed in `f64` so that
    /// absurd sizes do not overflow.
    pub fn param_count(&self) -> f64 {
        let d = self.d_model as f64;
        let m = self.num_experts as f64;
        let mats = match self.activation {
            ExpertActivation::SwiGlu => 3.0,
            _ => 2.0,
        };
        let router = d * m * if self.noisy_gating { 2.0 } else { 1.0 };
        let shared_ff = self.d_ff_shared.unwrap_or(self.d_ff) as f64;
        let shared_gate = if self.shared_expert_gate { d } else { 0.0 };
        router
            + m * mats * d * self.d_ff as f64
            + self.num_shared_experts as f64 * mats * d * shared_ff
            + shared_gate
    }

    /// Bytes a forward call over `tokens` tokens allocates, roughly: input and output, the
    /// routed experts' hidden units, the router logits and scores (`f64`, so absurd sizes do not
    /// overflow).
    pub fn activation_bytes(&self, tokens: usize) -> f64 {
        let per_token = 4.0 * self.d_model as f64
            + 3.0 * self.top_k as f64 * self.d_ff as f64
            + 3.0 * self.num_experts as f64;
        4.0 * tokens as f64 * per_token
    }

    /// Builds the layer on `device`, weights initialised at random. The weights are drawn now,
    /// from the device's random state at this call, so equal seeds give equal layers in every
    /// process.
    ///
    /// # Panics
    /// On an invalid config, with the message of [`validate`](Self::validate) (call it first
    /// to handle the error instead).
    pub fn init(&self, device: &Device) -> Moe {
        if let Err(e) = self.validate() {
            panic!("MoeConfig::init: {e}");
        }
        let layer = Moe::new(self.clone(), device);
        burn::module::Module::visit(&layer, &mut crate::moe::DrawWeights);
        layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MoeConfig {
        MoeConfig::new(8, 16, 4)
    }

    #[test]
    fn defaults_are_valid() {
        assert!(base().validate().is_ok());
        assert_eq!(base().top_k, 2);
        assert_eq!(base().capacity_factor, None);
    }

    #[test]
    fn rejects_bad_values_with_the_field_name() {
        let cases: Vec<(MoeConfig, &str)> = vec![
            (base().with_top_k(0), "top_k"),
            (base().with_top_k(5), "top_k"),
            (MoeConfig::new(8, 16, 0), "num_experts"),
            (MoeConfig::new(0, 16, 4), "d_model"),
            (base().with_capacity_factor(Some(0.0)), "capacity_factor"),
            (base().with_capacity_factor(Some(-1.0)), "capacity_factor"),
            (
                base().with_capacity_factor(Some(f64::NAN)),
                "capacity_factor",
            ),
            (base().with_groups(0), "groups"),
            (base().with_expert_groups(3), "expert_groups"),
            (
                base().with_expert_groups(2).with_top_groups(3),
                "top_groups",
            ),
            (
                base().with_routed_scaling_factor(0.0),
                "routed_scaling_factor",
            ),
            (base().with_shared_expert_gate(true), "shared_expert_gate"),
            (MoeConfig::new(8, 16, 4097), "num_experts"),
            (
                base().with_top_k(1).with_random_routing(true),
                "random_routing",
            ),
        ];
        for (cfg, field) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(field), "`{err}` should name `{field}`");
        }
    }

    #[test]
    fn capacity_follows_gshard_formula() {
        // GShard top-2 with factor 1.0: C = 2S/m.
        let cfg = MoeConfig::new(8, 16, 8).with_capacity_factor(Some(1.0));
        assert_eq!(cfg.capacity(64), Some(16));
        // Rounds up: 1.25 * 2 * 10 / 8 = 3.125 -> 4.
        let cfg = cfg.with_capacity_factor(Some(1.25));
        assert_eq!(cfg.capacity(10), Some(4));
        assert_eq!(base().capacity(64), None);
    }
}
