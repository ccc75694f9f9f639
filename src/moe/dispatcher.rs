//! Token dispatch and combine: gather each expert's tokens into a padded block (one batched
//! matmul, fixed shapes: what a GPU wants) or into one packed run of rows sorted by expert (no
//! padding, one matmul per expert: what a CPU wants), and scatter the gated expert outputs back
//! to their tokens.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::moe::ExpertFfn;
use crate::routing::RoutingPlan;

/// How dispatched tokens are laid out for the experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertLayout {
    /// `[experts, slots, d]`: every expert gets the same number of slots, padding included.
    Padded,
    /// `[rows, d]`: expert 0's admitted assignments, then expert 1's, ...; no padding.
    Packed,
}

impl ExpertLayout {
    /// The faster layout for a call of `assignments` (token, expert) pairs on `device`:
    ///
    /// - GPU: padded (one batched matmul over shapes that repeat).
    /// - CPU inference: packed (no wasted rows; per-expert blocks that stay in cache).
    /// - CPU training: autodiff turns each expert's weight slice into a full-size gradient (a zero
    ///   tensor plus an add), about `3 * m^2 * d_model * d_ff` floats of memory traffic per call,
    ///   while the padded layout's cost grows with its activations (`~assignments * d_ff`, which
    ///   page-fault in fresh once they outgrow the allocator's reuse). Packed is chosen when
    ///   `m^2 * d_model <= 8 * assignments`. The constant is fitted to the measurements in
    ///   BENCHMARKS.md on flex: at `m^2 d / assignments` = 1 and 4 packed was 6-32% faster, at
    ///   16 padded was 45% faster, at 128 (64 experts) padded was 13x faster.
    pub fn choose(device: &Device, assignments: usize, experts: usize, d_model: usize) -> Self {
        if crate::kernels::is_gpu(device) {
            ExpertLayout::Padded
        } else if !device.is_autodiff() || experts * experts * d_model <= 8 * assignments {
            ExpertLayout::Packed
        } else {
            ExpertLayout::Padded
        }
    }
}

/// Index tensors that move tokens between `[tokens, d]` and the experts' layout.
///
/// Padded: expert `e`'s admitted assignments fill slots `0..count_e` of its block in admission
/// order; the remaining slots are padding that reads a zero row and carries a zero gate.
/// Packed: the same assignments, expert after expert, with no padding.
#[derive(Debug, Clone)]
pub struct TokenDispatcher {
    layout: ExpertLayout,
    /// Admitted assignments per expert (the packed layout's block lengths).
    counts: Vec<usize>,
    experts: usize,
    slots: usize,
    tokens: usize,
    top_k: usize,
    /// `[experts * slots]`: token feeding each slot (`tokens` = the zero padding row).
    slot_token: Tensor<1, Int>,
    /// `[tokens * k]`: the row of the experts' output holding assignment `t * k + r`, or the
    /// zero row appended after the last one when the assignment was dropped.
    assignment_row: Tensor<1, Int>,
}

impl TokenDispatcher {
    /// Lays out the plan's admitted assignments.
    ///
    /// With a capacity the block has `groups * capacity` slots per expert, the same every call
    /// (one shape to compile and tune on a GPU); dropless it has the largest expert load rounded
    /// up to a coarse bucket (`slot_bucket`), so a GPU compiles and tunes a handful of
    /// shapes instead of a new one at almost every call.
    pub fn new(plan: &RoutingPlan, groups: usize, layout: ExpertLayout, device: &Device) -> Self {
        let counts: Vec<usize> = plan.expert_assignments.iter().map(Vec::len).collect();
        let most = counts.iter().copied().max().unwrap_or(0);
        let (slot_token, slot_assignment, slots) = match layout {
            ExpertLayout::Padded => {
                let slots = match plan.capacity {
                    Some(c) => groups * c,
                    None => slot_bucket(most),
                }
                .max(1);
                let (pad_token, pad_assignment) =
                    (plan.tokens as i64, (plan.tokens * plan.top_k) as i64);
                let mut slot_token = vec![pad_token; plan.experts * slots];
                let mut slot_assignment = vec![pad_assignment; plan.experts * slots];
                for (e, assignments) in plan.expert_assignments.iter().enumerate() {
                    for (s, &a) in assignments.iter().enumerate() {
                        slot_token[e * slots + s] = (a as usize / plan.top_k) as i64;
                        slot_assignment[e * slots + s] = a as i64;
                    }
                }
                (slot_token, slot_assignment, slots)
            }
            ExpertLayout::Packed => {
                let rows = plan.expert_assignments.iter().flatten();
                let slot_token = rows
                    .clone()
                    .map(|&a| (a as usize / plan.top_k) as i64)
                    .collect();
                let slot_assignment = rows.map(|&a| a as i64).collect();
                (slot_token, slot_assignment, 0)
            }
        };
        let len = slot_token.len();
        let assignments = plan.tokens * plan.top_k;
        let mut assignment_row = vec![len as i64; assignments];
        for (row, &a) in slot_assignment.iter().enumerate() {
            if let Some(r) = assignment_row.get_mut(a as usize) {
                *r = row as i64; // padding slots (a = tokens * k) have no assignment
            }
        }
        TokenDispatcher {
            layout,
            counts,
            experts: plan.experts,
            slots,
            tokens: plan.tokens,
            top_k: plan.top_k,
            slot_token: Tensor::from_data(TensorData::new(slot_token, [len]), device),
            assignment_row: Tensor::from_data(
                TensorData::new(assignment_row, [assignments]),
                device,
            ),
        }
    }

    /// Slots per expert block (padded layout; 0 when packed).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The layout.
    pub fn layout(&self) -> ExpertLayout {
        self.layout
    }

    /// Gathers tokens into the experts' layout.
    ///
    /// # Shapes
    /// - x: `[tokens, d_model]`
    /// - output: `[experts, slots, d_model]` (padded) or `[1, rows, d_model]` (packed, rows
    ///   sorted by expert)
    pub fn dispatch(&self, x: Tensor<2>) -> Tensor<3> {
        let [_, d] = x.dims();
        match self.layout {
            ExpertLayout::Padded => {
                let zero = Tensor::zeros([1, d], &x.device());
                Tensor::cat(vec![x, zero], 0)
                    .select(0, self.slot_token.clone())
                    .reshape([self.experts, self.slots, d])
            }
            ExpertLayout::Packed => x.select(0, self.slot_token.clone()).unsqueeze_dim(0),
        }
    }

    /// Runs the experts on dispatched tokens: one batched matmul over the padded blocks, or
    /// one matmul per expert over its rows of the packed run.
    ///
    /// # Shapes
    /// - x, output: as [`dispatch`](Self::dispatch)'s output
    pub fn run_experts(&self, experts: &ExpertFfn, x: Tensor<3>) -> Tensor<3> {
        match self.layout {
            ExpertLayout::Padded => experts.forward(x),
            ExpertLayout::Packed => experts
                .forward_packed(x.squeeze_dim(0), &self.counts)
                .unsqueeze_dim(0),
        }
    }

    /// Weighs each expert output by its gate and sums each token's assignments.
    ///
    /// # Shapes
    /// - expert_out: as [`dispatch`](Self::dispatch)'s output
    /// - gates: `[tokens, top_k]`
    /// - output: `[tokens, d_model]` (zero for tokens with no computed assignment)
    pub fn combine(&self, expert_out: Tensor<3>, gates: Tensor<2>) -> Tensor<2> {
        let [_, _, d] = expert_out.dims();
        let device = expert_out.device();
        let rows = expert_out.dims()[0] * expert_out.dims()[1];
        // A gather, not a scatter: each assignment reads its own row (dropped ones the zero
        // row), so the result is deterministic and the per-token sum over k a plain reduction.
        let zero = Tensor::zeros([1, d], &device);
        Tensor::cat(vec![expert_out.reshape([rows, d]), zero], 0)
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
    use super::{ExpertLayout, slot_bucket};
    use burn::tensor::Device;

    #[test]
    fn layout_follows_the_measured_cost_rule() {
        #[allow(deprecated)]
        let cpu = Device::ndarray();
        let train = cpu.clone().autodiff();
        let pick = |device: &Device, tokens: usize, k: usize, m: usize, d: usize| {
            ExpertLayout::choose(device, tokens * k, m, d)
        };
        // Inference on a CPU: always packed, however many experts.
        assert_eq!(pick(&cpu, 8192, 2, 64, 512), ExpertLayout::Packed);
        // Training: the shapes measured in BENCHMARKS.md, each with its faster layout.
        assert_eq!(pick(&train, 2048, 2, 16, 256), ExpertLayout::Padded);
        assert_eq!(pick(&train, 8192, 2, 16, 256), ExpertLayout::Packed);
        assert_eq!(pick(&train, 32768, 2, 16, 256), ExpertLayout::Packed);
        assert_eq!(pick(&train, 8192, 1, 8, 512), ExpertLayout::Packed);
        assert_eq!(pick(&train, 8192, 2, 64, 512), ExpertLayout::Padded);
    }

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
