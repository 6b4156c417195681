//! Aligned face chips as dlib cuts them: `get_face_chip_details(shape, size, padding)` and
//! `extract_image_chip` (`dlib/image_transforms/interpolation.h`), which face_recognition uses
//! to feed the encoder 150x150 chips.
//!
//! What it owns:
//! - [`find_similarity_transform`]: Umeyama's least-squares similarity (rotation, uniform scale,
//!   translation; never a reflection) in double precision, shared with the shape predictor.
//! - [`chip_details`]: the 5-point template fitted to a face's landmarks, giving the chip's
//!   rectangle in the image ([`DRect`], dlib's `drectangle`), its angle and its size.
//! - [`extract_chip`]: the chip's pixels, sampled bilinearly (a sample whose 2x2 neighbourhood is
//!   not wholly inside the source is black; values are truncated to `u8`, as dlib does), from
//!   the image or, for faces much larger than the chip, from dlib's `pyramid_down<2>` levels of
//!   the crop around the face.
//! - [`face_chip`]: both in one call.
//!
//! Memory is bounded by the image: the source is first cropped to the face's neighbourhood
//! intersected with the image, as dlib does, so a face far outside the image gives a black chip,
//! and a chip side is at most [`MAX_CHIP_SIZE`].

use crate::error::{FaceError, Result};
use crate::{Point, RgbImage};

/// The largest chip side [`chip_details`] and [`extract_chip`] accept, in pixels.
pub const MAX_CHIP_SIZE: usize = 4096;

/// dlib's 5-point face template (`get_face_chip_details`) as fractions of the unpadded chip,
/// in the 5-point predictor's part order: outer and inner corner of the eye on the image's
/// right, outer and inner corner of the eye on the image's left, the base of the nose.
pub const FACE_TEMPLATE_5: [[f64; 2]; 5] = [
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
];

/// An affine map `p -> m p + b` of the plane (dlib's `point_transform_affine`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineTransform {
    /// The linear part, row-major: `x' = m[0][0] x + m[0][1] y + b[0]`.
    pub m: [[f64; 2]; 2],
    /// The translation.
    pub b: [f64; 2],
}

impl AffineTransform {
    /// The identity map.
    pub fn identity() -> Self {
        Self {
            m: [[1.0, 0.0], [0.0, 1.0]],
            b: [0.0, 0.0],
        }
    }

    /// The image of `p`, evaluated as dlib does (`m*p`, then `+ b`).
    #[inline]
    pub fn apply(&self, p: [f64; 2]) -> [f64; 2] {
        [
            self.m[0][0] * p[0] + self.m[0][1] * p[1] + self.b[0],
            self.m[1][0] * p[0] + self.m[1][1] * p[1] + self.b[1],
        ]
    }
}

/// The similarity transform (rotation, uniform scale, translation) that best maps `from` onto
/// `to` in the least-squares sense: Umeyama (1991), eqs. 34-43, as dlib's
/// `find_similarity_transform` computes it in double precision.
///
/// Points are paired up to the shorter slice; with no pair the identity is returned, and with
/// all `from` points equal the scale is 1 and the rotation the identity (dlib's `c = 1`).
///
/// dlib takes the SVD `cov = U D V^T` of the 2x2 cross-covariance and flips the sign of the
/// smaller singular direction when `det(cov) < 0` (or `det(cov) == 0` with `det(U)det(V) < 0`),
/// so the result is never a reflection. In 2-D that rule always yields the proper rotation
/// maximising `trace(R^T cov)`, whose closed form is used here: with
/// `cov = [[p, q], [r, s]]` and `sigma` the mean squared distance of `from` to its mean,
/// `c R = [[p + s, q - r], [r - q, p + s]] / sigma`. It is the same transform up to rounding in
/// the last bits.
pub fn find_similarity_transform(from: &[[f64; 2]], to: &[[f64; 2]]) -> AffineTransform {
    let n = from.len().min(to.len());
    if n == 0 {
        return AffineTransform::identity();
    }
    let (from, to) = (&from[..n], &to[..n]);
    let nf = n as f64;
    let (mut mf, mut mt) = ([0.0f64; 2], [0.0f64; 2]);
    for (f, t) in from.iter().zip(to) {
        mf[0] += f[0];
        mf[1] += f[1];
        mt[0] += t[0];
        mt[1] += t[1];
    }
    mf = [mf[0] / nf, mf[1] / nf];
    mt = [mt[0] / nf, mt[1] / nf];
    let mut sigma = 0.0f64;
    let mut cov = [[0.0f64; 2]; 2];
    for (f, t) in from.iter().zip(to) {
        let (fx, fy) = (f[0] - mf[0], f[1] - mf[1]);
        let (tx, ty) = (t[0] - mt[0], t[1] - mt[1]);
        sigma += fx * fx + fy * fy;
        cov[0][0] += tx * fx;
        cov[0][1] += tx * fy;
        cov[1][0] += ty * fx;
        cov[1][1] += ty * fy;
    }
    sigma /= nf;
    for row in &mut cov {
        for v in row {
            *v /= nf;
        }
    }
    let m = if sigma != 0.0 {
        let a = (cov[0][0] + cov[1][1]) / sigma;
        let b = (cov[1][0] - cov[0][1]) / sigma;
        [[a, -b], [b, a]]
    } else {
        [[1.0, 0.0], [0.0, 1.0]]
    };
    let b = [
        mt[0] - (m[0][0] * mf[0] + m[0][1] * mf[1]),
        mt[1] - (m[1][0] * mf[0] + m[1][1] * mf[1]),
    ];
    AffineTransform { m, b }
}

/// A rectangle with real corners, as dlib's `drectangle`: its width is `right - left + 1`, and
/// it is empty when `left > right` or `top > bottom`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DRect {
    /// Left edge.
    pub left: f64,
    /// Top edge.
    pub top: f64,
    /// Right edge (inclusive, as dlib counts it).
    pub right: f64,
    /// Bottom edge (inclusive).
    pub bottom: f64,
}

impl DRect {
    /// The rectangle with these corners.
    pub fn new(left: f64, top: f64, right: f64, bottom: f64) -> Self {
        Self {
            left,
            top,
            right,
            bottom,
        }
    }

    /// Whether it covers nothing (`left > right` or `top > bottom`).
    pub fn is_empty(&self) -> bool {
        self.top > self.bottom || self.left > self.right
    }

    /// `right - left + 1`, or 0 when empty.
    pub fn width(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            self.right - self.left + 1.0
        }
    }

    /// `bottom - top + 1`, or 0 when empty.
    pub fn height(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            self.bottom - self.top + 1.0
        }
    }

    /// `width() * height()`.
    pub fn area(&self) -> f64 {
        self.width() * self.height()
    }

    /// The centre, `((left + right) / 2, (top + bottom) / 2)`.
    pub fn center(&self) -> [f64; 2] {
        [
            (self.left + self.right) / 2.0,
            (self.top + self.bottom) / 2.0,
        ]
    }

    /// dlib's `centered_drect(p, w, h)`: centred on `p`, with `right - left = w - 1`.
    pub fn centered(p: [f64; 2], width: f64, height: f64) -> Self {
        let (w, h) = (width - 1.0, height - 1.0);
        Self::new(
            p[0] - w / 2.0,
            p[1] - h / 2.0,
            p[0] + w / 2.0,
            p[1] + h / 2.0,
        )
    }

    fn translate(&self, dx: f64, dy: f64) -> Self {
        Self::new(
            self.left + dx,
            self.top + dy,
            self.right + dx,
            self.bottom + dy,
        )
    }

    fn corners_finite(&self) -> bool {
        [self.left, self.top, self.right, self.bottom]
            .iter()
            .all(|v| v.is_finite())
    }
}

/// Where a chip lies in an image: dlib's `chip_details`. The chip is the rectangle `rect`
/// rotated by `angle` (radians, about its centre), resampled to `rows x cols` pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChipDetails {
    /// The chip's rectangle in image coordinates, before rotation.
    pub rect: DRect,
    /// The rotation about the rectangle's centre, in radians.
    pub angle: f64,
    /// Chip height in pixels.
    pub rows: usize,
    /// Chip width in pixels.
    pub cols: usize,
}

fn check_size(rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 || rows > MAX_CHIP_SIZE || cols > MAX_CHIP_SIZE {
        return Err(FaceError::Input(format!(
            "a {cols}x{rows} chip: each side must be 1..={MAX_CHIP_SIZE} pixels"
        )));
    }
    Ok(())
}

/// dlib's `get_face_chip_details(shape, size, padding)` for a 5-point shape: the template
/// points, padded by `padding` (a fraction of the face on each side) and scaled to
/// `size x size`, are fitted to `points` with [`find_similarity_transform`]; the chip is the
/// transform's image of the `size x size` square (angle, scale, and a centred rectangle).
///
/// face_recognition uses `size = 150`, `padding = 0.25`. Fails unless `points` has 5 points,
/// `size` is 1..=[`MAX_CHIP_SIZE`] and `padding` is finite and not negative, or when the points
/// give no usable transform (all equal, or so far apart that the numbers overflow).
pub fn chip_details(points: &[Point], size: usize, padding: f64) -> Result<ChipDetails> {
    check_size(size, size)?;
    if points.len() != FACE_TEMPLATE_5.len() {
        return Err(FaceError::Input(format!(
            "a face chip needs the {} points of the 5-point shape predictor, got {}",
            FACE_TEMPLATE_5.len(),
            points.len()
        )));
    }
    if !(padding.is_finite() && padding >= 0.0) {
        return Err(FaceError::Input(format!(
            "chip padding is {padding}, expected a finite number >= 0"
        )));
    }
    let s = size as f64;
    let from: Vec<[f64; 2]> = FACE_TEMPLATE_5
        .iter()
        .map(|p| {
            let d = 2.0 * padding + 1.0;
            [(padding + p[0]) / d * s, (padding + p[1]) / d * s]
        })
        .collect();
    let to: Vec<[f64; 2]> = points.iter().map(|p| [p.x as f64, p.y as f64]).collect();
    let tform = find_similarity_transform(&from, &to);
    // The image of the unit x vector holds the rotation and the scale.
    let (ux, uy) = (tform.m[0][0], tform.m[1][0]);
    let angle = uy.atan2(ux);
    let scale = (ux * ux + uy * uy).sqrt();
    let center = tform.apply([s / 2.0, s / 2.0]);
    let rect = DRect::centered(center, s * scale, s * scale);
    if !(angle.is_finite() && scale > 0.0 && rect.corners_finite()) || rect.is_empty() {
        return Err(FaceError::Input(format!(
            "the points {points:?} give no usable chip (scale {scale}, angle {angle})"
        )));
    }
    Ok(ChipDetails {
        rect,
        angle,
        rows: size,
        cols: size,
    })
}

/// An RGB raster that may be empty (pyramid levels of small crops are).
#[derive(Clone, Debug, Default)]
struct Plane {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

/// A rectangular window of an RGB buffer.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [u8],
    /// Pixels per row of `data`.
    stride: usize,
    x0: usize,
    y0: usize,
    width: usize,
    height: usize,
}

impl<'a> View<'a> {
    fn of_plane(p: &'a Plane) -> Self {
        Self {
            data: &p.data,
            stride: p.width,
            x0: 0,
            y0: 0,
            width: p.width,
            height: p.height,
        }
    }

    /// The 3 bytes of pixel `(x, y)` of the window (both in range).
    #[inline]
    fn px(&self, x: usize, y: usize) -> &'a [u8] {
        let i = ((self.y0 + y) * self.stride + self.x0 + x) * 3;
        &self.data[i..i + 3]
    }
}

/// dlib's `pyramid_down<2>` (`pyramid_down_2_1`, RGB to RGB): a separable 5-tap
/// `[1 4 6 4 1]` filter in 16-bit integers, rows then columns, keeping every other row and
/// column, divided by 256 (truncating). The output is `(w-3)/2 x (h-3)/2`; sources with a side
/// of 8 or less give an empty plane. Output pixel `(c, r)` is centred on source `(2c+2, 2r+2)`.
fn pyramid_down2(src: View<'_>) -> Plane {
    if src.width <= 8 || src.height <= 8 {
        return Plane::default();
    }
    let tw = (src.width - 3) / 2;
    let oh = (src.height - 3) / 2;
    // Row filter over every source row.
    let mut temp = vec![0u16; src.height * tw * 3];
    for (r, row) in temp.chunks_exact_mut(tw * 3).enumerate() {
        let start = ((src.y0 + r) * src.stride + src.x0) * 3;
        let line = &src.data[start..start + src.width * 3];
        for (c, out) in row.chunks_exact_mut(3).enumerate() {
            let p = &line[c * 6..c * 6 + 15];
            for ch in 0..3 {
                let v = |k: usize| p[k * 3 + ch] as u16;
                out[ch] = v(0) + 4 * v(1) + 6 * v(2) + 4 * v(3) + v(4);
            }
        }
    }
    // Column filter at rows 2, 4, ... (while r < height - 2).
    let mut data = vec![0u8; oh * tw * 3];
    for dr in 0..oh {
        let r = 2 + 2 * dr;
        let t = |k: usize, i: usize| temp[(r + k - 2) * tw * 3 + i] as u32;
        for i in 0..tw * 3 {
            let v = t(0, i) + 4 * t(1, i) + 6 * t(2, i) + 4 * t(3, i) + t(4, i);
            data[dr * tw * 3 + i] = (v / 256) as u8;
        }
    }
    Plane {
        width: tw,
        height: oh,
        data,
    }
}

/// dlib's `pyramid_down<2>::rect_down`: each corner `p` goes to `p/2 - (1.25, 0.75)`.
fn rect_down(r: &DRect) -> DRect {
    let down = |x: f64, y: f64| [x / 2.0 - 1.25, y / 2.0 - 0.75];
    let a = down(r.left, r.top);
    let b = down(r.right, r.bottom);
    // drectangle(p1, p2) is the union of the two points.
    DRect::new(
        a[0].min(b[0]),
        a[1].min(b[1]),
        a[0].max(b[0]),
        a[1].max(b[1]),
    )
}

/// dlib's `rotate_point(center, p, angle)`.
fn rotate_point(center: [f64; 2], p: [f64; 2], sin: f64, cos: f64) -> [f64; 2] {
    let (x, y) = (p[0] - center[0], p[1] - center[1]);
    [cos * x - sin * y + center[0], sin * x + cos * y + center[1]]
}

/// dlib's `interpolate_bilinear` on an RGB window: black (`None`) unless the 2x2
/// neighbourhood of `(x, y)` lies wholly inside; the weighted sum is in double precision and
/// each channel is truncated to `u8`.
#[inline]
fn bilinear(src: &View<'_>, x: f64, y: f64) -> Option<[u8; 3]> {
    let (fl, ft) = (x.floor(), y.floor());
    // Also rejects NaN and values beyond any window (the casts below are then exact).
    if !(fl >= 0.0 && ft >= 0.0 && fl + 1.0 < src.width as f64 && ft + 1.0 < src.height as f64) {
        return None;
    }
    let (left, top) = (fl as usize, ft as usize);
    let (lr, tb) = (x - fl, y - ft);
    let (tl, tr) = (src.px(left, top), src.px(left + 1, top));
    let (bl, br) = (src.px(left, top + 1), src.px(left + 1, top + 1));
    let mut out = [0u8; 3];
    for c in 0..3 {
        let v = (1.0 - tb) * ((1.0 - lr) * tl[c] as f64 + lr * tr[c] as f64)
            + tb * ((1.0 - lr) * bl[c] as f64 + lr * br[c] as f64);
        out[c] = v as u8;
    }
    Some(out)
}

/// The chip's pixels, as dlib's `extract_image_chip(img, details, chip)` with bilinear
/// interpolation: a `details.cols x details.rows` image.
///
/// As dlib: the image is cropped to the rotated chip rectangle grown by a margin, intersected
/// with the image; when the chip is much smaller than its rectangle (`rect_down(rect)` larger
/// than the chip), it is sampled from the `pyramid_down<2>` level of that crop whose
/// `rect_down` is no longer larger; each chip pixel `(c, r)` is the bilinear sample at the
/// affine map of the chip's corners onto the rotated rectangle. Pixels whose neighbourhood is
/// outside the crop are black, so a face outside the image gives a black chip.
///
/// Fails when a side is 0 or over [`MAX_CHIP_SIZE`], or when the rectangle is empty or the
/// rectangle or angle is not finite.
pub fn extract_chip(img: &RgbImage, details: &ChipDetails) -> Result<RgbImage> {
    let (rows, cols) = (details.rows, details.cols);
    check_size(rows, cols)?;
    let rect = details.rect;
    if !(rect.corners_finite() && details.angle.is_finite()) || rect.is_empty() {
        return Err(FaceError::Input(format!(
            "chip rectangle {rect:?} at angle {} is empty or not finite",
            details.angle
        )));
    }
    let mut chip = RgbImage::zeroed(cols, rows)?;
    let full = View {
        data: img.as_raw(),
        stride: img.width(),
        x0: 0,
        y0: 0,
        width: img.width(),
        height: img.height(),
    };

    // dlib's fast path: no rotation and no scaling is a plain copy of the rounded rectangle.
    if details.angle == 0.0 && rows as f64 == rect.height() && cols as f64 == rect.width() {
        copy_rect(&full, rect, &mut chip);
        return Ok(chip);
    }

    let chip_area = (rows * cols) as f64;
    // Pyramid depth and the crop margin it needs.
    let mut grow = 2.0f64;
    let mut down = rect_down(&rect);
    while down.area() > chip_area {
        down = rect_down(&down);
        grow = grow * 2.0 + 2.0;
    }
    let (sin, cos) = (details.angle.sin(), details.angle.cos());
    let center = rect.center();
    let corners = [
        [rect.left, rect.top],
        [rect.right, rect.top],
        [rect.left, rect.bottom],
        [rect.right, rect.bottom],
    ]
    .map(|p| rotate_point(center, p, sin, cos));
    let min_x = corners.iter().map(|p| p[0]).fold(f64::INFINITY, f64::min);
    let max_x = corners
        .iter()
        .map(|p| p[0])
        .fold(f64::NEG_INFINITY, f64::max);
    let min_y = corners.iter().map(|p| p[1]).fold(f64::INFINITY, f64::min);
    let max_y = corners
        .iter()
        .map(|p| p[1])
        .fold(f64::NEG_INFINITY, f64::max);
    // grow_rect(rot_rect, grow) intersected with the image, then rounded to a `rectangle`
    // (lround of each edge); emptiness is judged after rounding, as dlib's `rectangle +=`.
    let bl = (min_x - grow).max(0.0).round();
    let bt = (min_y - grow).max(0.0).round();
    let br = (max_x + grow).min(img.width() as f64 - 1.0).round();
    let bb = (max_y + grow).min(img.height() as f64 - 1.0).round();
    if !(bl <= br && bt <= bb) {
        // Nothing of the image near the chip (this also catches NaN): all black.
        return Ok(chip);
    }
    let (bx0, by0) = (bl as usize, bt as usize);
    let crop = View {
        x0: bx0,
        y0: by0,
        width: (br - bl) as usize + 1,
        height: (bb - bt) as usize + 1,
        ..full
    };

    // Which level to sample: -1 (the crop itself), 0 (its first pyramid level), ...
    let mut rect = rect.translate(-bl, -bt);
    let mut level = 0usize;
    while rect_down(&rect).area() > chip_area {
        level += 1;
        rect = rect_down(&rect);
    }
    let mut planes: Vec<Plane> = Vec::new();
    for _ in 0..level {
        let next = match planes.last() {
            None => pyramid_down2(crop),
            Some(p) => pyramid_down2(View::of_plane(p)),
        };
        let empty = next.data.is_empty();
        planes.push(next);
        if empty {
            break;
        }
    }
    let src = match planes.last() {
        None => crop,
        Some(p) => View::of_plane(p),
    };
    if planes.len() < level || src.width == 0 || src.height == 0 {
        return Ok(chip);
    }

    // The affine map sending chip (0,0), (cols-1,0), (0,rows-1) onto the rotated rectangle's
    // top-left, top-right and bottom-left corners.
    let center = rect.center();
    let tl = rotate_point(center, [rect.left, rect.top], sin, cos);
    let tr = rotate_point(center, [rect.right, rect.top], sin, cos);
    let bl_ = rotate_point(center, [rect.left, rect.bottom], sin, cos);
    let tform = corner_map(tl, tr, bl_, cols, rows);

    let out = chip.as_raw_mut();
    for r in 0..rows {
        for c in 0..cols {
            let [x, y] = tform.apply([c as f64, r as f64]);
            if let Some(px) = bilinear(&src, x, y) {
                let i = (r * cols + c) * 3;
                out[i..i + 3].copy_from_slice(&px);
            }
        }
    }
    Ok(chip)
}

/// The affine map with `(0,0) -> tl`, `(cols-1, 0) -> tr`, `(0, rows-1) -> bl` (dlib's
/// `find_affine_transform` on the three corners, which is exact for three points). A chip one
/// pixel wide or high has no second column or row; there the least-squares answer dlib's
/// pseudo-inverse gives is used: the coincident corners' mean.
fn corner_map(
    tl: [f64; 2],
    tr: [f64; 2],
    bl: [f64; 2],
    cols: usize,
    rows: usize,
) -> AffineTransform {
    let mean = |a: [f64; 2], b: [f64; 2]| [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0];
    match (cols > 1, rows > 1) {
        (true, true) => {
            let (w, h) = ((cols - 1) as f64, (rows - 1) as f64);
            AffineTransform {
                m: [
                    [(tr[0] - tl[0]) / w, (bl[0] - tl[0]) / h],
                    [(tr[1] - tl[1]) / w, (bl[1] - tl[1]) / h],
                ],
                b: tl,
            }
        }
        (true, false) => {
            // (0,0) -> tl and bl, (w,0) -> tr.
            let o = mean(tl, bl);
            let w = (cols - 1) as f64;
            AffineTransform {
                m: [[(tr[0] - o[0]) / w, 0.0], [(tr[1] - o[1]) / w, 0.0]],
                b: o,
            }
        }
        (false, true) => {
            let o = mean(tl, tr);
            let h = (rows - 1) as f64;
            AffineTransform {
                m: [[0.0, (bl[0] - o[0]) / h], [0.0, (bl[1] - o[1]) / h]],
                b: o,
            }
        }
        (false, false) => AffineTransform {
            m: [[0.0; 2]; 2],
            b: [(tl[0] + tr[0] + bl[0]) / 3.0, (tl[1] + tr[1] + bl[1]) / 3.0],
        },
    }
}

/// dlib's `basic_extract_image_chip`: the pixels of `rect` (edges rounded with `lround`), black
/// where it leaves the image. `chip` has the rectangle's size.
fn copy_rect(img: &View<'_>, rect: DRect, chip: &mut RgbImage) {
    let (l, t) = (rect.left.round(), rect.top.round());
    let cols = chip.width();
    let out = chip.as_raw_mut();
    for (r, row) in out.chunks_exact_mut(cols * 3).enumerate() {
        let y = t + r as f64;
        if !(y >= 0.0 && y < img.height as f64) {
            continue;
        }
        for c in 0..cols {
            let x = l + c as f64;
            if x >= 0.0 && x < img.width as f64 {
                row[c * 3..c * 3 + 3].copy_from_slice(img.px(x as usize, y as usize));
            }
        }
    }
}

/// [`chip_details`] then [`extract_chip`]: dlib's `get_face_chip(img, shape, size, padding)`.
pub fn face_chip(img: &RgbImage, points: &[Point], size: usize, padding: f64) -> Result<RgbImage> {
    extract_chip(img, &chip_details(points, size, padding)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn assert_tform(t: &AffineTransform, m: [[f64; 2]; 2], b: [f64; 2]) {
        for i in 0..2 {
            for j in 0..2 {
                assert!(close(t.m[i][j], m[i][j]), "{t:?} vs m {m:?}");
            }
            assert!(close(t.b[i], b[i]), "{t:?} vs b {b:?}");
        }
    }

    #[test]
    fn similarity_recovers_rotation_scale_and_translation() {
        // 90 degrees, scale 2, translation (10, -5): (x, y) -> (-2y + 10, 2x - 5).
        let from = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 2.0]];
        let to: Vec<[f64; 2]> = from
            .iter()
            .map(|p| [-2.0 * p[1] + 10.0, 2.0 * p[0] - 5.0])
            .collect();
        let t = find_similarity_transform(&from, &to);
        assert_tform(&t, [[0.0, -2.0], [2.0, 0.0]], [10.0, -5.0]);
        // A general angle: 30 degrees, scale 0.75, translation (3, 4).
        let (s, c) = (
            30f64.to_radians().sin() * 0.75,
            30f64.to_radians().cos() * 0.75,
        );
        let to: Vec<[f64; 2]> = from
            .iter()
            .map(|p| [c * p[0] - s * p[1] + 3.0, s * p[0] + c * p[1] + 4.0])
            .collect();
        let t = find_similarity_transform(&from, &to);
        assert_tform(&t, [[c, -s], [s, c]], [3.0, 4.0]);
    }

    #[test]
    fn similarity_of_a_reflection_is_the_best_rotation() {
        // Mirror in the x axis. Worked by hand: means (1/3, 1/3) and (1/3, -1/3), sigma 4/9,
        // cov = [[2/9, -1/9], [1/9, -2/9]], det < 0, so dlib flips the smaller singular
        // direction: c R = [[0, -1/2], [1/2, 0]] (a quarter turn at half scale), t = (1/2, -1/2).
        let from = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]];
        let to = [[0.0, 0.0], [1.0, 0.0], [0.0, -1.0]];
        let t = find_similarity_transform(&from, &to);
        assert_tform(&t, [[0.0, -0.5], [0.5, 0.0]], [0.5, -0.5]);
        let det = t.m[0][0] * t.m[1][1] - t.m[0][1] * t.m[1][0];
        assert!(det > 0.0);
    }

    #[test]
    fn similarity_degenerate_inputs() {
        assert_eq!(
            find_similarity_transform(&[], &[]),
            AffineTransform::identity()
        );
        // All `from` equal: scale 1, no rotation, a translation onto the mean of `to`.
        let t = find_similarity_transform(&[[1.0, 1.0], [1.0, 1.0]], &[[2.0, 0.0], [4.0, 0.0]]);
        assert_tform(&t, [[1.0, 0.0], [0.0, 1.0]], [2.0, -1.0]);
        // All `to` equal: scale 0.
        let t = find_similarity_transform(&[[0.0, 0.0], [2.0, 0.0]], &[[5.0, 5.0], [5.0, 5.0]]);
        assert_tform(&t, [[0.0, 0.0], [0.0, 0.0]], [5.0, 5.0]);
    }

    fn plane(width: usize, height: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Plane {
        let mut data = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                data.extend(f(x, y));
            }
        }
        Plane {
            width,
            height,
            data,
        }
    }

    #[test]
    fn bilinear_truncates_and_needs_the_whole_neighbourhood() {
        let p = plane(2, 2, |x, y| match (x, y) {
            (0, 0) => [0, 10, 255],
            (1, 0) => [255, 11, 0],
            (0, 1) => [0, 10, 255],
            _ => [255, 11, 0],
        });
        let v = View::of_plane(&p);
        // Half way: 127.5 -> 127 (truncated, not rounded), 10.5 -> 10.
        assert_eq!(bilinear(&v, 0.5, 0.0), Some([127, 10, 127]));
        assert_eq!(bilinear(&v, 0.25, 0.5), Some([63, 10, 191]));
        assert_eq!(bilinear(&v, 0.0, 0.0), Some([0, 10, 255]));
        // The right and bottom neighbours must exist: x = 1 needs column 2.
        assert_eq!(bilinear(&v, 1.0, 0.0), None);
        assert_eq!(bilinear(&v, 0.0, 0.5 + 0.5), None);
        assert_eq!(bilinear(&v, -0.01, 0.0), None);
        assert_eq!(bilinear(&v, f64::NAN, 0.0), None);
        assert_eq!(bilinear(&v, 1e300, -1e300), None);
    }

    #[test]
    fn pyramid_down_sizes_and_filter() {
        let size = |w, h| {
            let p = plane(w, h, |_, _| [0; 3]);
            let d = pyramid_down2(View::of_plane(&p));
            (d.width, d.height)
        };
        assert_eq!(size(9, 9), (3, 3));
        assert_eq!(size(10, 20), (3, 8));
        assert_eq!(size(300, 301), (148, 149));
        assert_eq!(size(8, 100), (0, 0));
        assert_eq!(size(100, 8), (0, 0));
        // A flat image stays flat (the weights sum to 256).
        let p = plane(20, 20, |_, _| [7, 255, 0]);
        let d = pyramid_down2(View::of_plane(&p));
        assert!(d.data.chunks(3).all(|px| px == [7, 255, 0]));
        // An impulse of 255 at source (6, 4) lands on output (2, 1) (centred on source
        // (2c+2, 2r+2)) with weight 6*6/256: 35.86, truncated to 35; its output neighbours are
        // two source pixels away, weight 6*1/256: 5.98 -> 5.
        let p = plane(
            12,
            12,
            |x, y| if (x, y) == (6, 4) { [255; 3] } else { [0; 3] },
        );
        let d = pyramid_down2(View::of_plane(&p));
        let at = |x: usize, y: usize| d.data[(y * d.width + x) * 3];
        assert_eq!((d.width, d.height), (4, 4));
        assert_eq!(at(2, 1), 35);
        assert_eq!(at(1, 1), 5);
        assert_eq!(at(3, 1), 5);
        assert_eq!(at(2, 0), 5);
        assert_eq!(at(2, 2), 5);
        assert_eq!(at(1, 0), 0);
        assert_eq!(at(0, 0), 0);
        // The sums reach 65280 without wrapping.
        let p = plane(12, 12, |_, _| [255; 3]);
        assert!(pyramid_down2(View::of_plane(&p))
            .data
            .iter()
            .all(|&v| v == 255));
    }

    #[test]
    fn rect_down_and_centered_follow_dlib() {
        let r = DRect::centered([75.0, 75.0], 150.0, 150.0);
        assert_eq!(r, DRect::new(0.5, 0.5, 149.5, 149.5));
        assert_eq!(r.width(), 150.0);
        let d = rect_down(&DRect::new(0.0, 0.0, 299.0, 299.0));
        assert_eq!(d, DRect::new(-1.25, -0.75, 148.25, 148.75));
        assert_eq!(d.area(), 150.5 * 150.5);
    }

    #[test]
    fn bad_sizes_and_points_are_errors() {
        let pts = [Point::new(10, 10); 5];
        assert!(chip_details(&pts, 150, 0.25).is_err(), "coincident points");
        let pts = [
            Point::new(70, 20),
            Point::new(60, 21),
            Point::new(20, 20),
            Point::new(30, 21),
            Point::new(45, 50),
        ];
        assert!(chip_details(&pts, 150, 0.25).is_ok());
        assert!(chip_details(&pts, 0, 0.25).is_err());
        assert!(chip_details(&pts, MAX_CHIP_SIZE + 1, 0.25).is_err());
        assert!(chip_details(&pts, 150, -0.1).is_err());
        assert!(chip_details(&pts, 150, f64::NAN).is_err());
        assert!(chip_details(&pts[..4], 150, 0.25).is_err());
    }

    #[test]
    fn one_pixel_chips_and_the_copy_path() {
        let img = RgbImage::new(3, 3, (0..27).collect()).unwrap();
        // No rotation, rect size == chip size: a copy, black outside the image.
        let d = ChipDetails {
            rect: DRect::new(1.0, 1.0, 3.0, 3.0),
            angle: 0.0,
            rows: 3,
            cols: 3,
        };
        let chip = extract_chip(&img, &d).unwrap();
        assert_eq!(&chip.as_raw()[..6], &[12, 13, 14, 15, 16, 17]);
        assert_eq!(&chip.as_raw()[6..9], &[0, 0, 0]);
        let d = ChipDetails {
            rect: DRect::new(0.0, 0.0, 1.0, 1.0),
            angle: 0.1,
            rows: 1,
            cols: 1,
        };
        assert_eq!(extract_chip(&img, &d).unwrap().width(), 1);
    }
}
