//! Loss-Free balancing (Wang et al. 2024): a per-expert bias moved toward the mean load.

use super::LossFreeUpdate;

/// The bias after one training batch with per-expert token counts `counts`.
///
/// Sign: `b_j + u * sign(c_mean - c_j)`; proportional: `b_j + u * (c_mean - c_j) / c_mean`.
/// An expert exactly at the mean keeps its bias.
pub fn update_bias(bias: &[f32], counts: &[usize], rate: f32, update: LossFreeUpdate) -> Vec<f32> {
    let mean = counts.iter().sum::<usize>() as f32 / counts.len() as f32;
    bias.iter()
        .zip(counts)
        .map(|(&b, &c)| {
            let error = mean - c as f32;
            let step = match update {
                LossFreeUpdate::Sign if error > 0.0 => 1.0,
                LossFreeUpdate::Sign if error < 0.0 => -1.0,
                LossFreeUpdate::Sign => 0.0,
                LossFreeUpdate::Proportional if mean > 0.0 => error / mean,
                LossFreeUpdate::Proportional => 0.0,
            };
            b + rate * step
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_update_moves_overloaded_experts_down() {
        let b = update_bias(&[0.0, 0.1, -0.1], &[10, 5, 0], 0.01, LossFreeUpdate::Sign);
        assert_eq!(b, vec![-0.01, 0.1, -0.09]); // mean 5: expert 1 unchanged
    }

    #[test]
    fn proportional_update_is_scaled_by_the_mean_load() {
        let small = update_bias(&[0.0; 2], &[3, 1], 0.1, LossFreeUpdate::Proportional);
        let large = update_bias(&[0.0; 2], &[300, 100], 0.1, LossFreeUpdate::Proportional);
        assert_eq!(small, large);
        assert!((small[0] + 0.05).abs() < 1e-7 && (small[1] - 0.05).abs() < 1e-7);
    }
}
