//! The face part of a model file, and the import of dlib's three files.
//!
//! A face model is a siamese model file (encoder tensors and `siamese.encoder`,
//! `siamese.model`, `format` in the metadata, as any model) with, besides:
//! - the detector's tensors `detector.conv{0..6}.weight` / `.bias` (batch norm folded in) and
//!   the landmark predictor's `landmarks.initial` and `landmarks.cascade{c}.{splits,
//!   thresholds, leaves, anchors, deltas}` (see `siamese_face::file`);
//! - under [`FACE_KEY`], the JSON of [`FaceMeta`]: the detector's settings (window, NMS
//!   overlaps, input means, pyramid), its default upsampling and threshold, the landmark
//!   predictor's sizes (which give every tensor's shape), the chip's size and padding, the
//!   encoder's input means, and where each part came from (file name, size, sha256).
//!
//! Reading checks every setting against a stated limit and every tensor's type and shape
//! against the settings before its values are used; an unexpected tensor is refused.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use siamese_data::Preprocess;
use siamese_encoder::Encoder;
use siamese_face::chip::MAX_CHIP_SIZE;
use siamese_face::detect::{DetectOptions, Detector, DetectorSettings};
use siamese_face::file::{DETECTOR_PREFIX, LANDMARKS_PREFIX};
use siamese_face::landmarks::{LandmarkSettings, ShapePredictor};
use siamese_face::pipeline::CHIP_PADDING;
use siamese_face::{FaceError, FacePipeline};
use siamese_ops::distance::Distance;

use crate::error::{InferError, Result};
use crate::model::{Calibration, Model, ModelMeta, Provenance, Tta, FORMAT, FORMAT_KEY, MODEL_KEY};

/// Metadata key of a face model's pipeline description (JSON of [`FaceMeta`]).
pub const FACE_KEY: &str = "siamese.face";

/// The most times a photo may be doubled before detection (stored or asked for).
pub const MAX_UPSAMPLE: u32 = 4;

/// The largest chip padding read from a file (dlib's is 0.25: a quarter of the face each
/// side).
const MAX_CHIP_PADDING: f64 = 4.0;

/// The landmarks the chip template places (dlib's 5-point template).
const CHIP_PARTS: usize = 5;

/// How a face's chip is cut: dlib's `get_face_chip_details(shape, size, padding)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChipSettings {
    /// The chip's side in pixels (the encoder's input: 150).
    pub size: usize,
    /// Padding around the face, as a fraction of it on each side (0.25).
    pub padding: f64,
}

/// Where one part of a face model came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaceSource {
    /// `detector`, `landmarks` or `encoder`.
    pub part: String,
    /// The file's name (its last path component, as given to the import).
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// The sha256 of its bytes, 64 lower-case hex digits.
    pub sha256: String,
}

/// Everything a face model's file says of its pipeline besides the tensors (the JSON under
/// [`FACE_KEY`]); the distance and the threshold are the model's ([`ModelMeta`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceMeta {
    /// The detector's window, NMS overlaps, input means and pyramid.
    pub detector: DetectorSettings,
    /// How many times photos are doubled before detection by default (1, as
    /// face_recognition's `model="cnn"`).
    pub upsample: u32,
    /// The detector's score threshold by default (0).
    pub detect_threshold: f32,
    /// The landmark predictor's sizes.
    pub landmarks: LandmarkSettings,
    /// How chips are cut.
    pub chip: ChipSettings,
    /// The encoder's input means, subtracted from R, G and B before dividing by 256.
    pub mean_rgb: [f32; 3],
    /// Where each part came from.
    pub sources: Vec<FaceSource>,
}

/// The face pipeline of a face model besides its encoder (which is the [`Model`]'s): the
/// detector, the landmark predictor and the settings.
#[derive(Clone, Debug)]
pub struct FaceModel {
    /// dlib's MMOD CNN face detector.
    pub detector: Detector,
    /// dlib's 5-point shape predictor.
    pub landmarks: ShapePredictor,
    /// Settings and sources, as stored.
    pub meta: FaceMeta,
}

/// 64 lower-case hex digits of the sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A [`FaceError`] from reading a stored pipeline as the configuration error
/// [`Model::load`] names the file in.
fn stored_error(e: FaceError) -> InferError {
    match e {
        FaceError::Stored { what, message, .. } => InferError::Config(format!("{what}: {message}")),
        other => InferError::Config(other.to_string()),
    }
}

impl FaceModel {
    /// Detection options as stored, `upsample` overriding the stored upsampling.
    pub fn detect_options(&self, upsample: Option<u32>) -> DetectOptions {
        DetectOptions {
            upsample: upsample.unwrap_or(self.meta.upsample),
            threshold: self.meta.detect_threshold,
            ..DetectOptions::default()
        }
    }

    /// The face pipeline of a model file: `json` (under [`FACE_KEY`]) and the `detector.*`
    /// and `landmarks.*` tensors taken from `tensors`, checked against the settings and the
    /// model's `encoder` and `meta` (a chip of the encoder's input size, RGB). Errors are
    /// [`InferError::Config`] naming the tensor or setting ([`Model::load`] adds the file).
    pub fn from_stored(
        json: &str,
        tensors: &mut HashMap<String, Tensor>,
        encoder: &Encoder,
        meta: &ModelMeta,
    ) -> Result<FaceModel> {
        let face: FaceMeta = serde_json::from_str(json)
            .map_err(|e| InferError::Config(format!("bad `{FACE_KEY}` metadata: {e}")))?;
        let bad = |m: String| Err(InferError::Config(format!("{FACE_KEY}: {m}")));
        if face.upsample > MAX_UPSAMPLE {
            return bad(format!(
                "upsample {} is over the limit of {MAX_UPSAMPLE}",
                face.upsample
            ));
        }
        if !face.detect_threshold.is_finite() {
            return bad(format!(
                "detect_threshold {} is not finite",
                face.detect_threshold
            ));
        }
        let cfg = encoder.config();
        let c = face.chip;
        if c.size == 0
            || c.size > MAX_CHIP_SIZE
            || (cfg.in_channels, cfg.height, cfg.width) != (3, c.size, c.size)
        {
            return bad(format!(
                "chips of {0}x{0} RGB, but the encoder takes {1}x{2}x{3}",
                c.size, cfg.in_channels, cfg.height, cfg.width
            ));
        }
        if !(c.padding.is_finite() && (0.0..=MAX_CHIP_PADDING).contains(&c.padding)) {
            return bad(format!(
                "chip padding {} is outside 0 to {MAX_CHIP_PADDING}",
                c.padding
            ));
        }
        if face.mean_rgb.iter().any(|m| !m.is_finite()) {
            return bad(format!("mean_rgb {:?} is not finite", face.mean_rgb));
        }
        if face.landmarks.parts != CHIP_PARTS {
            return bad(format!(
                "a landmark predictor of {} parts; the chip template places {CHIP_PARTS}",
                face.landmarks.parts
            ));
        }
        if meta.preprocess.channels != 3 {
            return bad("a face model's preprocessing must be RGB".into());
        }
        if meta.tta != Tta::None {
            return bad(format!(
                "test-time augmentation {} (a face model encodes each chip once)",
                meta.tta
            ));
        }
        let detector = Detector::from_tensors("", &face.detector, tensors).map_err(stored_error)?;
        let landmarks =
            ShapePredictor::from_tensors("", &face.landmarks, tensors).map_err(stored_error)?;
        let mut left: Vec<&String> = tensors
            .keys()
            .filter(|n| n.starts_with(DETECTOR_PREFIX) || n.starts_with(LANDMARKS_PREFIX))
            .collect();
        left.sort();
        if let Some(name) = left.first() {
            return Err(InferError::Config(format!(
                "{name}: unexpected tensor for a face model"
            )));
        }
        Ok(FaceModel {
            detector,
            landmarks,
            meta: face,
        })
    }

    /// The bytes of a face model file: `encoder`, `extra`, this pipeline's tensors, and the
    /// metadata (`meta` under `siamese.model`, [`FaceMeta`] under [`FACE_KEY`]).
    pub fn model_bytes(
        &self,
        encoder: &Encoder,
        meta: &ModelMeta,
        extra: &[(String, Tensor)],
    ) -> Result<Vec<u8>> {
        let mut tensors = extra.to_vec();
        tensors.extend(self.detector.to_tensors().map_err(stored_error)?);
        tensors.extend(self.landmarks.to_tensors().map_err(stored_error)?);
        let header = HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT.to_string()),
            (MODEL_KEY.to_string(), to_json("model metadata", meta)?),
            (FACE_KEY.to_string(), to_json("face metadata", &self.meta)?),
        ]);
        Ok(siamese_encoder::io::to_safetensors(
            encoder, &tensors, &header,
        )?)
    }
}

/// `v` as a JSON string (`what` names it in the error).
fn to_json<T: Serialize>(what: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| InferError::Config(format!("{what} to JSON: {e}")))
}

/// The source record of one part: `(name, bytes)` as given to the import.
fn source(part: &str, (name, bytes): (&str, &[u8])) -> FaceSource {
    FaceSource {
        part: part.to_string(),
        file: name.to_string(),
        bytes: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    }
}

impl Model {
    /// A face model from dlib's three files: `mmod_human_face_detector.dat`,
    /// `shape_predictor_5_face_landmarks.dat` and `dlib_face_recognition_resnet_model_v1.dat`
    /// (read whole; each file's name and sha256 are recorded). See [`Model::from_dlib`].
    pub fn import_dlib(detector: &Path, landmarks: &Path, encoder: &Path) -> Result<Model> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| InferError::io(p, e));
        let name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        };
        let (d, l, e) = (read(detector)?, read(landmarks)?, read(encoder)?);
        let (dn, ln, en) = (name(detector), name(landmarks), name(encoder));
        Model::from_dlib((&dn, &d), (&ln, &l), (&en, &e)).map_err(|err| match err {
            // The reader names the file by the name given here: say which path it was.
            InferError::BadFile { path, message } => {
                let full = [(&dn, detector), (&ln, landmarks), (&en, encoder)]
                    .into_iter()
                    .find(|(n, _)| path == Path::new(n.as_str()))
                    .map_or(path.clone(), |(_, p)| p.to_path_buf());
                InferError::bad_file(full, message)
            }
            other => other,
        })
    }

    /// A face model from the bytes of dlib's three files, each `(file name, bytes)`:
    /// the detector (its batch norms folded into its convolutions), the landmark predictor,
    /// and the encoder as the model's [`Encoder`] (`dlib-resnet`, 150x150 RGB, 128 numbers).
    ///
    /// Its metadata: RGB 150x150 preprocessing (dlib's `(pixel - mean) / 256`, as
    /// `(x - mean / 255) / (256 / 255)` on `[0, 1]` values), the Euclidean distance
    /// ([`Distance::L2`], not squared), the threshold stored in dlib's encoder file (0.6) as a
    /// calibration that was not measured ([`Calibration::stored`]), the pipeline's settings
    /// and each file's name, size and sha256 ([`FaceMeta`]). Fails with
    /// [`InferError::BadFile`] naming the file and the byte offset that dlib's reader refused.
    pub fn from_dlib(
        detector: (&str, &[u8]),
        landmarks: (&str, &[u8]),
        encoder: (&str, &[u8]),
    ) -> Result<Model> {
        let pipeline =
            FacePipeline::from_dlib(detector, landmarks, encoder).map_err(|e| match e {
                FaceError::Format {
                    file,
                    offset,
                    message,
                } => InferError::bad_file(file, format!("at byte {offset}: {message}")),
                other => InferError::Config(format!("dlib's face models: {other}")),
            })?;
        let sources = vec![
            source("detector", detector),
            source("landmarks", landmarks),
            source("encoder", encoder),
        ];
        let FacePipeline {
            detector: det,
            landmarks: lm,
            encoder: enc,
            detect,
        } = pipeline;
        let (enc, mean_rgb, threshold) = enc.into_parts();
        let cfg = enc.config().clone();
        let face = FaceMeta {
            detector: det.settings(),
            upsample: detect.upsample,
            detect_threshold: detect.threshold,
            landmarks: lm.settings(),
            chip: ChipSettings {
                size: cfg.height,
                padding: CHIP_PADDING,
            },
            mean_rgb,
            sources: sources.clone(),
        };
        let enc_source = &sources[2];
        let preprocess = Preprocess::new(3, cfg.width as u32, cfg.height as u32)
            .with_normalisation(
                mean_rgb.iter().map(|m| m / 255.0).collect(),
                vec![256.0 / 255.0],
            );
        let meta = ModelMeta {
            preprocess,
            distance: Distance::L2,
            calibration: Some(Calibration::stored(
                threshold,
                format!(
                    "dlib's stored threshold (in {}, sha256 {}), not measured here",
                    enc_source.file, enc_source.sha256
                ),
            )),
            provenance: Provenance {
                data: sources
                    .iter()
                    .map(|s| format!("{} (sha256 {})", s.file, s.sha256))
                    .collect(),
                recipe: Some("dlib face models, imported".into()),
                config: serde_json::to_value(&sources)
                    .map_err(|e| InferError::Config(format!("sources to JSON: {e}")))?,
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..Provenance::default()
            },
            tta: Tta::None,
        };
        meta.validate()?;
        Ok(Model {
            encoder: enc,
            meta,
            extra: Vec::new(),
            face: Some(FaceModel {
                detector: det,
                landmarks: lm,
                meta: face,
            }),
        })
    }

    /// Whether this model holds a face pipeline (it then detects, aligns and encodes faces in
    /// photos).
    pub fn is_face_model(&self) -> bool {
        self.face.is_some()
    }

    /// The face pipeline, or an error saying the model has none.
    pub(crate) fn face_model(&self) -> Result<&FaceModel> {
        self.face.as_ref().ok_or_else(|| {
            InferError::Config(
                "this model has no face pipeline (import one with `Model::import_dlib`)".into(),
            )
        })
    }
}
