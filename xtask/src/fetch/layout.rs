//! Data sets a mirror holds in their own layout (a folder rather than an archive): checking
//! the layout and copying it safely into the data root.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Checks the AT&T faces layout: folders `sN` holding `M.pgm` binary PGM files.
pub fn check_att_faces(dir: &Path) -> Result<()> {
    let mut subjects = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_subject = name.len() > 1
            && name.starts_with('s')
            && name[1..].bytes().all(|b| b.is_ascii_digit());
        if !is_subject || !entry.file_type()?.is_dir() {
            continue;
        }
        let mut images = 0;
        for img in std::fs::read_dir(entry.path())? {
            let img = img?;
            let p = img.path();
            if p.extension().is_some_and(|e| e == "pgm") {
                let mut magic = [0u8; 2];
                use std::io::Read;
                std::fs::File::open(&p)
                    .and_then(|mut f| f.read_exact(&mut magic))
                    .with_context(|| format!("reading {}", p.display()))?;
                if &magic != b"P5" && &magic != b"P2" {
                    bail!("{} is not a PGM file", p.display());
                }
                images += 1;
            }
        }
        if images == 0 {
            bail!("{} holds no .pgm images", entry.path().display());
        }
        subjects += 1;
    }
    if subjects == 0 {
        bail!("{} holds no subject folders s1, s2, ...", dir.display());
    }
    Ok(())
}

/// Copies the folder tree `src` to `dest` (which must not exist) through a temporary
/// folder beside `dest`. Links and special files are refused; at most `limit` bytes.
pub fn copy_tree(src: &Path, dest: &Path, limit: u64) -> Result<()> {
    let parent = dest
        .parent()
        .with_context(|| format!("{} has no parent folder", dest.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".copy-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary folder in {}", parent.display()))?;
    let mut total = 0u64;
    copy_dir(src, tmp.path(), limit, &mut total, 0)?;
    std::fs::rename(tmp.path(), dest)
        .with_context(|| format!("renaming the copy to {}", dest.display()))?;
    // The guard's folder was renamed away; dropping it finds nothing to remove.
    drop(tmp);
    Ok(())
}

fn copy_dir(src: &Path, dst: &Path, limit: u64, total: &mut u64, depth: usize) -> Result<()> {
    if depth > 16 {
        bail!("{} is nested too deeply", src.display());
    }
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for entry in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)
            .with_context(|| format!("reading {}", from.display()))?;
        if meta.file_type().is_symlink() {
            bail!("refusing to copy the link {}", from.display());
        } else if meta.is_dir() {
            copy_dir(&from, &to, limit, total, depth + 1)?;
        } else if meta.is_file() {
            *total += meta.len();
            if *total > limit {
                bail!("{} holds more than {limit} bytes", src.display());
            }
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        } else {
            bail!("refusing to copy the special file {}", from.display());
        }
    }
    Ok(())
}
