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
//!
//! Files served compressed (dlib's models, `NAME.dat.bz2`) are decompressed while they stream
//! in, to a bounded size, and verified against the digest of the decompressed file; a mirror
//! may hold either the plain `NAME.dat` or `NAME.dat.bz2`. A data set with an import step
//! (`dlib-face-models`) is then turned into the file the binary reads by the release
//! `siamese` binary itself (`siamese import dlib ... --out faces/faces.safetensors`).

mod layout;
mod registry;
mod transfer;
mod unpack;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::UsageError;
use registry::{DataSet, Packed, RemoteFile, DATASETS};

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
    let mut exe = None;
    for set in sets {
        fetch(set, &opts).with_context(|| format!("fetching {}", set.name))?;
        if set.import.is_some() {
            if exe.is_none() {
                exe = Some(crate::eval::build_binary()?);
            }
            if let Some(exe) = &exe {
                import(set, &opts, exe).with_context(|| format!("importing {}", set.name))?;
            }
        }
    }
    Ok(())
}

/// Fetches the data set called `name` and runs its import step, if it has one, with the
/// `siamese` binary `exe`; returns the imported file.
pub fn fetch_and_import(name: &str, opts: &Options, exe: &Path) -> Result<Option<PathBuf>> {
    let set = find(name)?;
    fetch(set, opts).with_context(|| format!("fetching {}", set.name))?;
    import(set, opts, exe).with_context(|| format!("importing {}", set.name))
}

/// Runs `set`'s import step with the `siamese` binary `exe` unless its output is newer than
/// every file of the set and `exe` reads it (`siamese inspect OUT` succeeds); returns the
/// output's path (`None` when the set has no import).
///
/// The binary writes into a temporary folder beside the output, which is renamed into place
/// only when the command succeeded.
pub fn import(set: &DataSet, opts: &Options, exe: &Path) -> Result<Option<PathBuf>> {
    let Some(imp) = &set.import else {
        return Ok(None);
    };
    let out = opts.data_root.join(imp.out);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified());
    if let Ok(made) = modified(&out) {
        let stale = set
            .files
            .iter()
            .map(|f| opts.data_root.join(f.dir).join(f.name))
            .any(|p| modified(&p).map_or(true, |t| t > made));
        // Up to date, and this binary still reads it (`siamese inspect`): nothing to do.
        let readable = || {
            std::process::Command::new(exe)
                .arg("inspect")
                .arg(&out)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !stale && readable() {
            opts.say(&format!("{}: {} already imported", set.name, out.display()));
            return Ok(Some(out));
        }
        if !stale {
            opts.say(&format!(
                "{}: {} is not readable by {}; importing again",
                set.name,
                out.display(),
                exe.display()
            ));
        }
    }
    let dir = out
        .parent()
        .with_context(|| format!("{} has no parent folder", out.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".import-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a temporary folder in {}", dir.display()))?;
    let name = out.file_name().unwrap_or(std::ffi::OsStr::new("import"));
    let tmp_out = tmp.path().join(name);
    let args = (imp.args)(&opts.data_root, &tmp_out);
    opts.say(&format!(
        "{}: {} {}",
        set.name,
        exe.display(),
        args.join(" ")
    ));
    let run = std::process::Command::new(exe)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !run.status.success() {
        bail!(
            "`{} {}` failed ({}):\n{}",
            exe.display(),
            args.join(" "),
            run.status,
            String::from_utf8_lossy(&run.stderr).trim_end()
        );
    }
    if !tmp_out.is_file() {
        bail!(
            "`{} {}` succeeded but wrote no {}",
            exe.display(),
            args.join(" "),
            tmp_out.display()
        );
    }
    std::fs::rename(&tmp_out, &out)
        .with_context(|| format!("renaming the import to {}", out.display()))?;
    let report = String::from_utf8_lossy(&run.stdout);
    let report = report.trim_end();
    opts.say(&format!(
        "{}: imported {}{}{report}",
        set.name,
        out.display(),
        if report.is_empty() { "" } else { "\n" }
    ));
    Ok(Some(out))
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
            let packed = match f.packed.suffix() {
                Some(s) => format!(" (served as {}{s}, decompressed)", f.name),
                None => String::new(),
            };
            println!("  {:<15}   {place}{packed}", "");
        }
        if let Some(i) = &d.import {
            println!("  {:<15}   -> {} ({})", "", i.out, i.about);
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
/// data set or the file's folder in the data root (`mirror/omniglot/...`); the plain file
/// first, then (for a file served packed) its packed form, `NAME.bz2`.
fn find_in_mirror(mirror: &Path, set: &DataSet, file: &RemoteFile) -> Option<(PathBuf, Packed)> {
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
    let mut names = vec![(file.name.to_string(), Packed::Plain)];
    if let Some(suffix) = file.packed.suffix() {
        names.push((format!("{}{suffix}", file.name), file.packed));
    }
    names.iter().find_map(|(name, packed)| {
        dirs.iter()
            .map(|d| mirror.join(d).join(name))
            .find(|p| p.is_file())
            .map(|p| (p, *packed))
    })
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
        .find(|p| p.is_file())
        .map(|p| (p, Packed::Plain));
    let from = match (local, system) {
        (Some(Some(p)), _) => Some(p),
        (Some(None), Some(p)) | (None, Some(p)) => Some(p),
        (Some(None), None) => {
            let m = opts.mirror.as_deref().unwrap_or(Path::new(""));
            let also = file
                .packed
                .suffix()
                .map(|s| format!(" or {}{s}", file.name))
                .unwrap_or_default();
            bail!(
                "{}{also} is not in the mirror {} (looked in it and in its sub-folders {}, {}, {})",
                file.name,
                m.display(),
                set.name,
                set.name.replace('-', "_"),
                file.dir
            );
        }
        (None, None) => None,
    };
    let limit = opts.unpack_limit.min(transfer::MAX_DECOMPRESSED_BYTES);
    if let Some((p, packed)) = from {
        let mut f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        let len = f
            .metadata()
            .ok()
            .map(|m| m.len())
            .filter(|_| packed == Packed::Plain);
        let what = p.display().to_string();
        let origin = match packed {
            Packed::Plain => what.clone(),
            Packed::Bzip2 => format!("{what} (decompressed)"),
        };
        let mut reader = transfer::unpacked(&mut f, packed, limit, &what);
        transfer::install(&mut reader, len, &origin, dest, file.accept)?;
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
                let len = resp
                    .header("Content-Length")
                    .and_then(|l| l.parse().ok())
                    .filter(|_| file.packed == Packed::Plain);
                let mut body = resp.into_reader();
                let mut reader = transfer::unpacked(&mut body, file.packed, limit, url);
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
