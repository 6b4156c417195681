//! Reading image files for inference: decode, preprocess as the model says, in parallel.

use crate::error::{InferError, Result};
use rayon::prelude::*;
use siamese_data::{is_image_name, load_image, ImageSource, Preprocess};
use std::path::{Path, PathBuf};

/// Decodes and preprocesses `paths` in parallel into one `[N, C, H, W]` buffer, image after
/// image in the order given. An image that cannot be read or decoded is an error naming it.
///
/// # Shapes
/// `paths`: `N` files → `N · C · H · W` values (`C, H, W` from `pre`).
pub fn load_images<P: AsRef<Path> + Sync>(paths: &[P], pre: &Preprocess) -> Result<Vec<f32>> {
    let per = pre.tensor_len();
    let mut out = vec![0.0f32; paths.len() * per];
    out.par_chunks_mut(per.max(1))
        .zip(paths.par_iter())
        .try_for_each(|(slot, path)| -> Result<()> {
            let img = load_image(path.as_ref())?;
            pre.apply_into(&img, slot);
            Ok(())
        })?;
    Ok(out)
}

/// Like [`load_images`], from image sources (files or archive members, as protocol files
/// list them).
pub fn load_sources(sources: &[&ImageSource], pre: &Preprocess) -> Result<Vec<f32>> {
    let per = pre.tensor_len();
    let mut out = vec![0.0f32; sources.len() * per];
    out.par_chunks_mut(per.max(1))
        .zip(sources.par_iter())
        .try_for_each(|(slot, source)| -> Result<()> {
            let img = source.load()?;
            pre.apply_into(&img, slot);
            Ok(())
        })?;
    Ok(out)
}

/// Expands folders into the image files they hold (sorted by path, hidden entries skipped,
/// at most [`MAX_EXPAND_DEPTH`] levels down); other paths are kept as given.
pub fn expand_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found, 0)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.to_path_buf());
        }
    }
    Ok(out)
}

/// How many folder levels below a given folder [`expand_paths`] looks.
pub const MAX_EXPAND_DEPTH: usize = 8;

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > MAX_EXPAND_DEPTH {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| InferError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| InferError::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out, depth + 1)?;
        } else if is_image_name(&name) {
            out.push(path);
        }
    }
    Ok(())
}
