//! The experts' grouped matmul: one product per expert over its rows of an expert-sorted
//! buffer, with the stacked weights `[experts, k, n]` used whole.
//!
//! - flex and ndarray: a backend extension ([`GroupedMatmul`]) on `gemm`, threads over blocks
//!   of rows, with its own backward (`dX` through the transposed weights, `dW` one product per
//!   expert; never a slice of the stacked weights, never a full-size zero gradient per expert).
//! - wgpu: WGSL shaders (`shaders/grouped_gemm.wgsl`, `grouped_weight_grad.wgsl`): tiles over
//!   the sorted buffer, the tile-to-group map built on the device from the offsets, so nothing
//!   is read back, dropless included; the same hand-written backward.
//! - [`portable`]: the same product from Burn tensor ops (capacity-sized blocks through one
//!   batched matmul), the reference the tests and benchmarks compare with.
//!
//! [`swiglu`] is the experts' activation in one pass over memory on the CPU backends.

mod blocks;
mod cpu;
mod ffn;
mod op;
mod swiglu;
mod wgsl;

/// The tensor-op implementation (runs on any backend): the tests' reference.
pub mod portable {
    pub use super::blocks::grouped_matmul;
}

pub use op::GroupedMatmul;
pub(crate) use op::{f32_values, host_usizes, read};
pub use swiglu::SwiGlu;

use burn::backend::Dispatch;
use burn::tensor::activation::silu;
use burn::tensor::{Int, Tensor};

/// Where each group's rows sit in an expert-sorted buffer.
#[derive(Debug, Clone)]
pub struct GroupOffsets {
    /// `[groups + 1]`, non-decreasing from 0: group `g` owns rows `offsets[g]..offsets[g + 1]`;
    /// rows from `offsets[groups]` on belong to no group (their products are zero).
    pub offsets: Tensor<1, Int>,
    /// A bound on any group's row count (a capacity), or `None`. It sizes the blocks of the
    /// tensor-op implementation (rows past it in a group would not be computed there), which
    /// otherwise reads the offsets back to find the largest group; the CPU and WGSL kernels
    /// ignore it.
    pub max_rows: Option<usize>,
}

/// `y[r] = x[r] w[g]` for each row `r` of group `g`; zero for rows past the last group.
///
/// # Shapes
/// - x: `[rows, k]`, rows sorted by group
/// - w: `[groups, k, n]`
/// - output: `[rows, n]`
pub fn grouped_matmul(x: Tensor<2>, groups: &GroupOffsets, w: Tensor<3>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as GroupedMatmul>::grouped_matmul(
        x.into_dispatch(),
        groups.offsets.clone().into_dispatch(),
        w.into_dispatch(),
    ))
}

/// `silu(a) * u`, the SwiGLU of the gate and up projections: one vectorised pass with its own
/// backward on the CPU backends ([`SwiGlu`]), tensor ops (fused by Burn) on wgpu.
pub fn swiglu<const D: usize>(a: Tensor<D>, u: Tensor<D>) -> Tensor<D> {
    if crate::kernels::is_gpu(&a.device()) {
        return silu(a) * u;
    }
    Tensor::from_dispatch(<Dispatch as SwiGlu>::swiglu(
        a.into_dispatch(),
        u.into_dispatch(),
    ))
}

/// The SwiGLU expert FFN `(silu(x w_gate[g]) * (x w_in[g])) w_out[g]` for each row of group
/// `g`, for inference: on the CPU backends one pass per block of rows, its `[rows, d_ff]`
/// intermediates kept in cache; on wgpu the gate and up projections in one GEMM with the SwiGLU
/// in its epilogue, then the down projection. Training uses [`grouped_matmul`] and [`swiglu`]
/// (they save what the backward pass needs).
///
/// # Shapes
/// - x: `[rows, d]`, rows sorted by group; w_in, w_gate: `[groups, d, f]`; w_out: `[groups, f, d]`
/// - output: `[rows, d]`
///
/// # Panics
/// When an input needs a gradient.
pub fn grouped_swiglu_ffn(
    x: Tensor<2>,
    groups: &GroupOffsets,
    w_in: Tensor<3>,
    w_gate: Tensor<3>,
    w_out: Tensor<3>,
) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as GroupedMatmul>::grouped_swiglu_ffn(
        x.into_dispatch(),
        groups.offsets.clone().into_dispatch(),
        w_in.into_dispatch(),
        w_gate.into_dispatch(),
        w_out.into_dispatch(),
    ))
}
