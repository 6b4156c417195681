//! `siamese-train`: the training loop and everything around it.
//!
//! What it owns:
//! - [`TrainConfig`] (serde, TOML) and the named recipes (`omniglot`, `att-faces`, `demo`);
//! - the loop ([`train`]): P×K batches with augmentation, the loss, AdamW or SGD with warm-up
//!   and cosine or step decay, validation on held-out classes, the kept best model,
//!   threshold calibration, checkpoints and exact resume, progress on stderr and a metrics log;
//! - writing the model file ([`Model`], owned by `siamese-infer` and re-exported here): one
//!   `.safetensors` with the weights and, in its metadata, the encoder config, preprocessing,
//!   distance, calibrated threshold and provenance;
//! - evaluation during training ([`eval`]): validation and threshold calibration (the
//!   evaluation on embeddings they build on, and the `unseen` protocol, are `siamese-infer`'s
//!   `eval`, re-exported there); reports with plots ([`report`]), including the `unseen`
//!   protocol's report folder.
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
mod init;
mod optim;
pub mod report;
mod trainer;

pub use batch::TrainSet;
pub use checkpoint::{Checkpoint, CheckpointState, MAX_CHECKPOINT_STEPS};
pub use config::{
    Budget, LossConfig, ProxyLoss, TrainConfig, ValidationConfig, MAX_BATCH_CLASSES,
    MAX_BATCH_IMAGES,
};
pub use error::{Result, TrainError};
pub use fsutil::write_atomic;
pub use init::Init;
pub use optim::{Decay, Optimizer, OptimizerConfig, Schedule};
/// The model file and embedding live in `siamese-infer`; re-exported so that
/// `siamese_train::Model` and its neighbours keep working.
pub use siamese_infer::{
    embed_flat, Calibration, Model, ModelMeta, Provenance, Tta, AFFINE_SET_STRENGTH,
    AFFINE_TTA_COPIES, EMBED_BATCH,
};
pub use trainer::{
    default_paths, train, train_from, LogLine, Observer, RunOptions, Silent, TrainData,
    TrainSummary,
};
