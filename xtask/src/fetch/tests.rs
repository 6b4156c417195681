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

// dlib's face models: bzip2-compressed downloads, plain or compressed mirrors, the import step.

use super::registry::{Packed, RemoteFile};

fn faces_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/faces/models")
}

fn bzip2(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

/// The hex SHA-256 of `bytes`, leaked to fit a `'static` registry entry.
fn sha256_static(bytes: &[u8]) -> &'static str {
    use sha2::Digest;
    let h: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Box::leak(h.into_boxed_str())
}

/// A bzip2-served file `name` whose plain bytes must hash to `sha256`.
fn bz2_file(name: &'static str, sha256: &'static str) -> &'static RemoteFile {
    Box::leak(Box::new(RemoteFile {
        name,
        dir: "faces",
        urls: &["http://invalid.invalid/unused.bz2"],
        accept: Box::leak(Box::new([Checksum::Sha256(sha256)])),
        unpack_to: None,
        packed: Packed::Bzip2,
    }))
}

#[test]
fn bz2_in_mirror_is_decompressed_and_verified() -> Result<()> {
    // A small file compressed here with the same crate the fetch decompresses with.
    let plain: Vec<u8> = (0..50_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let file = bz2_file("small.dat", sha256_static(&plain));
    let mirror = tempfile::tempdir()?;
    std::fs::write(mirror.path().join("small.dat.bz2"), bzip2(&plain)?)?;
    let root = tempfile::tempdir()?;
    fetch_file(
        set("dlib-face-models")?,
        file,
        &opts(root.path(), mirror.path()),
    )?;
    assert_eq!(std::fs::read(root.path().join("faces/small.dat"))?, plain);
    assert_eq!(listing(&root.path().join("faces"))?, ["small.dat"]);

    // A real model: the detector, compressed here, gives the published decompressed digest.
    let dat = "mmod_human_face_detector.dat";
    let bytes = std::fs::read(faces_models().join(dat))?;
    std::fs::write(mirror.path().join(format!("{dat}.bz2")), bzip2(&bytes)?)?;
    let models = set("dlib-face-models")?;
    let detector = models
        .files
        .iter()
        .find(|f| f.name == dat)
        .context("detector in the registry")?;
    fetch_file(models, detector, &opts(root.path(), mirror.path()))?;
    assert_eq!(std::fs::read(root.path().join("faces").join(dat))?, bytes);
    Ok(())
}

#[test]
fn bz2_checksum_mismatch_names_the_file_and_both_digests() -> Result<()> {
    let dat = "mmod_human_face_detector.dat";
    let mut bytes = std::fs::read(faces_models().join(dat))?;
    bytes[12_345] ^= 0x01;
    let mirror = tempfile::tempdir()?;
    let packed = mirror.path().join(format!("{dat}.bz2"));
    std::fs::write(&packed, bzip2(&bytes)?)?;
    let root = tempfile::tempdir()?;
    let models = set("dlib-face-models")?;
    let detector = models
        .files
        .iter()
        .find(|f| f.name == dat)
        .context("detector in the registry")?;
    let err = fetch_file(models, detector, &opts(root.path(), mirror.path())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("checksum mismatch for {dat}")),
        "{msg}"
    );
    assert!(msg.contains(&packed.display().to_string()), "{msg}");
    assert!(
        msg.contains(
            "expected sha256 4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("got sha256 {}", sha256_static(&bytes))),
        "{msg}"
    );
    assert!(msg.contains(&format!("{} bytes", bytes.len())), "{msg}");
    assert!(listing(&root.path().join("faces"))?.is_empty());
    Ok(())
}

#[test]
fn bz2_is_bounded_and_garbage_is_an_error() -> Result<()> {
    let zeros = vec![0u8; 2_000_000];
    let file = bz2_file("zeros.dat", sha256_static(&zeros));
    let mirror = tempfile::tempdir()?;
    std::fs::write(mirror.path().join("zeros.dat.bz2"), bzip2(&zeros)?)?;
    let root = tempfile::tempdir()?;
    let mut o = opts(root.path(), mirror.path());
    o.unpack_limit = 1_000_000;
    let err = fetch_file(set("dlib-face-models")?, file, &o).unwrap_err();
    assert!(
        format!("{err:#}").contains("decompresses to more than 1000000 bytes"),
        "{err:#}"
    );
    // Exactly at the bound is fine.
    o.unpack_limit = 2_000_000;
    fetch_file(set("dlib-face-models")?, file, &o)?;
    assert_eq!(std::fs::read(root.path().join("faces/zeros.dat"))?, zeros);

    let file = bz2_file("junk.dat", sha256_static(b""));
    std::fs::write(
        mirror.path().join("junk.dat.bz2"),
        b"BZh9 this is not bzip2",
    )?;
    let err = fetch_file(set("dlib-face-models")?, file, &o).unwrap_err();
    assert!(format!("{err:#}").contains("junk.dat"), "{err:#}");
    assert_eq!(listing(&root.path().join("faces"))?, ["zeros.dat"]);
    Ok(())
}

#[test]
fn dlib_models_from_plain_mirror() -> Result<()> {
    let root = tempfile::tempdir()?;
    let o = opts(root.path(), &faces_models());
    fetch(set("dlib-face-models")?, &o)?;
    let dir = root.path().join("faces");
    assert_eq!(
        listing(&dir)?,
        [
            "dlib_face_recognition_resnet_model_v1.dat",
            "mmod_human_face_detector.dat",
            "shape_predictor_5_face_landmarks.dat"
        ]
    );
    let err = fetch(
        set("dlib-face-models")?,
        &opts(&root.path().join("other"), &root.path().join("empty")),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains(
            "dlib_face_recognition_resnet_model_v1.dat or \
             dlib_face_recognition_resnet_model_v1.dat.bz2 is not in the mirror"
        ),
        "{err:#}"
    );
    Ok(())
}

/// A stand-in for `siamese`: `inspect FILE` succeeds when FILE says `imported`; anything else
/// appends its arguments to `log` and writes `imported` to the file after `--out`, or fails
/// when `fail` exists.
#[cfg(unix)]
fn fake_siamese(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exe = dir.join("siamese");
    let script = format!(
        "#!/bin/sh\n\
         if [ \"$1\" = inspect ]; then grep -q imported \"$2\"; exit $?; fi\n\
         echo \"$@\" >> '{log}'\n\
         if [ -e '{fail}' ]; then echo 'no detector in file' >&2; exit 1; fi\n\
         while [ $# -gt 0 ]; do if [ \"$1\" = --out ]; then echo imported > \"$2\"; fi; shift; done\n\
         echo 'faces model written'\n",
        log = dir.join("log").display(),
        fail = dir.join("fail").display()
    );
    std::fs::write(&exe, script)?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
    Ok(exe)
}

#[cfg(unix)]
#[test]
fn import_runs_the_binary_once_and_again_when_a_model_changes() -> Result<()> {
    let bin = tempfile::tempdir()?;
    let exe = fake_siamese(bin.path())?;
    let root = tempfile::tempdir()?;
    let o = opts(root.path(), &faces_models());
    let out = fetch_and_import("dlib-face-models", &o, &exe)?.context("an output")?;
    assert_eq!(out, root.path().join("faces/faces.safetensors"));
    assert_eq!(std::fs::read_to_string(&out)?, "imported\n");
    let log = std::fs::read_to_string(bin.path().join("log"))?;
    let faces = root.path().join("faces");
    let expected = format!(
        "import dlib --encoder {e} --landmarks {l} --detector {d} --out ",
        e = faces
            .join("dlib_face_recognition_resnet_model_v1.dat")
            .display(),
        l = faces.join("shape_predictor_5_face_landmarks.dat").display(),
        d = faces.join("mmod_human_face_detector.dat").display(),
    );
    assert!(log.starts_with(&expected), "{log}");
    assert_eq!(log.lines().count(), 1);
    // Up to date: not run again; nothing temporary left.
    fetch_and_import("dlib-face-models", &o, &exe)?;
    assert_eq!(
        std::fs::read_to_string(bin.path().join("log"))?
            .lines()
            .count(),
        1
    );
    assert!(!listing(&faces)?.iter().any(|n| n.starts_with('.')));
    // An output this binary cannot read is imported again.
    std::fs::write(&out, "garbage\n")?;
    fetch_and_import("dlib-face-models", &o, &exe)?;
    assert_eq!(std::fs::read_to_string(&out)?, "imported\n");
    let runs = || -> Result<usize> {
        Ok(std::fs::read_to_string(bin.path().join("log"))?
            .lines()
            .count())
    };
    assert_eq!(runs()?, 2);
    // A model fetched again (it was damaged) is newer than the import: imported again.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(faces.join("mmod_human_face_detector.dat"), b"damaged")?;
    fetch_and_import("dlib-face-models", &o, &exe)?;
    assert_eq!(runs()?, 3);
    // A failing import is an error with the binary's message, and keeps the old output.
    std::fs::write(bin.path().join("fail"), b"")?;
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(faces.join("mmod_human_face_detector.dat"), b"damaged")?;
    let err = fetch_and_import("dlib-face-models", &o, &exe).unwrap_err();
    assert!(
        format!("{err:#}").contains("no detector in file"),
        "{err:#}"
    );
    assert_eq!(std::fs::read_to_string(&out)?, "imported\n");
    assert!(!listing(&faces)?.iter().any(|n| n.starts_with('.')));
    Ok(())
}
