//! The contrastive loss of Hadsell, Chopra & LeCun (2006), on given pairs or on every pair of
//! a labelled batch.

use candle_core::{bail, Device, Result, Tensor};
use siamese_ops::distance::{self, Distance, L2_EPS};

use super::{
    check_embeddings, check_labels, check_margin, host_f64, zero_loss, LossOutput, PairStats,
};

/// The contrastive loss over the pairs `(e1[i], e2[i])`.
///
/// With `y = same[i]` (1 = same identity) and `r` the pair's distance as a length,
///
/// ```text
/// L = mean_i  1/2 * ( y * r^2  +  (1 - y) * max(0, margin - r)^2 )
/// ```
///
/// (Hadsell et al. 2006, eq. 4, with their `Y` flipped so that 1 means "same", and averaged
/// rather than summed over pairs). Same pairs are pulled together; different pairs are pushed
/// apart until they are `margin` away, then left alone.
///
/// `r` depends on `distance`:
/// - [`Distance::SquaredL2`] and [`Distance::L2`]: `r` is the Euclidean distance
///   `sqrt(D + L2_EPS)`, with `D = ||e1 - e2||^2`, and `r^2` in the same-pair term is `D`
///   itself. So for squared L2, `L = 1/2 (y D + (1 - y) max(0, margin - sqrt(D))^2)`, and
///   `margin` is a Euclidean length.
/// - [`Distance::L1`] and [`Distance::Cosine`]: `r` is that distance; `margin` is in its units.
///
/// The output's statistics use `distance.paired(e1, e2)` (so squared units for squared L2):
/// `mean_pos_dist` over the same pairs, `mean_neg_dist` over the different pairs, and
/// `collapsed` when every pair's distance is at most [`COLLAPSE_EPS`](super::COLLAPSE_EPS).
/// `active` counts pairs whose term is non-zero; `total` is `N`.
///
/// # Shapes
/// - `e1`, `e2`: `[N, D]`, float, the same dtype
/// - `same`: `[N]`, any numeric dtype, 1 = same, 0 = different
/// - `loss`: scalar, the dtype of `e1`
pub fn contrastive(
    e1: &Tensor,
    e2: &Tensor,
    same: &Tensor,
    margin: f64,
    distance: Distance,
) -> Result<LossOutput> {
    let op = "contrastive";
    let (n, _) = check_embeddings(op, e1)?;
    if e1.dims() != e2.dims() || e1.dtype() != e2.dtype() {
        bail!(
            "{op}: e1 and e2 must have the same shape [N, D] and dtype, got {:?} {:?} and {:?} {:?}",
            e1.dims(),
            e1.dtype(),
            e2.dims(),
            e2.dtype()
        );
    }
    if same.dims() != [n] {
        bail!(
            "{op}: same must have shape [N] = [{n}] to match e1 {:?}, got {:?}",
            e1.dims(),
            same.dims()
        );
    }
    check_margin(op, margin)?;
    if n == 0 {
        return Ok(LossOutput {
            loss: zero_loss(e1)?,
            active: 0,
            total: 0,
            collapsed: false,
            mean_pos_dist: f32::NAN,
            mean_neg_dist: f32::NAN,
        });
    }
    let y = same.to_dtype(e1.dtype())?;
    let (reported, r, r_sq) = match distance {
        Distance::SquaredL2 | Distance::L2 => {
            let d2 = distance::squared_l2(e1, e2)?;
            let r = (&d2 + L2_EPS)?.sqrt()?;
            let reported = if distance == Distance::SquaredL2 {
                d2.clone()
            } else {
                r.clone()
            };
            (reported, r, d2)
        }
        Distance::L1 | Distance::Cosine => {
            let r = distance.paired(e1, e2)?;
            (r.clone(), r.clone(), r.sqr()?)
        }
    };
    let pull = (&y * &r_sq)?;
    let push = (y.affine(-1.0, 1.0)? * r.affine(-1.0, margin)?.relu()?.sqr()?)?;
    let per_pair = ((pull + push)? * 0.5)?;
    let loss = per_pair.mean_all()?;

    let terms = host_f64(&per_pair)?;
    let dists = host_f64(&reported)?;
    let labels = host_f64(&y)?;
    let mut stats = PairStats::default();
    for (d, s) in dists.iter().zip(&labels) {
        stats.add(*d, *s > 0.5);
    }
    Ok(stats.output(loss, terms.iter().filter(|t| **t > 0.0).count(), n))
}

/// The pairs `(i, j)`, `i < j`, of `n` items, as two index lists.
fn all_pairs(n: usize) -> (Vec<u32>, Vec<u32>) {
    let mut first = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    let mut second = Vec::with_capacity(first.capacity());
    for i in 0..n {
        for j in i + 1..n {
            first.push(i as u32);
            second.push(j as u32);
        }
    }
    (first, second)
}

/// [`contrastive`] over every pair `(i, j)`, `i < j`, of a labelled batch; a pair is "same"
/// when its labels are equal. `total` is `N (N - 1) / 2`.
///
/// # Shapes
/// - `emb`: `[N, D]`, float, `N >= 2`
/// - `labels`: `N` class ids
/// - `loss`: scalar
pub fn contrastive_batch(
    emb: &Tensor,
    labels: &[u32],
    margin: f64,
    distance: Distance,
) -> Result<LossOutput> {
    let op = "contrastive_batch";
    let (n, _) = check_embeddings(op, emb)?;
    check_labels(op, n, labels)?;
    if n < 2 {
        bail!(
            "{op}: need at least 2 embeddings to form a pair, got shape {:?}",
            emb.dims()
        );
    }
    if n > u32::MAX as usize {
        bail!("{op}: batch of {n} is too large to index");
    }
    let (first, second) = all_pairs(n);
    let same: Vec<f32> = first
        .iter()
        .zip(&second)
        .map(|(i, j)| f32::from(u8::from(labels[*i as usize] == labels[*j as usize])))
        .collect();
    let dev: &Device = emb.device();
    let pairs = first.len();
    let first = Tensor::from_vec(first, pairs, dev)?;
    let second = Tensor::from_vec(second, pairs, dev)?;
    let same = Tensor::from_vec(same, pairs, dev)?;
    contrastive(
        &emb.index_select(&first, 0)?,
        &emb.index_select(&second, 0)?,
        &same,
        margin,
        distance,
    )
}
