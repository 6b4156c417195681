//! The one error type of this crate.

/// Everything that can go wrong while reading dlib's files or running the face pipeline.
///
/// Messages carry no trailing period; a file error names the file and the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum FaceError {
    /// A dlib `.dat` file is truncated, altered, or holds something else than expected.
    #[error("{file}: at byte {offset}: {message}")]
    Format {
        /// The file's name as the caller gave it.
        file: String,
        /// Byte offset where the problem was found.
        offset: usize,
        /// What was expected and what was found.
        message: String,
    },
    /// A tensor or setting of a stored pipeline (a siamese model file) is missing, of the
    /// wrong type or shape, or out of range.
    #[error("{file}: {what}: {message}")]
    Stored {
        /// The file's name as the caller gave it.
        file: String,
        /// The tensor (`detector.conv0.weight`) or setting (`landmarks.parts`) concerned.
        what: String,
        /// What was expected and what was found.
        message: String,
    },
    /// An image or argument the pipeline cannot work with (empty, too large, wrong shape).
    #[error("{0}")]
    Input(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl FaceError {
    /// The same error with the message of a [`FaceError::Format`] rewritten by `f` (its file
    /// and offset kept), to say what was being read; other errors are returned unchanged.
    pub fn reword(self, f: impl FnOnce(&str) -> String) -> Self {
        match self {
            FaceError::Format {
                file,
                offset,
                message,
            } => FaceError::Format {
                file,
                offset,
                message: f(&message),
            },
            other => other,
        }
    }
}

/// This crate's result type.
pub type Result<T> = std::result::Result<T, FaceError>;
