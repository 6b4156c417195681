//! `siamese-infer`: using a trained siamese model, for programs that verify, identify or
//! evaluate and never train.
//!
//! What it owns:
//! - the model file ([`Model`]): one `.safetensors` with the encoder weights and, in its
//!   metadata ([`ModelMeta`]), the encoder config, preprocessing, distance, calibrated
//!   threshold ([`Calibration`]), provenance ([`Provenance`]) and test-time augmentation
//!   ([`Tta`]); loading it, and embedding images, image files ([`Model::embed_paths`]) and
//!   image caches in batches of [`EMBED_BATCH`] encoder passes; its matcher and threshold;
//! - reading image files for inference ([`load_images`], [`expand_paths`]);
//! - verification ([`Verifier`], giving a [`Verdict`]: distance, same, threshold);
//! - galleries ([`Gallery`]): enrolling a folder of identities, the gallery file and its keys
//!   ([`GalleryMeta`]), the check that a gallery belongs to the model, ranking identities and
//!   identifying probes with "unknown" ([`Identification`]);
//! - embedding files for other programs ([`Embeddings`]: `.npy` or `.safetensors`);
//! - faces in photos ([`faces`]): a model holding dlib's face pipeline ([`FaceModel`],
//!   imported with [`Model::import_dlib`]) detects, aligns and encodes faces before anything
//!   else; verification of two photos' largest faces, enrolment and identification of every
//!   face of a group photo;
//! - evaluation on embeddings ([`eval`]: verification over pairs, N-way K-shot episodes and
//!   rank-1 as `siamese_pairs::metrics` defines them) and the evaluation protocols as
//!   functions returning typed reports ([`eval_unseen`], [`eval_runs`], [`eval_pairs`]).
//!
//! What it promises: nothing read from a file is executed; every file is written atomically
//! (temporary file, fsync, rename); an image, model or gallery that cannot be used is an
//! [`InferError`] naming the file, never a panic; a gallery opens only with the model that
//! enrolled it, and probes are encoded with the gallery's test-time augmentation; the same
//! model and image give the same representation whatever else is in the batch. It prints
//! nothing.
//!
//! What it does not know: training, plots, progress bars, the command line.

pub mod checksum;
mod embeddings;
mod error;
pub mod eval;
mod face_data;
pub mod faces;
mod fsutil;
pub mod gallery;
mod images;
pub mod model;
pub mod outputs;
mod protocols;
mod verify;

/// Where models run (`Device::Cpu`, or CUDA with the `cuda` feature): candle's device,
/// re-exported so that a program using models needs no direct candle dependency.
pub use candle_core::Device;
pub use embeddings::Embeddings;
pub use error::{InferError, Result};
pub use face_data::FaceCache;
pub use faces::{
    Detect, FaceBox, FaceModel, FaceOptions, Faces, FoundFace, PhotoFaces, PhotoIdentification,
};
pub use fsutil::write_atomic;
pub use gallery::{Candidate, Gallery, GalleryMeta, Identification, GALLERY_KEY, UNKNOWN};
pub use images::{expand_paths, load_images, load_sources, MAX_EXPAND_DEPTH};
pub use model::{
    check_threshold, embed_flat, Calibration, Model, ModelMeta, Provenance, Tta,
    AFFINE_SET_STRENGTH, AFFINE_TTA_COPIES, EMBED_BATCH, MAX_TTA_COPIES,
};
pub use outputs::check_outputs;
pub use protocols::{
    eval_pairs, eval_runs, eval_unseen, eval_unseen_faces, pair_distances, PairsReport, RunScore,
    RunsReport, UnseenEval, UnseenOptions,
};
/// How encodings compare, and the matrix-product precision a program may choose (`--bf16`):
/// re-exported so that a program using models needs no kernel crate of its own.
pub use siamese_ops::distance::Distance;
pub use siamese_ops::nn::{set_matmul_precision, MatmulPrecision};
pub use verify::{Verdict, Verifier};
