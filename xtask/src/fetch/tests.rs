//! Tests of `fetch` against the mirror in `../shared/data` and of the safe unpacker against
//! crafted archives.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::registry::{Checksum, DATASETS};
use super::*;

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

fn opts(root: &Path, mirror: &Path) -> Options {
    Options {
        data_root: root.to_path_buf(),
        mirror: Some(mirror.to_path_buf()),
        unpack_limit: unpack::MAX_UNPACKED_BYTES,
        verbose: false,
    }
}

fn set(name: &str) -> Result<&'static DataSet> {
    DATASETS
        .iter()
        .find(|d| d.name == name)
        .context("no such data set")
}

/// Names in a folder, sorted, for checking that no temporary file is left behind.
fn listing(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    v.sort();
    Ok(v)
}

#[test]
fn omniglot_small_from_mirror_is_verified_and_not_refetched() -> Result<()> {
    let root = tempfile::tempdir()?;
    let o = opts(root.path(), &shared());
    fetch(set("omniglot-small")?, &o)?;
    let dir = root.path().join("omniglot");
    assert_eq!(
        listing(&dir)?,
        [
            "images_background_small1.zip",
            "images_background_small2.zip"
        ]
    );
    let d = transfer::digest_file(&dir.join("images_background_small1.zip"))?;
    assert_eq!(
        d.sha256,
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"
    );
    // A second fetch leaves the verified files alone, even with the mirror gone.
    let before = std::fs::metadata(dir.join("images_background_small2.zip"))?.modified()?;
    fetch(
        set("omniglot-small")?,
        &opts(root.path(), &root.path().join("no-mirror")),
    )?;
    let after = std::fs::metadata(dir.join("images_background_small2.zip"))?.modified()?;
    assert_eq!(before, after);
    Ok(())
}

#[test]
fn att_faces_layout_in_mirror_is_copied() -> Result<()> {
    let root = tempfile::tempdir()?;
    let o = opts(root.path(), &shared());
    fetch(set("att-faces")?, &o)?;
    let dest = root.path().join("att_faces");
    let subjects = listing(&dest)?
        .into_iter()
        .filter(|n| n.starts_with('s'))
        .count();
    assert_eq!(subjects, 30);
    assert_eq!(
        std::fs::read(dest.join("s7/3.pgm"))?,
        std::fs::read(shared().join("att_faces/s7/3.pgm"))?
    );
    assert!(!listing(root.path())?.iter().any(|n| n.starts_with('.')));
    // Present now: a second fetch is a no-op.
    fetch(set("att-faces")?, &o)?;
    Ok(())
}

#[test]
fn corrupted_mirror_file_fails_with_both_hashes_and_leaves_nothing() -> Result<()> {
    let mirror = tempfile::tempdir()?;
    let mdir = mirror.path().join("omniglot");
    std::fs::create_dir_all(&mdir)?;
    let mut bytes = std::fs::read(shared().join("omniglot/images_background_small1.zip"))?;
    bytes[1000] ^= 0xff;
    std::fs::write(mdir.join("images_background_small1.zip"), &bytes)?;
    let root = tempfile::tempdir()?;
    let err = fetch(set("omniglot-small")?, &opts(root.path(), mirror.path())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert!(
        msg.contains(
            "expected sha256 f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"
        ),
        "{msg}"
    );
    let got = transfer::digest_file(&mdir.join("images_background_small1.zip"))?;
    assert!(msg.contains(&format!("got sha256 {}", got.sha256)), "{msg}");
    assert!(msg.contains(&format!("{} bytes", bytes.len())), "{msg}");
    assert!(listing(&root.path().join("omniglot"))?.is_empty());
    Ok(())
}

#[test]
fn wrong_local_file_is_replaced_and_missing_mirror_file_is_an_error() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("omniglot");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("images_background_small1.zip"), b"stale")?;
    fetch(set("omniglot-small")?, &opts(root.path(), &shared()))?;
    let d = transfer::digest_file(&dir.join("images_background_small1.zip"))?;
    assert!(d.matches(&[Checksum::Sha256(
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"
    )]));
    let err = fetch(set("omniglot-runs")?, &opts(root.path(), &shared())).unwrap_err();
    assert!(
        format!("{err:#}").contains("all_runs.zip is not in the mirror"),
        "{err:#}"
    );
    Ok(())
}

#[test]
fn command_line() {
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(run(&args(&["--list"])).is_ok());
    for bad in [&["nope"][..], &[], &["--bogus"], &["omniglot", "--mirror"]] {
        let e = run(&args(bad)).unwrap_err();
        assert!(e.downcast_ref::<UsageError>().is_some(), "{bad:?}: {e}");
    }
}

#[test]
fn member_paths() {
    for ok in ["a", "a/b.png", "./a/b", "a/./b/"] {
        assert!(unpack::safe_relative(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "/etc/passwd",
        "../evil",
        "a/../../evil",
        "a/..",
        "C:\\x",
        "\\x",
        ".",
    ] {
        assert!(unpack::safe_relative(bad).is_err(), "{bad}");
    }
}

fn zip_with(
    entries: &[(&str, &[u8])],
    symlink: Option<(&str, &str)>,
) -> Result<tempfile::NamedTempFile> {
    let f = tempfile::Builder::new().suffix(".zip").tempfile()?;
    let mut z = zip::ZipWriter::new(f.reopen()?);
    let o = zip::write::SimpleFileOptions::default();
    for (name, data) in entries {
        z.start_file(*name, o)?;
        z.write_all(data)?;
    }
    if let Some((name, target)) = symlink {
        z.add_symlink(name, target, o)?;
    }
    z.finish()?;
    Ok(f)
}

fn tgz_with(entries: &[(&[u8], tar::EntryType, &[u8])]) -> Result<tempfile::NamedTempFile> {
    let f = tempfile::Builder::new().suffix(".tgz").tempfile()?;
    let gz = flate2::write::GzEncoder::new(f.reopen()?, flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        // Raw name bytes: the builder's path setters refuse `..`, which is what we test.
        let gnu = h.as_gnu_mut().context("gnu header")?;
        gnu.name[..name.len()].copy_from_slice(name);
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_link_name("/etc/passwd")?;
        }
        h.set_cksum();
        b.append(&h, *data)?;
    }
    b.into_inner()?.finish()?;
    Ok(f)
}

fn check_refused(archive: &Path, limit: u64, why: &str) -> Result<()> {
    let out = tempfile::tempdir()?;
    let dest = out.path().join("dest");
    let err = unpack::unpack(archive, &dest, limit).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(why), "expected `{why}` in: {msg}");
    assert!(!dest.exists());
    assert!(
        listing(out.path())?.is_empty(),
        "temporary folder left behind"
    );
    assert!(
        !out.path().join("evil").exists()
            && !out.path().parent().context("p")?.join("evil").exists()
    );
    Ok(())
}

#[test]
fn unpacker_refuses_traversal_absolute_paths_and_links() -> Result<()> {
    let good: &[(&str, &[u8])] = &[("top/a.txt", b"a")];
    let z = zip_with(&[good[0], ("../evil", b"x")], None)?;
    check_refused(z.path(), 1 << 20, "contains `..`")?;
    let z = zip_with(&[good[0], ("/tmp/evil", b"x")], None)?;
    check_refused(z.path(), 1 << 20, "absolute member path")?;
    let z = zip_with(good, Some(("top/link", "/etc/passwd")))?;
    check_refused(z.path(), 1 << 20, "links are refused")?;

    use tar::EntryType as T;
    let t = tgz_with(&[
        (b"top/a.txt", T::Regular, b"a"),
        (b"../evil", T::Regular, b"x"),
    ])?;
    check_refused(t.path(), 1 << 20, "contains `..`")?;
    let t = tgz_with(&[(b"/tmp/evil", T::Regular, b"x")])?;
    check_refused(t.path(), 1 << 20, "absolute member path")?;
    let t = tgz_with(&[(b"top/link", T::Symlink, b"")])?;
    check_refused(t.path(), 1 << 20, "links are refused")?;
    let t = tgz_with(&[(b"top/hard", T::Link, b"")])?;
    check_refused(t.path(), 1 << 20, "links are refused")?;
    Ok(())
}

#[test]
fn unpacker_bounds_size_and_strips_single_top_folder() -> Result<()> {
    let zeros = vec![0u8; 100_000];
    let z = zip_with(&[("top/big.bin", &zeros)], None)?;
    check_refused(z.path(), 10_000, "declares 100000 unpacked bytes")?;
    use tar::EntryType as T;
    let t = tgz_with(&[(b"top/big.bin", T::Regular, &zeros)])?;
    check_refused(t.path(), 10_000, "more than 10000 bytes")?;

    let out = tempfile::tempdir()?;
    let z = zip_with(&[("top/a/b.txt", b"hello"), ("top/c.txt", b"c")], None)?;
    unpack::unpack(z.path(), &out.path().join("z"), 1 << 20)?;
    assert_eq!(std::fs::read(out.path().join("z/a/b.txt"))?, b"hello");
    let t = tgz_with(&[(b"x.txt", T::Regular, b"x"), (b"d/y.txt", T::Regular, b"y")])?;
    unpack::unpack(t.path(), &out.path().join("t"), 1 << 20)?;
    assert_eq!(std::fs::read(out.path().join("t/d/y.txt"))?, b"y");
    assert_eq!(listing(out.path())?, ["t", "z"]);
    Ok(())
}

#[test]
fn registry_is_consistent() {
    for d in DATASETS {
        assert!(!d.files.is_empty(), "{}", d.name);
        for f in d.files {
            assert!(!f.accept.is_empty() && !f.urls.is_empty(), "{}", f.name);
            for c in f.accept {
                let (h, n) = match c {
                    Checksum::Sha256(h) => (h, 64),
                    Checksum::Md5(h) => (h, 32),
                };
                assert!(
                    h.len() == n && h.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{}",
                    f.name
                );
            }
        }
    }
}
