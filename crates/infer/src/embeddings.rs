//! Embedding files: many images' representations written for other programs, as NumPy
//! `.npy` or as `.safetensors` (tensor `embeddings`, the images' paths in the metadata).

use crate::error::{InferError, Result};
use crate::fsutil::write_atomic;
use crate::gallery::embeddings_file_bytes;
use crate::model::Model;
use std::collections::HashMap;
use std::path::Path;

/// Representations of images, in the shape [`Model::embedding_shape`] gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// The values, row-major.
    pub values: Vec<f32>,
    /// `[images, dim]`, or `[images, set, dim]` for set representations.
    pub shape: Vec<usize>,
    /// The image each representation was made from, in order.
    pub paths: Vec<String>,
    /// With a face model, where each row's face is in its image
    /// ([`Embeddings::of_faces`]); `.safetensors` files keep them under the metadata key
    /// `faces` (a JSON array), `.npy` files do not.
    pub faces: Option<Vec<crate::faces::FoundFace>>,
}

impl Embeddings {
    /// Embeds image files with `model` (see [`Model::embed_paths`]; with a face model, the
    /// largest face of each photo: [`Embeddings::of_faces`] chooses).
    pub fn of_paths<P: AsRef<Path> + Sync>(model: &Model, paths: &[P]) -> Result<Self> {
        let values = model.embed_paths(paths)?;
        Self::new(
            values,
            model.embedding_shape(paths.len()),
            paths
                .iter()
                .map(|p| p.as_ref().display().to_string())
                .collect(),
        )
    }

    /// Checks that `shape` holds `values` and that there is one path per image (or none).
    pub fn new(values: Vec<f32>, shape: Vec<usize>, paths: Vec<String>) -> Result<Self> {
        let images = shape.first().copied().unwrap_or(0);
        if shape.iter().product::<usize>() != values.len()
            || (!paths.is_empty() && paths.len() != images)
        {
            return Err(InferError::Config(format!(
                "embeddings: {} values and {} paths for shape {shape:?}",
                values.len(),
                paths.len()
            )));
        }
        Ok(Embeddings {
            values,
            shape,
            paths,
            faces: None,
        })
    }

    /// A NumPy `.npy` file (version 1.0, little-endian f32, C order).
    pub fn to_npy(&self) -> Vec<u8> {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        let mut header = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
            dims.join(", ")
        );
        // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + self.values.len() * 4);
        out.extend_from_slice(b"\x93NUMPY\x01\x00");
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for v in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// A `.safetensors` file: the F32 tensor `embeddings` and, under the metadata key
    /// `paths`, the images' paths as a JSON array.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let names = serde_json::to_string(&self.paths)
            .map_err(|e| InferError::Config(format!("paths to JSON: {e}")))?;
        let mut meta = HashMap::new();
        meta.insert("paths".to_string(), names);
        if let Some(faces) = &self.faces {
            let faces = serde_json::to_string(faces)
                .map_err(|e| InferError::Config(format!("faces to JSON: {e}")))?;
            meta.insert("faces".to_string(), faces);
        }
        embeddings_file_bytes(&self.values, &self.shape, meta)
    }

    /// Writes the file atomically: `.npy` when `path` ends so, else `.safetensors`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = if path.extension().is_some_and(|x| x == "npy") {
            self.to_npy()
        } else {
            self.to_safetensors()?
        };
        write_atomic(path, &bytes)
    }
}
