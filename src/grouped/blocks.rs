//! The grouped matmul through Burn tensor ops: each group's rows gathered into a block of
//! `max_rows` slots, one batched matmul over the blocks, the results put back in place. What
//! runs on wgpu until a grouped GEMM kernel replaces it; it runs on any backend, and Burn's
//! autodiff gives its gradients (the weight gradient comes out of the batched matmul whole).

use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use super::GroupOffsets;

/// See [`super::grouped_matmul`].
pub fn grouped_matmul(x: Tensor<2>, groups: &GroupOffsets, w: Tensor<3>) -> Tensor<2> {
    let [rows, k] = x.dims();
    let [m, _, n] = w.dims();
    let slots = groups.max_rows.max(1);
    let device = x.device();
    let starts = groups.offsets.clone().narrow(0, 0, m).unsqueeze_dim::<2>(1);
    let ends = groups.offsets.clone().narrow(0, 1, m).unsqueeze_dim::<2>(1);
    let slot = Tensor::<1, Int>::arange(0..slots as i64, &device).unsqueeze_dim::<2>(0);
    let row = starts.expand([m, slots]) + slot.expand([m, slots]); // [m, slots]
    let empty = row.clone().greater_equal(ends.expand([m, slots]));
    // Empty slots read, and write to, one extra zero row past the last.
    let index = row.mask_fill(empty, rows as i64).reshape([m * slots]);
    let padded = Tensor::cat(vec![x, Tensor::zeros([1, k], &device)], 0);
    let blocks = padded
        .select(0, index.clone())
        .reshape([m, slots, k])
        .matmul(w)
        .reshape([m * slots, n]);
    Tensor::<2>::zeros([rows + 1, n], &device)
        .select_assign(0, index, blocks, IndexingUpdateOp::Add)
        .narrow(0, 0, rows)
}
