//! The limits on sizes that enter from files: one reviewed table, each enforced where the
//! value first enters, each error naming the file and the limit.
//!
//! | limit | value | where it is checked |
//! |---|---|---|
//! | [`MAX_IMAGE_PIXELS`] | 64 megapixels (`SIAMESE_MAX_PIXELS` raises it) | [`crate::decode()`], from the header, before any pixel is decoded; IDX images, from the IDX header |
//! | [`MAX_IMAGE_SIDE`] | 65,536 pixels | [`crate::decode()`], from the header; IDX images |
//! | empty images | 0 pixels wide or high is an error | [`crate::decode()`]; IDX images |
//! | `MAX_JPEG_SCANS` | 100 scans per progressive JPEG | [`crate::decode()`], as libjpeg reads the scans |
//! | [`MAX_MEMBER_BYTES`] | 256 MiB inflated | every zip member read, whatever size its header declares |
//! | [`MAX_PROTOCOL_PAIRS`] | 10,000,000 pairs | LFW `pairs.txt` headers, before anything is allocated |
//! | [`crate::MAX_IDX_BYTES`] | see there | IDX files |
//! | [`crate::MAX_FOLDER_DEPTH`] | see there | folder listings |
//!
//! The other crates' limits on sizes that come from files or flags: the encoder's
//! (`siamese_encoder::MAX_INPUT_SIDE` 4096, `MAX_EMBEDDING_DIM` 65,536, `MAX_WIDTH` 8192,
//! `MAX_MEMBERS` 64, `MAX_DEPTH` 64; checked by `EncoderConfig::validate` for model files and
//! TOML configurations, and by the CLI's value parsers for flags), the batch's
//! (`siamese_train::MAX_BATCH_CLASSES` 100,000, `MAX_BATCH_IMAGES` 10,000), a checkpoint's
//! steps (`siamese_train::MAX_CHECKPOINT_STEPS`, 10^9, with one loss per step),
//! test-time copies (`siamese_infer::MAX_TTA_COPIES` 1024), and the CLI's `--threads` (1024),
//! `--ways` (2 to 10,000), and `--episodes`, `--shots`, `--top` (1 to 10^7).

/// The most pixels a decoded image may have unless `SIAMESE_MAX_PIXELS` says more: a
/// 20,000 x 20,000 PNG of a few kilobytes would otherwise take gigabytes once decoded.
pub const MAX_IMAGE_PIXELS: u64 = 64_000_000;

/// The longest image side accepted, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 65_536;

/// The most bytes one zip member may inflate to (a few kilobytes can inflate to gigabytes).
pub const MAX_MEMBER_BYTES: u64 = 256 << 20;

/// The most pairs an LFW pairs file may declare (the real `pairs.txt` has 6,000).
pub const MAX_PROTOCOL_PAIRS: u64 = 10_000_000;

/// The pixel limit in force: [`MAX_IMAGE_PIXELS`], or the positive integer in the environment
/// variable `SIAMESE_MAX_PIXELS` (for a user with 100-megapixel photos).
pub fn max_image_pixels() -> u64 {
    std::env::var("SIAMESE_MAX_PIXELS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v > 0)
        .unwrap_or(MAX_IMAGE_PIXELS)
}
