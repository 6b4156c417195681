//! Assembling a training batch from the image cache: class sampling, 90° rotations as new
//! classes, augmentation.

use crate::error::{Result, TrainError};
use siamese_data::{Augment, ImageCache};

/// The training images as the sampler sees them: each (image, variant) is an item. With
/// rotations as classes, class `c` rotated by `r · 90°` is class `4c + r`; with mirrors as
/// classes too, variants `4..8` are the left-right mirrors of variants `0..4`, so class `c`
/// becomes eight classes (the symmetries of the square).
#[derive(Debug)]
pub struct TrainSet<'a> {
    /// The decoded, preprocessed images.
    pub cache: &'a ImageCache,
    /// Number of variants per image that count as classes (1, 2, 4 or 8): `v % 4` quarter
    /// turns, then a mirror when `v >= 4` (or, without rotations, when `v == 1`).
    pub variants: usize,
    /// Whether mirrors count as new classes.
    pub mirrors: bool,
    /// Class of every virtual item (`image · variants + v`).
    pub labels: Vec<usize>,
}

impl<'a> TrainSet<'a> {
    /// Wraps a cache; `rotations_as_classes` needs square images.
    pub fn new(cache: &'a ImageCache, rotations_as_classes: bool, mirrors: bool) -> Result<Self> {
        if rotations_as_classes && cache.height != cache.width {
            return Err(TrainError::Config(format!(
                "rotations as classes needs square images, got {}×{}",
                cache.height, cache.width
            )));
        }
        let variants = if rotations_as_classes { 4 } else { 1 } * if mirrors { 2 } else { 1 };
        let labels = cache
            .labels
            .iter()
            .flat_map(|&l| (0..variants).map(move |r| l * variants + r))
            .collect();
        Ok(Self {
            cache,
            variants,
            mirrors,
            labels,
        })
    }

    /// How many classes the labels count: every class of the cache times its variants.
    pub fn classes(&self) -> usize {
        self.cache.classes.len() * self.variants
    }

    /// The group of every label (indexed by label): the part of the class name before its
    /// last `/` (the class itself when there is none), with each rotation its own group.
    pub fn groups(&self) -> Vec<u32> {
        let mut ids: std::collections::HashMap<(&str, usize), u32> = Default::default();
        let mut out = Vec::with_capacity(self.cache.classes.len() * self.variants);
        for name in &self.cache.classes {
            let alphabet = siamese_data::alphabet_of(name);
            let prefix = if alphabet.is_empty() { name } else { alphabet };
            for r in 0..self.variants {
                let next = ids.len() as u32;
                out.push(*ids.entry((prefix, r)).or_insert(next));
            }
        }
        out
    }

    /// Writes the items into `out` (`[n, C, H, W]`), rotated and augmented. Augmentation of
    /// item `i` depends only on `seed` and `i`, not on the number of threads.
    pub fn assemble(&self, items: &[usize], augment: &Augment, seed: u64) -> Result<Vec<f32>> {
        let c = self.cache;
        let len = c.image_len();
        let mut raw = vec![0.0f32; items.len() * len];
        for (slot, &item) in raw.chunks_mut(len.max(1)).zip(items) {
            let img = item / self.variants;
            let r = item % self.variants;
            let Some(src) = c.image(img) else {
                return Err(TrainError::Config(format!(
                    "batch item {img} is out of range (cache of {})",
                    c.len()
                )));
            };
            let turns = if self.mirrors {
                r % (self.variants / 2)
            } else {
                r
            };
            rotate90(src, c.channels, c.height, c.width, turns, slot);
            if self.mirrors && r >= self.variants / 2 {
                for row in slot.chunks_mut(c.width.max(1)) {
                    row.reverse();
                }
            }
        }
        if augment.is_identity() {
            return Ok(raw);
        }
        let mut out = vec![0.0f32; raw.len()];
        augment.apply_batch(
            &raw,
            items.len(),
            c.channels,
            c.height,
            c.width,
            seed,
            &mut out,
        )?;
        Ok(out)
    }
}

/// Rotates each `h×w` plane by `r · 90°` counter-clockwise (`h == w` when `r` is odd).
fn rotate90(src: &[f32], c: usize, h: usize, w: usize, r: usize, out: &mut [f32]) {
    let plane = h * w;
    for ch in 0..c {
        let s = &src[ch * plane..(ch + 1) * plane];
        let o = &mut out[ch * plane..(ch + 1) * plane];
        match r % 4 {
            0 => o.copy_from_slice(s),
            1 => {
                for y in 0..h {
                    for x in 0..w {
                        o[(w - 1 - x) * h + y] = s[y * w + x];
                    }
                }
            }
            2 => {
                for (i, v) in s.iter().enumerate() {
                    o[plane - 1 - i] = *v;
                }
            }
            _ => {
                for y in 0..h {
                    for x in 0..w {
                        o[x * h + (h - 1 - y)] = s[y * w + x];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{rotate90, TrainSet};
    use siamese_data::{Augment, ImageCache};

    #[test]
    fn mirrors_and_rotations_make_eight_classes_per_class() {
        let cache = ImageCache {
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            labels: vec![0, 1],
            origin: vec![0, 1],
            classes: vec!["Greek/alpha".into(), "Latin/a".into()],
            channels: 1,
            height: 2,
            width: 2,
        };
        let set = TrainSet::new(&cache, true, true).expect("square");
        assert_eq!(set.variants, 8);
        assert_eq!(set.labels, (0..16).collect::<Vec<_>>());
        // Variant 1 is a quarter turn, variant 4 the mirror, variant 5 the mirrored turn.
        let px = set
            .assemble(&[0, 1, 4, 5, 12], &Augment::default(), 0)
            .expect("items");
        assert_eq!(&px[..4], &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(&px[4..8], &[2.0, 4.0, 1.0, 3.0]);
        assert_eq!(&px[8..12], &[2.0, 1.0, 4.0, 3.0]);
        assert_eq!(&px[12..16], &[4.0, 2.0, 3.0, 1.0]);
        assert_eq!(&px[16..20], &[6.0, 5.0, 8.0, 7.0]);
        // Groups: one per (alphabet, variant).
        let g = set.groups();
        assert_eq!(g.len(), 16);
        assert_eq!(g[0], 0);
        assert_ne!(g[1], g[0]);
        assert_ne!(g[8], g[0]);
        // Mirrors alone: two variants, no square needed.
        let flip_only = TrainSet::new(&cache, false, true).expect("any shape");
        assert_eq!(flip_only.variants, 2);
        let px = flip_only
            .assemble(&[1], &Augment::default(), 0)
            .expect("item");
        assert_eq!(px, [2.0, 1.0, 4.0, 3.0]);
    }

    #[test]
    fn four_quarter_turns_are_the_identity_and_one_turn_is_counter_clockwise() {
        // [[1, 2], [3, 4]] turned 90° counter-clockwise is [[2, 4], [1, 3]].
        let a = [1.0, 2.0, 3.0, 4.0];
        let mut b = [0.0; 4];
        rotate90(&a, 1, 2, 2, 1, &mut b);
        assert_eq!(b, [2.0, 4.0, 1.0, 3.0]);
        let mut c = [0.0; 4];
        rotate90(&b, 1, 2, 2, 3, &mut c);
        assert_eq!(c, a);
        rotate90(&a, 1, 2, 2, 2, &mut c);
        assert_eq!(c, [4.0, 3.0, 2.0, 1.0]);
    }
}
