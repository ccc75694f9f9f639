//! The grouped matmul against a per-group slice-and-matmul reference: values and both
//! gradients, on ndarray, flex and wgpu, through the backend's own implementation and through
//! the tensor-op one. Cases: ragged groups, empty groups, one row, 256 groups, rows past the
//! last group, several tiles of odd sizes. And the experts' SwiGLU against `silu(a) * u` in
//! tensor ops, and the fused inference FFN against the unfused one.

mod common;

use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn_moe::grouped::{GroupOffsets, grouped_matmul, grouped_swiglu_ffn, portable, swiglu};
use common::*;

const ATOL: f32 = 1e-5;
const RTOL: f32 = 1e-4;

/// Per group: `x[rows] @ w[g]`, the rows after the last group zero. Burn's autodiff on the
/// slices gives the reference gradients.
fn reference(x: Tensor<2>, counts: &[usize], w: Tensor<3>) -> Tensor<2> {
    let [rows, _] = x.dims();
    let [_, _, n] = w.dims();
    let mut parts = Vec::new();
    let mut start = 0;
    for (g, &count) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        let wg = w.clone().narrow(0, g, 1).squeeze_dim::<2>(0);
        parts.push(x.clone().narrow(0, start, count).matmul(wg));
        start += count;
    }
    if start < rows {
        parts.push(Tensor::zeros([rows - start, n], &x.device()));
    }
    Tensor::cat(parts, 0)
}

struct Case {
    name: &'static str,
    counts: Vec<usize>,
    tail: usize,
    k: usize,
    n: usize,
}

fn cases() -> Vec<Case> {
    let ragged = vec![5, 0, 17, 1, 0, 9];
    let many: Vec<usize> = (0..256).map(|g| [0, 1, 3, 0, 2][g % 5]).collect();
    vec![
        Case {
            name: "ragged with empty groups",
            counts: ragged.clone(),
            tail: 0,
            k: 12,
            n: 7,
        },
        Case {
            name: "rows past the last group",
            counts: ragged,
            tail: 6,
            k: 5,
            n: 9,
        },
        Case {
            name: "one row",
            counts: vec![0, 1, 0],
            tail: 0,
            k: 8,
            n: 4,
        },
        Case {
            name: "256 groups",
            counts: many,
            tail: 3,
            k: 6,
            n: 5,
        },
        Case {
            // Several row tiles in a group, a partial one, column tiles and K steps that the
            // sizes do not fill (the WGSL kernels' tiles are 64 x 64, K by 16).
            name: "several tiles, odd sizes",
            counts: vec![130, 0, 67, 1],
            tail: 5,
            k: 37,
            n: 70,
        },
        Case {
            // Widths the WGSL kernels read as vec4 unpadded, N not a multiple of their 8.
            name: "several tiles, widths of 4",
            counts: vec![70, 3, 0, 40],
            tail: 2,
            k: 64,
            n: 132,
        },
        Case {
            name: "all rows in one group",
            counts: vec![0, 0, 40],
            tail: 0,
            k: 16,
            n: 16,
        },
    ]
}

fn offsets(counts: &[usize], device: &Device) -> GroupOffsets {
    let mut offsets = vec![0i64];
    for &c in counts {
        offsets.push(offsets.last().unwrap() + c as i64);
    }
    let len = offsets.len();
    GroupOffsets {
        offsets: Tensor::<1, Int>::from_data(TensorData::new(offsets, [len]), device),
        max_rows: Some(counts.iter().copied().max().unwrap_or(0)),
    }
}

/// Output, dX and dW of `op` for `case`, with the loss `sum(y * c)` for a fixed `c`.
fn run(
    case: &Case,
    device: &Device,
    op: impl Fn(Tensor<2>, &[usize], Tensor<3>) -> Tensor<2>,
) -> [Vec<f32>; 3] {
    let groups = case.counts.len();
    let rows = case.counts.iter().sum::<usize>() + case.tail;
    let x = Tensor::<2>::from_data(
        TensorData::new(normal_vec(rows * case.k, 1), [rows, case.k]),
        device,
    )
    .require_grad();
    let w = Tensor::<3>::from_data(
        TensorData::new(
            normal_vec(groups * case.k * case.n, 2),
            [groups, case.k, case.n],
        ),
        device,
    )
    .require_grad();
    let c = Tensor::<2>::from_data(
        TensorData::new(normal_vec(rows * case.n, 3), [rows, case.n]),
        device,
    );
    let y = op(x.clone(), &case.counts, w.clone());
    let grads = (y.clone() * c).sum().backward();
    [
        host(y),
        host(x.grad(&grads).expect("dX")),
        host(w.grad(&grads).expect("dW")),
    ]
}

#[test]
fn grouped_matmul_matches_the_per_group_reference() {
    for (kind, device) in devices(true) {
        for case in cases() {
            let want = run(&case, &device, reference);
            let native = run(&case, &device, |x, counts, w| {
                grouped_matmul(x, &offsets(counts, &device), w)
            });
            let blocks = run(&case, &device, |x, counts, w| {
                portable::grouped_matmul(x, &offsets(counts, &device), w)
            });
            for (what, got) in [("native", &native), ("tensor ops", &blocks)] {
                for (i, part) in ["output", "dX", "dW"].iter().enumerate() {
                    assert_close(
                        &format!("{kind:?} {what} {}: {part}", case.name),
                        &got[i],
                        &want[i],
                        ATOL,
                        RTOL,
                    );
                }
            }
            // Empty groups get an exactly zero weight gradient, rows past the last group an
            // exactly zero input gradient.
            let (k, n) = (case.k, case.n);
            for (g, _) in case.counts.iter().enumerate().filter(|(_, c)| **c == 0) {
                assert!(
                    native[2][g * k * n..(g + 1) * k * n]
                        .iter()
                        .all(|v| *v == 0.0)
                );
            }
            let routed = case.counts.iter().sum::<usize>() * k;
            assert!(
                native[1][routed..].iter().all(|v| *v == 0.0),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn the_backends_agree() {
    let case = &cases()[0];
    let results: Vec<_> = devices(true)
        .into_iter()
        .map(|(kind, device)| {
            let r = run(case, &device, |x, counts, w| {
                grouped_matmul(x, &offsets(counts, &device), w)
            });
            (kind, r)
        })
        .collect();
    let (_, base) = &results[0];
    for (kind, r) in &results[1..] {
        for i in 0..3 {
            assert_close(&format!("{kind:?} part {i}"), &r[i], &base[i], ATOL, RTOL);
        }
    }
}

#[test]
#[should_panic(expected = "must rise from 0")]
fn offsets_beyond_the_rows_panic_with_a_message() {
    let device = ndarray(false);
    let x = Tensor::<2>::zeros([4, 3], &device);
    let w = Tensor::<3>::zeros([2, 3, 2], &device);
    let offsets = GroupOffsets {
        offsets: Tensor::from_data(TensorData::new(vec![0i64, 3, 9], [3]), &device),
        max_rows: Some(6),
    };
    let _ = grouped_matmul(x, &offsets, w);
}

#[test]
fn swiglu_matches_tensor_ops_with_gradients() {
    for (kind, device) in devices(true) {
        let shape = [37, 29];
        let input = |seed| {
            Tensor::<2>::from_data(TensorData::new(normal_vec(37 * 29, seed), shape), &device)
                .mul_scalar(4.0)
                .require_grad()
        };
        let c = Tensor::<2>::from_data(TensorData::new(normal_vec(37 * 29, 9), shape), &device);
        let run = |fused: bool| {
            let (a, u) = (input(7), input(8));
            let h = if fused {
                swiglu(a.clone(), u.clone())
            } else {
                silu(a.clone()) * u.clone()
            };
            let grads = (h.clone() * c.clone()).sum().backward();
            [h.inner(), a.grad(&grads).unwrap(), u.grad(&grads).unwrap()].map(host)
        };
        let (fused, plain) = (run(true), run(false));
        for (i, part) in ["h", "da", "du"].iter().enumerate() {
            assert_close(
                &format!("{kind:?} swiglu {part}"),
                &fused[i],
                &plain[i],
                ATOL,
                RTOL,
            );
        }
    }
}

/// The fused inference FFN (per row block on the CPU, the SwiGLU in the GEMM's epilogue on wgpu)
/// against its three grouped matmuls and a tensor-op SwiGLU.
#[test]
fn fused_inference_ffn_matches_the_unfused_form() {
    for (kind, device) in devices(false) {
        for case in cases() {
            let (d, f, groups) = (case.k, case.n + 3, case.counts.len());
            let rows = case.counts.iter().sum::<usize>() + case.tail;
            let t2 = |seed, shape: [usize; 2]| {
                Tensor::<2>::from_data(
                    TensorData::new(normal_vec(shape[0] * shape[1], seed), shape),
                    &device,
                )
            };
            // Weights at the usual initial scale, 1 / sqrt(fan-in), so that the products stay
            // O(1) and the tolerance measures the kernels, not the cancellation of large sums.
            let t3 = |seed, shape: [usize; 3]| {
                let n = shape.iter().product();
                Tensor::<3>::from_data(TensorData::new(normal_vec(n, seed), shape), &device)
                    .div_scalar((shape[1] as f32).sqrt())
            };
            let x = t2(1, [rows, d]);
            let (w_in, w_gate, w_out) = (
                t3(2, [groups, d, f]),
                t3(3, [groups, d, f]),
                t3(4, [groups, f, d]),
            );
            let g = offsets(&case.counts, &device);
            let fused =
                grouped_swiglu_ffn(x.clone(), &g, w_in.clone(), w_gate.clone(), w_out.clone());
            let hidden = silu(grouped_matmul(x.clone(), &g, w_gate)) * grouped_matmul(x, &g, w_in);
            let want = reference(hidden, &case.counts, w_out);
            assert_close(
                &format!("{kind:?} {}", case.name),
                &host(fused),
                &host(want),
                ATOL,
                RTOL,
            );
        }
    }
}
