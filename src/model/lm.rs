//! [`MoeLm`]: embeddings, blocks, final norm, tied output head.

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::norm::Normalization;
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};

use crate::error::{MoeError, Result};
use crate::model::block::norm;
use crate::model::{Block, Ffn, MoeLmConfig};
use crate::moe::MoeOutput;

const EMBEDDING_INIT: Initializer = Initializer::Normal {
    mean: 0.0,
    std: 0.02,
};

/// A GPT-style decoder with MoE FFNs.
#[derive(Module, Debug)]
pub struct MoeLm {
    /// Token embeddings `[vocab, d_model]`, also the output head (tied).
    pub tokens: Embedding,
    /// Learned positions `[max_seq_len, d_model]`.
    pub positions: Embedding,
    /// Transformer blocks.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub norm: Normalization,
    /// The config.
    #[module(skip)]
    pub config: MoeLmConfig,
}

/// Logits and the routing facts of every MoE layer.
#[derive(Debug)]
pub struct LmOutput {
    /// Next-token logits `[batch, seq, vocab]`.
    pub logits: Tensor<3>,
    /// One entry per MoE block, in block order.
    pub moe: Vec<MoeOutput>,
}

impl LmOutput {
    /// The balancing losses of every MoE layer, summed (to add to the training loss); `None`
    /// when no layer has one.
    pub fn balance_loss(&self) -> Option<Tensor<1>> {
        self.moe
            .iter()
            .filter_map(|m| m.balance_loss.clone())
            .reduce(|a, b| a + b)
    }
}

impl MoeLm {
    pub(crate) fn new(config: &MoeLmConfig, device: &Device) -> Result<Self> {
        let d = config.d_model();
        let blocks = (0..config.n_layers)
            .map(|i| Block::new(config, i, device))
            .collect::<Result<_>>()?;
        Ok(MoeLm {
            // GPT-2's N(0, 0.02): with the tied head, N(0, 1) embeddings would give logits of
            // standard deviation sqrt(d_model) and a first loss far above ln(vocab).
            tokens: EmbeddingConfig::new(config.vocab_size, d)
                .with_initializer(EMBEDDING_INIT)
                .init(device),
            positions: EmbeddingConfig::new(config.max_seq_len, d)
                .with_initializer(EMBEDDING_INIT)
                .init(device),
            blocks,
            norm: norm(config.norm, d, device),
            config: config.clone(),
        })
    }

    /// # Shapes
    /// - tokens: `[batch, seq]` with `seq <= max_seq_len`
    /// - output.logits: `[batch, seq, vocab]`
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Result<LmOutput> {
        let [batch, seq] = tokens.dims();
        if seq == 0 || batch == 0 {
            return Err(MoeError::Input(format!(
                "empty token batch [{batch}, {seq}]"
            )));
        }
        if seq > self.config.max_seq_len {
            return Err(MoeError::Input(format!(
                "sequence of {seq} tokens is longer than max_seq_len = {}",
                self.config.max_seq_len
            )));
        }
        let groups = self.config.moe.groups;
        if !(batch * seq).is_multiple_of(groups) {
            return Err(MoeError::Input(format!(
                "{} tokens (batch {batch} x seq {seq}) are not divisible into the MoE layers' \
                 groups = {groups}",
                batch * seq
            )));
        }
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
            .unsqueeze::<2>()
            .repeat_dim(0, batch);
        let mut x = self.tokens.forward(tokens) + self.positions.forward(positions);
        let mask = generate_autoregressive_mask(batch, seq, &device);
        let mut moe = Vec::new();
        for block in &self.blocks {
            let (y, routed) = block.forward(x, mask.clone());
            x = y;
            moe.extend(routed);
        }
        let h = self.norm.forward(x);
        let [_, _, d] = h.dims();
        let head = self.tokens.weight.val().transpose(); // [d, vocab]
        let logits =
            h.reshape([batch * seq, d])
                .matmul(head)
                .reshape([batch, seq, self.config.vocab_size]);
        Ok(LmOutput { logits, moe })
    }

    /// Mean next-token cross-entropy of `logits` `[batch, seq, vocab]` against `targets` `[batch, seq]`.
    pub fn cross_entropy(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<1> {
        let [b, s, v] = logits.dims();
        let logp = log_softmax(logits.reshape([b * s, v]), 1);
        let picked = logp.gather(1, targets.reshape([b * s, 1]));
        picked.mean().neg()
    }

    /// The MoE layers, in block order.
    pub fn moe_layers(&self) -> impl Iterator<Item = &crate::moe::Moe> {
        self.blocks.iter().filter_map(|b| match &b.ffn {
            Ffn::Moe(m) => Some(m),
            Ffn::Dense(_) => None,
        })
    }

    /// The model with each MoE layer replaced by `f(i, layer)` (`i`: its index among the MoE
    /// layers), e.g. to make the layers expert-parallel.
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn map_moe_layers(
        mut self,
        mut f: impl FnMut(usize, crate::moe::Moe) -> Result<crate::moe::Moe>,
    ) -> Result<Self> {
        let mut i = 0;
        for block in &mut self.blocks {
            if let Ffn::Moe(moe) = &mut block.ffn {
                *moe = f(i, moe.clone())?;
                i += 1;
            }
        }
        Ok(self)
    }

    /// Applies every MoE layer's proposed balancer state (from a training forward):
    /// `outputs[i]` goes to the `i`-th MoE layer, dense blocks skipped. Errors unless there is
    /// one output per MoE layer, each from a layer of its expert count.
    pub fn update_balancers(mut self, outputs: &[MoeOutput]) -> Result<Self> {
        let layers = self.moe_layers().count();
        if outputs.len() != layers {
            return Err(MoeError::Input(format!(
                "update_balancers: {} outputs for {layers} MoE layers",
                outputs.len()
            )));
        }
        let mut outs = outputs.iter();
        for block in &mut self.blocks {
            if let Ffn::Moe(moe) = &mut block.ffn
                && let Some(out) = outs.next()
            {
                *moe = moe.clone().update_balancer(&out.routing)?;
            }
        }
        Ok(self)
    }
}
