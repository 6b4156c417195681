//! Verification and identification metrics on plain slices (no tensors).
//!
//! Scores are distances: LOWER means "same". A pair is predicted "same" when its distance is
//! below the threshold (`d < t`); ROC points are the exception, described on [`Roc`].
//! Distances may be `f32` or `f64` (anything `Copy + Into<f64>`); results are `f64`.

use std::collections::BTreeMap;

use candle_core::{bail, Result};
use rand::seq::index;
use rand::Rng;

/// Checks lengths and values; returns the distances as `f64`.
fn prepare<T: Copy + Into<f64>>(op: &str, distances: &[T], is_same: &[bool]) -> Result<Vec<f64>> {
    if distances.len() != is_same.len() {
        bail!(
            "{op}: {} distances but {} same/different flags",
            distances.len(),
            is_same.len()
        );
    }
    if distances.is_empty() {
        bail!("{op}: no pairs");
    }
    let d: Vec<f64> = distances.iter().map(|v| (*v).into()).collect();
    if let Some(i) = d.iter().position(|v| v.is_nan()) {
        bail!("{op}: distance {i} is NaN");
    }
    Ok(d)
}

/// `(distance, is_same)` sorted by distance.
fn sorted(d: &[f64], is_same: &[bool]) -> Vec<(f64, bool)> {
    let mut v: Vec<(f64, bool)> = d.iter().copied().zip(is_same.iter().copied()).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// A receiver operating characteristic.
///
/// Point `i` predicts "same" when `d <= thresholds[i]`: `tpr[i]` is the fraction of same
/// pairs accepted (true accept rate), `fpr[i]` the fraction of different pairs accepted (false
/// accept rate). Thresholds are the distinct distances in ascending order, preceded by
/// `-inf` (the point `(0, 0)`); the last point is `(1, 1)`. Ties are one point.
#[derive(Clone, Debug, PartialEq)]
pub struct Roc {
    /// False positive (false accept) rate per point, non-decreasing.
    pub fpr: Vec<f64>,
    /// True positive (true accept) rate per point, non-decreasing.
    pub tpr: Vec<f64>,
    /// The threshold of each point.
    pub thresholds: Vec<f64>,
}

/// The ROC of a set of verification distances. Fails when the lengths differ, a distance is
/// NaN, or there is no same pair or no different pair.
pub fn roc<T: Copy + Into<f64>>(distances: &[T], is_same: &[bool]) -> Result<Roc> {
    let d = prepare("roc", distances, is_same)?;
    let n_same = is_same.iter().filter(|s| **s).count();
    let n_diff = is_same.len() - n_same;
    if n_same == 0 || n_diff == 0 {
        bail!("roc: need both same and different pairs, got {n_same} same and {n_diff} different");
    }
    let v = sorted(&d, is_same);
    let mut out = Roc {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::NEG_INFINITY],
    };
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < v.len() {
        let t = v[i].0;
        while i < v.len() && v[i].0 == t {
            if v[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        out.fpr.push(fp as f64 / n_diff as f64);
        out.tpr.push(tp as f64 / n_same as f64);
        out.thresholds.push(t);
    }
    Ok(out)
}

impl Roc {
    /// The number of points (the shortest of the three vectors, should they differ).
    pub fn len(&self) -> usize {
        self.fpr
            .len()
            .min(self.tpr.len())
            .min(self.thresholds.len())
    }

    /// Whether there are no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The area under the curve, by the trapezoid rule (ties count one half, as in the
    /// Mann-Whitney statistic).
    pub fn auc(&self) -> f64 {
        let mut area = 0.0;
        for i in 1..self.len() {
            area += (self.fpr[i] - self.fpr[i - 1]) * (self.tpr[i] + self.tpr[i - 1]) / 2.0;
        }
        area
    }

    /// The equal error rate and the threshold there: where the false accept rate equals the
    /// false reject rate `1 - tpr`, linearly interpolated between the two ROC points that
    /// bracket the crossing (thresholds too, unless the lower one is `-inf`, then the upper
    /// point's threshold). When the crossing is a ROC point, its threshold: for perfectly
    /// separated scores that is the largest same-pair distance, with EER 0.
    pub fn eer(&self) -> (f64, f64) {
        let g = |i: usize| self.fpr[i] - (1.0 - self.tpr[i]);
        // g(0) = -1 and g(last) = 1, so a crossing exists.
        let Some(i) = (0..self.len()).find(|i| g(*i) >= 0.0) else {
            return (f64::NAN, f64::NAN);
        };
        if g(i) == 0.0 || i == 0 {
            return (self.fpr[i], self.thresholds[i]);
        }
        let (g0, g1) = (g(i - 1), g(i));
        let t = -g0 / (g1 - g0);
        let eer = self.fpr[i - 1] + t * (self.fpr[i] - self.fpr[i - 1]);
        let (th0, th1) = (self.thresholds[i - 1], self.thresholds[i]);
        let threshold = if th0.is_finite() {
            th0 + t * (th1 - th0)
        } else {
            th1
        };
        (eer, threshold)
    }

    /// The true accept rate at a false accept rate of at most `far`, and its threshold: the
    /// ROC point with the highest `tpr` among those with `fpr <= far` (no interpolation, so
    /// the FAR is never exceeded). With no such point beyond the origin, `(0, -inf)`.
    pub fn tar_at_far(&self, far: f64) -> (f64, f64) {
        let mut best = (0.0, f64::NEG_INFINITY);
        for i in 0..self.len() {
            if self.fpr[i] <= far && self.tpr[i] >= best.0 {
                best = (self.tpr[i], self.thresholds[i]);
            }
        }
        best
    }
}

/// [`Roc::auc`] of [`roc`].
pub fn auc<T: Copy + Into<f64>>(distances: &[T], is_same: &[bool]) -> Result<f64> {
    Ok(roc(distances, is_same)?.auc())
}

/// [`Roc::eer`] of [`roc`]: `(eer, threshold)`.
pub fn eer<T: Copy + Into<f64>>(distances: &[T], is_same: &[bool]) -> Result<(f64, f64)> {
    Ok(roc(distances, is_same)?.eer())
}

/// [`Roc::tar_at_far`] of [`roc`]: `(tar, threshold)`.
pub fn tar_at_far<T: Copy + Into<f64>>(
    distances: &[T],
    is_same: &[bool],
    far: f64,
) -> Result<(f64, f64)> {
    Ok(roc(distances, is_same)?.tar_at_far(far))
}

/// The fraction of pairs classified correctly by "same iff `d < threshold`".
pub fn accuracy_at<T: Copy + Into<f64>>(
    distances: &[T],
    is_same: &[bool],
    threshold: f64,
) -> Result<f64> {
    let d = prepare("accuracy_at", distances, is_same)?;
    let correct = d
        .iter()
        .zip(is_same)
        .filter(|(d, s)| (**d < threshold) == **s)
        .count();
    Ok(correct as f64 / d.len() as f64)
}

/// The threshold that maximises accuracy under "same iff `d < threshold`", and at it:
/// `(threshold, accuracy, far, frr)`, with `far` = different pairs accepted / different pairs
/// and `frr` = same pairs rejected / same pairs (0 when there are none of that kind).
///
/// Candidates are the smallest distance (rejects everything), the midpoints between
/// neighbouring distinct distances, and the largest distance plus one (accepts everything).
/// Among equally accurate candidates the smallest threshold wins.
pub fn best_threshold<T: Copy + Into<f64>>(
    distances: &[T],
    is_same: &[bool],
) -> Result<(f64, f64, f64, f64)> {
    let d = prepare("best_threshold", distances, is_same)?;
    let v = sorted(&d, is_same);
    let n = v.len();
    let n_same = is_same.iter().filter(|s| **s).count();
    let n_diff = n - n_same;
    // Threshold below group g: accepted = all items before g.
    let mut tp = 0usize; // same accepted
    let mut fp = 0usize; // different accepted
    let score = |tp: usize, fp: usize| tp + (n_diff - fp);
    let mut best = (v[0].0, score(0, 0), 0usize, 0usize);
    let mut i = 0;
    while i < n {
        let t = v[i].0;
        while i < n && v[i].0 == t {
            if v[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let threshold = if i < n { (t + v[i].0) / 2.0 } else { t + 1.0 };
        if score(tp, fp) > best.1 {
            best = (threshold, score(tp, fp), tp, fp);
        }
    }
    let (threshold, correct, tp, fp) = best;
    let rate = |num: usize, den: usize| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    Ok((
        threshold,
        correct as f64 / n as f64,
        rate(fp, n_diff),
        rate(n_same - tp, n_same),
    ))
}

/// Mean, sample standard deviation (`n - 1`) and standard error of the mean (`std / sqrt(n)`);
/// the deviations are `NaN` for fewer than two values, everything for none.
pub fn mean_std_err(values: &[f64]) -> (f64, f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::NAN, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    let std = var.sqrt();
    (mean, std, std / n.sqrt())
}

/// k-fold verification accuracy, the LFW protocol: for each fold, the threshold is chosen by
/// [`best_threshold`] on the other `k - 1` folds and the accuracy measured on this fold.
/// Returns `(mean, std, std_err)` over the `k` fold accuracies, with the sample standard
/// deviation and `std_err = std / sqrt(k)` (LFW's `S_E`).
///
/// `folds[i]` is pair `i`'s fold, in `0..k`; every fold must have at least one pair.
pub fn kfold_accuracy<T: Copy + Into<f64>>(
    distances: &[T],
    is_same: &[bool],
    folds: &[usize],
    k: usize,
) -> Result<(f64, f64, f64)> {
    let op = "kfold_accuracy";
    let d = prepare(op, distances, is_same)?;
    if folds.len() != d.len() {
        bail!("{op}: {} fold ids for {} pairs", folds.len(), d.len());
    }
    if k < 2 {
        bail!("{op}: need k >= 2 folds, got {k}");
    }
    if let Some(f) = folds.iter().find(|f| **f >= k) {
        bail!("{op}: fold id {f} is not below k = {k}");
    }
    let mut accuracies = Vec::with_capacity(k);
    for fold in 0..k {
        let (mut train_d, mut train_s, mut test_d, mut test_s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..d.len() {
            if folds[i] == fold {
                test_d.push(d[i]);
                test_s.push(is_same[i]);
            } else {
                train_d.push(d[i]);
                train_s.push(is_same[i]);
            }
        }
        if test_d.is_empty() {
            bail!("{op}: fold {fold} has no pairs");
        }
        let (threshold, ..) = best_threshold(&train_d, &train_s)?;
        accuracies.push(accuracy_at(&test_d, &test_s, threshold)?);
    }
    Ok(mean_std_err(&accuracies))
}

/// N-way one-shot accuracy: `trials[t]` holds the distances from test item `t` to the
/// exemplars of its `N` candidate classes, `truth[t]` the index of the right one. A trial is
/// correct when the right candidate has the smallest distance; ties go to the lower index.
pub fn n_way_one_shot<T: Copy + Into<f64>, R: AsRef<[T]>>(
    trials: &[R],
    truth: &[usize],
) -> Result<f64> {
    let op = "n_way_one_shot";
    if trials.len() != truth.len() {
        bail!(
            "{op}: {} trials but {} true indices",
            trials.len(),
            truth.len()
        );
    }
    if trials.is_empty() {
        bail!("{op}: no trials");
    }
    let mut correct = 0usize;
    for (t, (row, want)) in trials.iter().zip(truth).enumerate() {
        let row = row.as_ref();
        if *want >= row.len() {
            bail!(
                "{op}: trial {t} has {} candidates but true index {want}",
                row.len()
            );
        }
        let mut best = (0usize, f64::INFINITY);
        for (j, v) in row.iter().enumerate() {
            let v: f64 = (*v).into();
            if v.is_nan() {
                bail!("{op}: trial {t}, candidate {j} is NaN");
            }
            if j == 0 || v < best.1 {
                best = (j, v);
            }
        }
        if best.0 == *want {
            correct += 1;
        }
    }
    Ok(correct as f64 / trials.len() as f64)
}

/// One N-way K-shot episode: `ways` classes, `shots` support items and some query items per
/// class, support and queries disjoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// The label of each way.
    pub classes: Vec<u32>,
    /// `support[w]`: the `shots` support items of way `w`.
    pub support: Vec<Vec<usize>>,
    /// `(item, way)` for every query.
    pub queries: Vec<(usize, usize)>,
}

impl Episode {
    /// Draws an episode: `ways` distinct classes among those with at least
    /// `shots + queries_per_class` items (classes visited in ascending label order, so the
    /// result is deterministic given the RNG), then that many distinct items of each.
    pub fn sample<R: Rng + ?Sized>(
        labels: &[u32],
        ways: usize,
        shots: usize,
        queries_per_class: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let op = "Episode::sample";
        if ways < 2 || shots == 0 || queries_per_class == 0 {
            bail!(
                "{op}: need ways >= 2, shots >= 1 and queries >= 1, got {ways}, {shots}, \
                 {queries_per_class}"
            );
        }
        let need = shots + queries_per_class;
        let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, l) in labels.iter().enumerate() {
            by_class.entry(*l).or_default().push(i);
        }
        let eligible: Vec<(u32, Vec<usize>)> = by_class
            .into_iter()
            .filter(|(_, items)| items.len() >= need)
            .collect();
        if eligible.len() < ways {
            bail!(
                "{op}: a {ways}-way episode needs {ways} classes with at least {need} items, \
                 found {}",
                eligible.len()
            );
        }
        let mut episode = Episode {
            classes: Vec::with_capacity(ways),
            support: Vec::with_capacity(ways),
            queries: Vec::with_capacity(ways * queries_per_class),
        };
        for (way, c) in index::sample(rng, eligible.len(), ways).iter().enumerate() {
            let (label, items) = &eligible[c];
            let picked = index::sample(rng, items.len(), need).into_vec();
            episode.classes.push(*label);
            episode
                .support
                .push(picked[..shots].iter().map(|i| items[*i]).collect());
            episode
                .queries
                .extend(picked[shots..].iter().map(|i| (items[*i], way)));
        }
        Ok(episode)
    }

    /// The fraction of queries whose nearest way is their own. A way's distance to a query is
    /// the mean of `distance(query, support item)` over its shots; ties go to the lower way.
    pub fn accuracy(&self, mut distance: impl FnMut(usize, usize) -> f64) -> f64 {
        if self.queries.is_empty() {
            return f64::NAN;
        }
        let mut correct = 0usize;
        for &(query, way) in &self.queries {
            let mut best = (0usize, f64::INFINITY);
            for (w, shots) in self.support.iter().enumerate() {
                let d = shots.iter().map(|s| distance(query, *s)).sum::<f64>()
                    / shots.len().max(1) as f64;
                if w == 0 || d < best.1 {
                    best = (w, d);
                }
            }
            if best.0 == way {
                correct += 1;
            }
        }
        correct as f64 / self.queries.len() as f64
    }

    /// Rank-1 identification accuracy, the episode's support items being the gallery: the
    /// fraction of queries whose nearest support item (of any way) belongs to their own way.
    /// A way's distance to a query is that of its nearest shot (where [`Episode::accuracy`]
    /// takes the mean of its shots; with one shot the two agree); ties go to the lower way.
    pub fn rank1(&self, mut distance: impl FnMut(usize, usize) -> f64) -> f64 {
        if self.queries.is_empty() {
            return f64::NAN;
        }
        let mut correct = 0usize;
        for &(query, way) in &self.queries {
            let mut best: Option<(usize, f64)> = None;
            for (w, shots) in self.support.iter().enumerate() {
                for &s in shots {
                    let d = distance(query, s);
                    if best.is_none_or(|(_, b)| d < b) {
                        best = Some((w, d));
                    }
                }
            }
            if best.map(|(w, _)| w) == Some(way) {
                correct += 1;
            }
        }
        correct as f64 / self.queries.len() as f64
    }
}

/// Per-episode accuracies and their summary.
#[derive(Clone, Debug, PartialEq)]
pub struct EpisodeSummary {
    /// The accuracy of each episode.
    pub accuracies: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// The half-width of the 95% confidence interval of the mean, `1.96 * std / sqrt(n)`
    /// (sample std); `NaN` for a single episode.
    pub ci95: f64,
}

/// Runs `episodes` episodes drawn by [`Episode::sample`] and scores them with
/// [`Episode::accuracy`]; `distance(a, b)` is the distance between items `a` and `b`.
pub fn run_episodes<R: Rng + ?Sized>(
    labels: &[u32],
    ways: usize,
    shots: usize,
    queries_per_class: usize,
    episodes: usize,
    rng: &mut R,
    mut distance: impl FnMut(usize, usize) -> f64,
) -> Result<EpisodeSummary> {
    run_episodes_with(
        labels,
        ways,
        shots,
        queries_per_class,
        episodes,
        rng,
        |e: &Episode| e.accuracy(&mut distance),
    )
}

/// Like [`run_episodes`], each episode scored by `score` (for instance [`Episode::rank1`], or
/// [`Episode::accuracy`] over distances the caller computed for the whole episode at once).
pub fn run_episodes_with<R: Rng + ?Sized>(
    labels: &[u32],
    ways: usize,
    shots: usize,
    queries_per_class: usize,
    episodes: usize,
    rng: &mut R,
    mut score: impl FnMut(&Episode) -> f64,
) -> Result<EpisodeSummary> {
    if episodes == 0 {
        bail!("run_episodes: need at least one episode");
    }
    let mut accuracies = Vec::with_capacity(episodes);
    for _ in 0..episodes {
        let e = Episode::sample(labels, ways, shots, queries_per_class, rng)?;
        accuracies.push(score(&e));
    }
    let (mean, _, std_err) = mean_std_err(&accuracies);
    Ok(EpisodeSummary {
        accuracies,
        mean,
        ci95: 1.96 * std_err,
    })
}
