//! The model file: one `.safetensors` holding the encoder weights and, as JSON in the metadata,
//! the encoder config, the preprocessing, the distance, the calibrated verification threshold
//! and the training provenance. Nothing read from it is ever executed. Also how a model
//! embeds: test-time augmentation ([`Tta`]), batches of [`EMBED_BATCH`] encoder passes.

use crate::error::{InferError, Result};
use crate::faces::{FaceModel, FACE_KEY};
use crate::fsutil::write_atomic;
use crate::images::load_images;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use siamese_data::{ImageCache, Preprocess};
use siamese_encoder::Encoder;
use siamese_face::file::{DETECTOR_PREFIX, LANDMARKS_PREFIX};
use siamese_ops::distance::{Distance, Matcher};
use std::collections::HashMap;
use std::path::Path;

/// Metadata key of the model description (JSON of [`ModelMeta`]).
pub const MODEL_KEY: &str = "siamese.model";
/// Format tag written under [`FORMAT_KEY`].
pub const FORMAT: &str = "siamese-model/1";
/// Metadata key of the format tag.
pub const FORMAT_KEY: &str = "format";

/// The verification threshold chosen on validation pairs, with the rates measured there.
///
/// A threshold that came with imported weights (dlib's 0.6, stored in its face encoder's
/// file) was not measured here: such a calibration has `pairs == 0` and rates of 0 that mean
/// nothing ([`Calibration::stored`], [`Calibration::is_measured`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `d < threshold` means "same".
    pub threshold: f32,
    /// Accuracy at the threshold on the calibration pairs.
    pub accuracy: f32,
    /// False-accept rate there (different pairs called same).
    pub far: f32,
    /// False-reject rate there (same pairs called different).
    pub frr: f32,
    /// Number of calibration pairs (half same, half different).
    pub pairs: usize,
    /// Where the pairs came from.
    pub source: String,
}

impl Calibration {
    /// A threshold stored with imported weights, not measured on any pairs here: `pairs` 0,
    /// the rates 0; `source` says where it came from.
    pub fn stored(threshold: f32, source: impl Into<String>) -> Self {
        Calibration {
            threshold,
            accuracy: 0.0,
            far: 0.0,
            frr: 0.0,
            pairs: 0,
            source: source.into(),
        }
    }

    /// Whether the threshold and its rates were measured on calibration pairs (`pairs > 0`);
    /// if not, only the threshold and its source mean something.
    pub fn is_measured(&self) -> bool {
        self.pairs > 0
    }
}

/// Where a model came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Data sets trained on.
    pub data: Vec<String>,
    /// Recipe name, if any.
    pub recipe: Option<String>,
    /// Number of training classes and images.
    pub train_classes: usize,
    /// Number of training images.
    pub train_images: usize,
    /// Classes held out for validation.
    pub validation_classes: Vec<String>,
    /// Seed of the run.
    pub seed: u64,
    /// Optimiser updates made.
    pub steps: u64,
    /// Wall-clock seconds of training.
    pub wall_seconds: f64,
    /// The training configuration, as JSON.
    pub config: serde_json::Value,
    /// Version of siamese that trained it.
    pub version: String,
    /// Validation metrics of the kept model.
    pub validation: Option<serde_json::Value>,
    /// The model whose weights the run started from (`train --init`): its file name and
    /// where it came from; none for a run from random weights (and in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

/// Test-time augmentation: what `embed`, `verify`, `identify` and evaluation average over.
///
/// Written to model files, galleries and configurations by name ([`Tta::name`]): `none`,
/// `hflip`, `affine`, `affine-set`, and `affine:N` / `affine-set:N` for a copy count other
/// than [`AFFINE_TTA_COPIES`] (so files written before the count was configurable read as
/// they were made).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Tta {
    /// One pass over the image as it is.
    #[default]
    None,
    /// The mean of the encodings of the image and its left-right mirror (re-normalised when
    /// the encoder normalises), for subjects whose mirror image is the same identity (faces).
    Hflip,
    /// The mean of the encodings of the image and `copies - 1` random affine distortions of
    /// it in Koch et al.'s ranges (re-normalised when the encoder normalises). The
    /// distortions are drawn from a generator seeded by the image's pixels, so an image
    /// always gets the same encoding, whatever else is in its batch. For characters and other
    /// subjects whose identity survives small rotations, shears, scalings and shifts (not
    /// mirroring); it costs `copies` times the encoding work.
    Affine(usize),
    /// The encodings of the image and `copies - 1` affine distortions of it at
    /// [`AFFINE_SET_STRENGTH`] times Koch et al.'s ranges, kept as a set (not averaged); two
    /// images are compared by the symmetric Chamfer distance between their sets
    /// ([`Matcher`]), which finds the distortions under which they look most alike. Same
    /// encoding cost as [`Tta::Affine`]; an image's representation is `copies` encodings, so
    /// galleries and `embed` files are that many times larger.
    AffineSet(usize),
}

/// How many encodings [`Tta::Affine`] and [`Tta::AffineSet`] make per image (the image itself
/// included) when their names carry no count (`affine`, `affine-set`).
pub const AFFINE_TTA_COPIES: usize = 32;

/// The largest copy count `affine:N` and `affine-set:N` accept.
pub const MAX_TTA_COPIES: usize = 1024;

/// The multiplier of Koch et al.'s affine ranges that [`Tta::AffineSet`] draws from (wider
/// than [`Tta::Affine`]'s 1: the nearest-pair matching profits from a wider search, where a
/// mean blurs).
pub const AFFINE_SET_STRENGTH: f32 = 2.0;

impl Tta {
    /// By name: `none`, `hflip`, `affine` or `affine-set`, the last two optionally with a copy
    /// count, `affine-set:64` (the image itself included; 2 to [`MAX_TTA_COPIES`]).
    pub fn from_name(name: &str) -> Result<Self> {
        let (base, count) = match name.split_once(':') {
            Some((base, n)) => (base, Some(n)),
            None => (name, None),
        };
        let copies = || match count {
            None => Ok(AFFINE_TTA_COPIES),
            Some(n) => match n.trim().parse::<usize>() {
                Ok(c) if (2..=MAX_TTA_COPIES).contains(&c) => Ok(c),
                _ => Err(InferError::Config(format!(
                    "test-time augmentation `{name}`: the copy count after `:` must be a whole \
                     number from 2 to {MAX_TTA_COPIES}"
                ))),
            },
        };
        match (base, count) {
            ("none" | "off", None) => Ok(Tta::None),
            ("hflip" | "flip", None) => Ok(Tta::Hflip),
            ("affine", _) => Ok(Tta::Affine(copies()?)),
            ("affine-set", _) => Ok(Tta::AffineSet(copies()?)),
            ("none" | "off" | "hflip" | "flip", Some(_)) => Err(InferError::Config(format!(
                "test-time augmentation `{name}`: only affine and affine-set take a copy count"
            ))),
            _ => Err(InferError::Config(format!(
                "unknown test-time augmentation `{name}` (expected none, hflip, affine or \
                 affine-set; the affine ones optionally with a copy count, e.g. affine-set:64)"
            ))),
        }
    }

    /// The name [`Tta::from_name`] reads back: the copy count is written only when it is not
    /// [`AFFINE_TTA_COPIES`].
    pub fn name(self) -> String {
        let counted = |base: &str, c: usize| {
            if c == AFFINE_TTA_COPIES {
                base.to_string()
            } else {
                format!("{base}:{c}")
            }
        };
        match self {
            Tta::None => "none".into(),
            Tta::Hflip => "hflip".into(),
            Tta::Affine(c) => counted("affine", c),
            Tta::AffineSet(c) => counted("affine-set", c),
        }
    }

    /// Encoder passes per image.
    pub fn copies(self) -> usize {
        match self {
            Tta::None => 1,
            Tta::Hflip => 2,
            Tta::Affine(c) | Tta::AffineSet(c) => c,
        }
    }

    /// Encodings in an image's representation: the copies for [`Tta::AffineSet`], else 1 (a
    /// mean, or the one pass).
    pub fn set_size(self) -> usize {
        match self {
            Tta::AffineSet(c) => c,
            Tta::None | Tta::Hflip | Tta::Affine(_) => 1,
        }
    }

    /// How representations made with this augmentation are compared under `distance`.
    pub fn matcher(self, distance: Distance) -> Matcher {
        Matcher {
            distance,
            set: self.set_size(),
        }
    }
}

impl std::fmt::Display for Tta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<Tta> for String {
    fn from(t: Tta) -> String {
        t.name()
    }
}

impl TryFrom<String> for Tta {
    type Error = InferError;
    fn try_from(name: String) -> Result<Self> {
        Tta::from_name(&name)
    }
}

/// Everything in a model file besides the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// How images become input tensors.
    pub preprocess: Preprocess,
    /// The distance between embeddings.
    pub distance: Distance,
    /// The calibrated threshold, if the model was calibrated.
    pub calibration: Option<Calibration>,
    /// Training provenance.
    pub provenance: Provenance,
    /// Test-time augmentation used whenever the model encodes (absent in older files: none).
    #[serde(default)]
    pub tta: Tta,
}

impl ModelMeta {
    /// Checks every value a flag would have refused: the preprocessing (sizes, a positive
    /// finite standard deviation), and the calibration (a finite threshold `>= 0`, rates in
    /// `[0, 1]`). A model file that fails is refused when opened, not when a distance comes
    /// out as NaN.
    pub fn validate(&self) -> Result<()> {
        self.preprocess
            .validate()
            .map_err(|e| InferError::Config(e.to_string()))?;
        if let Some(c) = &self.calibration {
            if !(c.threshold.is_finite() && c.threshold >= 0.0) {
                return Err(InferError::Config(format!(
                    "calibration: threshold must be finite and >= 0, got {}",
                    c.threshold
                )));
            }
            for (what, v) in [("accuracy", c.accuracy), ("far", c.far), ("frr", c.frr)] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(InferError::Config(format!(
                        "calibration: {what} must be a rate in [0, 1], got {v}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A trained encoder with its metadata: what `verify`, `embed` and `identify` need.
#[derive(Debug)]
pub struct Model {
    /// The encoder `f`.
    pub encoder: Encoder,
    /// Preprocessing, distance, threshold, provenance.
    pub meta: ModelMeta,
    /// Extra tensors stored with the model (a BCE verification head, `head.*`).
    pub extra: Vec<(String, Tensor)>,
    /// The face pipeline of a face model (dlib's detector and landmarks, imported with
    /// `Model::from_dlib`): its photos are detected, aligned and cut into chips before
    /// `encoder` sees them (see [`crate::faces`]). `None` for trained models.
    pub face: Option<FaceModel>,
}

impl Model {
    /// The model as safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        match &self.face {
            None => model_bytes(&self.encoder, &self.meta, &self.extra),
            Some(face) => face.model_bytes(&self.encoder, &self.meta, &self.extra),
        }
    }

    /// Writes the model atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a model file; errors name the file and say what is wrong.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| InferError::io(path, e))?;
        Self::from_bytes(&bytes, device).map_err(|e| match e {
            InferError::Tensor(e) => InferError::bad_file(path, e),
            InferError::Config(m) => InferError::bad_file(path, m),
            other => other,
        })
    }

    /// Parses model bytes.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let metadata = siamese_encoder::io::read_metadata(bytes)?;
        let Some(json) = metadata.get(MODEL_KEY) else {
            return Err(InferError::Config(format!(
                "not a siamese model: no `{MODEL_KEY}` entry in the safetensors metadata"
            )));
        };
        if let Some(format) = metadata.get(FORMAT_KEY) {
            if format != FORMAT {
                return Err(InferError::Config(format!(
                    "model format `{format}` is not one this version reads (`{FORMAT}`); \
                     it was written by another version of siamese"
                )));
            }
        }
        let meta: ModelMeta = serde_json::from_str(json)
            .map_err(|e| InferError::Config(format!("bad `{MODEL_KEY}` metadata: {e}")))?;
        meta.validate()?;
        // A face model also holds its detector's and landmark predictor's tensors.
        let face_json = metadata.get(FACE_KEY);
        let prefixes: &[&str] = match face_json {
            Some(_) => &["head.", DETECTOR_PREFIX, LANDMARKS_PREFIX],
            None => &["head."],
        };
        let loaded = siamese_encoder::io::from_safetensors(bytes, device, prefixes)?;
        let cfg = loaded.encoder.config();
        let p = &meta.preprocess;
        if p.channels as usize != cfg.in_channels
            || p.height as usize != cfg.height
            || p.width as usize != cfg.width
        {
            return Err(InferError::Config(format!(
                "preprocessing gives {}×{}×{} but the encoder expects {}×{}×{}",
                p.channels, p.height, p.width, cfg.in_channels, cfg.height, cfg.width
            )));
        }
        let mut tensors = loaded.extra;
        let face = face_json
            .map(|json| FaceModel::from_stored(json, &mut tensors, &loaded.encoder, &meta))
            .transpose()?;
        let mut extra: Vec<(String, Tensor)> = tensors.into_iter().collect();
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            encoder: loaded.encoder,
            meta,
            extra,
            face,
        })
    }

    /// The stored threshold, if calibrated.
    pub fn threshold(&self) -> Option<f32> {
        self.meta.calibration.as_ref().map(|c| c.threshold)
    }

    /// How this model's representations are compared: its distance, over sets when its
    /// test-time augmentation keeps one ([`Tta::AffineSet`]).
    pub fn matcher(&self) -> Matcher {
        self.meta.tta.matcher(self.meta.distance)
    }

    /// Values in one image's representation: the encoding length (taps included) times the
    /// set size.
    pub fn row_len(&self) -> usize {
        self.matcher().row_len(self.encoder.config().output_dim())
    }

    /// Embeds preprocessed images `[N, C, H, W]` (flat, image after image) in batches.
    ///
    /// # Shapes
    /// `images`: `n · C · H · W` values → `n · R` values, `R` = [`Model::row_len`].
    pub fn embed_flat(&self, images: &[f32], n: usize, batch: usize) -> Result<Vec<f32>> {
        embed_flat(&self.encoder, images, n, batch, self.meta.tta)
    }

    /// Embeds every image of a cache.
    pub fn embed_cache(&self, cache: &ImageCache) -> Result<Vec<f32>> {
        embed_flat(
            &self.encoder,
            &cache.data,
            cache.len(),
            EMBED_BATCH,
            self.meta.tta,
        )
    }

    /// Embeds preprocessed images, `n · C · H · W` values image after image (what
    /// [`load_images`] gives), in batches of [`EMBED_BATCH`] encoder passes.
    ///
    /// # Shapes
    /// `pixels`: `n · C · H · W` values → `n · R` values, `R` = [`Model::row_len`].
    pub fn embed_images(&self, pixels: &[f32]) -> Result<Vec<f32>> {
        let per = self.meta.preprocess.tensor_len();
        if per == 0 || !pixels.len().is_multiple_of(per) {
            return Err(InferError::Config(format!(
                "embed: {} values are not whole images of {per}",
                pixels.len()
            )));
        }
        self.embed_flat(pixels, pixels.len() / per, EMBED_BATCH)
    }

    /// Decodes, preprocesses (as the model says) and embeds image files: one representation
    /// of [`Model::row_len`] values per path, in the order given. An image that cannot be read
    /// is an error naming it.
    ///
    /// A face model encodes the largest face the detector finds in each photo
    /// ([`Model::encode_photo`]); a photo without one is [`InferError::NoFace`].
    pub fn embed_paths<P: AsRef<Path> + Sync>(&self, paths: &[P]) -> Result<Vec<f32>> {
        if self.face.is_some() {
            return self.embed_largest_faces(paths);
        }
        let pixels = load_images(paths, &self.meta.preprocess)?;
        self.embed_flat(&pixels, paths.len(), EMBED_BATCH)
    }

    /// The shape of `n` images' representations: `[n, set, dim]` when the test-time
    /// augmentation keeps a set of encodings per image ([`Tta::AffineSet`]), else `[n, dim]`
    /// (`dim`: the encoder's output length, taps included).
    pub fn embedding_shape(&self, n: usize) -> Vec<usize> {
        let dim = self.encoder.config().output_dim();
        match self.matcher().set {
            set if set > 1 => vec![n, set, dim],
            _ => vec![n, dim],
        }
    }

    /// The distance between two representations of [`Model::row_len`] values each, under
    /// [`Model::matcher`] (NaN when their lengths differ).
    pub fn distance(&self, a: &[f32], b: &[f32]) -> f32 {
        self.matcher().between(a, b)
    }

    /// A fingerprint of the weights, 16 hex digits: FNV-1a over every parameter's and
    /// buffer's name and little-endian values. Galleries record it, so a gallery can say which
    /// model enrolled it (the test-time augmentation is not part of it).
    pub fn fingerprint(&self) -> Result<String> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (name, var) in self.encoder.params().all() {
            for b in name.bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
            let v: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            for x in v {
                for b in x.to_le_bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        Ok(format!("{h:016x}"))
    }
}

/// Checks a threshold given by a user: a finite distance `>= 0`.
pub fn check_threshold(t: f32) -> Result<f32> {
    if t.is_finite() && t >= 0.0 {
        Ok(t)
    } else {
        Err(InferError::Threshold(t))
    }
}

/// The bytes of a model file: `encoder`'s weights, `extra` tensors, and `meta` with the format
/// tag in the metadata. Callers holding a live encoder (the training loop) write it without
/// building a [`Model`].
pub fn model_bytes(
    encoder: &Encoder,
    meta: &ModelMeta,
    extra: &[(String, Tensor)],
) -> Result<Vec<u8>> {
    let mut header = HashMap::new();
    header.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
    let json = serde_json::to_string(meta)
        .map_err(|e| InferError::Config(format!("model metadata to JSON: {e}")))?;
    header.insert(MODEL_KEY.to_string(), json);
    Ok(siamese_encoder::io::to_safetensors(
        encoder, extra, &header,
    )?)
}

/// Encoder passes per batch when embedding (test-time copies included). Smaller batches keep a
/// batch's activations in the last-level cache between layers: `siamese embed --tta none` of
/// 1344 AT&T faces with a resnet (112x92, 2 threads) took 0.84x the wall time in batches of 16
/// as in batches of 64 (32: 0.91x; 8 slower again), alternating runs, with the same encodings
/// bit for bit; conv4 and koch at 105x105 were within noise of 64. PyTorch's resnet forward
/// gains from batches of 16 too (`bench/peer/peer.py --infer-batch`), and `cargo xtask bench
/// --peer` times both at this size.
pub const EMBED_BATCH: usize = 16;

/// Embeds preprocessed images `[N, C, H, W]` with `encoder` in evaluation mode, in batches,
/// with test-time augmentation `tta`.
pub fn embed_flat(
    encoder: &Encoder,
    images: &[f32],
    n: usize,
    batch: usize,
    tta: Tta,
) -> Result<Vec<f32>> {
    let cfg = encoder.config();
    let per = cfg.in_channels * cfg.height * cfg.width;
    if images.len() != n * per {
        return Err(InferError::Config(format!(
            "embed: {} values for {n} images of {per}",
            images.len()
        )));
    }
    let device = encoder.params().device().clone();
    let dim = cfg.output_dim();
    let mut out = Vec::with_capacity(n * dim * tta.set_size());
    // `batch` counts encoder passes: augmented copies take their images' places in it.
    let copies = tta.copies();
    let batch = (batch / copies).max(1);
    let shape = (cfg.in_channels, cfg.height, cfg.width);
    let mut start = 0;
    while start < n {
        let end = (start + batch).min(n);
        let chunk = &images[start * per..end * per];
        let b = end - start;
        let e: Vec<f32> = if copies == 1 {
            let xs = Tensor::from_slice(chunk, (b, shape.0, shape.1, shape.2), &device)?;
            encoder.embed(&xs)?.flatten_all()?.to_vec1()?
        } else {
            // Each image's copies side by side in one pass; then the mean of each image's, or
            // (a set) every copy's encoding as it is.
            let mut all = vec![0f32; copies * chunk.len()];
            match tta {
                Tta::Hflip => {
                    for (img, dst) in chunk.chunks(per).zip(all.chunks_mut(2 * per)) {
                        dst[..per].copy_from_slice(img);
                        for (row, out) in img
                            .chunks(cfg.width.max(1))
                            .zip(dst[per..].chunks_mut(cfg.width.max(1)))
                        {
                            out.iter_mut()
                                .zip(row.iter().rev())
                                .for_each(|(o, v)| *o = *v);
                        }
                    }
                }
                Tta::Affine(_) => affine_copies(chunk, shape, copies, 1.0, &mut all)?,
                Tta::AffineSet(_) => {
                    affine_copies(chunk, shape, copies, AFFINE_SET_STRENGTH, &mut all)?
                }
                Tta::None => all.copy_from_slice(chunk),
            }
            let xs = Tensor::from_vec(all, (b * copies, shape.0, shape.1, shape.2), &device)?;
            let y = encoder.embed(&xs)?;
            let y = if tta.set_size() > 1 {
                y
            } else {
                encoder.renormalize(&y.reshape((b, copies, dim))?.mean(1)?)?
            };
            y.flatten_all()?.to_vec1()?
        };
        out.extend_from_slice(&e);
        start = end;
    }
    Ok(out)
}

/// Writes, for each `[c, h, w]` image of `images`, the image itself and `copies - 1` affine
/// distortions of it (Koch et al.'s ranges) into `out`, image after image. Copy `j` of an
/// image uses stream `j` of a generator seeded by the image's pixels.
fn affine_copies(
    images: &[f32],
    (c, h, w): (usize, usize, usize),
    copies: usize,
    strength: f32,
    out: &mut [f32],
) -> Result<()> {
    use rand::SeedableRng;
    use rayon::prelude::*;
    let per = c * h * w;
    let augment = siamese_data::Augment {
        strength,
        ..siamese_data::Augment::koch()
    };
    out.par_chunks_mut(per)
        .enumerate()
        .try_for_each(|(k, dst)| {
            let img = &images[(k / copies) * per..(k / copies + 1) * per];
            let j = k % copies;
            if j == 0 {
                dst.copy_from_slice(img);
                return Ok(());
            }
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(pixel_hash(img));
            rng.set_stream(j as u64);
            augment.apply(img, c, h, w, &mut rng, dst)
        })
        .map_err(InferError::from)
}

/// FNV-1a over the bit patterns of `values`.
fn pixel_hash(values: &[f32]) -> u64 {
    values.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ u64::from(v.to_bits())).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
