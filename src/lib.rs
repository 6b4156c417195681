//! `siamese`: Siamese networks for face verification, identification and one-shot recognition.
//!
//! This facade re-exports the workspace's library crates so that a user can depend on one
//! package. Each layer is also usable alone; see `ARCHITECTURE.md`.
//!
//! A program that only uses trained models (verify, identify, evaluate) needs [`infer`]:
//! with `default-features = false` the training crate (`train`, and with it plotters,
//! indicatif and toml) is not built. `examples/verify.rs` and `examples/identify.rs` show
//! the inference layer in a few lines each; [`face`] finds, aligns and encodes faces in
//! photos with dlib's public models.

pub use siamese_data as data;
pub use siamese_encoder as encoder;
pub use siamese_face as face;
pub use siamese_infer as infer;
pub use siamese_ops as ops;
pub use siamese_pairs as pairs;
#[cfg(feature = "train")]
pub use siamese_train as train;
