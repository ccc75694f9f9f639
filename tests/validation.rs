//! Bad inputs give clear errors, never panics or silent nonsense.

mod common;

use burn_moe::MoeError;
use burn_moe::moe::{MoeConfig, ScoreFunction};
use common::*;

fn layer(cfg: MoeConfig) -> (burn_moe::Moe, burn::tensor::Device) {
    let device = ndarray(false);
    (cfg.init(&device), device)
}

/// The message of the panic `f` raises.
fn panic_message(f: impl FnOnce()) -> String {
    let payload =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("expected a panic");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn bad_configs_fail_validation_and_init_panics_with_the_same_message() {
    let device = ndarray(false);
    for (cfg, field) in [
        (MoeConfig::new(8, 8, 4).with_top_k(0), "top_k"),
        (MoeConfig::new(8, 8, 4).with_top_k(5), "top_k"),
        (MoeConfig::new(8, 8, 0), "num_experts"),
        (
            MoeConfig::new(8, 8, 4).with_capacity_factor(Some(0.0)),
            "capacity_factor",
        ),
        (MoeConfig::new(8, 8, 4).with_groups(0), "groups"),
    ] {
        let err = cfg.validate().unwrap_err();
        assert!(matches!(err, MoeError::Config(_)), "{err}");
        let device = device.clone();
        let message = panic_message(move || {
            cfg.init(&device);
        });
        assert!(
            message.contains("MoeConfig::init") && message.contains(field),
            "{message}"
        );
        assert!(message.contains(&err.to_string()), "{message}");
    }
}

/// `try_forward` returns the error whose message `forward` panics with.
fn input_error(moe: &burn_moe::Moe, x: burn::tensor::Tensor<3>) -> String {
    let err = moe.try_forward(x.clone()).unwrap_err();
    assert!(matches!(err, MoeError::Input(_)), "{err}");
    let moe = moe.clone();
    let message = panic_message(move || {
        moe.forward(x);
    });
    assert!(
        message.starts_with("Moe::forward: ") && message.contains(&err.to_string()),
        "{message}"
    );
    err.to_string()
}

#[test]
fn wrong_width_is_an_input_error() {
    let (moe, device) = layer(MoeConfig::new(8, 8, 4));
    let err = input_error(&moe, tensor3(vec![0.0; 2 * 3 * 6], [2, 3, 6], &device));
    assert!(err.contains("d_model = 8"), "{err}");
}

#[test]
fn empty_batch_is_an_input_error() {
    let (moe, device) = layer(MoeConfig::new(8, 8, 4));
    let err = input_error(&moe, tensor3(vec![], [0, 5, 8], &device));
    assert!(err.contains("empty batch"), "{err}");
}

#[test]
fn groups_must_divide_tokens() {
    let (moe, device) = layer(MoeConfig::new(8, 8, 4).with_groups(3));
    let err = input_error(&moe, tensor3(vec![0.1; 4 * 8], [1, 4, 8], &device));
    assert!(err.contains("groups = 3"), "{err}");
}

#[test]
fn nan_and_inf_inputs_are_reported_for_both_score_functions() {
    for score in [ScoreFunction::Softmax, ScoreFunction::Sigmoid] {
        let (moe, device) = layer(MoeConfig::new(8, 8, 4).with_score_function(score));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = normal_vec(3 * 8, 1);
            x[13] = bad; // token 1
            // The forward pass reads nothing back; reading the routing reports the token.
            let x = tensor3(x, [1, 3, 8], &device);
            let out = moe.forward(x.clone());
            // try_forward reads the routing and reports the same token.
            for err in [
                out.routing.counts().unwrap_err(),
                out.routing.plan().unwrap_err(),
                moe.try_forward(x).unwrap_err(),
            ] {
                match err {
                    MoeError::NonFinite { token, .. } => assert_eq!(token, 1),
                    other => panic!("expected NonFinite, got {other}"),
                }
            }
        }
    }
}

/// Expert parallel: a placement that does not fit the layer, a layer already spread, a wgpu
/// layer (the exchange goes through host memory), and a forward outside `with_collective`.
#[test]
fn expert_parallel_misuse_is_refused_with_a_message() {
    use burn_moe::dist::ExpertShard;
    use burn_moe::predict::placement::Placement;
    let (moe, device) = layer(MoeConfig::new(8, 8, 4));
    let shard = |experts| ExpertShard::new(Placement::contiguous(4, 2), experts, 0);
    let err = shard(5).unwrap_err().to_string();
    assert!(err.contains("places 4 experts, the layer has 5"), "{err}");
    let spread = moe.clone().expert_parallel(shard(4).unwrap()).unwrap();
    assert_eq!(spread.experts.experts(), 2);
    let err = spread
        .clone()
        .expert_parallel(shard(4).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("already expert-parallel"), "{err}");
    let err = spread
        .try_forward(tensor3(normal_vec(2 * 8, 3), [1, 2, 8], &device))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside burn_moe::dist::with_collective"),
        "{err}"
    );
    if let Some(gpu) = wgpu_device(false) {
        let err = MoeConfig::new(8, 8, 4)
            .init(&gpu)
            .expert_parallel(shard(4).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("CPU backends (flex, ndarray) only"), "{err}");
    }
}
