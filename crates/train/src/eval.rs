//! Evaluation during training: validation on held-out classes and threshold calibration.
//! Evaluation on embeddings itself (pairs, verification, episodes, rank-1, the `unseen`
//! protocol) lives in `siamese_infer::eval` and is re-exported here.

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use siamese_infer::Calibration;
use siamese_ops::distance::Matcher;
use siamese_pairs::metrics;

pub use siamese_infer::eval::{
    embed, embed_with, episodes, pairs, rank1, unseen, verification, Embedded, Episodes,
    PairScores, UnseenReport, UnseenSummary, Verification,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use siamese_ops::distance::Distance;

    #[test]
    fn separated_clusters_calibrate_between_them() -> Result<()> {
        // Two tight clusters far apart: class 0 near (0, 0), class 1 near (10, 0).
        let emb = vec![
            0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 10.0, 0.0, 10.1, 0.0, 10.0, 0.1,
        ];
        let e = Embedded::new(emb, vec![0, 0, 0, 1, 1, 1], 2)?;
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
}
