//! `siamese-train`: the training loop and everything around it.
//!
//! What it owns:
//! - [`TrainConfig`] (serde, TOML) and the named recipes (`omniglot`, `att-faces`, `demo`);
//! - the loop ([`train`]): P×K batches with augmentation, the loss, AdamW or SGD with warm-up
//!   and cosine or step decay, validation on held-out classes, the kept best model,
//!   threshold calibration, checkpoints and exact resume, progress on stderr and a metrics log;
//! - the model file ([`Model`]): one `.safetensors` with the weights and, in its metadata, the
//!   encoder config, preprocessing, distance, calibrated threshold and provenance;
//! - evaluation on embeddings ([`eval`]): verification (AUC, EER), N-way K-shot episodes,
//!   calibration, the `unseen` protocol; reports with plots ([`report`]).
//!
//! What it promises: files are written atomically (temporary file, fsync, rename); a resumed
//! run with the same configuration and thread count gives the same losses step by step; a NaN
//! loss or collapsed encodings stop the run with a clear error and keep the last checkpoint.
//! Errors are [`TrainError`], naming the file concerned.
//!
//! What it does not know: the command line. It prints only the progress bar and validation
//! lines on stderr.

mod batch;
mod checkpoint;
mod config;
mod ema;
mod error;
pub mod eval;
mod fsutil;
mod model;
mod optim;
pub mod report;
mod trainer;

pub use batch::TrainSet;
pub use checkpoint::{Checkpoint, CheckpointState};
pub use config::{Budget, LossConfig, ProxyLoss, TrainConfig, ValidationConfig};
pub use error::{Result, TrainError};
pub use fsutil::write_atomic;
pub use model::{
    embed_flat, Calibration, Model, ModelMeta, Provenance, Tta, AFFINE_SET_STRENGTH,
    AFFINE_TTA_COPIES, EMBED_BATCH,
};
pub use optim::{Decay, Optimizer, OptimizerConfig, Schedule};
pub use trainer::{default_paths, train, LogLine, RunOptions, TrainData, TrainSummary};
