//! BIP-based balancing (Sun 2025): per-expert dual prices `q` of the routing integer program
//!
//! ```text
//! max sum_ij s_ij x_ij  s.t.  sum_j x_ij <= k,  sum_i x_ij <= k n / m,  x_ij in {0, 1}
//! ```
//!
//! Each dual iteration prices tokens, `p_i = (k+1)-th largest_j (s_ij - q_j)`, then experts,
//! `q_j = max(0, price between the C-th and (C+1)-th largest_i (s_ij - p_i))` with
//! `C = floor(k n / m)` ([`column_price`]). Tokens then take the top-k of `s_ij - q_j`.
//!
//! The paper's program lets a token take *at most* k experts, whose dual clamps `p_i` at 0 too.
//! The router always takes exactly k, and with that clamp BIP did not balance language-model
//! training (MaxVio about 1.15 against 0.36 without it, `BENCHMARKS.md`): once softmax scores
//! peak, a token's (k+1)-th `s - q` is negative, `p_i = 0` undercounts the competition, and the
//! prices stop moving tokens. So the token price is free (the dual of "exactly k"); `clamp`
//! applies to the expert prices. Without it this is the dual step of quantile balancing
//! (`super::quantile`).
//! Formulas and sources: `docs/algorithms.md`.

/// The `rank`-th largest value (1-based, ties counted with multiplicity), or `None` when there
/// are fewer than `rank` values. Linear time (quickselect), so no full sort.
pub fn kth_largest(values: &mut [f32], rank: usize) -> Option<f32> {
    if rank == 0 || rank > values.len() {
        return None;
    }
    let (_, v, _) = values.select_nth_unstable_by(rank - 1, |a, b| b.total_cmp(a));
    Some(*v)
}

/// The price that admits the `admitted` largest of `values` and rejects the rest: the midpoint
/// of the `admitted`-th and `(admitted + 1)`-th largest values (the `(admitted + 1)`-th itself
/// when `admitted = 0` or the two are equal). A price set exactly on a value would leave that
/// token on an exact tie, so that its routing turned on the last bits of the scores.
/// `None` when there are at most `admitted` values (no constraint binds).
pub fn column_price(values: &mut [f32], admitted: usize) -> Option<f32> {
    if admitted >= values.len() {
        return None;
    }
    let (above, v, _) = values.select_nth_unstable_by(admitted, |a, b| b.total_cmp(a));
    let v = *v;
    // `above` holds the `admitted` largest values; the smallest of them is the admitted-th.
    Some(match above.iter().copied().min_by(f32::total_cmp) {
        Some(last_in) if last_in > v => (last_in + v) * 0.5,
        _ => v,
    })
}

/// Runs `iterations` dual iterations from prices `q` on scores `[tokens, experts]`.
///
/// `clamp` keeps the expert prices at or above 0. Where the (k+1)-th value or the rejected
/// (floor(kn/m)+1)-th value does not exist (`k = m`: no constraint binds) the price is 0.
pub fn dual_prices(
    scores: &[f32],
    q: &[f32],
    tokens: usize,
    experts: usize,
    k: usize,
    iterations: usize,
    clamp: bool,
) -> Vec<f32> {
    let admitted = k * tokens / experts;
    let clamp_fn = |v: f32| if clamp { v.max(0.0) } else { v };
    let mut q = q.to_vec();
    let mut p = vec![0.0f32; tokens];
    let mut row = vec![0.0f32; experts];
    let mut column = vec![0.0f32; tokens];
    for _ in 0..iterations {
        for (i, s) in scores.chunks_exact(experts).enumerate() {
            row.iter_mut()
                .zip(s.iter().zip(&q))
                .for_each(|(r, (s, q))| *r = s - q);
            p[i] = kth_largest(&mut row, k + 1).unwrap_or(0.0);
        }
        for (j, qj) in q.iter_mut().enumerate() {
            column
                .iter_mut()
                .enumerate()
                .for_each(|(i, c)| *c = scores[i * experts + j] - p[i]);
            *qj = column_price(&mut column, admitted).map_or(0.0, clamp_fn);
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kth_largest_counts_ties() {
        let mut v = [0.3, 0.9, 0.9, 0.1];
        assert_eq!(kth_largest(&mut v, 1), Some(0.9));
        assert_eq!(kth_largest(&mut v, 2), Some(0.9));
        assert_eq!(kth_largest(&mut v, 3), Some(0.3));
        assert_eq!(kth_largest(&mut v, 5), None);
    }

    #[test]
    fn column_price_sits_between_admitted_and_rejected() {
        let mut v = [0.1, 0.5, 0.3, 0.9];
        assert_eq!(column_price(&mut v, 2), Some(0.4)); // between 0.5 and 0.3
        let mut v = [0.1, 0.5, 0.5, 0.9];
        assert_eq!(column_price(&mut v, 2), Some(0.5)); // a tie no price can split
        let mut v = [0.1, 0.5];
        assert_eq!(column_price(&mut v, 0), Some(0.5));
        assert_eq!(column_price(&mut v, 2), None);
    }

    #[test]
    fn prices_balance_a_collapsed_router() {
        // Every token prefers expert 0; top-1 with 2 experts: q_0 must rise until half move.
        let scores: Vec<f32> = (0..8).flat_map(|i| [0.9 - 0.01 * i as f32, 0.1]).collect();
        let q = dual_prices(&scores, &[0.0, 0.0], 8, 2, 1, 1, true);
        let loads = (0..8).fold([0, 0], |mut acc, i| {
            let pick = if scores[2 * i] - q[0] >= scores[2 * i + 1] - q[1] {
                0
            } else {
                1
            };
            acc[pick] += 1;
            acc
        });
        assert!(q[0] > 0.0 && q[1] == 0.0, "{q:?}");
        assert!(loads[0] <= 5, "loads {loads:?} with q {q:?}");
    }
}
