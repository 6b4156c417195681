//! The whole face pipeline of face_recognition, as one value: detect faces (MMOD CNN), place
//! 5 landmarks in each, cut the aligned chip, encode it.
//!
//! ```no_run
//! # fn main() -> siamese_face::Result<()> {
//! use siamese_face::{FacePipeline, RgbImage};
//! let read = |f: &str| std::fs::read(format!("models/{f}")).unwrap();
//! let pipeline = FacePipeline::from_dlib(
//!     ("detector", &read("mmod_human_face_detector.dat")),
//!     ("landmarks", &read("shape_predictor_5_face_landmarks.dat")),
//!     ("encoder", &read("dlib_face_recognition_resnet_model_v1.dat")),
//! )?;
//! let photo = RgbImage::zeroed(640, 480)?;
//! for face in pipeline.encode(&photo)? {
//!     println!("{:?} {:.3}", face.face.rect, face.descriptor[0]);
//! }
//! # Ok(())
//! # }
//! ```

use crate::chip::{chip_details, extract_chip};
use crate::detect::{DetectOptions, Detector};
use crate::encoder::{Descriptor, FaceEncoder, CHIP_SIZE};
use crate::error::{FaceError, Result};
use crate::geometry::{Point, Rect};
use crate::image::RgbImage;
use crate::landmarks::ShapePredictor;

/// dlib's chip padding in `get_face_chip_details` (a quarter of the face on every side).
pub const CHIP_PADDING: f64 = 0.25;

/// One face found in an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// The detector's box (or the whole image when detection is off).
    pub rect: Rect,
    /// The detector's confidence (`None` when detection is off).
    pub confidence: Option<f32>,
    /// The 5 landmarks, in dlib's order (right eye outer and inner corner, left eye outer and
    /// inner corner, base of the nose), in image pixels.
    pub points: Vec<Point>,
}

/// A face and its descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedFace {
    /// Where the face is.
    pub face: Face,
    /// Its 128 numbers (dlib's descriptor; Euclidean distance <= the threshold: same person).
    pub descriptor: Descriptor,
}

/// Detector, landmark predictor and encoder, with the detector's settings.
#[derive(Debug)]
pub struct FacePipeline {
    /// The MMOD CNN face detector.
    pub detector: Detector,
    /// The 5-point shape predictor.
    pub landmarks: ShapePredictor,
    /// The ResNet face encoder.
    pub encoder: FaceEncoder,
    /// Upsampling, score threshold and pixel limit of detection (face_recognition's
    /// `model="cnn"` defaults: upsampled once, threshold 0).
    pub detect: DetectOptions,
}

impl FacePipeline {
    /// The pipeline from dlib's three files, each given as `(name for errors, bytes)`.
    pub fn from_dlib(
        detector: (&str, &[u8]),
        landmarks: (&str, &[u8]),
        encoder: (&str, &[u8]),
    ) -> Result<Self> {
        Ok(Self {
            detector: Detector::from_dlib(detector.0, detector.1)?,
            landmarks: ShapePredictor::from_dlib(landmarks.0, landmarks.1)?,
            encoder: FaceEncoder::from_dlib(encoder.0, encoder.1)?,
            detect: DetectOptions::default(),
        })
    }

    /// Every face the detector finds, most confident first, with its landmarks.
    pub fn faces(&self, img: &RgbImage) -> Result<Vec<Face>> {
        let found = self.detector.detect(img, &self.detect)?;
        Ok(found
            .into_iter()
            .map(|d| Face {
                rect: d.rect,
                confidence: Some(d.confidence),
                points: self.landmarks.predict(img, d.rect),
            })
            .collect())
    }

    /// The face in `rect` (no detection: for photos already cropped to one face, pass the
    /// whole image's rectangle), with its landmarks.
    pub fn face_in(&self, img: &RgbImage, rect: Rect) -> Face {
        Face {
            rect,
            confidence: None,
            points: self.landmarks.predict(img, rect),
        }
    }

    /// The rectangle of the whole image.
    pub fn whole(img: &RgbImage) -> Rect {
        Rect::new(0, 0, img.width() as i64 - 1, img.height() as i64 - 1)
    }

    /// The aligned 150x150 chip of each face (dlib's `get_face_chip(img, shape, 150, 0.25)`).
    pub fn chips(&self, img: &RgbImage, faces: &[Face]) -> Result<Vec<RgbImage>> {
        faces
            .iter()
            .map(|f| {
                if f.points.len() != 5 {
                    return Err(FaceError::Input(format!(
                        "a face chip needs 5 landmarks, the face at {:?} has {}",
                        f.rect,
                        f.points.len()
                    )));
                }
                extract_chip(img, &chip_details(&f.points, CHIP_SIZE, CHIP_PADDING)?)
            })
            .collect()
    }

    /// The descriptors of the given faces of `img`, in their order.
    pub fn encode_faces(&self, img: &RgbImage, faces: Vec<Face>) -> Result<Vec<EncodedFace>> {
        let chips = self.chips(img, &faces)?;
        let descriptors = self.encoder.embed(&chips)?;
        Ok(faces
            .into_iter()
            .zip(descriptors)
            .map(|(face, descriptor)| EncodedFace { face, descriptor })
            .collect())
    }

    /// Detects, aligns and encodes every face of `img` (face_recognition's `face_encodings`
    /// after `face_locations(model="cnn")`), most confident first; empty when there is none.
    pub fn encode(&self, img: &RgbImage) -> Result<Vec<EncodedFace>> {
        let faces = self.faces(img)?;
        self.encode_faces(img, faces)
    }
}

/// The largest face (by box area; the first of equals), if any.
pub fn largest(faces: &[Face]) -> Option<&Face> {
    faces
        .iter()
        .fold(None, |best: Option<&Face>, f| match best {
            Some(b) if b.rect.area() >= f.rect.area() => Some(b),
            _ => Some(f),
        })
}
