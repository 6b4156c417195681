//! The prototypical loss of Snell, Swersky & Zemel (2017) on a labelled batch, leave-one-out:
//! every row is a query, classified by a softmax over its negative squared distances to the
//! mean encoding ("prototype") of each class of the batch, where its own class's prototype is
//! the mean of the *other* rows of that class.
//!
//! Unlike the triplet and contrastive losses it has no margin after which a term stops
//! contributing: a well-separated batch still pulls its classes tighter, so the loss does not
//! sit at exactly zero on small training sets. It trains the same thing the one-shot test asks
//! for (pick the nearest of N class exemplars).

use std::collections::HashMap;

use candle_core::{bail, DType, Result, Tensor};

use super::{check_embeddings, check_labels, zero_loss, LossOutput, PairStats};

/// The default scale (inverse temperature) for L2-normalised encodings, whose squared
/// distances lie in `[0, 4]`.
pub const DEFAULT_PROTO_SCALE: f64 = 16.0;

/// The leave-one-out prototypical loss.
///
/// With `m_c` the mean encoding of class `c` over the batch, `K_c` its number of rows, and
/// `d_ic = ||e_i − m_c||²` for every other class, the own class's distance is measured to the
/// mean of the other `K_c − 1` rows, which is `(K_c / (K_c − 1))² ||e_i − m_c||²`. Then
///
/// ```text
/// L = mean_i  −log softmax_c(−scale · d_ic)[class(i)]
/// ```
///
/// over the rows whose class has at least two rows (a singleton class still serves as a
/// prototype for the others). Distances are squared Euclidean whatever distance the model
/// verifies with: the class mean is the right prototype for that divergence, and for
/// L2-normalised encodings it orders pairs as cosine distance does.
///
/// The output's `active` counts misclassified queries (the nearest prototype is another
/// class's), `total` the queries; `mean_pos_dist` and `mean_neg_dist` average the own-class and
/// other-class `d_ic`; `collapsed` is set when every `d_ic` is at most
/// [`COLLAPSE_EPS`](super::COLLAPSE_EPS).
///
/// # Shapes
/// - `emb`: `[N, D]`, float
/// - `labels`: `N` labels
/// - `loss`: scalar, the dtype of `emb`
pub fn prototypical(emb: &Tensor, labels: &[u32], scale: f64) -> Result<LossOutput> {
    let op = "prototypical";
    let (n, _) = check_embeddings(op, emb)?;
    check_labels(op, n, labels)?;
    if !(scale.is_finite() && scale > 0.0) {
        bail!("{op}: scale must be finite and > 0, got {scale}");
    }
    // Classes in order of first appearance.
    let mut index: HashMap<u32, usize> = HashMap::new();
    let mut class_of = Vec::with_capacity(n);
    let mut counts: Vec<usize> = Vec::new();
    for &l in labels {
        let c = *index.entry(l).or_insert_with(|| {
            counts.push(0);
            counts.len() - 1
        });
        counts[c] += 1;
        class_of.push(c);
    }
    let p = counts.len();
    let queries: Vec<usize> = (0..n).filter(|&i| counts[class_of[i]] >= 2).collect();
    if p < 2 || queries.is_empty() {
        return Ok(LossOutput {
            loss: zero_loss(emb)?,
            active: 0,
            total: 0,
            collapsed: false,
            mean_pos_dist: f32::NAN,
            mean_neg_dist: f32::NAN,
        });
    }
    let device = emb.device();
    let dtype = emb.dtype();
    // [P, N] averaging matrix: row c holds 1/K_c at the rows of class c.
    let mut avg = vec![0f32; p * n];
    for (i, &c) in class_of.iter().enumerate() {
        avg[c * n + i] = 1.0 / counts[c] as f32;
    }
    let avg = Tensor::from_vec(avg, (p, n), device)?.to_dtype(dtype)?;
    let means = avg.matmul(emb)?; // [P, D]
    let q = queries.len();
    let qidx = Tensor::from_vec(
        queries.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        q,
        device,
    )?;
    let eq = emb.index_select(&qidx, 0)?; // [Q, D]
                                          // Exact differences rather than |a|² + |b|² − 2ab, which cancels badly for close points.
    let diff = eq.unsqueeze(1)?.broadcast_sub(&means.unsqueeze(0)?)?; // [Q, P, D]
    let d = diff.sqr()?.sum(2)?; // [Q, P]
                                 // Leave-one-out factor on the own class, and the one-hot of the own class.
    let mut factor = vec![1f32; q * p];
    let mut onehot = vec![0f32; q * p];
    for (r, &i) in queries.iter().enumerate() {
        let c = class_of[i];
        let k = counts[c] as f32;
        factor[r * p + c] = (k / (k - 1.0)).powi(2);
        onehot[r * p + c] = 1.0;
    }
    let factor = Tensor::from_vec(factor, (q, p), device)?.to_dtype(dtype)?;
    let onehot = Tensor::from_vec(onehot, (q, p), device)?.to_dtype(dtype)?;
    let d = (d * factor)?;
    let logits = (&d * (-scale))?;
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?; // [Q, 1]
    let own = (&shifted * &onehot)?.sum_keepdim(1)?; // [Q, 1]
    let loss = (lse - own)?.mean_all()?;

    let dh = d.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
    let mut stats = PairStats::default();
    let mut wrong = 0;
    for (r, row) in dh.iter().enumerate() {
        let own_c = class_of[queries[r]];
        let mut best = 0;
        for (c, &v) in row.iter().enumerate() {
            stats.add(v, c == own_c);
            if v < row[best] {
                best = c;
            }
        }
        if best != own_c && row[best] < row[own_c] {
            wrong += 1;
        }
    }
    Ok(stats.output(loss, wrong, q))
}
