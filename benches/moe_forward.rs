//! Layer forward time on each backend for one shape, and the share of it spent routing, with
//! routing on the host (reference path) and with the routing kernels (WGSL on wgpu, tensor ops
//! on the CPU backends; on wgpu also the tensor-op path).
//!
//! `cargo bench --bench moe_forward` (add `-- --tokens N --experts M` to change the shape).
//! Times are medians of repeated calls after warm-up, each call timed until its output is read
//! back to the host; compare the ratios printed, not the absolute numbers.

use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use burn_moe::device::probe_wgpu_adapter;
use burn_moe::kernels::KernelPath;
use burn_moe::{BackendKind, MoeConfig};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let tokens = arg("--tokens", 4096);
    let experts = arg("--experts", 16);
    let (d_model, d_ff) = (arg("--d-model", 256), arg("--d-ff", 512));
    let reps = arg("--reps", 7);
    let config = MoeConfig::new(d_model, d_ff, experts)
        .with_top_k(2)
        .with_capacity_factor(Some(1.25));
    let x: Vec<f32> = (0..tokens * d_model)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    println!(
        "MoE forward: {tokens} tokens, d_model {d_model}, d_ff {d_ff}, {experts} experts, top-2, capacity 1.25"
    );
    println!(
        "{:<8} {:<9} {:>12} {:>12} {:>10} {:>14}",
        "backend", "routing", "forward ms", "route ms", "route %", "tokens/s"
    );
    let mut baseline = None;
    for backend in BackendKind::ALL {
        if backend == BackendKind::Wgpu && probe_wgpu_adapter().is_err() {
            println!("{backend:<8} skipped: no wgpu adapter");
            continue;
        }
        let device: Device = backend.device(false).expect("device");
        device.seed(1);
        let mut moe = config.init(&device).expect("layer");
        let input =
            || Tensor::<3>::from_data(TensorData::new(x.clone(), [1, tokens, d_model]), &device);
        let mut paths = vec![("host", None), ("kernels", Some(KernelPath::Auto))];
        if backend == BackendKind::Wgpu {
            paths.push(("portable", Some(KernelPath::Portable)));
        }
        for (label, path) in paths {
            moe.config.kernel_path = path;
            let forward = median_ms(
                || {
                    std::hint::black_box(
                        moe.forward(input()).unwrap().output.into_data().as_bytes()[0],
                    );
                },
                reps,
            );
            let route = median_ms(
                || {
                    std::hint::black_box(
                        moe.route(input(), false)
                            .unwrap()
                            .gates
                            .into_data()
                            .as_bytes()[0],
                    );
                },
                reps,
            );
            let base = *baseline.get_or_insert(forward);
            println!(
                "{:<8} {:<9} {:>12.2} {:>12.2} {:>9.1}% {:>14.0}   ({:.2}x ndarray-host's time)",
                backend.to_string(),
                label,
                forward,
                route,
                100.0 * route / forward,
                tokens as f64 / (forward / 1e3),
                forward / base
            );
        }
    }
}
