//! IDX files (MNIST, Fashion-MNIST): an images file and a labels file, gzip-compressed or plain.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dataset::{Dataset, Item};
use crate::error::{DataError, Result};
use crate::source::ImageSource;

/// Largest IDX file (after decompression) this reader accepts: 1 GiB.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Reads a whole file, inflating it when it starts with the gzip magic bytes.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_IDX_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::decode(path, format!("cannot inflate gzip data: {e}")))?;
        if out.len() as u64 > MAX_IDX_BYTES {
            return Err(DataError::layout(path, "IDX file larger than 1 GiB"));
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an IDX header: element type must be unsigned byte (0x08). Returns the dimensions
/// and the offset of the data.
fn parse_header(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, usize)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::layout(
            path,
            "not an IDX file (bad magic number)",
        ));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::layout(
            path,
            format!(
                "IDX element type 0x{:02x} unsupported (only unsigned bytes, 0x08)",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    let data_start = 4 + 4 * ndim;
    if bytes.len() < data_start {
        return Err(DataError::layout(path, "IDX header truncated"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::layout(path, "IDX dimensions overflow"))?;
    let have = bytes.len() - data_start;
    if have < expected {
        return Err(DataError::layout(
            path,
            format!("IDX data truncated: dimensions {dims:?} need {expected} bytes, found {have}"),
        ));
    }
    Ok((dims, data_start))
}

/// The labels file next to an images file: `X-images-idx3-ubyte[.gz]` ->
/// `X-labels-idx1-ubyte[.gz]` (either compression).
pub fn labels_beside(images: &Path) -> Result<PathBuf> {
    let name = images
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| DataError::layout(images, "not an IDX images file name"))?;
    let base = name.strip_suffix(".gz").unwrap_or(name);
    let labels = base.replace("-images-idx3-ubyte", "-labels-idx1-ubyte");
    if labels == base {
        return Err(DataError::layout(
            images,
            "IDX images file names must contain `-images-idx3-ubyte`",
        ));
    }
    let dir = images.parent().unwrap_or(Path::new(""));
    for candidate in [format!("{labels}.gz"), labels.clone()] {
        let p = dir.join(&candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DataError::layout(
        images,
        format!("no labels file `{labels}[.gz]` beside it"),
    ))
}

impl Dataset {
    /// Opens an IDX pair (MNIST layout): `images` holds `N x H x W` unsigned bytes
    /// (or `N x H x W x 3`), `labels` holds `N` unsigned bytes. Either may be gzip-compressed.
    /// Classes are the label values as decimal strings, in numeric order; images stay in
    /// one shared in-memory buffer.
    pub fn open_idx(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Dataset> {
        let (images, labels) = (images.as_ref(), labels.as_ref());
        let ib = read_maybe_gz(images)?;
        let lb = read_maybe_gz(labels)?;
        let (idims, ioff) = parse_header(&ib, images)?;
        let (ldims, loff) = parse_header(&lb, labels)?;
        let (n, h, w, c) = match idims.as_slice() {
            [n, h, w] => (*n, *h, *w, 1u8),
            [n, h, w, 3] => (*n, *h, *w, 3u8),
            _ => {
                return Err(DataError::layout(
                    images,
                    format!("IDX images must be N x H x W (or N x H x W x 3), found {idims:?}"),
                ))
            }
        };
        if ldims.len() != 1 || ldims[0] != n {
            return Err(DataError::layout(
                labels,
                format!("IDX labels must be one value per image ({n}), found dimensions {ldims:?}"),
            ));
        }
        let (Ok(wu), Ok(hu)) = (u32::try_from(w), u32::try_from(h)) else {
            return Err(DataError::layout(images, "image size too large"));
        };
        let limit = crate::limits::max_image_pixels();
        let side = crate::limits::MAX_IMAGE_SIDE;
        if w == 0 || h == 0 {
            return Err(DataError::layout(
                images,
                format!("IDX images are {w}x{h}: empty"),
            ));
        }
        if wu > side || hu > side || (w as u64) * (h as u64) > limit {
            return Err(DataError::layout(
                images,
                format!(
                    "IDX images are {w}x{h}, over the limit of {limit} pixels and {side} a side"
                ),
            ));
        }
        let label_values = &lb[loff..loff + n];
        let mut present = [false; 256];
        for &l in label_values {
            present[l as usize] = true;
        }
        let mut class_of = [usize::MAX; 256];
        let mut classes = Vec::new();
        for v in 0..256 {
            if present[v] {
                class_of[v] = classes.len();
                classes.push(v.to_string());
            }
        }
        let image_len = w * h * c as usize;
        let data: Arc<[u8]> = ib.into();
        let mut items: Vec<(usize, Item)> = label_values
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                (
                    i,
                    Item {
                        source: ImageSource::Raw {
                            width: wu,
                            height: hu,
                            channels: c,
                            data: data.clone(),
                            offset: ioff + i * image_len,
                        },
                        class: class_of[l as usize],
                    },
                )
            })
            .collect();
        items.sort_by_key(|(i, it)| (it.class, *i));
        Ok(Dataset {
            items: items.into_iter().map(|(_, it)| it).collect(),
            classes,
        })
    }
}
