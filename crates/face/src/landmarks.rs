//! dlib's shape predictor (`dlib/image_processing/shape_predictor.h`): a cascade of forests of
//! regression trees (Kazemi & Sullivan 2014) that places a face's landmarks inside a detector's
//! rectangle. face_recognition uses `shape_predictor_5_face_landmarks.dat` (5 points: the
//! corners of both eyes and the base of the nose).
//!
//! What it owns:
//! - [`ShapePredictor::from_dlib`]: the whole `.dat` file read into flat arrays, to its last
//!   byte, with every index checked (split features against the cascade's feature pixels,
//!   anchors against the parts, leaf sizes against the parts, one tree shape for every tree),
//!   so prediction never indexes out of bounds.
//! - [`ShapePredictor::predict`]: dlib's `operator()(img, rect)`, step for step in the same
//!   precision: the similarity from the mean shape to the current one (cast to `f32`), sample
//!   points rounded with `floor(v + 0.5)`, intensities `(R+G+B)/3` in integers (0 outside the
//!   image), `f32` tree comparisons and leaf sums, integer points out.
//! - [`ShapePredictor::to_tensors`] / [`ShapePredictor::from_tensors`]: the same arrays as
//!   named tensors with their [`LandmarkSettings`], for model files (`stored`).

mod stored;

pub use stored::{CascadeSize, LandmarkSettings, MAX_CASCADES, MAX_FEATURES, MAX_TREES};

use crate::chip::find_similarity_transform;
use crate::dlib::Reader;
use crate::error::Result;
use crate::{Point, Rect, RgbImage};

/// The most landmarks a predictor file may have (dlib ships 5 and 68).
pub const MAX_PARTS: usize = 4096;

/// The deepest regression tree accepted (dlib's default is 4; 2^20 leaves is far beyond any
/// trained model).
pub const MAX_TREE_DEPTH: u32 = 20;

/// One split node: go left when `feature[idx1] - feature[idx2] > thresh`.
#[derive(Clone, Copy, Debug)]
struct Split {
    idx1: u32,
    idx2: u32,
    thresh: f32,
}

/// One level of the cascade: its feature pixels and its forest.
#[derive(Clone, Debug)]
struct Cascade {
    /// For each feature pixel, the landmark it is anchored to.
    anchors: Vec<u32>,
    /// For each feature pixel, its offset from the anchor in the mean shape.
    deltas: Vec<[f32; 2]>,
    /// `trees * splits_per_tree` split nodes, each tree heap-ordered.
    splits: Vec<Split>,
    /// `trees * leaves_per_tree * 2 * parts` shape increments.
    leaves: Vec<f32>,
    /// Trees in this forest.
    trees: usize,
}

/// A trained ERT shape predictor, read from dlib's `.dat` file.
#[derive(Clone, Debug)]
pub struct ShapePredictor {
    /// The mean shape, `x0, y0, x1, y1, ...`, in the detector rectangle's unit square.
    initial: Vec<f32>,
    cascades: Vec<Cascade>,
    /// Split nodes per tree (`2^depth - 1`); every tree has `splits_per_tree + 1` leaves.
    splits_per_tree: usize,
}

/// Reads a `matrix<float,0,1>` of `len` values (`len` fixed, or `None` for any even length up
/// to `2 * MAX_PARTS`), appending the values to `out`; returns the length.
fn read_column(
    r: &mut Reader<'_>,
    len: Option<usize>,
    what: &str,
    out: &mut Vec<f32>,
) -> Result<usize> {
    let at = r.pos();
    let rows = r.int()?;
    let cols = r.int()?;
    let rows = usize::try_from(rows.unsigned_abs()).unwrap_or(usize::MAX);
    let ok = match len {
        Some(n) => rows == n && cols.unsigned_abs() == 1,
        None => cols.unsigned_abs() == 1 && rows >= 2 && rows % 2 == 0 && rows <= 2 * MAX_PARTS,
    };
    if !ok {
        let expected = match len {
            Some(n) => format!("{n}x1"),
            None => format!("an even number (2..={}) of rows by 1", 2 * MAX_PARTS),
        };
        return Err(r.error_at(
            at,
            format!("{what} is a {rows}x{cols} matrix, expected {expected}"),
        ));
    }
    // Each float takes at least 4 bytes; refuse before reserving anything.
    if rows.saturating_mul(4) > r.remaining() {
        return Err(r.error_at(at, format!("file ends inside {what}")));
    }
    out.reserve(rows);
    for _ in 0..rows {
        out.push(r.finite_f32(what)?);
    }
    Ok(rows)
}

/// Reserves a forest's arrays for its `trees`, but never more than the `remaining` bytes of the
/// file can fill (a split takes at least 8 bytes, a leaf value 4).
fn reserve_forest(c: &mut Cascade, splits: usize, leaf_len: usize, remaining: usize) {
    let s = c.trees.saturating_mul(splits).min(remaining / 8);
    let l = c
        .trees
        .saturating_mul(splits + 1)
        .saturating_mul(leaf_len)
        .min(remaining / 4);
    c.splits.reserve(s);
    c.leaves.reserve(l);
}

impl ShapePredictor {
    /// Reads a shape predictor from the bytes of dlib's `.dat` file (`serialize(shape_predictor)`:
    /// version 1, the mean shape, the forests, the anchor indices, the deltas). `name` (usually
    /// the file name) goes into every error, with the byte offset.
    ///
    /// Fails on a truncated or altered file, trailing bytes, another kind of file, or any index
    /// that would fall outside its array at prediction time.
    pub fn from_dlib(name: &str, bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(name, bytes);
        let at = r.pos();
        let version = r.int()?;
        if version != 1 {
            return Err(r.error_at(at, format!("shape predictor version {version}, expected 1")));
        }
        let mut initial = Vec::new();
        let len = read_column(&mut r, None, "the mean shape", &mut initial)?;
        let parts = len / 2;

        // The forests: one vector of trees per cascade.
        let num_cascades = r.len(2, "the cascades")?;
        let mut cascades = Vec::with_capacity(num_cascades);
        // Per cascade: the largest feature index a split uses, and the split's offset.
        let mut max_feature: Vec<(u32, usize)> = Vec::with_capacity(num_cascades);
        let mut splits_per_tree: Option<usize> = None;
        for _ in 0..num_cascades {
            let trees = r.len(4, "a forest")?;
            let mut c = Cascade {
                anchors: Vec::new(),
                deltas: Vec::new(),
                splits: Vec::new(),
                leaves: Vec::new(),
                trees,
            };
            let mut maxf = (0u32, 0usize);
            for _ in 0..trees {
                let at = r.pos();
                // A split takes at least 8 bytes: two integers and a float.
                let ns = r.len(8, "a tree's splits")?;
                match splits_per_tree {
                    None => {
                        let leaves = ns.checked_add(1).filter(|l| l.is_power_of_two());
                        if leaves.is_none_or(|l| l.trailing_zeros() > MAX_TREE_DEPTH) {
                            return Err(r.error_at(
                                at,
                                format!(
                                    "a tree with {ns} splits: expected 2^d - 1 with depth d <= {MAX_TREE_DEPTH}"
                                ),
                            ));
                        }
                        splits_per_tree = Some(ns);
                        reserve_forest(&mut c, ns, len, r.remaining());
                    }
                    Some(s) if s != ns => {
                        return Err(r.error_at(
                            at,
                            format!("a tree with {ns} splits where the first tree has {s}"),
                        ));
                    }
                    Some(_) => {
                        if c.splits.capacity() == 0 {
                            reserve_forest(&mut c, ns, len, r.remaining());
                        }
                    }
                }
                for _ in 0..ns {
                    let at = r.pos();
                    let idx1 = r.uint()?;
                    let idx2 = r.uint()?;
                    let thresh = r.finite_f32("a split threshold")?;
                    let (Ok(idx1), Ok(idx2)) = (u32::try_from(idx1), u32::try_from(idx2)) else {
                        return Err(r.error_at(
                            at,
                            format!("split feature indices {idx1}, {idx2} out of range"),
                        ));
                    };
                    let m = idx1.max(idx2);
                    if m >= maxf.0 {
                        maxf = (m, at);
                    }
                    c.splits.push(Split { idx1, idx2, thresh });
                }
                let at = r.pos();
                let nl = r.len(4 + 4 * len, "a tree's leaves")?;
                if nl != ns + 1 {
                    return Err(r.error_at(
                        at,
                        format!(
                            "a tree with {ns} splits has {nl} leaves, expected {}",
                            ns + 1
                        ),
                    ));
                }
                for _ in 0..nl {
                    read_column(&mut r, Some(len), "a leaf", &mut c.leaves)?;
                }
            }
            max_feature.push(maxf);
            cascades.push(c);
        }

        // The feature pixels of each cascade: their anchor landmarks...
        let at = r.pos();
        let n = r.len(2, "the anchor indices")?;
        if n != num_cascades {
            return Err(r.error_at(
                at,
                format!("{n} lists of anchor indices for {num_cascades} cascades"),
            ));
        }
        for c in &mut cascades {
            let count = r.len(2, "a cascade's anchor indices")?;
            c.anchors.reserve(count);
            for _ in 0..count {
                let at = r.pos();
                let a = r.uint()?;
                if a >= parts as u64 {
                    return Err(r.error_at(
                        at,
                        format!("anchor landmark {a}, but the shape has {parts} parts"),
                    ));
                }
                c.anchors.push(a as u32);
            }
        }
        // ... and their offsets from them.
        let at = r.pos();
        let n = r.len(2, "the deltas")?;
        if n != num_cascades {
            return Err(r.error_at(
                at,
                format!("{n} lists of deltas for {num_cascades} cascades"),
            ));
        }
        for c in &mut cascades {
            let at = r.pos();
            let count = r.len(8, "a cascade's deltas")?;
            if count != c.anchors.len() {
                return Err(r.error_at(
                    at,
                    format!("{count} deltas for {} anchor indices", c.anchors.len()),
                ));
            }
            c.deltas.reserve(count);
            for _ in 0..count {
                let x = r.finite_f32("a delta")?;
                let y = r.finite_f32("a delta")?;
                c.deltas.push([x, y]);
            }
        }
        r.finish()?;

        for (c, &(m, at)) in cascades.iter().zip(&max_feature) {
            if !c.splits.is_empty() && m as usize >= c.anchors.len() {
                return Err(r.error_at(
                    at,
                    format!(
                        "split feature {m}, but the cascade has {} feature pixels",
                        c.anchors.len()
                    ),
                ));
            }
        }
        Ok(Self {
            initial,
            cascades,
            splits_per_tree: splits_per_tree.unwrap_or(0),
        })
    }

    /// Landmarks per face (5 for `shape_predictor_5_face_landmarks.dat`).
    pub fn num_parts(&self) -> usize {
        self.initial.len() / 2
    }

    /// Levels of the cascade (15 in the 5-point model).
    pub fn num_cascades(&self) -> usize {
        self.cascades.len()
    }

    /// Regression trees over all cascades (7,500 in the 5-point model).
    pub fn num_trees(&self) -> usize {
        self.cascades.iter().map(|c| c.trees).sum()
    }

    /// The mean shape, `[x, y]` per part, in the unit square of the face rectangle.
    pub fn mean_shape(&self) -> Vec<[f32; 2]> {
        self.initial.chunks_exact(2).map(|p| [p[0], p[1]]).collect()
    }

    /// The landmarks of the face in `rect` (dlib's inclusive rectangle, as the detectors give
    /// it), [`num_parts`](Self::num_parts) integer points in image pixels, in the model's part
    /// order; exactly what dlib's `shape_predictor(img, rect)` returns.
    ///
    /// Any rectangle works: pixels outside the image read as 0, and an empty or inverted
    /// rectangle just maps the unit square accordingly; points far outside saturate.
    pub fn predict(&self, img: &RgbImage, rect: Rect) -> Vec<Point> {
        let parts = self.num_parts();
        let (l, t) = (rect.left as f64, rect.top as f64);
        // unnormalizing_tform(rect): (0,0) -> top-left, (1,1) -> bottom-right.
        let (sx, sy) = (rect.right as f64 - l, rect.bottom as f64 - t);
        let to_img = |u: f32, v: f32| -> (i64, i64) {
            let x = sx * u as f64 + l;
            let y = sy * v as f64 + t;
            // dlib's conversion to an integer point: floor(v + 0.5); `as` saturates.
            ((x + 0.5).floor() as i64, (y + 0.5).floor() as i64)
        };
        let (w, h) = (img.width() as i64, img.height() as i64);
        let pixels = img.as_raw();
        let mean: Vec<[f64; 2]> = self
            .mean_shape()
            .iter()
            .map(|p| [p[0] as f64, p[1] as f64])
            .collect();
        let mut cur = self.initial.clone();
        let mut current: Vec<[f64; 2]> = vec![[0.0; 2]; parts];
        let max_features = self
            .cascades
            .iter()
            .map(|c| c.anchors.len())
            .max()
            .unwrap_or(0);
        let mut feats = vec![0f32; max_features];
        let s = self.splits_per_tree;
        let leaf_len = self.initial.len();
        for c in &self.cascades {
            // The 2x2 part of the similarity from the mean shape to the current one, in f32.
            let a = if parts == 1 {
                [[1f32, 0.0], [0.0, 1.0]]
            } else {
                for (p, xy) in current.iter_mut().zip(cur.chunks_exact(2)) {
                    *p = [xy[0] as f64, xy[1] as f64];
                }
                let m = find_similarity_transform(&mean, &current).m;
                [
                    [m[0][0] as f32, m[0][1] as f32],
                    [m[1][0] as f32, m[1][1] as f32],
                ]
            };
            for ((f, &anchor), d) in feats.iter_mut().zip(&c.anchors).zip(&c.deltas) {
                let k = anchor as usize * 2;
                let u = (a[0][0] * d[0] + a[0][1] * d[1]) + cur[k];
                let v = (a[1][0] * d[0] + a[1][1] * d[1]) + cur[k + 1];
                let (x, y) = to_img(u, v);
                *f = if x >= 0 && y >= 0 && x < w && y < h {
                    let i = (y as usize * w as usize + x as usize) * 3;
                    let sum = pixels[i] as u32 + pixels[i + 1] as u32 + pixels[i + 2] as u32;
                    (sum / 3) as f32
                } else {
                    0.0
                };
            }
            let feats = &feats[..c.anchors.len()];
            for (tree, splits) in c.splits.chunks_exact(s.max(1)).take(c.trees).enumerate() {
                let mut i = 0usize;
                while i < s {
                    let sp = splits[i];
                    i = if feats[sp.idx1 as usize] - feats[sp.idx2 as usize] > sp.thresh {
                        2 * i + 1
                    } else {
                        2 * i + 2
                    };
                }
                let start = (tree * (s + 1) + (i - s)) * leaf_len;
                for (x, dx) in cur.iter_mut().zip(&c.leaves[start..start + leaf_len]) {
                    *x += dx;
                }
            }
            if s == 0 {
                // Single-leaf trees: every tree adds its only leaf.
                for leaf in c.leaves.chunks_exact(leaf_len).take(c.trees) {
                    for (x, dx) in cur.iter_mut().zip(leaf) {
                        *x += dx;
                    }
                }
            }
        }
        cur.chunks_exact(2)
            .map(|p| {
                let (x, y) = to_img(p[0], p[1]);
                Point::new(x, y)
            })
            .collect()
    }
}
