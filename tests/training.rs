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
            .init(&device);
        let mut optim = AdamConfig::new().init();
        let mut losses = Vec::new();
        for _ in 0..25 {
            let out = moe.forward(tensor3(x.clone(), [batch, seq, d], &device));
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

/// Each MoE layer takes its own output's balancer state, however dense and MoE blocks mix
/// (every other block MoE, first block dense), and a layer refuses another layer's output.
#[test]
fn balancer_updates_reach_their_own_layers() {
    use burn::tensor::{Int, TensorData};
    use burn_moe::model::Preset;
    let device = ndarray(true);
    for (layers, every, dense_first) in [(4, 2, false), (3, 1, true), (2, 1, false)] {
        device.seed(5);
        let mut cfg = Preset::Tiny.config(16);
        cfg.n_layers = layers;
        cfg.moe_every = every;
        cfg.dense_first = dense_first;
        cfg.moe.balancer = "bip".parse().unwrap();
        let model = cfg.init(&device).unwrap();
        let tokens: Vec<i64> = (0..64).map(|i| (i * 37 % 251) as i64).collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(tokens, [4, 16]), &device);
        let out = model.forward(x).unwrap();
        assert_eq!(out.moe.len(), 2);
        let updated = model.clone().update_balancers(&out.moe).unwrap();
        for (layer, (moe, o)) in updated.moe_layers().zip(&out.moe).enumerate() {
            let want = host(o.routing.balancer_state.clone().unwrap());
            assert_eq!(
                moe.balancer_state_values().unwrap(),
                want,
                "{layers} layers, MoE every {every}, dense first {dense_first}: MoE layer {layer}"
            );
        }
        // One output too few, and another layer's output.
        assert!(model.clone().update_balancers(&out.moe[1..]).is_err());
        let other = MoeConfig::new(cfg.moe.d_model, 16, 4)
            .with_balancer("bip".parse().unwrap())
            .init(&device);
        let first = model.moe_layers().next().unwrap().clone();
        let x = tensor3(normal_vec(8 * 64, 2), [1, 8, 64], &device);
        let foreign = other.route(x, true);
        assert!(first.update_balancer(&foreign.routing).is_err());
    }
}
