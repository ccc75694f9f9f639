//! Top-k selection over one token's expert values.

/// Writes into `out` the indices of the `k` largest `values`, largest first.
///
/// Ties go to the lower expert index, so the choice is a pure function of the values (every
/// backend, and the WGSL kernel, use this rule). `k` must be at most `values.len()`. Runs in
/// `O(m * k)`, which beats a sort for the small `k` of MoE routing.
pub fn top_k_indices(values: &[f32], k: usize, out: &mut Vec<usize>) {
    debug_assert!(k <= values.len());
    out.clear();
    for (j, &v) in values.iter().enumerate() {
        if out.len() == k && v <= values[out[k - 1]] {
            continue; // not better than the current k-th (a tie keeps the lower index)
        }
        let pos = out.iter().position(|&i| v > values[i]).unwrap_or(out.len());
        if out.len() == k {
            out.pop();
        }
        out.insert(pos, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_largest_first() {
        let mut out = Vec::new();
        top_k_indices(&[0.1, 0.7, 0.3, 0.9], 2, &mut out);
        assert_eq!(out, vec![3, 1]);
    }

    #[test]
    fn ties_go_to_lower_index() {
        let mut out = Vec::new();
        top_k_indices(&[0.5, 0.2, 0.5, 0.5], 2, &mut out);
        assert_eq!(out, vec![0, 2]);
        top_k_indices(&[1.0; 4], 4, &mut out);
        assert_eq!(out, vec![0, 1, 2, 3]);
    }

    #[test]
    fn matches_a_full_stable_sort() {
        // Independent rule: stable sort by descending value, take the first k.
        let mut rng = crate::test_rng::TestRng::new(12345);
        let mut out = Vec::new();
        for trial in 0..200 {
            let m = 1 + trial % 17;
            let values: Vec<f32> = (0..m)
                .map(|_| rng.below(5) as f32) // few distinct values: many ties
                .collect();
            for k in 1..=m {
                let mut idx: Vec<usize> = (0..m).collect();
                idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
                top_k_indices(&values, k, &mut out);
                assert_eq!(out, idx[..k].to_vec(), "values {values:?} k {k}");
            }
        }
    }
}
