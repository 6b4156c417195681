//! Input preprocessing: colour conversion, resizing, scaling, inversion and normalisation.
//!
//! A [`Preprocess`] is stored inside model files so that inference repeats exactly what
//! training did.

use image::DynamicImage;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// How an image becomes the network's input tensor.
///
/// The output is `channels x height x width` f32 in CHW order: the image converted to grey
/// (`channels == 1`) or RGB (`channels == 3`), resized to `width x height` (area averaging
/// when shrinking, bilinear when enlarging), scaled to `[0, 1]`, optionally inverted
/// (`1 - x`, for black-on-white strokes such as Omniglot), then normalised per channel as
/// `(x - mean[c]) / std[c]`. `mean` and `std` may hold one value per channel, a single value
/// for all channels, or nothing (mean 0, std 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// 1 (grey) or 3 (RGB).
    pub channels: u8,
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Per-channel mean subtracted after scaling to `[0, 1]` (and inversion).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f32>,
    /// Replace `x` by `1 - x` before normalising.
    pub invert: bool,
}

impl Preprocess {
    /// Grey or RGB input of the given size, scaled to `[0, 1]`, no inversion, no normalisation.
    pub fn new(channels: u8, width: u32, height: u32) -> Self {
        Preprocess {
            channels,
            width,
            height,
            mean: Vec::new(),
            std: Vec::new(),
            invert: false,
        }
    }

    /// Omniglot as in Koch et al.: grey 105x105, strokes inverted to white on black.
    pub fn omniglot() -> Self {
        Preprocess {
            invert: true,
            ..Preprocess::new(1, 105, 105)
        }
    }

    /// Sets per-channel normalisation.
    pub fn with_normalisation(mut self, mean: Vec<f32>, std: Vec<f32>) -> Self {
        self.mean = mean;
        self.std = std;
        self
    }

    /// Sets inversion.
    pub fn with_invert(mut self, invert: bool) -> Self {
        self.invert = invert;
        self
    }

    /// Checks the fields: channels 1 or 3, non-zero size, mean/std of length 0, 1 or
    /// `channels`, and positive finite std.
    pub fn validate(&self) -> Result<()> {
        if self.channels != 1 && self.channels != 3 {
            return Err(DataError::Invalid(format!(
                "preprocess: channels must be 1 or 3, got {}",
                self.channels
            )));
        }
        if self.width == 0 || self.height == 0 {
            return Err(DataError::Invalid(format!(
                "preprocess: size must be non-zero, got {}x{}",
                self.width, self.height
            )));
        }
        for (what, v) in [("mean", &self.mean), ("std", &self.std)] {
            if !(v.is_empty() || v.len() == 1 || v.len() == self.channels as usize) {
                return Err(DataError::Invalid(format!(
                    "preprocess: {what} has {} values, expected 0, 1 or {}",
                    v.len(),
                    self.channels
                )));
            }
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(DataError::Invalid(format!(
                "preprocess: std must be positive and finite, got {:?}",
                self.std
            )));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(DataError::Invalid(format!(
                "preprocess: mean must be finite, got {:?}",
                self.mean
            )));
        }
        Ok(())
    }

    /// Number of f32 values [`Preprocess::apply`] produces: `channels * height * width`.
    pub fn tensor_len(&self) -> usize {
        self.channels as usize * self.height as usize * self.width as usize
    }

    /// The tensor shape `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        [
            self.channels as usize,
            self.height as usize,
            self.width as usize,
        ]
    }

    fn mean_std(&self, c: usize) -> (f32, f32) {
        let mean = self
            .mean
            .get(c)
            .or(self.mean.first())
            .copied()
            .unwrap_or(0.0);
        let std = self.std.get(c).or(self.std.first()).copied().unwrap_or(1.0);
        (mean, std)
    }

    /// Preprocesses one image into a new CHW tensor of [`Preprocess::tensor_len`] values.
    ///
    /// # Shapes
    /// - output: `[channels, height, width]` f32, row-major.
    pub fn apply(&self, img: &DynamicImage) -> Vec<f32> {
        let mut out = vec![0.0; self.tensor_len()];
        self.apply_into(img, &mut out);
        out
    }

    /// Like [`Preprocess::apply`], writing into `out`; if `out` is shorter than
    /// [`Preprocess::tensor_len`], only its length is filled.
    pub fn apply_into(&self, img: &DynamicImage, out: &mut [f32]) {
        let channels = if self.channels == 3 { 3 } else { 1 };
        let (sw, sh) = (img.width() as usize, img.height() as usize);
        let (dw, dh) = (self.width as usize, self.height as usize);
        // Interleaved source pixels, scaled to [0, 1].
        let src: Vec<f32> = if channels == 1 {
            grey_pixels(img)
        } else {
            img.to_rgb8()
                .as_raw()
                .iter()
                .map(|&p| p as f32 / 255.0)
                .collect()
        };
        let plane = dw * dh;
        let mut chan = vec![0.0f32; sw * sh];
        let mut resized = vec![0.0f32; plane];
        for c in 0..channels {
            for (i, v) in chan.iter_mut().enumerate() {
                *v = src[i * channels + c];
            }
            resize_plane(&chan, sw, sh, &mut resized, dw, dh);
            let (mean, std) = self.mean_std(c);
            let inv_std = 1.0 / std;
            let start = (c * plane).min(out.len());
            let end = ((c + 1) * plane).min(out.len());
            for (o, &x) in out[start..end].iter_mut().zip(&resized) {
                // Convex resampling weights keep values in [0, 1] up to rounding.
                let x = x.clamp(0.0, 1.0);
                let x = if self.invert { 1.0 - x } else { x };
                *o = (x - mean) * inv_std;
            }
        }
    }
}

/// Grey values in `[0, 1]`; 8-bit grey images skip the conversion copy.
fn grey_pixels(img: &DynamicImage) -> Vec<f32> {
    const SCALE: f32 = 1.0 / 255.0;
    match img {
        DynamicImage::ImageLuma8(g) => g.as_raw().iter().map(|&p| p as f32 * SCALE).collect(),
        DynamicImage::ImageLuma16(g) => g.as_raw().iter().map(|&p| p as f32 / 65535.0).collect(),
        other => other
            .to_luma8()
            .as_raw()
            .iter()
            .map(|&p| p as f32 * SCALE)
            .collect(),
    }
}

/// Resampling weights of one axis: for each destination index, `(first source index, weights)`.
struct AxisWeights {
    start: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

/// Area (box) weights when shrinking, bilinear (half-pixel centres) when enlarging or equal.
fn axis_weights(src: usize, dst: usize) -> AxisWeights {
    let mut start = Vec::with_capacity(dst);
    let mut weights = Vec::with_capacity(dst);
    if src == dst {
        for i in 0..dst {
            start.push(i);
            weights.push(vec![1.0]);
        }
    } else if dst < src {
        let scale = src as f64 / dst as f64;
        for i in 0..dst {
            let lo = i as f64 * scale;
            let hi = (i as f64 + 1.0) * scale;
            let first = lo.floor() as usize;
            let last = (hi.ceil() as usize).min(src);
            let mut w = Vec::with_capacity(last - first);
            for j in first..last {
                let overlap = (hi.min(j as f64 + 1.0) - lo.max(j as f64)).max(0.0);
                w.push((overlap / scale) as f32);
            }
            start.push(first);
            weights.push(w);
        }
    } else {
        let scale = src as f64 / dst as f64;
        for i in 0..dst {
            let x = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
            let j0 = x.floor() as usize;
            let j1 = (j0 + 1).min(src - 1);
            let t = (x - j0 as f64) as f32;
            start.push(j0);
            if j1 == j0 {
                weights.push(vec![1.0]);
            } else {
                weights.push(vec![1.0 - t, t]);
            }
        }
    }
    AxisWeights { start, weights }
}

/// Resizes one plane (`sh x sw` row-major) into `dst` (`dh x dw`), separably.
pub(crate) fn resize_plane(
    src: &[f32],
    sw: usize,
    sh: usize,
    dst: &mut [f32],
    dw: usize,
    dh: usize,
) {
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 {
        dst.iter_mut().for_each(|v| *v = 0.0);
        return;
    }
    if sw == dw && sh == dh {
        dst[..dw * dh].copy_from_slice(&src[..sw * sh]);
        return;
    }
    let wx = axis_weights(sw, dw);
    let wy = axis_weights(sh, dh);
    // Horizontal pass: sh x dw.
    let mut tmp = vec![0.0f32; sh * dw];
    for y in 0..sh {
        let row = &src[y * sw..(y + 1) * sw];
        let trow = &mut tmp[y * dw..(y + 1) * dw];
        for x in 0..dw {
            let s = wx.start[x];
            trow[x] = wx.weights[x]
                .iter()
                .zip(&row[s..])
                .map(|(w, p)| w * p)
                .sum();
        }
    }
    // Vertical pass: dh x dw.
    for y in 0..dh {
        let drow = &mut dst[y * dw..(y + 1) * dw];
        drow.iter_mut().for_each(|v| *v = 0.0);
        let s = wy.start[y];
        for (k, w) in wy.weights[y].iter().enumerate() {
            let trow = &tmp[(s + k) * dw..(s + k + 1) * dw];
            for (d, t) in drow.iter_mut().zip(trow) {
                *d += w * t;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_shrink_averages_blocks() {
        // 4x2 -> 2x1: each output is the mean of a 2x2 block.
        let src = [0.0, 1.0, 0.5, 0.5, 1.0, 0.0, 0.25, 0.75];
        let mut dst = [0.0; 2];
        resize_plane(&src, 4, 2, &mut dst, 2, 1);
        assert!(
            (dst[0] - 0.5).abs() < 1e-6 && (dst[1] - 0.5).abs() < 1e-6,
            "{dst:?}"
        );
    }

    #[test]
    fn area_shrink_non_integer_ratio_preserves_mean() {
        let src: Vec<f32> = (0..105 * 105).map(|i| (i % 7) as f32 / 7.0).collect();
        let mut dst = vec![0.0; 28 * 28];
        resize_plane(&src, 105, 105, &mut dst, 28, 28);
        let m1: f32 = src.iter().sum::<f32>() / src.len() as f32;
        let m2: f32 = dst.iter().sum::<f32>() / dst.len() as f32;
        assert!((m1 - m2).abs() < 1e-3, "{m1} vs {m2}");
    }

    #[test]
    fn bilinear_enlarge_keeps_constant_and_endpoints() {
        let src = [0.0, 1.0];
        let mut dst = [0.0; 4];
        resize_plane(&src, 2, 1, &mut dst, 4, 1);
        // Half-pixel centres: x = (i + 0.5) / 2 - 0.5 -> -0.25, 0.25, 0.75, 1.25 (clamped).
        let want = [0.0, 0.25, 0.75, 1.0];
        for (d, w) in dst.iter().zip(want) {
            assert!((d - w).abs() < 1e-6, "{dst:?}");
        }
    }
}
