//! The WGSL kernels of `shaders/`, launched on Burn's cube (wgpu) tensors without a host copy.
//!
//! Every shader stays inside WebGPU's default limits: workgroups of at most 256 invocations,
//! at most 7 storage buffers per stage, at most 1 KiB of workgroup memory per 256 experts.
//! Scalars travel in a small storage buffer cast with bytemuck.

use burn::backend::wgpu::{CubeBackend, CubeTensor, into_contiguous};
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::server::Handle;

use super::GateRule;
use super::extension::RoutingKernels;
use super::launch::{CHUNK, expect_dtype, kernel, launch, output, params, scratch};
use crate::routing::GroupScore;

const GATE_TOPK: &str = include_str!("../../shaders/gate_topk.wgsl");
const EXPERT_HISTOGRAM: &str = include_str!("../../shaders/expert_histogram.wgsl");
const EXPERT_OFFSETS: &str = include_str!("../../shaders/expert_offsets.wgsl");
const EXPERT_POSITIONS: &str = include_str!("../../shaders/expert_positions.wgsl");
const LOSS_FREE_UPDATE: &str = include_str!("../../shaders/loss_free_update.wgsl");
const BIP_TOKEN_PRICES: &str = include_str!("../../shaders/bip_token_prices.wgsl");
const BIP_EXPERT_PRICES: &str = include_str!("../../shaders/bip_expert_prices.wgsl");
const QB_HISTOGRAM: &str = include_str!("../../shaders/qb_histogram.wgsl");

impl RoutingKernels for CubeBackend {
    fn gate_topk(
        logits: CubeTensor,
        offset: CubeTensor,
        draws: CubeTensor,
        rule: GateRule,
        random_second: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let top_k = rule.top_k;
        let (logits, offset, draws) = (
            into_contiguous(logits),
            into_contiguous(offset),
            into_contiguous(draws),
        );
        expect_dtype(&logits, DType::F32, "router logits");
        let (n, m) = (logits.meta.shape[0], logits.meta.shape[1]);
        let out_shape = Shape::new([n, top_k]);
        let indices = output(&logits, out_shape.clone(), DType::I32);
        let gates = output(&logits, out_shape.clone(), DType::F32);
        let used = output(&logits, out_shape, DType::I32);
        let p = params(
            &logits,
            &[
                n as u32,
                m as u32,
                rule.sigmoid as u32,
                rule.normalize as u32,
                random_second as u32,
                rule.group_limit.map_or(1, |g| g.groups as u32),
                rule.group_limit.map_or(1, |g| g.top_groups as u32),
                rule.group_limit
                    .is_some_and(|g| g.score == GroupScore::TopTwoSum) as u32,
            ],
        );
        let workgroup = 64;
        launch(
            &logits,
            kernel(
                "gate_topk",
                GATE_TOPK,
                &[("top_k", top_k), ("workgroup", workgroup)],
            ),
            workgroup as u32,
            [n.div_ceil(workgroup), 1],
            vec![
                logits.handle.clone(),
                offset.handle.clone(),
                draws.handle.clone(),
                p,
                indices.handle.clone(),
                gates.handle.clone(),
                used.handle.clone(),
            ],
        );
        (indices, gates, used)
    }

    fn expert_histogram(
        indices: CubeTensor,
        used: CubeTensor,
        experts: usize,
        groups: usize,
        capacity: u32,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let (indices, used) = (into_contiguous(indices), into_contiguous(used));
        expect_dtype(&indices, DType::I32, "expert indices");
        expect_dtype(&used, DType::I32, "used flags");
        let (n, k) = (indices.meta.shape[0], indices.meta.shape[1]);
        let group_len = n / groups;
        let chunks_per_group = (group_len * k).div_ceil(CHUNK);
        let chunks = groups * chunks_per_group;
        let p = params(
            &indices,
            &[
                n as u32,
                k as u32,
                experts as u32,
                groups as u32,
                group_len as u32,
                chunks_per_group as u32,
                capacity,
            ],
        );
        let chunk_counts = scratch(&indices, chunks * experts);
        let requested = output(&indices, Shape::new([groups, experts]), DType::I32);
        let admitted = output(&indices, Shape::new([groups, experts]), DType::I32);
        let positions = output(&indices, Shape::new([n, k]), DType::I32);

        launch(
            &indices,
            kernel(
                "expert_histogram",
                EXPERT_HISTOGRAM,
                &[("experts", experts)],
            ),
            CHUNK as u32,
            [chunks, 1],
            vec![
                indices.handle.clone(),
                used.handle.clone(),
                p.clone(),
                chunk_counts.clone(),
            ],
        );
        launch(
            &indices,
            kernel("expert_offsets", EXPERT_OFFSETS, &[]),
            64,
            [(groups * experts).div_ceil(64), 1],
            vec![
                chunk_counts.clone(),
                p.clone(),
                requested.handle.clone(),
                admitted.handle.clone(),
            ],
        );
        launch(
            &indices,
            kernel("expert_positions", EXPERT_POSITIONS, &[]),
            CHUNK as u32,
            [chunks, 1],
            vec![
                indices.handle.clone(),
                used.handle.clone(),
                chunk_counts,
                p,
                positions.handle.clone(),
            ],
        );
        (requested, positions, admitted)
    }

    fn loss_free_update(
        bias: CubeTensor,
        requested: CubeTensor,
        rate: f32,
        proportional: bool,
    ) -> CubeTensor {
        let (bias, requested) = (into_contiguous(bias), into_contiguous(requested));
        expect_dtype(&bias, DType::F32, "loss-free bias");
        expect_dtype(&requested, DType::I32, "expert counts");
        let (groups, m) = (requested.meta.shape[0], requested.meta.shape[1]);
        let p = params(
            &bias,
            &[m as u32, groups as u32, proportional as u32, rate.to_bits()],
        );
        let new_bias = output(&bias, Shape::new([m]), DType::F32);
        launch(
            &bias,
            kernel("loss_free_update", LOSS_FREE_UPDATE, &[]),
            256,
            [1, 1],
            vec![
                bias.handle.clone(),
                requested.handle.clone(),
                p,
                new_bias.handle.clone(),
            ],
        );
        new_bias
    }

    fn bip_dual(
        scores: CubeTensor,
        q: CubeTensor,
        top_k: usize,
        iterations: usize,
        clamp: bool,
    ) -> CubeTensor {
        let (scores, mut q) = (into_contiguous(scores), into_contiguous(q));
        expect_dtype(&scores, DType::F32, "router scores");
        expect_dtype(&q, DType::F32, "BIP prices");
        let (n, m) = (scores.meta.shape[0], scores.meta.shape[1]);
        let expert_rank = top_k * n / m + 1;
        let p = params(
            &scores,
            &[n as u32, m as u32, clamp as u32, expert_rank as u32],
        );
        let token_prices = scratch(&scores, n);
        for _ in 0..iterations {
            launch_token_prices(&scores, &q, top_k, p.clone(), token_prices.clone());
            let next = output(&scores, Shape::new([m]), DType::F32);
            launch(
                &scores,
                kernel("bip_expert_prices", BIP_EXPERT_PRICES, &[]),
                256,
                [m, 1],
                vec![
                    scores.handle.clone(),
                    token_prices.clone(),
                    p.clone(),
                    next.handle.clone(),
                ],
            );
            q = next;
        }
        q
    }

    fn token_cutoffs(scores: CubeTensor, q: CubeTensor, top_k: usize) -> CubeTensor {
        let (scores, q) = (into_contiguous(scores), into_contiguous(q));
        expect_dtype(&scores, DType::F32, "router scores");
        expect_dtype(&q, DType::F32, "prices");
        let (n, m) = (scores.meta.shape[0], scores.meta.shape[1]);
        // The clamp and the expert rank are read by the expert half only.
        let p = params(&scores, &[n as u32, m as u32, 0, 0]);
        let cutoffs = output(&scores, Shape::new([n]), DType::F32);
        launch_token_prices(&scores, &q, top_k, p, cutoffs.handle.clone());
        cutoffs
    }

    fn cutoff_histogram(
        scores: CubeTensor,
        cutoffs: CubeTensor,
        bounds: CubeTensor,
        bins: usize,
    ) -> CubeTensor {
        let (scores, cutoffs, bounds) = (
            into_contiguous(scores),
            into_contiguous(cutoffs),
            into_contiguous(bounds),
        );
        expect_dtype(&scores, DType::F32, "router scores");
        expect_dtype(&cutoffs, DType::F32, "token cutoffs");
        expect_dtype(&bounds, DType::F32, "histogram bounds");
        let (n, m) = (scores.meta.shape[0], scores.meta.shape[1]);
        let p = params(&scores, &[n as u32, m as u32]);
        let counts = output(&scores, Shape::new([m, bins]), DType::I32);
        launch(
            &scores,
            kernel("qb_histogram", QB_HISTOGRAM, &[("bins", bins)]),
            256,
            [m, 1],
            vec![
                scores.handle.clone(),
                cutoffs.handle.clone(),
                bounds.handle.clone(),
                p,
                counts.handle.clone(),
            ],
        );
        counts
    }
}

/// `out[i]` = the (k+1)-th largest `scores[i, j] - q[j]`.
fn launch_token_prices(scores: &CubeTensor, q: &CubeTensor, top_k: usize, p: Handle, out: Handle) {
    let n = scores.meta.shape[0];
    launch(
        scores,
        kernel("bip_token_prices", BIP_TOKEN_PRICES, &[("rank", top_k + 1)]),
        64,
        [n.div_ceil(64), 1],
        vec![scores.handle.clone(), q.handle.clone(), p, out],
    );
}
