//! The one error type of this crate: what went wrong, and with which file.

use std::path::PathBuf;

/// Everything that can go wrong while reading images, data sets and protocol files.
///
/// Every variant that concerns a file names it; the messages carry no trailing period.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused a read, write or listing.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An image could not be decoded (truncated, corrupt, unsupported format).
    #[error("cannot decode image {}: {message}", path.display())]
    Decode {
        /// The image file (for archive members: `archive.zip!/member`).
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// A folder, archive or IDX file is not laid out as expected.
    #[error("unexpected layout in {}: {message}", path.display())]
    Layout {
        /// The folder or file concerned.
        path: PathBuf,
        /// What was expected and what was found.
        message: String,
    },
    /// A zip archive could not be read.
    #[error("cannot read archive {}: {message}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What the zip reader said.
        message: String,
    },
    /// A text protocol file (one-shot `class_labels.txt`, LFW `pairs.txt`) has a bad line.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The text file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// A file's content hash is not the one expected.
    #[error("checksum mismatch for {}: expected {expected}, got {actual}", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The expected digest, with its algorithm.
        expected: String,
        /// The digest of the bytes found.
        actual: String,
    },
    /// A caller passed an argument that cannot work (an empty selection, a bad split size).
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`DataError::Layout`] for `path`.
    pub fn layout(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Layout {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A [`DataError::Decode`] for `path`.
    pub fn decode(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Decode {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A [`DataError::Archive`] for `path`.
    pub fn archive(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        DataError::Archive {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// A [`DataError::Parse`] for line `line` (1-based) of `path`.
    pub fn parse(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        DataError::Parse {
            path: path.into(),
            line,
            message: message.into(),
        }
    }
}
