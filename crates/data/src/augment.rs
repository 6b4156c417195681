//! Data augmentation on preprocessed CHW tensors: Koch et al.'s random affine distortions,
//! horizontal flips, brightness and contrast jitter. Deterministic given the random source.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Which augmentations to apply. The default applies none (identity).
///
/// With `affine`, each of four distortions is applied with probability 1/2, with the ranges
/// of Koch et al. (2015): rotation in ±10°, shear in ±0.3 (each axis), scale in 0.8–1.2
/// (each axis) and translation in ±2 pixels (each axis), about the image centre. Pixels
/// that come from outside the image take the value of the top-left corner of their channel
/// (the background). `hflip` mirrors left-right with probability 1/2. `brightness` adds a
/// uniform offset in `±brightness`; `contrast` scales about the channel mean by a uniform
/// factor in `1 ± contrast` (both in the units of the preprocessed tensor).
/// `strength` multiplies the affine ranges (1 = Koch's; scale stays within 1 ± 0.2·strength).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Augment {
    /// Koch et al.'s random affine distortions.
    pub affine: bool,
    /// Random horizontal flip (faces; not for characters).
    pub hflip: bool,
    /// Maximum brightness offset (0 disables).
    pub brightness: f32,
    /// Maximum relative contrast change (0 disables).
    pub contrast: f32,
    /// Multiplier of the affine ranges (1 = Koch et al.'s).
    pub strength: f32,
    /// Root-mean-square length of the elastic displacements, in pixels of the input (0
    /// disables).
    pub elastic: f32,
    /// Smoothness of the elastic displacement field: the Gaussian's standard deviation in
    /// pixels.
    pub elastic_sigma: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            affine: false,
            hflip: false,
            brightness: 0.0,
            contrast: 0.0,
            strength: 1.0,
            elastic: 0.0,
            elastic_sigma: DEFAULT_ELASTIC_SIGMA,
        }
    }
}

/// Default smoothness of the elastic field, in pixels (Simard et al. used 4 at 28×28).
pub const DEFAULT_ELASTIC_SIGMA: f32 = 3.0;

/// Koch et al.'s ranges.
const MAX_ROTATION_DEG: f32 = 10.0;
const MAX_SHEAR: f32 = 0.3;
const SCALE_RANGE: (f32, f32) = (0.8, 1.2);
const MAX_SHIFT_PX: f32 = 2.0;

impl Augment {
    /// Koch et al.'s affine distortions only.
    pub fn koch() -> Self {
        Augment {
            affine: true,
            ..Augment::default()
        }
    }

    /// Whether this applies nothing.
    pub fn is_identity(&self) -> bool {
        !self.affine
            && !self.hflip
            && self.brightness <= 0.0
            && self.contrast <= 0.0
            && !self.has_elastic()
    }

    fn has_elastic(&self) -> bool {
        self.elastic.is_finite()
            && self.elastic > 0.0
            && self.elastic_sigma.is_finite()
            && self.elastic_sigma > 0.0
    }

    /// Writes an augmented copy of one `[c, h, w]` tensor into `out` (same length).
    ///
    /// # Shapes
    /// - `chw`, `out`: `c * h * w` f32, CHW.
    pub fn apply<R: Rng + ?Sized>(
        &self,
        chw: &[f32],
        c: usize,
        h: usize,
        w: usize,
        rng: &mut R,
        out: &mut [f32],
    ) -> Result<()> {
        let n = c * h * w;
        if chw.len() != n || out.len() != n {
            return Err(DataError::Invalid(format!(
                "augment: expected tensors of {c}x{h}x{w} = {n} values, got input {} and output {}",
                chw.len(),
                out.len()
            )));
        }
        if n == 0 {
            return Ok(());
        }
        // Forward map about the centre: p' = A (p - ctr) + ctr + t.
        let mut a = [1.0f32, 0.0, 0.0, 1.0];
        let mut t = [0.0f32, 0.0];
        let mut warped = false;
        if self.affine {
            let k = if self.strength.is_finite() {
                self.strength.max(0.0)
            } else {
                1.0
            };
            if rng.random_bool(0.5) {
                let r = MAX_ROTATION_DEG * k;
                let th = rng.random_range(-r..=r).to_radians();
                let (s, co) = th.sin_cos();
                a = mat_mul([co, -s, s, co], a);
                warped = true;
            }
            if rng.random_bool(0.5) {
                let m = MAX_SHEAR * k;
                let sx = rng.random_range(-m..=m);
                let sy = rng.random_range(-m..=m);
                a = mat_mul(a, [1.0, sx, sy, 1.0]);
                warped = true;
            }
            if rng.random_bool(0.5) {
                let (lo, hi) = (
                    1.0 - (1.0 - SCALE_RANGE.0) * k,
                    1.0 + (SCALE_RANGE.1 - 1.0) * k,
                );
                let (lo, hi) = (lo.max(0.1), hi.max(lo.max(0.1)));
                let kx = rng.random_range(lo..=hi);
                let ky = rng.random_range(lo..=hi);
                a = mat_mul(a, [kx, 0.0, 0.0, ky]);
                warped = true;
            }
            if rng.random_bool(0.5) {
                let m = MAX_SHIFT_PX * k;
                t = [rng.random_range(-m..=m), rng.random_range(-m..=m)];
                warped = true;
            }
        }
        let flip = self.hflip && rng.random_bool(0.5);
        let field = if self.has_elastic() {
            Some(elastic_field(h, w, self.elastic, self.elastic_sigma, rng))
        } else {
            None
        };
        let det = a[0] * a[3] - a[1] * a[2];
        if (warped || flip || field.is_some()) && det.abs() > 1e-6 {
            let inv = [a[3] / det, -a[1] / det, -a[2] / det, a[0] / det];
            let (cx, cy) = ((w as f32 - 1.0) * 0.5, (h as f32 - 1.0) * 0.5);
            for ch in 0..c {
                let src = &chw[ch * h * w..(ch + 1) * h * w];
                let dst = &mut out[ch * h * w..(ch + 1) * h * w];
                let fill = src[0];
                for y in 0..h {
                    for x in 0..w {
                        // The output pixel first moves by its elastic displacement, then
                        // through the inverse affine map.
                        let (ex, ey) = match &field {
                            Some((fx, fy)) => (fx[y * w + x], fy[y * w + x]),
                            None => (0.0, 0.0),
                        };
                        let dy = y as f32 + ey - cy - t[1];
                        let xo = if flip { w - 1 - x } else { x };
                        let dx = xo as f32 + ex - cx - t[0];
                        let sx = inv[0] * dx + inv[1] * dy + cx;
                        let sy = inv[2] * dx + inv[3] * dy + cy;
                        dst[y * w + x] = bilinear(src, w, h, sx, sy, fill);
                    }
                }
            }
        } else {
            out.copy_from_slice(chw);
        }
        if self.brightness > 0.0 || self.contrast > 0.0 {
            let shift = if self.brightness > 0.0 {
                rng.random_range(-self.brightness..=self.brightness)
            } else {
                0.0
            };
            let gain = if self.contrast > 0.0 {
                rng.random_range(1.0 - self.contrast..=1.0 + self.contrast)
            } else {
                1.0
            };
            for ch in 0..c {
                let plane = &mut out[ch * h * w..(ch + 1) * h * w];
                let mean = plane.iter().sum::<f32>() / plane.len() as f32;
                for v in plane.iter_mut() {
                    *v = (*v - mean) * gain + mean + shift;
                }
            }
        }
        Ok(())
    }

    /// Augments a batch of `n` tensors in parallel. Item `i` uses its own ChaCha8 stream
    /// `i` of `seed`, so the result does not depend on the number of threads.
    ///
    /// # Shapes
    /// - `batch`, `out`: `[n, c, h, w]` f32.
    pub fn apply_batch(
        &self,
        batch: &[f32],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        seed: u64,
        out: &mut [f32],
    ) -> Result<()> {
        let len = c * h * w;
        if batch.len() != n * len || out.len() != n * len {
            return Err(DataError::Invalid(format!(
                "augment batch: expected {n}x{c}x{h}x{w} = {} values, got input {} and output {}",
                n * len,
                batch.len(),
                out.len()
            )));
        }
        if len == 0 {
            return Ok(());
        }
        out.par_chunks_mut(len)
            .zip(batch.par_chunks(len))
            .enumerate()
            .try_for_each(|(i, (o, x))| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(i as u64);
                self.apply(x, c, h, w, &mut rng, o)
            })
    }
}

fn mat_mul(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    [
        a[0] * b[0] + a[1] * b[2],
        a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2],
        a[2] * b[1] + a[3] * b[3],
    ]
}

/// A random displacement field for an `h x w` image: uniform white noise in each axis,
/// smoothed by a separable Gaussian of standard deviation `sigma` pixels (edges clamped), then
/// scaled so that the displacements' root-mean-square length is `rms` pixels.
fn elastic_field<R: Rng + ?Sized>(
    h: usize,
    w: usize,
    rms: f32,
    sigma: f32,
    rng: &mut R,
) -> (Vec<f32>, Vec<f32>) {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let mut fx: Vec<f32> = (0..h * w).map(|_| rng.random_range(-1.0..=1.0)).collect();
    let mut fy: Vec<f32> = (0..h * w).map(|_| rng.random_range(-1.0..=1.0)).collect();
    let mut tmp = vec![0.0f32; h * w];
    for f in [&mut fx, &mut fy] {
        blur_axis(f, &mut tmp, h, w, &kernel, radius, true);
        blur_axis(&tmp, f, h, w, &kernel, radius, false);
    }
    let power: f32 = fx.iter().chain(fy.iter()).map(|v| v * v).sum::<f32>() / (h * w) as f32;
    if power > 0.0 {
        let k = rms / power.sqrt();
        for v in fx.iter_mut().chain(fy.iter_mut()) {
            *v *= k;
        }
    }
    (fx, fy)
}

/// One pass of a separable blur: along rows (`horizontal`) or columns, edges clamped.
fn blur_axis(
    src: &[f32],
    dst: &mut [f32],
    h: usize,
    w: usize,
    kernel: &[f32],
    radius: isize,
    horizontal: bool,
) {
    let norm: f32 = kernel.iter().sum();
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (k, &g) in kernel.iter().enumerate() {
                let o = k as isize - radius;
                let (xi, yi) = if horizontal {
                    ((x as isize + o).clamp(0, w as isize - 1), y as isize)
                } else {
                    (x as isize, (y as isize + o).clamp(0, h as isize - 1))
                };
                acc += g * src[yi as usize * w + xi as usize];
            }
            dst[y * w + x] = acc / norm;
        }
    }
}

/// Bilinear sample of a `h x w` plane at `(x, y)`; taps outside the plane read `fill`.
#[inline]
fn bilinear(src: &[f32], w: usize, h: usize, x: f32, y: f32, fill: f32) -> f32 {
    if !(x > -1.0 && y > -1.0 && x < w as f32 && y < h as f32) {
        return fill;
    }
    let x0 = x.floor();
    let y0 = y.floor();
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as isize, y0 as isize);
    let at = |xi: isize, yi: isize| {
        if xi < 0 || yi < 0 || xi >= w as isize || yi >= h as isize {
            fill
        } else {
            src[yi as usize * w + xi as usize]
        }
    };
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
    let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_only_shifts_and_fills() {
        // A single bright pixel moves with a pure translation; the rest stays background.
        let (h, w) = (9, 9);
        let mut x = vec![0.0f32; h * w];
        x[4 * w + 4] = 1.0;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut out = vec![0.0; h * w];
        // Find a seed whose draws are translation only, then check mass is preserved.
        for _ in 0..200 {
            Augment::koch()
                .apply(&x, 1, h, w, &mut rng, &mut out)
                .unwrap();
            let s: f32 = out.iter().sum();
            assert!(s <= 1.0 * 1.2 * 1.2 * 1.5 + 1e-4, "{s}");
            assert!(out.iter().all(|v| (0.0..=1.0 + 1e-5).contains(v)));
        }
    }

    #[test]
    fn hflip_mirrors() {
        let x: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let aug = Augment {
            hflip: true,
            ..Augment::default()
        };
        let mut saw_flip = false;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..20 {
            let mut out = vec![0.0; 6];
            aug.apply(&x, 1, 2, 3, &mut rng, &mut out).unwrap();
            if out == [2.0, 1.0, 0.0, 5.0, 4.0, 3.0] {
                saw_flip = true;
            } else {
                assert_eq!(out, x);
            }
        }
        assert!(saw_flip);
    }

    #[test]
    fn elastic_moves_pixels_by_the_asked_length() {
        // On the ramps I(x, y) = x and I(x, y) = y, the output minus the input is the
        // displacement itself (bilinear sampling is exact on a ramp), so the same random field
        // gives back its x and y components away from the border.
        let (h, w) = (64usize, 64usize);
        let ramp_x: Vec<f32> = (0..h * w).map(|i| (i % w) as f32).collect();
        let ramp_y: Vec<f32> = (0..h * w).map(|i| (i / w) as f32).collect();
        for rms in [0.5f32, 1.5] {
            let aug = Augment {
                elastic: rms,
                elastic_sigma: 3.0,
                ..Augment::default()
            };
            assert!(!aug.is_identity());
            let mut ox = vec![0.0; h * w];
            let mut oy = vec![0.0; h * w];
            aug.apply(&ramp_x, 1, h, w, &mut ChaCha8Rng::seed_from_u64(3), &mut ox)
                .unwrap();
            aug.apply(&ramp_y, 1, h, w, &mut ChaCha8Rng::seed_from_u64(3), &mut oy)
                .unwrap();
            let (mut power, mut n) = (0.0f32, 0usize);
            for y in 8..h - 8 {
                for x in 8..w - 8 {
                    let i = y * w + x;
                    let (dx, dy) = (ox[i] - ramp_x[i], oy[i] - ramp_y[i]);
                    power += dx * dx + dy * dy;
                    n += 1;
                }
            }
            let measured = (power / n as f32).sqrt();
            assert!(
                (measured - rms).abs() < 0.25 * rms,
                "asked {rms} px, measured {measured} px"
            );
            // Smooth: neighbouring pixels move almost together.
            let step = (ox[32 * w + 33] - ox[32 * w + 32] - 1.0).abs();
            assert!(step < 0.5 * rms, "neighbours differ by {step} px");
        }
        // Off by default, and a zero sigma turns it off rather than dividing by zero.
        assert!(Augment::default().is_identity());
        let flat = Augment {
            elastic: 1.0,
            elastic_sigma: 0.0,
            ..Augment::default()
        };
        assert!(flat.is_identity());
    }
}
