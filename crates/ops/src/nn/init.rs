//! PyTorch's default initialisation of convolution and linear layers, deterministic from a seed.

use candle_core::{bail, Device, Result, Tensor};

/// A small deterministic generator (SplitMix64); enough for initial weights.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-bound, bound)`.
    fn uniform(&mut self, bound: f32) -> f32 {
        // 24 random bits -> [0, 1) exactly representable in f32.
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * bound
    }
}

/// PyTorch's default init for convolution and linear weights: Kaiming-uniform with
/// `a = sqrt(5)`, i.e. `U(-b, b)` with `b = 1 / sqrt(fan_in)`, and the bias `U(-b, b)` too.
/// Deterministic from `seed`.
///
/// # Shapes
/// `shape` is the weight's shape, e.g. `[Cout, Cin, KH, KW]` or `[out, in]` (rank at least 2);
/// `fan_in` is the product of the dimensions after the first. Returns the weight (`shape`,
/// `f32`) and the bias (`[shape[0]]`, `f32`).
pub fn kaiming_uniform(shape: &[usize], seed: u64, device: &Device) -> Result<(Tensor, Tensor)> {
    if shape.len() < 2 || shape.contains(&0) {
        bail!("kaiming_uniform: expected a weight shape of rank >= 2 with no zero dimension, got {shape:?}");
    }
    let out = shape[0];
    let fan_in: usize = shape[1..].iter().product();
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut rng = SplitMix64(seed);
    let w: Vec<f32> = (0..out * fan_in).map(|_| rng.uniform(bound)).collect();
    let b: Vec<f32> = (0..out).map(|_| rng.uniform(bound)).collect();
    Ok((
        Tensor::from_vec(w, shape, device)?,
        Tensor::from_vec(b, out, device)?,
    ))
}
