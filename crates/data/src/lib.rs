//! `siamese-data`: images and data sets for the siamese workspace.
//!
//! This crate owns everything between files on disk and preprocessed f32 tensors:
//! - decoding PNG (1-bit included), JPEG and PGM/PPM ([`decode()`], [`load_image`]), photos
//!   with their EXIF orientation applied ([`load_photo`]), and RGB PNGs written back
//!   ([`encode_png_rgb`]);
//! - preprocessing to CHW tensors, stored in model files so inference repeats it
//!   ([`Preprocess`]);
//! - data set layouts: image folders at any depth, Omniglot zips read in place, AT&T,
//!   IDX (MNIST / Fashion-MNIST) ([`Dataset`], [`ImageSource`]), merging, class selection and
//!   class-disjoint splits;
//! - loading a whole data set in parallel into one tensor ([`ImageCache`]);
//! - protocol files: Lake et al. one-shot runs ([`OneShotRuns`], [`write_oneshot_runs`]) and
//!   LFW pairs ([`LfwPairs`]);
//! - the limits on sizes read from files, as one table ([`MAX_IMAGE_PIXELS`] and its
//!   neighbours);
//! - seeded augmentation ([`Augment`]) and a synthetic glyph set ([`synthetic()`]).
//!
//! It deliberately knows nothing of models, encoders, losses or training: it hands out
//! tensors and labels and never looks at what is done with them.
//!
//! Invariants: every listing is sorted deterministically (natural order, `s2` before `s10`);
//! everything random takes a seed; errors are [`DataError`] values naming the file; nothing
//! is printed.

mod augment;
mod cache;
mod dataset;
mod decode;
mod error;
mod idx;
mod jpeg;
mod lfw;
mod limits;
mod oneshot;
mod photo;
mod preprocess;
mod skipped;
mod source;
mod synthetic;

pub use augment::Augment;
pub use cache::{ImageCache, SkippedItem};
pub use dataset::{
    alphabet_of, natural_cmp, parse_class_selection, ClassSelection, Dataset, Item, SplitSize,
    MAX_FOLDER_DEPTH,
};
pub use decode::{decode, is_image_name, load_image, IMAGE_EXTENSIONS};
pub use error::{DataError, Result};
pub use idx::{labels_beside, MAX_IDX_BYTES};
pub use lfw::{lfw_image_path, LfwPair, LfwPairs};
pub use limits::{
    max_image_pixels, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_MEMBER_BYTES, MAX_PROTOCOL_PAIRS,
};
pub use oneshot::{
    drawer_of, oneshot_run_name, write_oneshot_runs, OneShotRun, OneShotRuns, OneShotRunsConfig,
    OneShotTrial,
};
pub use photo::{decode_photo, encode_png_rgb, jpeg_orientation, load_photo};
pub use preprocess::Preprocess;
pub use skipped::Skipped;
pub use source::{zip_member_name, ImageSource};
pub use synthetic::synthetic;
