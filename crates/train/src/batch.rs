//! Assembling a training batch from the image cache: class sampling, 90° rotations as new
//! classes, augmentation.

use crate::error::{Result, TrainError};
use siamese_data::{Augment, ImageCache};

/// The training images as the sampler sees them: each (image, rotation) is an item, and with
/// rotations as classes, class `c` rotated by `r · 90°` is class `4c + r`.
#[derive(Debug)]
pub struct TrainSet<'a> {
    /// The decoded, preprocessed images.
    pub cache: &'a ImageCache,
    /// Number of rotations (1 or 4).
    pub rotations: usize,
    /// Class of every virtual item (`image · rotations + r`).
    pub labels: Vec<usize>,
}

impl<'a> TrainSet<'a> {
    /// Wraps a cache; `rotations_as_classes` needs square images.
    pub fn new(cache: &'a ImageCache, rotations_as_classes: bool) -> Result<Self> {
        if rotations_as_classes && cache.height != cache.width {
            return Err(TrainError::Config(format!(
                "rotations as classes needs square images, got {}×{}",
                cache.height, cache.width
            )));
        }
        let rotations = if rotations_as_classes { 4 } else { 1 };
        let labels = cache
            .labels
            .iter()
            .flat_map(|&l| (0..rotations).map(move |r| l * rotations + r))
            .collect();
        Ok(Self {
            cache,
            rotations,
            labels,
        })
    }

    /// Writes the items into `out` (`[n, C, H, W]`), rotated and augmented. Augmentation of
    /// item `i` depends only on `seed` and `i`, not on the number of threads.
    pub fn assemble(&self, items: &[usize], augment: &Augment, seed: u64) -> Result<Vec<f32>> {
        let c = self.cache;
        let len = c.image_len();
        let mut raw = vec![0.0f32; items.len() * len];
        for (slot, &item) in raw.chunks_mut(len.max(1)).zip(items) {
            let img = item / self.rotations;
            let r = item % self.rotations;
            let Some(src) = c.image(img) else {
                return Err(TrainError::Config(format!(
                    "batch item {img} is out of range (cache of {})",
                    c.len()
                )));
            };
            rotate90(src, c.channels, c.height, c.width, r, slot);
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
    use super::rotate90;

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
