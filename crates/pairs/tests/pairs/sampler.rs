//! Samplers: balance, singleton classes, P × K composition, determinism from a seed.

use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use siamese_pairs::{PairSampler, PkSampler};

/// Classes 0 (items 0-2), 1 (item 3, a singleton), 2 (items 4-5), 3 (item 6, a singleton).
const LABELS: [u32; 7] = [0, 0, 0, 1, 2, 2, 3];

#[test]
fn pair_sampler_is_balanced_and_never_asks_singletons_for_positives() -> Result<()> {
    let sampler = PairSampler::new(&LABELS)?;
    assert_eq!((sampler.num_classes(), sampler.num_pair_classes()), (4, 2));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let pairs = sampler.sample(&mut rng, 1001);
    assert_eq!(
        pairs.iter().filter(|p| p.same).count(),
        501,
        "ceil(n / 2) same pairs"
    );
    let mut singletons_in_negatives = 0;
    for p in &pairs {
        assert_ne!(p.first, p.second);
        assert_eq!(p.same, LABELS[p.first] == LABELS[p.second]);
        if p.same {
            assert!(![3, 6].contains(&p.first) && ![3, 6].contains(&p.second));
        } else if [3, 6].contains(&p.first) || [3, 6].contains(&p.second) {
            singletons_in_negatives += 1;
        }
    }
    assert!(
        singletons_in_negatives > 0,
        "singletons still serve as negatives"
    );
    Ok(())
}

#[test]
fn pair_sampler_is_deterministic_from_the_seed() -> Result<()> {
    let sampler = PairSampler::new(&LABELS)?;
    let a = sampler.sample(&mut ChaCha8Rng::seed_from_u64(5), 50);
    let b = sampler.sample(&mut ChaCha8Rng::seed_from_u64(5), 50);
    let c = sampler.sample(&mut ChaCha8Rng::seed_from_u64(6), 50);
    assert_eq!(a, b);
    assert_ne!(a, c);
    Ok(())
}

#[test]
fn pair_sampler_needs_a_pair_and_two_classes() {
    let err = PairSampler::new(&[0, 1, 2]).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("no class has 2")));
    assert!(PairSampler::new(&[4, 4, 4]).is_err());
    assert!(PairSampler::new(&[]).is_err());
}

/// Class 0 has 5 items, 1 has 2, 2 has 1, 3 has 4. With P = 3, K = 4 the eligible classes are
/// 0, 1 and 3 (the singleton cannot give a positive), so every batch holds all three.
#[test]
fn pk_sampler_composition() -> Result<()> {
    let labels = [0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 3, 3];
    let sampler = PkSampler::new(&labels, 3, 4)?;
    assert_eq!((sampler.batch_size(), sampler.num_classes()), (12, 3));
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for _ in 0..20 {
        let (batch, batch_labels) = sampler.batch_with_labels(&mut rng);
        assert_eq!(batch.len(), 12);
        let got: Vec<u32> = batch.iter().map(|i| labels[*i]).collect();
        assert_eq!(got, batch_labels);
        let mut classes: Vec<u32> = batch_labels.chunks(4).map(|c| c[0]).collect();
        assert!(
            batch_labels.chunks(4).all(|c| c.iter().all(|l| *l == c[0])),
            "grouped by class"
        );
        classes.sort();
        assert_eq!(classes, [0, 1, 3]);
        for group in batch.chunks(4) {
            let mut distinct = group.to_vec();
            distinct.sort();
            distinct.dedup();
            match labels[group[0]] {
                // 5 >= K items: drawn without replacement.
                0 | 3 => assert_eq!(distinct.len(), 4),
                // 2 < K items: with replacement, from {5, 6}.
                _ => assert!(distinct.iter().all(|i| [5, 6].contains(i))),
            }
        }
    }
    let a = sampler.batch(&mut ChaCha8Rng::seed_from_u64(9));
    let b = sampler.batch(&mut ChaCha8Rng::seed_from_u64(9));
    assert_eq!(a, b, "deterministic given the seed");
    assert!(
        PkSampler::new(&labels, 4, 4).is_err(),
        "only 3 classes have 2+ items"
    );
    assert_eq!(
        PkSampler::new(&labels, 4, 1)?.num_classes(),
        4,
        "K = 1 takes singletons"
    );
    assert!(PkSampler::new(&labels, 0, 4).is_err());
    Ok(())
}

/// 40 classes of 3 items in four groups of ten (`label / 10`). With P = 8 from 2 groups, every
/// batch holds 4 classes of each of exactly two groups; with groups of 3 classes (`label / 3`)
/// the batch spills over into more groups but still holds 8 distinct classes.
#[test]
fn pk_sampler_grouped_draws_classes_from_few_groups() -> Result<()> {
    let labels: Vec<u32> = (0..40).flat_map(|c| [c, c, c]).collect();
    let sampler = PkSampler::grouped(&labels, 8, 2, 2, |l| l / 10)?;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut seen_groups = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let (batch, batch_labels) = sampler.batch_with_labels(&mut rng);
        assert_eq!(batch.len(), 16);
        let mut classes: Vec<u32> = batch_labels.chunks(2).map(|c| c[0]).collect();
        classes.sort();
        classes.dedup();
        assert_eq!(classes.len(), 8, "distinct classes");
        let mut per_group = std::collections::BTreeMap::new();
        for c in &classes {
            *per_group.entry(c / 10).or_insert(0) += 1;
        }
        assert_eq!(per_group.values().copied().collect::<Vec<_>>(), [4, 4]);
        seen_groups.extend(per_group.keys().copied());
    }
    assert_eq!(seen_groups.len(), 4, "every group is visited");
    let small = PkSampler::grouped(&labels, 8, 2, 2, |l| l / 3)?;
    for _ in 0..20 {
        let (_, batch_labels) = small.batch_with_labels(&mut rng);
        let mut classes: Vec<u32> = batch_labels.chunks(2).map(|c| c[0]).collect();
        classes.sort();
        classes.dedup();
        assert_eq!(classes.len(), 8);
    }
    assert!(PkSampler::grouped(&labels, 8, 2, 0, |l| l / 10).is_err());
    Ok(())
}

/// Two groups of 20 classes asked for 4 groups per batch of 8: each group gives 2, and the
/// other 4 classes come from anywhere, so batches still hold 8 distinct classes.
#[test]
fn pk_sampler_grouped_fills_up_when_groups_run_out() -> Result<()> {
    let labels: Vec<u32> = (0..40).flat_map(|c| [c, c]).collect();
    let sampler = PkSampler::grouped(&labels, 8, 2, 4, |l| l / 20)?;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for _ in 0..20 {
        let (_, batch_labels) = sampler.batch_with_labels(&mut rng);
        let mut classes: Vec<u32> = batch_labels.chunks(2).map(|c| c[0]).collect();
        classes.sort();
        classes.dedup();
        assert_eq!(classes.len(), 8);
    }
    Ok(())
}
