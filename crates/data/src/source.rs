//! Where one image's bytes live: a file, a member of a zip archive, or raw pixels in memory.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use image::{DynamicImage, GrayImage, RgbImage};

use crate::decode::decode;
use crate::error::{DataError, Result};

/// One image, not yet decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// An image file.
    File(PathBuf),
    /// A member of a zip archive, read without unpacking.
    Zip {
        /// The archive (shared by all members of one data set).
        archive: Arc<PathBuf>,
        /// The member's full name inside the archive.
        entry: String,
    },
    /// Raw 8-bit pixels in memory (IDX files, synthetic data), row-major, channels interleaved.
    Raw {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// 1 (grey) or 3 (RGB).
        channels: u8,
        /// A buffer shared by many images.
        data: Arc<[u8]>,
        /// Where this image starts in `data`.
        offset: usize,
    },
}

impl ImageSource {
    /// A name for messages: the path, `archive.zip!/member`, or `<raw WxH>`.
    pub fn display_name(&self) -> PathBuf {
        match self {
            ImageSource::File(p) => p.clone(),
            ImageSource::Zip { archive, entry } => zip_member_name(archive, entry),
            ImageSource::Raw {
                width,
                height,
                offset,
                ..
            } => PathBuf::from(format!("<raw {width}x{height} image at byte {offset}>")),
        }
    }

    /// The file name of the image (last path component), if it has one.
    pub fn file_name(&self) -> Option<&str> {
        match self {
            ImageSource::File(p) => p.file_name().and_then(|s| s.to_str()),
            ImageSource::Zip { entry, .. } => entry.rsplit('/').next(),
            ImageSource::Raw { .. } => None,
        }
    }

    /// Reads the undecoded bytes of a file or archive member (`None` for raw pixels).
    pub fn read_bytes(&self) -> Result<Option<Vec<u8>>> {
        match self {
            ImageSource::File(p) => std::fs::read(p).map(Some).map_err(|e| DataError::io(p, e)),
            ImageSource::Zip { archive, entry } => {
                let mut zip = cached_zip(archive)?;
                read_member(&mut zip, archive, entry).map(Some)
            }
            ImageSource::Raw { .. } => Ok(None),
        }
    }

    /// Reads and decodes the image.
    pub fn load(&self) -> Result<DynamicImage> {
        match self {
            ImageSource::Raw {
                width,
                height,
                channels,
                data,
                offset,
            } => raw_image(*width, *height, *channels, data, *offset),
            _ => {
                let bytes = self.read_bytes()?.unwrap_or_default();
                decode(&bytes, self.display_name())
            }
        }
    }
}

/// `archive!/member`, the name used for archive members in messages.
pub fn zip_member_name(archive: &Path, entry: &str) -> PathBuf {
    PathBuf::from(format!("{}!/{}", archive.display(), entry))
}

/// Reads one member of an open archive fully.
pub(crate) fn read_member<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    archive: &Path,
    entry: &str,
) -> Result<Vec<u8>> {
    let name = zip_member_name(archive, entry);
    let mut f = zip
        .by_name(entry)
        .map_err(|e| DataError::archive(&name, e))?;
    let limit = crate::limits::MAX_MEMBER_BYTES;
    if f.size() > limit {
        return Err(DataError::decode(
            &name,
            format!(
                "the archive says it inflates to {} bytes, over the limit of {limit}",
                f.size()
            ),
        ));
    }
    let mut buf = Vec::with_capacity(f.size().min(1 << 26) as usize);
    // Whatever the header declared, stop one byte past the limit.
    (&mut f)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| DataError::decode(&name, format!("cannot inflate archive member: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(DataError::decode(
            &name,
            format!("inflates to more than the limit of {limit} bytes"),
        ));
    }
    Ok(buf)
}

/// An in-memory zip archive that can be cloned cheaply, one clone per thread.
pub(crate) type MemZip = zip::ZipArchive<Cursor<Arc<[u8]>>>;

/// Reads a whole archive into memory and parses its directory once.
pub(crate) fn open_mem_zip(archive: &Path) -> Result<MemZip> {
    let bytes: Arc<[u8]> = std::fs::read(archive)
        .map_err(|e| DataError::io(archive, e))?
        .into();
    zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| DataError::archive(archive, e))
}

/// Archives kept open in memory by [`cached_zip`].
const ZIP_CACHE_SIZE: usize = 8;

type ZipCache = HashMap<PathBuf, (u64, Option<SystemTime>, MemZip)>;

/// An in-memory copy of `archive`, parsed once per process and re-read when the file's size
/// or modification time changes; at most [`ZIP_CACHE_SIZE`] archives are kept.
pub(crate) fn cached_zip(archive: &Path) -> Result<MemZip> {
    static CACHE: OnceLock<Mutex<ZipCache>> = OnceLock::new();
    let meta = std::fs::metadata(archive).map_err(|e| DataError::io(archive, e))?;
    let stamp = (meta.len(), meta.modified().ok());
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let map = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((len, time, zip)) = map.get(archive) {
            if (*len, *time) == stamp {
                return Ok(zip.clone());
            }
        }
    }
    let zip = open_mem_zip(archive)?;
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= ZIP_CACHE_SIZE {
        map.clear();
    }
    map.insert(archive.to_path_buf(), (stamp.0, stamp.1, zip.clone()));
    Ok(zip)
}

/// Builds an image from raw interleaved 8-bit pixels.
pub(crate) fn raw_image(
    width: u32,
    height: u32,
    channels: u8,
    data: &[u8],
    offset: usize,
) -> Result<DynamicImage> {
    let len = width as usize * height as usize * channels as usize;
    let name = || PathBuf::from(format!("<raw {width}x{height} image at byte {offset}>"));
    let pixels = offset
        .checked_add(len)
        .and_then(|end| data.get(offset..end))
        .ok_or_else(|| DataError::decode(name(), "pixel buffer too short"))?
        .to_vec();
    let img = match channels {
        1 => GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
        3 => RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
        _ => None,
    };
    img.ok_or_else(|| DataError::decode(name(), format!("unsupported channel count {channels}")))
}
