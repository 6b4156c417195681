//! Miners on a crafted batch of 1-D encodings, where L1 distance is `|x - y|` exactly.

use anyhow::Result;
use candle_core::{Device, Tensor};
use siamese_pairs::loss::triplet::{mine, mine_from_matrix, DistanceMatrix, Mining};
use siamese_pairs::Distance;

/// Positions and labels:
///
/// ```text
/// row:    0    1    2    3    4    5    6     7
/// x:      0.0  0.4  1.0  0.6  3.0  5.0  10.0  20.0
/// label:  A    A    A    B    B    C    D     D
/// ```
fn batch() -> Result<(Tensor, Vec<u32>)> {
    let x = [0.0f32, 0.4, 1.0, 0.6, 3.0, 5.0, 10.0, 20.0];
    Ok((
        Tensor::from_vec(x.to_vec(), (8, 1), &Device::Cpu)?,
        vec![0, 0, 0, 1, 1, 2, 3, 3],
    ))
}

/// Batch-hard: each anchor's farthest positive and nearest negative.
/// - 0: positives 1 (0.4), 2 (1.0) -> 2; negatives 3 (0.6) nearest -> (0, 2, 3)
/// - 1: positives 0 (0.4), 2 (0.6) -> 2; negative 3 (0.2) -> (1, 2, 3)
/// - 2: positives 0 (1.0), 1 (0.6) -> 0; negative 3 (0.4) -> (2, 0, 3)
/// - 3: positive 4 (2.4); negatives 0 (0.6), 1 (0.2), 2 (0.4) -> 1 -> (3, 4, 1)
/// - 4: positive 3; negatives 2 and 5 tie at 2.0 -> the lower index 2 -> (4, 3, 2)
/// - 5: no positive, skipped
/// - 6: positive 7; nearest negative 5 (5.0) -> (6, 7, 5)
/// - 7: positive 6; nearest negative 5 (15.0) -> (7, 6, 5)
#[test]
fn batch_hard_picks_farthest_positive_and_nearest_negative() -> Result<()> {
    let (emb, labels) = batch()?;
    let got = mine(&emb, &labels, Mining::BatchHard, Distance::L1)?;
    assert_eq!(
        got,
        [
            (0, 2, 3),
            (1, 2, 3),
            (2, 0, 3),
            (3, 4, 1),
            (4, 3, 2),
            (6, 7, 5),
            (7, 6, 5)
        ]
    );
    Ok(())
}

/// Semi-hard: per ordered anchor-positive pair, the nearest negative farther than the
/// positive; the farthest negative when none is farther.
/// - (0,1) d_ap 0.4: negatives 0.6, 3, 5, 10, 20 -> 3 (0.6, inside the 0.2 band)
/// - (0,2) d_ap 1.0: -> 4 (3.0)
/// - (1,0) d_ap 0.4: negatives from 0.4: 3 is 0.2 (closer) -> 4 (2.6)
/// - (1,2) d_ap 0.6: -> 4 (2.6)
/// - (2,0) d_ap 1.0: negatives from 1.0: 3 is 0.4 -> 4 (2.0)
/// - (2,1) d_ap 0.6: -> 4 (2.0)
/// - (3,4) d_ap 2.4: negatives from 0.6: 0.6, 0.2, 0.4, 4.4, ... -> 5 (4.4)
/// - (4,3) d_ap 2.4: negatives from 3.0: 0 (3.0), 1 (2.6), 2 (2.0), 5 (2.0) -> 1 (2.6)
/// - (6,7) d_ap 10: negatives from 10: 0 is 10.0 (not farther), all others closer -> the
///   farthest, 0
/// - (7,6) d_ap 10: negatives from 20: 20, 19.6, 19, 19.4, 17, 15 -> 5 (15)
#[test]
fn semi_hard_picks_the_nearest_negative_beyond_the_positive() -> Result<()> {
    let (emb, labels) = batch()?;
    let got = mine(&emb, &labels, Mining::SemiHard, Distance::L1)?;
    assert_eq!(
        got,
        [
            (0, 1, 3),
            (0, 2, 4),
            (1, 0, 4),
            (1, 2, 4),
            (2, 0, 4),
            (2, 1, 4),
            (3, 4, 5),
            (4, 3, 1),
            (6, 7, 0),
            (7, 6, 5)
        ]
    );
    Ok(())
}

/// Batch-all: every valid triplet. Class A: 3 anchors × 2 positives × 5 negatives = 30;
/// B: 2 × 1 × 6 = 12; C: none; D: 2 × 1 × 6 = 12. Total 54.
#[test]
fn batch_all_enumerates_every_valid_triplet() -> Result<()> {
    let (emb, labels) = batch()?;
    let got = mine(&emb, &labels, Mining::BatchAll, Distance::L1)?;
    assert_eq!(got.len(), 54);
    for (a, p, n) in &got {
        assert!(a != p && labels[*a] == labels[*p] && labels[*n] != labels[*a]);
    }
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, got, "in lexicographic order, no duplicates");
    Ok(())
}

/// Mining works from a given matrix, and checks its size against the labels.
#[test]
fn mining_from_a_matrix() -> Result<()> {
    // Three items: 0 and 1 share a label; d(0,1) = 5, d(0,2) = 1, d(1,2) = 7.
    let m = DistanceMatrix::new(3, vec![0.0, 5.0, 1.0, 5.0, 0.0, 7.0, 1.0, 7.0, 0.0])?;
    assert_eq!(
        mine_from_matrix(&m, &[4, 4, 9], Mining::BatchHard)?,
        [(0, 1, 2), (1, 0, 2)]
    );
    // (0,1): the only negative (1.0) is closer than 5 -> fallback; (1,0): 7 > 5 -> 2.
    assert_eq!(
        mine_from_matrix(&m, &[4, 4, 9], Mining::SemiHard)?,
        [(0, 1, 2), (1, 0, 2)]
    );
    assert!(mine_from_matrix(&m, &[4, 4], Mining::BatchHard).is_err());
    assert!(DistanceMatrix::new(3, vec![0.0; 8]).is_err());
    Ok(())
}
