//! Checksums of the tensors in a safetensors file (galleries, training checkpoints): a SHA-256
//! over every tensor's name, dtype, shape and bytes, in name order, written in the metadata
//! under [`CHECKSUM_KEY`] and verified when the file is opened, so altered tensor bytes are an
//! error naming the file instead of silently different numbers. Files written before the
//! checksum (no key) still open.

use crate::error::{InferError, Result};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Metadata key of the tensors' checksum (`sha256:` and 64 hex digits).
pub const CHECKSUM_KEY: &str = "siamese.sha256";

/// A running checksum of tensors, fed in name order.
#[derive(Clone, Debug, Default)]
pub struct TensorDigest(Sha256);

impl TensorDigest {
    /// An empty digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the next tensor: its name, dtype (safetensors' spelling, `F32`) and shape. Its
    /// bytes follow through [`TensorDigest::bytes`], in one call or several.
    pub fn tensor(&mut self, name: &str, dtype: &str, shape: &[usize]) {
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((dtype.len() as u64).to_le_bytes());
        self.0.update(dtype.as_bytes());
        self.0.update((shape.len() as u64).to_le_bytes());
        for &d in shape {
            self.0.update((d as u64).to_le_bytes());
        }
    }

    /// More bytes of the current tensor.
    pub fn bytes(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The checksum as written in the metadata: `sha256:` and 64 hex digits.
    pub fn finish(self) -> String {
        let digest = self.0.finalize();
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256:");
        for b in digest {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// The checksum of every tensor of a parsed safetensors file, in name order.
pub fn safetensors_checksum(st: &safetensors::SafeTensors<'_>) -> String {
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut d = TensorDigest::new();
    for name in names {
        if let Ok(view) = st.tensor(name) {
            d.tensor(name, &view.dtype().to_string(), view.shape());
            d.bytes(view.data());
        }
    }
    d.finish()
}

/// Checks the tensors of the safetensors file `bytes` (read from `path`) against the checksum
/// its metadata records, if it records one. A file whose header cannot be parsed is an error.
pub fn verify_safetensors(path: &Path, bytes: &[u8]) -> Result<()> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| InferError::bad_file(path, format!("not a safetensors file: {e}")))?;
    let Some(recorded) = header.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)) else {
        return Ok(());
    };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| InferError::bad_file(path, format!("not a safetensors file: {e}")))?;
    check(path, recorded, &safetensors_checksum(&st))
}

/// Compares a recorded checksum with the one computed from the bytes found.
pub fn check(path: &Path, recorded: &str, actual: &str) -> Result<()> {
    if recorded != actual {
        return Err(InferError::bad_file(
            path,
            format!(
                "the tensors do not match the checksum the file records ({recorded}, the bytes \
                 give {actual}): the file is corrupt or was altered"
            ),
        ));
    }
    Ok(())
}
