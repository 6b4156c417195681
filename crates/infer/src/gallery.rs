//! Galleries: enrolled identities' representations in one file, searched for the identities
//! nearest to a probe, with "unknown" when even the nearest is too far.
//!
//! The file is a `.safetensors` with one F32 tensor `embeddings` `[rows, R]` (`R`: the
//! model's representation length under the gallery's test-time augmentation) and, under the
//! metadata key [`GALLERY_KEY`], the JSON of [`GalleryMeta`]: the model's weights fingerprint
//! ([`Model::fingerprint`]), the identity names, each row's identity, each row's source image,
//! and the test-time augmentation the rows were made with (absent in older files: the
//! model's own).

use crate::checksum::{TensorDigest, CHECKSUM_KEY};
use crate::error::{InferError, Result};
use crate::model::{check_threshold, embed_flat, Model, Tta, EMBED_BATCH};
use crate::{fsutil::write_atomic, images::load_images};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use siamese_data::{Dataset, ImageCache, Skipped};
use siamese_ops::distance::{Distance, GalleryIndex, Matcher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod edit;

/// Metadata key of a gallery's description (JSON of [`GalleryMeta`]).
pub const GALLERY_KEY: &str = "siamese.gallery";

/// The largest safetensors header read (the limit of the `safetensors` crate).
const MAX_GALLERY_HEADER: u64 = 100_000_000;

/// What [`Identification::name`] says when the nearest identity is not below the threshold.
pub const UNKNOWN: &str = "unknown";

/// Everything in a gallery file besides the embeddings (the file's JSON keys, in this order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GalleryMeta {
    /// The fingerprint of the model that enrolled it ([`Model::fingerprint`]).
    pub model: String,
    /// The identity names; row `i` belongs to `identities[labels[i]]`.
    pub identities: Vec<String>,
    /// The identity of each row.
    pub labels: Vec<usize>,
    /// The image each row was made from (empty for generated galleries).
    pub paths: Vec<String>,
    /// The test-time augmentation the images were encoded with (absent in older galleries:
    /// the model's own).
    #[serde(default)]
    pub tta: Option<Tta>,
}

/// An identity near a probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    /// The identity's name.
    pub identity: String,
    /// The distance from the probe to the identity's nearest enrolled image.
    pub distance: f32,
}

/// Who a probe is: the nearest identities, and the decision at the threshold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Identification {
    /// The nearest identity, or `None` ("unknown") when its distance is not below the
    /// threshold (or the gallery is empty).
    pub identity: Option<String>,
    /// The threshold decided at, if any (without one the nearest identity is always given).
    pub threshold: Option<f32>,
    /// The nearest identities, ascending by distance.
    pub candidates: Vec<Candidate>,
}

impl Identification {
    /// Decides on ranked `candidates`: the first one when its distance is below `threshold`
    /// (or there is no threshold), else unknown.
    pub fn decide(candidates: Vec<Candidate>, threshold: Option<f32>) -> Self {
        let identity = candidates
            .first()
            .filter(|c| threshold.is_none_or(|t| c.distance < t))
            .map(|c| c.identity.clone());
        Identification {
            identity,
            threshold,
            candidates,
        }
    }

    /// The identity's name, or [`UNKNOWN`].
    pub fn name(&self) -> &str {
        self.identity.as_deref().unwrap_or(UNKNOWN)
    }
}

/// Enrolled identities, searchable: the representations of their images under one model and
/// test-time augmentation, each row labelled with its identity.
#[derive(Clone, Debug)]
pub struct Gallery {
    meta: GalleryMeta,
    /// The test-time augmentation probes are encoded with (the gallery's).
    tta: Tta,
    matcher: Matcher,
    /// The rows, `[rows, R]`, with their squared norms for nearest-neighbour search.
    index: GalleryIndex,
}

impl Gallery {
    /// A gallery of `rows` (`labels.len()` representations made by `model`, one after the
    /// other) of the named `identities`; `paths` names each row's image (or is empty).
    /// Fails when the sizes disagree or a label is beyond the identities.
    pub fn from_rows(
        model: &Model,
        rows: Vec<f32>,
        identities: Vec<String>,
        labels: Vec<usize>,
        paths: Vec<String>,
    ) -> Result<Self> {
        let meta = GalleryMeta {
            model: model.fingerprint()?,
            identities,
            labels,
            paths,
            tta: Some(model.meta.tta),
        };
        let bad = |m: String| InferError::Config(format!("gallery: {m}"));
        let dim = model.row_len();
        if rows.len() != meta.labels.len() * dim {
            return Err(bad(format!(
                "{} values for {} rows of {dim}",
                rows.len(),
                meta.labels.len()
            )));
        }
        if !meta.paths.is_empty() && meta.paths.len() != meta.labels.len() {
            return Err(bad(format!(
                "{} paths for {} rows",
                meta.paths.len(),
                meta.labels.len()
            )));
        }
        if meta.labels.iter().any(|&l| l >= meta.identities.len()) {
            return Err(bad(format!(
                "a label is beyond the {} identities",
                meta.identities.len()
            )));
        }
        Ok(Gallery {
            tta: model.meta.tta,
            matcher: model.matcher(),
            index: GalleryIndex::new(rows, dim)?,
            meta,
        })
    }

    /// Enrols a folder with one sub-folder of images per identity (named after it), every
    /// image encoded by `model` with its test-time augmentation. An image that cannot be read
    /// is an error naming it; a folder without images is [`InferError::NoImages`].
    ///
    /// A face model enrols the largest face of each photo ([`Gallery::enrol_faces`], which
    /// also counts the photos without a face or with several).
    pub fn enrol(model: &Model, folder: &Path) -> Result<Self> {
        Self::enrol_reporting(model, folder, false).map(|(g, _)| g)
    }

    /// [`Gallery::enrol`], also returning what was left out: entries of the folder that are
    /// no identity's image (names that are not UTF-8, identity folders without images, other
    /// files), and with `skip_bad` the images that could not be read or decoded (without it
    /// they are errors naming the file).
    pub fn enrol_reporting(
        model: &Model,
        folder: &Path,
        skip_bad: bool,
    ) -> Result<(Self, Vec<Skipped>)> {
        if model.face.is_some() {
            return Ok((crate::faces::enrol_default(model, folder)?, Vec::new()));
        }
        let (data, mut skipped) = Dataset::open_reporting(folder, skip_bad)?;
        if data.is_empty() {
            return Err(InferError::NoImages {
                path: folder.to_path_buf(),
            });
        }
        let (cache, bad) = ImageCache::load_all(&data, &model.meta.preprocess, skip_bad)?;
        skipped.extend(bad.into_iter().map(|b| {
            let path = data
                .items
                .get(b.index)
                .map(|i| i.source.display_name())
                .unwrap_or_default();
            Skipped::new(path, b.error.to_string())
        }));
        if cache.is_empty() {
            return Err(InferError::NoImages {
                path: folder.to_path_buf(),
            });
        }
        let rows = model.embed_cache(&cache)?;
        let paths = cache
            .origin
            .iter()
            .filter_map(|&i| data.items.get(i))
            .map(|item| item.source.display_name().display().to_string())
            .collect();
        let gallery = Self::from_rows(model, rows, cache.classes, cache.labels, paths)?;
        Ok((gallery, skipped))
    }

    /// A gallery of `rows` random unit-length representations (normal directions,
    /// deterministic from `seed`) of `identities` identities `id0`, `id1`, … (row `i` is
    /// identity `i mod identities`; at most `rows` identities): benchmark galleries.
    pub fn random(model: &Model, rows: usize, identities: usize, seed: u64) -> Result<Self> {
        if rows == 0 || identities == 0 {
            return Err(InferError::Config(
                "a random gallery needs at least one row and one identity".into(),
            ));
        }
        let identities = identities.min(rows);
        Self::from_rows(
            model,
            random_unit_rows(rows, model.row_len(), seed),
            (0..identities).map(|i| format!("id{i}")).collect(),
            (0..rows).map(|i| i % identities).collect(),
            Vec::new(),
        )
    }

    /// Opens a gallery file for searching with `model`. Fails, naming the file, when it is
    /// not a gallery, was enrolled with another model ([`InferError::OtherModel`]), or its
    /// embeddings do not have the model's representation length under the gallery's
    /// test-time augmentation. The embeddings are read straight into memory through a small
    /// buffer, so the file is never held in memory beside them.
    pub fn open(path: &Path, model: &Model) -> Result<Self> {
        let mut file = GalleryFile::open(path)?;
        let meta = file.meta.take().ok_or_else(|| {
            InferError::bad_file(
                path,
                format!("not a gallery file: no `{GALLERY_KEY}` metadata"),
            )
        })?;
        let fingerprint = model.fingerprint()?;
        if meta.model != fingerprint {
            return Err(InferError::OtherModel {
                path: path.to_path_buf(),
                gallery: meta.model,
                model: fingerprint,
            });
        }
        // Probes are encoded as the gallery was.
        let tta = meta.tta.unwrap_or(model.meta.tta);
        let matcher = tta.matcher(model.meta.distance);
        let dim = matcher.row_len(model.encoder.config().output_dim());
        if file.shape != [meta.labels.len(), dim] {
            return Err(InferError::bad_file(
                path,
                format!(
                    "embeddings have shape {:?}, expected [{}, {dim}]",
                    file.shape,
                    meta.labels.len()
                ),
            ));
        }
        if meta.labels.iter().any(|&l| l >= meta.identities.len()) {
            return Err(InferError::bad_file(
                path,
                format!("a label is beyond the {} identities", meta.identities.len()),
            ));
        }
        let rows = file.read_rows()?;
        Ok(Gallery {
            meta,
            tta,
            matcher,
            index: GalleryIndex::new(rows, dim)?,
        })
    }

    /// The gallery file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        gallery_file_bytes(self.index.data(), self.len(), self.row_len(), &self.meta)
    }

    /// Writes the gallery file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// The file's description: fingerprint, identities, labels, paths, augmentation.
    pub fn meta(&self) -> &GalleryMeta {
        &self.meta
    }

    /// The identity names.
    pub fn identities(&self) -> &[String] {
        &self.meta.identities
    }

    /// The identity of each row.
    pub fn labels(&self) -> &[usize] {
        &self.meta.labels
    }

    /// Number of enrolled rows (images).
    pub fn len(&self) -> usize {
        self.meta.labels.len()
    }

    /// Whether nothing is enrolled.
    pub fn is_empty(&self) -> bool {
        self.meta.labels.is_empty()
    }

    /// The test-time augmentation the rows were made with, which probes must share.
    pub fn tta(&self) -> Tta {
        self.tta
    }

    /// How rows and probes are compared.
    pub fn matcher(&self) -> Matcher {
        self.matcher
    }

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.index.dim()
    }

    /// The rows, `[len, row_len]`, one after the other.
    pub fn rows(&self) -> &[f32] {
        self.index.data()
    }

    /// Encodes probe images as the gallery's rows were (with `model`, which must be the
    /// model the gallery belongs to, under the gallery's test-time augmentation).
    pub fn embed_probes<P: AsRef<Path> + Sync>(
        &self,
        model: &Model,
        probes: &[P],
    ) -> Result<Vec<f32>> {
        let e = if model.face.is_some() {
            // The largest face of each photo (`Gallery::identify_faces` reads them all).
            model.embed_paths(probes)?
        } else {
            let pixels = load_images(probes, &model.meta.preprocess)?;
            embed_flat(&model.encoder, &pixels, probes.len(), EMBED_BATCH, self.tta)?
        };
        if e.len() != probes.len() * self.row_len() {
            return Err(InferError::Config(format!(
                "the model gives {} values per probe, the gallery has {} per row: not the \
                 model the gallery was opened with",
                e.len() / probes.len().max(1),
                self.row_len()
            )));
        }
        Ok(e)
    }

    /// The `top` nearest identities of each probe (representations made as
    /// [`Gallery::embed_probes`] makes them, one after the other), ascending by distance (ties
    /// to the earlier identity). An identity's distance is that of its nearest enrolled row:
    /// the rank-1 rule of [`siamese_pairs::Episode::rank1`].
    ///
    /// Squared L2 searches the rows' index for the nearest rows: identities appear in that
    /// list in the order of their nearest rows, so once it holds `top` identities they are the
    /// answer. The list starts at `4 · top` rows and widens up to `top · m` (`m`: the most rows
    /// of one identity), which always holds `top` identities. The distances reported are
    /// recomputed exactly as the full scan (the path of every other distance, and of set
    /// representations) computes them, so both give the same output (up to `f32` rounding of
    /// near-ties between rows, about `1e-7`).
    pub fn rank(&self, probes: &[f32], top: usize) -> Result<Vec<Vec<Candidate>>> {
        let dim = self.row_len();
        if !probes.len().is_multiple_of(dim) {
            return Err(InferError::Config(format!(
                "rank: {} probe values are not whole rows of {dim}",
                probes.len()
            )));
        }
        let ranked = rank_identities(self.matcher, &self.index, &self.meta, probes, top)?;
        Ok(ranked
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|(i, distance)| Candidate {
                        identity: self.meta.identities[i].clone(),
                        distance,
                    })
                    .collect()
            })
            .collect())
    }

    /// Identifies probe images: encodes them as the gallery's rows were, ranks the `top`
    /// nearest identities, and calls the nearest "unknown" unless its distance is below
    /// `threshold` (`None`: the model's calibrated threshold; with neither, the nearest
    /// identity is always given). `model` must be the model the gallery was opened with.
    pub fn identify<P: AsRef<Path> + Sync>(
        &self,
        model: &Model,
        probes: &[P],
        top: usize,
        threshold: Option<f32>,
    ) -> Result<Vec<Identification>> {
        let threshold = decision_threshold(model, top, threshold)?;
        let e = self.embed_probes(model, probes)?;
        Ok(self
            .rank(&e, top)?
            .into_iter()
            .map(|candidates| Identification::decide(candidates, threshold))
            .collect())
    }
}

/// A gallery file opened for reading: its metadata and where its embeddings lie. The
/// embeddings are read by [`GalleryFile::read_rows`] straight into one `Vec<f32>` through a
/// small buffer, so the file is never held in memory beside them.
struct GalleryFile {
    path: PathBuf,
    file: std::fs::File,
    /// The gallery metadata, when the file has it.
    meta: Option<GalleryMeta>,
    /// Shape of the `embeddings` tensor.
    shape: Vec<usize>,
    /// Byte offset of the embeddings in the file, and their length in bytes.
    offset: u64,
    len: usize,
    /// The tensors' checksum the file records (absent in older galleries).
    checksum: Option<String>,
}

impl GalleryFile {
    fn open(path: &Path) -> Result<Self> {
        use std::io::Read;
        let bad = |why: String| InferError::bad_file(path, format!("not a gallery file: {why}"));
        let io = |e| InferError::io(path, e);
        let mut file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| bad("too short for a safetensors header".into()))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_GALLERY_HEADER || n.saturating_add(8) > size {
            return Err(bad(format!(
                "a header of {n} bytes in a file of {size} bytes"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io)?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let meta = header
            .get("__metadata__")
            .and_then(|m| m.get(GALLERY_KEY))
            .and_then(|j| j.as_str())
            .and_then(|j| serde_json::from_str(j).ok());
        let checksum = header
            .get("__metadata__")
            .and_then(|m| m.get(CHECKSUM_KEY))
            .and_then(|j| j.as_str())
            .map(str::to_string);
        let t = header
            .get("embeddings")
            .ok_or_else(|| bad("no tensor `embeddings`".into()))?;
        if t.get("dtype").and_then(|d| d.as_str()) != Some("F32") {
            return Err(bad(format!(
                "embeddings are {}, not F32",
                t.get("dtype").unwrap_or(&serde_json::Value::Null)
            )));
        }
        let numbers = |key: &str| -> Option<Vec<usize>> {
            t.get(key)?
                .as_array()?
                .iter()
                .map(|v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
                .collect()
        };
        let shape = numbers("shape").ok_or_else(|| bad("embeddings without a shape".into()))?;
        let (start, end) = match numbers("data_offsets").as_deref() {
            Some(&[s, e]) if s <= e => (s, e),
            _ => return Err(bad("embeddings without valid data offsets".into())),
        };
        let len = end - start;
        let expected = shape
            .iter()
            .try_fold(4usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("embeddings of shape {shape:?}")))?;
        let offset = 8 + n + start as u64;
        if len != expected || offset.saturating_add(len as u64) > size {
            return Err(bad(format!(
                "embeddings of shape {shape:?} hold {len} bytes at offset {offset} of {size}"
            )));
        }
        Ok(GalleryFile {
            path: path.to_path_buf(),
            file,
            meta,
            shape,
            offset,
            len,
            checksum,
        })
    }

    /// The embeddings, row-major, read through a 1 MiB buffer.
    fn read_rows(mut self) -> Result<Vec<f32>> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path;
        let io = |e| InferError::io(&path, e);
        self.file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut out = Vec::with_capacity(self.len / 4);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = self.len;
        let mut digest = TensorDigest::new();
        digest.tensor("embeddings", "F32", &self.shape);
        while left > 0 {
            let chunk = &mut buf[..left.min(1 << 20)];
            self.file.read_exact(chunk).map_err(io)?;
            digest.bytes(chunk);
            out.extend(
                chunk
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            left -= chunk.len();
        }
        if let Some(recorded) = &self.checksum {
            crate::checksum::check(&path, recorded, &digest.finish())?;
        }
        Ok(out)
    }
}

/// Little-endian `f32` values as a safetensors tensor.
pub(crate) struct F32Tensor<'a> {
    pub(crate) bytes: Vec<u8>,
    pub(crate) shape: &'a [usize],
}

impl<'a> F32Tensor<'a> {
    /// `values` of `shape`, which must hold as many.
    pub(crate) fn new(values: &[f32], shape: &'a [usize]) -> Result<Self> {
        if shape.iter().product::<usize>() != values.len() {
            return Err(InferError::Config(format!(
                "{} values for a tensor of shape {shape:?}",
                values.len()
            )));
        }
        let mut bytes = Vec::with_capacity(values.len() * 4);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Ok(F32Tensor { bytes, shape })
    }
}

impl safetensors::View for F32Tensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The bytes of a safetensors file holding one F32 tensor `embeddings` and `metadata`.
pub(crate) fn embeddings_file_bytes(
    values: &[f32],
    shape: &[usize],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let t = F32Tensor::new(values, shape)?;
    safetensors::serialize([("embeddings", t)], Some(metadata))
        .map_err(|e| InferError::Config(format!("cannot serialise embeddings: {e}")))
}

/// The bytes of a gallery file: `embeddings` `[rows, dim]` plus the metadata.
fn gallery_file_bytes(e: &[f32], rows: usize, dim: usize, meta: &GalleryMeta) -> Result<Vec<u8>> {
    let json = serde_json::to_string(meta)
        .map_err(|e| InferError::Config(format!("gallery metadata to JSON: {e}")))?;
    let mut m = HashMap::new();
    m.insert(GALLERY_KEY.to_string(), json);
    let mut digest = TensorDigest::new();
    digest.tensor("embeddings", "F32", &[rows, dim]);
    let mut buf = Vec::with_capacity(4 << 14);
    for chunk in e.chunks(1 << 14) {
        buf.clear();
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        digest.bytes(&buf);
    }
    m.insert(CHECKSUM_KEY.to_string(), digest.finish());
    embeddings_file_bytes(e, &[rows, dim], m)
}

/// `rows` random unit-length encodings of length `dim` (normal directions), deterministic from
/// `seed`: benchmark galleries.
fn random_unit_rows(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut out = vec![0f32; rows * dim];
    out.par_chunks_mut(dim.max(1))
        .enumerate()
        .for_each(|(row, r)| {
            let mut state = seed ^ (row as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
            // Box–Muller: two normals from two uniforms in (0, 1].
            let uniform = |s: &mut u64| ((splitmix(s) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            for pair in r.chunks_mut(2) {
                let (u1, u2) = (uniform(&mut state), uniform(&mut state));
                let radius = (-2.0 * u1.ln()).sqrt();
                let angle = std::f64::consts::TAU * u2;
                pair[0] = (radius * angle.cos()) as f32;
                if let Some(x) = pair.get_mut(1) {
                    *x = (radius * angle.sin()) as f32;
                }
            }
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= norm);
        });
    out
}

/// The `top` nearest identities of each probe, as `(identity, distance)`: see
/// [`Gallery::rank`].
fn rank_identities(
    d: Matcher,
    index: &GalleryIndex,
    meta: &GalleryMeta,
    probes: &[f32],
    top: usize,
) -> Result<Vec<Vec<(usize, f32)>>> {
    let dim = index.dim();
    let n_ids = meta.identities.len();
    let rows = meta.labels.len();
    let sort = |ranked: &mut Vec<(usize, f32)>| {
        ranked.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
        ranked.truncate(top);
    };
    if d.set > 1 || !matches!(d.distance, Distance::SquaredL2) {
        return Ok(scan_identities(d, index.data(), dim, meta, probes, top));
    }
    let mut counts = vec![0usize; n_ids];
    for &l in &meta.labels {
        counts[l] += 1;
    }
    // `top · m` rows always hold `top` identities; most probes need far fewer, so start small
    // and widen only for the probes whose candidates hold fewer than `top` identities.
    let cap = top
        .saturating_mul(counts.iter().copied().max().unwrap_or(0))
        .min(rows);
    let mut k = top.saturating_mul(4).max(16).min(cap);
    let data = index.data();
    let mut ranked_all = vec![Vec::new(); probes.len() / dim];
    let mut pending: Vec<usize> = (0..ranked_all.len()).collect();
    while !pending.is_empty() {
        let queries: Vec<f32> = pending
            .iter()
            .flat_map(|&p| probes[p * dim..(p + 1) * dim].iter().copied())
            .collect();
        let hits = index.search_batch(&queries, k)?;
        let mut again = Vec::new();
        for (&p, hits) in pending.iter().zip(hits) {
            let q = &probes[p * dim..(p + 1) * dim];
            let mut best: HashMap<usize, f32> = HashMap::new();
            for (row, _) in hits {
                let dist = d.between(q, &data[row * dim..(row + 1) * dim]);
                let b = best.entry(meta.labels[row]).or_insert(f32::INFINITY);
                if dist < *b {
                    *b = dist;
                }
            }
            if best.len() < top && k < cap {
                again.push(p);
                continue;
            }
            let mut ranked: Vec<(usize, f32)> = best.into_iter().collect();
            if k == rows && ranked.len() < top {
                // Every row was seen: identities with no rows follow at infinity, as in the scan.
                let seen: std::collections::HashSet<usize> = ranked.iter().map(|r| r.0).collect();
                ranked.extend(
                    (0..n_ids)
                        .filter(|i| !seen.contains(i))
                        .map(|i| (i, f32::INFINITY)),
                );
            }
            sort(&mut ranked);
            ranked_all[p] = ranked;
        }
        pending = again;
        k = k.saturating_mul(4).min(cap);
    }
    Ok(ranked_all)
}

/// [`rank_identities`] by a full scan: every row's distance to every probe.
fn scan_identities(
    d: Matcher,
    gallery: &[f32],
    dim: usize,
    meta: &GalleryMeta,
    probes: &[f32],
    top: usize,
) -> Vec<Vec<(usize, f32)>> {
    probes
        .chunks_exact(dim)
        .map(|q| {
            let mut best = vec![f32::INFINITY; meta.identities.len()];
            let dists: Vec<f32> = (0..meta.labels.len())
                .into_par_iter()
                .map(|row| d.between(q, &gallery[row * dim..(row + 1) * dim]))
                .collect();
            for (&dist, &label) in dists.iter().zip(&meta.labels) {
                if dist < best[label] {
                    best[label] = dist;
                }
            }
            let mut ranked: Vec<(usize, f32)> = best.into_iter().enumerate().collect();
            ranked.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
            ranked.truncate(top);
            ranked
        })
        .collect()
}

/// The threshold an identification decides at (`threshold`, else the model's; checked), once
/// `top` is known to ask for at least one identity.
pub(crate) fn decision_threshold(
    model: &Model,
    top: usize,
    threshold: Option<f32>,
) -> Result<Option<f32>> {
    if top == 0 {
        return Err(InferError::Config(
            "identify: top must be at least 1".into(),
        ));
    }
    threshold
        .or(model.threshold())
        .map(check_threshold)
        .transpose()
}

#[cfg(test)]
mod gallery_tests {
    use super::*;
    use siamese_ops::distance::Distance;

    fn meta(labels: Vec<usize>, identities: usize) -> GalleryMeta {
        GalleryMeta {
            model: String::new(),
            identities: (0..identities).map(|i| format!("id{i}")).collect(),
            labels,
            paths: Vec::new(),
            tta: None,
        }
    }

    type Ranked = Vec<Vec<(usize, f32)>>;

    /// A squared-L2 gallery ranked through the index and by the full scan.
    fn ranked_both_ways(
        gallery: &[f32],
        dim: usize,
        m: &GalleryMeta,
        probes: &[f32],
        top: usize,
    ) -> Result<(Ranked, Ranked)> {
        let d = Distance::SquaredL2.into();
        Ok((
            rank_identities(
                d,
                &GalleryIndex::new(gallery.to_vec(), dim)?,
                m,
                probes,
                top,
            )?,
            scan_identities(d, gallery, dim, m, probes, top),
        ))
    }

    #[test]
    fn index_search_ranks_like_the_scan() -> Result<()> {
        let dim = 16;
        for (rows, ids, top) in [(500, 37, 1), (500, 37, 5), (40, 7, 9), (3000, 1000, 3)] {
            // Uneven identities: row i belongs to (i * i) % ids, some identities have no rows.
            let m = meta((0..rows).map(|i| (i * i) % ids).collect(), ids);
            let gallery = random_unit_rows(rows, dim, 1);
            let probes = random_unit_rows(12, dim, 2);
            let (fast, scan) = ranked_both_ways(&gallery, dim, &m, &probes, top)?;
            assert_eq!(fast, scan, "rows {rows}, identities {ids}, top {top}");
        }
        // Tight clusters of 50 rows per identity: the nearest rows all share one identity, so
        // the candidate list has to widen.
        let (dim, ids, per) = (8, 20, 50);
        let centres = random_unit_rows(ids, dim, 4);
        let noise = random_unit_rows(ids * per, dim, 5);
        let gallery: Vec<f32> = (0..ids * per)
            .flat_map(|r| {
                let c = &centres[(r / per) * dim..(r / per + 1) * dim];
                let n = &noise[r * dim..(r + 1) * dim];
                // Distances from the centre grow with r, far apart compared to f32 rounding.
                let scale = 0.002 * (r % per + 1) as f32;
                c.iter()
                    .zip(n)
                    .map(|(c, n)| c + scale * n)
                    .collect::<Vec<_>>()
            })
            .collect();
        let m = meta((0..ids * per).map(|r| r / per).collect(), ids);
        let probes = centres[..3 * dim].to_vec();
        for top in [1, 3, 7, 20, 25] {
            let (fast, scan) = ranked_both_ways(&gallery, dim, &m, &probes, top)?;
            assert_eq!(fast, scan, "clusters, top {top}");
            assert_eq!(fast[0].len(), top.min(ids));
        }
        Ok(())
    }

    #[test]
    fn gallery_files_round_trip() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("g.safetensors");
        let rows = random_unit_rows(10, 8, 3);
        for r in rows.chunks_exact(8) {
            let n: f32 = r.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        let m = meta((0..10).map(|i| i % 3).collect(), 3);
        std::fs::write(&path, gallery_file_bytes(&rows, 10, 8, &m)?)?;
        let mut f = GalleryFile::open(&path)?;
        assert_eq!(f.shape, [10, 8]);
        assert_eq!(f.meta.take().map(|m| m.labels), Some(m.labels));
        assert_eq!(f.read_rows()?, rows);
        std::fs::write(&path, b"not a gallery")?;
        assert!(GalleryFile::open(&path).is_err());
        Ok(())
    }
}
