//! Helpers shared by the benches.

/// Uniform values in [-1, 1) from splitmix64 of the element index: the same input on every
/// backend and in `pytorch_reference.py`, and varied enough that routing spreads the tokens the
/// way a freshly initialised router does.
pub fn bench_input(tokens: usize, d_model: usize) -> Vec<f32> {
    (0..(tokens * d_model) as u64)
        .map(|i| {
            let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}
