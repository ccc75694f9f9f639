//! [`MoeLmConfig`] and the named presets.

use std::str::FromStr;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::Device;

use crate::error::{MoeError, Result, ensure_config};
use crate::model::MoeLm;
use crate::moe::MoeConfig;

/// Normalisation layer of the blocks.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm (LLaMA, DeepSeek).
    Rms,
    /// LayerNorm (GPT-2).
    Layer,
}

/// Configuration of [`MoeLm`].
#[derive(Config, Debug)]
pub struct MoeLmConfig {
    /// Vocabulary size: 256 for the byte-level tokenizer.
    #[config(default = 256)]
    pub vocab_size: usize,
    /// Longest context the positional embedding covers.
    pub max_seq_len: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Attention heads; must divide `moe.d_model`.
    pub n_heads: usize,
    /// The MoE FFN of every MoE block (`d_model` here is the model width).
    pub moe: MoeConfig,
    /// A MoE FFN in every `moe_every`-th block (1: every block; 2: every other, GShard-style);
    /// the other blocks have a dense FFN of width `dense_d_ff`.
    #[config(default = 1)]
    pub moe_every: usize,
    /// Make the first block dense even where `moe_every` would put a MoE layer there.
    #[config(default = false)]
    pub dense_first: bool,
    /// Hidden width of the dense FFNs.
    pub dense_d_ff: usize,
    /// Normalisation.
    #[config(default = "NormKind::Rms")]
    pub norm: NormKind,
    /// Attention dropout during training.
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl MoeLmConfig {
    /// Width of the token representation.
    pub fn d_model(&self) -> usize {
        self.moe.d_model
    }

    /// Whether block `i` has a MoE FFN.
    pub fn is_moe_block(&self, i: usize) -> bool {
        i % self.moe_every == self.moe_every - 1 && !(self.dense_first && i == 0)
    }

    /// Blocks with a MoE FFN.
    pub fn moe_blocks(&self) -> usize {
        let every = self.moe_every.max(1);
        let skipped_first = usize::from(self.dense_first && every == 1 && self.n_layers > 0);
        self.n_layers / every - skipped_first
    }

    /// Checks every field, then the MoE config.
    pub fn validate(&self) -> Result<()> {
        self.moe.validate()?;
        ensure_config(self.vocab_size > 0, || {
            "vocab_size must be at least 1".into()
        })?;
        ensure_config(self.max_seq_len > 0, || {
            "max_seq_len must be at least 1".into()
        })?;
        ensure_config(self.n_layers > 0, || "n_layers must be at least 1".into())?;
        ensure_config(
            self.n_heads > 0 && self.d_model().is_multiple_of(self.n_heads),
            || {
                format!(
                    "n_heads ({}) must divide d_model ({})",
                    self.n_heads,
                    self.d_model()
                )
            },
        )?;
        ensure_config(self.moe_every >= 1, || {
            "moe_every must be at least 1".into()
        })?;
        ensure_config(self.moe_blocks() > 0, || {
            format!(
                "no block would have a MoE layer: {} layers with a MoE FFN in every {}-th block{}",
                self.n_layers,
                self.moe_every,
                if self.dense_first {
                    " and the first block dense"
                } else {
                    ""
                }
            )
        })?;
        ensure_config(self.dense_d_ff > 0, || {
            "dense_d_ff must be at least 1".into()
        })?;
        ensure_config((0.0..1.0).contains(&self.dropout), || {
            format!("dropout must be in [0, 1), got {}", self.dropout)
        })?;
        Ok(())
    }

    /// Parameters of the model, computed in `f64` so that absurd sizes do not overflow.
    pub fn param_count(&self) -> f64 {
        let d = self.d_model() as f64;
        let moe = self.moe.param_count();
        let dense = 3.0 * d * self.dense_d_ff as f64;
        let moe_blocks = self.moe_blocks() as f64;
        let ffn = moe_blocks * moe + (self.n_layers as f64 - moe_blocks) * dense;
        2.0 * self.vocab_size as f64 * d
            + self.max_seq_len as f64 * d
            + self.n_layers as f64 * 4.0 * d * d
            + ffn
    }

    /// Validates and builds the model. The weights are drawn now, from the device's random
    /// state at this call (not when a forward first touches them), so equal seeds give equal
    /// weights in every process of a run. Errors when its weights would not fit in the memory
    /// this machine has.
    pub fn init(&self, device: &Device) -> Result<MoeLm> {
        self.validate()?;
        crate::memory::check_fits(4.0 * self.param_count(), "the model's weights")?;
        let model = MoeLm::new(self, device)?;
        model.visit(&mut crate::moe::DrawWeights);
        Ok(model)
    }
}

/// Named model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// 2 layers, d_model 64, 4 heads, 8 experts top-2: trains in seconds on a CPU.
    Tiny,
    /// 4 layers, d_model 128, 4 heads, 16 experts top-2.
    Small,
}

impl Preset {
    /// The preset's config for contexts up to `max_seq_len` tokens.
    pub fn config(self, max_seq_len: usize) -> MoeLmConfig {
        let (d, layers, heads, experts, d_ff) = match self {
            Preset::Tiny => (64, 2, 4, 8, 128),
            Preset::Small => (128, 4, 4, 16, 256),
        };
        let moe = MoeConfig::new(d, d_ff, experts)
            .with_top_k(2)
            .with_normalize_gates(true);
        MoeLmConfig::new(max_seq_len, layers, heads, moe, 2 * d_ff)
    }
}

impl FromStr for Preset {
    type Err = MoeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "small" => Ok(Preset::Small),
            other => Err(MoeError::Config(format!(
                "unknown preset `{other}`: expected tiny or small"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moe_placement() {
        let cfg = MoeLmConfig {
            n_layers: 4,
            ..Preset::Tiny.config(32)
        };
        assert!((0..4).all(|i| cfg.is_moe_block(i)));
        let every_other = cfg.clone().with_moe_every(2);
        assert_eq!(
            (0..4)
                .map(|i| every_other.is_moe_block(i))
                .collect::<Vec<_>>(),
            [false, true, false, true]
        );
        let dense_first = cfg.with_dense_first(true);
        assert!(!dense_first.is_moe_block(0) && dense_first.is_moe_block(1));
    }

    #[test]
    fn moe_block_count_matches_the_placement_rule_and_zero_is_refused() {
        for n in 1..8 {
            for every in 1..5 {
                for dense_first in [false, true] {
                    let cfg = MoeLmConfig {
                        n_layers: n,
                        moe_every: every,
                        dense_first,
                        ..Preset::Tiny.config(32)
                    };
                    let counted = (0..n).filter(|&i| cfg.is_moe_block(i)).count();
                    assert_eq!(cfg.moe_blocks(), counted, "{n} layers, every {every}");
                    assert_eq!(cfg.validate().is_ok(), counted > 0);
                }
            }
        }
        let none = MoeLmConfig {
            moe_every: 3,
            ..Preset::Tiny.config(32)
        };
        assert!(
            none.validate()
                .unwrap_err()
                .to_string()
                .contains("no block")
        );
    }

    #[test]
    fn heads_must_divide_width() {
        assert!(
            MoeLmConfig {
                n_heads: 5,
                ..Preset::Tiny.config(32)
            }
            .validate()
            .is_err()
        );
        assert!(Preset::Small.config(32).validate().is_ok());
    }
}
