//! `siamese-ops`: tensor operations on encodings, and the fast CPU layers the encoders train through.
//!
//! What it owns:
//! - [`distance`]: distances between paired rows (squared L2, L2, L1, cosine), pairwise N×M
//!   distance matrices computed with one matrix product, L2 normalisation, and an exact
//!   blocked nearest-neighbour search over large galleries (`GalleryIndex`).
//! - [`mask`]: the same-label / different-label / diagonal masks that mining needs.
//! - [`nn`]: convolution, max-pooling, BatchNorm and their fused variants as candle custom ops
//!   with their own CPU forward and backward passes (candle's own are slow or wrong on the CPU),
//!   including whole conv+BatchNorm+ReLU+max-pool blocks as one autograd node and eval-mode
//!   BatchNorm folded into the convolution.
//! - [`resample`]: area resampling of image batches to another size (an ensemble member that
//!   sees a smaller image).
//!
//! What it promises: every public function documents its shapes, checks them on entry and fails
//! with a `candle_core::Error` that names the op and the offending shape. Everything is
//! differentiable through candle's autograd where the docs say so.
//!
//! What it deliberately does not know: models, losses, data sets, files. It does no I/O and
//! prints nothing.

pub mod distance;
pub mod mask;
pub mod nn;
pub mod resample;
