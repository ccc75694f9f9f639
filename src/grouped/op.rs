//! [`GroupedMatmul`]: the grouped matmul as a Burn backend extension on the CPU backends, with a
//! hand-written backward: `dX` is the same op on the transposed weights, `dW` one product per
//! group, so the stacked weights are never sliced and no per-expert zero gradient is built.

// ndarray is deprecated in Burn 0.22; it stays this project's reference backend.
#![allow(deprecated)]

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::backend::flex::FlexTensor;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Flex, NdArray, backend_extension};
use burn::tensor::{DType, Shape, TensorData};

use super::cpu::{self, Stacked};
use super::ffn;

/// The grouped matmul and its weight gradient as backend operations: CPU kernels on flex and
/// ndarray, WGSL shaders on wgpu (`super::wgsl`).
#[backend_extension(Flex, NdArray, Cube, Fusion, Autodiff)]
pub trait GroupedMatmul: Backend {
    /// `x [rows, k]`, `offsets [groups + 1]`, `w [groups, k, n]` -> `[rows, n]`: row `r` of group
    /// `g` (`offsets[g] <= r < offsets[g + 1]`) times `w[g]`; rows past `offsets[groups]` are zero.
    #[fusion(meta = |x, _offsets, w| TensorSpec::new(Shape::new([x.shape[0], w.shape[2]]), x.dtype))]
    fn grouped_matmul(
        x: FloatTensor<Self>,
        offsets: IntTensor<Self>,
        w: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// `x [rows, k]`, `dy [rows, n]`, `offsets [groups + 1]` -> `dw [groups, k, n]`,
    /// `dw[g] = x_g^T dy_g`.
    #[fusion(meta = |x, dy, offsets| TensorSpec::new(
        Shape::new([offsets.shape[0] - 1, x.shape[1], dy.shape[1]]),
        x.dtype,
    ))]
    fn grouped_matmul_weight_grad(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        offsets: IntTensor<Self>,
    ) -> FloatTensor<Self>;

    /// The SwiGLU expert FFN for inference, fused per block of rows: `x [rows, d]`,
    /// `offsets [groups + 1]`, `w_in`, `w_gate` `[groups, d, f]`, `w_out [groups, f, d]` ->
    /// `[rows, d]`. Not differentiable: the autodiff backend refuses inputs that need a gradient.
    #[fusion(meta = |x, _offsets, _w_in, _w_gate, _w_out| TensorSpec::new(x.shape.clone(), x.dtype))]
    fn grouped_swiglu_ffn(
        x: FloatTensor<Self>,
        offsets: IntTensor<Self>,
        w_in: FloatTensor<Self>,
        w_gate: FloatTensor<Self>,
        w_out: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The non-negative values of an int tensor of a CPU backend (no device transfer) as host
/// `usize`s; `what` names them when they are not.
pub(crate) fn host_usizes(data: TensorData, what: &str) -> Vec<usize> {
    data.convert::<i64>()
        .try_into_vec::<i64>()
        .unwrap_or_else(|_| panic!("{what} must be an int tensor"))
        .into_iter()
        .map(|o| usize::try_from(o).unwrap_or_else(|_| panic!("{what}: negative value {o}")))
        .collect()
}

/// Group offsets as host values.
fn host_offsets(data: TensorData) -> Vec<usize> {
    host_usizes(data, "grouped matmul: offsets")
}

/// A flex float tensor whose values `as_slice` reads without a copy (a contiguous one is
/// returned as it is, shared or not).
pub(super) fn contiguous_f32(t: FlexTensor) -> FlexTensor {
    assert_eq!(
        t.dtype(),
        DType::F32,
        "burn-moe CPU kernels: f32 tensors only"
    );
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn dims<const D: usize>(shape: &Shape) -> [usize; D] {
    shape.dims::<D>()
}

/// A stacked `[groups, k, n]` flex weight read in place (any non-negative strides).
fn flex_stacked(w: &FlexTensor) -> Stacked<'_> {
    let strides = w.layout().strides();
    assert!(
        strides.len() == 3 && strides.iter().all(|&s| s >= 0),
        "grouped matmul: weights must be [groups, k, n] with non-negative strides"
    );
    Stacked {
        data: w.storage::<f32>(),
        offset: w.layout().start_offset(),
        strides: [strides[0], strides[1], strides[2]],
    }
}

impl GroupedMatmul for Flex {
    fn grouped_matmul(x: FlexTensor, offsets: FlexTensor, w: FlexTensor) -> FlexTensor {
        let x = contiguous_f32(x);
        let [rows, k] = dims::<2>(x.layout().shape());
        let [groups, wk, n] = dims::<3>(w.layout().shape());
        assert_eq!(
            k, wk,
            "grouped matmul: x has {k} columns, the weights {wk} rows"
        );
        let offsets = host_offsets(offsets.into_data());
        assert_eq!(
            offsets.len(),
            groups + 1,
            "grouped matmul: one offset per group + 1"
        );
        let x_values = x.as_slice::<f32>().expect("contiguous");
        let out = cpu::grouped_matmul(x_values, k, &offsets, flex_stacked(&w), n);
        FlexTensor::from_data(TensorData::new(out, [rows, n]))
    }

    fn grouped_swiglu_ffn(
        x: FlexTensor,
        offsets: FlexTensor,
        w_in: FlexTensor,
        w_gate: FlexTensor,
        w_out: FlexTensor,
    ) -> FlexTensor {
        let x = contiguous_f32(x);
        let [rows, d] = dims::<2>(x.layout().shape());
        let [_, _, f] = dims::<3>(w_in.layout().shape());
        let offsets = host_offsets(offsets.into_data());
        let weights = [&w_in, &w_gate, &w_out].map(flex_stacked);
        let x_values = x.as_slice::<f32>().expect("contiguous");
        let out = ffn::grouped_swiglu_ffn(x_values, d, &offsets, weights, f);
        FlexTensor::from_data(TensorData::new(out, [rows, d]))
    }

    fn grouped_matmul_weight_grad(
        x: FlexTensor,
        dy: FlexTensor,
        offsets: FlexTensor,
    ) -> FlexTensor {
        let (x, dy) = (contiguous_f32(x), contiguous_f32(dy));
        let [_, k] = dims::<2>(x.layout().shape());
        let [_, n] = dims::<2>(dy.layout().shape());
        let offsets = host_offsets(offsets.into_data());
        let groups = offsets.len() - 1;
        let (xs, dys) = (x.as_slice::<f32>(), dy.as_slice::<f32>());
        let dw = cpu::grouped_weight_grad(
            xs.expect("contiguous"),
            k,
            dys.expect("contiguous"),
            n,
            &offsets,
        );
        FlexTensor::from_data(TensorData::new(dw, [groups, k, n]))
    }
}

/// ndarray, the reference backend: through host data (its tensors live on the host already).
impl GroupedMatmul for NdArray {
    fn grouped_matmul(
        x: FloatTensor<Self>,
        offsets: IntTensor<Self>,
        w: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let x = read(Self::float_into_data(x));
        let w = read(Self::float_into_data(w));
        let offsets = host_offsets(read(Self::int_into_data(offsets)));
        let [rows, k] = x.shape().dims::<2>();
        let [groups, _, n] = w.shape().dims::<3>();
        assert_eq!(
            offsets.len(),
            groups + 1,
            "grouped matmul: one offset per group + 1"
        );
        let (x, w) = (f32_values(x), f32_values(w));
        let out = cpu::grouped_matmul(&x, k, &offsets, Stacked::dense(&w, k, n), n);
        Self::float_from_data(TensorData::new(out, [rows, n]), &Default::default())
    }

    fn grouped_matmul_weight_grad(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        offsets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        let x = read(Self::float_into_data(x));
        let dy = read(Self::float_into_data(dy));
        let offsets = host_offsets(read(Self::int_into_data(offsets)));
        let [_, k] = x.shape().dims::<2>();
        let [_, n] = dy.shape().dims::<2>();
        let groups = offsets.len() - 1;
        let dw = cpu::grouped_weight_grad(&f32_values(x), k, &f32_values(dy), n, &offsets);
        Self::float_from_data(TensorData::new(dw, [groups, k, n]), &Default::default())
    }

    fn grouped_swiglu_ffn(
        x: FloatTensor<Self>,
        offsets: IntTensor<Self>,
        w_in: FloatTensor<Self>,
        w_gate: FloatTensor<Self>,
        w_out: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let x = read(Self::float_into_data(x));
        let offsets = host_offsets(read(Self::int_into_data(offsets)));
        let [rows, d] = x.shape().dims::<2>();
        let [w_in, w_gate, w_out] = [w_in, w_gate, w_out].map(|w| read(Self::float_into_data(w)));
        let f = w_in.shape().dims::<3>()[2];
        let (w_in, w_gate, w_out) = (f32_values(w_in), f32_values(w_gate), f32_values(w_out));
        let weights = [
            Stacked::dense(&w_in, d, f),
            Stacked::dense(&w_gate, d, f),
            Stacked::dense(&w_out, f, d),
        ];
        let out = ffn::grouped_swiglu_ffn(&f32_values(x), d, &offsets, weights, f);
        Self::float_from_data(TensorData::new(out, [rows, d]), &Default::default())
    }
}

/// A CPU backend's tensor data (its tensors live on the host already: no device transfer).
pub(crate) fn read(
    future: impl Future<Output = Result<TensorData, burn::backend::ExecutionError>>,
) -> TensorData {
    pollster::block_on(future).expect("reading a CPU tensor cannot fail")
}

/// Tensor data as `f32` values.
pub(crate) fn f32_values(data: TensorData) -> Vec<f32> {
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

#[derive(Debug)]
struct GroupedBackward;

impl<B: GroupedMatmul> Backward<B, 2> for GroupedBackward {
    /// The saved `x` and `w` (each kept only when the other's gradient needs it) and the offsets.
    type State = (Option<NodeId>, Option<NodeId>, IntTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let (x, w, offsets) = ops.state;
        let x = x.map(|id| ckpt.retrieve_node_output::<FloatTensor<B>>(id));
        let w = w.map(|id| ckpt.retrieve_node_output::<FloatTensor<B>>(id));
        let dx_offsets = offsets.clone();
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |dy| {
                let w = w.expect("w is saved when x needs a gradient");
                B::grouped_matmul(dy, dx_offsets, B::float_swap_dims(w, 1, 2))
            },
            |dy| {
                let x = x.expect("x is saved when w needs a gradient");
                B::grouped_matmul_weight_grad(x, dy, offsets)
            },
        );
    }
}

impl<B: GroupedMatmul, C: CheckpointStrategy> GroupedMatmul for Autodiff<B, C> {
    fn grouped_matmul(
        x: FloatTensor<Self>,
        offsets: IntTensor<Self>,
        w: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (x_tracked, w_tracked) = (x.is_tracked(), w.is_tracked());
        match GroupedBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = w_tracked.then(|| prep.checkpoint(&x));
                let w_state = x_tracked.then(|| prep.checkpoint(&w));
                let out =
                    B::grouped_matmul(x.into_primitive(), offsets.clone(), w.into_primitive());
                prep.finish((x_state, w_state, offsets), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::grouped_matmul(
                x.into_primitive(),
                offsets,
                w.into_primitive(),
            )),
        }
    }

    fn grouped_swiglu_ffn(
        x: FloatTensor<Self>,
        offsets: IntTensor<Self>,
        w_in: FloatTensor<Self>,
        w_gate: FloatTensor<Self>,
        w_out: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        use burn::backend::AutodiffBackend;
        assert!(
            [&x, &w_in, &w_gate, &w_out].iter().all(|t| !t.is_tracked()),
            "grouped_swiglu_ffn is for inference: its inputs must not need gradients"
        );
        let [x, w_in, w_gate, w_out] = [x, w_in, w_gate, w_out].map(|t| t.into_primitive());
        Self::from_inner(B::grouped_swiglu_ffn(x, offsets, w_in, w_gate, w_out))
    }

    fn grouped_matmul_weight_grad(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        offsets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        // Second-order gradients are not supported: the weight gradient is a constant here.
        use burn::backend::AutodiffBackend;
        Self::from_inner(B::grouped_matmul_weight_grad(
            x.into_primitive(),
            dy.into_primitive(),
            offsets,
        ))
    }
}
