//! `siamese`: Siamese networks for face verification, identification and one-shot recognition.
//!
//! This facade re-exports the workspace's library crates so that a user can depend on one
//! package. Each layer is also usable alone; see `ARCHITECTURE.md`.

pub use siamese_data as data;
pub use siamese_encoder as encoder;
pub use siamese_ops as ops;
pub use siamese_pairs as pairs;
pub use siamese_train as train;
