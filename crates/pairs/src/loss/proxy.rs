//! The normalised-softmax proxy loss (NormFace, Wang et al. 2017; the cosine classifier of
//! Chen et al. 2019's Baseline++): every training class has a learned proxy vector, and every
//! row is classified by a softmax over its scaled cosine similarities to all of them.
//!
//! Where the prototypical and triplet losses compare a row only with the few classes of its
//! batch, the proxy loss pushes it away from every training class each step, so a small batch
//! still sees all the negatives. The proxies are training state, not part of the encoder: they
//! are passed in, and their gradient comes back with the encodings'.

use candle_core::{bail, DType, Result, Tensor};
use siamese_ops::distance::{l2_normalize, COSINE_EPS};

use super::{check_embeddings, check_labels, LossOutput, PairStats};

/// The default scale (inverse temperature) on cosine similarities.
pub const DEFAULT_PROXY_SCALE: f64 = 16.0;

/// The normalised-softmax loss against one proxy per class.
///
/// With `ê_i` the L2-normalised row `i`, `ŵ_c` the L2-normalised proxy of class `c` and
/// `y_i` the label of row `i`,
///
/// ```text
/// L = mean_i  −log softmax_c(scale · ⟨ê_i, ŵ_c⟩)[y_i]
/// ```
///
/// The output's `active` counts misclassified rows (another class's proxy is more similar),
/// `total` the rows; `mean_pos_dist` and `mean_neg_dist` average the squared Euclidean
/// distance `2 − 2⟨ê_i, ŵ_c⟩` between unit vectors over the own proxy and over the others;
/// `collapsed` is set when every one of those distances is at most
/// [`COLLAPSE_EPS`](super::COLLAPSE_EPS).
///
/// # Shapes
/// - `emb`: `[N, D]`, float
/// - `proxies`: `[C, D]`, the dtype of `emb`
/// - `labels`: `N` labels, each below `C`
/// - `loss`: scalar, the dtype of `emb`
pub fn proxy_softmax(
    emb: &Tensor,
    proxies: &Tensor,
    labels: &[u32],
    scale: f64,
) -> Result<LossOutput> {
    let op = "proxy_softmax";
    let (n, d) = check_embeddings(op, emb)?;
    check_labels(op, n, labels)?;
    let (c, dp) = match proxies.dims() {
        &[c, dp] => (c, dp),
        dims => bail!("{op}: proxies must have shape [C, D], got {dims:?}"),
    };
    if dp != d || proxies.dtype() != emb.dtype() {
        bail!(
            "{op}: proxies are [{c}, {dp}] {:?} but the embeddings are [{n}, {d}] {:?}",
            proxies.dtype(),
            emb.dtype()
        );
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= c) {
        bail!("{op}: label {bad} has no proxy (there are {c} proxies)");
    }
    if !(scale.is_finite() && scale > 0.0) {
        bail!("{op}: scale must be finite and > 0, got {scale}");
    }
    let device = emb.device();
    let e = l2_normalize(emb, COSINE_EPS)?;
    let w = l2_normalize(proxies, COSINE_EPS)?;
    let cos = e.matmul(&w.t()?)?; // [N, C]
    let logits = (&cos * scale)?;
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?; // [N, 1]
    let idx = Tensor::from_vec(labels.to_vec(), (n, 1), device)?;
    let own = shifted.gather(&idx, 1)?; // [N, 1]
    let loss = (lse - own)?.mean_all()?;

    let ch = cos.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let mut stats = PairStats::default();
    let mut wrong = 0;
    for (row, &y) in ch.iter().zip(labels) {
        let y = y as usize;
        let mut best = y;
        for (j, &v) in row.iter().enumerate() {
            stats.add(2.0 - 2.0 * v, j == y);
            if v > row[best] {
                best = j;
            }
        }
        if best != y {
            wrong += 1;
        }
    }
    Ok(stats.output(loss, wrong, n))
}
