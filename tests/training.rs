//! A few optimizer steps on a toy regression reduce the loss on every backend.

mod common;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Tensor;
use burn_moe::moe::MoeConfig;
use common::*;

#[test]
fn adam_steps_reduce_a_toy_regression_loss() {
    let (batch, seq, d) = (4, 16, 8);
    let x = normal_vec(batch * seq * d, 1);
    // Target: a fixed nonlinear function of the input, different per half of the feature space.
    let target: Vec<f32> = x
        .chunks(d)
        .flat_map(|row| {
            let s: f32 = row[..d / 2].iter().sum();
            row.iter()
                .enumerate()
                .map(move |(i, v)| if i % 2 == 0 { (v * s).tanh() } else { -v })
                .collect::<Vec<_>>()
        })
        .collect();
    for (backend, device) in devices(true) {
        device.seed(3);
        let mut moe = MoeConfig::new(d, 16, 4)
            .with_capacity_factor(Some(1.5))
            .init(&device)
            .unwrap();
        let mut optim = AdamConfig::new().init();
        let mut losses = Vec::new();
        for _ in 0..25 {
            let out = moe
                .forward(tensor3(x.clone(), [batch, seq, d], &device))
                .unwrap();
            let diff = out.output - tensor3(target.clone(), [batch, seq, d], &device);
            let loss: Tensor<1> = (diff.clone() * diff).mean();
            losses.push(host(loss.clone())[0]);
            let grads = GradientsParams::from_grads(loss.backward(), &moe);
            moe = optim.step(1e-2, moe, grads);
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        eprintln!("{backend}: loss {first:.4} -> {last:.4}");
        assert!(
            last < 0.6 * first,
            "{backend}: loss {first} -> {last} did not drop by 40%"
        );
        let _ = moe.num_params();
    }
}
