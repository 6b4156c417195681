//! `cargo xtask fetch`: get data sets into the data root, verified.
//!
//! For each file of a data set: if the data root already holds it with an accepted
//! checksum, nothing happens. Otherwise it is copied from the mirror (`--mirror DIR` or
//! `$SIAMESE_MIRROR`, which then replaces the network entirely), else from a system folder
//! holding the same files (Debian's Fashion-MNIST package), else downloaded from the
//! official URLs; in every case it streams into a temporary file, is verified, and only
//! then takes its final name. Archives that the project cannot read in place are unpacked
//! safely (see [`unpack`]). A mirror may also hold a data set in its own layout (AT&T's
//! `att_faces/sN/M.pgm`), which is then copied as it is.

mod layout;
mod registry;
mod transfer;
mod unpack;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::UsageError;
use registry::{DataSet, RemoteFile, DATASETS};

/// Where and how to fetch.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data root.
    pub data_root: PathBuf,
    /// A local folder replacing the network.
    pub mirror: Option<PathBuf>,
    /// Bound on the unpacked size of one archive.
    pub unpack_limit: u64,
    /// Print what happens on stderr.
    pub verbose: bool,
}

impl Options {
    fn say(&self, msg: &str) {
        if self.verbose {
            eprintln!("{msg}");
        }
    }
}

/// Parses `fetch` arguments and runs it.
pub fn run(args: &[String]) -> Result<()> {
    let mut names = Vec::new();
    let mut data_root = std::env::var_os("SIAMESE_DATA").map(PathBuf::from);
    let mut mirror = std::env::var_os("SIAMESE_MIRROR")
        .filter(|m| !m.is_empty())
        .map(PathBuf::from);
    let mut list = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |flag: &str| -> Result<PathBuf> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .map(PathBuf::from)
                .ok_or_else(|| UsageError(format!("{flag} needs a folder")).into())
        };
        match flag {
            "--list" => list = true,
            "--data-root" => data_root = Some(value(flag)?),
            "--mirror" => mirror = Some(value(flag)?),
            "--help" | "-h" => {
                print_list();
                return Ok(());
            }
            f if f.starts_with('-') => return Err(UsageError(format!("unknown flag `{f}`")).into()),
            name => names.push(name.to_string()),
        }
    }
    if list {
        print_list();
        return Ok(());
    }
    if names.is_empty() {
        return Err(UsageError(
            "name at least one data set (see `cargo xtask fetch --list`)".into(),
        )
        .into());
    }
    let sets = names.iter().map(|n| find(n)).collect::<Result<Vec<_>>>()?;
    let opts = Options {
        data_root: data_root.unwrap_or_else(|| PathBuf::from("data")),
        mirror,
        unpack_limit: unpack::MAX_UNPACKED_BYTES,
        verbose: true,
    };
    for set in sets {
        fetch(set, &opts).with_context(|| format!("fetching {}", set.name))?;
    }
    Ok(())
}

/// Bound on the unpacked size of one archive.
pub const MAX_UNPACKED: u64 = unpack::MAX_UNPACKED_BYTES;

/// Fetches the data set called `name`.
pub fn fetch_named(name: &str, opts: &Options) -> Result<()> {
    let set = find(name)?;
    fetch(set, opts).with_context(|| format!("fetching {}", set.name))
}

fn find(name: &str) -> Result<&'static DataSet> {
    DATASETS.iter().find(|d| d.name == name).ok_or_else(|| {
        let known: Vec<&str> = DATASETS.iter().map(|d| d.name).collect();
        UsageError(format!(
            "unknown data set `{name}` (known: {})",
            known.join(", ")
        ))
        .into()
    })
}

fn print_list() {
    println!("data sets (cargo xtask fetch NAME... [--data-root DIR] [--mirror DIR]):");
    for d in DATASETS {
        println!("  {:<15} {}", d.name, d.about);
        for f in d.files {
            let place = match f.unpack_to {
                Some(u) => format!("{}/{} -> {u}/", f.dir, f.name),
                None => format!("{}/{}", f.dir, f.name),
            };
            println!("  {:<15}   {place}", "");
        }
    }
}

/// Fetches one data set.
pub fn fetch(set: &DataSet, opts: &Options) -> Result<()> {
    // A mirror holding the data set in its own layout, and no archive: copy the folder.
    if let (Some(mirror), Some(layout)) = (&opts.mirror, &set.layout) {
        let src = mirror.join(layout.dir);
        let has_archive = set
            .files
            .iter()
            .all(|f| find_in_mirror(mirror, set, f).is_some());
        if src.is_dir() && !has_archive {
            let dest = opts.data_root.join(layout.dir);
            if dest.exists() {
                (layout.check)(&dest).with_context(|| {
                    format!("{} exists but is not a complete copy", dest.display())
                })?;
                opts.say(&format!(
                    "{}: already present in {}",
                    set.name,
                    dest.display()
                ));
                return Ok(());
            }
            (layout.check)(&src)?;
            layout::copy_tree(&src, &dest, opts.unpack_limit)?;
            (layout.check)(&dest)?;
            opts.say(&format!(
                "{}: copied {} to {}",
                set.name,
                src.display(),
                dest.display()
            ));
            return Ok(());
        }
    }
    for file in set.files {
        fetch_file(set, file, opts)?;
    }
    Ok(())
}

/// Looks for a file in the mirror: at its top level, or in a sub-folder named after the
/// data set or the file's folder in the data root (`mirror/omniglot/...`).
fn find_in_mirror(mirror: &Path, set: &DataSet, file: &RemoteFile) -> Option<PathBuf> {
    let mut dirs = vec![
        PathBuf::new(),
        PathBuf::from(set.name),
        PathBuf::from(set.name.replace('-', "_")),
        PathBuf::from(file.dir),
    ];
    if let Some(l) = &set.layout {
        dirs.push(PathBuf::from(l.dir));
    }
    if let Some(u) = file.unpack_to {
        dirs.push(PathBuf::from(u));
    }
    dirs.iter()
        .map(|d| mirror.join(d).join(file.name))
        .find(|p| p.is_file())
}

fn fetch_file(set: &DataSet, file: &RemoteFile, opts: &Options) -> Result<()> {
    let dest = opts.data_root.join(file.dir).join(file.name);
    let mut present = false;
    if dest.is_file() {
        let d = transfer::digest_file(&dest)?;
        if d.matches(file.accept) {
            opts.say(&format!("{}: {} already present", set.name, dest.display()));
            present = true;
        } else {
            opts.say(&format!(
                "{}: {} has unexpected content ({d}); fetching it again",
                set.name,
                dest.display()
            ));
        }
    }
    if !present {
        get(set, file, &dest, opts)?;
    }
    if let Some(target) = file.unpack_to {
        let target = opts.data_root.join(target);
        if target.exists() {
            opts.say(&format!(
                "{}: {} already unpacked",
                set.name,
                target.display()
            ));
        } else {
            opts.say(&format!(
                "{}: unpacking {} to {}",
                set.name,
                dest.display(),
                target.display()
            ));
            unpack::unpack(&dest, &target, opts.unpack_limit)?;
        }
    }
    Ok(())
}

/// Brings one file to `dest`, verified, from the mirror, a system folder or the network.
fn get(set: &DataSet, file: &RemoteFile, dest: &Path, opts: &Options) -> Result<()> {
    let local = opts.mirror.as_ref().map(|m| find_in_mirror(m, set, file));
    let system = set
        .system_dirs
        .iter()
        .map(|d| Path::new(d).join(file.name))
        .find(|p| p.is_file());
    let from = match (local, system) {
        (Some(Some(p)), _) => Some(p),
        (Some(None), Some(p)) | (None, Some(p)) => Some(p),
        (Some(None), None) => {
            let m = opts.mirror.as_deref().unwrap_or(Path::new(""));
            bail!(
                "{} is not in the mirror {} (looked in it and in its sub-folders {}, {}, {})",
                file.name,
                m.display(),
                set.name,
                set.name.replace('-', "_"),
                file.dir
            );
        }
        (None, None) => None,
    };
    if let Some(p) = from {
        let mut f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        let origin = p.display().to_string();
        transfer::install(&mut f, len, &origin, dest, file.accept)?;
        opts.say(&format!(
            "{}: copied {} to {}",
            set.name,
            origin,
            dest.display()
        ));
        return Ok(());
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(120))
        .build();
    let mut failures = Vec::new();
    for url in file.urls {
        opts.say(&format!("{}: downloading {url}", set.name));
        match agent.get(url).call() {
            Ok(resp) => {
                let len = resp.header("Content-Length").and_then(|l| l.parse().ok());
                let mut reader = resp.into_reader();
                match transfer::install(&mut reader, len, url, dest, file.accept) {
                    Ok(_) => return Ok(()),
                    Err(e) => failures.push(format!("{url}: {e:#}")),
                }
            }
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    bail!(
        "could not fetch {} (use --mirror DIR for a local copy):\n  {}",
        file.name,
        failures.join("\n  ")
    )
}

#[cfg(test)]
mod tests;
