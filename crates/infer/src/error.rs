//! The one error type of the inference crate: what went wrong, and with which file.

use std::path::PathBuf;

/// Everything that can go wrong loading a model or gallery, embedding, verifying, identifying
/// or running an evaluation protocol. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Reading images, a data set or a protocol file failed (the message names the file).
    #[error(transparent)]
    Data(#[from] siamese_data::DataError),
    /// A tensor operation failed.
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
    /// The operating system refused a read, write or listing.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not a siamese model or gallery, or does not hold what it should.
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A gallery was enrolled with another model than the one asked to search it.
    #[error(
        "{}: the gallery was enrolled with another model (weights fingerprint {gallery}, the \
         model's is {model}); enrol it again with this model",
        path.display()
    )]
    OtherModel {
        /// The gallery file.
        path: PathBuf,
        /// The fingerprint the gallery records.
        gallery: String,
        /// The fingerprint of the model in use.
        model: String,
    },
    /// A folder to enrol holds no images.
    #[error("{}: no images found (expected one sub-folder per identity)", path.display())]
    NoImages {
        /// The folder.
        path: PathBuf,
    },
    /// The face pipeline cannot run on an image (too large to detect in, say).
    #[error("{}: {source}", path.display())]
    Face {
        /// The image.
        path: PathBuf,
        /// What the pipeline said.
        source: siamese_face::FaceError,
    },
    /// A photo in which no face was found, where one was needed (to verify or embed it).
    #[error(
        "{}: no face found (for a photo already cropped to one face, turn detection off: \
         --detect none)",
        path.display()
    )]
    NoFace {
        /// The photo.
        path: PathBuf,
    },
    /// An output that cannot be written safely: its folder is missing or read-only, it is an
    /// input or inside an input folder, another output has its path, or it is a checkpoint
    /// that would be replaced (see [`crate::outputs::check_outputs`]).
    #[error("{flag} {}: {message}", path.display())]
    Output {
        /// The flag that named the output.
        flag: String,
        /// The output path as given.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Verification needs a threshold and the model has no calibrated one.
    #[error("the model has no calibrated threshold; give one")]
    NoThreshold,
    /// A threshold that no distance can be compared with.
    #[error("threshold {0} is out of range: it must be a finite distance ≥ 0")]
    Threshold(f32),
    /// A value cannot work (a test-time augmentation name, a count, a size that disagrees).
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl InferError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        InferError::Io {
            path: path.into(),
            source,
        }
    }

    /// A file that is not what it should be.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        InferError::BadFile {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = InferError> = std::result::Result<T, E>;
