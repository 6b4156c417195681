//! Faces in photos: a model that holds dlib's face pipeline (the MMOD detector, the 5-point
//! landmark predictor and the ResNet encoder, imported from dlib's three files into one
//! model file), and what it does with photos.
//!
//! What it owns:
//! - the face part of a model file ([`FaceModel`], [`FaceMeta`] under [`FACE_KEY`], the
//!   `detector.*` and `landmarks.*` tensors) and the import of dlib's files
//!   ([`Model::import_dlib`](crate::Model::import_dlib), [`Model::from_dlib`](crate::Model::from_dlib)), with each file's name and sha256;
//! - photos: decoded with their EXIF orientation ([`load_photo_rgb`]), faces found
//!   ([`Model::find_faces`](crate::Model::find_faces), [`Model::detect_photo`](crate::Model::detect_photo): the detector, or the whole image with
//!   [`Detect::None`]), aligned chips ([`Model::face_chips`](crate::Model::face_chips)), encoded
//!   ([`Model::encode_photo`](crate::Model::encode_photo): the largest face or every face, [`Faces`]);
//! - verification of the largest faces of two photos ([`Verifier::verify_faces`](crate::Verifier::verify_faces)), enrolment
//!   with the count of photos that gave no face or several ([`Gallery::enrol_faces`](crate::Gallery::enrol_faces)),
//!   identification of every face of a group photo ([`Gallery::identify_faces`](crate::Gallery::identify_faces));
//! - pictures for people: the faces drawn on a photo ([`draw_faces`]), PNGs ([`save_png`]).
//!
//! A face model's [`Model::encoder`](crate::Model::encoder) is dlib's network: chips are encoded as dlib does,
//! `(pixel - mean) / 256` in batches of 16, so descriptors, detections and landmarks are bit
//! for bit those of `siamese_face::FacePipeline` on dlib's own files.

mod draw;
mod file;
mod gallery;
mod photos;

use serde::{Deserialize, Serialize};
use siamese_face::{Face, Point, Rect};

use crate::error::{InferError, Result};

/// Writes a path as text, replacing what is not UTF-8 (a file name may be any bytes; JSON
/// output must not fail on one).
pub(crate) fn lossy_path<S: serde::Serializer>(
    p: &std::path::Path,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

pub use draw::{draw_faces, save_png};
pub use file::{ChipSettings, FaceMeta, FaceModel, FaceSource, FACE_KEY, MAX_UPSAMPLE};
pub(crate) use gallery::enrol_default;
pub use gallery::{
    read_enrolment, EnrolledFaces, FaceEnrolment, FaceIdentification, PhotoIdentification,
    GALLERY_FACES_KEY,
};
pub use photos::{load_photo_rgb, ChosenFace, FaceVerdict, Photo, PhotoFaces};

/// How the faces of a photo are found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Detect {
    /// The model's CNN detector (dlib's MMOD), upsampling as the model says.
    #[default]
    Cnn,
    /// No detection: the whole image is the face's box (photos already cropped to one face);
    /// landmarks and chip as usual.
    None,
}

impl Detect {
    /// By name: `cnn` or `none`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "cnn" => Ok(Detect::Cnn),
            "none" => Ok(Detect::None),
            other => Err(InferError::Config(format!(
                "unknown face detection `{other}` (expected cnn or none)"
            ))),
        }
    }
}

/// Which of a photo's faces are used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Faces {
    /// The largest face (by box area; the more confident of equals).
    #[default]
    Largest,
    /// Every face, most confident first.
    All,
}

impl Faces {
    /// By name: `largest` or `all`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "largest" => Ok(Faces::Largest),
            "all" => Ok(Faces::All),
            other => Err(InferError::Config(format!(
                "unknown face selection `{other}` (expected largest or all)"
            ))),
        }
    }
}

/// How a face model reads a photo.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaceOptions {
    /// How faces are found.
    pub detect: Detect,
    /// Which faces are used (ignored where one face is needed, as in verification).
    pub faces: Faces,
    /// How many times the photo is doubled before detection (`None`: the model's, 1 for
    /// dlib's; at most [`MAX_UPSAMPLE`]): 0 finds faces down to about 80 pixels, each step
    /// half that size at four times the work.
    pub upsample: Option<u32>,
}

/// A face's box: dlib's rectangle with inclusive corners, in image pixels (it may reach past
/// the image's edges for a face cut by the border).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaceBox {
    /// First column.
    pub left: i64,
    /// First row.
    pub top: i64,
    /// Last column.
    pub right: i64,
    /// Last row.
    pub bottom: i64,
}

impl From<Rect> for FaceBox {
    fn from(r: Rect) -> Self {
        FaceBox {
            left: r.left,
            top: r.top,
            right: r.right,
            bottom: r.bottom,
        }
    }
}

impl std::fmt::Display for FaceBox {
    /// `left,top,right,bottom`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.left, self.top, self.right, self.bottom
        )
    }
}

/// A face found in a photo, as programs read it: box, confidence, landmarks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoundFace {
    /// Where it is.
    #[serde(rename = "box")]
    pub rect: FaceBox,
    /// The detector's confidence (`None` when detection was off).
    pub confidence: Option<f32>,
    /// The 5 landmarks `[x, y]`: the outer and inner corner of the eye on the image's right,
    /// of the eye on the image's left, and the base of the nose.
    pub points: Vec<[i64; 2]>,
}

impl From<&Face> for FoundFace {
    fn from(f: &Face) -> Self {
        FoundFace {
            rect: f.rect.into(),
            confidence: f.confidence,
            points: f.points.iter().map(|p: &Point| [p.x, p.y]).collect(),
        }
    }
}

/// The faces `opts` selects among `all` (most confident first): every one, or the largest.
pub(crate) fn select(all: Vec<Face>, faces: Faces) -> Vec<Face> {
    match faces {
        Faces::All => all,
        Faces::Largest => siamese_face::pipeline::largest(&all)
            .cloned()
            .into_iter()
            .collect(),
    }
}
