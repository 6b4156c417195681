//! The check every command makes before any work: each output path can be written (its folder
//! exists and is writable), no two outputs are the same file, and no output is an input (the
//! model, a gallery, a data folder or anything inside one), all compared as canonical paths,
//! so a run never fails at its end on a bad `--out` and never overwrites what it reads.

use crate::error::{InferError, Result};
use std::path::{Path, PathBuf};

/// A path a command reads: a file or a folder (everything inside a folder counts as read).
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The flag or argument that named it, for messages (`--model`, `--data`).
    pub flag: &'a str,
    /// The path as given.
    pub path: &'a Path,
}

/// What a command does with an output path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// A file written (replaced if it exists).
    File,
    /// A file written that must not exist yet (a checkpoint a new run would replace).
    NewFile,
    /// A folder created if missing, files written into it.
    Folder,
}

/// A path a command writes.
#[derive(Clone, Copy, Debug)]
pub struct Output<'a> {
    /// The flag that named it (`--out`, `--checkpoint`, `--report`).
    pub flag: &'a str,
    /// The path as given.
    pub path: &'a Path,
    /// File or folder.
    pub kind: OutputKind,
}

impl<'a> Input<'a> {
    /// `path`, named by `flag`.
    pub fn new(flag: &'a str, path: &'a Path) -> Self {
        Input { flag, path }
    }
}

impl<'a> Output<'a> {
    /// A file output.
    pub fn file(flag: &'a str, path: &'a Path) -> Self {
        Output {
            flag,
            path,
            kind: OutputKind::File,
        }
    }

    /// A file output that must not exist yet.
    pub fn new_file(flag: &'a str, path: &'a Path) -> Self {
        Output {
            flag,
            path,
            kind: OutputKind::NewFile,
        }
    }

    /// A folder output.
    pub fn folder(flag: &'a str, path: &'a Path) -> Self {
        Output {
            flag,
            path,
            kind: OutputKind::Folder,
        }
    }
}

fn refuse(o: &Output<'_>, message: impl Into<String>) -> InferError {
    InferError::Output {
        flag: o.flag.to_string(),
        path: o.path.to_path_buf(),
        message: message.into(),
    }
}

/// Where an output lands: the canonical path of its folder joined with its name. Checks that
/// the folder exists, is a folder and is writable, and that the path has the kind asked for.
fn resolve(o: &Output<'_>) -> Result<PathBuf> {
    let name = match o.path.file_name() {
        Some(n) => n.to_os_string(),
        None => return Err(refuse(o, "not a file name")),
    };
    let dir = match o.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let canonical_dir = match std::fs::canonicalize(&dir) {
        Ok(d) => d,
        Err(e) => {
            return Err(refuse(
                o,
                format!("its folder {} cannot be used: {e}", dir.display()),
            ))
        }
    };
    if !canonical_dir.is_dir() {
        return Err(refuse(o, format!("{} is not a folder", dir.display())));
    }
    probe_writable(&canonical_dir).map_err(|e| {
        refuse(
            o,
            format!("its folder {} is not writable: {e}", dir.display()),
        )
    })?;
    let target = canonical_dir.join(&name);
    match std::fs::symlink_metadata(&target) {
        Ok(meta) => {
            // An existing path (a link is followed: writing replaces what it points to).
            let canonical = std::fs::canonicalize(&target).unwrap_or(target.clone());
            let is_dir = std::fs::metadata(&target)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            match o.kind {
                OutputKind::File | OutputKind::NewFile if is_dir => {
                    return Err(refuse(o, "is a folder, not a file"))
                }
                OutputKind::NewFile => {
                    return Err(refuse(o, "exists already, and is not replaced"));
                }
                OutputKind::Folder if !is_dir && !meta.file_type().is_symlink() => {
                    return Err(refuse(o, "is a file, not a folder"))
                }
                OutputKind::Folder if is_dir => {
                    probe_writable(&canonical)
                        .map_err(|e| refuse(o, format!("the folder is not writable: {e}")))?;
                }
                _ => {}
            }
            Ok(canonical)
        }
        Err(_) => Ok(target),
    }
}

/// Creates and removes a file in `dir`: whether this process can write there (permission
/// bits do not tell for root, a read-only mount or a full quota).
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".siamese-write-probe-{}-{n}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Whether two existing paths are one file (the same device and inode: hard links too).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    false
}

/// Checks, before any work, that every output can be written and none destroys an input:
/// - each output's folder exists and is writable (a file is created and removed there), a
///   file output is not a folder, a folder output is not a file, and a
///   [`OutputKind::NewFile`] does not exist yet;
/// - no two outputs are the same path;
/// - no output is an input, or inside an input folder.
///
/// Paths are compared canonically (links and `..` resolved; an existing file also by device
/// and inode, so a hard link is caught). Inputs that do not exist are left to whoever reads
/// them. Errors are [`InferError::Output`], naming the output's flag and path.
pub fn check_outputs(inputs: &[Input<'_>], outputs: &[Output<'_>]) -> Result<()> {
    let mut resolved: Vec<(&Output<'_>, PathBuf)> = Vec::with_capacity(outputs.len());
    for o in outputs {
        let canonical = resolve(o)?;
        for (other, p) in &resolved {
            if *p == canonical || same_file(p, &canonical) {
                return Err(refuse(
                    o,
                    format!(
                        "is also {} {}: give each output its own path",
                        other.flag,
                        other.path.display()
                    ),
                ));
            }
        }
        resolved.push((o, canonical));
    }
    for i in inputs {
        let Ok(input) = std::fs::canonicalize(i.path) else {
            continue;
        };
        let input_is_dir = input.is_dir();
        for (o, out) in &resolved {
            if *out == input || same_file(out, &input) {
                return Err(refuse(
                    o,
                    format!(
                        "is the input {} {}: it would be overwritten",
                        i.flag,
                        i.path.display()
                    ),
                ));
            }
            if input_is_dir && out.starts_with(&input) {
                return Err(refuse(
                    o,
                    format!(
                        "is inside the input folder {} {}: write it elsewhere",
                        i.flag,
                        i.path.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_checked_against_each_other_and_the_inputs() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("a"))?;
        std::fs::write(data.join("a/1.pgm"), b"x")?;
        let model = dir.path().join("m.safetensors");
        std::fs::write(&model, b"model")?;
        let out = dir.path().join("out.safetensors");
        let data_in = [Input::new("--data", &data), Input::new("--model", &model)];
        check_outputs(&data_in, &[Output::file("--out", &out)])?;
        // The model itself, through `..`, and a file inside the data folder.
        let dotted = dir.path().join("data/../m.safetensors");
        for bad in [
            model.as_path(),
            dotted.as_path(),
            &data.join("a/1.pgm"),
            &data.join("a/new.safetensors"),
        ] {
            assert!(
                check_outputs(&data_in, &[Output::file("--out", bad)]).is_err(),
                "{bad:?}"
            );
        }
        // Two outputs on one path.
        let e = check_outputs(
            &[],
            &[
                Output::file("--out", &out),
                Output::file("--checkpoint", &out),
            ],
        );
        assert!(e.is_err_and(|e| e.to_string().contains("--checkpoint")));
        // A missing folder; a folder where a file goes; a checkpoint that exists.
        assert!(check_outputs(&[], &[Output::file("--out", &dir.path().join("no/x"))]).is_err());
        assert!(check_outputs(&[], &[Output::file("--out", &data)]).is_err());
        assert!(check_outputs(&[], &[Output::new_file("--checkpoint", &model)]).is_err());
        assert!(check_outputs(&[], &[Output::folder("--report", &model)]).is_err());
        check_outputs(&[], &[Output::folder("--report", &data)])?;
        #[cfg(unix)]
        {
            let link = dir.path().join("hard.safetensors");
            std::fs::hard_link(&model, &link)?;
            assert!(check_outputs(&data_in, &[Output::file("--out", &link)]).is_err());
        }
        Ok(())
    }
}
