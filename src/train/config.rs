//! [`TrainConfig`]: the settings of a training run.

use burn::config::Config;
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer};

use crate::error::{MoeError, Result};

/// Training settings.
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// Total optimizer steps.
    #[config(default = 200)]
    pub steps: u64,
    /// Sequences per batch.
    #[config(default = 16)]
    pub batch_size: usize,
    /// Tokens per sequence.
    #[config(default = 64)]
    pub seq_len: usize,
    /// Peak learning rate (AdamW).
    #[config(default = 3e-3)]
    pub lr: f64,
    /// Linear warmup steps.
    #[config(default = 20)]
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak (cosine decay).
    #[config(default = 0.1)]
    pub min_lr_fraction: f64,
    /// AdamW weight decay.
    #[config(default = 0.01)]
    pub weight_decay: f32,
    /// Gradient-norm clipping threshold (0: off).
    #[config(default = 1.0)]
    pub grad_clip: f32,
    /// Seed of the weights, the data order and every random draw.
    #[config(default = 42)]
    pub seed: u64,
    /// Validate every this many steps (and at the end).
    #[config(default = 100)]
    pub eval_every: u64,
    /// Validation batches per evaluation.
    #[config(default = 8)]
    pub eval_batches: usize,
    /// Checkpoint every this many steps (and at the end).
    #[config(default = 100)]
    pub checkpoint_every: u64,
}

impl TrainConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MoeError::Config(m));
        if self.steps == 0 || self.batch_size == 0 || self.seq_len == 0 {
            return bad("steps, batch-size and seq-len must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be a finite number > 0, got {}", self.lr));
        }
        if self.eval_every == 0 || self.checkpoint_every == 0 {
            return bad("eval-every and checkpoint-every must be at least 1".into());
        }
        Ok(())
    }
}

impl TrainConfig {
    /// The run's optimizer: AdamW with its weight decay and gradient-norm clipping.
    pub(crate) fn optimizer(&self) -> ModuleOptimizer {
        let mut adamw = AdamWConfig::new().with_weight_decay(self.weight_decay);
        if self.grad_clip > 0.0 {
            adamw = adamw.with_grad_clipping(Some(GradientClippingConfig::Norm(self.grad_clip)));
        }
        adamw.init()
    }
}
