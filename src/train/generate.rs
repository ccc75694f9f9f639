//! Sampling text from a trained model, with temperature and top-p.

use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{MoeError, Result};
use crate::model::MoeLm;

/// Sampling settings.
#[derive(Debug, Clone, Copy)]
pub struct SamplingConfig {
    /// Bytes to generate.
    pub max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    pub temperature: f64,
    /// Nucleus: sample from the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
}

/// Generates after `prompt`, calling `emit` with each new byte as soon as it is sampled.
/// Routing uses the model's trained balancer state (eval mode: no updates).
pub fn generate(
    model: &MoeLm,
    prompt: &str,
    sampling: SamplingConfig,
    mut emit: impl FnMut(u8),
) -> Result<Vec<u8>> {
    if !(sampling.temperature.is_finite() && sampling.temperature >= 0.0) {
        return Err(MoeError::Config(format!(
            "temperature must be >= 0, got {}",
            sampling.temperature
        )));
    }
    if !(sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
        return Err(MoeError::Config(format!(
            "top-p must be in (0, 1], got {}",
            sampling.top_p
        )));
    }
    let device = model.tokens.weight.val().device();
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut tokens: Vec<u8> = prompt.as_bytes().to_vec();
    if tokens.is_empty() {
        tokens.push(b'\n');
    }
    let window = model.config.max_seq_len;
    let mut out = Vec::with_capacity(sampling.max_tokens);
    for _ in 0..sampling.max_tokens {
        let context = &tokens[tokens.len().saturating_sub(window)..];
        let ids: Vec<i64> = context.iter().map(|&b| b as i64).collect();
        let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, context.len()]), &device);
        let logits = model.forward(input)?.logits;
        let [_, s, v] = logits.dims();
        let last = logits.slice([0..1, s - 1..s, 0..v]).reshape([v]);
        let logits = last
            .into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| MoeError::Backend(format!("reading logits: {e:?}")))?;
        let next = sample(&logits, sampling, &mut rng);
        tokens.push(next);
        out.push(next);
        emit(next);
    }
    Ok(out)
}

/// Samples one byte from `logits` `[256]`.
fn sample(logits: &[f32], s: SamplingConfig, rng: &mut StdRng) -> u8 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i) as u8
    };
    if s.temperature == 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - max) / s.temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut mass = 0.0;
    let keep = probs
        .iter()
        .position(|p| {
            mass += p.1;
            mass >= s.top_p
        })
        .map_or(probs.len(), |i| i + 1);
    let kept = &probs[..keep];
    let mut u = rng.random::<f64>() * kept.iter().map(|p| p.1).sum::<f64>();
    for &(i, p) in kept {
        u -= p;
        if u <= 0.0 {
            return i as u8;
        }
    }
    kept.last().map_or_else(argmax, |p| p.0 as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_top_p() {
        let mut logits = vec![0.0f32; 256];
        logits[65] = 10.0;
        logits[66] = 9.0;
        let mut rng = StdRng::seed_from_u64(0);
        let greedy = SamplingConfig {
            max_tokens: 1,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        };
        assert_eq!(sample(&logits, greedy, &mut rng), 65);
        // top_p small: only the most likely token survives.
        let narrow = SamplingConfig {
            temperature: 1.0,
            top_p: 0.5,
            ..greedy
        };
        assert!((0..50).all(|_| sample(&logits, narrow, &mut rng) == 65));
        // top_p 1 at high temperature: others appear.
        let wide = SamplingConfig {
            temperature: 5.0,
            top_p: 1.0,
            ..greedy
        };
        assert!((0..200).any(|_| sample(&logits, wide, &mut rng) != 65));
    }
}
