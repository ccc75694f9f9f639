//! How often the layer reads device data back to the host: never in the forward and backward
//! passes, on every backend, with a capacity or dropless; once when the routing (or just its
//! per-expert counts) is read for telemetry, and not again for the same call.

mod common;

use burn::tensor::Distribution;
use burn::tensor::Tensor;
use burn_moe::kernels::KernelPath;
use burn_moe::moe::{MoeConfig, host_reads};
use common::devices;

#[test]
fn a_training_step_reads_nothing_back_until_the_routing_is_asked_for() {
    for (kind, device) in devices(true) {
        for (capacity, balancer, path) in [
            (None, "none", KernelPath::Auto),
            (Some(1.25), "loss-free", KernelPath::Auto),
            (None, "bip", KernelPath::Auto),
            (Some(1.0), "aux", KernelPath::Portable),
        ] {
            let what = format!("{kind} capacity {capacity:?} {balancer} path {path:?}");
            let moe = MoeConfig::new(16, 32, 8)
                .with_capacity_factor(capacity)
                .with_balancer(balancer.parse().unwrap())
                .with_kernel_path(path)
                .init(&device);
            let x = Tensor::<3>::random([2, 32, 16], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let before = host_reads();
            let out = moe.forward(x.clone());
            let out2 = moe.forward(x);
            let after_forward = host_reads();
            assert_eq!(after_forward, before, "{what}: forward");
            let loss = (out.output + out2.output).sum();
            let loss = match out.balance_loss {
                Some(l) => loss + l,
                None => loss,
            };
            let grads = loss.backward();
            assert!(moe.experts.w_out.val().grad(&grads).is_some(), "{what}");
            assert_eq!(host_reads(), after_forward, "{what}: backward");
            // Telemetry: one read for the routing of a call, and none the second time.
            assert!(
                out.routing
                    .plan()
                    .unwrap()
                    .requested_counts
                    .iter()
                    .sum::<usize>()
                    > 0
            );
            let _ = out.routing.host().unwrap();
            let read = host_reads() - after_forward;
            assert_eq!(read, 1, "{what}: telemetry");
            // The counts alone: one small read, none once the routing was read.
            let _ = out2.routing.counts().unwrap();
            let _ = out.routing.counts().unwrap();
            assert_eq!(host_reads() - after_forward, 2, "{what}: counts");
        }
    }
}
