//! What a listing or a load left out, and why: callers say it (a count and the first names on
//! stderr, all of them in `--json`), so nothing is dropped without a word.

use std::path::PathBuf;

/// One file or folder left out of a data set, with the reason.
///
/// Serialised as `{"path": ..., "reason": ...}`, the path written lossily (a name that is not
/// UTF-8 is the very thing skipped, and must still print).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// The file or folder (for archive members: `archive.zip!/member`).
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    /// Why it was left out.
    pub reason: String,
}

impl Skipped {
    /// `path` left out because of `reason`.
    pub fn new(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Skipped {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.reason)
    }
}

fn lossy<S: serde::Serializer>(path: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}
