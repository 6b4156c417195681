//! Safe unpacking of zip and gzip-compressed tar archives.
//!
//! Every entry must be a plain relative path (no absolute path, drive prefix or `..`);
//! links (symbolic or hard) and special files are refused; the total unpacked size is
//! bounded. Unpacking goes into a temporary folder beside the destination, which is renamed
//! into place only when everything succeeded.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Default bound on the total size of an unpacked archive: 4 GiB.
pub const MAX_UNPACKED_BYTES: u64 = 4 << 30;

/// Default bound on the number of entries of an archive.
pub const MAX_ENTRIES: usize = 1_000_000;

/// Turns an archive member name into a safe relative path, or explains why not.
pub fn safe_relative(name: &str) -> Result<PathBuf> {
    if name.is_empty() {
        bail!("empty member name");
    }
    if name.starts_with('/') || name.starts_with('\\') {
        bail!("absolute member path `{name}`");
    }
    if name.contains('\0') || name.contains(':') || name.contains('\\') {
        bail!("member path `{name}` contains `:`, `\\` or NUL");
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => bail!("member path `{name}` contains `..`"),
            Component::RootDir | Component::Prefix(_) => bail!("absolute member path `{name}`"),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("member path `{name}` names no file");
    }
    Ok(out)
}

/// Tracks the total size written against the bound.
struct Budget {
    limit: u64,
    used: u64,
}

impl Budget {
    /// Copies at most the remaining budget from `r` to a new file at `path`.
    fn write_file(&mut self, r: &mut dyn Read, path: &Path, archive: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let room = self.limit - self.used;
        let n = std::io::copy(&mut r.take(room + 1), &mut f)
            .with_context(|| format!("unpacking {} from {}", path.display(), archive.display()))?;
        self.used += n;
        if self.used > self.limit {
            bail!(
                "{} unpacks to more than {} bytes; refusing to continue",
                archive.display(),
                self.limit
            );
        }
        Ok(())
    }
}

fn unpack_zip(archive: &Path, into: &Path, limit: u64) -> Result<()> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .with_context(|| format!("reading the zip archive {}", archive.display()))?;
    if zip.len() > MAX_ENTRIES {
        bail!("{} has more than {MAX_ENTRIES} entries", archive.display());
    }
    // Check every name and the declared sizes before writing anything.
    let mut declared = 0u64;
    for i in 0..zip.len() {
        let f = zip
            .by_index_raw(i)
            .with_context(|| format!("reading entry {i} of {}", archive.display()))?;
        let name = f.name().to_string();
        safe_relative(&name).with_context(|| format!("unsafe entry in {}", archive.display()))?;
        let kind = f.unix_mode().map(|m| m & 0o170000);
        if f.is_symlink() || kind == Some(0o120000) {
            bail!(
                "{} contains the link `{name}`; links are refused",
                archive.display()
            );
        }
        if matches!(kind, Some(k) if k != 0 && k != 0o100000 && k != 0o040000) {
            bail!("{} contains the special file `{name}`", archive.display());
        }
        declared = declared.saturating_add(f.size());
    }
    if declared > limit {
        bail!(
            "{} declares {declared} unpacked bytes, more than the bound of {limit}",
            archive.display()
        );
    }
    let mut budget = Budget { limit, used: 0 };
    for i in 0..zip.len() {
        let mut f = zip
            .by_index(i)
            .with_context(|| format!("reading entry {i} of {}", archive.display()))?;
        let rel = safe_relative(f.name())?;
        let path = into.join(rel);
        if f.is_dir() {
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
        } else {
            budget.write_file(&mut f, &path, archive)?;
        }
    }
    Ok(())
}

fn unpack_tar_gz(archive: &Path, into: &Path, limit: u64) -> Result<()> {
    let file =
        std::fs::File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut tar = tar::Archive::new(gz);
    let mut budget = Budget { limit, used: 0 };
    let entries = tar
        .entries()
        .with_context(|| format!("reading the tar archive {}", archive.display()))?;
    for (count, entry) in entries.enumerate() {
        if count >= MAX_ENTRIES {
            bail!("{} has more than {MAX_ENTRIES} entries", archive.display());
        }
        let mut entry = entry.with_context(|| format!("reading {}", archive.display()))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        match kind {
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            T::Symlink | T::Link => {
                bail!(
                    "{} contains the link `{name}`; links are refused",
                    archive.display()
                )
            }
            T::Regular | T::Continuous | T::Directory => {}
            other => bail!(
                "{} contains `{name}` of unsupported type {other:?}",
                archive.display()
            ),
        }
        let rel = safe_relative(&name)
            .with_context(|| format!("unsafe entry in {}", archive.display()))?;
        let path = into.join(rel);
        if kind == T::Directory {
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
        } else {
            budget.write_file(&mut entry, &path, archive)?;
        }
    }
    Ok(())
}

/// Unpacks `archive` (`.zip`, `.tgz` or `.tar.gz`) to `dest`, which must not exist, with at
/// most `limit` bytes in total. If the archive holds a single top folder (`lfw/...`), that
/// folder becomes `dest`; otherwise the archive's top level does.
pub fn unpack(archive: &Path, dest: &Path, limit: u64) -> Result<()> {
    if dest.exists() {
        bail!("{} already exists", dest.display());
    }
    let parent = dest
        .parent()
        .with_context(|| format!("{} has no parent folder", dest.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if name.ends_with(".zip") {
        unpack_zip(archive, tmp.path(), limit)?;
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        unpack_tar_gz(archive, tmp.path(), limit)?;
    } else {
        bail!(
            "{} is not a .zip, .tgz or .tar.gz archive",
            archive.display()
        );
    }
    let top: Vec<_> = std::fs::read_dir(tmp.path())?
        .collect::<std::io::Result<Vec<_>>>()
        .with_context(|| format!("listing {}", tmp.path().display()))?;
    let from = match top.as_slice() {
        [only] if only.file_type()?.is_dir() => only.path(),
        _ => tmp.path().to_path_buf(),
    };
    std::fs::rename(&from, dest)
        .with_context(|| format!("renaming the unpacked archive to {}", dest.display()))?;
    Ok(())
}
