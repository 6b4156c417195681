//! Photos as a camera meant them: a JPEG's EXIF orientation applied after decoding (a phone
//! stores the sensor's rows and says "rotate 90°" in the EXIF), and 8-bit RGB PNGs written
//! back (aligned face chips, photos with their faces drawn).

use std::path::Path;

use image::metadata::Orientation;
use image::DynamicImage;

use crate::decode::decode;
use crate::error::{DataError, Result};

/// The orientation the EXIF block of a JPEG asks for (`None`: no EXIF block, no orientation
/// tag, or a block that cannot be read: a corrupt EXIF never fails a decode).
///
/// Walks the JPEG's marker segments up to the first scan and reads the first APP1 segment that
/// starts with `Exif\0\0`; every length is checked against the bytes left.
pub fn jpeg_orientation(bytes: &[u8]) -> Option<Orientation> {
    if bytes.get(..2) != Some(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2usize;
    loop {
        if *bytes.get(i)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(i + 1)?;
        match marker {
            // Fill bytes before a marker.
            0xFF => {
                i += 1;
                continue;
            }
            // Markers without a length.
            0x01 | 0xD0..=0xD8 => {
                i += 2;
                continue;
            }
            // Start of scan or end of image: the EXIF block comes before.
            0xDA | 0xD9 => return None,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([*bytes.get(i + 2)?, *bytes.get(i + 3)?]));
        if len < 2 {
            return None;
        }
        let segment = bytes.get(i + 4..i + 2 + len)?;
        if marker == 0xE1 {
            if let Some(exif) = segment.strip_prefix(b"Exif\0\0") {
                return Orientation::from_exif_chunk(exif);
            }
        }
        i += 2 + len;
    }
}

/// Decodes a photo held in memory as [`decode`] does, then applies a JPEG's EXIF
/// orientation ([`jpeg_orientation`]), so a phone's portrait photo comes out upright. Other
/// formats, and JPEGs without (or with an unreadable) orientation, are as decoded.
///
/// `name` is only used in error messages.
pub fn decode_photo(bytes: &[u8], name: impl AsRef<Path>) -> Result<DynamicImage> {
    let mut img = decode(bytes, name)?;
    if let Some(o) = jpeg_orientation(bytes) {
        img.apply_orientation(o);
    }
    Ok(img)
}

/// Reads and decodes the photo at `path` with its EXIF orientation applied
/// ([`decode_photo`]).
pub fn load_photo(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    decode_photo(&bytes, path)
}

/// The PNG file of an 8-bit RGB image (`width * height * 3` bytes, rows top to bottom).
/// `name` is only used in error messages.
pub fn encode_png_rgb(
    width: u32,
    height: u32,
    rgb: &[u8],
    name: impl AsRef<Path>,
) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    // The encoder asserts the length: check it first.
    if (width as u64) * (height as u64) * 3 != rgb.len() as u64 || width == 0 || height == 0 {
        return Err(DataError::Invalid(format!(
            "{}: cannot encode as PNG: {} bytes for a {width}x{height} RGB image",
            name.as_ref().display(),
            rgb.len()
        )));
    }
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| {
            DataError::Invalid(format!(
                "{}: cannot encode as PNG: {e}",
                name.as_ref().display()
            ))
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG's SOI, then an APP1 segment holding `exif`, then `rest`.
    fn with_app1(exif: &[u8], rest: &[u8]) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE1];
        v.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        v.extend_from_slice(exif);
        v.extend_from_slice(rest);
        v
    }

    /// `Exif\0\0` and a little-endian TIFF block with one IFD entry: orientation `o`.
    pub(crate) fn exif_orientation(o: u16) -> Vec<u8> {
        let mut v = b"Exif\0\0II*\0".to_vec();
        v.extend_from_slice(&8u32.to_le_bytes()); // IFD at 8
        v.extend_from_slice(&1u16.to_le_bytes()); // one entry
        v.extend_from_slice(&0x0112u16.to_le_bytes()); // orientation
        v.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        v.extend_from_slice(&1u32.to_le_bytes()); // one value
        v.extend_from_slice(&o.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        v
    }

    #[test]
    fn reads_the_orientation_and_survives_garbage() {
        let sos = [0xFF, 0xDA, 0, 2];
        assert_eq!(
            jpeg_orientation(&with_app1(&exif_orientation(6), &sos)),
            Some(Orientation::Rotate90)
        );
        assert_eq!(
            jpeg_orientation(&with_app1(&exif_orientation(3), &sos)),
            Some(Orientation::Rotate180)
        );
        // Not a JPEG, an empty file, a truncated segment, a wrong length, garbage EXIF.
        assert_eq!(jpeg_orientation(b""), None);
        assert_eq!(jpeg_orientation(b"\x89PNG"), None);
        let full = with_app1(&exif_orientation(6), &sos);
        for cut in 0..full.len() - sos.len() {
            let _ = jpeg_orientation(&full[..cut]);
        }
        let mut bad_len = full.clone();
        bad_len[4] = 0xFF;
        assert_eq!(jpeg_orientation(&bad_len), None);
        assert_eq!(jpeg_orientation(&[0xFF, 0xD8, 0xFF, 0xE1, 0, 1]), None);
        assert_eq!(
            jpeg_orientation(&with_app1(b"Exif\0\0MM\0*\xff\xff\xff\xff", &sos)),
            None
        );
        assert_eq!(jpeg_orientation(&with_app1(b"Exif\0\0", &sos)), None);
        // An out-of-range orientation value is no orientation.
        assert_eq!(
            jpeg_orientation(&with_app1(&exif_orientation(9), &sos)),
            None
        );
    }
}
