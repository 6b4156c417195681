//! The detector's input side, as dlib computes it: `pyramid_up` (the Python wrapper's
//! upsampling), the tiled-pyramid layout of `input_rgb_image_pyramid`
//! (`compute_tiled_image_pyramid_details`), and the pyramid levels, each an align-corners
//! bilinear resize of the previous level's normalised values (`tt::resize_bilinear`).
//!
//! dlib's `resize_image` for float planes and for RGB images walks each output row four
//! columns at a time with positions accumulated in `f32` (its `simd4f` loop) and finishes the
//! row one column at a time in `f64`; the taps below reproduce both loops' arithmetic, so the
//! values match dlib's bit for bit on IEEE hardware (as far as the compiler of dlib did not
//! fuse multiply-adds).
//!
//! Memory: the whole tiled tensor is never built. Level 0 is the (upsampled) 8-bit image;
//! every [`STORE_EVERY`]-th further level (every one, for small images) is kept as `f32`, and
//! the levels between are recomputed from the nearest kept one for the rows a band of the
//! tiled image needs.

use rayon::prelude::*;

use crate::geometry::Rect;

/// dlib's default `pyramid_padding` (the gap between tiles), which version 1 of
/// `input_rgb_image_pyramid` (the one in `mmod_human_face_detector.dat`) implies.
pub(crate) const PYRAMID_PADDING: i64 = 10;

/// dlib's default `pyramid_outer_padding` (the border around the tiles), implied likewise.
pub(crate) const OUTER_PADDING: i64 = 11;

/// The pyramid stops before a level shorter than this (`min_height` in dlib).
const MIN_LEVEL_HEIGHT: i64 = 5;

/// Every this many levels one is stored whole as `f32`; the others are recomputed per band.
/// Storing every third level keeps a 1080p photo upsampled once at about 50 MB of levels
/// (every level would take 225 MB).
pub(crate) const STORE_EVERY: usize = 3;

/// Up to this many bytes for all levels, every level is stored (no recomputation): images up
/// to about 2.3 megapixels as the detector sees them (the levels after the first add up to
/// 2.27 times the image).
const STORE_ALL_BYTES: usize = 64 << 20;

/// Rows of a stored level computed per parallel task while it is built.
const BUILD_ROWS: usize = 32;

/// Rows of the tiled image filled per parallel task.
const FILL_ROWS: usize = 48;

/// One output column (or row) of dlib's bilinear resize: the two source indices and the
/// fraction between them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tap {
    /// Source index of the left (top) neighbour.
    lo: usize,
    /// Source index of the right (bottom) neighbour.
    hi: usize,
    /// The fraction as the 4-column `f32` loop has it (columns only).
    frac32: f32,
    /// The fraction in `f64`: the 1-column loop's, and every row's.
    frac64: f64,
}

/// Column taps of a resize from `n_in` to `n_out` columns: the first `lanes` taps are those
/// dlib's 4-column loop computes (`f32` positions, `f32` weights), the rest its 1-column tail.
#[derive(Clone, Debug)]
pub(crate) struct Columns {
    taps: Vec<Tap>,
    lanes: usize,
}

impl Columns {
    /// The taps of dlib's `resize_image` loops for a row of `n_in` values resized to `n_out`
    /// (both at least 1).
    pub(crate) fn new(n_in: usize, n_out: usize) -> Self {
        let scale = (n_in as f64 - 1.0) / ((n_out as f64 - 1.0).max(1.0));
        let last = n_in.saturating_sub(1);
        let mut taps = Vec::with_capacity(n_out);
        // The 4-column loop: positions start at -4·scale + j·scale (rounded to f32) and step
        // by 4·scale in f32; it stops at the first group whose last right neighbour is past the
        // row (and, which dlib never needs, before a group past the output row's end).
        let x0 = -4.0 * scale;
        let mut x = [
            x0 as f32,
            (x0 + scale) as f32,
            (x0 + 2.0 * scale) as f32,
            (x0 + 3.0 * scale) as f32,
        ];
        let step = (4.0 * scale) as f32;
        let mut c = 0usize;
        loop {
            for v in &mut x {
                *v += step;
            }
            // `simd4i(_x)` truncates toward zero.
            let left = x.map(|v| v as i32);
            if i64::from(left[3]) + 1 >= n_in as i64 || c + 4 > n_out || left[0] < 0 {
                break;
            }
            for j in 0..4 {
                let lo = left[j] as usize;
                taps.push(Tap {
                    lo,
                    hi: lo + 1,
                    frac32: x[j] - left[j] as f32,
                    frac64: 0.0,
                });
            }
            c += 4;
        }
        let lanes = c;
        // The 1-column tail, in f64 from `-scale + c·scale`.
        let mut xd = -scale + c as f64 * scale;
        while c < n_out {
            xd += scale;
            let left = (xd.floor().max(0.0) as usize).min(last);
            let frac = xd - left as f64;
            taps.push(Tap {
                lo: left,
                hi: (left + 1).min(last),
                frac32: frac as f32,
                frac64: frac,
            });
            c += 1;
        }
        Self { taps, lanes }
    }

    /// One output row of a float plane: `top` and `bottom` are the source rows, `frac` the
    /// row fraction.
    fn row_f32(&self, top: &[f32], bottom: &[f32], frac: f64, out: &mut [f32]) {
        let tb = frac as f32;
        let itb = (1.0 - frac) as f32;
        let (lanes, tail) = self.taps.split_at(self.lanes);
        let (out_lanes, out_tail) = out.split_at_mut(self.lanes);
        for (o, t) in out_lanes.iter_mut().zip(lanes) {
            let (lr, ilr) = (t.frac32, 1.0 - t.frac32);
            let (tlf, trf, blf, brf) = (itb * ilr, itb * lr, tb * ilr, tb * lr);
            *o = tlf * top[t.lo] + trf * top[t.hi] + blf * bottom[t.lo] + brf * bottom[t.hi];
        }
        for (o, t) in out_tail.iter_mut().zip(tail) {
            let (lr, ilr) = (t.frac32, 1.0 - t.frac32);
            let a = ilr * top[t.lo] + lr * top[t.hi];
            let b = ilr * bottom[t.lo] + lr * bottom[t.hi];
            *o = ((1.0 - frac) * f64::from(a) + frac * f64::from(b)) as f32;
        }
    }

    /// One output row of an interleaved RGB image (`u8`, truncated as dlib converts).
    fn row_rgb(&self, top: &[u8], bottom: &[u8], frac: f64, out: &mut [u8]) {
        let tb = frac as f32;
        let itb = (1.0 - frac) as f32;
        for (c, t) in self.taps.iter().enumerate() {
            let (l, r) = (t.lo * 3, t.hi * 3);
            let o = &mut out[c * 3..c * 3 + 3];
            if c < self.lanes {
                let (lr, ilr) = (t.frac32, 1.0 - t.frac32);
                let (tlf, trf, blf, brf) = (itb * ilr, itb * lr, tb * ilr, tb * lr);
                for ch in 0..3 {
                    let v = tlf * f32::from(top[l + ch])
                        + trf * f32::from(top[r + ch])
                        + blf * f32::from(bottom[l + ch])
                        + brf * f32::from(bottom[r + ch]);
                    o[ch] = v as i32 as u8;
                }
            } else {
                let lr = t.frac64;
                for ch in 0..3 {
                    let a = (1.0 - lr) * f64::from(top[l + ch]) + lr * f64::from(top[r + ch]);
                    let b = (1.0 - lr) * f64::from(bottom[l + ch]) + lr * f64::from(bottom[r + ch]);
                    o[ch] = ((1.0 - frac) * a + frac * b) as u8;
                }
            }
        }
    }
}

/// Row taps of a resize from `n_in` to `n_out` rows: positions accumulated in `f64` from
/// `-scale`, as dlib's row loop.
pub(crate) fn row_taps(n_in: usize, n_out: usize) -> Vec<Tap> {
    let scale = (n_in as f64 - 1.0) / ((n_out as f64 - 1.0).max(1.0));
    let last = n_in.saturating_sub(1);
    let mut y = -scale;
    (0..n_out)
        .map(|_| {
            y += scale;
            let top = (y.floor().max(0.0) as usize).min(last);
            Tap {
                lo: top,
                hi: (top + 1).min(last),
                frac32: 0.0,
                frac64: y - top as f64,
            }
        })
        .collect()
}

/// The size `pyramid_up` with `pyramid_down<2>` gives a `width` x `height` image:
/// `rect_up` of its rectangle, `(2w + 2) x (2h + 1)`; `None` on overflow.
pub(crate) fn upsampled_size(width: usize, height: usize) -> Option<(usize, usize)> {
    Some((
        width.checked_mul(2)?.checked_add(2)?,
        height.checked_mul(2)?.checked_add(1)?,
    ))
}

/// dlib's `pyramid_up(image, pyramid_down<2>)`: an interleaved RGB image (`width * height *
/// 3` bytes) resized bilinearly (align-corners) to [`upsampled_size`].
pub(crate) fn pyramid_up(rgb: &[u8], width: usize, height: usize) -> (Vec<u8>, usize, usize) {
    let (w, h) = upsampled_size(width, height).unwrap_or((0, 0));
    let cols = Columns::new(width, w);
    let rows = row_taps(height, h);
    let mut out = vec![0u8; w * h * 3];
    out.par_chunks_mut(w * 3)
        .zip(rows.par_iter())
        .for_each(|(o, t)| {
            let top = &rgb[t.lo * width * 3..(t.lo + 1) * width * 3];
            let bottom = &rgb[t.hi * width * 3..(t.hi + 1) * width * 3];
            cols.row_rgb(top, bottom, t.frac64, o);
        });
    (out, w, h)
}

/// Where each pyramid level lies in the tiled image, and the tiled image's size.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// One tile per level, level 0 (the image) first, in tiled-image coordinates.
    pub rects: Vec<Rect>,
    /// Rows of the tiled image.
    pub rows: usize,
    /// Columns of the tiled image.
    pub cols: usize,
}

/// `pyramid_down<6>`'s output size (`find_pyramid_down_output_image_size`): each side times
/// 5/6, rounded down.
fn level_down(n: i64) -> i64 {
    let rate = 5.0f64 / 6.0;
    (rate * n as f64).floor() as i64
}

/// A port of dlib's `compute_tiled_image_pyramid_details` for `pyramid_down<6>`: the levels'
/// sizes (each 5/6 of the previous, until one would be shorter than 5 rows), the first
/// column (level 0 and the levels below it, until the rest fit beside them), the remaining
/// levels stacked bottom-up along the right edge (dropping any that would overlap level 0).
pub(crate) fn tiled_layout(nr: usize, nc: usize, padding: i64, outer: i64) -> Layout {
    let (mut nr, mut nc) = (nr as i64, nc as i64);
    if nr * nc == 0 {
        return Layout {
            rects: Vec::new(),
            rows: 0,
            cols: 0,
        };
    }
    let mut rects = vec![Rect::new(0, 0, nc - 1, nr - 1)];
    loop {
        nr = level_down(nr);
        nc = level_down(nc);
        if nr * nc == 0 || nr < MIN_LEVEL_HEIGHT {
            break;
        }
        rects.push(Rect::new(0, 0, nc - 1, nr - 1));
    }

    let total_height = rects.iter().map(|r| r.height() + padding).sum::<i64>() - padding * 2;
    let (w0, h0) = (rects[0].width(), rects[0].height());
    let mut height = 0i64;
    let mut prev_width = 0i64;
    for r in &rects {
        if r.width() <= w0 - prev_width - padding && (height - h0) * 2 >= total_height - h0 {
            break;
        }
        height += r.height() + padding;
        prev_width = r.width();
    }
    height -= padding;

    let width = w0;
    let rows = height + outer * 2;
    let cols = width + outer * 2;

    let translate =
        |r: &Rect, x: i64, y: i64| Rect::new(r.left + x, r.top + y, r.right + x, r.bottom + y);
    let mut y = outer;
    let mut i = 0usize;
    while y < height + outer && i < rects.len() {
        rects[i] = translate(&rects[i], outer, y);
        y += rects[i].height() + padding;
        i += 1;
    }
    y -= padding;
    while i < rects.len() {
        // Bottom-right corner at (outer + width - 1, y - 1), the level's size up and left.
        let (x1, y1) = (outer + width - 1, y - 1);
        let (x2, y2) = (x1 - rects[i].right, y1 - rects[i].bottom);
        let rect = Rect::new(x1.min(x2), y1.min(y2), x1.max(x2), y1.max(y2));
        if !rects[0].intersect(&rect).is_empty() {
            break;
        }
        rects[i] = rect;
        y -= rects[i].height() + padding;
        i += 1;
    }
    rects.truncate(i);
    Layout {
        rects,
        rows: rows.max(0) as usize,
        cols: cols.max(0) as usize,
    }
}

/// One level's taps from the previous level.
#[derive(Debug)]
struct Step {
    rows: Vec<Tap>,
    cols: Columns,
}

/// The pyramid's levels: level 0 from the 8-bit image, the others stored or recomputed.
///
/// Values are written one channel at a time: row `r` of a level's channel goes to
/// `dst[(r - r0) * stride..][..width]`.
#[derive(Debug)]
pub(crate) struct Levels<'a> {
    /// Level 0, interleaved RGB.
    src: &'a [u8],
    /// `(width, height)` of each level.
    dims: Vec<(usize, usize)>,
    /// The means subtracted before the division by 256.
    avg: [f32; 3],
    /// `steps[k]` builds level `k` from level `k - 1` (`steps[0]` is unused).
    steps: Vec<Option<Step>>,
    /// Stored levels, planar `[3][height][width]`.
    stored: Vec<Option<Vec<f32>>>,
}

impl<'a> Levels<'a> {
    /// The levels of `layout` over the interleaved RGB image `src` (as large as `layout`'s
    /// first tile), with the kept levels computed now (in parallel).
    pub(crate) fn new(src: &'a [u8], avg: [f32; 3], layout: &Layout) -> Self {
        let dims: Vec<(usize, usize)> = layout
            .rects
            .iter()
            .map(|r| (r.width() as usize, r.height() as usize))
            .collect();
        let steps = (0..dims.len())
            .map(|k| {
                (k > 0).then(|| Step {
                    rows: row_taps(dims[k - 1].1, dims[k].1),
                    cols: Columns::new(dims[k - 1].0, dims[k].0),
                })
            })
            .collect();
        let mut levels = Self {
            src,
            dims,
            avg,
            steps,
            stored: Vec::new(),
        };
        let bytes: usize = levels.dims.iter().skip(1).map(|(w, h)| w * h * 12).sum();
        let every = if bytes <= STORE_ALL_BYTES {
            1
        } else {
            STORE_EVERY
        };
        levels.stored = (0..levels.dims.len()).map(|_| None).collect();
        for k in 1..levels.dims.len() {
            if k % every != 0 {
                continue;
            }
            let (w, h) = levels.dims[k];
            let mut data = vec![0f32; w * h * 3];
            data.par_chunks_mut((w * h).max(1))
                .enumerate()
                .for_each(|(c, plane)| {
                    plane
                        .par_chunks_mut(BUILD_ROWS * w.max(1))
                        .enumerate()
                        .for_each(|(i, part)| {
                            let r0 = i * BUILD_ROWS;
                            let r1 = (r0 + BUILD_ROWS).min(h);
                            levels.write_rows(k, c, r0, r1, part, w);
                        });
                });
            levels.stored[k] = Some(data);
        }
        levels
    }

    /// Writes rows `r0..r1` of channel `c` of level `k` (see the type's layout note).
    fn write_rows(&self, k: usize, c: usize, r0: usize, r1: usize, dst: &mut [f32], stride: usize) {
        if r0 >= r1 {
            return;
        }
        let (w, h) = self.dims[k];
        if k == 0 {
            let avg = self.avg[c];
            for r in r0..r1 {
                let row = &self.src[r * w * 3..(r + 1) * w * 3];
                let out = &mut dst[(r - r0) * stride..][..w];
                for (d, px) in out.iter_mut().zip(row.chunks_exact(3)) {
                    *d = (f32::from(px[c]) - avg) / 256.0;
                }
            }
            return;
        }
        if let Some(data) = &self.stored[k] {
            for r in r0..r1 {
                let at = (c * h + r) * w;
                dst[(r - r0) * stride..][..w].copy_from_slice(&data[at..at + w]);
            }
            return;
        }
        let Some(step) = &self.steps[k] else { return };
        let taps = &step.rows[r0..r1];
        let s0 = taps.iter().map(|t| t.lo).min().unwrap_or(0);
        let s1 = taps.iter().map(|t| t.hi).max().unwrap_or(0) + 1;
        let (sw, sh) = self.dims[k - 1];
        // The source rows: a stored plane, or computed into a scratch buffer.
        let scratch;
        let (data, base) = match &self.stored[k - 1] {
            Some(data) => (&data[c * sh * sw..(c + 1) * sh * sw], 0),
            None => {
                let mut buf = vec![0f32; (s1 - s0) * sw];
                self.write_rows(k - 1, c, s0, s1, &mut buf, sw);
                scratch = buf;
                (scratch.as_slice(), s0)
            }
        };
        let src_row = |r: usize| &data[(r - base) * sw..(r - base + 1) * sw];
        for (i, t) in taps.iter().enumerate() {
            let out = &mut dst[i * stride..][..w];
            step.cols
                .row_f32(src_row(t.lo), src_row(t.hi), t.frac64, out);
        }
    }

    /// Fills rows `y0..y1` of the tiled image into `dst`, planar `[3][y1 - y0][layout.cols]`,
    /// which must be zero where no tile lies; in parallel over channels and blocks of rows.
    pub(crate) fn fill(&self, layout: &Layout, y0: usize, y1: usize, dst: &mut [f32]) {
        let cols = layout.cols.max(1);
        let plane = y1.saturating_sub(y0) * cols;
        if plane == 0 {
            return;
        }
        dst.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(c, plane)| {
                plane
                    .par_chunks_mut(FILL_ROWS * cols)
                    .enumerate()
                    .for_each(|(i, block)| {
                        let ya = (y0 + i * FILL_ROWS) as i64;
                        let yb = ya + (block.len() / cols) as i64;
                        for (k, rect) in layout.rects.iter().enumerate() {
                            let a = ya.max(rect.top);
                            let b = yb.min(rect.bottom + 1);
                            if a >= b {
                                continue;
                            }
                            let at = (a - ya) as usize * cols + rect.left as usize;
                            let (r0, r1) = ((a - rect.top) as usize, (b - rect.top) as usize);
                            self.write_rows(k, c, r0, r1, &mut block[at..], cols);
                        }
                    });
            });
    }

    /// Bytes held by the stored levels.
    #[allow(dead_code)]
    pub(crate) fn stored_bytes(&self) -> usize {
        self.stored.iter().flatten().map(|v| v.len() * 4).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampled_size_is_rect_up_of_pyramid_down_2() {
        assert_eq!(upsampled_size(910, 1137), Some((1822, 2275)));
        assert_eq!(upsampled_size(1, 1), Some((4, 3)));
    }

    #[test]
    fn layout_matches_the_formats_note() {
        // DLIB-FORMATS.md 5.1: 480x640 -> 1782x662 and 960x1280 -> 3505x1302.
        let l = tiled_layout(480, 640, PYRAMID_PADDING, OUTER_PADDING);
        assert_eq!((l.rows, l.cols), (1782, 662));
        let l = tiled_layout(960, 1280, PYRAMID_PADDING, OUTER_PADDING);
        assert_eq!((l.rows, l.cols), (3505, 1302));
        assert_eq!(l.rects[0], Rect::new(11, 11, 1290, 970));
        // Every tile inside the canvas, no two overlapping.
        for (i, a) in l.rects.iter().enumerate() {
            assert!(a.left >= 0 && a.top >= 0);
            assert!(a.right < l.cols as i64 && a.bottom < l.rows as i64);
            for b in &l.rects[i + 1..] {
                assert!(a.intersect(b).is_empty(), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn tiny_images_have_one_level() {
        let l = tiled_layout(3, 4, PYRAMID_PADDING, OUTER_PADDING);
        assert_eq!(l.rects, vec![Rect::new(11, 11, 14, 13)]);
        assert_eq!((l.rows, l.cols), (25, 26));
    }

    #[test]
    fn taps_stay_inside_the_source() {
        for (n_in, n_out) in [
            (1, 1),
            (1, 9),
            (9, 1),
            (2, 3),
            (640, 533),
            (1920, 3842),
            (7, 5),
        ] {
            let c = Columns::new(n_in, n_out);
            assert_eq!(c.taps.len(), n_out);
            assert!(c.taps.iter().all(|t| t.lo < n_in && t.hi < n_in));
            let r = row_taps(n_in, n_out);
            assert!(r.iter().all(|t| t.lo < n_in && t.hi < n_in));
        }
    }

    #[test]
    fn resizing_a_constant_keeps_it() {
        let cols = Columns::new(640, 533);
        let src = vec![0.25f32; 640];
        let mut out = vec![0f32; 533];
        cols.row_f32(&src, &src, 0.3, &mut out);
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        let (up, w, h) = pyramid_up(&[200u8; 5 * 4 * 3], 5, 4);
        assert_eq!((w, h), (12, 9));
        assert!(up.iter().all(|&v| v == 200 || v == 199));
    }
}
