//! The detector's network over the tiled pyramid, in horizontal bands, with bounded memory.
//!
//! The network is a run of unpadded strided convolutions (the downsampler) followed by a run of
//! stride-1 "same" convolutions. dlib runs the whole tiled image at once; here:
//! - the downsampler's output is produced top to bottom in chunks of rows, each from the rows
//!   of the tiled image it needs (filled from the pyramid levels just then), so its input and
//!   its 16-channel first activations never exist for more than one chunk;
//! - the same-padded layers run per band of output rows over the downsampler rows the band
//!   needs plus a margin of `Σ padding` rows each side (its receptive field); after each layer
//!   the rows its zero padding spoiled are dropped and the rows outside the tiled image are set
//!   to zero, so every output row equals the whole-image pass exactly (zero padding only at the
//!   true top and bottom edges; the full width is always present, so the left and right edges
//!   are the convolutions' own padding);
//! - a band's last downsampler rows are kept for the next band, so no row is computed twice;
//! - the last layer (one 9x9 filter) runs as a 1x1 convolution with one filter per kernel
//!   position (`K·K` filters of `Cin` weights), whose planes are then shifted and added: the
//!   same sums in another order, as a matrix product with 81 rows instead of one (a 9x9
//!   `conv2d` with one filter ran at a sixth of the speed, an eighth of the detector's time).

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use siamese_ops::nn::{self, Conv2dParams};

use super::pyramid::{Layout, Levels};
use crate::error::Result;

/// Activation bytes aimed at for one chunk of the downsampler and for one band of the rest
/// (each), besides the kernels' own scratch.
const BAND_BYTES: usize = 48 << 20;

/// Fewest downsampler output rows per chunk (each chunk recomputes 9 rows of the first layer
/// and 3 of the second).
const MIN_CHUNK_ROWS: usize = 4;

/// Most downsampler output rows per chunk.
const MAX_CHUNK_ROWS: usize = 64;

/// Output rows of the head computed at once.
const HEAD_ROWS: usize = 32;

/// Most output rows per band.
const MAX_BAND_ROWS: usize = 512;

/// Fewest output rows per band (below this the margins cost more than the band).
const MIN_BAND_ROWS: usize = 8;

/// One convolution, with its affine layer folded in.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    /// `[Cout, Cin, K, K]`.
    pub w: Tensor,
    /// `[Cout]`.
    pub b: Tensor,
    /// Kernel side.
    pub k: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes).
    pub pad: usize,
    /// Whether a ReLU follows.
    pub relu: bool,
}

impl Conv {
    fn run(&self, x: &Tensor) -> Result<Tensor> {
        let p = Conv2dParams {
            stride: self.stride,
            padding: self.pad,
        };
        Ok(if self.relu {
            nn::conv2d_relu(x, &self.w, Some(&self.b), p)?
        } else {
            nn::conv2d(x, &self.w, Some(&self.b), p)?
        })
    }
}

/// The scores of every output position.
#[derive(Debug, Clone)]
pub(crate) struct ScoreMap {
    /// Output rows.
    pub rows: usize,
    /// Output columns.
    pub cols: usize,
    /// `rows * cols` scores, row-major.
    pub data: Vec<f32>,
}

/// Time spent filling tiled-image rows from the pyramid, and in the convolutions.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NetTimes {
    pub fill: Duration,
    pub convs: Duration,
}

/// The last layer: one `K x K` filter, stride 1, padding `K / 2`, no ReLU.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    /// `[K * K, Cin, 1, 1]`: row `ky * K + kx` holds the filter's weights at `(ky, kx)`.
    pub taps: Tensor,
    /// The filter's bias.
    pub bias: f32,
    /// Kernel side.
    pub k: usize,
}

impl Head {
    /// The head's input for `[1, Cin, n, W]` rows (zero outside the plane); returns its output
    /// rows `K/2 .. n - K/2`, row-major (`(n - 2 (K/2)) * W` values), computed
    /// [`HEAD_ROWS`] rows at a time (each needs `K * K` planes of its rows).
    fn run(&self, x: &Tensor) -> Result<Vec<f32>> {
        let (_, _, n, w) = x.dims4()?;
        let pad = self.k / 2;
        let rows = n.saturating_sub(2 * pad);
        let mut out = vec![self.bias; rows * w];
        for (i, part) in out.chunks_mut(HEAD_ROWS * w.max(1)).enumerate() {
            let y0 = i * HEAD_ROWS;
            let m = part.len() / w.max(1);
            self.rows(&x.narrow(2, y0, m + 2 * pad)?, part)?;
        }
        Ok(out)
    }

    /// Adds the head's sums for the input rows `x` (`[1, Cin, m + 2 (K/2), W]`) to `out`
    /// (`m` rows of `W`).
    fn rows(&self, x: &Tensor, out: &mut [f32]) -> Result<()> {
        let (_, _, n, w) = x.dims4()?;
        let planes = nn::conv2d(x, &self.taps, None, Conv2dParams::default())?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (k, pad) = (self.k, self.k / 2);
        for (y, row) in out.chunks_exact_mut(w.max(1)).enumerate() {
            for ky in 0..k {
                for kx in 0..k {
                    let at = ((ky * k + kx) * n + y + ky) * w;
                    let src = &planes[at..at + w];
                    // row[x] += src[x + kx - pad] where that is inside the row.
                    if kx >= pad {
                        let s = (kx - pad).min(w);
                        row[..w - s]
                            .iter_mut()
                            .zip(&src[s..])
                            .for_each(|(o, v)| *o += v);
                    } else {
                        let s = (pad - kx).min(w);
                        row[s..].iter_mut().zip(src).for_each(|(o, v)| *o += v);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The detector's network: unpadded strided convolutions, then stride-1 same-padded ones,
/// then the one-filter head.
#[derive(Debug, Clone)]
pub(crate) struct Net {
    /// The downsampler (padding 0).
    pub down: Vec<Conv>,
    /// The same-padded layers (stride 1, padding `k / 2`, ReLU).
    pub same: Vec<Conv>,
    /// The last layer.
    pub head: Head,
}

impl Net {
    /// Output side of the downsampler for an input side `n`, or `None` when `n` is too short
    /// for a kernel.
    pub(crate) fn out_size(&self, n: usize) -> Option<usize> {
        self.down
            .iter()
            .try_fold(n, |n, l| (n >= l.k).then(|| (n - l.k) / l.stride + 1))
    }

    /// Input rows `[a', b')` the downsampler needs for its output rows `[a, b)` (`b > a`).
    fn input_rows(&self, a: usize, b: usize) -> (usize, usize) {
        self.down
            .iter()
            .rev()
            .fold((a, b), |(a, b), l| (a * l.stride, (b - 1) * l.stride + l.k))
    }

    /// Rows each band needs on each side: the same-padded layers' paddings summed.
    fn margin(&self) -> usize {
        self.same.iter().map(|l| l.pad).sum::<usize>() + self.head.k / 2
    }

    /// `p_in = scale * p_out + offset`: dlib's `output_tensor_to_input_tensor` through every
    /// layer (`p * stride - padding + k / 2` each).
    pub(crate) fn output_to_input(&self) -> (f64, f64) {
        let head = (1usize, self.head.k / 2, self.head.k);
        self.down
            .iter()
            .chain(&self.same)
            .map(|l| (l.stride, l.pad, l.k))
            .chain(std::iter::once(head))
            .rev()
            .fold((1.0, 0.0), |(s, o), (stride, pad, k)| {
                let (st, pad, half) = (stride as f64, pad as f64, (k / 2) as f64);
                (s * st, o * st - pad + half)
            })
    }

    /// Scores of the whole tiled image described by `layout` and `levels`.
    pub(crate) fn scores(
        &self,
        levels: &Levels<'_>,
        layout: &Layout,
    ) -> Result<(ScoreMap, NetTimes)> {
        // Chunk rows: per downsampler output row and tiled-image column, 8 input rows of 3
        // channels and 4 rows of 16 channels at half the width (twice, counting the second
        // layer's blocked copy), then 2 rows of 32 at a quarter (twice): about 400 bytes.
        let width = layout.cols.max(1);
        let chunk = (BAND_BYTES / (400 * width)).clamp(MIN_CHUNK_ROWS, MAX_CHUNK_ROWS);
        // Band rows: the downsampler's rows and two 45-channel activations at 1/8 of the
        // width, about 64 bytes per row per tiled-image column.
        let band = (BAND_BYTES / (64 * width))
            .saturating_sub(2 * self.margin())
            .clamp(MIN_BAND_ROWS, MAX_BAND_ROWS);
        self.scores_in_bands(levels, layout, chunk, band)
    }

    /// [`Net::scores`] with `chunk` downsampler rows at a time and bands of `band` output rows.
    pub(crate) fn scores_in_bands(
        &self,
        levels: &Levels<'_>,
        layout: &Layout,
        chunk: usize,
        band: usize,
    ) -> Result<(ScoreMap, NetTimes)> {
        let (chunk, band) = (chunk.max(1), band.max(1));
        let mut times = NetTimes::default();
        let (Some(rows), Some(cols)) = (self.out_size(layout.rows), self.out_size(layout.cols))
        else {
            let empty = ScoreMap {
                rows: 0,
                cols: 0,
                data: Vec::new(),
            };
            return Ok((empty, times));
        };
        let start = Instant::now();
        let margin = self.margin();
        let mut data = vec![0f32; rows * cols];
        // Downsampler rows kept from the previous band: `(first row, [1, C, n, cols])`.
        let mut kept: Option<(usize, Tensor)> = None;
        let mut next = 0usize;
        let mut o0 = 0usize;
        while o0 < rows {
            let o1 = (o0 + band).min(rows);
            let lo = o0.saturating_sub(margin);
            let hi = (o1 + margin).min(rows);
            let mut parts = Vec::new();
            if let Some((first, t)) = kept.take() {
                if next > lo && lo >= first {
                    parts.push(t.narrow(2, lo - first, next - lo)?);
                }
            }
            let mut a = next.max(lo);
            while a < hi {
                let b = (a + chunk).min(hi);
                parts.push(self.downsample(levels, layout, a, b, &mut times)?);
                a = b;
            }
            next = hi;
            let x = Tensor::cat(&parts, 2)?;
            drop(parts);
            if o1 < rows {
                let from = o1.saturating_sub(margin).max(lo);
                kept = Some((from, x.narrow(2, from - lo, hi - from)?.contiguous()?));
            }
            // Rows `[o0 - margin, o1 + margin)`, zero outside the tiled image.
            let mut x = x.pad_with_zeros(2, lo + margin - o0, o1 + margin - hi)?;
            let mut first = o0 as i64 - margin as i64;
            for l in &self.same {
                let y = l.run(&x)?;
                let n = y.dim(2)?;
                first += l.pad as i64;
                x = zero_outside(y.narrow(2, l.pad, n - 2 * l.pad)?, first, rows)?;
            }
            let out = self.head.run(&x)?;
            data[o0 * cols..o1 * cols].copy_from_slice(&out[..(o1 - o0) * cols]);
            o0 = o1;
        }
        times.convs = start.elapsed().saturating_sub(times.fill);
        Ok((ScoreMap { rows, cols, data }, times))
    }

    /// Downsampler output rows `[a, b)`: `[1, C, b - a, cols]`.
    fn downsample(
        &self,
        levels: &Levels<'_>,
        layout: &Layout,
        a: usize,
        b: usize,
        times: &mut NetTimes,
    ) -> Result<Tensor> {
        let t = Instant::now();
        let (y0, y1) = self.input_rows(a, b);
        let mut buf = vec![0f32; 3 * (y1 - y0) * layout.cols];
        levels.fill(layout, y0, y1, &mut buf);
        let mut x = Tensor::from_vec(buf, (1, 3, y1 - y0, layout.cols), &Device::Cpu)?;
        times.fill += t.elapsed();
        for l in &self.down {
            x = l.run(&x)?;
        }
        Ok(x)
    }
}

/// `t` (`[1, C, n, W]`, whose row 0 is row `first` of a plane of `rows` rows) with the rows
/// outside that plane set to zero, as a convolution's zero padding sees them.
fn zero_outside(t: Tensor, first: i64, rows: usize) -> Result<Tensor> {
    let n = t.dim(2)? as i64;
    let top = (-first).clamp(0, n);
    let bottom = (first + n - rows as i64).clamp(0, n - top);
    if top == 0 && bottom == 0 {
        return Ok(t);
    }
    let keep = n - top - bottom;
    if keep == 0 {
        return Ok(t.zeros_like()?);
    }
    Ok(t.narrow(2, top as usize, keep as usize)?.pad_with_zeros(
        2,
        top as usize,
        bottom as usize,
    )?)
}
