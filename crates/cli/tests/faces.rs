//! The commands on photos through the real `siamese` binary, with dlib's face models from
//! `../shared/faces` imported once per test binary into a temporary folder.
//!
//! Detection on a photo takes about a second here: the tests stay on the small photos.

use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_siamese"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn faces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/faces")
}

fn image(name: &str) -> PathBuf {
    faces_dir().join("images").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn run(args: &[&str]) -> Result<Output> {
    bin().args(args).output().context("cannot run siamese")
}

/// stdout of a successful run (stderr appended to the error otherwise).
fn ok(args: &[&str]) -> Result<String> {
    let out = run(args)?;
    ensure!(
        out.status.success(),
        "siamese {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn json(args: &[&str]) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(ok(args)?.trim())?)
}

/// `siamese import dlib` of `../shared/faces/models`, once, kept for the whole binary.
fn model() -> &'static str {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = MODEL.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let out = dir.path().join("faces.safetensors");
        let m = faces_dir().join("models");
        let arg = |n: &str| m.join(n).display().to_string();
        let r = run(&[
            "import",
            "dlib",
            "--encoder",
            &arg("dlib_face_recognition_resnet_model_v1.dat"),
            "--landmarks",
            &arg("shape_predictor_5_face_landmarks.dat"),
            "--detector",
            &arg("mmod_human_face_detector.dat"),
            "--out",
            s(&out),
        ])
        .expect("siamese runs");
        assert!(
            r.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        (dir, out)
    });
    s(path)
}

/// dlib's descriptor (face_recognition's) of the first CNN face of an image.
fn golden(name: &str) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(faces_dir().join("golden/dlib.json"))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["images"][name]["cnn"][0]["descriptor"]
        .as_array()
        .context("a golden descriptor")?
        .iter()
        .filter_map(|x| x.as_f64())
        .collect())
}

/// A 64x48 PNG of one grey, which holds no face.
fn blank_png(path: &Path) -> Result<()> {
    // Stored (uncompressed) deflate blocks need no compressor: one block per row is enough.
    let (w, h) = (64u32, 48u32);
    let mut raw = Vec::new();
    for _ in 0..h {
        raw.push(0u8);
        raw.extend(std::iter::repeat_n(200u8, (w * 3) as usize));
    }
    let mut z = vec![0x78, 0x01];
    let rows: Vec<&[u8]> = raw.chunks((w * 3 + 1) as usize).collect();
    for (i, row) in rows.iter().enumerate() {
        z.push(u8::from(i + 1 == rows.len()));
        let n = row.len() as u16;
        z.extend_from_slice(&n.to_le_bytes());
        z.extend_from_slice(&(!n).to_le_bytes());
        z.extend_from_slice(row);
    }
    let adler = {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in &raw {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    };
    z.extend_from_slice(&adler.to_be_bytes());
    fn crc(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &x in bytes {
            c ^= x as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut v = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        v.extend_from_slice(&body);
        v.extend_from_slice(&crc(&body).to_be_bytes());
        v
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(b"IDAT", &z));
    png.extend(chunk(b"IEND", &[]));
    std::fs::write(path, png)?;
    Ok(())
}

#[test]
fn inspect_shows_the_pipeline_and_where_it_came_from() -> Result<()> {
    let text = ok(&["inspect", model()])?;
    for want in [
        // The three files' sha256s, as ../shared/faces/README.md lists them.
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
        "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6",
        "dlib_face_recognition_resnet_model_v1.dat",
        "distance:     l2 (Euclidean, not squared)",
        "threshold:    0.6000",
        "not measured here",
        "window 80x80",
        "pyramid_down<6>",
        "upsample 1 by default, score threshold 0",
        "5 points, 15 cascades",
        "150×150, padding 0.25",
    ] {
        ensure!(text.contains(want), "inspect lacks `{want}`:\n{text}");
    }
    let j = json(&["inspect", model(), "--json"])?;
    assert_eq!(j["meta"]["distance"], "l2");
    assert_eq!(j["meta"]["calibration"]["pairs"], 0);
    assert_eq!(j["face"]["sources"].as_array().map(Vec::len), Some(3));
    assert_eq!(j["face"]["chip"]["size"], 150);
    Ok(())
}

#[test]
fn detect_finds_both_faces_draws_them_and_cuts_their_chips() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let photo = image("two_people.jpg");
    let text = ok(&[
        "detect",
        "--model",
        model(),
        s(&photo),
        "--draw",
        s(&out),
        "--chips",
        s(&out),
    ])?;
    ensure!(text.contains("two_people.jpg: 2 faces"), "{text}");
    ensure!(
        text.contains("box 226,44,396,213") && text.contains("box 792,88,933,230"),
        "dlib's boxes:\n{text}"
    );
    for name in [
        "two_people.faces.png",
        "two_people.face1.png",
        "two_people.face2.png",
    ] {
        let p = out.join(name);
        ensure!(p.is_file(), "{} was not written", p.display());
    }
    let j = json(&["detect", "--model", model(), s(&photo), "--json"])?;
    let faces = j["images"][0]["faces"].as_array().context("faces")?;
    assert_eq!(faces.len(), 2);
    for f in faces {
        assert!(f["box"]["left"].is_i64());
        assert!(f["confidence"].as_f64().is_some_and(|c| c > 1.0));
        assert_eq!(f["points"].as_array().map(Vec::len), Some(5));
    }
    Ok(())
}

#[test]
fn verify_gives_dlibs_distances() -> Result<()> {
    let l2 = |a: &[f64], b: &[f64]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    };
    let obama = golden("obama.jpg")?;
    for (other, same) in [("obama2.jpg", true), ("biden.jpg", false)] {
        let j = json(&[
            "verify",
            "--model",
            model(),
            s(&image("obama.jpg")),
            s(&image(other)),
            "--json",
        ])?;
        let d = j["distance"].as_f64().context("distance")?;
        let want = l2(&obama, &golden(other)?);
        ensure!(
            (d - want).abs() < 1e-5,
            "{other}: {d} against dlib's {want}"
        );
        assert_eq!(j["same"], same, "{other}: {j}");
        assert_eq!(same, d < 0.6);
        assert!(j["a_face"]["box"]["left"].is_i64(), "{j}");
        assert_eq!(j["b_face"]["found"], 1);
    }
    let text = ok(&[
        "verify",
        "--model",
        model(),
        s(&image("obama.jpg")),
        s(&image("obama2.jpg")),
    ])?;
    ensure!(text.starts_with("same: distance 0.3"), "{text}");
    Ok(())
}

#[test]
fn a_group_photo_is_identified_face_by_face() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let known = dir.path().join("known");
    for (who, photo) in [
        ("obama", "obama_small.jpg"),
        ("biden", "biden.jpg"),
        ("nobody", ""),
    ] {
        std::fs::create_dir_all(known.join(who))?;
        if photo.is_empty() {
            blank_png(&known.join(who).join("blank.png"))?;
        } else {
            std::fs::copy(image(photo), known.join(who).join(photo))?;
        }
    }
    let gallery = dir.path().join("gallery.safetensors");
    let out = run(&[
        "enroll",
        "--model",
        model(),
        "--gallery",
        s(&known),
        "--out",
        s(&gallery),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{stderr}");
    ensure!(
        stderr.contains("enrolled 2 faces of 3 identities") && stderr.contains("1 without a face"),
        "{stderr}"
    );
    let photo = image("two_people.jpg");
    let args = [
        "identify",
        "--model",
        model(),
        "--gallery",
        s(&gallery),
        "--faces",
        "all",
        s(&photo),
    ];
    let text = ok(&args)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let mut names = Vec::new();
    for line in &lines {
        let fields: Vec<&str> = line.split(',').collect();
        // file,name,distance,left,top,right,bottom
        assert_eq!(fields.len(), 7, "{line}");
        assert!(fields[0].ends_with("two_people.jpg"), "{line}");
        names.push(fields[1]);
    }
    names.sort();
    assert_eq!(names, ["biden", "obama"]);
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let j = json(&with_json)?;
    assert_eq!(j["found"], 2);
    let faces = j["faces"].as_array().context("faces")?;
    assert_eq!(faces.len(), 2);
    for f in faces {
        assert!(f["box"]["right"].is_i64(), "{f}");
        assert!(f["name"] == "obama" || f["name"] == "biden", "{f}");
    }
    Ok(())
}

#[test]
fn a_photo_without_a_face_is_an_error_naming_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let blank = dir.path().join("blank.png");
    blank_png(&blank)?;
    let out = run(&[
        "verify",
        "--model",
        model(),
        s(&image("obama_small.jpg")),
        s(&blank),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    ensure!(
        stderr.contains(s(&blank)) && stderr.contains("no face"),
        "{stderr}"
    );
    let text = ok(&["detect", "--model", model(), s(&blank)])?;
    ensure!(text.contains("blank.png: 0 faces"), "{text}");
    Ok(())
}

#[test]
fn detection_none_reads_a_cropped_face() -> Result<()> {
    let chips = faces_dir().join("golden/chips");
    let a = chips.join("obama_cnn_0.png");
    let text = ok(&["detect", "--model", model(), "--detect", "none", s(&a)])?;
    ensure!(
        text.contains("box 0,0,149,149") && text.contains("no detection"),
        "{text}"
    );
    let v = json(&[
        "verify",
        "--model",
        model(),
        "--detect",
        "none",
        s(&a),
        s(&chips.join("obama2_cnn_0.png")),
        "--json",
    ])?;
    assert_eq!(v["same"], true, "{v}");
    Ok(())
}

#[test]
fn detect_never_writes_over_an_input() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let chip = faces_dir().join("golden/chips/obama_cnn_0.png");
    let a = dir.path().join("a.png");
    let drawn = dir.path().join("a.faces.png");
    std::fs::copy(&chip, &a)?;
    std::fs::copy(&chip, &drawn)?;
    let before = std::fs::read(&drawn)?;
    let out = run(&[
        "detect",
        "--model",
        model(),
        "--detect",
        "none",
        s(&a),
        s(&drawn),
        "--draw",
        s(dir.path()),
    ])?;
    assert_eq!(out.status.code(), Some(2));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("would be written over"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&drawn)?, before);
    Ok(())
}

#[test]
fn face_flags_need_a_face_model() -> Result<()> {
    use candle_core::Device;
    use siamese_encoder::{Architecture, Encoder, EncoderConfig};
    use siamese_infer::{Model, ModelMeta, Provenance, Tta};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("grey.safetensors");
    let cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 28, 24);
    Model {
        encoder: Encoder::new(&cfg, 1, &Device::Cpu)?,
        meta: ModelMeta {
            preprocess: siamese_data::Preprocess::new(1, 24, 28),
            distance: siamese_ops::distance::Distance::SquaredL2,
            calibration: None,
            provenance: Provenance::default(),
            tta: Tta::None,
        },
        extra: Vec::new(),
        face: None,
    }
    .save(&path)?;
    let photo = image("obama_small.jpg");
    let out = run(&[
        "verify",
        "--model",
        s(&path),
        "--threshold",
        "1",
        "--detect",
        "none",
        s(&photo),
        s(&photo),
    ])?;
    assert_eq!(out.status.code(), Some(2));
    ensure!(String::from_utf8_lossy(&out.stderr).contains("need a face model"));
    // Without the flags, a grey model reads a colour photo as before (converted to grey).
    let text = ok(&[
        "verify",
        "--model",
        s(&path),
        "--threshold",
        "1",
        s(&photo),
        s(&photo),
    ])?;
    ensure!(text.starts_with("same: distance 0.0000"), "{text}");
    let out = run(&["detect", "--model", s(&path), s(&photo)])?;
    assert_eq!(out.status.code(), Some(1));
    ensure!(String::from_utf8_lossy(&out.stderr).contains("not a face model"));
    Ok(())
}
