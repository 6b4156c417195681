//! The one integration-test binary of `siamese-pairs` (one link instead of one per file).

mod common;
mod learning;
mod losses;
mod metrics;
mod mining;
mod pair;
mod sampler;
