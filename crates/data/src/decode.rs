//! Image decoding: PNG (any bit depth, 1-bit included), JPEG and PGM/PPM (binary and ASCII).
//!
//! JPEGs go through libjpeg-turbo's decoder ([`crate::jpeg`]), so they come out bit for bit
//! as PIL (and so face_recognition and dlib) read them: grey as grey, colour as RGB, CMYK
//! converted to RGB as PIL does. Everything else goes through the `image` crate.

use std::path::Path;

use image::DynamicImage;

use crate::error::{DataError, Result};
use crate::limits::MAX_IMAGE_SIDE;

/// File extensions (lower case) this crate treats as images when listing folders and archives.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "pgm", "ppm", "pbm", "pnm"];

/// Whether `name` ends in one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn is_image_name(name: &str) -> bool {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => {
            let ext = ext.to_ascii_lowercase();
            IMAGE_EXTENSIONS.contains(&ext.as_str())
        }
        _ => false,
    }
}

/// Decodes an image held in memory; the format is recognised from its first bytes.
///
/// JPEGs come out exactly as libjpeg-turbo decodes them, which is what PIL's
/// `Image.open(f).convert("RGB")` gives: [`DynamicImage::ImageLuma8`] for grey files,
/// [`DynamicImage::ImageRgb8`] for colour ones (CMYK and YCCK converted as PIL converts them).
/// A truncated or corrupt JPEG, or one with more than 100 progressive scans, is an error.
///
/// `name` is only used in error messages (a path, or `archive.zip!/member`).
pub fn decode(bytes: &[u8], name: impl AsRef<Path>) -> Result<DynamicImage> {
    let name = name.as_ref();
    if bytes.is_empty() {
        return Err(DataError::decode(name, "the file is empty"));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        DataError::decode(
            name,
            "unrecognised image format (expected PNG, JPEG or PGM/PPM)",
        )
    })?;
    if format == image::ImageFormat::Jpeg {
        // libjpeg-turbo's decoder, bit for bit what PIL gives (see `crate::jpeg`); the size is
        // checked from libjpeg's reading of the header, before any pixel is decoded.
        return crate::jpeg::decode_jpeg(bytes, name, |w, h| check_size(w, h, name));
    }
    check_dimensions(bytes, format, name)?;
    image::load_from_memory_with_format(bytes, format)
        .map_err(|e| DataError::decode(name, e.to_string()))
}

/// Reads the image's size from its header and refuses sizes over the limits before anything
/// is decoded.
fn check_dimensions(bytes: &[u8], format: image::ImageFormat, name: &Path) -> Result<()> {
    let reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| DataError::decode(name, e.to_string()))?;
    check_size(w, h, name)
}

/// Refuses a `w` x `h` image that is empty or over the limits.
fn check_size(w: u32, h: u32, name: &Path) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(DataError::decode(
            name,
            format!("the image is {w}x{h}: empty"),
        ));
    }
    let limit = crate::limits::max_image_pixels();
    let pixels = w as u64 * h as u64;
    if w > MAX_IMAGE_SIDE || h > MAX_IMAGE_SIDE || pixels > limit {
        return Err(DataError::decode(
            name,
            format!(
                "the image is {w}x{h} ({:.1} megapixels), over the limit of {:.1} megapixels and \
                 {MAX_IMAGE_SIDE} pixels a side (SIAMESE_MAX_PIXELS raises the first)",
                pixels as f64 / 1e6,
                limit as f64 / 1e6
            ),
        ));
    }
    Ok(())
}

/// Reads and decodes the image file at `path`.
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode(&bytes, path)
}
