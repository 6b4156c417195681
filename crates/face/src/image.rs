//! The image type the face pipeline reads: 8-bit RGB, row-major, interleaved.

use crate::error::{FaceError, Result};

/// The largest image side this crate accepts, in pixels.
pub const MAX_SIDE: usize = 1 << 16;

/// An 8-bit RGB image, row-major, 3 bytes per pixel (R, G, B).
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

impl RgbImage {
    /// An image from its pixels (`width * height * 3` bytes, R G B per pixel, rows top to
    /// bottom). Fails on an empty image, a side over [`MAX_SIDE`] or a buffer of the wrong
    /// length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        check_size(width, height)?;
        if data.len() != width * height * 3 {
            return Err(FaceError::Input(format!(
                "a {width}x{height} RGB image needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// A black image (every byte 0).
    pub fn zeroed(width: usize, height: usize) -> Result<Self> {
        check_size(width, height)?;
        Ok(Self {
            width,
            height,
            data: vec![0; width * height * 3],
        })
    }

    /// An RGB image from a grey one (`width * height` bytes), each value replicated.
    pub fn from_grey(width: usize, height: usize, grey: &[u8]) -> Result<Self> {
        check_size(width, height)?;
        if grey.len() != width * height {
            return Err(FaceError::Input(format!(
                "a {width}x{height} grey image needs {} bytes, got {}",
                width * height,
                grey.len()
            )));
        }
        let data = grey.iter().flat_map(|&g| [g, g, g]).collect();
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels, R G B interleaved, row-major.
    pub fn as_raw(&self) -> &[u8] {
        &self.data
    }

    /// The pixels, mutable.
    pub fn as_raw_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The pixel at column `x`, row `y` (both in range).
    #[inline]
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Consumes the image, giving back its pixels.
    pub fn into_raw(self) -> Vec<u8> {
        self.data
    }
}

fn check_size(width: usize, height: usize) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(FaceError::Input(format!(
            "the image is {width}x{height}: empty"
        )));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(FaceError::Input(format!(
            "the image is {width}x{height}: a side is over the limit of {MAX_SIDE} pixels"
        )));
    }
    Ok(())
}
