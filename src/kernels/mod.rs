//! The hot routing steps as kernels: gating/top-k with the balancer offset, per-expert
//! histograms with queue positions (capacity dropping in token order), and the Loss-Free, BIP
//! and quantile-balancing updates.
//!
//! Two implementations with one contract: the WGSL shaders of `shaders/` (`wgsl`, through the
//! [`RoutingKernels`] backend extension) on wgpu, and Burn tensor ops ([`portable`]) everywhere
//! else. [`KernelPath::Auto`] takes the shaders on wgpu devices and the tensor ops on the CPU
//! backends; [`KernelPath::Portable`] forces the tensor ops on any device (for comparison).

mod extension;
pub(crate) mod launch;
pub mod portable;
mod quantile;
mod wgsl;

pub use extension::RoutingKernels;
pub use quantile::{histogram_quantile, qb_update};

use burn::backend::{Dispatch, DispatchDevice};
use burn::config::Config;
use burn::tensor::{Device, Int, Tensor};

use crate::balance::LossFreeUpdate;
use crate::error::{MoeError, Result};
use crate::routing::GroupLimit;

/// What [`gate_topk`] computes from the router logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateRule {
    /// Experts chosen per token.
    pub top_k: usize,
    /// Sigmoid scores instead of softmax.
    pub sigmoid: bool,
    /// Divide the chosen gates by their sum.
    pub normalize: bool,
    /// Choose only inside each token's best expert groups.
    pub group_limit: Option<GroupLimit>,
}

impl GateRule {
    /// Softmax top-`top_k`, raw gates, no group limit.
    pub fn top_k(top_k: usize) -> Self {
        GateRule {
            top_k,
            sigmoid: false,
            normalize: false,
            group_limit: None,
        }
    }
}

/// Which implementation runs the routing steps.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum KernelPath {
    /// WGSL shaders on wgpu devices, tensor ops on the CPU backends.
    Auto,
    /// The WGSL shaders; an error on devices that are not wgpu.
    Wgsl,
    /// Burn tensor ops on any device.
    Portable,
}

/// Most experts the kernels take: the histogram keeps one `u32` per expert in workgroup memory,
/// and WebGPU guarantees 16 KiB of it.
pub const MAX_EXPERTS: usize = 4096;
/// Most `tokens * k` assignments one histogram call takes (65,535 workgroups of 256).
pub const MAX_ASSIGNMENTS: usize = 65_535 * 256;
/// Most tokens one gating call takes (65,535 workgroups of 64).
pub const MAX_TOKENS: usize = 65_535 * 64;

/// Output of [`gate_topk`]; `[tokens, k]` each, rank 0 first.
#[derive(Debug, Clone)]
pub struct TopK {
    /// Chosen experts; -1 in every slot of a token with a NaN or infinite logit.
    pub indices: Tensor<2, Int>,
    /// Raw scores of the chosen experts (normalised over them when asked).
    pub gates: Tensor<2>,
    /// 1 when the choice is used, 0 for a 2nd choice GShard's random rule switched off.
    pub used: Tensor<2, Int>,
}

/// Output of [`expert_histogram`].
#[derive(Debug, Clone)]
pub struct Histogram {
    /// `[groups, experts]`: used assignments per expert and group, before capacity.
    pub requested: Tensor<2, Int>,
    /// `[tokens, k]`: each used assignment's position in its expert's queue within its group
    /// (admission order: rank-major, then token order); -1 when unused. Admitted when
    /// `position < capacity`.
    pub positions: Tensor<2, Int>,
    /// `[groups, experts]`: `min(requested, capacity)`.
    pub admitted: Tensor<2, Int>,
}

/// True for a GPU device (wgpu), false for the CPU backends.
pub fn is_gpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Cube(_)
    )
}

/// True when `path` runs the WGSL shaders on `device`.
pub fn uses_wgsl(path: KernelPath, device: &Device) -> Result<bool> {
    let is_cube = is_gpu(device);
    match path {
        KernelPath::Auto => Ok(is_cube),
        KernelPath::Portable => Ok(false),
        KernelPath::Wgsl if is_cube => Ok(true),
        KernelPath::Wgsl => Err(MoeError::Config(format!(
            "the WGSL routing kernels need a wgpu device, got {device:?}; use the portable path"
        ))),
    }
}

fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(MoeError::Input(msg()))
    }
}

/// Scores (softmax, or sigmoid when `rule.sigmoid`), selection by `score + offset` (inside each
/// token's best expert groups under a group limit), top-k with ties to the lower index, gates
/// (normalised over the chosen experts when `rule.normalize`) and, with `draws`, GShard's
/// random rule for the 2nd choice.
///
/// # Shapes
/// - logits: `[tokens, experts]`, offset: `[experts]`, draws: `[tokens]`
/// - outputs: `[tokens, k]`
pub fn gate_topk(
    logits: Tensor<2>,
    offset: Tensor<1>,
    draws: Option<Tensor<1>>,
    rule: GateRule,
    path: KernelPath,
) -> Result<TopK> {
    let [n, m] = logits.dims();
    let top_k = rule.top_k;
    ensure(n > 0 && n <= MAX_TOKENS, || {
        format!("gate_topk takes 1 to {MAX_TOKENS} tokens, got {n}")
    })?;
    ensure(m > 0 && m <= MAX_EXPERTS, || {
        format!("gate_topk takes 1 to {MAX_EXPERTS} experts, got {m}")
    })?;
    ensure(top_k >= 1 && top_k <= m, || {
        format!("top_k must be in 1..={m}, got {top_k}")
    })?;
    ensure(offset.dims() == [m], || {
        format!("offset has shape {:?}, expected [{m}]", offset.dims())
    })?;
    if let Some(limit) = &rule.group_limit {
        limit
            .validate(m, top_k)
            .map_err(|e| MoeError::Input(e.to_string()))?;
    }
    if let Some(d) = &draws {
        ensure(d.dims() == [n], || {
            format!("draws have shape {:?}, expected [{n}]", d.dims())
        })?;
    }
    if !uses_wgsl(path, &logits.device())? {
        return Ok(portable::gate_topk(logits, offset, draws, rule));
    }
    let random_second = draws.is_some() && top_k >= 2;
    let draws = draws.unwrap_or_else(|| Tensor::zeros([1], &logits.device()));
    let (indices, gates, used) = <Dispatch as RoutingKernels>::gate_topk(
        logits.into_dispatch(),
        offset.into_dispatch(),
        draws.into_dispatch(),
        rule,
        random_second,
    );
    Ok(TopK {
        indices: Tensor::from_dispatch(indices),
        gates: Tensor::from_dispatch(gates),
        used: Tensor::from_dispatch(used),
    })
}

/// Per-expert counts per group and each assignment's queue position; `capacity` per expert
/// per group (`None`: dropless).
///
/// # Shapes
/// - indices, used: `[tokens, k]` (indices < 0 or used = 0: not counted)
/// - requested, admitted: `[groups, experts]`; positions: `[tokens, k]`
pub fn expert_histogram(
    indices: Tensor<2, Int>,
    used: Tensor<2, Int>,
    experts: usize,
    groups: usize,
    capacity: Option<usize>,
    path: KernelPath,
) -> Result<Histogram> {
    let [n, k] = indices.dims();
    ensure(used.dims() == [n, k], || {
        format!("used has shape {:?}, expected [{n}, {k}]", used.dims())
    })?;
    ensure(experts > 0 && experts <= MAX_EXPERTS, || {
        format!("expert_histogram takes 1 to {MAX_EXPERTS} experts, got {experts}")
    })?;
    ensure(n > 0 && k > 0 && n * k <= MAX_ASSIGNMENTS, || {
        format!("expert_histogram takes 1 to {MAX_ASSIGNMENTS} assignments, got {n} x {k}")
    })?;
    ensure(groups > 0 && n.is_multiple_of(groups), || {
        format!("{n} tokens cannot be split into {groups} equal groups")
    })?;
    // Dropless is a capacity no group can reach; it also keeps the value inside the i32 range
    // of wgpu's integer tensors.
    let capacity = capacity.map_or(n * k, |c| c.min(n * k)) as u32;
    if !uses_wgsl(path, &indices.device())? {
        return Ok(portable::expert_histogram(
            indices, used, experts, groups, capacity,
        ));
    }
    let (requested, positions, admitted) = <Dispatch as RoutingKernels>::expert_histogram(
        indices.into_dispatch(),
        used.into_dispatch(),
        experts,
        groups,
        capacity,
    );
    Ok(Histogram {
        requested: Tensor::from_dispatch(requested),
        positions: Tensor::from_dispatch(positions),
        admitted: Tensor::from_dispatch(admitted),
    })
}

/// The Loss-Free bias after a batch with counts `requested [groups, experts]` (summed over
/// groups): `b + u * sign(mean - c)` or `b + u * (mean - c) / mean`.
pub fn loss_free_update(
    bias: Tensor<1>,
    requested: Tensor<2, Int>,
    rate: f32,
    update: LossFreeUpdate,
    path: KernelPath,
) -> Result<Tensor<1>> {
    let [m] = bias.dims();
    let [_, mc] = requested.dims();
    ensure(mc == m && m <= MAX_EXPERTS, || {
        format!("counts cover {mc} experts, the bias {m} (at most {MAX_EXPERTS})")
    })?;
    let proportional = update == LossFreeUpdate::Proportional;
    if !uses_wgsl(path, &bias.device())? {
        return Ok(portable::loss_free_update(
            bias,
            requested,
            rate,
            proportional,
        ));
    }
    Ok(Tensor::from_dispatch(
        <Dispatch as RoutingKernels>::loss_free_update(
            bias.into_dispatch(),
            requested.into_dispatch(),
            rate,
            proportional,
        ),
    ))
}

/// `iterations` BIP dual iterations (`docs/algorithms.md`, `crate::balance::bip`) on `scores [tokens, experts]`
/// from prices `q [experts]`; returns the new `q`.
pub fn bip_dual(
    scores: Tensor<2>,
    q: Tensor<1>,
    top_k: usize,
    iterations: usize,
    clamp: bool,
    path: KernelPath,
) -> Result<Tensor<1>> {
    let [n, m] = scores.dims();
    ensure(n > 0 && n <= 65_535 * 64 && m > 0 && m <= 65_535, || {
        format!(
            "bip_dual takes up to {} tokens and 65,535 experts, got {n} x {m}",
            65_535 * 64
        )
    })?;
    ensure(q.dims() == [m], || {
        format!("prices have shape {:?}, expected [{m}]", q.dims())
    })?;
    ensure(top_k >= 1 && top_k <= m, || {
        format!("top_k must be in 1..={m}, got {top_k}")
    })?;
    if !uses_wgsl(path, &scores.device())? {
        return Ok(portable::bip_dual(scores, q, top_k, iterations, clamp));
    }
    Ok(Tensor::from_dispatch(
        <Dispatch as RoutingKernels>::bip_dual(
            scores.into_dispatch(),
            q.into_dispatch(),
            top_k,
            iterations,
            clamp,
        ),
    ))
}
