//! The triplet loss of FaceNet (Schroff et al. 2015) with online mining: miners choose
//! `(anchor, positive, negative)` index triplets without gradients, then the loss is computed on
//! those triplets through `index_select`, so gradients flow to every mined row.

use std::collections::HashMap;

use candle_core::{bail, DType, Result, Tensor};
use siamese_ops::distance::Distance;

use super::{
    check_embeddings, check_labels, check_margin, host_f64, zero_loss, LossOutput, PairStats,
    Reduction,
};

/// An `(anchor, positive, negative)` triple of row indices: `labels[a] == labels[p]`,
/// `a != p`, `labels[n] != labels[a]`.
pub type Triplet = (usize, usize, usize);

/// FaceNet's margin, for L2-normalised encodings and squared L2 distance.
pub const DEFAULT_TRIPLET_MARGIN: f64 = 0.2;

/// How triplets are chosen from a labelled batch.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mining {
    /// Every valid triplet; the loss averages over the non-zero ones
    /// ([`Reduction::MeanActive`], Hermans et al. 2017's "batch all").
    BatchAll,
    /// One triplet per anchor: its farthest positive and its nearest negative (Hermans et al.
    /// 2017). Ties go to the lower index. Anchors with no positive or no negative are skipped.
    BatchHard,
    /// One triplet per anchor-positive pair `(a, p)`, both orders: the negative with the
    /// smallest `d(a, n)` among those with `d(a, n) > d(a, p)`. When one lies in the semi-hard
    /// band `d(a, p) < d(a, n) < d(a, p) + margin` this is the hardest semi-hard negative
    /// (FaceNet, section 3.2); when none does it is the hardest negative farther than the
    /// positive (its loss is zero). When every negative is at most as far as the positive, the
    /// farthest negative is used (as TensorFlow Addons' `triplet_semihard_loss` does), never
    /// the hardest, which FaceNet found to collapse training. Ties go to the lower index.
    #[default]
    SemiHard,
}

impl Mining {
    /// The reduction the loss uses with this miner: [`Reduction::MeanActive`] for
    /// [`Mining::BatchAll`], [`Reduction::Mean`] otherwise.
    pub fn reduction(&self) -> Reduction {
        match self {
            Mining::BatchAll => Reduction::MeanActive,
            Mining::BatchHard | Mining::SemiHard => Reduction::Mean,
        }
    }
}

/// A dense `[N, N]` distance matrix on the host, computed without gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct DistanceMatrix {
    n: usize,
    data: Vec<f64>,
}

impl DistanceMatrix {
    /// Wraps a row-major `[n, n]` matrix.
    ///
    /// # Shapes
    /// - `data`: `n * n` values
    pub fn new(n: usize, data: Vec<f64>) -> Result<Self> {
        if data.len() != n * n {
            bail!(
                "DistanceMatrix::new: {} values do not make a [{n}, {n}] matrix",
                data.len()
            );
        }
        Ok(DistanceMatrix { n, data })
    }

    /// The distances between all rows of `emb`, computed on the host in `f64` with
    /// [`Distance::between`] (exact differences, no `|a|^2 + |b|^2 - 2ab` cancellation),
    /// detached from the graph. The diagonal is `distance.between(x, x)`.
    ///
    /// # Shapes
    /// - `emb`: `[N, D]`, float
    pub fn from_embeddings(emb: &Tensor, distance: Distance) -> Result<Self> {
        let (n, d) = check_embeddings("DistanceMatrix::from_embeddings", emb)?;
        let flat = emb
            .detach()
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let mut data = vec![0.0; n * n];
        for i in 0..n {
            let ri = &flat[i * d..(i + 1) * d];
            for j in i..n {
                let v = distance.between(ri, &flat[j * d..(j + 1) * d]);
                data[i * n + j] = v;
                data[j * n + i] = v;
            }
        }
        Ok(DistanceMatrix { n, data })
    }

    /// `N`.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether `N == 0`.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The distance between rows `i` and `j`, or `None` past `N`.
    pub fn get(&self, i: usize, j: usize) -> Option<f64> {
        if i < self.n && j < self.n {
            self.data.get(i * self.n + j).copied()
        } else {
            None
        }
    }

    /// The distance between rows `i` and `j`; callers have checked `i, j < N`.
    fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.n + j]
    }

    /// The row-major values.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }
}

/// Every valid triplet, in `(a, p, n)` lexicographic order.
pub fn mine_batch_all(labels: &[u32]) -> Vec<Triplet> {
    let mut out = Vec::new();
    for (a, la) in labels.iter().enumerate() {
        for (p, lp) in labels.iter().enumerate() {
            if p == a || lp != la {
                continue;
            }
            for (n, ln) in labels.iter().enumerate() {
                if ln != la {
                    out.push((a, p, n));
                }
            }
        }
    }
    out
}

/// The batch-hard triplets (see [`Mining::BatchHard`]); `dist` is `[N, N]` for
/// `N = labels.len()` (checked by [`mine_from_matrix`]).
fn mine_batch_hard(dist: &DistanceMatrix, labels: &[u32]) -> Vec<Triplet> {
    let mut out = Vec::new();
    for (a, la) in labels.iter().enumerate() {
        let mut hardest_pos: Option<(usize, f64)> = None;
        let mut hardest_neg: Option<(usize, f64)> = None;
        for (j, lj) in labels.iter().enumerate() {
            if j == a {
                continue;
            }
            let d = dist.at(a, j);
            if lj == la {
                if hardest_pos.is_none_or(|(_, best)| d > best) {
                    hardest_pos = Some((j, d));
                }
            } else if hardest_neg.is_none_or(|(_, best)| d < best) {
                hardest_neg = Some((j, d));
            }
        }
        if let (Some((p, _)), Some((n, _))) = (hardest_pos, hardest_neg) {
            out.push((a, p, n));
        }
    }
    out
}

/// The semi-hard triplets (see [`Mining::SemiHard`]); `dist` is `[N, N]` for
/// `N = labels.len()` (checked by [`mine_from_matrix`]). No margin is needed: the rule
/// "nearest negative farther than the positive" picks the hardest semi-hard negative whenever
/// one exists, whatever the margin.
fn mine_semi_hard(dist: &DistanceMatrix, labels: &[u32]) -> Vec<Triplet> {
    let mut out = Vec::new();
    for (a, la) in labels.iter().enumerate() {
        for (p, lp) in labels.iter().enumerate() {
            if p == a || lp != la {
                continue;
            }
            let d_ap = dist.at(a, p);
            let mut nearest_farther: Option<(usize, f64)> = None;
            let mut farthest: Option<(usize, f64)> = None;
            for (n, ln) in labels.iter().enumerate() {
                if ln == la {
                    continue;
                }
                let d_an = dist.at(a, n);
                if d_an > d_ap && nearest_farther.is_none_or(|(_, best)| d_an < best) {
                    nearest_farther = Some((n, d_an));
                }
                if farthest.is_none_or(|(_, best)| d_an > best) {
                    farthest = Some((n, d_an));
                }
            }
            if let Some((n, _)) = nearest_farther.or(farthest) {
                out.push((a, p, n));
            }
        }
    }
    out
}

/// Mines triplets from a precomputed distance matrix.
///
/// # Shapes
/// - `dist`: `[N, N]`
/// - `labels`: `N` class ids
pub fn mine_from_matrix(
    dist: &DistanceMatrix,
    labels: &[u32],
    mining: Mining,
) -> Result<Vec<Triplet>> {
    check_labels("mine_from_matrix", dist.len(), labels)?;
    Ok(match mining {
        Mining::BatchAll => mine_batch_all(labels),
        Mining::BatchHard => mine_batch_hard(dist, labels),
        Mining::SemiHard => mine_semi_hard(dist, labels),
    })
}

/// Mines triplets from a batch of encodings, without gradients (the distances are computed on
/// detached values, see [`DistanceMatrix::from_embeddings`]).
///
/// # Shapes
/// - `emb`: `[N, D]`, float
/// - `labels`: `N` class ids
pub fn mine(
    emb: &Tensor,
    labels: &[u32],
    mining: Mining,
    distance: Distance,
) -> Result<Vec<Triplet>> {
    let (n, _) = check_embeddings("mine", emb)?;
    check_labels("mine", n, labels)?;
    let dist = DistanceMatrix::from_embeddings(emb, distance)?;
    mine_from_matrix(&dist, labels, mining)
}

/// The triplet loss of a labelled batch with online mining:
///
/// ```text
/// L = reduce over mined (a, p, n) of  max(0, d(a, p) - d(a, n) + margin)
/// ```
///
/// with `reduce` = [`Mining::reduction`]. FaceNet uses squared L2 on L2-normalised encodings
/// with `margin = 0.2` ([`DEFAULT_TRIPLET_MARGIN`]); this function does not normalise, so
/// normalise first (`siamese_ops::distance::l2_normalize`) for that setting.
///
/// Statistics: `mean_pos_dist` / `mean_neg_dist` are over all same-label / different-label
/// pairs `i < j` of the batch (not only the mined ones), `collapsed` when all of them are at
/// most [`COLLAPSE_EPS`](super::COLLAPSE_EPS); `total` is the number of mined triplets and
/// `active` those with a non-zero loss. A batch with no valid triplet gives a zero loss that
/// is still connected to `emb`.
///
/// # Shapes
/// - `emb`: `[N, D]`, float
/// - `labels`: `N` class ids
/// - `loss`: scalar, the dtype of `emb`
pub fn triplet(
    emb: &Tensor,
    labels: &[u32],
    margin: f64,
    mining: Mining,
    distance: Distance,
) -> Result<LossOutput> {
    let op = "triplet";
    let (n, _) = check_embeddings(op, emb)?;
    check_labels(op, n, labels)?;
    check_margin(op, margin)?;
    let dist = DistanceMatrix::from_embeddings(emb, distance)?;
    let triplets = mine_from_matrix(&dist, labels, mining)?;
    loss_on(
        emb,
        labels,
        &triplets,
        margin,
        distance,
        mining.reduction(),
        &dist,
    )
}

/// The triplet loss on given triplets (from a miner, or your own), reduced with `reduction`.
/// Statistics as for [`triplet`].
///
/// # Shapes
/// - `emb`: `[N, D]`, float
/// - `labels`: `N` class ids
/// - `triplets`: indices below `N`
/// - `loss`: scalar, the dtype of `emb`
pub fn triplet_on(
    emb: &Tensor,
    labels: &[u32],
    triplets: &[Triplet],
    margin: f64,
    distance: Distance,
    reduction: Reduction,
) -> Result<LossOutput> {
    let op = "triplet_on";
    let (n, _) = check_embeddings(op, emb)?;
    check_labels(op, n, labels)?;
    check_margin(op, margin)?;
    if let Some(t) = triplets
        .iter()
        .find(|(a, p, q)| *a >= n || *p >= n || *q >= n)
    {
        bail!(
            "{op}: triplet {t:?} indexes past the {n} rows of embeddings {:?}",
            emb.dims()
        );
    }
    let dist = DistanceMatrix::from_embeddings(emb, distance)?;
    loss_on(emb, labels, triplets, margin, distance, reduction, &dist)
}

/// The index of the unordered pair `(i, j)` in `first`/`second`, adding it if new.
fn pair_slot(
    slots: &mut HashMap<(usize, usize), u32>,
    first: &mut Vec<u32>,
    second: &mut Vec<u32>,
    i: usize,
    j: usize,
) -> u32 {
    let key = (i.min(j), i.max(j));
    *slots.entry(key).or_insert_with(|| {
        first.push(key.0 as u32);
        second.push(key.1 as u32);
        (first.len() - 1) as u32
    })
}

fn loss_on(
    emb: &Tensor,
    labels: &[u32],
    triplets: &[Triplet],
    margin: f64,
    distance: Distance,
    reduction: Reduction,
    dist: &DistanceMatrix,
) -> Result<LossOutput> {
    let n = dist.len();
    if n > u32::MAX as usize {
        bail!("triplet: batch of {n} is too large to index");
    }
    let mut stats = PairStats::default();
    for i in 0..n {
        for j in i + 1..n {
            stats.add(dist.at(i, j), labels[i] == labels[j]);
        }
    }
    let total = triplets.len();
    if total == 0 {
        return Ok(stats.output(zero_loss(emb)?, 0, 0));
    }

    // Each distinct pair is computed once, on exact row differences, then gathered per triplet.
    let mut slots = HashMap::new();
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut ap = Vec::with_capacity(total);
    let mut an = Vec::with_capacity(total);
    for &(a, p, q) in triplets {
        ap.push(pair_slot(&mut slots, &mut first, &mut second, a, p));
        an.push(pair_slot(&mut slots, &mut first, &mut second, a, q));
    }
    let dev = emb.device();
    let pairs = first.len();
    let first = Tensor::from_vec(first, pairs, dev)?;
    let second = Tensor::from_vec(second, pairs, dev)?;
    let d = distance.paired(
        &emb.index_select(&first, 0)?,
        &emb.index_select(&second, 0)?,
    )?;
    let d_ap = d.index_select(&Tensor::from_vec(ap, total, dev)?, 0)?;
    let d_an = d.index_select(&Tensor::from_vec(an, total, dev)?, 0)?;
    let per_triplet = ((d_ap - d_an)? + margin)?.relu()?;
    let active = host_f64(&per_triplet)?.iter().filter(|v| **v > 0.0).count();
    let loss = match reduction {
        Reduction::Mean => per_triplet.mean_all()?,
        Reduction::MeanActive => (per_triplet.sum_all()? / active.max(1) as f64)?,
    };
    Ok(stats.output(loss, active, total))
}
