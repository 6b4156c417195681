//! Verification: are two images of one identity? A distance under the model's matcher,
//! compared with a threshold.

use crate::error::{InferError, Result};
use crate::model::{check_threshold, Model};
use serde::Serialize;
use std::path::Path;

/// The answer to "same identity?": `same` when `distance < threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// The distance between the two images' representations (lower: more alike).
    pub distance: f32,
    /// Whether the distance is below the threshold.
    pub same: bool,
    /// The threshold the distance was compared with.
    pub threshold: f32,
}

/// `same: distance 0.3385 < threshold 0.6000` (or `different: ... ≥ ...`).
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: distance {:.4} {} threshold {:.4}",
            if self.same { "same" } else { "different" },
            self.distance,
            if self.same { "<" } else { "≥" },
            self.threshold
        )
    }
}

impl Verdict {
    /// The verdict on `distance` at `threshold`.
    pub fn at(distance: f32, threshold: f32) -> Self {
        Verdict {
            distance,
            same: distance < threshold,
            threshold,
        }
    }
}

/// A model with the threshold it decides at.
#[derive(Debug)]
pub struct Verifier {
    model: Model,
    threshold: f32,
}

impl Verifier {
    /// A verifier deciding at `threshold`, or at the model's calibrated threshold when it is
    /// `None`. Fails when neither exists ([`InferError::NoThreshold`]) or the threshold is not
    /// a finite distance `>= 0` ([`InferError::Threshold`]).
    pub fn new(model: Model, threshold: Option<f32>) -> Result<Self> {
        let threshold = match threshold.or(model.threshold()) {
            Some(t) => check_threshold(t)?,
            None => return Err(InferError::NoThreshold),
        };
        Ok(Verifier { model, threshold })
    }

    /// The threshold decisions are made at.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model back.
    pub fn into_model(self) -> Model {
        self.model
    }

    /// Verifies two image files (decoded and preprocessed as the model says; an image that
    /// cannot be read is an error naming it).
    pub fn verify(&self, a: impl AsRef<Path>, b: impl AsRef<Path>) -> Result<Verdict> {
        let e = self.model.embed_paths(&[a.as_ref(), b.as_ref()])?;
        let r = self.model.row_len();
        Ok(self.verify_rows(&e[..r], &e[r..]))
    }

    /// The verdict on two representations the model made ([`Model::row_len`] values each).
    pub fn verify_rows(&self, a: &[f32], b: &[f32]) -> Verdict {
        Verdict::at(self.model.distance(a, b), self.threshold)
    }
}
