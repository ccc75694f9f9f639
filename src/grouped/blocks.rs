//! The grouped matmul through Burn tensor ops: each group's rows gathered into a block of
//! `max_rows` slots, one batched matmul over the blocks, the results put back in place. It runs
//! on any backend, Burn's autodiff gives its gradients, and it is the reference the tests and
//! benchmarks compare the CPU and WGSL kernels with.

use burn::tensor::{IndexingUpdateOp, Int, Tensor};

use crate::error::MoeError;

use super::GroupOffsets;

/// See [`super::grouped_matmul`].
pub fn grouped_matmul(x: Tensor<2>, groups: &GroupOffsets, w: Tensor<3>) -> Tensor<2> {
    in_blocks(x, groups, |blocks| blocks.matmul(w))
}

/// Gathers each group's rows into a block of `max_rows` slots (read back once when it is
/// `None`: the largest group, rounded up to a coarse bucket), runs `f` on the blocks
/// `[groups, slots, k] -> [groups, slots, n]`, and puts each row's result back in place; rows
/// past the last group come out zero.
fn in_blocks(
    x: Tensor<2>,
    groups: &GroupOffsets,
    f: impl FnOnce(Tensor<3>) -> Tensor<3>,
) -> Tensor<2> {
    let [rows, k] = x.dims();
    let m = groups.offsets.dims()[0] - 1;
    let slots = block_rows(groups);
    let device = x.device();
    let starts = groups.offsets.clone().narrow(0, 0, m).unsqueeze_dim::<2>(1);
    let ends = groups.offsets.clone().narrow(0, 1, m).unsqueeze_dim::<2>(1);
    let slot = Tensor::<1, Int>::arange(0..slots as i64, &device).unsqueeze_dim::<2>(0);
    let row = starts.expand([m, slots]) + slot.expand([m, slots]); // [m, slots]
    let empty = row.clone().greater_equal(ends.expand([m, slots]));
    // Empty slots read, and write to, one extra zero row past the last.
    let index = row.mask_fill(empty, rows as i64).reshape([m * slots]);
    let padded = Tensor::cat(vec![x, Tensor::zeros([1, k], &device)], 0);
    let blocks = f(padded.select(0, index.clone()).reshape([m, slots, k]));
    let [_, _, n] = blocks.dims();
    Tensor::<2>::zeros([rows + 1, n], &device)
        .select_assign(
            0,
            index,
            blocks.reshape([m * slots, n]),
            IndexingUpdateOp::Add,
        )
        .narrow(0, 0, rows)
}

/// Slots per block: `max_rows`, or else the largest group read back from the device (one
/// small read, counted) and rounded up by [`slot_bucket`]; at least 1.
fn block_rows(groups: &GroupOffsets) -> usize {
    groups
        .max_rows
        .unwrap_or_else(|| slot_bucket(largest_group(groups)))
        .max(1)
}

/// The most rows any group holds, read from the device (one small read, counted).
fn largest_group(groups: &GroupOffsets) -> usize {
    crate::moe::count_read();
    let offsets: Vec<i64> = groups
        .offsets
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| MoeError::Backend(format!("reading the expert offsets: {e:?}")))
        .expect("offsets are an int tensor on the layer's device");
    offsets
        .windows(2)
        .map(|w| (w[1] - w[0]).max(0) as usize)
        .max()
        .unwrap_or(0)
}

/// `load` rounded up to keep its three leading binary digits: a multiple of
/// `max(8, next_power_of_two(load) / 8)`. Padding stays under a quarter of the load (above 32) while
/// the number of distinct sizes grows only with the logarithm of the load.
fn slot_bucket(load: usize) -> usize {
    let step = (load.next_power_of_two() / 8).max(8);
    load.div_ceil(step) * step
}

#[cfg(test)]
mod tests {
    use super::slot_bucket;

    #[test]
    fn buckets_pad_little_and_stay_few() {
        assert_eq!(slot_bucket(0), 0);
        assert_eq!(slot_bucket(5), 8);
        assert_eq!(slot_bucket(400), 448);
        assert_eq!(slot_bucket(512), 512);
        assert_eq!(slot_bucket(513), 640);
        for load in 1..5000usize {
            let b = slot_bucket(load);
            assert!(b >= load && (b - load) * 4 < load.max(32), "{load} -> {b}");
        }
        let distinct: std::collections::BTreeSet<_> = (1..5000).map(slot_bucket).collect();
        assert!(distinct.len() < 80, "{}", distinct.len());
    }
}
