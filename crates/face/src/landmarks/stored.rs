//! The shape predictor as named tensors and [`LandmarkSettings`] (see [`crate::file`]).
//!
//! Tensors (`P` parts, `S = 2^depth - 1` splits per tree, each cascade `c` with `T_c` trees
//! and `F_c` feature pixels):
//! - `landmarks.initial` `f32 [P, 2]`: the mean shape;
//! - `landmarks.cascade{c}.splits` `u32 [T_c, S, 2]`: each split's two feature indices;
//! - `landmarks.cascade{c}.thresholds` `f32 [T_c, S]`: each split's threshold;
//! - `landmarks.cascade{c}.leaves` `f32 [T_c, S + 1, P, 2]`: each leaf's shape increment;
//! - `landmarks.cascade{c}.anchors` `u32 [F_c]`: each feature pixel's landmark;
//! - `landmarks.cascade{c}.deltas` `f32 [F_c, 2]`: its offset from that landmark.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Cascade, ShapePredictor, Split, MAX_PARTS, MAX_TREE_DEPTH};
use crate::error::Result;
use crate::file::{
    check_range, elements, f32_tensor, stored, take_f32, take_u32, u32_tensor, LANDMARKS_PREFIX,
};

/// The most cascades a stored predictor may have (dlib's models have 10 to 15).
pub const MAX_CASCADES: usize = 1024;

/// The most trees one stored cascade may have (dlib's 5-point model has 500).
pub const MAX_TREES: usize = 1 << 20;

/// The most feature pixels one stored cascade may have (dlib's default is 500).
pub const MAX_FEATURES: usize = 1 << 20;

/// One cascade's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CascadeSize {
    /// Regression trees in its forest.
    pub trees: usize,
    /// Feature pixels its splits compare.
    pub features: usize,
}

/// What a stored predictor is besides its tensors: the sizes that give each tensor's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandmarkSettings {
    /// Landmarks per face (5).
    pub parts: usize,
    /// Depth of every tree (`2^depth - 1` splits, `2^depth` leaves; 4 in dlib's models).
    pub depth: u32,
    /// The cascades, in order.
    pub cascades: Vec<CascadeSize>,
}

/// `landmarks.cascade{c}.{what}`.
fn name(c: usize, what: &str) -> String {
    format!("{LANDMARKS_PREFIX}cascade{c}.{what}")
}

impl ShapePredictor {
    /// The settings [`ShapePredictor::from_tensors`] needs besides the tensors.
    pub fn settings(&self) -> LandmarkSettings {
        LandmarkSettings {
            parts: self.num_parts(),
            depth: (self.splits_per_tree + 1).trailing_zeros(),
            cascades: self
                .cascades
                .iter()
                .map(|c| CascadeSize {
                    trees: c.trees,
                    features: c.anchors.len(),
                })
                .collect(),
        }
    }

    /// The predictor's tensors, named as the module documentation says, on the CPU.
    pub fn to_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let p = self.num_parts();
        let s = self.splits_per_tree;
        let mut out = vec![(
            format!("{LANDMARKS_PREFIX}initial"),
            f32_tensor(self.initial.clone(), &[p, 2])?,
        )];
        for (i, c) in self.cascades.iter().enumerate() {
            let idx = c.splits.iter().flat_map(|sp| [sp.idx1, sp.idx2]).collect();
            let th = c.splits.iter().map(|sp| sp.thresh).collect();
            let deltas = c.deltas.iter().flatten().copied().collect();
            let f = c.anchors.len();
            out.push((name(i, "splits"), u32_tensor(idx, &[c.trees, s, 2])?));
            out.push((name(i, "thresholds"), f32_tensor(th, &[c.trees, s])?));
            out.push((
                name(i, "leaves"),
                f32_tensor(c.leaves.clone(), &[c.trees, s + 1, p, 2])?,
            ));
            out.push((name(i, "anchors"), u32_tensor(c.anchors.clone(), &[f])?));
            out.push((name(i, "deltas"), f32_tensor(deltas, &[f, 2])?));
        }
        Ok(out)
    }

    /// The predictor from `settings` and the tensors [`ShapePredictor::to_tensors`] wrote,
    /// removed from `tensors` (others are left there). `file` names the source in errors.
    ///
    /// Fails with [`crate::FaceError::Stored`], naming the file and the tensor or setting,
    /// when a size is over its limit ([`MAX_PARTS`], [`MAX_TREE_DEPTH`], [`MAX_CASCADES`],
    /// [`MAX_TREES`], [`MAX_FEATURES`]) or a tensor is missing, of another type or shape than
    /// the settings give, holds a value that is not finite, or an index (a split's feature, an
    /// anchor's landmark) outside its array: prediction then never indexes out of bounds.
    pub fn from_tensors(
        file: &str,
        settings: &LandmarkSettings,
        tensors: &mut HashMap<String, Tensor>,
    ) -> Result<ShapePredictor> {
        let p = settings.parts;
        check_range(file, "landmarks parts", p, 1, MAX_PARTS)?;
        check_range(file, "landmarks depth", settings.depth, 0, MAX_TREE_DEPTH)?;
        check_range(
            file,
            "landmarks cascades",
            settings.cascades.len(),
            0,
            MAX_CASCADES,
        )?;
        let s = (1usize << settings.depth) - 1;
        let initial = take_f32(
            file,
            tensors,
            &format!("{LANDMARKS_PREFIX}initial"),
            &[p, 2],
        )?;
        let mut cascades = Vec::with_capacity(settings.cascades.len());
        for (i, size) in settings.cascades.iter().enumerate() {
            let (trees, f) = (size.trees, size.features);
            check_range(
                file,
                &format!("landmarks cascade {i} trees"),
                trees,
                0,
                MAX_TREES,
            )?;
            check_range(
                file,
                &format!("landmarks cascade {i} features"),
                f,
                0,
                MAX_FEATURES,
            )?;
            let leaves_shape = [trees, s + 1, p, 2];
            if elements(&leaves_shape).is_none() {
                return Err(stored(
                    file,
                    &name(i, "leaves"),
                    format!("a shape of {leaves_shape:?} is too large"),
                ));
            }
            // Indices are checked against the bounds here: u32 sizes, as limited above.
            let features = u32::try_from(f).unwrap_or(u32::MAX);
            let parts = u32::try_from(p).unwrap_or(u32::MAX);
            // The feature pixels first: their count bounds the splits' indices.
            let anchors = take_u32(file, tensors, &name(i, "anchors"), &[f], parts, "landmarks")?;
            let deltas = take_f32(file, tensors, &name(i, "deltas"), &[f, 2])?;
            let idx = take_u32(
                file,
                tensors,
                &name(i, "splits"),
                &[trees, s, 2],
                features,
                "feature pixels",
            )?;
            let th = take_f32(file, tensors, &name(i, "thresholds"), &[trees, s])?;
            let leaves = take_f32(file, tensors, &name(i, "leaves"), &leaves_shape)?;
            cascades.push(Cascade {
                anchors,
                deltas: deltas.chunks_exact(2).map(|d| [d[0], d[1]]).collect(),
                splits: idx
                    .chunks_exact(2)
                    .zip(th)
                    .map(|(ix, thresh)| Split {
                        idx1: ix[0],
                        idx2: ix[1],
                        thresh,
                    })
                    .collect(),
                leaves,
                trees,
            });
        }
        Ok(ShapePredictor {
            initial,
            cascades,
            splits_per_tree: s,
        })
    }
}
