//! Bad inputs give clear errors, never panics or silent nonsense.

mod common;

use burn_moe::MoeError;
use burn_moe::moe::{MoeConfig, ScoreFunction};
use common::*;

fn layer(cfg: MoeConfig) -> (burn_moe::Moe, burn::tensor::Device) {
    let device = ndarray(false);
    (cfg.init(&device).unwrap(), device)
}

#[test]
fn bad_configs_are_rejected_at_init() {
    let device = ndarray(false);
    for cfg in [
        MoeConfig::new(8, 8, 4).with_top_k(0),
        MoeConfig::new(8, 8, 4).with_top_k(5),
        MoeConfig::new(8, 8, 0),
        MoeConfig::new(8, 8, 4).with_capacity_factor(Some(0.0)),
        MoeConfig::new(8, 8, 4).with_groups(0),
    ] {
        assert!(matches!(cfg.init(&device), Err(MoeError::Config(_))));
    }
}

#[test]
fn wrong_width_is_an_input_error() {
    let (moe, device) = layer(MoeConfig::new(8, 8, 4));
    let err = moe
        .forward(tensor3(vec![0.0; 2 * 3 * 6], [2, 3, 6], &device))
        .unwrap_err();
    assert!(err.to_string().contains("d_model = 8"), "{err}");
}

#[test]
fn empty_batch_is_an_input_error() {
    let (moe, device) = layer(MoeConfig::new(8, 8, 4));
    let err = moe
        .forward(tensor3(vec![], [0, 5, 8], &device))
        .unwrap_err();
    assert!(err.to_string().contains("empty batch"), "{err}");
}

#[test]
fn groups_must_divide_tokens() {
    let (moe, device) = layer(MoeConfig::new(8, 8, 4).with_groups(3));
    let err = moe
        .forward(tensor3(vec![0.1; 4 * 8], [1, 4, 8], &device))
        .unwrap_err();
    assert!(err.to_string().contains("groups = 3"), "{err}");
}

#[test]
fn nan_and_inf_inputs_are_reported_for_both_score_functions() {
    for score in [ScoreFunction::Softmax, ScoreFunction::Sigmoid] {
        let (moe, device) = layer(MoeConfig::new(8, 8, 4).with_score_function(score));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = normal_vec(3 * 8, 1);
            x[13] = bad; // token 1
            // The forward pass reads nothing back; reading the routing reports the token.
            let out = moe.forward(tensor3(x, [1, 3, 8], &device)).unwrap();
            let err = out.routing.plan().unwrap_err();
            match err {
                MoeError::NonFinite { token, .. } => assert_eq!(token, 1),
                other => panic!("expected NonFinite, got {other}"),
            }
        }
    }
}
