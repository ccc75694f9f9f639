//! Score functions on host rows, mirroring the device-side ones used for the gates.

use crate::moe::ScoreFunction;

/// Applies `function` to every row of `logits` (`[tokens, experts]`, row-major).
///
/// Softmax subtracts the row maximum first, as the device kernels do, so large logits do not
/// overflow.
pub fn scores_from_logits(logits: &[f32], experts: usize, function: ScoreFunction) -> Vec<f32> {
    let mut out = vec![0.0f32; logits.len()];
    for (row, out_row) in logits
        .chunks_exact(experts)
        .zip(out.chunks_exact_mut(experts))
    {
        match function {
            ScoreFunction::Softmax => {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for (o, &l) in out_row.iter_mut().zip(row) {
                    *o = (l - max).exp();
                    sum += *o;
                }
                out_row.iter_mut().for_each(|o| *o /= sum);
            }
            ScoreFunction::Sigmoid => {
                for (o, &l) in out_row.iter_mut().zip(row) {
                    *o = 1.0 / (1.0 + (-l).exp());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_rows_sum_to_one_and_survive_large_logits() {
        let s = scores_from_logits(
            &[1000.0, 1000.0, 0.0, 1.0, 2.0, 3.0],
            3,
            ScoreFunction::Softmax,
        );
        assert!((s[0] - 0.5).abs() < 1e-6 && (s[1] - 0.5).abs() < 1e-6 && s[2] == 0.0);
        let sum: f32 = s[3..].iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!(s[5] > s[4] && s[4] > s[3]);
    }

    #[test]
    fn sigmoid_is_elementwise() {
        let s = scores_from_logits(&[0.0, 2.0], 2, ScoreFunction::Sigmoid);
        assert!((s[0] - 0.5).abs() < 1e-7);
        assert!((s[1] - 0.880_797).abs() < 1e-6);
    }
}
