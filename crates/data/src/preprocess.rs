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
/// (`channels == 1`) or RGB (`channels == 3`), optionally cropped around its ink (see
/// [`Preprocess::fit_ink`]), resized to `width x height` (area averaging
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
    /// Centre the ink and scale it to fill this fraction of the output (0 < f ≤ 1): the
    /// image is cropped (padded with the background where the crop leaves it) to the box
    /// around every pixel more than 0.25 away from the top-left (background) pixel's value,
    /// widened to the output's aspect ratio and by `1 / f`, before resizing. Strokes then
    /// get the same size and place whoever drew them, at a higher resolution than the whole
    /// canvas would give them. `None` (the default, and what older model files mean) resizes
    /// the whole image; so does an image without ink.
    #[serde(default)]
    pub fit_ink: Option<f32>,
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
            fit_ink: None,
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
        if let Some(f) = self.fit_ink {
            if !(f > 0.0 && f <= 1.0) {
                return Err(DataError::Invalid(format!(
                    "preprocess: fit_ink must be a fraction in (0, 1], got {f}"
                )));
            }
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
        let window = self
            .fit_ink
            .and_then(|f| ink_window(&src, channels, sw, sh, dw, dh, f));
        let (cw, ch) = window.map_or((sw, sh), |w| (w.2, w.3));
        let mut chan = vec![0.0f32; cw * ch];
        let mut resized = vec![0.0f32; plane];
        for c in 0..channels {
            match window {
                None => {
                    for (i, v) in chan.iter_mut().enumerate() {
                        *v = src[i * channels + c];
                    }
                }
                Some((x0, y0, _, _)) => {
                    // The crop, with the background (the top-left pixel) outside the image.
                    let fill = src[c];
                    for (y, row) in chan.chunks_mut(cw).enumerate() {
                        let sy = y0 + y as isize;
                        for (x, v) in row.iter_mut().enumerate() {
                            let sx = x0 + x as isize;
                            *v = if sx >= 0 && sy >= 0 && (sx as usize) < sw && (sy as usize) < sh {
                                src[(sy as usize * sw + sx as usize) * channels + c]
                            } else {
                                fill
                            };
                        }
                    }
                }
            }
            resize_plane(&chan, cw, ch, &mut resized, dw, dh);
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

/// The crop `(x0, y0, width, height)` (it may reach outside the image) that centres the ink
/// of `src` (interleaved, `channels` per pixel, values in `[0, 1]`) and scales it to fill
/// `fill` of a `dw x dh` output; `None` when no pixel is ink.
fn ink_window(
    src: &[f32],
    channels: usize,
    sw: usize,
    sh: usize,
    dw: usize,
    dh: usize,
    fill: f32,
) -> Option<(isize, isize, usize, usize)> {
    if sw == 0 || sh == 0 || dw == 0 || dh == 0 {
        return None;
    }
    let bg = &src[..channels];
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..sh {
        for x in 0..sw {
            let p = &src[(y * sw + x) * channels..(y * sw + x + 1) * channels];
            if p.iter().zip(bg).any(|(v, b)| (v - b).abs() > 0.25) {
                x0 = x0.min(x);
                y0 = y0.min(y);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
        }
    }
    if x0 == usize::MAX {
        return None;
    }
    let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
    // Output pixels per source pixel, so that the box fills `fill` of the tighter axis.
    let scale = (fill * dw as f32 / bw).min(fill * dh as f32 / bh);
    let (cw, ch) = (
        ((dw as f32 / scale).round() as usize).max(1),
        ((dh as f32 / scale).round() as usize).max(1),
    );
    let (cx, cy) = ((x0 + x1 + 1) as f32 * 0.5, (y0 + y1 + 1) as f32 * 0.5);
    Some((
        (cx - cw as f32 * 0.5).round() as isize,
        (cy - ch as f32 * 0.5).round() as isize,
        cw,
        ch,
    ))
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

    /// A white 20×20 canvas with a black rectangle at columns `x0..x0+4`, rows `y0..y0+6`.
    fn canvas(x0: u32, y0: u32) -> DynamicImage {
        let img = image::GrayImage::from_fn(20, 20, |x, y| {
            let ink = (x0..x0 + 4).contains(&x) && (y0..y0 + 6).contains(&y);
            image::Luma([if ink { 0 } else { 255 }])
        });
        DynamicImage::ImageLuma8(img)
    }

    #[test]
    fn fit_ink_centres_and_scales_the_strokes() {
        let p = Preprocess {
            invert: true,
            fit_ink: Some(1.0),
            ..Preprocess::new(1, 12, 12)
        };
        p.validate().expect("valid");
        // The same mark anywhere on the canvas gives the same tensor.
        let a = p.apply(&canvas(2, 10));
        let b = p.apply(&canvas(13, 1));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6));
        // The 4×6 box fills the 12 rows (scale 2) and the middle 8 of the 12 columns, up to
        // the bilinear enlargement's blur at its left and right edges.
        let at = |x: usize, y: usize| a[y * 12 + x];
        for y in 0..12 {
            assert!(at(0, y) < 1e-6 && at(11, y) < 1e-6, "row {y}: {a:?}");
            for x in 3..9 {
                assert!((at(x, y) - 1.0).abs() < 1e-6, "({x}, {y}): {}", at(x, y));
            }
            for x in 0..6 {
                assert!((at(x, y) - at(11 - x, y)).abs() < 1e-6, "centred: {a:?}");
            }
        }
        // Half the fill: the box is 6 rows tall, in the middle, with background around it.
        let half = Preprocess {
            fit_ink: Some(0.5),
            ..p.clone()
        }
        .apply(&canvas(2, 10));
        let ink_rows: Vec<usize> = (0..12)
            .filter(|y| half[y * 12..(y + 1) * 12].iter().any(|&v| v > 0.5))
            .collect();
        assert_eq!(ink_rows, (3..9).collect::<Vec<_>>());
        // A blank image resizes as a whole; out-of-range fractions are rejected.
        let blank =
            DynamicImage::ImageLuma8(image::GrayImage::from_pixel(20, 20, image::Luma([255])));
        assert!(p.apply(&blank).iter().all(|&v| v.abs() < 1e-6));
        for bad in [0.0, 1.5, f32::NAN] {
            let q = Preprocess {
                fit_ink: Some(bad),
                ..p.clone()
            };
            assert!(q.validate().is_err(), "{bad}");
        }
    }

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
