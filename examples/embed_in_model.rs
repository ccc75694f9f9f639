//! Embedding `Moe` in your own Burn model in place of an FFN, and training it a few steps.
//!
//! `cargo run --example embed_in_model -- [wgpu|ndarray|flex]` (default flex).

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use burn_moe::moe::Routing;
use burn_moe::{BackendKind, Moe, MoeConfig};

/// A pre-norm residual block whose FFN is a MoE layer.
#[derive(Module, Debug)]
struct Block {
    norm: LayerNorm,
    moe: Moe,
    head: Linear,
}

impl Block {
    fn new(device: &Device) -> Self {
        Block {
            norm: LayerNormConfig::new(32).init(device),
            moe: MoeConfig::new(32, 64, 8).with_top_k(2).init(device),
            head: LinearConfig::new(32, 1).init(device),
        }
    }

    /// `[batch, seq, 32] -> [batch, seq, 1]`, plus the call's routing (on the device).
    fn forward(&self, x: Tensor<3>) -> (Tensor<3>, Routing) {
        let routed = self.moe.forward(self.norm.forward(x.clone()));
        let h = x + routed.output; // residual: dropped tokens pass through unchanged
        (self.head.forward(h), routed.routing)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend: BackendKind = std::env::args().nth(1).unwrap_or("flex".into()).parse()?;
    let device = backend.device(true)?;
    let mut model = Block::new(&device);
    let mut optim = AdamWConfig::new().init();
    let x = Tensor::<3>::random([8, 32, 32], Distribution::Normal(0.0, 1.0), &device);
    let target = x.clone().slice([0..8, 0..32, 0..1]).sin();
    for step in 0..20 {
        let (y, routing) = model.forward(x.clone());
        let loss = (y - target.clone()).powi_scalar(2).mean();
        if step % 5 == 0 {
            // Reading the routing is one device-to-host transfer: do it when you log.
            let counts = &routing.plan()?.computed_counts;
            println!(
                "step {step:>2}  loss {:.4}  tokens per expert {counts:?}",
                loss.clone().into_scalar::<f32>()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    Ok(())
}
