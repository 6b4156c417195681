//! Reading image files for inference: decode, preprocess as the model says, in parallel.

use anyhow::{Context, Result};
use rayon::prelude::*;
use siamese_data::{is_image_name, load_image, Preprocess};
use std::path::{Path, PathBuf};

/// Decodes and preprocesses `paths` in parallel into one `[N, C, H, W]` buffer.
pub fn load(paths: &[PathBuf], pre: &Preprocess) -> Result<Vec<f32>> {
    let per = pre.tensor_len();
    let mut out = vec![0.0f32; paths.len() * per];
    out.par_chunks_mut(per.max(1))
        .zip(paths.par_iter())
        .try_for_each(|(slot, path)| -> Result<()> {
            let img = load_image(path)?;
            pre.apply_into(&img, slot);
            Ok(())
        })?;
    Ok(out)
}

/// Expands folders into the image files they hold (sorted); files are kept as given.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found, 0)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 8 {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
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
