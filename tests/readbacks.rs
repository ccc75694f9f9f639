//! How often a training step of the layer reads device data back to the host: today one read
//! per layer call (the routing decisions, with the balancer state and the random draws in the
//! same transaction), none in the backward pass. The device-resident pipeline aims at zero.

mod common;

use burn::tensor::Distribution;
use burn::tensor::Tensor;
use burn_moe::kernels::KernelPath;
use burn_moe::moe::{MoeConfig, host_reads};
use common::devices;

#[test]
fn a_training_step_reads_back_once_per_layer_call_and_never_in_backward() {
    for (kind, device) in devices(true) {
        for (capacity, balancer, path) in [
            (None, "none", Some(KernelPath::Auto)),
            (Some(1.25), "loss-free", Some(KernelPath::Auto)),
            (None, "bip", Some(KernelPath::Auto)),
            (Some(1.0), "aux", None),
        ] {
            let what = format!("{kind} capacity {capacity:?} {balancer} path {path:?}");
            let moe = MoeConfig::new(16, 32, 8)
                .with_capacity_factor(capacity)
                .with_balancer(balancer.parse().unwrap())
                .with_kernel_path(path)
                .init(&device)
                .unwrap();
            let x = Tensor::<3>::random([2, 32, 16], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let before = host_reads();
            let out = moe.forward(x.clone()).unwrap();
            let out2 = moe.forward(x).unwrap();
            let after_forward = host_reads();
            assert_eq!(after_forward - before, 2, "{what}: forward");
            let loss = (out.output + out2.output).sum();
            let loss = match out.balance_loss {
                Some(l) => loss + l,
                None => loss,
            };
            let grads = loss.backward();
            assert!(moe.experts.w_out.val().grad(&grads).is_some(), "{what}");
            assert_eq!(host_reads(), after_forward, "{what}: backward");
        }
    }
}
