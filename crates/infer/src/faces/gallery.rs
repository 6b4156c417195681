//! Galleries of faces: enrolment of a folder of photos (one sub-folder per identity) with the
//! count of photos that gave no face or several, and identification of every face of a
//! photo.
//!
//! The counts are stored beside the gallery's own description, under
//! [`GALLERY_FACES_KEY`] (JSON of a list of [`EnrolledFaces`]); a gallery file with them opens
//! as any gallery.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use siamese_data::{decode_photo, Dataset};
use siamese_face::RgbImage;

use super::{select, FaceOptions, FoundFace};
use crate::error::{InferError, Result};
use crate::fsutil::write_atomic;
use crate::gallery::{embeddings_file_bytes, Gallery, Identification, GALLERY_KEY};
use crate::model::{Model, Tta};

/// Metadata key of a face gallery's enrolment counts (JSON of a list of [`EnrolledFaces`]).
pub const GALLERY_FACES_KEY: &str = "siamese.gallery.faces";

/// The largest safetensors header [`read_enrolment`] reads.
const MAX_HEADER: u64 = 100_000_000;

/// What enrolment made of one identity's photos.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledFaces {
    /// The identity (its sub-folder's name).
    pub identity: String,
    /// Photos read.
    pub images: usize,
    /// Faces enrolled (rows of the gallery).
    pub faces: usize,
    /// Photos in which no face was found (not enrolled).
    pub no_face: usize,
    /// Photos with several faces (the largest enrolled, or every one with [`Faces::All`](super::Faces::All)).
    pub several: usize,
    /// The photos without a face.
    pub no_face_paths: Vec<String>,
    /// The photos with several faces.
    pub several_paths: Vec<String>,
}

/// A gallery enrolled from photos, with what each identity's photos gave.
#[derive(Clone, Debug)]
pub struct FaceEnrolment {
    /// The gallery.
    pub gallery: Gallery,
    /// Per identity, in the gallery's order.
    pub identities: Vec<EnrolledFaces>,
}

impl FaceEnrolment {
    /// The gallery file's bytes, with the counts under [`GALLERY_FACES_KEY`].
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let json = |what: &str, v: serde_json::Result<String>| {
            v.map_err(|e| InferError::Config(format!("{what} to JSON: {e}")))
        };
        let meta = HashMap::from([
            (
                GALLERY_KEY.to_string(),
                json(
                    "gallery metadata",
                    serde_json::to_string(self.gallery.meta()),
                )?,
            ),
            (
                GALLERY_FACES_KEY.to_string(),
                json("enrolment counts", serde_json::to_string(&self.identities))?,
            ),
        ]);
        embeddings_file_bytes(
            self.gallery.rows(),
            &[self.gallery.len(), self.gallery.row_len()],
            meta,
        )
    }

    /// Writes the gallery file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }
}

/// The enrolment counts a face gallery file records (`None` for galleries enrolled otherwise),
/// read from its header alone.
pub fn read_enrolment(path: &Path) -> Result<Option<Vec<EnrolledFaces>>> {
    use std::io::Read;
    let io = |e| InferError::io(path, e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| InferError::bad_file(path, "not a gallery file: too short"))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n.saturating_add(8) > size {
        return Err(InferError::bad_file(
            path,
            format!("not a gallery file: a header of {n} bytes in a file of {size}"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| InferError::bad_file(path, format!("not a gallery file: {e}")))?;
    let Some(json) = header
        .get("__metadata__")
        .and_then(|m| m.get(GALLERY_FACES_KEY))
        .and_then(|j| j.as_str())
    else {
        return Ok(None);
    };
    serde_json::from_str(json)
        .map(Some)
        .map_err(|e| InferError::bad_file(path, format!("bad `{GALLERY_FACES_KEY}`: {e}")))
}

/// One face of a probe photo and who it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaceIdentification {
    /// Where the face is.
    #[serde(flatten)]
    pub face: FoundFace,
    /// The identity's name, or `unknown`.
    pub name: String,
    /// The decision and the nearest identities.
    #[serde(flatten)]
    pub identification: Identification,
}

/// Every face of a probe photo, identified.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhotoIdentification {
    /// The photo.
    #[serde(serialize_with = "super::lossy_path")]
    pub path: PathBuf,
    /// How many faces were found in it (1 when detection is off).
    pub found: usize,
    /// The faces identified (every one, most confident first, or the largest).
    pub faces: Vec<FaceIdentification>,
}

/// The photo of a data set item, upright and RGB.
fn item_photo(source: &siamese_data::ImageSource) -> Result<RgbImage> {
    let name = source.display_name();
    let img = match source.read_bytes()? {
        Some(bytes) => decode_photo(&bytes, &name)?,
        None => source.load()?,
    }
    .to_rgb8();
    let (w, h) = img.dimensions();
    RgbImage::new(w as usize, h as usize, img.into_raw())
        .map_err(|source| InferError::Face { path: name, source })
}

impl Gallery {
    /// Enrols a folder with one sub-folder of photos per identity (named after it) with a
    /// face model: in each photo the faces are found as `opts.detect` says and those
    /// `opts.faces` selects (the largest by default) are enrolled. Photos without a face are
    /// skipped and, like photos with several faces, counted per identity
    /// ([`EnrolledFaces`]). Fails when no photo of the folder has a face
    /// ([`InferError::NoFace`] naming the folder), or as [`Gallery::enrol`] does.
    pub fn enrol_faces(model: &Model, folder: &Path, opts: &FaceOptions) -> Result<FaceEnrolment> {
        model.face_model()?;
        let data = Dataset::open(folder)?;
        if data.is_empty() {
            return Err(InferError::NoImages {
                path: folder.to_path_buf(),
            });
        }
        let mut counts: Vec<EnrolledFaces> = data
            .classes
            .iter()
            .map(|c| EnrolledFaces {
                identity: c.clone(),
                ..EnrolledFaces::default()
            })
            .collect();
        let (mut rows, mut labels, mut paths) = (Vec::new(), Vec::new(), Vec::new());
        for item in &data.items {
            let name = item.source.display_name();
            let img = item_photo(&item.source)?;
            let all = model.find_faces_in(&img, opts, &name)?;
            let Some(count) = counts.get_mut(item.class) else {
                continue;
            };
            count.images += 1;
            let shown = name.display().to_string();
            match all.len() {
                0 => {
                    count.no_face += 1;
                    count.no_face_paths.push(shown.clone());
                }
                1 => {}
                _ => {
                    count.several += 1;
                    count.several_paths.push(shown.clone());
                }
            }
            let faces = select(all, opts.faces);
            if faces.is_empty() {
                continue;
            }
            let chips = model.face_chips_in(&img, &faces, &name)?;
            rows.extend(model.encode_chips(&chips)?);
            count.faces += faces.len();
            labels.extend(std::iter::repeat_n(item.class, faces.len()));
            paths.extend(std::iter::repeat_n(shown, faces.len()));
        }
        if labels.is_empty() {
            return Err(InferError::NoFace {
                path: folder.to_path_buf(),
            });
        }
        let gallery = Gallery::from_rows(model, rows, data.classes.clone(), labels, paths)?;
        Ok(FaceEnrolment {
            gallery,
            identities: counts,
        })
    }

    /// Identifies the faces of probe photos with a face model: in each photo the faces are
    /// found as `opts.detect` says, those `opts.faces` selects (every one with
    /// [`Faces::All`](super::Faces::All)) are encoded, and each gets its `top` nearest identities and the
    /// decision at `threshold` (`None`: the model's), "unknown" unless the nearest is below
    /// it. A photo without a face gives an entry with no faces. `model` must be the model the
    /// gallery was opened with.
    pub fn identify_faces<P: AsRef<Path>>(
        &self,
        model: &Model,
        probes: &[P],
        opts: &FaceOptions,
        top: usize,
        threshold: Option<f32>,
    ) -> Result<Vec<PhotoIdentification>> {
        let threshold = crate::gallery::decision_threshold(model, top, threshold)?;
        if self.tta() != Tta::None {
            return Err(InferError::Config(format!(
                "the gallery was enrolled with test-time augmentation {}; a face model \
                 encodes each chip once",
                self.tta()
            )));
        }
        let mut out = Vec::with_capacity(probes.len());
        for p in probes {
            let photo = model.encode_photo(p.as_ref(), opts)?;
            let ranked = if photo.faces.is_empty() {
                Vec::new()
            } else {
                self.rank(&photo.rows, top)?
            };
            let faces = photo
                .faces
                .into_iter()
                .zip(ranked)
                .map(|(face, candidates)| {
                    let identification = Identification::decide(candidates, threshold);
                    FaceIdentification {
                        face,
                        name: identification.name().to_string(),
                        identification,
                    }
                })
                .collect();
            out.push(PhotoIdentification {
                path: photo.path,
                found: photo.found,
                faces,
            });
        }
        Ok(out)
    }
}

/// The default options, for [`Gallery::enrol`] with a face model.
pub(crate) fn enrol_default(model: &Model, folder: &Path) -> Result<Gallery> {
    Ok(Gallery::enrol_faces(model, folder, &FaceOptions::default())?.gallery)
}
