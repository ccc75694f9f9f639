//! SwiGLU `silu(a) * u` on the CPU backends as one pass over memory, forward and backward,
//! with an `exp` the compiler vectorises (the C library's `expf` is one scalar call per
//! value). Wgpu runs the same function as tensor ops, which its fusion already joins.

// ndarray is deprecated in Burn 0.22; it stays this project's reference backend.
#![allow(deprecated)]

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, NdArray, backend_extension};
use burn::tensor::TensorData;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::op::{contiguous_f32, f32_values, read};

/// Values per rayon task.
const CHUNK: usize = 16 * 1024;

/// `e^x` for `f32`, within 2 ulp on `[-87, 88]` (0 below, clamped above): `2^n * p(r)` with
/// `x = n ln 2 + r`, `|r| <= ln 2 / 2` and `p` a degree-6 Taylor polynomial; straight-line
/// code, so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Round to nearest by adding and removing 1.5 * 2^23 (`f32::round` is a library call,
    // which would stop the vectoriser).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    // ln 2 in two parts, so `n * ln2_hi` is exact.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// A vector of `len` values, each written once by `fill(start, chunk)` over chunks in
/// parallel (no zero-fill first).
fn filled(len: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| fill(c * CHUNK, chunk));
    // SAFETY: the chunks cover `0..len` and `fill` writes every value of its chunk (the caller
    // below assigns each element of the chunk in a loop over it).
    unsafe { out.set_len(len) };
    out
}

/// `h = a / (1 + e^-a) * u`.
fn forward(a: &[f32], u: &[f32]) -> Vec<f32> {
    filled(a.len(), |start, h| {
        let (a, u) = (&a[start..start + h.len()], &u[start..start + h.len()]);
        for i in 0..h.len() {
            h[i] = MaybeUninit::new(a[i] / (1.0 + exp(-a[i])) * u[i]);
        }
    })
}

/// `(da, du)`: `da = dh * u * s (1 + a (1 - s))`, `du = dh * a s`, with `s = sigmoid(a)`, in
/// one pass.
fn backward(a: &[f32], u: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let len = a.len();
    let (mut da, mut du) = (Vec::with_capacity(len), Vec::with_capacity(len));
    da.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .zip(du.spare_capacity_mut()[..len].par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, (da, du))| {
            let (start, end) = (c * CHUNK, c * CHUNK + da.len());
            let (a, u, dh) = (&a[start..end], &u[start..end], &dh[start..end]);
            for i in 0..da.len() {
                let s = 1.0 / (1.0 + exp(-a[i]));
                da[i] = MaybeUninit::new(dh[i] * u[i] * s * (1.0 + a[i] * (1.0 - s)));
                du[i] = MaybeUninit::new(dh[i] * a[i] * s);
            }
        });
    // SAFETY: the chunks cover `0..len` and the loop writes every value of both.
    unsafe {
        da.set_len(len);
        du.set_len(len);
    }
    (da, du)
}

/// SwiGLU as backend operations.
#[backend_extension(Flex, NdArray, Autodiff)]
pub trait SwiGlu: Backend {
    /// `silu(a) * u`, element-wise; `a` and `u` of one shape.
    fn swiglu(a: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradients `(da, du)` of [`swiglu`](SwiGlu::swiglu) for the upstream gradient `dh`.
    fn swiglu_backward(
        a: FloatTensor<Self>,
        u: FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Flex reads its tensors in place: the saved activations are shared with the autodiff graph,
/// and going through `TensorData` would copy them.
impl SwiGlu for Flex {
    fn swiglu(a: FlexTensor, u: FlexTensor) -> FlexTensor {
        let (a, u) = (contiguous_f32(a), contiguous_f32(u));
        assert_eq!(
            a.layout().shape(),
            u.layout().shape(),
            "swiglu: the gate and up projections differ in shape"
        );
        let h = forward(flex_values(&a), flex_values(&u));
        FlexTensor::from_data(TensorData::new(h, a.layout().shape().clone()))
    }

    fn swiglu_backward(a: FlexTensor, u: FlexTensor, dh: FlexTensor) -> (FlexTensor, FlexTensor) {
        let (a, u, dh) = (contiguous_f32(a), contiguous_f32(u), contiguous_f32(dh));
        let (da, du) = backward(flex_values(&a), flex_values(&u), flex_values(&dh));
        let shape = a.layout().shape().clone();
        (
            FlexTensor::from_data(TensorData::new(da, shape.clone())),
            FlexTensor::from_data(TensorData::new(du, shape)),
        )
    }
}

fn flex_values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

impl SwiGlu for NdArray {
    fn swiglu(a: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        let (a, u) = (
            read(Self::float_into_data(a)),
            read(Self::float_into_data(u)),
        );
        assert_eq!(
            a.shape(),
            u.shape(),
            "swiglu: the gate and up projections differ in shape"
        );
        let shape = a.shape().clone();
        let h = forward(&f32_values(a), &f32_values(u));
        Self::float_from_data(TensorData::new(h, shape), &Default::default())
    }

    fn swiglu_backward(
        a: FloatTensor<Self>,
        u: FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let [a, u, dh] = [a, u, dh].map(|t| read(Self::float_into_data(t)));
        let shape = a.shape().clone();
        let (da, du) = backward(&f32_values(a), &f32_values(u), &f32_values(dh));
        (
            Self::float_from_data(TensorData::new(da, shape.clone()), &Default::default()),
            Self::float_from_data(TensorData::new(du, shape), &Default::default()),
        )
    }
}

#[derive(Debug)]
struct SwiGluBackward;

impl<B: SwiGlu> Backward<B, 2> for SwiGluBackward {
    type State = (NodeId, NodeId);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let (a, u) = ops.state;
        let a = ckpt.retrieve_node_output::<FloatTensor<B>>(a);
        let u = ckpt.retrieve_node_output::<FloatTensor<B>>(u);
        let dh = grads.consume::<B>(&ops.node);
        let (da, du) = B::swiglu_backward(a, u, dh);
        let [a_node, u_node] = ops.parents;
        if let Some(node) = a_node {
            grads.register::<B>(node.id, da);
        }
        if let Some(node) = u_node {
            grads.register::<B>(node.id, du);
        }
    }
}

impl<B: SwiGlu, C: CheckpointStrategy> SwiGlu for Autodiff<B, C> {
    fn swiglu(a: FloatTensor<Self>, u: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwiGluBackward
            .prepare::<C>([a.node(), u.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&a), prep.checkpoint(&u));
                prep.finish(state, B::swiglu(a.into_primitive(), u.into_primitive()))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::swiglu(a.into_primitive(), u.into_primitive()))
            }
        }
    }

    fn swiglu_backward(
        a: FloatTensor<Self>,
        u: FloatTensor<Self>,
        dh: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Second-order gradients are not supported: constants here.
        use burn::backend::AutodiffBackend;
        let (da, du) =
            B::swiglu_backward(a.into_primitive(), u.into_primitive(), dh.into_primitive());
        (Self::from_inner(da), Self::from_inner(du))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_range() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert!(exp(-200.0) < 1e-37 && exp(200.0).is_finite());
    }

    #[test]
    fn forward_and_backward_match_the_formulas() {
        let a: Vec<f32> = (0..40_000)
            .map(|i| (i as f32 - 20_000.0) / 1_000.0)
            .collect();
        let u: Vec<f32> = a.iter().map(|v| (v * 0.37).sin()).collect();
        let dh: Vec<f32> = a.iter().map(|v| (v * 0.11).cos()).collect();
        let h = forward(&a, &u);
        let (da, du) = backward(&a, &u, &dh);
        for i in 0..a.len() {
            let (x, y, g) = (a[i] as f64, u[i] as f64, dh[i] as f64);
            let s = 1.0 / (1.0 + (-x).exp());
            let close =
                |got: f32, want: f64| (got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs());
            assert!(close(h[i], x * s * y), "h({x})");
            assert!(close(da[i], g * y * s * (1.0 + x * (1.0 - s))), "da({x})");
            assert!(close(du[i], g * x * s), "du({x})");
        }
    }
}
