//! Token dispatch and combine: every assignment `(token, rank)` gets one row of an
//! expert-sorted buffer (`tokens * k` rows: expert 0's admitted assignments, expert 1's, ...,
//! then the ones no expert computes), the experts run as grouped matmuls over it, and each
//! token gathers its gated rows back.

use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};

use crate::grouped::GroupOffsets;
use crate::moe::ExpertFfn;
use crate::routing::RoutingPlan;

/// A call's routing decisions as the dispatcher needs them, on the layer's device.
#[derive(Debug, Clone)]
pub struct DeviceRouting {
    /// `[tokens, k]`: each token's chosen experts, rank 0 first.
    pub indices: Tensor<2, Int>,
    /// `[tokens, k]`: an admitted assignment's position in its expert's queue within its local
    /// group (admission order); -1 for an assignment that is dropped or unused.
    pub slots: Tensor<2, Int>,
    /// `[groups, experts]`: admitted assignments per local group and expert.
    pub admitted: Tensor<2, Int>,
}

impl DeviceRouting {
    /// The device form of a host plan (tools and tests that hold a plan).
    pub fn from_plan(plan: &RoutingPlan, groups: usize, device: &Device) -> Self {
        let (n, k, m) = (plan.tokens, plan.top_k, plan.experts);
        let group_len = n / groups;
        let mut slots = vec![-1i64; n * k];
        let mut admitted = vec![0i64; groups * m];
        for (e, assigned) in plan.expert_assignments.iter().enumerate() {
            for &a in assigned {
                let cell = (a as usize / k / group_len) * m + e;
                slots[a as usize] = admitted[cell];
                admitted[cell] += 1;
            }
        }
        let choices = plan.choices.iter().map(|&c| c as i64).collect();
        let int = |values: Vec<i64>, shape: [usize; 2]| {
            Tensor::<2, Int>::from_data(TensorData::new(values, shape), device)
        };
        DeviceRouting {
            indices: int(choices, [n, k]),
            slots: int(slots, [n, k]),
            admitted: int(admitted, [groups, m]),
        }
    }
}

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
    /// Lays out the assignments on the device, with tensor ops only: each expert's admitted
    /// ones (local group after local group, each in admission order), then the dropped and
    /// unused ones in assignment order (their rows are not computed).
    pub fn new(routing: &DeviceRouting) -> Self {
        let [n, k] = routing.indices.dims();
        let [groups, m] = routing.admitted.dims();
        let a = n * k;
        let device = routing.indices.device();
        let slots = routing.slots.clone().reshape([a]);
        let taken = slots.clone().greater_equal_elem(0);
        // Expert offsets, and the first row of each (local group, expert) block.
        let totals = routing.admitted.clone().sum_dim(0).reshape([m]);
        let ends = totals.clone().cumsum(0);
        let starts = ends.clone() - totals;
        let before = routing.admitted.clone().cumsum(0) - routing.admitted.clone();
        let first_row =
            (before + starts.unsqueeze_dim::<2>(0).expand([groups, m])).reshape([groups * m]);
        let assignment = Tensor::<1, Int>::arange(0..a as i64, &device);
        let group = assignment.clone().div_scalar((k * (n / groups)) as i64);
        let cell = group.mul_scalar(m as i64)
            + routing.indices.clone().reshape([a]).clamp(0, m as i64 - 1);
        let admitted_row = first_row.gather(0, cell) + slots;
        // The others follow, in assignment order.
        let others = taken.clone().bool_not().int();
        let total = ends.clone().narrow(0, m - 1, 1).expand([a]);
        let other_row = total + others.clone().cumsum(0) - others;
        let assignment_row = other_row.mask_where(taken, admitted_row);
        let row_token = Tensor::<1, Int>::zeros([a], &device).scatter(
            0,
            assignment_row.clone(),
            assignment.div_scalar(k as i64),
            IndexingUpdateOp::Add,
        );
        let groups = GroupOffsets {
            offsets: Tensor::cat(vec![Tensor::zeros([1], &device), ends], 0),
            // The CPU and WGSL kernels need no bound on a group's rows.
            max_rows: None,
        };
        TokenDispatcher {
            tokens: n,
            top_k: k,
            row_token,
            assignment_row,
            groups,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{RoutingRule, plan_routing};

    fn ints<const D: usize>(t: Tensor<D, Int>) -> Vec<i64> {
        t.into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap()
    }

    /// The device-built layout against the plan it came from: offsets are the running sums of
    /// the computed counts, each expert's rows hold exactly its admitted assignments' tokens,
    /// and every assignment has its own row holding its token.
    #[test]
    fn device_layout_matches_the_plan() {
        #[allow(deprecated)]
        let device = Device::ndarray();
        let (n, m) = (48, 6);
        for (k, groups, capacity_factor) in [
            (2, 1, None),
            (2, 3, Some(1.0)),
            (3, 2, Some(0.7)),
            (1, 4, Some(1.25)),
        ] {
            let scores: Vec<f32> = (0..n * m)
                .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / 16_777_216.0)
                .collect();
            let rule = RoutingRule {
                top_k: k,
                groups,
                capacity_factor,
                random_second: false,
                group_limit: None,
            };
            let plan = plan_routing(&scores, None, n, m, &rule, None).unwrap();
            let routing = DeviceRouting::from_plan(&plan, groups, &device);
            let d = TokenDispatcher::new(&routing);
            let offsets = ints(d.groups.offsets.clone());
            let row_token = ints(d.row_token.clone());
            let assignment_row = ints(d.assignment_row.clone());
            let mut expected = vec![0i64];
            for &c in &plan.computed_counts {
                expected.push(expected.last().unwrap() + c as i64);
            }
            assert_eq!(offsets, expected, "k {k} groups {groups}");
            for (e, assigned) in plan.expert_assignments.iter().enumerate() {
                let rows = offsets[e] as usize..offsets[e + 1] as usize;
                let mut got: Vec<i64> = row_token[rows].to_vec();
                let mut want: Vec<i64> =
                    assigned.iter().map(|&a| (a as usize / k) as i64).collect();
                got.sort_unstable();
                want.sort_unstable();
                assert_eq!(got, want, "expert {e}");
            }
            let mut seen = vec![false; n * k];
            for (a, &row) in assignment_row.iter().enumerate() {
                assert!(
                    !std::mem::replace(&mut seen[row as usize], true),
                    "row {row} twice"
                );
                assert_eq!(row_token[row as usize], (a / k) as i64);
                let admitted = (row as usize) < *offsets.last().unwrap() as usize;
                assert_eq!(admitted, plan.admitted[a], "assignment {a}");
            }
        }
    }
}
