//! The routing kernels against the portable tensor-op path: on the same wgpu device (WGSL vs
//! tensor ops) and on each CPU backend (tensor ops), for tokens x experts, top-2.
//!
//! `cargo bench --bench routing` (options: `--tokens 1024,16384,131072 --experts 16,64,256
//! --reps 5 --backends wgpu,ndarray,flex --paths wgsl,portable`). Each time is the median of
//! `reps` calls after one warm-up call, timed until the result is read back. Steps: `gate`
//! (scores + top-k with an offset), `hist` (histogram + queue positions, capacity 1.25),
//! `lossfree` (bias update), `bip` (one dual iteration). Compare ratios within one run; the
//! machine is noisy. A step whose warm-up call takes over 10 s is timed with one call after it.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_moe::BackendKind;
use burn_moe::balance::LossFreeUpdate;
use burn_moe::device::probe_wgpu_adapter;
use burn_moe::kernels::{self, GateRule, KernelPath};

fn list(name: &str, default: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.as_str())
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn numbers(name: &str, default: &str) -> Vec<usize> {
    list(name, default)
        .iter()
        .map(|v| v.parse().expect("a number"))
        .collect()
}

/// Median of `reps` timed calls after a warm-up call; a step whose warm-up call takes over 10 s
/// is timed with one more call only.
fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    let start = Instant::now();
    f();
    let warm = start.elapsed().as_secs_f64() * 1e3;
    if warm > 10_000.0 {
        // Slow step (or first-use compile and autotune): one more call, timed on its own.
        let start = Instant::now();
        f();
        return start.elapsed().as_secs_f64() * 1e3;
    }
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

/// Milliseconds of each step `[gate, hist, lossfree, bip]` on `device` with `path`.
fn time_steps(
    device: &Device,
    on_wgpu: bool,
    path: KernelPath,
    n: usize,
    m: usize,
    reps: usize,
) -> [f64; 4] {
    let k = 2;
    let logits: Vec<f32> = (0..n * m)
        .map(|i| ((i.wrapping_mul(2_654_435_761)) % 10_007) as f32 / 2_000.0 - 2.5)
        .collect();
    let logits = Tensor::<2>::from_data(TensorData::new(logits, [n, m]), device);
    let scores = burn::tensor::activation::softmax(logits.clone(), 1);
    let offset = Tensor::<1>::zeros([m], device);
    let capacity = Some((1.25 * k as f64 * n as f64 / m as f64).ceil() as usize);
    let top = kernels::gate_topk(
        logits.clone(),
        offset.clone(),
        None,
        GateRule::top_k(k),
        path,
    )
    .expect("gate");
    let (indices, used): (Tensor<2, Int>, Tensor<2, Int>) = (top.indices, top.used);
    let hist = kernels::expert_histogram(indices.clone(), used.clone(), m, 1, capacity, path)
        .expect("hist");
    let requested = hist.requested;
    let gate = median_ms(
        || {
            let t = kernels::gate_topk(
                logits.clone(),
                offset.clone(),
                None,
                GateRule::top_k(k),
                path,
            )
            .expect("gate");
            std::hint::black_box(t.indices.into_data().as_bytes()[0]);
        },
        reps,
    );
    // The tensor-op histogram builds a [tokens * k, experts] one-hot and a cumulative sum over
    // it; on lavapipe that took 6.7 s at 16,384 tokens x 16 experts, so larger shapes are skipped
    // there (reported as NaN).
    let skip_hist = path == KernelPath::Portable && on_wgpu && n * k * m > 600_000;
    let hist = if skip_hist {
        f64::NAN
    } else {
        median_ms(
            || {
                let h =
                    kernels::expert_histogram(indices.clone(), used.clone(), m, 1, capacity, path)
                        .expect("hist");
                std::hint::black_box(h.positions.into_data().as_bytes()[0]);
            },
            reps,
        )
    };

    let lossfree = median_ms(
        || {
            let b = kernels::loss_free_update(
                offset.clone(),
                requested.clone(),
                1e-3,
                LossFreeUpdate::Sign,
                path,
            )
            .expect("loss-free");
            std::hint::black_box(b.into_data().as_bytes()[0]);
        },
        reps,
    );
    let bip = median_ms(
        || {
            let q =
                kernels::bip_dual(scores.clone(), offset.clone(), k, 1, true, path).expect("bip");
            std::hint::black_box(q.into_data().as_bytes()[0]);
        },
        reps,
    );
    [gate, hist, lossfree, bip]
}

fn main() {
    let tokens = numbers("--tokens", "1024,16384,131072");
    let experts = numbers("--experts", "16,64,256");
    let reps = numbers("--reps", "5")[0];
    let backends: Vec<BackendKind> = list("--backends", "wgpu,ndarray,flex")
        .iter()
        .map(|b| b.parse().expect("a backend"))
        .collect();
    println!("routing steps, top-2, capacity 1.25; median ms of {reps} calls");
    println!(
        "{:<8} {:<9} {:>7} {:>4} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "backend", "path", "tokens", "m", "gate", "hist", "lossfree", "bip", "total"
    );
    for backend in backends {
        if backend == BackendKind::Wgpu && probe_wgpu_adapter().is_err() {
            println!("{backend:<8} skipped: no wgpu adapter");
            continue;
        }
        let device = backend.device(false).expect("device");
        let wanted = list("--paths", "wgsl,portable");
        let paths: Vec<(&str, KernelPath)> = if backend == BackendKind::Wgpu {
            vec![
                ("wgsl", KernelPath::Wgsl),
                ("portable", KernelPath::Portable),
            ]
        } else {
            vec![("portable", KernelPath::Portable)]
        }
        .into_iter()
        .filter(|(label, _)| wanted.iter().any(|w| w == label))
        .collect();
        for &n in &tokens {
            for &m in &experts {
                let mut totals = Vec::new();
                for &(label, path) in &paths {
                    let t = time_steps(&device, backend == BackendKind::Wgpu, path, n, m, reps);
                    let total: f64 = t.iter().sum();
                    totals.push(t);
                    println!(
                        "{:<8} {:<9} {:>7} {:>4} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                        backend.to_string(),
                        label,
                        n,
                        m,
                        t[0],
                        t[1],
                        t[2],
                        t[3],
                        total
                    );
                }
                if let [w, p] = &totals[..] {
                    let r = |i: usize| w[i] / p[i];
                    let total = w.iter().sum::<f64>() / p.iter().sum::<f64>();
                    println!(
                        "{:<8} {:<9} {:>7} {:>4} {:>9.2}x {:>9.2}x {:>9.2}x {:>9.2}x {:>9.2}x",
                        "wgpu",
                        "ratio",
                        n,
                        m,
                        r(0),
                        r(1),
                        r(2),
                        r(3),
                        total
                    );
                }
            }
        }
    }
}
