//! The evaluation protocols (`DESIGN.md`, "Protocols to support"), each a function from a
//! model and its protocol data to a typed report. The scores are `siamese_pairs::metrics`'
//! definitions: ROC, AUC, EER, TAR@FAR, the accuracy-maximising threshold, k-fold accuracy,
//! N-way one-shot accuracy, N-way K-shot episodes and rank-1.

use crate::error::Result;
use crate::eval::{self, Embedded, PairScores, UnseenReport};
use crate::images::load_sources;
use crate::model::{Model, EMBED_BATCH};
use serde::Serialize;
use siamese_data::{Dataset, ImageCache, ImageSource, LfwPairs, OneShotRuns};
use siamese_pairs::metrics;
use std::path::Path;

/// Settings of the `unseen` protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnseenOptions {
    /// Ways of the one-shot episodes (at most the number of classes).
    pub ways: usize,
    /// Number of one-shot episodes (rank-1: at most 200).
    pub episodes: usize,
    /// Enrolled images per class for rank-1 identification (1: no rank-1).
    pub shots: usize,
    /// Seed of the pair sample and the episodes.
    pub seed: u64,
}

impl Default for UnseenOptions {
    /// 10 ways, 2000 episodes, 5 shots, seed 0 (`siamese eval`'s defaults).
    fn default() -> Self {
        UnseenOptions {
            ways: 10,
            episodes: 2000,
            shots: 5,
            seed: 0,
        }
    }
}

/// The `unseen` protocol's report with the embeddings it was computed on (for plots).
#[derive(Clone, Debug)]
pub struct UnseenEval {
    /// The report.
    pub report: UnseenReport,
    /// The test set's representations and labels.
    pub embedded: Embedded,
}

/// The `unseen` protocol: embeds every image of a class-disjoint test set with `model` and
/// runs [`eval::unseen`] at the model's stored threshold, with `opts.ways` capped at the
/// number of classes. An image that cannot be read is an error naming it.
///
/// A face model embeds each image's largest face as the detector finds it
/// ([`eval_unseen_faces`] with the default options); an image without one is
/// [`InferError::NoFace`](crate::InferError::NoFace).
pub fn eval_unseen(model: &Model, data: &Dataset, opts: &UnseenOptions) -> Result<UnseenEval> {
    if model.is_face_model() {
        let (e, no_face) = eval_unseen_faces(model, data, opts, &crate::FaceOptions::default())?;
        return match no_face.into_iter().next() {
            Some(path) => Err(crate::InferError::NoFace { path }),
            None => Ok(e),
        };
    }
    let (cache, _) = ImageCache::load_all(data, &model.meta.preprocess, false)?;
    unseen_on(model, data, &cache, opts)
}

/// The `unseen` protocol for a face model: each image's largest face (as `face.detect`
/// finds it, or the whole image) aligned and encoded ([`Model::face_cache`]); images without
/// a face are left out of the test set and returned, in order, beside the report.
pub fn eval_unseen_faces(
    model: &Model,
    data: &Dataset,
    opts: &UnseenOptions,
    face: &crate::FaceOptions,
) -> Result<(UnseenEval, Vec<std::path::PathBuf>)> {
    let fc = model.face_cache(data, face)?;
    let e = unseen_on(model, data, &fc.cache, opts)?;
    Ok((e, fc.no_face))
}

/// [`eval::unseen`] on the images of `cache` (from `data`).
fn unseen_on(
    model: &Model,
    data: &Dataset,
    cache: &ImageCache,
    opts: &UnseenOptions,
) -> Result<UnseenEval> {
    let ways = opts.ways.min(data.num_classes());
    let embedded = eval::embed(model, cache)?;
    let report = eval::unseen(
        &embedded,
        model.matcher(),
        model.threshold(),
        ways,
        opts.episodes,
        opts.shots,
        opts.seed,
    )?;
    Ok(UnseenEval { report, embedded })
}

/// One run of the one-shot runs protocol.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunScore {
    /// The run's folder name.
    pub run: String,
    /// The fraction of its trials classified right (0 for a run without trials).
    pub accuracy: f64,
    /// Its number of trials.
    pub n: usize,
}

/// The one-shot runs protocol's report, as `siamese eval --json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunsReport {
    /// Always `oneshot-runs`.
    pub protocol: &'static str,
    /// The fraction of all trials classified right.
    pub accuracy: f64,
    /// The number of trials.
    pub n: usize,
    /// Each run's score.
    pub runs: Vec<RunScore>,
}

/// Lake et al.'s one-shot runs: each test item is classified as the training image (one per
/// class) nearest to it ([`metrics::n_way_one_shot`]); the score is the accuracy over all
/// items, and per run.
pub fn eval_runs(model: &Model, runs: &OneShotRuns) -> Result<RunsReport> {
    let pre = &model.meta.preprocess;
    let dim = model.row_len();
    let d = model.matcher();
    let mut per_run = Vec::new();
    let (mut all_rows, mut all_truth) = (Vec::new(), Vec::new());
    for run in &runs.runs {
        let training: Vec<&ImageSource> = run.training.iter().collect();
        let tests: Vec<&ImageSource> = run.trials.iter().map(|t| &t.test).collect();
        let te = model.embed_flat(&load_sources(&training, pre)?, training.len(), EMBED_BATCH)?;
        let qe = model.embed_flat(&load_sources(&tests, pre)?, tests.len(), EMBED_BATCH)?;
        let rows: Vec<Vec<f32>> = qe
            .chunks_exact(dim)
            .map(|q| te.chunks_exact(dim).map(|t| d.between(q, t)).collect())
            .collect();
        let truth: Vec<usize> = run.trials.iter().map(|t| t.answer).collect();
        let accuracy = if rows.is_empty() {
            0.0
        } else {
            metrics::n_way_one_shot(&rows, &truth)?
        };
        per_run.push(RunScore {
            run: run.name.clone(),
            accuracy,
            n: rows.len(),
        });
        all_rows.extend(rows);
        all_truth.extend(truth);
    }
    let accuracy = if all_rows.is_empty() {
        0.0
    } else {
        metrics::n_way_one_shot(&all_rows, &all_truth)?
    };
    Ok(RunsReport {
        protocol: "oneshot-runs",
        accuracy,
        n: all_rows.len(),
        runs: per_run,
    })
}

/// The LFW pairs protocol's report, as `siamese eval --json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairsReport {
    /// Always `pairs`.
    pub protocol: &'static str,
    /// Accuracy: at the development threshold when there is one, else the k-fold mean when
    /// there are several folds, else at the model's threshold (or the EER threshold).
    pub accuracy: f64,
    /// Standard deviation of the fold accuracies (several folds only).
    pub std: Option<f64>,
    /// Standard error of their mean, LFW's `S_E` (several folds only).
    pub std_err: Option<f64>,
    /// The threshold chosen on the development pairs, when given.
    pub dev_threshold: Option<f32>,
    /// ROC AUC over all pairs.
    pub auc: f64,
    /// Equal error rate.
    pub eer: f64,
    /// True accept rate at a false accept rate of at most 1e-3.
    #[serde(rename = "tar_at_far_1e-3")]
    pub tar_at_far_1e3: f64,
    /// True accept rate at a false accept rate of at most 1e-2.
    #[serde(rename = "tar_at_far_1e-2")]
    pub tar_at_far_1e2: f64,
    /// Number of pairs.
    pub n: usize,
    /// Number of folds (at least 1).
    pub folds: usize,
}

/// The LFW pairs protocol on `pairs` (images under `images`, LFW's `name/name_0001.jpg`):
/// ROC, AUC, EER and TAR@FAR over all pairs; accuracy at the threshold picked by
/// [`metrics::best_threshold`] on `dev` pairs when given, else the k-fold accuracy
/// ([`metrics::kfold_accuracy`]: each fold at the threshold best on the others), else the
/// accuracy at the model's threshold (or the EER threshold when it has none).
pub fn eval_pairs(
    model: &Model,
    pairs: &LfwPairs,
    images: &Path,
    dev: Option<&LfwPairs>,
) -> Result<PairsReport> {
    let p = pair_distances(model, pairs, images)?;
    let (distances, same) = (&p.distances, &p.same);
    let folds: Vec<usize> = pairs.pairs.iter().map(|p| p.fold).collect();
    let v = eval::verification(&p)?;
    let k = pairs.folds.max(1);
    let kf = if k > 1 {
        Some(metrics::kfold_accuracy(distances, same, &folds, k)?)
    } else {
        None
    };
    let roc = metrics::roc(distances, same)?;
    let (tar3, _) = roc.tar_at_far(1e-3);
    let (tar2, _) = roc.tar_at_far(1e-2);
    let dev_threshold = match dev {
        Some(dev) => {
            let t = pair_distances(model, dev, images)?;
            Some(metrics::best_threshold(&t.distances, &t.same)?.0 as f32)
        }
        None => None,
    };
    // Distances are f32; a threshold is compared as the f32 it is reported as.
    let accuracy = match (&kf, dev_threshold) {
        (_, Some(t)) => metrics::accuracy_at(distances, same, f64::from(t))?,
        (Some((mean, _, _)), None) => *mean,
        (None, None) => {
            let t = model.threshold().unwrap_or(v.eer_threshold as f32);
            metrics::accuracy_at(distances, same, f64::from(t))?
        }
    };
    Ok(PairsReport {
        protocol: "pairs",
        accuracy,
        std: kf.map(|k| k.1),
        std_err: kf.map(|k| k.2),
        dev_threshold,
        auc: v.auc,
        eer: v.eer,
        tar_at_far_1e3: tar3,
        tar_at_far_1e2: tar2,
        n: same.len(),
        folds: k,
    })
}

/// The distances of LFW-style pairs (images under `images`) and whether each pair is
/// matched, in the file's order.
pub fn pair_distances(model: &Model, pairs: &LfwPairs, images: &Path) -> Result<PairScores> {
    let mut paths = Vec::with_capacity(2 * pairs.pairs.len());
    for p in &pairs.pairs {
        let (x, y) = p.paths(images);
        paths.push(x);
        paths.push(y);
    }
    let e = model.embed_paths(&paths)?;
    let dim = model.row_len();
    let d = model.matcher();
    Ok(PairScores {
        distances: e
            .chunks_exact(2 * dim)
            .map(|xy| d.between(&xy[..dim], &xy[dim..]))
            .collect(),
        same: pairs.pairs.iter().map(|p| p.is_same).collect(),
    })
}
