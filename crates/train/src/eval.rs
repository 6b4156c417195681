//! Evaluation on embeddings: verification over pairs (ROC AUC, EER, accuracy at a threshold),
//! N-way K-shot identification episodes, threshold calibration, and the `unseen` protocol.

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::model::{embed_flat, Calibration, Model, Tta};
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
            return Err(TrainError::Config(format!(
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

    fn by_class(&self) -> Vec<Vec<usize>> {
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

/// ROC AUC and EER of pair scores.
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
    /// Half-width of the 95% confidence interval of the mean.
    pub ci95: f64,
}

/// N-way K-shot episodes: each picks `ways` classes with at least `shots + 1` images, enrols
/// `shots` images of each and classifies one more image of each by its nearest enrolled image.
pub fn episodes(
    e: &Embedded,
    d: Matcher,
    ways: usize,
    shots: usize,
    count: usize,
    seed: u64,
) -> Result<Episodes> {
    let classes: Vec<Vec<usize>> = e
        .by_class()
        .into_iter()
        .filter(|m| m.len() > shots)
        .collect();
    if classes.len() < ways || ways < 2 || shots == 0 {
        return Err(TrainError::Config(format!(
            "{ways}-way {shots}-shot episodes need {ways} classes with at least {} images; there are {}",
            shots + 1,
            classes.len()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut accs = Vec::with_capacity(count);
    let mut order: Vec<usize> = (0..classes.len()).collect();
    for _ in 0..count {
        order.shuffle(&mut rng);
        let chosen = &order[..ways];
        let mut support = Vec::new();
        let mut queries = Vec::new();
        for (w, &c) in chosen.iter().enumerate() {
            let mut m = classes[c].clone();
            m.shuffle(&mut rng);
            for &i in &m[..shots] {
                support.push((i, w));
            }
            queries.push((m[shots], w));
        }
        let correct = queries
            .par_iter()
            .filter(|&&(q, truth)| {
                let mut best = (f32::INFINITY, usize::MAX);
                for &(s, w) in &support {
                    let dist = d.between(e.row(q), e.row(s));
                    if dist < best.0 {
                        best = (dist, w);
                    }
                }
                best.1 == truth
            })
            .count();
        accs.push(correct as f64 / queries.len() as f64);
    }
    let n = accs.len().max(1) as f64;
    let mean = accs.iter().sum::<f64>() / n;
    let var = accs.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / (n - 1.0).max(1.0);
    Ok(Episodes {
        ways,
        shots,
        episodes: accs.len(),
        accuracy: mean,
        ci95: 1.96 * (var / n).sqrt(),
    })
}

/// The metrics a training run validates with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ValidationReport {
    /// ROC AUC over validation pairs.
    pub auc: f64,
    /// Equal error rate over validation pairs.
    pub eer: f64,
    /// N-way one-shot accuracy over episodes.
    pub oneshot_accuracy: f64,
    /// Ways of the episodes (fewer than configured when there are fewer classes).
    pub ways: usize,
}

/// Validates embeddings of held-out classes as `config.validation` says.
pub fn validate(e: &Embedded, config: &TrainConfig, seed: u64) -> Result<ValidationReport> {
    let d = config.matcher();
    let v = verification(&pairs(e, d, 200_000, seed))?;
    let n_classes = e.by_class().iter().filter(|m| m.len() > 1).count();
    let ways = config.validation.ways.min(n_classes);
    let oneshot = if ways >= 2 {
        episodes(e, d, ways, 1, config.validation.episodes.max(1), seed)?.accuracy
    } else {
        0.0
    };
    Ok(ValidationReport {
        auc: v.auc,
        eer: v.eer,
        oneshot_accuracy: oneshot,
        ways,
    })
}

/// Picks the threshold that maximises accuracy on balanced pairs: every same-class pair (up to
/// 20,000) and as many random different-class pairs.
pub fn calibrate(e: &Embedded, d: Matcher, seed: u64) -> Result<Calibration> {
    let all = pairs(e, d, 40_000, seed);
    let positives: Vec<usize> = (0..all.same.len()).filter(|&i| all.same[i]).collect();
    let mut negatives: Vec<usize> = (0..all.same.len()).filter(|&i| !all.same[i]).collect();
    if positives.is_empty() || negatives.is_empty() {
        return Err(TrainError::Config(
            "calibration needs same-class and different-class pairs".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xba1a);
    negatives.shuffle(&mut rng);
    negatives.truncate(positives.len());
    let idx: Vec<usize> = positives.iter().chain(negatives.iter()).copied().collect();
    let dist: Vec<f32> = idx.iter().map(|&i| all.distances[i]).collect();
    let same: Vec<bool> = idx.iter().map(|&i| all.same[i]).collect();
    let (threshold, accuracy, far, frr) = metrics::best_threshold(&dist, &same)?;
    Ok(Calibration {
        threshold: threshold as f32,
        accuracy: accuracy as f32,
        far: far as f32,
        frr: frr as f32,
        pairs: same.len(),
        source: "held-out validation classes".into(),
    })
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

/// Embeds every image of `cache` with `model`, in evaluation mode.
pub fn embed(model: &Model, cache: &ImageCache) -> Result<Embedded> {
    embed_with(&model.encoder, cache, model.meta.tta)
}

/// Embeds every image of `cache` with `encoder`, in evaluation mode, with test-time
/// augmentation `tta`: a row is an image's representation (a set of encodings for
/// [`Tta::AffineSet`], compared with [`Tta::matcher`]).
pub fn embed_with(encoder: &Encoder, cache: &ImageCache, tta: Tta) -> Result<Embedded> {
    let dim = encoder.config().output_dim() * tta.set_size();
    Embedded::new(
        embed_flat(encoder, &cache.data, cache.len(), crate::EMBED_BATCH, tta)?,
        cache.labels.clone(),
        dim,
    )
}

/// Runs the `unseen` protocol on embeddings of a class-disjoint test set, deciding "same" below
/// `threshold` (the model's stored one) when there is one.
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
    let accuracy_at_threshold = threshold.map(|t| {
        let ok = p
            .distances
            .iter()
            .zip(&p.same)
            .filter(|(d, s)| (**d < t) == **s)
            .count();
        ok as f64 / p.same.len().max(1) as f64
    });
    let by_class = e.by_class();
    let classes = by_class.iter().filter(|m| !m.is_empty()).count();
    let oneshot = episodes(e, d, ways, 1, episodes_n, seed)?;
    let full = by_class.iter().filter(|m| m.len() > shots).count();
    let rank1 = if shots > 1 && full >= 2 {
        Some(episodes(e, d, full, shots, episodes_n.min(200), seed ^ 1)?)
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
        let cal = calibrate(&e, Distance::SquaredL2.into(), 0)?;
        // Within-cluster squared distances are at most 0.02; across at least 98.01.
        assert!(
            cal.threshold > 0.02 && cal.threshold < 98.01,
            "{}",
            cal.threshold
        );
        assert_eq!(cal.accuracy, 1.0);
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
