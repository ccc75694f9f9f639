//! Expert capacity: which (token, expert) assignments are computed and which are dropped.

/// The assignments each expert computes, in admission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// `admitted[t * k + r]`: token `t`'s rank-`r` choice is computed.
    pub admitted: Vec<bool>,
    /// For each expert, its admitted assignment indices `t * k + r`, in admission order.
    pub expert_assignments: Vec<Vec<u32>>,
}

/// Admits assignments group by group, expert by expert, until each expert is full.
///
/// The `tokens` are split into `groups` contiguous groups of equal size; inside a group every
/// expert admits at most `capacity` assignments (`None`: no limit). The order is GShard's: all
/// rank-0 choices in token order, then all rank-1 choices in token order, and so on, so a token's
/// first choice is never displaced by another token's second. With `k = 1` this is plain token
/// order. `choices[t * k + r]` is the rank-`r` expert of token `t`; `used[..]` false marks a
/// choice that was switched off (GShard random routing) and takes no slot.
pub fn admit(
    choices: &[u32],
    used: &[bool],
    k: usize,
    experts: usize,
    groups: usize,
    capacity: Option<usize>,
) -> Admission {
    let tokens = choices.len() / k;
    let group_len = tokens / groups;
    let mut admitted = vec![false; choices.len()];
    let mut expert_assignments = vec![Vec::new(); experts];
    let mut filled = vec![0usize; experts];
    for g in 0..groups {
        filled.iter_mut().for_each(|f| *f = 0);
        for r in 0..k {
            for t in g * group_len..(g + 1) * group_len {
                let a = t * k + r;
                if !used[a] {
                    continue;
                }
                let e = choices[a] as usize;
                if capacity.is_none_or(|c| filled[e] < c) {
                    filled[e] += 1;
                    admitted[a] = true;
                    expert_assignments[e].push(a as u32);
                }
            }
        }
    }
    Admission {
        admitted,
        expert_assignments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_choices_are_admitted_before_second_choices() {
        // 3 tokens, k = 2, capacity 2. Expert 0 is everyone's first choice except token 2's.
        let choices = [0, 1, 0, 1, 1, 0];
        let used = [true; 6];
        let a = admit(&choices, &used, 2, 2, 1, Some(2));
        // Expert 0: t0 r0, t1 r0 fill it; t2's 2nd choice (expert 0) is dropped.
        // Expert 1: t2 r0, then t0 r1; t1 r1 is dropped.
        assert_eq!(a.admitted, vec![true, true, true, false, true, false]);
        assert_eq!(a.expert_assignments, vec![vec![0, 2], vec![4, 1]]);
    }

    #[test]
    fn groups_have_their_own_capacity_and_unused_choices_take_no_slot() {
        let choices = [0, 0, 0, 0];
        let used = [true, true, false, true];
        let a = admit(&choices, &used, 1, 1, 2, Some(1));
        assert_eq!(a.admitted, vec![true, false, false, true]);
        let dropless = admit(&choices, &used, 1, 1, 2, None);
        assert_eq!(dropless.admitted, vec![true, true, false, true]);
    }
}
