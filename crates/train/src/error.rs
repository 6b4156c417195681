//! The one error type of the training crate: what went wrong, and with which file.

use std::path::PathBuf;

/// Everything that can stop training, loading a model or evaluating it.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading images or a data set failed (the message names the file).
    #[error(transparent)]
    Data(#[from] siamese_data::DataError),
    /// Loading a model or embedding failed (the message names the file).
    #[error(transparent)]
    Infer(#[from] siamese_infer::InferError),
    /// A tensor operation failed.
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
    /// The operating system refused a read or write.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is not a siamese model or checkpoint, or does not match what is expected.
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration value cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The loss became NaN or infinite.
    #[error("training diverged at step {step}: loss is {loss}; the last good checkpoint is kept{}", checkpoint_note(.checkpoint))]
    Diverged {
        /// The step at which it happened.
        step: u64,
        /// The loss value.
        loss: f32,
        /// The last checkpoint written, if any.
        checkpoint: Option<PathBuf>,
    },
    /// All distances in a batch are near zero: the encoder maps everything to one point.
    #[error("training collapsed at step {step}: all distances are near zero (try a lower learning rate, semi-hard mining or the contrastive loss){}", checkpoint_note(.checkpoint))]
    Collapsed {
        /// The step at which it happened.
        step: u64,
        /// The last checkpoint written, if any.
        checkpoint: Option<PathBuf>,
    },
    /// The run was interrupted (Ctrl-C); a checkpoint was written.
    #[error("interrupted at step {step}; resume with --resume {}", checkpoint.display())]
    Interrupted {
        /// The step reached.
        step: u64,
        /// The checkpoint written on interruption.
        checkpoint: PathBuf,
    },
}

fn checkpoint_note(c: &Option<PathBuf>) -> String {
    match c {
        Some(p) => format!(" ({})", p.display()),
        None => String::new(),
    }
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    /// A file that is not what it should be.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        TrainError::BadFile {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
