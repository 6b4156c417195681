//! Batch composition: balanced same/different pairs ([`PairSampler`]) and P classes × K items
//! ([`PkSampler`]) for in-batch mining. Both work on item indices into a label list, draw every
//! random choice from the caller's RNG, and visit classes in ascending label order, so a batch
//! is a deterministic function of the labels and the RNG state.

use std::collections::BTreeMap;

use candle_core::{bail, Result};
use rand::seq::index;
use rand::Rng;

/// Groups item indices by label, in ascending label order.
fn group(labels: &[u32]) -> Vec<(u32, Vec<usize>)> {
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, l) in labels.iter().enumerate() {
        by_class.entry(*l).or_default().push(i);
    }
    by_class.into_iter().collect()
}

/// Two item indices and whether they share a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pair {
    /// The first item.
    pub first: usize,
    /// The second item (never equal to `first`).
    pub second: usize,
    /// Whether the two items have the same label.
    pub same: bool,
}

/// Draws balanced same/different pairs.
///
/// A same pair picks a class uniformly among the classes with at least two items, then two
/// distinct items of it, so a class with a single item is never asked for a positive pair. A
/// different pair picks two distinct classes uniformly among all classes, then one item of
/// each.
#[derive(Clone, Debug)]
pub struct PairSampler {
    classes: Vec<(u32, Vec<usize>)>,
    /// Indices into `classes` of the classes with at least two items.
    with_pairs: Vec<usize>,
}

impl PairSampler {
    /// Prepares a sampler over items with these labels (`labels[i]` is item `i`'s class).
    ///
    /// Fails when no class has two items (no same pair exists) or there is only one class (no
    /// different pair exists).
    pub fn new(labels: &[u32]) -> Result<Self> {
        let classes = group(labels);
        let with_pairs: Vec<usize> = classes
            .iter()
            .enumerate()
            .filter(|(_, (_, items))| items.len() >= 2)
            .map(|(i, _)| i)
            .collect();
        if with_pairs.is_empty() {
            bail!(
                "PairSampler::new: no class has 2 or more items among {} items in {} classes, \
                 so no same pair exists",
                labels.len(),
                classes.len()
            );
        }
        if classes.len() < 2 {
            bail!(
                "PairSampler::new: all {} items share one class, so no different pair exists",
                labels.len()
            );
        }
        Ok(PairSampler {
            classes,
            with_pairs,
        })
    }

    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// The number of classes that can give a same pair.
    pub fn num_pair_classes(&self) -> usize {
        self.with_pairs.len()
    }

    /// One same pair.
    pub fn positive<R: Rng + ?Sized>(&self, rng: &mut R) -> Pair {
        let class = self.with_pairs[rng.random_range(0..self.with_pairs.len())];
        let items = &self.classes[class].1;
        let picked = index::sample(rng, items.len(), 2);
        Pair {
            first: items[picked.index(0)],
            second: items[picked.index(1)],
            same: true,
        }
    }

    /// One different pair.
    pub fn negative<R: Rng + ?Sized>(&self, rng: &mut R) -> Pair {
        let picked = index::sample(rng, self.classes.len(), 2);
        let a = &self.classes[picked.index(0)].1;
        let b = &self.classes[picked.index(1)].1;
        Pair {
            first: a[rng.random_range(0..a.len())],
            second: b[rng.random_range(0..b.len())],
            same: false,
        }
    }

    /// `n` pairs alternating same, different, same, ... (so `ceil(n / 2)` same pairs).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<Pair> {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    self.positive(rng)
                } else {
                    self.negative(rng)
                }
            })
            .collect()
    }
}

/// Draws batches of P classes × K items, for in-batch mining.
///
/// Each batch picks `p` distinct classes uniformly (without replacement) among the eligible
/// classes, then `k` items of each: without replacement when the class has at least `k`
/// items, with replacement otherwise. With `k >= 2` only classes with at least two items are
/// eligible, so every anchor has a genuine positive (a distinct item); with `k == 1` every
/// class is.
///
/// With groups ([`PkSampler::grouped`]), the `p` classes come from a few groups of related
/// classes (an Omniglot alphabet) rather than from everywhere, so the negatives of a batch are
/// the look-alikes that a within-alphabet test asks the encoder to tell apart.
#[derive(Clone, Debug)]
pub struct PkSampler {
    classes: Vec<(u32, Vec<usize>)>,
    p: usize,
    k: usize,
    /// Indices into `classes`, one list per group, and the number of groups per batch.
    groups: Option<(Vec<Vec<usize>>, usize)>,
}

impl PkSampler {
    /// Prepares a sampler; fails when `p` or `k` is 0 or fewer than `p` classes are eligible.
    pub fn new(labels: &[u32], p: usize, k: usize) -> Result<Self> {
        if p == 0 || k == 0 {
            bail!("PkSampler::new: p and k must be > 0, got p = {p}, k = {k}");
        }
        let min_items = if k >= 2 { 2 } else { 1 };
        let classes: Vec<(u32, Vec<usize>)> = group(labels)
            .into_iter()
            .filter(|(_, items)| items.len() >= min_items)
            .collect();
        if classes.len() < p {
            bail!(
                "PkSampler::new: p = {p} classes per batch, but only {} classes have at least \
                 {min_items} items",
                classes.len()
            );
        }
        Ok(PkSampler {
            classes,
            p,
            k,
            groups: None,
        })
    }

    /// A sampler whose batches draw their `p` classes from `per_batch` groups: groups are
    /// visited in a random order and each gives up to `ceil(p / per_batch)` of its classes
    /// (fewer when it has fewer), until `p` classes are chosen; when all groups together give
    /// fewer, the rest are drawn from the other classes. `group_of(label)` names each
    /// class's group. Fails as [`PkSampler::new`] does, or when `per_batch` is 0.
    pub fn grouped(
        labels: &[u32],
        p: usize,
        k: usize,
        per_batch: usize,
        group_of: impl Fn(u32) -> u32,
    ) -> Result<Self> {
        if per_batch == 0 {
            bail!("PkSampler::grouped: groups per batch must be > 0");
        }
        let mut s = Self::new(labels, p, k)?;
        let mut by_group: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, (label, _)) in s.classes.iter().enumerate() {
            by_group.entry(group_of(*label)).or_default().push(i);
        }
        s.groups = Some((by_group.into_values().collect(), per_batch));
        Ok(s)
    }

    /// Classes per batch.
    pub fn p(&self) -> usize {
        self.p
    }

    /// Items per class per batch.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The batch size `p * k`.
    pub fn batch_size(&self) -> usize {
        self.p * self.k
    }

    /// The number of eligible classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// One batch of `p * k` item indices, grouped by class (`k` consecutive items per class).
    pub fn batch<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<usize> {
        self.batch_with_labels(rng).0
    }

    /// One batch and the label of each item in it.
    pub fn batch_with_labels<R: Rng + ?Sized>(&self, rng: &mut R) -> (Vec<usize>, Vec<u32>) {
        let mut items = Vec::with_capacity(self.batch_size());
        let mut labels = Vec::with_capacity(self.batch_size());
        let chosen: Vec<usize> = match &self.groups {
            None => index::sample(rng, self.classes.len(), self.p).into_vec(),
            Some((groups, per_batch)) => {
                let per = self.p.div_ceil(*per_batch);
                let mut chosen = Vec::with_capacity(self.p);
                for g in index::sample(rng, groups.len(), groups.len()).iter() {
                    let members = &groups[g];
                    let take = per.min(members.len()).min(self.p - chosen.len());
                    for j in index::sample(rng, members.len(), take).iter() {
                        chosen.push(members[j]);
                    }
                    if chosen.len() == self.p {
                        break;
                    }
                }
                // Too few groups or too small ones: the rest from the classes not yet chosen.
                if chosen.len() < self.p {
                    let rest: Vec<usize> = (0..self.classes.len())
                        .filter(|c| !chosen.contains(c))
                        .collect();
                    let missing = self.p - chosen.len();
                    for j in index::sample(rng, rest.len(), missing).iter() {
                        chosen.push(rest[j]);
                    }
                }
                chosen
            }
        };
        for &c in &chosen {
            let (label, members) = &self.classes[c];
            if members.len() >= self.k {
                for i in index::sample(rng, members.len(), self.k).iter() {
                    items.push(members[i]);
                }
            } else {
                for _ in 0..self.k {
                    items.push(members[rng.random_range(0..members.len())]);
                }
            }
            labels.extend(std::iter::repeat_n(*label, self.k));
        }
        (items, labels)
    }
}
