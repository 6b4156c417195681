//! Losses on encodings: contrastive, triplet (with online mining), prototypical, the
//! normalised-softmax proxy loss and the binary cross-entropy head. Every loss takes encodings
//! and labels (and, for the proxy loss, the proxies), never the model, and returns a
//! [`LossOutput`].

use candle_core::{bail, DType, Result, Tensor};

pub mod bce;
pub mod contrastive;
pub mod proto;
pub mod proxy;
pub mod triplet;

/// A loss counts as collapsed when every distance it looked at is at most this (in the loss's
/// own distance units). For [`Distance::L2`](siamese_ops::distance::Distance::L2) the floor at
/// zero distance is `sqrt(L2_EPS) = 1e-6`, safely below it.
pub const COLLAPSE_EPS: f32 = 1e-5;

/// The scalar loss and what a training loop logs about it.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// The scalar loss (rank 0), differentiable with respect to the encodings.
    pub loss: Tensor,
    /// How many terms (pairs or triplets) have a non-zero loss; for [`bce::BceHead`], how many
    /// pairs are misclassified at probability 0.5.
    pub active: usize,
    /// How many terms (pairs or triplets) the loss is over.
    pub total: usize,
    /// Whether every distance the loss looked at is at most [`COLLAPSE_EPS`]: the encoder maps
    /// every input to (nearly) the same point, the failure mode of a too-hard mining strategy.
    /// `false` when there were no distances.
    pub collapsed: bool,
    /// The mean distance over same-label pairs (`NaN` when there are none). Which pairs, and
    /// which distance, each loss documents.
    pub mean_pos_dist: f32,
    /// The mean distance over different-label pairs (`NaN` when there are none).
    pub mean_neg_dist: f32,
}

/// How per-term losses become the scalar loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    /// The mean over all terms.
    #[default]
    Mean,
    /// The sum over the terms divided by the number of non-zero terms (0 when there are none):
    /// the "batch all, non-zero" average of Hermans et al. 2017, which keeps easy terms from
    /// diluting the gradient.
    MeanActive,
}

/// Accumulates distances of same-label and different-label pairs.
#[derive(Default)]
pub(crate) struct PairStats {
    pos_sum: f64,
    pos_n: usize,
    neg_sum: f64,
    neg_n: usize,
    max: f64,
    any: bool,
}

impl PairStats {
    pub(crate) fn add(&mut self, d: f64, same: bool) {
        if same {
            self.pos_sum += d;
            self.pos_n += 1;
        } else {
            self.neg_sum += d;
            self.neg_n += 1;
        }
        // A NaN distance sticks (every later comparison with it is false), so a batch with a
        // NaN distance never counts as collapsed.
        if !self.any || d.is_nan() || d > self.max {
            self.max = d;
        }
        self.any = true;
    }

    /// The loss's output: `loss`, `active` of `total` terms, and the mean same-label and
    /// different-label distances (`NaN` where there were none) and whether the encodings
    /// collapsed.
    pub(crate) fn output(&self, loss: Tensor, active: usize, total: usize) -> LossOutput {
        let mean = |s: f64, n: usize| {
            if n == 0 {
                f32::NAN
            } else {
                (s / n as f64) as f32
            }
        };
        LossOutput {
            loss,
            active,
            total,
            collapsed: self.any && self.max <= COLLAPSE_EPS as f64,
            mean_pos_dist: mean(self.pos_sum, self.pos_n),
            mean_neg_dist: mean(self.neg_sum, self.neg_n),
        }
    }
}

/// Checks that `emb` is `[N, D]` float and returns `(N, D)`.
pub(crate) fn check_embeddings(op: &str, emb: &Tensor) -> Result<(usize, usize)> {
    let (n, d) = match emb.dims() {
        &[n, d] => (n, d),
        dims => bail!("{op}: embeddings must have shape [N, D], got {dims:?}"),
    };
    if !emb.dtype().is_float() {
        bail!("{op}: embeddings must be float, got {:?}", emb.dtype());
    }
    Ok((n, d))
}

/// Checks that `labels` has one entry per row.
pub(crate) fn check_labels(op: &str, n: usize, labels: &[u32]) -> Result<()> {
    if labels.len() != n {
        bail!(
            "{op}: {} labels for {n} embeddings (shape [{n}, D]); there must be one per row",
            labels.len()
        );
    }
    Ok(())
}

/// Checks that a margin is finite and not negative.
pub(crate) fn check_margin(op: &str, margin: f64) -> Result<()> {
    if !(margin.is_finite() && margin >= 0.0) {
        bail!("{op}: margin must be finite and >= 0, got {margin}");
    }
    Ok(())
}

/// The values of a rank-1 tensor as `f64`, without gradient.
pub(crate) fn host_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.detach().to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// A zero scalar still connected to `emb`, so `backward` works (and gives zero gradients)
/// when a batch has no terms.
pub(crate) fn zero_loss(emb: &Tensor) -> Result<Tensor> {
    emb.sum_all()? * 0.0
}

/// Reads a rank-1 integer label tensor into a `Vec<u32>`.
///
/// # Shapes
/// - `labels`: `[N]`, `u8`, `u32` or `i64` (non-negative, below 2^32)
/// - returns `N` labels
pub fn labels_to_vec(labels: &Tensor) -> Result<Vec<u32>> {
    if labels.rank() != 1 {
        bail!(
            "labels_to_vec: labels must have shape [N], got {:?}",
            labels.dims()
        );
    }
    match labels.dtype() {
        DType::U32 => labels.to_vec1::<u32>(),
        DType::U8 => Ok(labels.to_vec1::<u8>()?.into_iter().map(u32::from).collect()),
        DType::I64 => labels
            .to_vec1::<i64>()?
            .into_iter()
            .map(|v| match u32::try_from(v) {
                Ok(v) => Ok(v),
                Err(_) => bail!("labels_to_vec: label {v} does not fit in u32"),
            })
            .collect(),
        dt => bail!("labels_to_vec: labels must be an integer tensor, got {dt:?}"),
    }
}
