//! `siamese-face`: faces in ordinary photos, as dlib finds, aligns and encodes them.
//!
//! What it owns:
//! - [`dlib`]: a reader for dlib's serialisation format (`.dat`) and the layer stream of its
//!   `dnn` networks.
//! - [`RgbImage`]: the 8-bit RGB image every stage reads; [`Point`] and [`Rect`], dlib's integer
//!   points and inclusive rectangles.
//!
//! What it promises:
//! - Each model file is read to its last byte; anything else (truncated, altered, another
//!   network) is an error naming the file and the byte offset, and no length read from a file
//!   allocates more than the file can hold.
//! - No panic on any image, whatever its size or content: an error or an empty result.
//!
//! - [`file`](mod@file): the detector and the landmark predictor as named tensors and settings, for
//!   model files of another format (a siamese `.safetensors`), checked when read back.
//!
//! It does no file I/O (callers pass the bytes of the model files and decoded images) and
//! prints nothing.

pub mod chip;
pub mod detect;
pub mod dlib;
pub mod encoder;
mod error;
pub mod file;
mod geometry;
mod image;
pub mod landmarks;
pub mod pipeline;

pub use error::{FaceError, Result};
pub use geometry::{Point, Rect};
pub use image::{RgbImage, MAX_SIDE};
pub use pipeline::{EncodedFace, Face, FacePipeline};
