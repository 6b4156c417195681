//! Decoding and preprocessing a whole data set into one contiguous tensor, in parallel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::decode::decode;
use crate::error::{DataError, Result};
use crate::preprocess::Preprocess;
use crate::source::{cached_zip, raw_image, read_member, ImageSource, MemZip};

/// Every image of a data set, preprocessed, in one `[N, C, H, W]` f32 buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageCache {
    /// `n * channels * height * width` values, image after image.
    pub data: Vec<f32>,
    /// Class index of each image (indexes [`ImageCache::classes`]).
    pub labels: Vec<usize>,
    /// Index of each image in the data set it was loaded from.
    pub origin: Vec<usize>,
    /// Class names of the data set.
    pub classes: Vec<String>,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
}

/// An image left out by [`ImageCache::load_all`] with `skip_bad`.
#[derive(Debug)]
pub struct SkippedItem {
    /// Index of the item in the data set.
    pub index: usize,
    /// Why it could not be loaded (the message names the file).
    pub error: DataError,
}

/// Decodes an image source using in-memory archives opened beforehand where possible.
fn load_with(
    source: &ImageSource,
    zips: &mut HashMap<PathBuf, MemZip>,
) -> Result<image::DynamicImage> {
    match source {
        ImageSource::Zip { archive, entry } => match zips.get_mut(archive.as_path()) {
            Some(zip) => {
                let bytes = read_member(zip, archive, entry)?;
                decode(&bytes, source.display_name())
            }
            None => source.load(),
        },
        ImageSource::Raw {
            width,
            height,
            channels,
            data,
            offset,
        } => raw_image(*width, *height, *channels, data, *offset),
        ImageSource::File(_) => source.load(),
    }
}

impl ImageCache {
    /// Decodes and preprocesses every item of `dataset` in parallel.
    ///
    /// A file that cannot be read or decoded is an error naming it, unless `skip_bad`, in
    /// which case it is left out and reported in the returned list.
    ///
    /// # Shapes
    /// - `data`: `[N, C, H, W]` with `C, H, W` from `pre`.
    pub fn load_all(
        dataset: &Dataset,
        pre: &Preprocess,
        skip_bad: bool,
    ) -> Result<(ImageCache, Vec<SkippedItem>)> {
        Self::load_all_with_progress(dataset, pre, skip_bad, &|_, _| {})
    }

    /// Like [`ImageCache::load_all`], calling `progress(done, total)` as images finish
    /// (from worker threads, in no particular order).
    pub fn load_all_with_progress(
        dataset: &Dataset,
        pre: &Preprocess,
        skip_bad: bool,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<(ImageCache, Vec<SkippedItem>)> {
        pre.validate()?;
        let len = pre.tensor_len();
        let total = dataset.items.len();
        let mut zips: HashMap<PathBuf, MemZip> = HashMap::new();
        for item in &dataset.items {
            if let ImageSource::Zip { archive, .. } = &item.source {
                if !zips.contains_key(archive.as_path()) {
                    zips.insert(archive.to_path_buf(), cached_zip(archive)?);
                }
            }
        }
        let mut data = vec![0.0f32; total * len];
        let done = AtomicUsize::new(0);
        let errors: Vec<Option<DataError>> = data
            .par_chunks_mut(len.max(1))
            .zip(dataset.items.par_iter())
            .map_init(
                || zips.clone(),
                |zips, (out, item)| {
                    let r = load_with(&item.source, zips).map(|img| pre.apply_into(&img, out));
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress(d, total);
                    r.err()
                },
            )
            .collect();
        let mut skipped = Vec::new();
        for (index, e) in errors.into_iter().enumerate() {
            if let Some(error) = e {
                if !skip_bad {
                    return Err(error);
                }
                skipped.push(SkippedItem { index, error });
            }
        }
        let mut labels = Vec::with_capacity(total - skipped.len());
        let mut origin = Vec::with_capacity(total - skipped.len());
        if skipped.is_empty() {
            for (i, item) in dataset.items.iter().enumerate() {
                labels.push(item.class);
                origin.push(i);
            }
        } else {
            let mut bad = vec![false; total];
            for s in &skipped {
                bad[s.index] = true;
            }
            let mut w = 0;
            for (i, item) in dataset.items.iter().enumerate() {
                if bad[i] {
                    continue;
                }
                if w != i {
                    data.copy_within(i * len..(i + 1) * len, w * len);
                }
                labels.push(item.class);
                origin.push(i);
                w += 1;
            }
            data.truncate(w * len);
        }
        let [channels, height, width] = pre.shape();
        Ok((
            ImageCache {
                data,
                labels,
                origin,
                classes: dataset.classes.clone(),
                channels,
                height,
                width,
            },
            skipped,
        ))
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image: `channels * height * width`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The preprocessed tensor of image `i` (`[C, H, W]`), or `None` out of range.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        let l = self.image_len();
        self.data.get(i * l..(i + 1) * l)
    }

    /// Image indices of each class, indexed like [`ImageCache::classes`].
    pub fn indices_by_class(&self) -> Vec<Vec<usize>> {
        let mut by = vec![Vec::new(); self.classes.len()];
        for (i, &c) in self.labels.iter().enumerate() {
            if let Some(v) = by.get_mut(c) {
                v.push(i);
            }
        }
        by
    }
}
