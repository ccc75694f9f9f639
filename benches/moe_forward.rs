//! Where a MoE layer's time goes, per backend, for one shape: the four stages (route,
//! dispatch, experts, combine) of an inference forward, and the routing share of a training
//! step (forward + backward) for each balancer.
//!
//! `cargo bench --bench moe_forward` (options: `-- --tokens N --experts M --d-model D --top-k K
//! --reps R --backends ndarray,flex,wgpu --balancers none,aux,loss-free,bip`).
//! Times are medians of repeated calls after warm-up, each stage timed until its result is
//! reduced to a scalar on the host; compare the ratios printed, not the absolute numbers.

use std::hint::black_box;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use burn_moe::balance::BalancerConfig;
use burn_moe::device::probe_wgpu_adapter;
use burn_moe::moe::TokenDispatcher;
use burn_moe::{BackendKind, MoeConfig};

mod common;
use common::bench_input;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn num(name: &str, default: usize) -> usize {
    arg(name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name} takes a number"))
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

fn scalar<const D: usize>(t: Tensor<D>) -> f32 {
    t.sum().into_scalar::<f32>()
}

fn main() {
    let tokens = num("--tokens", 8192);
    let experts = num("--experts", 16);
    let d_model = num("--d-model", 256);
    let top_k = num("--top-k", 2);
    let reps = num("--reps", 7);
    let backends = arg("--backends", "ndarray,flex,wgpu");
    let balancers = arg("--balancers", "none,aux,loss-free,bip");
    let config = MoeConfig::new(d_model, 2 * d_model, experts)
        .with_top_k(top_k)
        .with_capacity_factor(Some(1.25));
    let x = bench_input(tokens, d_model);
    println!(
        "MoE layer: {tokens} tokens, d_model {d_model}, d_ff {}, {experts} experts, top-{top_k}, capacity 1.25",
        2 * d_model
    );
    println!(
        "\ninference forward, ms per stage (share of the sum)\n{:<16} {:>15} {:>15} {:>15} {:>15} {:>10} {:>10}",
        "backend", "route", "dispatch", "experts", "combine", "sum", "forward"
    );
    let chosen: Vec<BackendKind> = BackendKind::ALL
        .into_iter()
        .filter(|b| backends.split(',').any(|w| w == b.to_string()))
        .filter(|b| {
            let ok = *b != BackendKind::Wgpu || probe_wgpu_adapter().is_ok();
            if !ok {
                println!("{b:<8} skipped: no wgpu adapter");
            }
            ok
        })
        .collect();
    for &backend in &chosen {
        let device: Device = backend.device(false).expect("device");
        device.seed(1);
        let moe = config.init(&device);
        let input =
            || Tensor::<3>::from_data(TensorData::new(x.clone(), [1, tokens, d_model]), &device);
        let flat = input().reshape([tokens, d_model]);
        let routed = moe.route(input(), false);
        let route = median_ms(
            || {
                black_box(scalar(moe.route(input(), false).gates));
            },
            reps,
        );
        let forward = median_ms(
            || {
                black_box(scalar(moe.forward(input()).output));
            },
            reps,
        );
        let dispatcher = TokenDispatcher::new(&routed.routing.device);
        let sorted = dispatcher.dispatch(flat.clone());
        let expert_out = dispatcher.run_experts(&moe.experts, sorted.clone());
        let dispatch = median_ms(
            || {
                let d = TokenDispatcher::new(&routed.routing.device);
                black_box(scalar(d.dispatch(flat.clone())));
            },
            reps,
        );
        let experts_ms = median_ms(
            || {
                black_box(scalar(dispatcher.run_experts(&moe.experts, sorted.clone())));
            },
            reps,
        );
        let combine = median_ms(
            || {
                black_box(scalar(
                    dispatcher.combine(expert_out.clone(), routed.gates.clone()),
                ));
            },
            reps,
        );
        let sum = route + dispatch + experts_ms + combine;
        let cell = |ms: f64| format!("{ms:8.1} ({:4.1}%)", 100.0 * ms / sum);
        println!(
            "{:<16} {:>15} {:>15} {:>15} {:>15} {:>10.1} {:>10.1}",
            backend.to_string(),
            cell(route),
            cell(dispatch),
            cell(experts_ms),
            cell(combine),
            sum,
            forward
        );
    }

    println!(
        "\ntraining step (forward + backward on an autodiff device), routing share: scores, top-k,\nhistograms and the balancer's update or loss term\n{:<8} {:<10} {:>12} {:>12} {:>9}",
        "backend", "balancer", "route ms", "fwd+bwd ms", "route %"
    );
    for &backend in &chosen {
        let device: Device = backend.device(true).expect("device");
        for name in balancers.split(',') {
            let balancer: BalancerConfig = name.parse().expect("balancer name");
            device.seed(1);
            let moe = config.clone().with_balancer(balancer).init(&device);
            let input = || {
                Tensor::<3>::from_data(TensorData::new(x.clone(), [1, tokens, d_model]), &device)
            };
            // Routing = scores, top-k, histograms, the balancer's update or loss term.
            let route = median_ms(
                || {
                    let out = moe.route(input(), true);
                    black_box(scalar(out.gates));
                    if let Some(l) = out.balance_loss {
                        black_box(scalar(l));
                    }
                },
                reps,
            );
            let forward = median_ms(
                || {
                    let out = moe.forward(input());
                    let mut loss = out.output.sum();
                    if let Some(l) = out.balance_loss {
                        loss = loss + l;
                    }
                    let grads = loss.backward();
                    let g = moe.experts.w_out.val().grad(&grads).expect("gradient");
                    black_box(scalar(g));
                },
                reps,
            );
            println!(
                "{:<8} {:<10} {:>12.2} {:>12.2} {:>8.1}%",
                backend.to_string(),
                name,
                route,
                forward,
                100.0 * route / forward
            );
        }
    }
}
