//! Evaluation on embeddings: verification over pairs (ROC AUC, EER, accuracy at a threshold),
//! N-way K-shot episodes and rank-1 identification (both as `siamese_pairs::metrics` defines
//! them), and the `unseen` protocol on a class-disjoint test set.

use crate::error::{InferError, Result};
use crate::model::{embed_flat, Model, Tta, EMBED_BATCH};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use siamese_data::ImageCache;
use siamese_encoder::Encoder;
use siamese_ops::distance::Matcher;
use siamese_pairs::metrics;

/// Embeddings of labelled images, row after row.
#[derive(Clone, Debug)]
pub struct Embedded {
    /// `n · dim` values.
    pub emb: Vec<f32>,
    /// Class of each row.
    pub labels: Vec<usize>,
    /// Embedding length.
    pub dim: usize,
}

impl Embedded {
    /// Checks that the sizes agree.
    pub fn new(emb: Vec<f32>, labels: Vec<usize>, dim: usize) -> Result<Self> {
        if dim == 0 || emb.len() != labels.len() * dim {
            return Err(InferError::Config(format!(
                "embeddings: {} values for {} labels of dimension {dim}",
                emb.len(),
                labels.len()
            )));
        }
        Ok(Self { emb, labels, dim })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.emb[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows of each class, by class index (empty for classes without rows).
    pub fn by_class(&self) -> Vec<Vec<usize>> {
        let k = self.labels.iter().copied().max().map_or(0, |m| m + 1);
        let mut out = vec![Vec::new(); k];
        for (i, &l) in self.labels.iter().enumerate() {
            out[l].push(i);
        }
        out
    }
}

/// Verification pairs: distances and whether each pair is of one class.
#[derive(Clone, Debug, Default)]
pub struct PairScores {
    /// Distance of each pair.
    pub distances: Vec<f32>,
    /// Whether each pair is of one class.
    pub same: Vec<bool>,
}

/// Every pair of rows when there are at most `max_pairs`; otherwise every same-class pair
/// (up to half of `max_pairs`) and random different-class pairs to fill, drawn from `seed`.
/// The distances are computed in parallel (set matchers do `set²` encoding distances a pair).
pub fn pairs(e: &Embedded, d: Matcher, max_pairs: usize, seed: u64) -> PairScores {
    let n = e.len();
    let mut chosen: Vec<(usize, usize)> = Vec::new();
    if n * n.saturating_sub(1) / 2 <= max_pairs {
        for i in 0..n {
            for j in i + 1..n {
                chosen.push((i, j));
            }
        }
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for members in e.by_class() {
            for (a, &i) in members.iter().enumerate() {
                for &j in &members[a + 1..] {
                    chosen.push((i, j));
                }
            }
        }
        chosen.shuffle(&mut rng);
        chosen.truncate(max_pairs / 2);
        let mut guard = 0;
        while chosen.len() < max_pairs && guard < 20 * max_pairs {
            guard += 1;
            let i = rng.random_range(0..n);
            let j = rng.random_range(0..n);
            if e.labels[i] != e.labels[j] {
                chosen.push((i, j));
            }
        }
    }
    PairScores {
        distances: chosen
            .par_iter()
            .map(|&(i, j)| d.between(e.row(i), e.row(j)))
            .collect(),
        same: chosen
            .iter()
            .map(|&(i, j)| e.labels[i] == e.labels[j])
            .collect(),
    }
}

/// Verification summary of a set of pairs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verification {
    /// Area under the ROC curve (1 is perfect, 0.5 chance).
    pub auc: f64,
    /// Equal error rate.
    pub eer: f64,
    /// Threshold at the equal error rate.
    pub eer_threshold: f64,
    /// Number of pairs.
    pub pairs: usize,
    /// Number of same-class pairs.
    pub positives: usize,
}

/// ROC AUC and EER of pair scores ([`metrics::roc`]).
pub fn verification(p: &PairScores) -> Result<Verification> {
    let roc = metrics::roc(&p.distances, &p.same)?;
    let (eer, eer_threshold) = roc.eer();
    Ok(Verification {
        auc: roc.auc(),
        eer,
        eer_threshold,
        pairs: p.same.len(),
        positives: p.same.iter().filter(|s| **s).count(),
    })
}

/// Result of N-way K-shot identification episodes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Episodes {
    /// Classes per episode.
    pub ways: usize,
    /// Enrolled images per class.
    pub shots: usize,
    /// Number of episodes.
    pub episodes: usize,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Half-width of the 95% confidence interval of the mean (NaN for one episode).
    pub ci95: f64,
}

/// How an episode's query is matched to a way.
#[derive(Clone, Copy)]
enum Rule {
    /// [`Episode::accuracy`](metrics::Episode::accuracy): the mean distance to the way's shots.
    Mean,
    /// [`Episode::rank1`](metrics::Episode::rank1): the distance to the way's nearest shot.
    Nearest,
}

/// `count` episodes drawn by [`Episode::sample`](metrics::Episode::sample) from a generator seeded with `seed`, one
/// query per class, scored by `rule`; each episode's query-to-support distances are
/// computed in parallel first.
fn run(
    e: &Embedded,
    d: Matcher,
    ways: usize,
    shots: usize,
    count: usize,
    seed: u64,
    rule: Rule,
) -> Result<Episodes> {
    let labels = e
        .labels
        .iter()
        .map(|&l| u32::try_from(l))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| InferError::Config("episodes: a class index beyond u32".into()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Where each item of the current episode sits in its table: a query's row, a support
    // item's column (an episode's queries and support items are distinct items).
    let mut at = vec![0usize; e.len()];
    let summary = metrics::run_episodes_with(&labels, ways, shots, 1, count, &mut rng, |ep| {
        let support: Vec<usize> = ep.support.iter().flatten().copied().collect();
        for (j, &s) in support.iter().enumerate() {
            at[s] = j;
        }
        for (i, &(q, _)) in ep.queries.iter().enumerate() {
            at[q] = i;
        }
        let ns = support.len();
        let table: Vec<f32> = (0..ep.queries.len() * ns)
            .into_par_iter()
            .map(|k| d.between(e.row(ep.queries[k / ns].0), e.row(support[k % ns])))
            .collect();
        let distance = |q: usize, s: usize| f64::from(table[at[q] * ns + at[s]]);
        match rule {
            Rule::Mean => ep.accuracy(distance),
            Rule::Nearest => ep.rank1(distance),
        }
    })?;
    Ok(Episodes {
        ways,
        shots,
        episodes: summary.accuracies.len(),
        accuracy: summary.mean,
        ci95: summary.ci95,
    })
}

/// N-way K-shot episodes ([`Episode::sample`](metrics::Episode::sample), [`Episode::accuracy`](metrics::Episode::accuracy)): each picks `ways`
/// classes with at least `shots + 1` images, enrols `shots` images of each and classifies
/// one more image of each by the way at the least mean distance.
pub fn episodes(
    e: &Embedded,
    d: Matcher,
    ways: usize,
    shots: usize,
    count: usize,
    seed: u64,
) -> Result<Episodes> {
    run(e, d, ways, shots, count, seed, Rule::Mean)
}

/// Rank-1 identification episodes ([`Episode::sample`](metrics::Episode::sample), [`Episode::rank1`](metrics::Episode::rank1)): as [`episodes`],
/// each query classified by its nearest enrolled image, as a gallery search does.
pub fn rank1(
    e: &Embedded,
    d: Matcher,
    ways: usize,
    shots: usize,
    count: usize,
    seed: u64,
) -> Result<Episodes> {
    run(e, d, ways, shots, count, seed, Rule::Nearest)
}

/// The `unseen` protocol on a class-disjoint test set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnseenReport {
    /// Verification over pairs of the test set.
    pub verification: Verification,
    /// Accuracy at the model's stored threshold (none if uncalibrated).
    pub accuracy_at_threshold: Option<f64>,
    /// The stored threshold.
    pub threshold: Option<f64>,
    /// N-way one-shot episodes.
    pub oneshot: Episodes,
    /// Rank-1 identification with `shots` enrolled images per class, over all classes.
    pub rank1: Option<Episodes>,
    /// Number of test images and classes.
    pub images: usize,
    /// Number of test classes.
    pub classes: usize,
}

/// The `unseen` protocol's result as `siamese eval --json` prints it: one flat object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnseenSummary {
    /// Always `unseen`.
    pub protocol: &'static str,
    /// Accuracy at the stored threshold.
    pub accuracy: Option<f64>,
    /// ROC AUC over the pairs.
    pub auc: f64,
    /// Equal error rate.
    pub eer: f64,
    /// Number of pairs.
    pub n: usize,
    /// N-way one-shot accuracy.
    pub oneshot_accuracy: f64,
    /// Half-width of its 95% confidence interval.
    pub oneshot_ci95: f64,
    /// Ways of the one-shot episodes.
    pub ways: usize,
    /// Number of one-shot episodes.
    pub episodes: usize,
    /// Rank-1 identification accuracy, when measured.
    pub rank1: Option<f64>,
    /// The stored threshold.
    pub threshold: Option<f64>,
    /// Test images.
    pub images: usize,
    /// Test classes.
    pub classes: usize,
}

impl UnseenReport {
    /// The flat summary `--json` prints.
    pub fn summary(&self) -> UnseenSummary {
        UnseenSummary {
            protocol: "unseen",
            accuracy: self.accuracy_at_threshold,
            auc: self.verification.auc,
            eer: self.verification.eer,
            n: self.verification.pairs,
            oneshot_accuracy: self.oneshot.accuracy,
            oneshot_ci95: self.oneshot.ci95,
            ways: self.oneshot.ways,
            episodes: self.oneshot.episodes,
            rank1: self.rank1.as_ref().map(|e| e.accuracy),
            threshold: self.threshold,
            images: self.images,
            classes: self.classes,
        }
    }
}

/// Embeds every image of `cache` with `model`, in evaluation mode, with its test-time
/// augmentation.
pub fn embed(model: &Model, cache: &ImageCache) -> Result<Embedded> {
    embed_with(&model.encoder, cache, model.meta.tta)
}

/// Embeds every image of `cache` with `encoder`, in evaluation mode, with test-time
/// augmentation `tta`: a row is an image's representation (a set of encodings for
/// [`Tta::AffineSet`], compared with [`Tta::matcher`]).
pub fn embed_with(encoder: &Encoder, cache: &ImageCache, tta: Tta) -> Result<Embedded> {
    let dim = encoder.config().output_dim() * tta.set_size();
    Embedded::new(
        embed_flat(encoder, &cache.data, cache.len(), EMBED_BATCH, tta)?,
        cache.labels.clone(),
        dim,
    )
}

/// Runs the `unseen` protocol on embeddings of a class-disjoint test set: verification over
/// its pairs (all of them, or a sample when there are many), accuracy at `threshold` (the
/// model's stored one) when there is one, `ways`-way one-shot episodes ([`episodes`]), and,
/// when `shots > 1`, rank-1 identification over every class with more than `shots` images
/// ([`rank1`], at most 200 episodes).
pub fn unseen(
    e: &Embedded,
    d: Matcher,
    threshold: Option<f32>,
    ways: usize,
    episodes_n: usize,
    shots: usize,
    seed: u64,
) -> Result<UnseenReport> {
    // Set representations cost `set²` encoding distances a pair: fewer pairs are sampled.
    let max_pairs = if d.set > 1 { 200_000 } else { 2_000_000 };
    let p = pairs(e, d, max_pairs, seed);
    let verification = verification(&p)?;
    let accuracy_at_threshold = threshold
        .map(|t| metrics::accuracy_at(&p.distances, &p.same, f64::from(t)))
        .transpose()?;
    let by_class = e.by_class();
    let classes = by_class.iter().filter(|m| !m.is_empty()).count();
    let oneshot = episodes(e, d, ways, 1, episodes_n, seed)?;
    let full = by_class.iter().filter(|m| m.len() > shots).count();
    let rank1 = if shots > 1 && full >= 2 {
        Some(rank1(e, d, full, shots, episodes_n.min(200), seed ^ 1)?)
    } else {
        None
    };
    Ok(UnseenReport {
        verification,
        accuracy_at_threshold,
        threshold: threshold.map(f64::from),
        oneshot,
        rank1,
        images: e.len(),
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use siamese_ops::distance::Distance;

    fn points() -> Embedded {
        // Two tight clusters far apart: class 0 near (0, 0), class 1 near (10, 0).
        let emb = vec![
            0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 10.0, 0.0, 10.1, 0.0, 10.0, 0.1,
        ];
        Embedded::new(emb, vec![0, 0, 0, 1, 1, 1], 2).expect("sizes agree")
    }

    #[test]
    fn separated_clusters_verify_and_identify_perfectly() -> Result<()> {
        let e = points();
        let p = pairs(&e, Distance::SquaredL2.into(), 1000, 0);
        // 6 points give 15 pairs, 2 · 3 of them within a cluster.
        assert_eq!(p.same.len(), 15);
        assert_eq!(p.same.iter().filter(|s| **s).count(), 6);
        let v = verification(&p)?;
        assert!((v.auc - 1.0).abs() < 1e-12);
        assert!(v.eer.abs() < 1e-12);
        let ep = episodes(&e, Distance::SquaredL2.into(), 2, 1, 20, 0)?;
        assert!((ep.accuracy - 1.0).abs() < 1e-12);
        assert_eq!((ep.episodes, ep.ci95), (20, 0.0));
        let r = rank1(&e, Distance::SquaredL2.into(), 2, 2, 20, 0)?;
        assert!((r.accuracy - 1.0).abs() < 1e-12);
        let u = unseen(&e, Distance::SquaredL2.into(), Some(1.0), 2, 20, 2, 0)?;
        assert_eq!(u.accuracy_at_threshold, Some(1.0));
        assert_eq!((u.images, u.classes, u.verification.pairs), (6, 2, 15));
        assert_eq!(u.rank1.map(|r| r.accuracy), Some(1.0));
        // Too few classes for the ways asked is an error, not a panic.
        assert!(episodes(&e, Distance::SquaredL2.into(), 3, 1, 20, 0).is_err());
        Ok(())
    }

    /// With one shot a way's mean distance is its nearest, so one-shot episodes and rank-1
    /// agree episode by episode (same draws from the same seed).
    #[test]
    fn one_shot_episodes_and_rank1_agree() -> Result<()> {
        let (n, dim) = (60, 3);
        let emb: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 7919) % 113) as f32 / 113.0)
            .collect();
        let e = Embedded::new(emb, (0..n).map(|i| i % 6).collect(), dim)?;
        let d = Distance::SquaredL2.into();
        assert_eq!(episodes(&e, d, 4, 1, 50, 5)?, rank1(&e, d, 4, 1, 50, 5)?);
        Ok(())
    }

    /// Sets whose means coincide but whose members do not: two classes of 1-d sets of two,
    /// class 0 `{-1, 1}` (and `{-1.1, 1.1}`), class 1 `{0, 0}` (and `{0.1, -0.1}`). Every mean is
    /// 0, so mean encodings cannot tell the classes apart; the Chamfer distance can.
    #[test]
    fn set_rows_are_compared_as_sets() -> Result<()> {
        let emb = vec![-1.0, 1.0, -1.1, 1.1, 0.0, 0.0, 0.1, -0.1];
        let e = Embedded::new(emb, vec![0, 0, 1, 1], 2)?;
        let d = Matcher {
            distance: Distance::SquaredL2,
            set: 2,
        };
        let p = pairs(&e, d, 1000, 0);
        // Pair order: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3). (0,1): 0.01 each way, so 0.02.
        let want = [0.02, 2.0, 1.62, 2.42, 2.0, 0.02];
        for (got, want) in p.distances.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{:?}", p.distances);
        }
        assert_eq!(verification(&p)?.auc, 1.0);
        assert_eq!(episodes(&e, d, 2, 1, 20, 0)?.accuracy, 1.0);
        Ok(())
    }

    #[test]
    fn distances_match_hand_computed_values() {
        // The f32 path used by evaluation: a 3-4-5 triangle, and orthogonal vectors.
        let a = [3.0f32, 4.0];
        let b = [0.0f32, 0.0];
        assert_eq!(Distance::SquaredL2.between(&a, &b), 25.0);
        assert_eq!(Distance::L2.between(&a, &b), 5.0);
        assert_eq!(Distance::L1.between(&a, &b), 7.0);
        assert!((Distance::Cosine.between(&a, &[4.0, -3.0]) - 1.0).abs() < 1e-6);
    }
}
