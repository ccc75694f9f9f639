//! One pre-norm transformer block: `x + attn(norm(x))`, then `x + ffn(norm(x))`.

use burn::module::Module;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::norm::{Normalization, NormalizationConfig};
use burn::nn::{LayerNormConfig, RmsNormConfig};
use burn::tensor::{Bool, Device, Tensor};

use crate::error::Result;
use crate::model::{MoeLmConfig, NormKind};
use crate::moe::{ExpertFfn, Moe, MoeOutput};

/// The FFN of a block: dense, or a MoE layer.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // Burn cannot derive Module through a Box; one per block
pub enum Ffn {
    /// A dense FFN (one expert that sees every token).
    Dense(ExpertFfn),
    /// A MoE layer.
    Moe(Moe),
}

/// A causal self-attention block with a dense or MoE FFN.
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub norm_attn: Normalization,
    /// Causal multi-head self-attention.
    pub attn: MultiHeadAttention,
    /// Norm before the FFN.
    pub norm_ffn: Normalization,
    /// The FFN.
    pub ffn: Ffn,
}

/// The block's normalisation layer of `kind` over `d` features.
pub(crate) fn norm(kind: NormKind, d: usize, device: &Device) -> Normalization {
    match kind {
        NormKind::Rms => NormalizationConfig::Rms(RmsNormConfig::new(d)).init(device),
        NormKind::Layer => NormalizationConfig::Layer(LayerNormConfig::new(d)).init(device),
    }
}

impl Block {
    pub(crate) fn new(config: &MoeLmConfig, index: usize, device: &Device) -> Result<Self> {
        let d = config.d_model();
        let ffn = if config.is_moe_block(index) {
            Ffn::Moe(config.moe.init(device))
        } else {
            Ffn::Dense(ExpertFfn::new(
                1,
                d,
                config.dense_d_ff,
                config.moe.activation,
                device,
            ))
        };
        Ok(Block {
            norm_attn: norm(config.norm, d, device),
            attn: MultiHeadAttentionConfig::new(d, config.n_heads)
                .with_dropout(config.dropout)
                .init(device),
            norm_ffn: norm(config.norm, d, device),
            ffn,
        })
    }

    /// # Shapes
    /// - x: `[batch, seq, d_model]`, mask: `[batch, seq, seq]` (true = masked)
    /// - output: `[batch, seq, d_model]`, plus the MoE routing facts of a MoE block
    ///
    /// # Panics
    /// As [`Moe::forward`]: a MoE block needs `batch * seq` divisible by its local groups.
    pub fn forward(&self, x: Tensor<3>, mask: Tensor<3, Bool>) -> (Tensor<3>, Option<MoeOutput>) {
        let h = self.norm_attn.forward(x.clone());
        let x = x + self
            .attn
            .forward(MhaInput::self_attn(h).mask_attn(mask))
            .context;
        let h = self.norm_ffn.forward(x.clone());
        match &self.ffn {
            Ffn::Dense(ffn) => {
                let [b, s, d] = h.dims();
                let y = ffn.forward(h.reshape([1, b * s, d])).reshape([b, s, d]);
                (x + y, None)
            }
            Ffn::Moe(moe) => {
                let out = moe.forward(h);
                (x + out.output.clone(), Some(out))
            }
        }
    }
}
