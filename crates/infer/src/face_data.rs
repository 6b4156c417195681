//! Labelled images through a face model's pipeline: each image's largest face (the detector's,
//! or the whole image with [`Detect::None`](crate::Detect::None)), its 5 landmarks, the
//! aligned chip, and the model's input values (`(pixel - mean) / 256`, as dlib encodes), as an
//! [`ImageCache`] that training and evaluation read like any other. Images without a face are
//! left out and named.

use std::path::PathBuf;

use rayon::prelude::*;
use siamese_data::{Dataset, ImageCache, ImageSource};
use siamese_face::RgbImage;

use crate::error::{InferError, Result};
use crate::faces::{load_photo_rgb, FaceOptions, Faces};
use crate::model::Model;

/// The divisor of dlib's input values (`(pixel - mean) / 256`).
const INPUT_SCALE: f32 = 256.0;

/// A data set's face chips, ready for the encoder.
#[derive(Debug)]
pub struct FaceCache {
    /// One chip per image that has a face, in the data set's order; `origin` indexes the data
    /// set's items, `classes` are all the data set's classes.
    pub cache: ImageCache,
    /// The images in which no face was found (display names, in order).
    pub no_face: Vec<PathBuf>,
}

/// An image source decoded as 8-bit RGB: files upright (EXIF orientation), others as stored.
fn load_rgb(source: &ImageSource) -> Result<RgbImage> {
    if let ImageSource::File(p) = source {
        return load_photo_rgb(p);
    }
    let img = source.load()?.to_rgb8();
    let (w, h) = img.dimensions();
    RgbImage::new(w as usize, h as usize, img.into_raw()).map_err(|e| InferError::Face {
        path: source.display_name(),
        source: e,
    })
}

impl Model {
    /// The chip of the largest face of every image of `data`, as the encoder's input values
    /// (`channels · chip · chip` each, planes R, G, B): what a face model's encoder is trained
    /// and evaluated on. Images where `opts.detect` finds no face are left out and listed in
    /// [`FaceCache::no_face`]. Fails on a model without a face pipeline, or on an image that
    /// cannot be read (naming it).
    pub fn face_cache(&self, data: &Dataset, opts: &FaceOptions) -> Result<FaceCache> {
        let face = self.face_model()?;
        let opts = FaceOptions {
            faces: Faces::Largest,
            ..*opts
        };
        let mean = face.meta.mean_rgb;
        let chips: Vec<Option<Vec<f32>>> = data
            .items
            .par_iter()
            .map(|item| -> Result<Option<Vec<f32>>> {
                let name = item.source.display_name();
                let img = load_rgb(&item.source)?;
                let found = self.find_faces_in(&img, &opts, &name)?;
                let Some(f) = crate::faces::select(found, Faces::Largest)
                    .into_iter()
                    .next()
                else {
                    return Ok(None);
                };
                let chip = self.face_chips_in(&img, std::slice::from_ref(&f), &name)?;
                Ok(chip.first().map(|c| chip_values(c, mean)))
            })
            .collect::<Result<_>>()?;
        let cfg = self.encoder.config();
        let mut cache = ImageCache {
            data: Vec::new(),
            labels: Vec::new(),
            origin: Vec::new(),
            classes: data.classes.clone(),
            channels: cfg.in_channels,
            height: cfg.height,
            width: cfg.width,
        };
        let mut no_face = Vec::new();
        for (i, (item, chip)) in data.items.iter().zip(chips).enumerate() {
            match chip {
                Some(v) => {
                    cache.data.extend(v);
                    cache.labels.push(item.class);
                    cache.origin.push(i);
                }
                None => no_face.push(item.source.display_name()),
            }
        }
        Ok(FaceCache { cache, no_face })
    }
}

/// A chip's values as dlib's encoder reads them: planes R, G, B of `(pixel - mean) / 256`.
fn chip_values(chip: &RgbImage, mean: [f32; 3]) -> Vec<f32> {
    let plane = chip.width() * chip.height();
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in chip.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) - mean[c]) / INPUT_SCALE;
        }
    }
    out
}
