//! Token dispatch and combine: gather each expert's tokens into a padded block, scatter the
//! gated expert outputs back to their tokens.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::routing::RoutingPlan;

/// Index tensors that move tokens between `[tokens, d]` and `[experts, slots, d]`.
///
/// Expert `e`'s admitted assignments fill slots `0..count_e` of its block in admission order;
/// the remaining slots are padding that reads a zero row and carries a zero gate.
#[derive(Debug, Clone)]
pub struct TokenDispatcher {
    experts: usize,
    slots: usize,
    tokens: usize,
    top_k: usize,
    /// `[experts * slots]`: token feeding each slot (`tokens` = the zero padding row).
    slot_token: Tensor<1, Int>,
    /// `[experts * slots]`: assignment `t * k + r` of each slot (`tokens * k` = padding).
    slot_assignment: Tensor<1, Int>,
}

impl TokenDispatcher {
    /// Lays out the plan's admitted assignments.
    ///
    /// With a capacity the block has `groups * capacity` slots per expert, the same every call
    /// (one shape to compile and tune on a GPU); dropless it has the largest expert load rounded
    /// up to a coarse bucket (see [`slot_bucket`]), so a GPU compiles and tunes a handful of
    /// shapes instead of a new one at almost every call.
    pub fn new(plan: &RoutingPlan, groups: usize, device: &Device) -> Self {
        let most = plan.computed_counts.iter().copied().max().unwrap_or(0);
        let slots = match plan.capacity {
            Some(c) => groups * c,
            None => slot_bucket(most),
        }
        .max(1);
        let (pad_token, pad_assignment) = (plan.tokens as i64, (plan.tokens * plan.top_k) as i64);
        let mut slot_token = vec![pad_token; plan.experts * slots];
        let mut slot_assignment = vec![pad_assignment; plan.experts * slots];
        for (e, assignments) in plan.expert_assignments.iter().enumerate() {
            for (s, &a) in assignments.iter().enumerate() {
                slot_token[e * slots + s] = (a as usize / plan.top_k) as i64;
                slot_assignment[e * slots + s] = a as i64;
            }
        }
        let len = plan.experts * slots;
        TokenDispatcher {
            experts: plan.experts,
            slots,
            tokens: plan.tokens,
            top_k: plan.top_k,
            slot_token: Tensor::from_data(TensorData::new(slot_token, [len]), device),
            slot_assignment: Tensor::from_data(TensorData::new(slot_assignment, [len]), device),
        }
    }

    /// Slots per expert block.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Gathers tokens into expert blocks.
    ///
    /// # Shapes
    /// - x: `[tokens, d_model]`
    /// - output: `[experts, slots, d_model]`
    pub fn dispatch(&self, x: Tensor<2>) -> Tensor<3> {
        let [_, d] = x.dims();
        let zero = Tensor::zeros([1, d], &x.device());
        Tensor::cat(vec![x, zero], 0)
            .select(0, self.slot_token.clone())
            .reshape([self.experts, self.slots, d])
    }

    /// Weighs each expert output by its gate and sums each token's assignments.
    ///
    /// # Shapes
    /// - expert_out: `[experts, slots, d_model]`
    /// - gates: `[tokens, top_k]`
    /// - output: `[tokens, d_model]` (zero for tokens with no computed assignment)
    pub fn combine(&self, expert_out: Tensor<3>, gates: Tensor<2>) -> Tensor<2> {
        let [_, _, d] = expert_out.dims();
        let device = expert_out.device();
        let assignments = self.tokens * self.top_k;
        let gate_per_slot = Tensor::cat(
            vec![gates.reshape([assignments]), Tensor::zeros([1], &device)],
            0,
        )
        .select(0, self.slot_assignment.clone());
        let weighted =
            expert_out.reshape([self.experts * self.slots, d]) * gate_per_slot.unsqueeze_dim(1);
        // Each real assignment owns one row, so the scatter has no collisions except padding
        // (zeros onto the spare last row); the per-token sum over k is then a plain reduction,
        // which keeps the result deterministic on every backend.
        Tensor::<2>::zeros([assignments + 1, d], &device)
            .select_assign(
                0,
                self.slot_assignment.clone(),
                weighted,
                IndexingUpdateOp::Add,
            )
            .narrow(0, 0, assignments)
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
