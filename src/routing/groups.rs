//! Group-limited routing (DeepSeek-V2/V3): the experts form `G` equal groups of consecutive
//! indices; each token keeps its best `M` groups by group score and picks its top-k inside them.
//! This bounds how many devices one token's experts span when each group lives on one device.

use burn::config::Config;

use crate::error::{MoeError, Result};

/// How a group of experts is scored from its experts' selection values.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum GroupScore {
    /// The group's largest value (DeepSeek-V2).
    Max,
    /// The sum of the group's two largest values (DeepSeek-V3); needs at least 2 experts per group.
    TopTwoSum,
}

/// Which experts a token may choose: its best `top_groups` of `groups` expert groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimit {
    /// Expert groups `G`; must divide the expert count.
    pub groups: usize,
    /// Groups each token keeps, `1 <= M <= G`.
    pub top_groups: usize,
    /// How a group is scored.
    pub score: GroupScore,
}

/// Most expert groups the routing kernels take (one bit each in a `u32` mask).
pub const MAX_EXPERT_GROUPS: usize = 32;

impl GroupLimit {
    /// Checks the limit against `experts` experts chosen `top_k` at a time.
    pub fn validate(&self, experts: usize, top_k: usize) -> Result<()> {
        let fail = |msg: String| Err(MoeError::Config(msg));
        if self.groups == 0 || self.groups > MAX_EXPERT_GROUPS {
            return fail(format!(
                "expert_groups must be between 1 and {MAX_EXPERT_GROUPS}, got {}",
                self.groups
            ));
        }
        if !experts.is_multiple_of(self.groups) {
            return fail(format!(
                "expert_groups ({}) must divide num_experts ({experts})",
                self.groups
            ));
        }
        if self.top_groups == 0 || self.top_groups > self.groups {
            return fail(format!(
                "top_groups must be between 1 and expert_groups ({}), got {}",
                self.groups, self.top_groups
            ));
        }
        let per_group = experts / self.groups;
        if self.score == GroupScore::TopTwoSum && per_group < 2 {
            return fail(format!(
                "group_score TopTwoSum needs at least 2 experts per group, got {per_group} \
                 ({experts} experts in {} groups)",
                self.groups
            ));
        }
        if top_k > self.top_groups * per_group {
            return fail(format!(
                "top_k ({top_k}) exceeds the {} experts of the top_groups ({}) kept groups",
                self.top_groups * per_group,
                self.top_groups
            ));
        }
        Ok(())
    }

    /// Sets the selection value of every expert outside the token's kept groups to `-inf`.
    /// Groups are ranked by score, ties to the lower group index (as top-k ranks experts).
    pub fn mask_row(&self, selection: &mut [f32]) {
        let per_group = selection.len() / self.groups;
        let scores: Vec<f32> = selection
            .chunks_exact(per_group)
            .map(|g| self.score.of(g))
            .collect();
        let mut kept = Vec::with_capacity(self.top_groups);
        super::topk::top_k_indices(&scores, self.top_groups, &mut kept);
        for (g, values) in selection.chunks_exact_mut(per_group).enumerate() {
            if !kept.contains(&g) {
                values.fill(f32::NEG_INFINITY);
            }
        }
    }
}

impl GroupScore {
    /// The score of one group's values.
    pub fn of(&self, values: &[f32]) -> f32 {
        let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for &v in values {
            if v > first {
                second = first;
                first = v;
            } else if v > second {
                second = v;
            }
        }
        match self {
            GroupScore::Max => first,
            GroupScore::TopTwoSum => first + second,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(groups: usize, top_groups: usize, score: GroupScore) -> GroupLimit {
        GroupLimit {
            groups,
            top_groups,
            score,
        }
    }

    #[test]
    fn matches_a_sort_based_rule_on_random_rows() {
        // Independent rule: score groups by sorting each group, rank groups by a stable sort.
        let mut rng = crate::test_rng::TestRng::new(99);
        let mut next = || rng.below(7) as f32 * 0.25; // few distinct values: ties on purpose
        for trial in 0..300 {
            let groups = 1 + trial % 6;
            let per_group = 2 + trial % 3;
            let top_groups = 1 + trial % groups;
            let score = if trial % 2 == 0 {
                GroupScore::Max
            } else {
                GroupScore::TopTwoSum
            };
            let row: Vec<f32> = (0..groups * per_group).map(|_| next()).collect();
            let group_score = |g: usize| {
                let mut v = row[g * per_group..(g + 1) * per_group].to_vec();
                v.sort_by(|a, b| b.total_cmp(a));
                match score {
                    GroupScore::Max => v[0],
                    GroupScore::TopTwoSum => v[0] + v[1],
                }
            };
            let mut order: Vec<usize> = (0..groups).collect();
            order.sort_by(|&a, &b| group_score(b).total_cmp(&group_score(a)));
            let kept = &order[..top_groups];
            let expected: Vec<f32> = row
                .iter()
                .enumerate()
                .map(|(j, &v)| {
                    if kept.contains(&(j / per_group)) {
                        v
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            let mut got = row.clone();
            limit(groups, top_groups, score).mask_row(&mut got);
            assert_eq!(
                got, expected,
                "row {row:?} G {groups} M {top_groups} {score:?}"
            );
        }
    }

    #[test]
    fn top_two_sum_and_max_can_disagree() {
        // Group 0 has the single best expert, group 1 the better pair.
        let row = [0.9, 0.0, 0.6, 0.5];
        let mut max = row;
        limit(2, 1, GroupScore::Max).mask_row(&mut max);
        assert_eq!(max[..2], row[..2]);
        assert!(max[2..].iter().all(|v| *v == f32::NEG_INFINITY));
        let mut sum = row;
        limit(2, 1, GroupScore::TopTwoSum).mask_row(&mut sum);
        assert!(sum[..2].iter().all(|v| *v == f32::NEG_INFINITY));
        assert_eq!(sum[2..], row[2..]);
    }

    #[test]
    fn invalid_limits_name_the_field() {
        let cases = [
            (limit(3, 1, GroupScore::Max), 8, 2, "divide"),
            (limit(4, 5, GroupScore::Max), 8, 2, "top_groups"),
            (limit(4, 0, GroupScore::Max), 8, 2, "top_groups"),
            (
                limit(8, 2, GroupScore::TopTwoSum),
                8,
                2,
                "at least 2 experts",
            ),
            (limit(4, 1, GroupScore::Max), 8, 3, "top_k"),
            (limit(64, 1, GroupScore::Max), 128, 1, "expert_groups"),
        ];
        for (l, experts, k, needle) in cases {
            let err = l.validate(experts, k).unwrap_err().to_string();
            assert!(err.contains(needle), "`{err}` should say `{needle}`");
        }
        assert!(limit(4, 2, GroupScore::TopTwoSum).validate(8, 4).is_ok());
    }
}
