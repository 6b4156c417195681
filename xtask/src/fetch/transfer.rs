//! Moving bytes into place: stream from a reader into a temporary file beside the
//! destination while hashing, verify, and only then rename to the final name.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use md5::Md5;
use sha2::{Digest, Sha256};

use super::registry::{Checksum, Packed};

/// Bound on the decompressed size of one compressed file (a dlib model is at most 22 MB).
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 30;

/// A reader that fails, rather than returning more, once `inner` gives more than `limit`
/// bytes.
pub struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
    what: String,
}

impl<R: Read> Bounded<R> {
    /// Bounds `inner` (described by `what` in the error) to `limit` bytes.
    pub fn new(inner: R, limit: u64, what: impl Into<String>) -> Self {
        Self {
            inner,
            left: limit,
            limit,
            what: what.into(),
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One byte past the bound is asked for, so reaching the bound exactly is not an error.
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} decompresses to more than {} bytes; refusing to continue",
                    self.what, self.limit
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// `reader` as the plain bytes of a file served `packed`: bzip2 is decompressed (every
/// stream of a multi-stream file) to at most `limit` bytes.
pub fn unpacked<'a>(
    reader: &'a mut dyn Read,
    packed: Packed,
    limit: u64,
    what: &str,
) -> Box<dyn Read + 'a> {
    match packed {
        Packed::Plain => Box::new(reader),
        Packed::Bzip2 => Box::new(Bounded::new(
            bzip2::read::MultiBzDecoder::new(std::io::BufReader::new(reader)),
            limit,
            what,
        )),
    }
}

/// The digests and size of some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Lower-case hex MD5.
    pub md5: String,
    /// Number of bytes.
    pub len: u64,
}

impl Digests {
    /// Whether these match any of `accept`.
    pub fn matches(&self, accept: &[Checksum]) -> bool {
        accept.iter().any(|c| match c {
            Checksum::Sha256(h) => h.eq_ignore_ascii_case(&self.sha256),
            Checksum::Md5(h) => h.eq_ignore_ascii_case(&self.md5),
        })
    }
}

impl std::fmt::Display for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sha256 {}, md5 {}, {} bytes",
            self.sha256, self.md5, self.len
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `reader` into `out`, hashing as it goes and reporting progress.
pub fn copy_hashing(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    progress: &indicatif::ProgressBar,
) -> std::io::Result<Digests> {
    let mut sha = Sha256::new();
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sha.update(&buf[..n]);
        md5.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        len += n as u64;
        progress.inc(n as u64);
    }
    Ok(Digests {
        sha256: hex(&sha.finalize()),
        md5: hex(&md5.finalize()),
        len,
    })
}

/// The digests of a file on disk.
pub fn digest_file(path: &Path) -> Result<Digests> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    copy_hashing(
        &mut f,
        &mut std::io::sink(),
        &indicatif::ProgressBar::hidden(),
    )
    .with_context(|| format!("reading {}", path.display()))
}

/// A progress bar on stderr for `len` bytes (drawn only when stderr is a terminal).
pub fn progress_bar(len: Option<u64>, label: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(len, indicatif::ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}

/// Streams `reader` (from `origin`, a URL or a path, for messages) into `dest`.
///
/// The bytes go to a temporary file in `dest`'s folder; only when their digest matches one
/// of `accept` is it renamed to `dest`. On a mismatch, a read error or an interruption the
/// temporary file is removed and nothing exists under `dest`'s name.
pub fn install(
    reader: &mut dyn Read,
    len: Option<u64>,
    origin: &str,
    dest: &Path,
    accept: &[Checksum],
) -> Result<Digests> {
    let dir = dest
        .parent()
        .with_context(|| format!("{} has no parent folder", dest.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let bar = progress_bar(len, &name);
    let digests = copy_hashing(reader, tmp.as_file_mut(), &bar)
        .with_context(|| format!("transferring {name} from {origin}"))?;
    bar.finish_and_clear();
    if !digests.matches(accept) {
        let expected: Vec<String> = accept.iter().map(|c| c.to_string()).collect();
        bail!(
            "checksum mismatch for {name} from {origin}: expected {}; got {digests}; \
             nothing was written to {}",
            expected.join(" or "),
            dest.display()
        );
    }
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("flushing {name}"))?;
    tmp.persist(dest)
        .with_context(|| format!("renaming the download to {}", dest.display()))?;
    Ok(digests)
}
