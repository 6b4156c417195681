//! Photos through a face model: decode (EXIF orientation applied, grey replicated to RGB),
//! find faces, cut their chips, encode them; verification of two photos' largest faces;
//! embedding files of faces.

use std::path::{Path, PathBuf};

use serde::Serialize;
use siamese_face::{Face, FacePipeline, RgbImage};

use super::{select, Detect, FaceOptions, Faces, FoundFace, MAX_UPSAMPLE};
use crate::error::{InferError, Result};
use crate::model::{Model, Tta};
use crate::verify::{Verdict, Verifier};
use crate::Embeddings;

/// Decodes the photo at `path` as 8-bit RGB with its EXIF orientation applied
/// (`siamese_data::load_photo`): grey images are replicated to RGB, alpha is dropped, 16-bit
/// samples are scaled to 8 bits.
pub fn load_photo_rgb(path: &Path) -> Result<RgbImage> {
    let img = siamese_data::load_photo(path)?.to_rgb8();
    let (w, h) = img.dimensions();
    RgbImage::new(w as usize, h as usize, img.into_raw()).map_err(|source| InferError::Face {
        path: path.to_path_buf(),
        source,
    })
}

/// A photo and every face found in it.
#[derive(Clone, Debug)]
pub struct Photo {
    /// The file.
    pub path: PathBuf,
    /// Its pixels, upright.
    pub image: RgbImage,
    /// The faces, most confident first (the whole image when detection is off).
    pub faces: Vec<Face>,
}

impl Photo {
    /// The faces as programs read them.
    pub fn found(&self) -> Vec<FoundFace> {
        self.faces.iter().map(FoundFace::from).collect()
    }
}

/// A photo's faces with their descriptors.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhotoFaces {
    /// The file.
    #[serde(serialize_with = "super::lossy_path")]
    pub path: PathBuf,
    /// Its width in pixels (upright).
    pub width: usize,
    /// Its height in pixels.
    pub height: usize,
    /// How many faces were found (1 when detection is off).
    pub found: usize,
    /// The faces used: every one, most confident first, or the largest.
    pub faces: Vec<FoundFace>,
    /// Their representations, one after the other ([`Model::row_len`] values each).
    #[serde(skip)]
    pub rows: Vec<f32>,
}

/// The face of one photo that a comparison used.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChosenFace {
    /// The file.
    #[serde(serialize_with = "super::lossy_path")]
    pub path: PathBuf,
    /// The face (the largest found).
    #[serde(flatten)]
    pub face: FoundFace,
    /// How many faces the photo has (more than 1: the largest was used).
    pub found: usize,
}

/// A verdict on the largest faces of two photos.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaceVerdict {
    /// Distance, decision and threshold.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The face of the first photo.
    pub a: ChosenFace,
    /// The face of the second photo.
    pub b: ChosenFace,
}

/// `e` on the image `path` as an [`InferError::Face`].
fn on(path: &Path) -> impl Fn(siamese_face::FaceError) -> InferError + '_ {
    move |source| InferError::Face {
        path: path.to_path_buf(),
        source,
    }
}

impl Model {
    /// Every face of `img` as `opts.detect` finds them: the detector's (most confident first,
    /// upsampled `opts.upsample` times or as the model says), or the whole image; each with
    /// its 5 landmarks. Fails on a model without a face pipeline, an upsampling over
    /// [`MAX_UPSAMPLE`], or an image too large to detect in.
    pub fn find_faces(&self, img: &RgbImage, opts: &FaceOptions) -> Result<Vec<Face>> {
        self.find_faces_in(img, opts, Path::new("<image>"))
    }

    pub(crate) fn find_faces_in(
        &self,
        img: &RgbImage,
        opts: &FaceOptions,
        path: &Path,
    ) -> Result<Vec<Face>> {
        let face = self.face_model()?;
        if let Some(u) = opts.upsample.filter(|&u| u > MAX_UPSAMPLE) {
            return Err(InferError::Config(format!(
                "upsampling {u} times is over the limit of {MAX_UPSAMPLE}"
            )));
        }
        let predict = |rect| Face {
            rect,
            confidence: None,
            points: face.landmarks.predict(img, rect),
        };
        match opts.detect {
            Detect::None => Ok(vec![predict(FacePipeline::whole(img))]),
            Detect::Cnn => {
                let found = face
                    .detector
                    .detect(img, &face.detect_options(opts.upsample))
                    .map_err(on(path))?;
                Ok(found
                    .into_iter()
                    .map(|d| Face {
                        confidence: Some(d.confidence),
                        ..predict(d.rect)
                    })
                    .collect())
            }
        }
    }

    /// The aligned chip of each face (dlib's `get_face_chip`: the model's chip size and
    /// padding), in order.
    pub fn face_chips(&self, img: &RgbImage, faces: &[Face]) -> Result<Vec<RgbImage>> {
        self.face_chips_in(img, faces, Path::new("<image>"))
    }

    pub(crate) fn face_chips_in(
        &self,
        img: &RgbImage,
        faces: &[Face],
        path: &Path,
    ) -> Result<Vec<RgbImage>> {
        let c = self.face_model()?.meta.chip;
        faces
            .iter()
            .map(|f| siamese_face::chip::face_chip(img, &f.points, c.size, c.padding))
            .collect::<siamese_face::Result<_>>()
            .map_err(on(path))
    }

    /// The representations of face chips (each the model's chip size), as dlib encodes them:
    /// `(pixel - mean) / 256`, batches of 16; `chips.len()` rows of [`Model::row_len`] values.
    /// Fails on a model without a face pipeline, or with a test-time augmentation (a face
    /// model encodes each chip once).
    pub fn encode_chips(&self, chips: &[RgbImage]) -> Result<Vec<f32>> {
        let face = self.face_model()?;
        if self.meta.tta != Tta::None {
            return Err(InferError::Config(format!(
                "test-time augmentation {} is not available with a face model (it encodes \
                 each chip once, as dlib does)",
                self.meta.tta
            )));
        }
        siamese_face::encoder::embed_chips(&self.encoder, face.meta.mean_rgb, chips).map_err(
            |source| InferError::Face {
                path: "<chips>".into(),
                source,
            },
        )
    }

    /// Decodes the photo at `path` (upright, RGB) and finds its faces
    /// ([`Model::find_faces`]).
    pub fn detect_photo(&self, path: &Path, opts: &FaceOptions) -> Result<Photo> {
        self.face_model()?;
        let image = load_photo_rgb(path)?;
        let faces = self.find_faces_in(&image, opts, path)?;
        Ok(Photo {
            path: path.to_path_buf(),
            image,
            faces,
        })
    }

    /// Decodes the photo at `path`, finds its faces, and encodes those `opts.faces` selects
    /// (the largest, or all). A photo without a face gives none (`found` 0): callers that
    /// need one say so ([`InferError::NoFace`]).
    pub fn encode_photo(&self, path: &Path, opts: &FaceOptions) -> Result<PhotoFaces> {
        let photo = self.detect_photo(path, opts)?;
        let found = photo.faces.len();
        let faces = select(photo.faces, opts.faces);
        let chips = self.face_chips_in(&photo.image, &faces, path)?;
        let rows = if chips.is_empty() {
            Vec::new()
        } else {
            self.encode_chips(&chips)?
        };
        Ok(PhotoFaces {
            path: photo.path,
            width: photo.image.width(),
            height: photo.image.height(),
            found,
            faces: faces.iter().map(FoundFace::from).collect(),
            rows,
        })
    }

    /// The largest face of each photo, found by the detector, encoded: what
    /// [`Model::embed_paths`] gives for a face model. A photo without a face is
    /// [`InferError::NoFace`].
    pub(crate) fn embed_largest_faces<P: AsRef<Path>>(&self, paths: &[P]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(paths.len() * self.row_len());
        for p in paths {
            let photo = self.encode_photo(p.as_ref(), &FaceOptions::default())?;
            if photo.faces.is_empty() {
                return Err(InferError::NoFace {
                    path: p.as_ref().to_path_buf(),
                });
            }
            out.extend(photo.rows);
        }
        Ok(out)
    }
}

impl Verifier {
    /// Verifies the largest faces of two photos (a face model's verification): found as
    /// `opts.detect` says (`opts.faces` is not used), encoded, compared at the threshold. A
    /// photo without a face is [`InferError::NoFace`] naming it; `found` says when a photo has
    /// several.
    pub fn verify_faces(&self, a: &Path, b: &Path, opts: &FaceOptions) -> Result<FaceVerdict> {
        let opts = FaceOptions {
            faces: Faces::Largest,
            ..*opts
        };
        let mut chosen = Vec::with_capacity(2);
        let mut rows = Vec::with_capacity(2);
        for path in [a, b] {
            let photo = self.model().encode_photo(path, &opts)?;
            let Some(face) = photo.faces.first() else {
                return Err(InferError::NoFace {
                    path: path.to_path_buf(),
                });
            };
            chosen.push(ChosenFace {
                path: photo.path.clone(),
                face: face.clone(),
                found: photo.found,
            });
            rows.push(photo.rows);
        }
        let verdict = self.verify_rows(&rows[0], &rows[1]);
        let mut chosen = chosen.into_iter();
        match (chosen.next(), chosen.next()) {
            (Some(a), Some(b)) => Ok(FaceVerdict { verdict, a, b }),
            _ => Err(InferError::Config("verify: two photos expected".into())),
        }
    }
}

impl Embeddings {
    /// The representations of the faces of photos (a face model's embedding file): the faces
    /// `opts.faces` selects in each photo, one row each, in the order of the photos; each
    /// row's path is its photo's, and [`Embeddings::faces`] says where each face is. With
    /// [`Faces::Largest`] a photo without a face is [`InferError::NoFace`] (each photo gives
    /// one row); with [`Faces::All`] it gives no row. Also returns each photo's faces.
    pub fn of_faces<P: AsRef<Path>>(
        model: &Model,
        paths: &[P],
        opts: &FaceOptions,
    ) -> Result<(Self, Vec<PhotoFaces>)> {
        let mut values = Vec::new();
        let mut names = Vec::new();
        let mut faces = Vec::new();
        let mut photos = Vec::with_capacity(paths.len());
        for p in paths {
            let photo = model.encode_photo(p.as_ref(), opts)?;
            if photo.faces.is_empty() && opts.faces == Faces::Largest {
                return Err(InferError::NoFace {
                    path: p.as_ref().to_path_buf(),
                });
            }
            values.extend_from_slice(&photo.rows);
            for f in &photo.faces {
                names.push(photo.path.display().to_string());
                faces.push(f.clone());
            }
            photos.push(photo);
        }
        let shape = model.embedding_shape(names.len());
        let mut e = Embeddings::new(values, shape, names)?;
        e.faces = Some(faces);
        Ok((e, photos))
    }
}
