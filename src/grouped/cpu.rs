//! The grouped matmul on the CPU: one `gemm` call per block of a group's rows (forward, dX) or
//! per block of a group's weight rows (dW), the blocks spread over rayon's threads. Every block
//! writes its own part of the output, so the result does not depend on the thread count.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Fewest rows of one `gemm` call in the forward pass, enough to amortise packing the weight
/// block (the fused FFN uses exactly this many, to keep its intermediates in cache).
pub(crate) const ROW_BLOCK: usize = 256;
/// Fewest weight rows of one `gemm` call in the weight gradient.
const WEIGHT_ROW_BLOCK: usize = 64;

/// Rows (or weight rows) per task when a product of `total` rows is split for the thread pool:
/// about four tasks per thread, at least `min` (each task packs its weight block once, so fewer,
/// larger tasks pack less).
fn block_for(total: usize, min: usize) -> usize {
    total.div_ceil(4 * rayon::current_num_threads()).max(min)
}

/// A stack of `[k, n]` matrices in a slice: element `(g, i, j)` sits at
/// `offset + g * group + i * row + j * col`. A transposed view just swaps `row` and `col`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stacked<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub strides: [isize; 3],
}

impl Stacked<'_> {
    /// Largest element index a `[groups, k, n]` view reaches (all strides are non-negative).
    fn last_index(&self, groups: usize, k: usize, n: usize) -> usize {
        let [g, r, c] = self.strides.map(|s| s as usize);
        self.offset + (groups.max(1) - 1) * g + (k.max(1) - 1) * r + (n.max(1) - 1) * c
    }
}

/// Checks the offsets: `groups + 1` non-decreasing values from 0, at most `rows`.
pub(crate) fn check_offsets(offsets: &[usize], rows: usize) {
    assert!(
        offsets.first() == Some(&0)
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets.last().is_some_and(|&end| end <= rows),
        "grouped matmul: offsets {offsets:?} must rise from 0 to at most {rows} rows"
    );
}

/// `out[r] = x[r] @ w[g]` for the rows `offsets[g]..offsets[g + 1]` of group `g`; rows past
/// the last offset are zero.
///
/// `x`: `[rows, k]` contiguous; `w`: `[groups, k, n]` (any non-negative strides);
/// returns `[rows, n]`.
pub(crate) fn grouped_matmul(
    x: &[f32],
    k: usize,
    offsets: &[usize],
    w: Stacked<'_>,
    n: usize,
) -> Vec<f32> {
    let rows = x.len() / k.max(1);
    check_offsets(offsets, rows);
    assert!(x.len() == rows * k, "grouped matmul: shapes");
    w.check(offsets.len() - 1, k, n);
    let block_rows = block_for(offsets[offsets.len() - 1], ROW_BLOCK);
    by_row_blocks(offsets, rows, n, block_rows, |g, start, len, block| {
        // SAFETY: rows `start..start + len` of `x` exist (offsets checked against `rows`), the
        // weights were checked, and `block` holds `len * n` values.
        unsafe {
            gemm_rows(
                block.as_mut_ptr().cast(),
                len,
                n,
                k,
                x.as_ptr().add(start * k),
                w,
                g,
            )
        }
    })
}

impl<'a> Stacked<'a> {
    /// A contiguous `[groups, k, n]` stack.
    pub(crate) fn dense(data: &'a [f32], k: usize, n: usize) -> Self {
        Stacked {
            data,
            offset: 0,
            strides: [(k * n) as isize, n as isize, 1],
        }
    }

    /// Panics unless a `[groups, k, n]` view fits in the slice.
    pub(crate) fn check(&self, groups: usize, k: usize, n: usize) {
        assert!(
            groups == 0 || k == 0 || n == 0 || self.last_index(groups, k, n) < self.data.len(),
            "grouped matmul: weights too short"
        );
    }
}

/// A `[total, n]` output computed in parallel blocks of at most `block_rows` rows of one
/// group: `fill(g, start, len, block)` must write all `len * n` values of the block of rows
/// `start..start + len` of group `g`; rows past the last group are zero. No value is
/// zero-filled first.
pub(crate) fn by_row_blocks(
    offsets: &[usize],
    total: usize,
    n: usize,
    block_rows: usize,
    fill: impl Fn(usize, usize, usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let groups = offsets.len() - 1;
    let rows = offsets[groups];
    let mut out = Vec::with_capacity(total * n);
    let (computed, rest) = out.spare_capacity_mut()[..total * n].split_at_mut(rows * n);
    rest.fill(MaybeUninit::new(0.0));
    let mut tasks = Vec::new();
    let mut remaining = computed;
    for g in 0..groups {
        let mut start = offsets[g];
        while start < offsets[g + 1] {
            let len = block_rows.min(offsets[g + 1] - start);
            let (block, tail) = remaining.split_at_mut(len * n);
            tasks.push((g, start, len, block));
            remaining = tail;
            start += len;
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(g, start, len, block)| fill(g, start, len, block));
    // SAFETY: the tail rows were zero-filled and `fill` wrote every block of computed rows.
    unsafe { out.set_len(total * n) };
    out
}

/// `out [len, n] = lhs [len, k] (row stride k) @ w[g]`, overwriting `out` (k = 0: zeros).
///
/// # Safety
/// `out` must hold `len * n` values, `lhs` `len` rows of `k`, and `w` a checked view with group
/// `g`.
pub(crate) unsafe fn gemm_rows(
    out: *mut f32,
    len: usize,
    n: usize,
    k: usize,
    lhs: *const f32,
    w: Stacked<'_>,
    g: usize,
) {
    if k == 0 {
        // SAFETY: the caller guarantees `len * n` values behind `out`.
        unsafe { std::slice::from_raw_parts_mut(out, len * n).fill(0.0) };
        return;
    }
    let [gs, rs, cs] = w.strides;
    // SAFETY: as the caller guarantees.
    unsafe {
        gemm_into(
            out,
            [len, n, k],
            (lhs, k as isize, 1),
            (w.data.as_ptr().add(w.offset + g * gs as usize), rs, cs),
        )
    }
}

/// `out [m, n]` (row-major, contiguous) `= lhs [m, k] @ rhs [k, n]`, each operand given as
/// `(pointer, row stride, column stride)`; every value of `out` is overwritten.
///
/// # Safety
/// `out` must hold `m * n` values and every strided element of `lhs` and `rhs` must be readable.
unsafe fn gemm_into(
    out: *mut f32,
    [m, n, k]: [usize; 3],
    (lhs, lhs_rs, lhs_cs): (*const f32, isize, isize),
    (rhs, rhs_rs, rhs_cs): (*const f32, isize, isize),
) {
    // SAFETY: as the caller guarantees; `read_dst = false` makes `gemm` overwrite `out`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            n as isize,
            false,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `dw[g] = x_g^T @ dy_g` over each group's rows: the weight gradient of [`grouped_matmul`].
///
/// `x`: `[rows, k]`, `dy`: `[rows, n]`, both contiguous; returns `dw`: `[groups, k, n]`, zero
/// for groups without rows.
pub(crate) fn grouped_weight_grad(
    x: &[f32],
    k: usize,
    dy: &[f32],
    n: usize,
    offsets: &[usize],
) -> Vec<f32> {
    let rows = x.len() / k.max(1);
    let groups = offsets.len() - 1;
    check_offsets(offsets, rows);
    assert!(
        x.len() == rows * k && dy.len() == rows * n,
        "grouped weight gradient: shapes"
    );
    // Weight-row blocks: each task packs its group's whole `dy` block, so split a group only as
    // far as the thread pool needs.
    let busy = offsets.windows(2).filter(|w| w[1] > w[0]).count().max(1);
    let weight_rows = block_for(k * busy, WEIGHT_ROW_BLOCK.min(k.max(1))).min(k.max(1));
    let mut dw = Vec::with_capacity(groups * k * n);
    let mut tasks = Vec::new();
    let mut remaining = &mut dw.spare_capacity_mut()[..groups * k * n];
    for g in 0..groups {
        let mut i = 0;
        while i < k {
            let len = weight_rows.min(k - i);
            let (block, tail) = remaining.split_at_mut(len * n);
            tasks.push((g, i, len, block));
            remaining = tail;
            i += len;
        }
    }
    tasks.into_par_iter().for_each(|(g, i, len, block)| {
        let (start, count) = (offsets[g], offsets[g + 1] - offsets[g]);
        if count == 0 || n == 0 {
            block.fill(MaybeUninit::new(0.0));
            return;
        }
        // SAFETY: lhs element (a, b) = x[(start + b) * k + i + a] with a < len <= k - i and
        // b < count, rhs element (b, c) = dy[(start + b) * n + c]: both inside their slices
        // (offsets checked); `block` holds exactly `len * n` values.
        unsafe {
            gemm_into(
                block.as_mut_ptr().cast(),
                [len, n, count],
                (x.as_ptr().add(start * k + i), 1, k as isize),
                (dy.as_ptr().add(start * n), n as isize, 1),
            )
        }
    });
    // SAFETY: every block of every group was either zero-filled or written whole by `gemm`.
    unsafe { dw.set_len(groups * k * n) };
    dw
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Plain triple loops, the reference.
    fn naive(x: &[f32], k: usize, offsets: &[usize], w: &[f32], n: usize) -> Vec<f32> {
        let rows = x.len() / k;
        let mut out = vec![0.0; rows * n];
        for g in 0..offsets.len() - 1 {
            for r in offsets[g]..offsets[g + 1] {
                for j in 0..n {
                    out[r * n + j] = (0..k).map(|i| x[r * k + i] * w[(g * k + i) * n + j]).sum();
                }
            }
        }
        out
    }

    /// Deterministic test values in [-1, 1).
    pub(in crate::grouped) fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000)
            .map(|v| v as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn forward_and_weight_gradient_match_loops() {
        let (k, n) = (7, 5);
        // Ragged groups, an empty one, blocks longer than ROW_BLOCK, and unrouted tail rows.
        let offsets = [0, 3, 3, 3 + ROW_BLOCK + 11, 3 + ROW_BLOCK + 12];
        let rows = offsets[4] + 4;
        let x = values(rows * k, 1);
        let w = values(4 * k * n, 2);
        let stacked = Stacked {
            data: &w,
            offset: 0,
            strides: [(k * n) as isize, n as isize, 1],
        };
        let out = grouped_matmul(&x, k, &offsets, stacked, n);
        let expected = naive(&x, k, &offsets, &w, n);
        for (a, b) in out.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }

        let dy = values(rows * n, 3);
        let dw = grouped_weight_grad(&x, k, &dy, n, &offsets);
        for g in 0..4 {
            for i in 0..k {
                for j in 0..n {
                    let want: f32 = (offsets[g]..offsets[g + 1])
                        .map(|r| x[r * k + i] * dy[r * n + j])
                        .sum();
                    let got = dw[(g * k + i) * n + j];
                    assert!((got - want).abs() < 1e-3, "dw[{g},{i},{j}] {got} vs {want}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "must rise from 0")]
    fn offsets_past_the_rows_are_refused() {
        let w = [0.0; 4];
        let stacked = Stacked {
            data: &w,
            offset: 0,
            strides: [4, 2, 1],
        };
        grouped_matmul(&[0.0; 4], 2, &[0, 3], stacked, 2);
    }
}
