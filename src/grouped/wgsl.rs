//! The grouped matmul on wgpu: the WGSL shaders `group_tiles`, `grouped_gemm` and
//! `grouped_weight_grad`, on Burn's cube tensors. The tile map comes from the offsets on the
//! device, so no call reads anything back, dropless included. The shaders read vec4: inputs
//! whose widths are not multiples of 4 (or a transposed weight view, in the backward pass) are
//! copied once, padded with zeros.

use burn::backend::ops::FloatTensorOps;
use burn::backend::wgpu::{CubeBackend, CubeTensor, into_contiguous};
use burn::tensor::{DType, FloatDType, Shape, Slice};
use burn_cubecl::cubecl::server::Handle;

use super::op::GroupedMatmul;
use crate::kernels::launch::{expect_dtype, kernel, launch, output, params, scratch};

const GROUP_TILES: &str = include_str!("../../shaders/group_tiles.wgsl");
const GROUPED_GEMM: &str = include_str!("../../shaders/grouped_gemm.wgsl");
const GROUPED_WEIGHT_GRAD: &str = include_str!("../../shaders/grouped_weight_grad.wgsl");

/// Rows of one tile of `grouped_gemm`.
const TILE_ROWS: usize = 64;
/// Columns of one tile of both shaders (and rows of a `dw` tile), and their workgroup size.
const TILE: usize = 64;

/// Checks the shapes the shaders index with; a mismatch is a programming error. Returns the
/// rows and the groups.
fn check(x: &CubeTensor, offsets: &CubeTensor, k: usize) -> (usize, usize) {
    expect_dtype(x, DType::F32, "grouped matmul input");
    expect_dtype(offsets, DType::I32, "group offsets");
    let (rows, xk) = (x.meta.shape[0], x.meta.shape[1]);
    assert_eq!(
        xk, k,
        "grouped matmul: x has {xk} columns, the weights {k} rows"
    );
    (rows, offsets.meta.shape[0] - 1)
}

/// The tile map of `rows` rows in `groups` groups: `[groups + 2]` (see `group_tiles.wgsl`).
fn tile_map(x: &CubeTensor, offsets: &CubeTensor, rows: usize, groups: usize) -> Handle {
    let map = scratch(x, groups + 2);
    launch(
        x,
        kernel("group_tiles", GROUP_TILES, &[("tile_rows", TILE_ROWS)]),
        1,
        [1, 1],
        vec![
            offsets.handle.clone(),
            params(x, &[rows as u32, groups as u32]),
            map.clone(),
        ],
    );
    map
}

/// `t` contiguous, its dimensions `dims` zero-padded to multiples of 4 (the shaders read vec4):
/// `t` itself when it is contiguous and they are, else one copy.
fn padded(t: CubeTensor, dims: &[usize]) -> CubeTensor {
    let t = into_contiguous(t);
    let shape: Vec<usize> = t.meta.shape.iter().copied().collect();
    if dims.iter().all(|&d| shape[d].is_multiple_of(4)) {
        return t;
    }
    let mut target = shape.clone();
    for &d in dims {
        target[d] = shape[d].next_multiple_of(4);
    }
    let zeros = CubeBackend::float_zeros(Shape::from(target), &t.device, FloatDType::F32);
    let slices: Vec<Slice> = shape.iter().map(|&s| Slice::from(0..s)).collect();
    CubeBackend::float_slice_assign(zeros, &slices, t)
}

/// The first `dims` of each dimension of `t` (a view; `t` itself when nothing is cut).
fn cut(t: CubeTensor, dims: &[usize]) -> CubeTensor {
    if t.meta.shape.iter().eq(dims.iter()) {
        return t;
    }
    let slices: Vec<Slice> = dims.iter().map(|&s| Slice::from(0..s)).collect();
    CubeBackend::float_slice(t, &slices)
}

/// `out [rows, n]` from `x [rows, k]` and `w [groups, k, n]`, with the SwiGLU of `w_gate`'s
/// product in the epilogue when given.
fn gemm(
    x: CubeTensor,
    offsets: CubeTensor,
    w: CubeTensor,
    w_gate: Option<CubeTensor>,
) -> CubeTensor {
    expect_dtype(&w, DType::F32, "grouped matmul weights");
    let (groups, k, n) = (w.meta.shape[0], w.meta.shape[1], w.meta.shape[2]);
    let offsets = into_contiguous(offsets);
    let (rows, offset_groups) = check(&x, &offsets, k);
    assert_eq!(
        offset_groups, groups,
        "grouped matmul: one offset per group + 1"
    );
    if let Some(g) = &w_gate {
        assert!(
            g.meta.shape == w.meta.shape,
            "grouped SwiGLU: the gate weights must have the up weights' shape"
        );
    }
    let x = padded(x, &[1]);
    let w = padded(w, &[1, 2]);
    let w_gate = w_gate.map(|g| padded(g, &[1, 2]));
    let (k4, n4) = (w.meta.shape[1], w.meta.shape[2]);
    let out = output(&x, Shape::new([rows, n4]), DType::F32);
    let map = tile_map(&x, &offsets, rows, groups);
    // Row tiles: at most one partial tile per group, plus the rows past the last group.
    let row_tiles = rows.div_ceil(TILE_ROWS) + groups + 1;
    launch(
        &x,
        kernel(
            "grouped_gemm",
            GROUPED_GEMM,
            &[("k", k4), ("n", n4), ("tile_rows", TILE_ROWS)],
        )
        .with("swiglu", w_gate.is_some()),
        TILE as u32,
        [row_tiles, n4.div_ceil(TILE)],
        vec![
            x.handle.clone(),
            offsets.handle.clone(),
            w.handle.clone(),
            w_gate.as_ref().unwrap_or(&w).handle.clone(),
            map,
            params(&x, &[rows as u32, groups as u32]),
            out.handle.clone(),
        ],
    );
    cut(out, &[rows, n])
}

impl GroupedMatmul for CubeBackend {
    fn grouped_matmul(x: CubeTensor, offsets: CubeTensor, w: CubeTensor) -> CubeTensor {
        gemm(x, offsets, w, None)
    }

    fn grouped_matmul_weight_grad(
        x: CubeTensor,
        dy: CubeTensor,
        offsets: CubeTensor,
    ) -> CubeTensor {
        let offsets = into_contiguous(offsets);
        let k = x.meta.shape[1];
        let (rows, groups) = check(&x, &offsets, k);
        expect_dtype(&dy, DType::F32, "grouped matmul output gradient");
        let (dy_rows, n) = (dy.meta.shape[0], dy.meta.shape[1]);
        assert_eq!(
            dy_rows, rows,
            "grouped weight gradient: x and dy rows differ"
        );
        let (x, dy) = (padded(x, &[1]), padded(dy, &[1]));
        let (k4, n4) = (x.meta.shape[1], dy.meta.shape[1]);
        let dw = output(&x, Shape::new([groups, k4, n4]), DType::F32);
        launch(
            &x,
            kernel(
                "grouped_weight_grad",
                GROUPED_WEIGHT_GRAD,
                &[("k", k4), ("n", n4)],
            ),
            TILE as u32,
            [k4.div_ceil(TILE) * n4.div_ceil(TILE), groups],
            vec![
                x.handle.clone(),
                dy.handle.clone(),
                offsets.handle.clone(),
                dw.handle.clone(),
            ],
        );
        cut(dw, &[groups, k, n])
    }

    fn grouped_swiglu_ffn(
        x: CubeTensor,
        offsets: CubeTensor,
        w_in: CubeTensor,
        w_gate: CubeTensor,
        w_out: CubeTensor,
    ) -> CubeTensor {
        let hidden = gemm(x, offsets.clone(), w_in, Some(w_gate));
        gemm(hidden, offsets, w_out, None)
    }
}
