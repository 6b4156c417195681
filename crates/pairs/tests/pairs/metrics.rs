//! Verification and identification metrics against hand-computed cases.

use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use siamese_pairs::metrics::{
    accuracy_at, auc, best_threshold, eer, kfold_accuracy, mean_std_err, n_way_one_shot, roc,
    run_episodes, run_episodes_with, tar_at_far, Episode,
};

use crate::common::{check, check1};

/// Five scores, S = same, D = different (3 same, 2 different):
///
/// ```text
/// d:  0.1 S   0.2 D   0.3 S   0.4 S   0.5 D
/// ```
///
/// ROC (accept d <= t): t = -inf (0, 0); 0.1 (0, 1/3); 0.2 (1/2, 1/3); 0.3 (1/2, 2/3);
/// 0.4 (1/2, 1); 0.5 (1, 1).
/// AUC by trapezoids: 1/2 * 1/3 + 1/2 * 1 = 2/3 (Mann-Whitney: 4 of the 6 same/different
/// pairs are ordered correctly).
/// EER: fpr - (1 - tpr) is -1/6 at t = 0.2 and +1/6 at t = 0.3, so the crossing is halfway:
/// EER = 1/2 (fpr 1/2, fnr from 2/3 to 1/3), threshold 0.25.
/// Accuracy by threshold (accept d < t): 0.1 -> 2/5, 0.15 -> 3/5, 0.25 -> 2/5, 0.35 -> 3/5,
/// 0.45 -> 4/5, 1.5 -> 3/5: best 0.45 with FAR 1/2 (0.2 accepted), FRR 0.
const D: [f64; 5] = [0.3, 0.1, 0.5, 0.2, 0.4];
const S: [bool; 5] = [true, true, false, false, true];

#[test]
fn hand_computed_roc() -> Result<()> {
    let r = roc(&D, &S)?;
    check(&r.fpr, &[0.0, 0.0, 0.5, 0.5, 0.5, 1.0], 1e-12, "fpr");
    check(
        &r.tpr,
        &[0.0, 1.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0],
        1e-12,
        "tpr",
    );
    assert_eq!(r.thresholds[0], f64::NEG_INFINITY);
    check(
        &r.thresholds[1..],
        &[0.1, 0.2, 0.3, 0.4, 0.5],
        0.0,
        "thresholds",
    );
    check1(r.auc(), 2.0 / 3.0, 1e-12, "auc");
    check1(auc(&D, &S)?, 2.0 / 3.0, 1e-12, "auc free fn");
    let (e, t) = r.eer();
    check1(e, 0.5, 1e-12, "eer");
    check1(t, 0.25, 1e-12, "eer threshold");
    assert_eq!(eer(&D, &S)?, (e, t));
    // TAR at FAR 0: the best point with fpr 0 is (0, 1/3) at 0.1; at FAR 1/2: tpr 1 at 0.4.
    assert_eq!(r.tar_at_far(0.0), (1.0 / 3.0, 0.1));
    assert_eq!(tar_at_far(&D, &S, 0.5)?, (1.0, 0.4));
    Ok(())
}

#[test]
fn hand_computed_best_threshold() -> Result<()> {
    let (t, acc, far, frr) = best_threshold(&D, &S)?;
    check(
        &[t, acc, far, frr],
        &[0.45, 0.8, 0.5, 0.0],
        1e-12,
        "best_threshold",
    );
    check1(accuracy_at(&D, &S, 0.45)?, 0.8, 1e-12, "accuracy_at 0.45");
    check1(accuracy_at(&D, &S, 0.25)?, 0.4, 1e-12, "accuracy_at 0.25");
    // f32 input gives the same answer.
    let d32: Vec<f32> = D.iter().map(|v| *v as f32).collect();
    let (t32, acc32, ..) = best_threshold(&d32, &S)?;
    check(&[t32, acc32], &[0.45, 0.8], 1e-6, "f32");
    Ok(())
}

/// Same pairs at 0.1, 0.2 and different at 0.8, 0.9: AUC 1, EER 0 (at the largest same
/// distance, 0.2), best threshold halfway at 0.5 with accuracy 1. Reversed scores: AUC 0.
#[test]
fn perfect_separation() -> Result<()> {
    let d = [0.8, 0.1, 0.9, 0.2];
    let s = [false, true, false, true];
    let r = roc(&d, &s)?;
    check1(r.auc(), 1.0, 1e-12, "auc");
    assert_eq!(r.eer(), (0.0, 0.2));
    assert_eq!(r.tar_at_far(0.0), (1.0, 0.2));
    let (t, acc, far, frr) = best_threshold(&d, &s)?;
    check(&[t, acc, far, frr], &[0.5, 1.0, 0.0, 0.0], 1e-12, "best");
    let flipped = [false, true, false, true].map(|v: bool| !v);
    check1(auc(&d, &flipped)?, 0.0, 1e-12, "reversed auc");
    // All scores tied: the ROC is the diagonal, AUC 1/2.
    check1(auc(&[1.0, 1.0, 1.0, 1.0], &s)?, 0.5, 1e-12, "ties");
    Ok(())
}

/// Three folds of two pairs each:
/// - fold 0: same 0.1, different 0.9
/// - fold 1: same 0.2, different 0.8
/// - fold 2: same 0.6, different 0.4 (inverted)
///
/// Fold 0 trains on {0.2 S, 0.4 D, 0.6 S, 0.8 D}: best threshold 0.3 (3/4, first of two
/// ties), test accuracy 1. Fold 1 trains on {0.1 S, 0.4 D, 0.6 S, 0.9 D}: 0.25, accuracy 1.
/// Fold 2 trains on {0.1, 0.2 S; 0.8, 0.9 D}: 0.5, and both of its pairs are wrong: 0.
/// Mean 2/3, sample std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3), std err 1/3.
#[test]
fn kfold_on_a_constructed_set() -> Result<()> {
    let d = [0.1, 0.9, 0.2, 0.8, 0.6, 0.4];
    let s = [true, false, true, false, true, false];
    let folds = [0, 0, 1, 1, 2, 2];
    let (mean, std, se) = kfold_accuracy(&d, &s, &folds, 3)?;
    check(
        &[mean, std, se],
        &[2.0 / 3.0, (1.0f64 / 3.0).sqrt(), 1.0 / 3.0],
        1e-12,
        "kfold",
    );
    assert!(
        kfold_accuracy(&d, &s, &folds, 4).is_err(),
        "fold 3 is empty"
    );
    assert!(kfold_accuracy(&d, &s, &[0, 0, 1, 1, 2, 5], 3).is_err());
    assert!(kfold_accuracy(&d, &s, &folds[..5], 3).is_err());
    Ok(())
}

#[test]
fn metric_input_errors() {
    assert!(
        roc(&[0.1, 0.2], &[true, true]).is_err(),
        "no different pair"
    );
    assert!(roc(&[0.1], &[true, false]).is_err(), "length mismatch");
    assert!(best_threshold(&[f64::NAN], &[true]).is_err());
    assert!(accuracy_at::<f64>(&[], &[], 0.5).is_err());
}

/// Trials: [0.1, 0.5, 0.3] true 0 (right), [0.4, 0.2, 0.9] true 0 (wrong), [0.7, 0.7, 0.1]
/// true 2 (right): 2/3. A tie goes to the lower index.
#[test]
fn n_way_one_shot_accuracy() -> Result<()> {
    let trials = vec![
        vec![0.1f32, 0.5, 0.3],
        vec![0.4, 0.2, 0.9],
        vec![0.7, 0.7, 0.1],
    ];
    check1(
        n_way_one_shot(&trials, &[0, 0, 2])?,
        2.0 / 3.0,
        1e-12,
        "3 trials",
    );
    check1(n_way_one_shot(&[[0.5f64, 0.5]], &[1])?, 0.0, 0.0, "tie");
    assert!(n_way_one_shot(&[[0.5f64, 0.5]], &[2]).is_err());
    Ok(())
}

/// Mean and 95% interval of [1, 1, 0]: mean 2/3, sample std sqrt(1/3), half-width
/// 1.96 * sqrt(1/3) / sqrt(3) = 1.96 / 3.
#[test]
fn mean_and_interval() {
    let (mean, std, se) = mean_std_err(&[1.0, 1.0, 0.0]);
    check(
        &[mean, std, 1.96 * se],
        &[2.0 / 3.0, (1.0f64 / 3.0).sqrt(), 1.96 / 3.0],
        1e-12,
        "ci",
    );
}

/// Episodes from 6 classes of 4 items: well formed, deterministic from the seed; a distance
/// that knows the labels scores 1, a constant distance always picks way 0 and scores 1/ways.
#[test]
fn episodes() -> Result<()> {
    let labels: Vec<u32> = (0..24).map(|i| i / 4).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let e = Episode::sample(&labels, 5, 1, 2, &mut rng)?;
    assert_eq!(e.classes.len(), 5);
    let mut classes = e.classes.clone();
    classes.sort();
    classes.dedup();
    assert_eq!(classes.len(), 5, "distinct classes");
    for (w, shots) in e.support.iter().enumerate() {
        assert_eq!(shots.len(), 1);
        assert!(shots.iter().all(|i| labels[*i] == e.classes[w]));
    }
    assert_eq!(e.queries.len(), 10);
    for (item, way) in &e.queries {
        assert_eq!(labels[*item], e.classes[*way]);
        assert!(
            !e.support[*way].contains(item),
            "queries and support are disjoint"
        );
    }
    let again = Episode::sample(&labels, 5, 1, 2, &mut ChaCha8Rng::seed_from_u64(7))?;
    assert_eq!(e, again, "deterministic given the seed");

    let oracle = |a: usize, b: usize| if labels[a] == labels[b] { 0.0 } else { 1.0 };
    let s = run_episodes(&labels, 5, 2, 2, 10, &mut rng, oracle)?;
    assert_eq!(s.accuracies, vec![1.0; 10]);
    assert_eq!((s.mean, s.ci95), (1.0, 0.0));
    let s = run_episodes(&labels, 4, 1, 3, 5, &mut rng, |_, _| 0.0)?;
    assert_eq!(s.accuracies, vec![0.25; 5]);
    assert!(
        Episode::sample(&labels, 7, 1, 1, &mut rng).is_err(),
        "only 6 classes"
    );
    assert!(
        Episode::sample(&labels, 5, 3, 2, &mut rng).is_err(),
        "classes have 4 < 5 items"
    );
    Ok(())
}

/// Rank-1 takes a way's nearest shot where `accuracy` takes the mean of its shots: a query
/// with one very near and one far shot of its own way, against another way whose two shots
/// are both moderately near, is right by rank-1 and wrong by the mean. With one shot the two
/// agree; ties go to the lower way.
#[test]
fn rank1_is_the_nearest_shot() -> Result<()> {
    // Items: 0, 1 support of way 0; 2, 3 support of way 1; 4 the query of way 0.
    let e = Episode {
        classes: vec![10, 11],
        support: vec![vec![0, 1], vec![2, 3]],
        queries: vec![(4, 0)],
    };
    let d = |_q: usize, s: usize| [0.1, 5.0, 1.0, 1.0][s];
    assert_eq!(e.rank1(d), 1.0);
    assert_eq!(e.accuracy(d), 0.0, "mean 2.55 against 1.0");
    // A tie between the ways goes to way 0, right for this query.
    assert_eq!(e.rank1(|_, _| 1.0), 1.0);
    let one_shot = Episode {
        classes: vec![10, 11, 12],
        support: vec![vec![0], vec![1], vec![2]],
        queries: vec![(3, 0), (4, 1), (5, 2)],
    };
    let d = |q: usize, s: usize| ((q + 3 * s) % 5) as f64;
    assert_eq!(one_shot.rank1(d), one_shot.accuracy(d));
    assert!(Episode {
        classes: vec![],
        support: vec![],
        queries: vec![],
    }
    .rank1(|_, _| 0.0)
    .is_nan());

    // run_episodes_with scores each episode with the closure given, in the same episodes
    // run_episodes draws from the same seed.
    let labels: Vec<u32> = (0..24).map(|i| i / 4).collect();
    let oracle = |a: usize, b: usize| if labels[a] == labels[b] { 0.0 } else { 1.0 };
    let mut seen = Vec::new();
    let by_rank1 = run_episodes_with(
        &labels,
        4,
        2,
        1,
        6,
        &mut ChaCha8Rng::seed_from_u64(3),
        |e: &Episode| {
            seen.push(e.clone());
            e.rank1(oracle)
        },
    )?;
    assert_eq!(by_rank1.accuracies, vec![1.0; 6]);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for e in &seen {
        assert_eq!(e, &Episode::sample(&labels, 4, 2, 1, &mut rng)?);
    }
    let a = run_episodes(
        &labels,
        4,
        1,
        2,
        5,
        &mut ChaCha8Rng::seed_from_u64(9),
        |_, _| 0.0,
    )?;
    let b = run_episodes_with(
        &labels,
        4,
        1,
        2,
        5,
        &mut ChaCha8Rng::seed_from_u64(9),
        |e: &Episode| e.accuracy(|_, _| 0.0),
    )?;
    assert_eq!(a, b);
    Ok(())
}
