//! MoE layer throughput (tokens/s): forward, and forward + backward, on ndarray, flex and wgpu.
//!
//! ```text
//! cargo bench --bench moe_layer                              # the quick grid
//! BURN_MOE_BENCH_GRID=full cargo bench --bench moe_layer     # d_model 256/512, experts 8/16/64,
//!                                                            # top-1/2, 2k-32k tokens, cap/dropless
//! BURN_MOE_BENCH_SHAPES=512:64:2:8192:cap,256:8:1:2048:dropless cargo bench --bench moe_layer
//! cargo bench --bench moe_layer -- 'fwd/flex'                # criterion's filter
//! ```
//! A shape is `d_model:experts:top_k:tokens:mode`, mode `cap` (capacity factor 1.25) or
//! `dropless`. Experts are SwiGLU with `d_ff = 2 * d_model`, softmax top-k gates, no balancer.
//! `BURN_MOE_BENCH_BACKENDS=ndarray,flex` limits the backends. `benches/compare.sh` runs the same
//! shapes in PyTorch and prints the ratios.
//!
//! Each iteration ends by reading a scalar back to the host (the output's sum, or the sum of the
//! expert weights' gradient), so lazy backends finish their work inside the timed region.
//!
//! `matmul/<backend>` times, per shape, two dense matmuls with the experts' FLOPs of one forward
//! pass (`[tokens * k, d] @ [d, 2 d_ff]` and `[tokens * k, d_ff] @ [d_ff, d]`, `6 d d_ff` per
//! assignment): the FLOP rate a grouped expert op could reach on that backend.
//!
//! `grouped/<backend>` times the experts' grouped matmul alone, per shape (mode ignored), on
//! the `tokens * k` rows of an expert-sorted buffer with uneven groups (0.8x and 1.2x the mean)
//! and weights `[experts, d, 4 d]` (the gate and up projections): `op` is the backend's own
//! implementation (WGSL on wgpu, CPU kernels on flex/ndarray), `blocks` the tensor-op one over
//! capacity-sized blocks (capacity 1.25x the mean, the padding computed too), `dense` one plain
//! matmul of the same FLOPs. Criterion's throughput is in FLOP/s (`elem/s`).

use std::hint::black_box;
use std::time::Duration;

use burn::tensor::{Device, Int, Tensor, TensorData};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};

use burn_moe::device::probe_wgpu_adapter;
use burn_moe::grouped::{GroupOffsets, grouped_matmul, portable};
use burn_moe::{BackendKind, Moe, MoeConfig};

mod common;
use common::bench_input;

/// One benchmarked layer shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    d_model: usize,
    experts: usize,
    top_k: usize,
    tokens: usize,
    dropless: bool,
}

impl Shape {
    fn parse(s: &str) -> Shape {
        let f: Vec<&str> = s.trim().split(':').collect();
        let num = |i: usize| -> usize {
            f.get(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                panic!("bad shape `{s}`: expected d_model:experts:top_k:tokens:cap|dropless")
            })
        };
        let dropless = match f.get(4) {
            Some(&"cap") => false,
            Some(&"dropless") => true,
            _ => panic!("bad shape `{s}`: mode must be cap or dropless"),
        };
        Shape {
            d_model: num(0),
            experts: num(1),
            top_k: num(2),
            tokens: num(3),
            dropless,
        }
    }

    fn id(&self) -> String {
        format!(
            "d{}-e{}-k{}-t{}-{}",
            self.d_model,
            self.experts,
            self.top_k,
            self.tokens,
            if self.dropless { "dropless" } else { "cap" }
        )
    }

    fn config(&self) -> MoeConfig {
        MoeConfig::new(self.d_model, 2 * self.d_model, self.experts)
            .with_top_k(self.top_k)
            .with_capacity_factor((!self.dropless).then_some(1.25))
    }
}

fn shapes() -> Vec<Shape> {
    if let Ok(list) = std::env::var("BURN_MOE_BENCH_SHAPES") {
        return list
            .split(',')
            .filter(|s| !s.is_empty())
            .map(Shape::parse)
            .collect();
    }
    let full = std::env::var("BURN_MOE_BENCH_GRID").is_ok_and(|g| g == "full");
    let mut out = Vec::new();
    let (dims, experts, ks, tokens): (&[usize], &[usize], &[usize], &[usize]) = if full {
        (&[256, 512], &[8, 16, 64], &[1, 2], &[2048, 8192, 32768])
    } else {
        (&[256], &[16], &[2], &[2048, 8192])
    };
    for &d_model in dims {
        for &e in experts {
            for &top_k in ks {
                for &t in tokens {
                    for dropless in [false, true] {
                        out.push(Shape {
                            d_model,
                            experts: e,
                            top_k,
                            tokens: t,
                            dropless,
                        });
                    }
                }
            }
        }
    }
    out
}

fn backends() -> Vec<BackendKind> {
    let wanted = std::env::var("BURN_MOE_BENCH_BACKENDS").unwrap_or_default();
    BackendKind::ALL
        .into_iter()
        .filter(|b| wanted.is_empty() || wanted.split(',').any(|w| w == b.to_string()))
        .filter(|b| *b != BackendKind::Wgpu || probe_wgpu_adapter().is_ok())
        .collect()
}

fn input(shape: &Shape, device: &Device) -> Tensor<3> {
    let x = bench_input(shape.tokens, shape.d_model);
    Tensor::from_data(TensorData::new(x, [1, shape.tokens, shape.d_model]), device)
}

fn layer(shape: &Shape, device: &Device) -> Moe {
    device.seed(1);
    shape.config().init(device)
}

fn forward(moe: &Moe, x: &Tensor<3>) -> f32 {
    let out = moe.forward(x.clone());
    out.output.sum().into_scalar::<f32>()
}

fn forward_backward(moe: &Moe, x: &Tensor<3>) -> f32 {
    let out = moe.forward(x.clone());
    let grads = out.output.sum().backward();
    moe.experts
        .w_out
        .val()
        .grad(&grads)
        .expect("expert weights get a gradient")
        .sum()
        .into_scalar::<f32>()
}

/// The experts' forward FLOPs of `shape` as two dense matmuls.
fn dense_equivalent(a: &Tensor<2>, w_up: &Tensor<2>, h: &Tensor<2>, w_down: &Tensor<2>) -> f32 {
    let up = a.clone().matmul(w_up.clone());
    let down = h.clone().matmul(w_down.clone());
    up.sum().into_scalar::<f32>() + down.sum().into_scalar::<f32>()
}

/// The settings of every group: flat sampling, 10 samples of about 3 s after 1 s of warm-up.
fn settings(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

fn bench_matmul(c: &mut Criterion, backend: BackendKind, shapes: &[Shape]) {
    let mut group = c.benchmark_group(format!("matmul/{backend}"));
    settings(&mut group);
    for shape in shapes {
        let (rows, d, f) = (shape.tokens * shape.top_k, shape.d_model, 2 * shape.d_model);
        group.throughput(Throughput::Elements(shape.tokens as u64));
        let mut built: Option<[Tensor<2>; 4]> = None;
        group.bench_function(BenchmarkId::from_parameter(shape.id()), |b| {
            let [a, w_up, h, w_down] = built.get_or_insert_with(|| {
                let device = backend.device(false).expect("device");
                let t = |r: usize, c: usize| {
                    let v: Vec<f32> = bench_input(r, c).iter().map(|x| x * 0.05).collect();
                    Tensor::<2>::from_data(TensorData::new(v, [r, c]), &device)
                };
                [t(rows, d), t(d, 2 * f), t(rows, f), t(f, d)]
            });
            b.iter(|| black_box(dense_equivalent(a, w_up, h, w_down)));
        });
    }
    group.finish();
}

/// The inputs of the grouped matmul benchmark: `x [rows, d]`, offsets (uneven groups, capacity
/// 1.25x the mean), stacked weights `[experts, d, 4 d]`, and the dense `[d, 4 d]` weight.
fn grouped_inputs(
    shape: &Shape,
    device: &Device,
) -> (Tensor<2>, GroupOffsets, Tensor<3>, Tensor<2>) {
    let (rows, d, e) = (shape.tokens * shape.top_k, shape.d_model, shape.experts);
    let n = 4 * d;
    let mean = rows / e;
    let mut offsets = vec![0i64];
    for g in 0..e {
        let count = if g + 1 == e {
            rows - *offsets.last().unwrap() as usize
        } else if g % 2 == 0 {
            mean - mean / 5
        } else {
            mean + mean / 5
        };
        offsets.push(offsets.last().unwrap() + count as i64);
    }
    let capacity = (1.25 * rows as f64 / e as f64).ceil() as usize;
    let t = |shape: Vec<usize>| {
        let len: usize = shape.iter().product();
        let v: Vec<f32> = bench_input(len / d, d).iter().map(|x| x * 0.05).collect();
        TensorData::new(v, shape)
    };
    let groups = GroupOffsets {
        offsets: Tensor::<1, Int>::from_data(TensorData::new(offsets, [e + 1]), device),
        max_rows: Some(capacity),
    };
    (
        Tensor::from_data(t(vec![rows, d]), device),
        groups,
        Tensor::from_data(t(vec![e, d, n]), device),
        Tensor::from_data(t(vec![d, n]), device),
    )
}

fn bench_grouped(c: &mut Criterion, backend: BackendKind, shapes: &[Shape]) {
    let mut group = c.benchmark_group(format!("grouped/{backend}"));
    settings(&mut group);
    let mut seen = Vec::new();
    for shape in shapes
        .iter()
        .filter(|s| !s.dropless || !shapes.iter().any(|o| !o.dropless))
    {
        let id = format!(
            "d{}-e{}-k{}-t{}",
            shape.d_model, shape.experts, shape.top_k, shape.tokens
        );
        if seen.contains(&id) {
            continue;
        }
        seen.push(id.clone());
        let flops = 2 * shape.tokens * shape.top_k * shape.d_model * 4 * shape.d_model;
        group.throughput(Throughput::Elements(flops as u64));
        let mut built = None;
        for kind in ["op", "blocks", "dense"] {
            group.bench_function(BenchmarkId::new(kind, &id), |b| {
                let (x, groups, w, dense) = built.get_or_insert_with(|| {
                    let device = backend.device(false).expect("device");
                    grouped_inputs(shape, &device)
                });
                let run = || -> f32 {
                    let y = match kind {
                        "op" => grouped_matmul(x.clone(), groups, w.clone()),
                        "blocks" => portable::grouped_matmul(x.clone(), groups, w.clone()),
                        _ => x.clone().matmul(dense.clone()),
                    };
                    y.sum().into_scalar::<f32>()
                };
                black_box(run());
                b.iter(|| black_box(run()));
            });
        }
    }
    group.finish();
}

fn bench(c: &mut Criterion) {
    let shapes = shapes();
    for backend in backends() {
        bench_matmul(c, backend, &shapes);
        bench_grouped(c, backend, &shapes);
        for (pass, autodiff) in [("fwd", false), ("fwdbwd", true)] {
            let mut group = c.benchmark_group(format!("{pass}/{backend}"));
            settings(&mut group);
            for shape in &shapes {
                group.throughput(Throughput::Elements(shape.tokens as u64));
                let run = if autodiff { forward_backward } else { forward };
                // Criterion calls the closure once per sample: the layer is built on the first
                // call only (so shapes left out by a filter cost nothing) and run once untimed,
                // because Burn initialises parameters lazily on first use and that one-off cost
                // (about 0.6 s for 64 experts at d_model 512) is not the layer's speed.
                let mut built: Option<(Moe, Tensor<3>)> = None;
                group.bench_function(BenchmarkId::from_parameter(shape.id()), |b| {
                    let (moe, x) = built.get_or_insert_with(|| {
                        let device = backend.device(autodiff).expect("device");
                        let moe = layer(shape, &device);
                        let x = input(shape, &device);
                        let x = if autodiff { x.require_grad() } else { x };
                        black_box(run(&moe, &x));
                        (moe, x)
                    });
                    b.iter(|| black_box(run(moe, x)));
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
