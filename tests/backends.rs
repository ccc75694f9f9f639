//! The same seeded layer on ndarray, flex and wgpu: same routing, same outputs, same gradients.
//!
//! Tolerances: outputs and gradients agree to `atol 1e-5 + rtol 1e-4` (f32 matmuls summed in a
//! different order on each backend); routing decisions must be identical.

mod common;

use burn::module::Module;
use burn::tensor::Tensor;
use burn_moe::moe::{ExpertActivation, MoeConfig, ScoreFunction};
use common::*;

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

fn configs() -> Vec<(&'static str, MoeConfig)> {
    vec![
        (
            "top1 capacity",
            MoeConfig::new(16, 32, 8)
                .with_top_k(1)
                .with_capacity_factor(Some(1.0)),
        ),
        (
            "top2 dropless",
            MoeConfig::new(16, 32, 8).with_normalize_gates(true),
        ),
        (
            "top2 sigmoid groups shared gelu",
            MoeConfig::new(16, 24, 8)
                .with_score_function(ScoreFunction::Sigmoid)
                .with_normalize_gates(true)
                .with_groups(2)
                .with_capacity_factor(Some(1.25))
                .with_num_shared_experts(1)
                .with_activation(ExpertActivation::Gelu),
        ),
    ]
}

#[test]
fn forward_matches_across_backends() {
    for (name, cfg) in configs() {
        let reference_device = ndarray(false);
        reference_device.seed(7);
        let moe = cfg.init(&reference_device);
        let x = normal_vec(2 * 24 * cfg.d_model, 8);
        let expected = moe.forward(tensor3(x.clone(), [2, 24, cfg.d_model], &reference_device));
        let expected_out = host(expected.output.clone());
        for (backend, device) in devices(false) {
            let moved = moe.clone().fork(&device);
            let got = moved.forward(tensor3(x.clone(), [2, 24, cfg.d_model], &device));
            assert_eq!(
                got.routing.plan().unwrap(),
                expected.routing.plan().unwrap(),
                "{name} on {backend}: routing"
            );
            assert_close(
                &format!("{name} on {backend}: output"),
                &host(got.output),
                &expected_out,
                ATOL,
                RTOL,
            );
            let gates = |moe: &burn_moe::Moe, device| {
                let x = tensor3(x.clone(), [2, 24, cfg.d_model], device);
                host(moe.route(x, false).gates)
            };
            assert_close(
                &format!("{name} on {backend}: gates"),
                &gates(&moved, &device),
                &gates(&moe, &reference_device),
                ATOL,
                RTOL,
            );
        }
    }
}

#[test]
fn gradients_match_across_backends() {
    for (name, cfg) in configs() {
        let reference_device = ndarray(true);
        reference_device.seed(9);
        let moe = cfg.init(&reference_device);
        let x = normal_vec(2 * 16 * cfg.d_model, 10);
        let probe = normal_vec(2 * 16 * cfg.d_model, 11);
        let grads_on = |device: &burn::tensor::Device| {
            let layer = moe.clone().fork(device);
            let out = layer.forward(tensor3(x.clone(), [2, 16, cfg.d_model], device));
            let loss: Tensor<1> =
                (out.output * tensor3(probe.clone(), [2, 16, cfg.d_model], device)).sum();
            let grads = loss.backward();
            let g =
                |p: &burn::module::Param<Tensor<3>>| host(p.val().grad(&grads).expect("gradient"));
            let router: Tensor<2> = layer
                .router
                .gate
                .weight
                .val()
                .grad(&grads)
                .expect("router gradient");
            (
                host(router),
                g(&layer.experts.w_in),
                g(&layer.experts.w_out),
            )
        };
        let expected = grads_on(&reference_device);
        let expected_norm: f32 = expected.0.iter().map(|v| v * v).sum();
        assert!(expected_norm > 0.0, "{name}: router must get a gradient");
        for (backend, device) in devices(true) {
            let got = grads_on(&device);
            assert_close(
                &format!("{name} on {backend}: router grad"),
                &got.0,
                &expected.0,
                ATOL,
                RTOL,
            );
            assert_close(
                &format!("{name} on {backend}: w_in grad"),
                &got.1,
                &expected.1,
                ATOL,
                RTOL,
            );
            assert_close(
                &format!("{name} on {backend}: w_out grad"),
                &got.2,
                &expected.2,
                ATOL,
                RTOL,
            );
        }
    }
}
