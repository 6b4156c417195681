//! A corpus of hostile inputs, run through the real `siamese` binary under a 2 GiB address
//! space limit: every case has its expected exit status (0 success, 1 failure, 2 usage; never
//! a panic's 101, an abort's 134 or a kill), the file or flag its message must name, and the
//! files that must come out byte for byte unchanged. Everything is built here, small: a
//! 2-step model on AT&T subjects, its gallery and checkpoint, then broken copies of them.
//!
//! `SIAMESE_BIN=path` runs the corpus against another binary; with `HOSTILE_SURVEY=1` it only
//! prints each case's outcome and the number of crashes (how the corpus was first run
//! against the binary of the commit before this hardening).

use anyhow::{Context, Result};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The address-space limit every run gets (`ulimit -v`, KiB): 2 GiB.
const MEMORY_KIB: u64 = 2 << 20;

fn bin() -> PathBuf {
    std::env::var_os("SIAMESE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_siamese")))
}

fn att() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/att_faces")
}

fn jpeg_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tests/fixtures/jpeg/pattern-420.jpg")
}

/// What one run gave.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// A panic (101), an abort (134), a kill (137) or any other signal.
    fn crashed(&self) -> bool {
        matches!(self.code, None | Some(101) | Some(134) | Some(137))
    }
}

/// Runs the binary with `args` under the memory limit.
fn run<S: AsRef<OsStr>>(args: &[S]) -> Result<Outcome> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {MEMORY_KIB} && exec \"$0\" \"$@\""))
        .arg(bin())
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env("RUST_BACKTRACE", "0")
        .output()
        .context("cannot run siamese")?;
    Ok(Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn ok<S: AsRef<OsStr>>(args: &[S]) -> Result<Outcome> {
    let o = run(args)?;
    anyhow::ensure!(o.code == Some(0), "setup run failed: {}", o.stderr);
    Ok(o)
}

fn os(p: &Path) -> OsString {
    p.as_os_str().to_os_string()
}

/// A path whose last component is `name` followed by the byte 0xff (not UTF-8).
#[cfg(unix)]
fn non_utf8(dir: &Path, name: &str, ext: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(ext.as_bytes());
    dir.join(OsString::from_vec(bytes))
}

fn copy_subjects(dst: &Path, lo: usize, hi: usize) -> Result<()> {
    for i in lo..=hi {
        let to = dst.join(format!("s{i}"));
        std::fs::create_dir_all(&to)?;
        for e in std::fs::read_dir(att().join(format!("s{i}")))? {
            let e = e?;
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// The safetensors header of `path` as JSON, and the bytes after it.
fn split_safetensors(path: &Path) -> Result<(serde_json::Value, Vec<u8>)> {
    let bytes = std::fs::read(path)?;
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    Ok((
        serde_json::from_slice(&bytes[8..8 + n])?,
        bytes[8 + n..].to_vec(),
    ))
}

fn join_safetensors(path: &Path, header: &serde_json::Value, data: &[u8]) -> Result<()> {
    let h = serde_json::to_vec(header)?;
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    std::fs::write(path, out)?;
    Ok(())
}

/// A copy of the safetensors file `from` at `to` whose JSON metadata value under `key` is
/// changed by `f`.
fn with_metadata(
    from: &Path,
    to: &Path,
    key: &str,
    f: impl FnOnce(&mut serde_json::Value),
) -> Result<()> {
    let (mut header, data) = split_safetensors(from)?;
    let meta = header["__metadata__"][key]
        .as_str()
        .context("no such metadata")?;
    let mut v: serde_json::Value = serde_json::from_str(meta)?;
    f(&mut v);
    header["__metadata__"][key] = serde_json::Value::String(v.to_string());
    join_safetensors(to, &header, &data)
}

/// A copy of `from` at `to` with one byte of its tensor data flipped.
fn with_flipped_tensor_byte(from: &Path, to: &Path) -> Result<()> {
    let (header, mut data) = split_safetensors(from)?;
    let i = data.len() / 2;
    data[i] ^= 0x40;
    join_safetensors(to, &header, &data)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose header claims `w` x `h` grey pixels, with a tiny (wrong) image stream.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A zip archive with `members` (name, bytes), deflated.
fn zip(path: &Path, members: &[(&str, &[u8])]) -> Result<()> {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path)?);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(true);
    for (name, bytes) in members {
        z.start_file(*name, opts)?;
        z.write_all(bytes)?;
    }
    z.finish()?;
    Ok(())
}

/// An IDX file of unsigned bytes with `dims` and `data`.
fn idx(path: &Path, dims: &[u32], data: &[u8]) -> Result<()> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    std::fs::write(path, out)?;
    Ok(())
}

/// Everything the cases share, built once: a folder of copies and broken files, a 2-step model
/// with its checkpoint, and a gallery.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn build() -> Result<Fixture> {
        let f = Fixture {
            dir: tempfile::tempdir()?,
        };
        copy_subjects(&f.p("data"), 1, 4)?;
        copy_subjects(&f.p("known"), 1, 3)?;
        let model = f.p("m.safetensors");
        ok(&[
            os(Path::new("train")),
            "--data".into(),
            os(&f.p("data")),
            "--recipe".into(),
            "demo".into(),
            "--steps".into(),
            "2".into(),
            "--checkpoint-every".into(),
            "1".into(),
            "--val-fraction".into(),
            "0".into(),
            "--quiet".into(),
            "--out".into(),
            os(&model),
        ])?;
        ok(&[
            os(Path::new("enroll")),
            "--model".into(),
            os(&model),
            "--gallery".into(),
            os(&f.p("known")),
            "--out".into(),
            os(&f.p("g.safetensors")),
        ])?;
        Ok(f)
    }
}

fn fixture() -> Result<&'static Fixture> {
    static F: OnceLock<std::result::Result<Fixture, String>> = OnceLock::new();
    F.get_or_init(|| Fixture::build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("fixture: {e}"))
}

/// One hostile input and what must come of it.
struct Case {
    name: &'static str,
    args: Vec<OsString>,
    /// The exit status expected.
    code: i32,
    /// Text that stderr (or, for successes, stdout and stderr) must contain: the file or the
    /// flag concerned.
    named: String,
    /// Files that must be byte for byte the same afterwards.
    unchanged: Vec<PathBuf>,
    /// Paths that must not exist afterwards.
    absent: Vec<PathBuf>,
}

fn case(name: &'static str, code: i32, named: &str, args: Vec<OsString>) -> Case {
    Case {
        name,
        args,
        code,
        named: named.to_string(),
        unchanged: Vec::new(),
        absent: Vec::new(),
    }
}

impl Case {
    fn keeps(mut self, files: &[PathBuf]) -> Self {
        self.unchanged.extend_from_slice(files);
        self
    }

    fn creates_nothing(mut self, paths: &[PathBuf]) -> Self {
        self.absent.extend_from_slice(paths);
        self
    }
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$(OsString::from($a)),*] };
}

/// The corpus. Files are created as the cases are listed, in the fixture's folder.
fn corpus(f: &Fixture) -> Result<Vec<Case>> {
    let model = f.p("m.safetensors");
    let gallery = f.p("g.safetensors");
    let ckpt = f.p("m.ckpt");
    let img = f.p("data/s1/1.pgm");
    let img2 = f.p("data/s2/1.pgm");
    let data = f.p("data");
    let mut cases = Vec::new();
    let w = |rel: &str, bytes: &[u8]| -> Result<PathBuf> {
        let p = f.p(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&p, bytes)?;
        Ok(p)
    };
    let pgm = std::fs::read(&img)?;
    let train = |data: &Path, out: &Path, extra: &[&str]| -> Vec<OsString> {
        let mut a = args![
            "train",
            data,
            "--recipe",
            "demo",
            "--steps",
            "1",
            "--val-fraction",
            "0",
            "--quiet",
            "--out",
            out
        ];
        a.insert(1, "--data".into());
        a.extend(extra.iter().map(OsString::from));
        a
    };
    let out = f.p("out/x.safetensors");
    std::fs::create_dir_all(f.p("out"))?;

    // ---- crashes reported by the issue
    #[cfg(unix)]
    {
        let odd = non_utf8(f.dir.path(), "probe", ".pgm");
        std::fs::write(&odd, &pgm)?;
        cases.push(case(
            "verify --json on a file name that is not UTF-8",
            0,
            "\"distance\"",
            args!["verify", "--json", "--model", &model, &odd, &img],
        ));
        cases.push(case(
            "identify --json on a file name that is not UTF-8",
            0,
            "\"candidates\"",
            args![
                "identify",
                "--json",
                "--model",
                &model,
                "--gallery",
                &gallery,
                &odd
            ],
        ));
    }
    let pairs = w("pairs-folds.txt", b"1000000000000 300\n")?;
    cases.push(case(
        "LFW pairs header claiming 10^12 folds",
        1,
        "pairs-folds.txt",
        args![
            "eval",
            "--model",
            &model,
            "--protocol",
            "pairs",
            "--pairs",
            &pairs,
            "--images",
            &data
        ],
    ));
    let pairs = w("pairs-n.txt", b"10 1000000000000\n")?;
    cases.push(case(
        "LFW pairs header claiming 10^12 pairs per fold",
        1,
        "pairs-n.txt",
        args![
            "eval",
            "--model",
            &model,
            "--protocol",
            "pairs",
            "--pairs",
            &pairs,
            "--images",
            &data
        ],
    ));
    for (flag, value) in [
        ("--widths", "1000000"),
        ("--embedding-dim", "1000000000000"),
        ("--input-size", "100000x100000"),
        ("--member-sizes", "100000x100000"),
        ("--members", "100000"),
        ("--batch-classes", "1000000000000"),
        ("--batch-images", "1000000000"),
    ] {
        cases.push(case(
            "a size flag without bound",
            2,
            flag,
            train(&data, &out, &[flag, value]),
        ));
    }
    cases.push(case(
        "--threads 100000",
        2,
        "--threads",
        args!["--threads", "100000", "inspect", &model],
    ));
    cases.push(case(
        "--threads 0",
        2,
        "--threads",
        args!["--threads", "0", "inspect", &model],
    ));
    let zeros = vec![0u8; (256 << 20) + 4096];
    let bomb = f.p("bomb.zip");
    zip(
        &bomb,
        &[
            ("a/1.pgm", &pgm),
            ("a/2.pgm", &zeros),
            ("b/1.pgm", &pgm),
            ("b/2.pgm", &pgm),
        ],
    )?;
    drop(zeros);
    cases.push(case(
        "zip bomb (a member inflating past 256 MiB)",
        1,
        "a/2.pgm",
        train(&bomb, &out, &[]),
    ));
    let big = w("big.png", &png_claiming(20000, 20000))?;
    cases.push(case(
        "a 20000x20000 PNG",
        1,
        "big.png",
        args!["verify", "--model", &model, &big, &img],
    ));
    let wide = w("wide.png", &png_claiming(100_000, 1))?;
    cases.push(case(
        "a PNG 100000 pixels wide",
        1,
        "wide.png",
        args!["verify", "--model", &model, &wide, &img],
    ));

    // ---- data lost
    let victim = f.p("victim");
    copy_subjects(&victim, 1, 3)?;
    let victim_img = victim.join("s1/1.pgm");
    let x = w("x/same.safetensors", b"the user's file")?;
    cases.push(
        case(
            "train --out X --checkpoint X",
            2,
            "--checkpoint",
            train(&data, &x, &["--checkpoint", x.to_str().unwrap_or_default()]),
        )
        .keeps(std::slice::from_ref(&x)),
    );
    cases.push(
        case(
            "embed --out MODEL",
            2,
            "--out",
            args!["embed", "--model", &model, &img, "--out", &model],
        )
        .keeps(std::slice::from_ref(&model)),
    );
    cases.push(
        case(
            "enroll --out MODEL",
            2,
            "--out",
            args![
                "enroll",
                "--model",
                &model,
                "--gallery",
                f.p("known"),
                "--out",
                &model
            ],
        )
        .keeps(std::slice::from_ref(&model)),
    );
    cases.push(
        case(
            "enroll --out GALLERY-FOLDER/file",
            2,
            "--gallery",
            args![
                "enroll",
                "--model",
                &model,
                "--gallery",
                f.p("known"),
                "--out",
                f.p("known/s1/g.safetensors")
            ],
        )
        .creates_nothing(&[f.p("known/s1/g.safetensors")]),
    );
    cases.push(
        case(
            "train --out a training image",
            2,
            "--data",
            train(&victim, &victim_img, &[]),
        )
        .keeps(std::slice::from_ref(&victim_img))
        .creates_nothing(&[victim.join("s1/1-report"), victim.join("s1/1.ckpt")]),
    );
    cases.push(
        case(
            "train --out inside the training folder",
            2,
            "--data",
            train(&victim, &victim.join("model.safetensors"), &[]),
        )
        .creates_nothing(&[
            victim.join("model.safetensors"),
            victim.join("model-report"),
        ]),
    );
    cases.push(
        case(
            "the same train again without --resume",
            2,
            "--resume",
            train(&data, &model, &["--checkpoint-every", "1"]),
        )
        .keeps(&[ckpt.clone(), model.clone()]),
    );
    cases.push(
        case(
            "eval --report is the model",
            2,
            "--report",
            args![
                "eval",
                "--model",
                &model,
                "--protocol",
                "unseen",
                "--data",
                &data,
                "--report",
                &model
            ],
        )
        .keeps(std::slice::from_ref(&model)),
    );
    cases.push(
        case(
            "embed --out inside a folder of the images",
            2,
            "IMAGES",
            args![
                "embed",
                "--model",
                &model,
                f.p("data/s1"),
                "--out",
                f.p("data/s1/e.npy")
            ],
        )
        .creates_nothing(&[f.p("data/s1/e.npy")]),
    );

    // ---- checked late
    cases.push(case(
        "--out in a missing folder",
        2,
        "--out",
        train(&data, &f.p("missing/m.safetensors"), &[]),
    ));
    cases.push(case(
        "--out in a folder nobody may write (/proc)",
        2,
        "--out",
        train(&data, Path::new("/proc/m.safetensors"), &[]),
    ));
    cases.push(case(
        "embed --out in a missing folder",
        2,
        "--out",
        args![
            "embed",
            "--model",
            &model,
            &img,
            "--out",
            f.p("missing/e.npy")
        ],
    ));
    let ck_step = f.p("step.ckpt");
    with_metadata(&ckpt, &ck_step, "siamese.checkpoint", |v| {
        v["step"] = serde_json::json!(1_000_000_000_000_000u64)
    })?;
    cases.push(case(
        "a checkpoint claiming step 10^15",
        1,
        "step.ckpt",
        train(
            &data,
            &f.p("out/r1.safetensors"),
            &[
                "--checkpoint-every",
                "1",
                "--resume",
                ck_step.to_str().unwrap_or_default(),
            ],
        ),
    ));
    let ck_flip = f.p("flip.ckpt");
    with_flipped_tensor_byte(&ckpt, &ck_flip)?;
    cases.push(case(
        "a checkpoint with altered tensor bytes",
        1,
        "flip.ckpt",
        train(
            &data,
            &f.p("out/r2.safetensors"),
            &[
                "--checkpoint-every",
                "1",
                "--resume",
                ck_flip.to_str().unwrap_or_default(),
            ],
        ),
    ));
    let g_flip = f.p("flip-g.safetensors");
    with_flipped_tensor_byte(&gallery, &g_flip)?;
    cases.push(case(
        "a gallery with altered embeddings",
        1,
        "flip-g.safetensors",
        args!["identify", "--model", &model, "--gallery", &g_flip, &img],
    ));

    // ---- exit codes
    for t in ["nan", "inf", "-1"] {
        cases.push(case(
            "verify --threshold out of range",
            2,
            "--threshold",
            args!["verify", "--model", &model, &img, &img2, "--threshold", t],
        ));
    }
    cases.push(case(
        "identify --threshold nan",
        2,
        "--threshold",
        args![
            "identify",
            "--model",
            &model,
            "--gallery",
            &gallery,
            &img,
            "--threshold",
            "nan"
        ],
    ));
    cases.push(case(
        "train --margin nan",
        2,
        "--margin",
        train(&data, &out, &["--loss", "triplet", "--margin", "nan"]),
    ));
    cases.push(case(
        "train --time-budget nan",
        2,
        "--time-budget",
        train(&data, &out, &["--time-budget", "nan"]),
    ));
    cases.push(case(
        "train --lr inf",
        2,
        "--lr",
        train(&data, &out, &["--lr", "inf"]),
    ));
    for (flag, v) in [
        ("--ways", "0"),
        ("--ways", "1"),
        ("--episodes", "0"),
        ("--shots", "0"),
    ] {
        cases.push(case(
            "eval count out of range",
            2,
            flag,
            args![
                "eval",
                "--model",
                &model,
                "--protocol",
                "unseen",
                "--data",
                &data,
                flag,
                v
            ],
        ));
    }
    cases.push(case(
        "identify --top 0",
        2,
        "--top",
        args![
            "identify",
            "--model",
            &model,
            "--gallery",
            &gallery,
            &img,
            "--top",
            "0"
        ],
    ));

    // ---- silent skips
    #[cfg(unix)]
    {
        let d = f.p("skips");
        copy_subjects(&d, 1, 3)?;
        std::fs::write(non_utf8(&d.join("s1"), "odd", ".pgm"), &pgm)?;
        std::fs::create_dir_all(non_utf8(&d, "s", ""))?;
        std::fs::write(non_utf8(&d, "s", "").join("1.pgm"), &pgm)?;
        std::fs::create_dir_all(d.join("empty"))?;
        cases.push(case(
            "non-UTF-8 names and an empty class folder are said",
            0,
            "not valid UTF-8",
            train(&d, &f.p("out/skips.safetensors"), &[]),
        ));
        cases.push(case(
            "an empty class folder is said",
            0,
            "empty (a class folder without images)",
            train(&d, &f.p("out/skips2.safetensors"), &[]),
        ));
        let e = f.p("enrol-skips");
        copy_subjects(&e, 1, 2)?;
        std::fs::create_dir_all(e.join("nobody"))?;
        std::fs::write(non_utf8(&e.join("s1"), "odd", ".pgm"), &pgm)?;
        cases.push(case(
            "enrolment says an empty identity folder",
            0,
            "nobody",
            args![
                "enroll",
                "--model",
                &model,
                "--gallery",
                &e,
                "--out",
                f.p("out/e.safetensors")
            ],
        ));
        let l = f.p("links");
        copy_subjects(&l, 1, 3)?;
        std::os::unix::fs::symlink(f.p("nowhere.pgm"), l.join("s1/dangling.pgm"))?;
        cases.push(case(
            "a dangling link without --skip-bad",
            1,
            "dangling.pgm",
            train(&l, &f.p("out/l1.safetensors"), &[]),
        ));
        cases.push(case(
            "a dangling link with --skip-bad",
            0,
            "dangling.pgm",
            train(&l, &f.p("out/l2.safetensors"), &["--skip-bad"]),
        ));
    }
    let z = f.p("zero");
    copy_subjects(&z, 1, 3)?;
    std::fs::write(z.join("s1/zero.pgm"), b"P5\n0 0\n255\n")?;
    cases.push(case(
        "a 0x0 PGM in the data",
        1,
        "zero.pgm",
        train(&z, &f.p("out/z1.safetensors"), &[]),
    ));
    cases.push(case(
        "a 0x0 PGM with --skip-bad",
        0,
        "zero.pgm",
        train(&z, &f.p("out/z2.safetensors"), &["--skip-bad"]),
    ));
    let zero_png = w("zero.png", &png_claiming(0, 0))?;
    cases.push(case(
        "a 0x0 PNG",
        1,
        "zero.png",
        args!["verify", "--model", &model, &zero_png, &img],
    ));

    // ---- corrupt inputs, one or more per reader
    let p = w("trunc.pgm", &pgm[..pgm.len() / 3])?;
    cases.push(case(
        "truncated PGM",
        1,
        "trunc.pgm",
        args!["verify", "--model", &model, &p, &img],
    ));
    let p = w("header.pgm", b"P5\n999999999 999999999\n255\n")?;
    cases.push(case(
        "PGM claiming 10^18 pixels",
        1,
        "header.pgm",
        args!["verify", "--model", &model, &p, &img],
    ));
    let p = w("maxval.pgm", b"P5\n2 2\n0\n\x00\x00\x00\x00")?;
    cases.push(case(
        "PGM with maxval 0",
        1,
        "maxval.pgm",
        args!["verify", "--model", &model, &p, &img],
    ));
    let mut junk = b"\x89PNG\r\n\x1a\n".to_vec();
    junk.extend(std::iter::repeat_n(0xa5u8, 200));
    let p = w("junk.png", &junk)?;
    cases.push(case(
        "PNG with a garbage body",
        1,
        "junk.png",
        args!["verify", "--model", &model, &p, &img],
    ));
    let jpeg = std::fs::read(jpeg_fixture())?;
    let p = w("trunc.jpg", &jpeg[..jpeg.len() / 2])?;
    cases.push(case(
        "truncated JPEG",
        1,
        "trunc.jpg",
        args!["verify", "--model", &model, &p, &img],
    ));
    let mut bad = jpeg.clone();
    for b in bad.iter_mut().skip(20).step_by(7) {
        *b = 0xff;
    }
    let p = w("mangled.jpg", &bad)?;
    cases.push(case(
        "mangled JPEG",
        1,
        "mangled.jpg",
        args!["verify", "--model", &model, &p, &img],
    ));
    let p = w("soi.jpg", b"\xff\xd8\xff\xe0junk")?;
    cases.push(case(
        "JPEG of a few bytes",
        1,
        "soi.jpg",
        args!["verify", "--model", &model, &p, &img],
    ));
    let p = w("empty.pgm", b"")?;
    cases.push(case(
        "an empty image file",
        1,
        "empty.pgm",
        args!["verify", "--model", &model, &p, &img],
    ));
    cases.push(case(
        "a missing image",
        1,
        "nope.pgm",
        args!["verify", "--model", &model, f.p("nope.pgm"), &img],
    ));

    std::fs::create_dir_all(f.p("idx1"))?;
    idx(&f.p("idx1/x-images-idx3-ubyte"), &[4, 28, 28], &[0; 100])?;
    idx(&f.p("idx1/x-labels-idx1-ubyte"), &[4], &[0, 1, 0, 1])?;
    cases.push(case(
        "truncated IDX images",
        1,
        "x-images-idx3-ubyte",
        train(&f.p("idx1/x-images-idx3-ubyte"), &out, &[]),
    ));
    std::fs::create_dir_all(f.p("idx2"))?;
    idx(&f.p("idx2/x-images-idx3-ubyte"), &[4, 0, 0], &[])?;
    idx(&f.p("idx2/x-labels-idx1-ubyte"), &[4], &[0, 1, 0, 1])?;
    cases.push(case(
        "IDX of 0x0 images",
        1,
        "x-images-idx3-ubyte",
        train(&f.p("idx2/x-images-idx3-ubyte"), &out, &[]),
    ));
    std::fs::create_dir_all(f.p("idx3"))?;
    idx(
        &f.p("idx3/x-images-idx3-ubyte"),
        &[0xffff_ffff, 0xffff_ffff, 0xffff_ffff],
        &[],
    )?;
    idx(&f.p("idx3/x-labels-idx1-ubyte"), &[4], &[0, 1, 0, 1])?;
    cases.push(case(
        "IDX claiming 2^96 bytes",
        1,
        "x-images-idx3-ubyte",
        train(&f.p("idx3/x-images-idx3-ubyte"), &out, &[]),
    ));
    std::fs::create_dir_all(f.p("idx4"))?;
    std::fs::write(f.p("idx4/x-images-idx3-ubyte"), b"\x01\x02\x03\x04garbage")?;
    idx(&f.p("idx4/x-labels-idx1-ubyte"), &[4], &[0, 1, 0, 1])?;
    cases.push(case(
        "IDX with a bad magic number",
        1,
        "x-images-idx3-ubyte",
        train(&f.p("idx4/x-images-idx3-ubyte"), &out, &[]),
    ));

    let p = w(
        "garbage.zip",
        b"PK\x03\x04 this is not a zip archive at all",
    )?;
    cases.push(case(
        "a zip that is not one",
        1,
        "garbage.zip",
        train(&p, &out, &[]),
    ));
    let good_zip = f.p("good.zip");
    zip(
        &good_zip,
        &[
            ("a/1.pgm", &pgm),
            ("a/2.pgm", &pgm),
            ("b/1.pgm", &pgm),
            ("b/2.pgm", &pgm),
        ],
    )?;
    let zbytes = std::fs::read(&good_zip)?;
    let p = w("cut.zip", &zbytes[..zbytes.len() - 30])?;
    cases.push(case("a truncated zip", 1, "cut.zip", train(&p, &out, &[])));
    let corrupt_member = f.p("member.zip");
    zip(
        &corrupt_member,
        &[
            ("a/1.pgm", &pgm),
            ("a/2.pgm", &pgm[..40]),
            ("b/1.pgm", &pgm),
            ("b/2.pgm", &pgm),
        ],
    )?;
    cases.push(case(
        "a zip with a truncated image",
        1,
        "a/2.pgm",
        train(&corrupt_member, &out, &[]),
    ));

    let p = w("pairs-garbage.txt", b"\xff\xfe garbage\n")?;
    cases.push(case(
        "LFW pairs that are not text",
        1,
        "pairs-garbage.txt",
        args![
            "eval",
            "--model",
            &model,
            "--protocol",
            "pairs",
            "--pairs",
            &p,
            "--images",
            &data
        ],
    ));
    let p = w("pairs-short.txt", b"1 2\ns1 1 2\n")?;
    cases.push(case(
        "LFW pairs with lines missing",
        1,
        "pairs-short.txt",
        args![
            "eval",
            "--model",
            &model,
            "--protocol",
            "pairs",
            "--pairs",
            &p,
            "--images",
            &data
        ],
    ));
    let p = w("pairs-index.txt", b"1 1\ns1 1 99999999999\ns1 1 s2 1\n")?;
    cases.push(case(
        "LFW pairs with an index past u32",
        1,
        "pairs-index.txt",
        args![
            "eval",
            "--model",
            &model,
            "--protocol",
            "pairs",
            "--pairs",
            &p,
            "--images",
            &data
        ],
    ));

    let r = f.p("runs1/run01");
    std::fs::create_dir_all(r.join("training"))?;
    std::fs::create_dir_all(r.join("test"))?;
    std::fs::write(r.join("training/class01.pgm"), &pgm)?;
    std::fs::write(r.join("test/item01.pgm"), &pgm)?;
    std::fs::write(
        r.join("class_labels.txt"),
        b"this line has far too many words\n",
    )?;
    cases.push(case(
        "one-shot runs with a bad line",
        1,
        "class_labels.txt",
        args![
            "eval",
            "--model",
            &model,
            "--protocol",
            "oneshot-runs",
            "--runs",
            f.p("runs1")
        ],
    ));
    let r = f.p("runs2/run01");
    std::fs::create_dir_all(r.join("training"))?;
    std::fs::write(r.join("training/class01.pgm"), &pgm)?;
    std::fs::write(
        r.join("class_labels.txt"),
        b"run01/test/missing.pgm run01/training/class01.pgm\n",
    )?;
    cases.push(case(
        "one-shot runs naming a missing image",
        1,
        "missing.pgm",
        args![
            "eval",
            "--model",
            &model,
            "--protocol",
            "oneshot-runs",
            "--runs",
            f.p("runs2")
        ],
    ));
    let p = w("runs.zip", b"PK\x05\x06not really")?;
    cases.push(case(
        "one-shot runs in a broken zip",
        1,
        "runs.zip",
        args![
            "eval",
            "--model",
            &model,
            "--protocol",
            "oneshot-runs",
            "--runs",
            &p
        ],
    ));

    let mb = std::fs::read(&model)?;
    let p = w("junk.safetensors", b"definitely not a model")?;
    cases.push(case(
        "a model that is not safetensors",
        1,
        "junk.safetensors",
        args!["verify", "--model", &p, &img, &img],
    ));
    let p = w("cut.safetensors", &mb[..mb.len() - 100])?;
    cases.push(case(
        "a truncated model",
        1,
        "cut.safetensors",
        args!["verify", "--model", &p, &img, &img],
    ));
    let mut huge = mb.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let p = w("header.safetensors", &huge)?;
    cases.push(case(
        "a model claiming a 2^64-byte header",
        1,
        "header.safetensors",
        args!["inspect", &p],
    ));
    let p = f.p("meta.safetensors");
    with_metadata(&model, &p, "siamese.encoder", |v| {
        v["embedding_dim"] = serde_json::json!(1_000_000_000_000u64)
    })?;
    cases.push(case(
        "a model claiming a 10^12 embedding",
        1,
        "meta.safetensors",
        args!["inspect", &p],
    ));
    let p = f.p("shape.safetensors");
    {
        let (mut header, data) = split_safetensors(&model)?;
        if let Some(obj) = header.as_object_mut() {
            for (k, v) in obj.iter_mut() {
                if k != "__metadata__" {
                    v["shape"] = serde_json::json!([1_000_000_000u64, 1_000_000_000u64]);
                    break;
                }
            }
        }
        join_safetensors(&p, &header, &data)?;
    }
    cases.push(case(
        "a model tensor claiming 10^18 values",
        1,
        "shape.safetensors",
        args!["inspect", &p],
    ));
    let p = w(
        "junk-g.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}xxxxxxxxxx",
    )?;
    cases.push(case(
        "a gallery that is not one",
        1,
        "junk-g.safetensors",
        args!["identify", "--model", &model, "--gallery", &p, &img],
    ));
    let p = f.p("labels-g.safetensors");
    with_metadata(&gallery, &p, "siamese.gallery", |v| {
        v["labels"][0] = serde_json::json!(1_000_000)
    })?;
    cases.push(case(
        "a gallery label past its identities",
        1,
        "labels-g.safetensors",
        args!["identify", "--model", &model, "--gallery", &p, &img],
    ));
    let p = f.p("model-g.safetensors");
    with_metadata(&gallery, &p, "siamese.gallery", |v| {
        v["model"] = serde_json::json!("0000000000000000")
    })?;
    cases.push(case(
        "a gallery of another model",
        1,
        "model-g.safetensors",
        args!["identify", "--model", &model, "--gallery", &p, &img],
    ));
    let p = w("junk.ckpt", b"not a checkpoint")?;
    cases.push(case(
        "a checkpoint that is not one",
        1,
        "junk.ckpt",
        train(
            &data,
            &f.p("out/r3.safetensors"),
            &["--resume", p.to_str().unwrap_or_default()],
        ),
    ));
    let p = f.p("losses.ckpt");
    with_metadata(&ckpt, &p, "siamese.checkpoint", |v| {
        v["losses"] = serde_json::json!([])
    })?;
    cases.push(case(
        "a checkpoint whose losses disagree with its step",
        1,
        "losses.ckpt",
        train(
            &data,
            &f.p("out/r4.safetensors"),
            &[
                "--checkpoint-every",
                "1",
                "--resume",
                p.to_str().unwrap_or_default(),
            ],
        ),
    ));

    let p = w("bad.toml", b"this is = = not toml [")?;
    cases.push(case(
        "a TOML config that does not parse",
        1,
        "bad.toml",
        train(&data, &out, &["--config", p.to_str().unwrap_or_default()]),
    ));
    let p = w("binary.toml", b"\xff\xfe\x00\x01")?;
    cases.push(case(
        "a TOML config that is not text",
        1,
        "binary.toml",
        train(&data, &out, &["--config", p.to_str().unwrap_or_default()]),
    ));
    // A real configuration with one value out of range: the configuration is refused (usage).
    let toml_text = f.p("from-recipe.toml");
    std::fs::write(&toml_text, config_toml(&ckpt, 1_000_000_000_000)?)?;
    cases.push(case(
        "a TOML config with a 10^12 embedding",
        2,
        "embedding",
        train(
            &data,
            &out,
            &["--config", toml_text.to_str().unwrap_or_default()],
        ),
    ));
    Ok(cases)
}

/// The configuration of the run that wrote checkpoint `ckpt`, as a TOML file a user would
/// write, with its embedding size set to `dim`.
fn config_toml(ckpt: &Path, dim: u64) -> Result<String> {
    fn strip_nulls(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|_, x| !x.is_null());
                m.values_mut().for_each(strip_nulls);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
            _ => {}
        }
    }
    let (header, _) = split_safetensors(ckpt)?;
    let state: serde_json::Value = serde_json::from_str(
        header["__metadata__"]["siamese.checkpoint"]
            .as_str()
            .context("no checkpoint state")?,
    )?;
    let mut config = state["config"].clone();
    strip_nulls(&mut config);
    config["encoder"]["embedding_dim"] = serde_json::json!(dim);
    Ok(toml::to_string(&config)?)
}

/// Runs `cases`; returns a line per failed expectation, and the number of crashes.
fn check(cases: &[Case]) -> Result<(Vec<String>, usize)> {
    let mut failures = Vec::new();
    let mut crashes = 0;
    for c in cases {
        let before: Vec<Option<Vec<u8>>> =
            c.unchanged.iter().map(|p| std::fs::read(p).ok()).collect();
        let o = run(&c.args)?;
        if o.crashed() {
            crashes += 1;
        }
        let mut why = Vec::new();
        if o.code != Some(c.code) {
            why.push(format!("exit {:?}, expected {}", o.code, c.code));
        }
        let text = format!("{}{}", o.stdout, o.stderr);
        let seen = if c.code == 0 { &text } else { &o.stderr };
        if !seen.contains(&c.named) {
            why.push(format!("the output does not name `{}`", c.named));
        }
        if seen.contains("panicked") {
            why.push("a panic message".into());
        }
        for (p, b) in c.unchanged.iter().zip(&before) {
            if std::fs::read(p).ok() != *b {
                why.push(format!("{} changed", p.display()));
            }
        }
        for p in &c.absent {
            if p.exists() {
                why.push(format!("{} was created", p.display()));
            }
        }
        if survey() {
            println!(
                "{:<60} exit {:>4} {}",
                c.name,
                o.code.map_or("sig".to_string(), |c| c.to_string()),
                if o.crashed() { "CRASH" } else { "" }
            );
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {} (args {:?})\n  stderr: {}",
                c.name,
                why.join("; "),
                c.args,
                o.stderr.lines().take(4).collect::<Vec<_>>().join(" | ")
            ));
        }
    }
    Ok((failures, crashes))
}

fn survey() -> bool {
    std::env::var_os("HOSTILE_SURVEY").is_some()
}

/// The corpus, built once per test process (the cases share its files).
fn cases() -> Result<&'static [Case]> {
    static C: OnceLock<std::result::Result<Vec<Case>, String>> = OnceLock::new();
    C.get_or_init(|| fixture().and_then(corpus).map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow::anyhow!("corpus: {e}"))
}

/// Runs the corpus cases named `name` (each keeps its files byte for byte: see `keeps`).
fn run_case(name: &str) -> Result<()> {
    let picked: Vec<&Case> = cases()?.iter().filter(|c| c.name == name).collect();
    anyhow::ensure!(!picked.is_empty(), "no case `{name}`");
    for c in picked {
        anyhow::ensure!(
            !c.unchanged.is_empty() || !c.absent.is_empty(),
            "`{name}` checks no file"
        );
        let (failures, crashes) = check(std::slice::from_ref(c))?;
        assert_eq!(crashes, 0);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
    Ok(())
}

#[test]
fn data_loss_out_and_checkpoint_on_one_path_keep_the_file() -> Result<()> {
    run_case("train --out X --checkpoint X")
}

#[test]
fn data_loss_embed_out_the_model_keeps_the_model() -> Result<()> {
    run_case("embed --out MODEL")
}

#[test]
fn data_loss_enroll_out_the_model_keeps_the_model() -> Result<()> {
    run_case("enroll --out MODEL")
}

#[test]
fn data_loss_train_out_a_training_image_keeps_the_image() -> Result<()> {
    run_case("train --out a training image")?;
    run_case("train --out inside the training folder")
}

#[test]
fn data_loss_a_second_run_keeps_the_checkpoint() -> Result<()> {
    run_case("the same train again without --resume")
}

#[test]
fn hostile_corpus() -> Result<()> {
    let cases = cases()?;
    let (failures, crashes) = check(cases)?;
    println!(
        "hostile corpus: {} cases, {crashes} crashed, {} failed expectations",
        cases.len(),
        failures.len()
    );
    if survey() {
        for l in &failures {
            println!("{l}");
        }
        return Ok(());
    }
    assert_eq!(crashes, 0, "crashes:\n{}", failures.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
