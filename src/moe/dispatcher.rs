//! Token dispatch and combine: every assignment `(token, rank)` gets one row of an
//! expert-sorted buffer (`tokens * k` rows: expert 0's admitted assignments, expert 1's, ...,
//! then the ones no expert computes), the experts run as grouped matmuls over it, and each
//! token gathers its gated rows back.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::grouped::GroupOffsets;
use crate::moe::ExpertFfn;
use crate::routing::RoutingPlan;

/// Index tensors that move tokens between `[tokens, d]` and the expert-sorted buffer.
#[derive(Debug, Clone)]
pub struct TokenDispatcher {
    tokens: usize,
    top_k: usize,
    /// `[tokens * k]`: the token feeding each row of the sorted buffer.
    row_token: Tensor<1, Int>,
    /// `[tokens * k]`: the row holding assignment `t * k + r`.
    assignment_row: Tensor<1, Int>,
    /// Each expert's rows.
    groups: GroupOffsets,
}

impl TokenDispatcher {
    /// Lays out the plan's assignments: each expert's admitted ones in admission order, then
    /// the dropped and unused ones (their rows are not computed).
    ///
    /// The bound on an expert's rows is `groups * capacity` with a capacity; dropless it is the
    /// largest load rounded up to a coarse bucket (its three leading binary digits), so the grouped
    /// matmul (wgpu) compiles and tunes a handful of block shapes, not one per call.
    pub fn new(plan: &RoutingPlan, groups: usize, device: &Device) -> Self {
        let assignments = plan.tokens * plan.top_k;
        let mut order: Vec<u32> = plan.expert_assignments.iter().flatten().copied().collect();
        order.extend((0..assignments as u32).filter(|&a| !plan.admitted[a as usize]));
        let mut assignment_row = vec![0i64; assignments];
        for (row, &a) in order.iter().enumerate() {
            assignment_row[a as usize] = row as i64;
        }
        let row_token: Vec<i64> = order
            .iter()
            .map(|&a| (a as usize / plan.top_k) as i64)
            .collect();
        let mut offsets = vec![0i64];
        for assigned in &plan.expert_assignments {
            offsets.push(offsets[offsets.len() - 1] + assigned.len() as i64);
        }
        let most = plan
            .expert_assignments
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        let max_rows = plan.capacity.map_or(slot_bucket(most), |c| groups * c);
        let int = |values: Vec<i64>| {
            let len = values.len();
            Tensor::<1, Int>::from_data(TensorData::new(values, [len]), device)
        };
        TokenDispatcher {
            tokens: plan.tokens,
            top_k: plan.top_k,
            row_token: int(row_token),
            assignment_row: int(assignment_row),
            groups: GroupOffsets {
                offsets: int(offsets),
                max_rows,
            },
        }
    }

    /// Each expert's rows of the sorted buffer.
    pub fn groups(&self) -> &GroupOffsets {
        &self.groups
    }

    /// Gathers each assignment's token into the sorted buffer.
    ///
    /// # Shapes
    /// - x: `[tokens, d_model]`
    /// - output: `[tokens * k, d_model]`, rows sorted by expert
    pub fn dispatch(&self, x: Tensor<2>) -> Tensor<2> {
        x.select(0, self.row_token.clone())
    }

    /// Runs the experts on the sorted buffer (zero rows for uncomputed assignments).
    ///
    /// # Shapes
    /// - x, output: `[tokens * k, d_model]`
    pub fn run_experts(&self, experts: &ExpertFfn, x: Tensor<2>) -> Tensor<2> {
        experts.forward_grouped(x, &self.groups)
    }

    /// Weighs each expert output by its gate and sums each token's assignments.
    ///
    /// # Shapes
    /// - expert_out: `[tokens * k, d_model]`, as [`run_experts`](Self::run_experts)' output
    /// - gates: `[tokens, top_k]`
    /// - output: `[tokens, d_model]` (zero for tokens with no computed assignment)
    pub fn combine(&self, expert_out: Tensor<2>, gates: Tensor<2>) -> Tensor<2> {
        let [_, d] = expert_out.dims();
        // A gather, not a scatter: each assignment reads its own row, so the result is
        // deterministic and the per-token sum over k a plain reduction.
        expert_out
            .select(0, self.assignment_row.clone())
            .mul(gates.reshape([self.tokens * self.top_k, 1]))
            .reshape([self.tokens, self.top_k, d])
            .sum_dim(1)
            .reshape([self.tokens, d])
    }
}

/// `load` rounded up to keep its three leading binary digits: a multiple of
/// `max(8, next_power_of_two(load) / 8)`. Padding stays under a quarter of the load (above 32) while
/// the number of distinct sizes grows only with the logarithm of the load.
pub fn slot_bucket(load: usize) -> usize {
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
