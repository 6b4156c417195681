//! Atomic file writes (temporary file, fsync, rename), as `siamese-infer` does them.

use crate::error::Result;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file beside it is written and synced, then
/// renamed over `path`. On any failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(siamese_infer::write_atomic(path, bytes)?)
}
