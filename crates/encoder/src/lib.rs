//! `siamese-encoder`: the encoder `f(x)` that maps an image to an embedding.
//!
//! What it owns:
//! - [`EncoderConfig`]: a serialisable description of an architecture (`koch`, `conv4`,
//!   `resnet`), its input shape, embedding size, whether the output is L2-normalised, and how
//!   many independently initialised members (an ensemble in one encoder) share the embedding.
//!   `dlib-resnet` is dlib's face-recognition ResNet (3×150×150 RGB to 128 unnormalised
//!   values, affine layers folded into the convolutions' biases, no BatchNorm), to run or
//!   fine-tune dlib's trained weights ([`Encoder::from_tensors`] builds it from them).
//! - [`Encoder`]: the network built from a config, with its named parameters and BatchNorm
//!   running statistics; `forward_t(xs, train)` uses batch statistics when training and the
//!   running statistics when evaluating.
//! - [`io`]: the weights and config as safetensors bytes (config as JSON in the metadata,
//!   tensor names following module paths, so PyTorch's `safetensors.torch.load_file` reads
//!   them).
//!
//! What it promises:
//! - Building an encoder from the same config and seed gives the same parameters
//!   (PyTorch's default Kaiming-uniform initialisation, `a = √5`).
//! - Loading bytes with a missing, extra or wrongly shaped tensor fails with an error that
//!   names the tensor; it never panics on a corrupt buffer.
//! - BatchNorm running statistics are buffers, not parameters: they are saved and loaded but
//!   never handed to an optimiser.
//!
//! What it deliberately does not know: pairs, losses, data sets, files. It does no file I/O
//! (callers read and write the bytes) and prints nothing.

mod arch;
mod config;
mod dlib_resnet;
pub mod io;
mod layers;
mod params;

pub use arch::Encoder;
pub use config::{
    Architecture, EncoderConfig, Tap, MAX_DEPTH, MAX_EMBEDDING_DIM, MAX_INPUT_SIDE, MAX_MEMBERS,
    MAX_WIDTH,
};
pub use params::Params;
