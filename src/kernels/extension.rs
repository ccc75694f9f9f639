//! [`RoutingKernels`]: the Burn backend extension for the routing steps.
//!
//! Implemented by the WGSL kernels on Burn's cube backend (wgpu, through fusion and autodiff).
//! Tensors on the CPU backends go through [`super::portable`], which computes the same answers
//! with Burn tensor ops; [`super::RoutingOps`] picks the implementation per device.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, AutodiffBackend, Backend, backend_extension};
use burn::tensor::{DType, Shape};

use super::GateRule;

/// The routing steps as backend operations. All integer outputs are `i32`.
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait RoutingKernels: Backend {
    /// Scores, offset selection and top-k: see `shaders/gate_topk.wgsl`.
    ///
    /// `logits [n, m]`, `offset [m]`, `draws [n]` (or `[1]` without random routing) ->
    /// `(indices [n, k], gates [n, k], used [n, k])`; a token with a non-finite logit gets index -1.
    #[fusion(meta = |logits, _offset, _draws, rule, _random| {
        let shape = Shape::new([logits.shape[0], rule.top_k]);
        (
            TensorSpec::new(shape.clone(), DType::I32),
            TensorSpec::new(shape.clone(), logits.dtype),
            TensorSpec::new(shape, DType::I32),
        )
    })]
    fn gate_topk(
        logits: FloatTensor<Self>,
        offset: FloatTensor<Self>,
        draws: FloatTensor<Self>,
        rule: GateRule,
        random_second: bool,
    ) -> (IntTensor<Self>, FloatTensor<Self>, IntTensor<Self>);

    /// Per-expert histogram: `indices, used [n, k]` -> `(requested [G, m], positions [n, k],
    /// admitted [G, m])`, positions in admission order within each group, -1 when unused.
    /// A `capacity` of at least `tokens * k` never binds (dropless).
    #[fusion(meta = |indices, _used, experts, groups, _capacity| (
        TensorSpec::new(Shape::new([*groups, *experts]), DType::I32),
        TensorSpec::new(indices.shape.clone(), DType::I32),
        TensorSpec::new(Shape::new([*groups, *experts]), DType::I32),
    ))]
    fn expert_histogram(
        indices: IntTensor<Self>,
        used: IntTensor<Self>,
        experts: usize,
        groups: usize,
        capacity: u32,
    ) -> (IntTensor<Self>, IntTensor<Self>, IntTensor<Self>);

    /// Loss-Free update of `bias [m]` from `requested [G, m]`.
    #[fusion(dtype = bias, shape = bias)]
    fn loss_free_update(
        bias: FloatTensor<Self>,
        requested: IntTensor<Self>,
        rate: f32,
        proportional: bool,
    ) -> FloatTensor<Self>;

    /// `iterations` BIP dual iterations on `scores [n, m]` from prices `q [m]`.
    #[fusion(dtype = q, shape = q)]
    fn bip_dual(
        scores: FloatTensor<Self>,
        q: FloatTensor<Self>,
        top_k: usize,
        iterations: usize,
        clamp: bool,
    ) -> FloatTensor<Self>;

    /// Each token's cutoff, the (k+1)-th largest `s_ij - q_j` over experts (0 when `k = m`):
    /// `scores [n, m]`, `q [m]` -> `[n]`.
    #[fusion(meta = |scores, _q, _top_k| TensorSpec::new(Shape::new([scores.shape[0]]), scores.dtype))]
    fn token_cutoffs(
        scores: FloatTensor<Self>,
        q: FloatTensor<Self>,
        top_k: usize,
    ) -> FloatTensor<Self>;

    /// Per-expert histograms of `s_ij - a_i` in `bins` bins, bin `floor((v - lo) * scale)`
    /// clamped to the range, `bounds = [lo, scale]`:
    /// `scores [n, m]`, `cutoffs [n]` -> counts `[m, bins]`.
    #[fusion(meta = |scores, _cutoffs, _bounds, bins| TensorSpec::new(Shape::new([scores.shape[1], *bins]), DType::I32))]
    fn cutoff_histogram(
        scores: FloatTensor<Self>,
        cutoffs: FloatTensor<Self>,
        bounds: FloatTensor<Self>,
        bins: usize,
    ) -> IntTensor<Self>;
}

/// Routing decisions carry no gradient: the autodiff backend runs the inner backend's kernels
/// on the tensors' values, and returns float outputs as graph constants. Gradients reach the
/// router through the gates the layer gathers from its differentiable scores.
impl<B: RoutingKernels, C: CheckpointStrategy> RoutingKernels for Autodiff<B, C> {
    fn gate_topk(
        logits: FloatTensor<Self>,
        offset: FloatTensor<Self>,
        draws: FloatTensor<Self>,
        rule: GateRule,
        random_second: bool,
    ) -> (IntTensor<Self>, FloatTensor<Self>, IntTensor<Self>) {
        let (indices, gates, used) = B::gate_topk(
            logits.into_primitive(),
            offset.into_primitive(),
            draws.into_primitive(),
            rule,
            random_second,
        );
        (indices, Self::from_inner(gates), used)
    }

    fn expert_histogram(
        indices: IntTensor<Self>,
        used: IntTensor<Self>,
        experts: usize,
        groups: usize,
        capacity: u32,
    ) -> (IntTensor<Self>, IntTensor<Self>, IntTensor<Self>) {
        B::expert_histogram(indices, used, experts, groups, capacity)
    }

    fn loss_free_update(
        bias: FloatTensor<Self>,
        requested: IntTensor<Self>,
        rate: f32,
        proportional: bool,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::loss_free_update(
            bias.into_primitive(),
            requested,
            rate,
            proportional,
        ))
    }

    fn bip_dual(
        scores: FloatTensor<Self>,
        q: FloatTensor<Self>,
        top_k: usize,
        iterations: usize,
        clamp: bool,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::bip_dual(
            scores.into_primitive(),
            q.into_primitive(),
            top_k,
            iterations,
            clamp,
        ))
    }

    fn token_cutoffs(
        scores: FloatTensor<Self>,
        q: FloatTensor<Self>,
        top_k: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::token_cutoffs(
            scores.into_primitive(),
            q.into_primitive(),
            top_k,
        ))
    }

    fn cutoff_histogram(
        scores: FloatTensor<Self>,
        cutoffs: FloatTensor<Self>,
        bounds: FloatTensor<Self>,
        bins: usize,
    ) -> IntTensor<Self> {
        B::cutoff_histogram(
            scores.into_primitive(),
            cutoffs.into_primitive(),
            bounds.into_primitive(),
            bins,
        )
    }
}
