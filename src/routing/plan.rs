//! [`plan_routing`]: from router scores to the full routing plan of one call.

use super::capacity::admit;
use super::groups::GroupLimit;
use super::topk::top_k_indices;
use crate::error::{MoeError, Result};

/// The routing rule of a layer: what [`plan_routing`] needs from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingRule {
    /// Experts per token.
    pub top_k: usize,
    /// Local groups the tokens are split into (each with its own capacity).
    pub groups: usize,
    /// Capacity factor, `None` for dropless.
    pub capacity_factor: Option<f64>,
    /// Apply GShard's random rule to the 2nd expert (needs draws).
    pub random_second: bool,
    /// Group-limited routing: choose only inside each token's best expert groups.
    pub group_limit: Option<GroupLimit>,
}

impl RoutingRule {
    /// Capacity per expert per group for a call of `tokens` tokens, `None` when dropless:
    /// `C = ceil(capacity_factor * k * S / m)` with `S = tokens / groups`.
    pub fn capacity(&self, tokens: usize, experts: usize) -> Option<usize> {
        let group_len = tokens / self.groups;
        self.capacity_factor
            .map(|cf| (cf * self.top_k as f64 * group_len as f64 / experts as f64).ceil() as usize)
    }
}

/// Tokens none of whose `k` assignments was admitted.
fn dropped_tokens(admitted: &[bool], k: usize) -> usize {
    admitted
        .chunks_exact(k)
        .filter(|a| !a.iter().any(|&x| x))
        .count()
}

/// Every routing decision of one call, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingPlan {
    /// Tokens routed (`batch * seq`).
    pub tokens: usize,
    /// Routed experts `m`.
    pub experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// `choices[t * k + r]`: token `t`'s rank-`r` expert (rank 0 has the highest selection value).
    pub choices: Vec<u32>,
    /// `used[t * k + r]` is false only for a 2nd expert switched off by GShard random routing.
    pub used: Vec<bool>,
    /// `admitted[t * k + r]`: the assignment fit in its expert's capacity and is computed.
    pub admitted: Vec<bool>,
    /// Each expert's admitted assignments `t * k + r`, in admission order.
    pub expert_assignments: Vec<Vec<u32>>,
    /// Tokens each expert was asked to take (used choices, before capacity).
    pub requested_counts: Vec<usize>,
    /// Tokens each expert computed (after capacity).
    pub computed_counts: Vec<usize>,
    /// Capacity per expert per group, `None` when dropless.
    pub capacity: Option<usize>,
    /// Tokens none of whose assignments were computed: their MoE output is zero (plus shared
    /// experts) and they pass through the residual connection.
    pub dropped_tokens: usize,
}

impl RoutingPlan {
    /// Assignments that were used but did not fit (`requested - computed`, summed).
    pub fn dropped_assignments(&self) -> usize {
        self.requested_counts.iter().sum::<usize>() - self.computed_counts.iter().sum::<usize>()
    }
}

/// Routes `tokens` tokens over `experts` experts.
///
/// - `scores`: `[tokens, experts]` row-major, the gate scores (softmax or sigmoid outputs);
/// - `offset`: optional per-expert selection offset (balancer bias or dual price): selection uses
///   `scores + offset`, while the 2nd-expert rule and the gates use the raw scores;
/// - `draws`: one `U(0,1)` draw per token, needed when `rule.random_second` is set.
pub fn plan_routing(
    scores: &[f32],
    offset: Option<&[f32]>,
    tokens: usize,
    experts: usize,
    rule: &RoutingRule,
    draws: Option<&[f32]>,
) -> Result<RoutingPlan> {
    let k = rule.top_k;
    if scores.len() != tokens * experts {
        return Err(MoeError::Input(format!(
            "scores hold {} values, expected tokens * experts = {tokens} * {experts}",
            scores.len()
        )));
    }
    if let Some(o) = offset {
        if o.len() != experts {
            return Err(MoeError::Input(format!(
                "selection offset has {} values, expected one per expert ({experts})",
                o.len()
            )));
        }
        if let Some(j) = o.iter().position(|v| !v.is_finite()) {
            return Err(MoeError::Input(format!(
                "selection offset of expert {j} is not finite"
            )));
        }
    }
    if tokens == 0 || !tokens.is_multiple_of(rule.groups) {
        return Err(MoeError::Input(format!(
            "{tokens} tokens cannot be split into {} equal groups",
            rule.groups
        )));
    }
    let draws = match (rule.random_second, draws) {
        (true, Some(d)) if d.len() == tokens => Some(d),
        (true, Some(d)) => {
            return Err(MoeError::Input(format!(
                "random routing needs one draw per token ({tokens}), got {}",
                d.len()
            )));
        }
        _ => None,
    };

    let mut choices = Vec::with_capacity(tokens * k);
    let mut used = vec![true; tokens * k];
    let mut selection = vec![0.0f32; experts];
    let mut top = Vec::with_capacity(k);
    for (t, row) in scores.chunks_exact(experts).enumerate() {
        selection.copy_from_slice(row);
        if let Some(o) = offset {
            selection.iter_mut().zip(o).for_each(|(s, b)| *s += b);
        }
        if let Some(limit) = &rule.group_limit {
            limit.mask_row(&mut selection);
        }
        top_k_indices(&selection, k, &mut top);
        choices.extend(top.iter().map(|&j| j as u32));
        if let Some(d) = draws {
            // GShard: keep the 2nd expert only if 2 * g2 > U(0,1), g2 = s2 / (s1 + s2).
            let (s1, s2) = (row[top[0]], row[top[1]]);
            let g2 = s2 / (s1 + s2);
            used[t * k + 1] = 2.0 * g2 > d[t];
        }
    }

    let capacity = rule.capacity(tokens, experts);
    let admission = admit(&choices, &used, k, experts, rule.groups, capacity);

    let mut requested_counts = vec![0usize; experts];
    for (c, _) in choices.iter().zip(&used).filter(|(_, u)| **u) {
        requested_counts[*c as usize] += 1;
    }
    let computed_counts = admission.expert_assignments.iter().map(Vec::len).collect();
    let dropped_tokens = dropped_tokens(&admission.admitted, k);
    Ok(RoutingPlan {
        tokens,
        experts,
        top_k: k,
        choices,
        used,
        admitted: admission.admitted,
        expert_assignments: admission.expert_assignments,
        requested_counts,
        computed_counts,
        capacity,
        dropped_tokens,
    })
}

/// Rebuilds the plan from the routing kernels' outputs (`choices`, `used` and queue
/// `positions`, each `[tokens * k]`): an assignment is admitted when it is used and its
/// position within its group is below `capacity`. O(tokens * k), no scores needed.
pub fn plan_from_positions(
    experts: usize,
    rule: &RoutingRule,
    choices: Vec<u32>,
    used: Vec<bool>,
    positions: &[i64],
) -> Result<RoutingPlan> {
    let k = rule.top_k;
    let tokens = choices.len() / k;
    if used.len() != choices.len() || positions.len() != choices.len() || tokens == 0 {
        return Err(MoeError::Backend(format!(
            "routing kernels returned {} choices, {} flags and {} positions",
            choices.len(),
            used.len(),
            positions.len()
        )));
    }
    let group_len = tokens / rule.groups;
    let capacity = rule.capacity(tokens, experts);
    let admitted: Vec<bool> = used
        .iter()
        .zip(positions)
        .map(|(&u, &p)| u && p >= 0 && capacity.is_none_or(|c| (p as usize) < c))
        .collect();

    let mut requested_counts = vec![0usize; experts];
    // Admitted per group and expert, to lay the groups out one after another.
    let mut per_group = vec![0usize; rule.groups * experts];
    for (a, (&e, &u)) in choices.iter().zip(&used).enumerate() {
        let e = e as usize;
        if e >= experts {
            return Err(MoeError::Backend(format!(
                "routing kernels chose expert {e} of {experts}"
            )));
        }
        requested_counts[e] += u as usize;
        per_group[(a / k / group_len) * experts + e] += admitted[a] as usize;
    }
    let mut start = vec![0usize; rule.groups * experts];
    let mut computed_counts = vec![0usize; experts];
    for g in 0..rule.groups {
        for e in 0..experts {
            start[g * experts + e] = computed_counts[e];
            computed_counts[e] += per_group[g * experts + e];
        }
    }
    let mut expert_assignments: Vec<Vec<u32>> =
        computed_counts.iter().map(|&c| vec![u32::MAX; c]).collect();
    for (a, _) in admitted.iter().enumerate().filter(|(_, x)| **x) {
        let e = choices[a] as usize;
        let slot = start[(a / k / group_len) * experts + e] + positions[a] as usize;
        match expert_assignments[e].get_mut(slot) {
            Some(s) if *s == u32::MAX => *s = a as u32,
            _ => {
                return Err(MoeError::Backend(format!(
                    "routing kernels gave two assignments of expert {e} the same position"
                )));
            }
        }
    }
    let dropped_tokens = dropped_tokens(&admitted, k);
    Ok(RoutingPlan {
        tokens,
        experts,
        top_k: k,
        choices,
        used,
        admitted,
        expert_assignments,
        requested_counts,
        computed_counts,
        capacity,
        dropped_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(k: usize) -> RoutingRule {
        RoutingRule {
            top_k: k,
            groups: 1,
            capacity_factor: None,
            random_second: false,
            group_limit: None,
        }
    }

    #[test]
    fn offset_changes_which_experts_not_scores() {
        let scores = [0.6, 0.3, 0.1];
        let plain = plan_routing(&scores, None, 1, 3, &rule(1), None).unwrap();
        assert_eq!(plain.choices, vec![0]);
        let biased = plan_routing(&scores, Some(&[0.0, 0.5, 0.0]), 1, 3, &rule(1), None).unwrap();
        assert_eq!(biased.choices, vec![1]);
    }

    #[test]
    fn random_rule_keeps_second_expert_when_twice_its_gate_beats_the_draw() {
        // g2 = 0.25 / (0.5 + 0.25) = 1/3, so 2 * g2 = 2/3.
        let scores = [0.5, 0.25, 0.25, 0.5, 0.25, 0.25];
        let r = RoutingRule {
            random_second: true,
            ..rule(2)
        };
        let p = plan_routing(&scores, None, 2, 3, &r, Some(&[0.6, 0.7])).unwrap();
        assert_eq!(p.used, vec![true, true, true, false]);
        assert_eq!(p.requested_counts, vec![2, 1, 0]);
    }

    #[test]
    fn counts_drops_and_dropped_tokens() {
        // 4 tokens all prefer expert 0; top-1, capacity ceil(1.0 * 1 * 4 / 2) = 2.
        let scores = [0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4];
        let r = RoutingRule {
            capacity_factor: Some(1.0),
            ..rule(1)
        };
        let p = plan_routing(&scores, None, 4, 2, &r, None).unwrap();
        assert_eq!(p.capacity, Some(2));
        assert_eq!(p.requested_counts, vec![4, 0]);
        assert_eq!(p.computed_counts, vec![2, 0]);
        assert_eq!(p.dropped_tokens, 2);
        assert_eq!(p.dropped_assignments(), 2);
    }

    #[test]
    fn plan_from_positions_rebuilds_the_reference_plan() {
        let (tokens, experts) = (60, 6);
        let scores: Vec<f32> = (0..tokens * experts)
            .map(|i| ((i * 7919 + 13) % 101) as f32 / 101.0)
            .collect();
        let draws: Vec<f32> = (0..tokens).map(|t| ((t * 31) % 17) as f32 / 17.0).collect();
        for (k, groups, cf, random) in [
            (2, 1, None, false),
            (2, 3, Some(1.0), true),
            (3, 2, Some(0.5), false),
        ] {
            let r = RoutingRule {
                top_k: k,
                groups,
                capacity_factor: cf,
                random_second: random,
                group_limit: None,
            };
            let plan = plan_routing(&scores, None, tokens, experts, &r, Some(&draws)).unwrap();
            // Queue positions by walking each group in admission order.
            let s = tokens / groups;
            let mut positions = vec![-1i64; tokens * k];
            for g in 0..groups {
                let mut next = vec![0i64; experts];
                for rank in 0..k {
                    for t in g * s..(g + 1) * s {
                        let a = t * k + rank;
                        if plan.used[a] {
                            positions[a] = next[plan.choices[a] as usize];
                            next[plan.choices[a] as usize] += 1;
                        }
                    }
                }
            }
            let rebuilt = plan_from_positions(
                experts,
                &r,
                plan.choices.clone(),
                plan.used.clone(),
                &positions,
            )
            .unwrap();
            assert_eq!(rebuilt, plan, "k {k}, groups {groups}, cf {cf:?}");
        }
        // Two assignments claiming one slot are a kernel bug, reported as such.
        let r = rule(1);
        assert!(plan_from_positions(2, &r, vec![0, 0], vec![true, true], &[0, 0]).is_err());
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(
            plan_routing(
                &[0.5; 6],
                None,
                3,
                2,
                &RoutingRule {
                    groups: 2,
                    ..rule(1)
                },
                None
            )
            .is_err()
        );
        assert!(plan_routing(&[0.5; 6], Some(&[0.0]), 3, 2, &rule(1), None).is_err());
        assert!(plan_routing(&[0.5; 6], Some(&[0.0, f32::NAN]), 3, 2, &rule(1), None).is_err());
        assert!(plan_routing(&[], None, 0, 2, &rule(1), None).is_err());
    }
}
