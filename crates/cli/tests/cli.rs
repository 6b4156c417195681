//! End-to-end tests through the real `siamese` binary, on real data from `../shared/data`.
//!
//! These live in the CLI package because Cargo exposes `CARGO_BIN_EXE_siamese` only to the
//! binary's own package.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_siamese"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn att() -> PathBuf {
    shared().join("att_faces")
}

fn run(args: &[&str]) -> Result<Output> {
    let out = bin().args(args).output().context("cannot run siamese")?;
    Ok(out)
}

fn ok(args: &[&str]) -> Result<String> {
    let out = run(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "siamese {args:?} failed: {stderr}");
    Ok(String::from_utf8(out.stdout)?)
}

/// `siamese train` of the demo recipe for 2 steps on AT&T s1–s6 into `model`, plus `extra`.
fn train_tiny(model: &Path, extra: &[&str]) -> Result<Output> {
    let data = att();
    let mut args = vec![
        "train",
        "--data",
        s(&data),
        "--classes",
        "s1-s6",
        "--recipe",
        "demo",
        "--steps",
        "2",
        "--val-fraction",
        "0",
        "--quiet",
        "--out",
        s(model),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn json(args: &[&str]) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(ok(args)?.trim())?)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Copies the AT&T subjects `lo..=hi` into `dir` (so tests can alter them).
fn copy_subjects(dir: &Path, lo: usize, hi: usize) -> Result<()> {
    for i in lo..=hi {
        let src = att().join(format!("s{i}"));
        let dst = dir.join(format!("s{i}"));
        std::fs::create_dir_all(&dst)?;
        for e in std::fs::read_dir(&src)? {
            let e = e?;
            std::fs::copy(e.path(), dst.join(e.file_name()))?;
        }
    }
    Ok(())
}

#[test]
fn demo_separates_synthetic_classes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("demo.safetensors");
    let stdout = ok(&["demo", "--steps", "150", "--out", s(&out)])?;
    // "on 10 classes never seen in training: AUC 0.98…"
    let auc: f64 = stdout
        .split("AUC ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .context(format!("no AUC in demo output: {stdout}"))?;
    assert!(auc > 0.9, "demo AUC {auc}: {stdout}");
    assert!(
        stdout.contains("→ same") && stdout.contains("→ different"),
        "{stdout}"
    );
    // Each example says whether its decision is right.
    let examples: Vec<&str> = stdout.lines().filter(|l| l.starts_with("verify")).collect();
    assert_eq!(examples.len(), 6, "{stdout}");
    assert!(
        examples
            .iter()
            .all(|l| l.ends_with("(right)") || l.contains("(wrong: ")),
        "{stdout}"
    );
    assert!(dir.path().join("demo-report/loss.png").exists());
    Ok(())
}

#[test]
fn att_faces_train_verify_identify_eval() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("faces.safetensors");
    let d = att();
    ok(&[
        "train",
        "--data",
        s(&d),
        "--classes",
        "s1-s20",
        "--recipe",
        "att-faces",
        "--steps",
        "120",
        "--input-size",
        "56x46",
        "--out",
        s(&model),
        "--quiet",
    ])?;

    // Unseen subjects s21–s30: a floor against regressions, not the goal.
    let unseen = |extra: &[&str]| {
        let mut args = vec!["eval", "--model", s(&model), "--protocol", "unseen"];
        args.extend([
            "--data",
            s(&d),
            "--classes",
            "s21-s30",
            "--episodes",
            "500",
            "--json",
        ]);
        args.extend(extra);
        json(&args)
    };
    let r = unseen(&[])?;
    let auc = r["auc"].as_f64().context("auc")?;
    assert!(auc >= 0.90, "unseen AUC {auc}: {r}");
    assert!(r["eer"].as_f64().is_some() && r["oneshot_accuracy"].as_f64().is_some());
    assert_eq!(r["n"].as_u64(), Some(4950), "100 images give 4950 pairs");
    // Blocks read in at evaluation: the same model, other distances.
    let tapped = unseen(&["--taps", "3:1,4:1"])?;
    let tapped_auc = tapped["auc"].as_f64().context("auc")?;
    assert!(
        tapped_auc >= 0.90 && tapped_auc != auc,
        "{tapped_auc} vs {auc}"
    );
    let out = run(&[
        "eval",
        "--model",
        s(&model),
        "--protocol",
        "unseen",
        "--data",
        s(&d),
        "--taps",
        "9:1",
    ])?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--taps") && err.contains("between 1 and 4"),
        "{err}"
    );

    // verify: same subject → same, different subjects → different, in most trials.
    let (mut right, mut total) = (0, 0);
    for subject in 21..=30 {
        let a = d.join(format!("s{subject}/1.pgm"));
        let b = d.join(format!("s{subject}/2.pgm"));
        let c = d.join(format!(
            "s{}/1.pgm",
            if subject == 30 { 21 } else { subject + 1 }
        ));
        let same = json(&["verify", "--model", s(&model), s(&a), s(&b), "--json"])?;
        let diff = json(&["verify", "--model", s(&model), s(&a), s(&c), "--json"])?;
        assert!(same["threshold"].as_f64().is_some() && same["distance"].as_f64().is_some());
        right += usize::from(same["same"] == true) + usize::from(diff["same"] == false);
        total += 2;
    }
    assert!(
        right * 10 >= total * 7,
        "verify right in {right} of {total} trials"
    );

    // enroll + identify on unseen subjects.
    let gallery_dir = dir.path().join("gallery");
    copy_subjects(&gallery_dir, 21, 25)?;
    for i in 21..=25 {
        for k in 6..=10 {
            std::fs::remove_file(gallery_dir.join(format!("s{i}/{k}.pgm")))?;
        }
    }
    // enroll into `out` with `extra` flags; identify one probe against a gallery, as JSON.
    let enroll = |out: &Path, extra: &[&str]| -> Result<String> {
        let mut args = vec!["enroll", "--model", s(&model), "--gallery", s(&gallery_dir)];
        args.extend(["--out", s(out)]);
        args.extend(extra);
        ok(&args)
    };
    let identify = |gallery: &Path, probe: &Path, extra: &[&str]| -> Result<serde_json::Value> {
        let mut args = vec!["identify", "--model", s(&model), "--gallery", s(gallery)];
        args.extend([s(probe), "--json"]);
        args.extend(extra);
        json(&args)
    };
    let gallery = dir.path().join("gallery.safetensors");
    enroll(&gallery, &[])?;
    let mut hits = 0;
    for i in 21..=25 {
        let probe = d.join(format!("s{i}/8.pgm"));
        let r = identify(&gallery, &probe, &["--top", "3", "--threshold", "1000"])?;
        assert_eq!(r["candidates"].as_array().map(Vec::len), Some(3));
        hits += usize::from(r["identity"] == format!("s{i}").as_str());
    }
    assert!(hits >= 4, "identified {hits} of 5 probes");

    // A gallery enrolled with another test-time augmentation records it, and identify encodes
    // its probes the same way: an enrolled image finds itself at distance 0.
    // The same holds for a gallery of affine sets (32 encodings an image, Chamfer-compared).
    let affine_gallery = dir.path().join("affine.safetensors");
    enroll(&affine_gallery, &["--tta", "affine"])?;
    let set_gallery = dir.path().join("affine-set.safetensors");
    enroll(&set_gallery, &["--tta", "affine-set"])?;
    let enrolled = gallery_dir.join("s22/3.pgm");
    for g in [&affine_gallery, &set_gallery, &gallery] {
        let r = identify(g, &enrolled, &[])?;
        let dist = r["candidates"][0]["distance"]
            .as_f64()
            .context("distance")?;
        assert!(dist.abs() < 1e-5, "{}: {r}", g.display());
        assert_eq!(r["identity"].as_str(), Some("s22"), "{r}");
    }
    // verify with the model's augmentation and with none: the same pair, different distances.
    let (a1, a2) = (d.join("s21/1.pgm"), d.join("s21/2.pgm"));
    let verify = |tta: &str| {
        json(&[
            "verify",
            "--model",
            s(&model),
            s(&a1),
            s(&a2),
            "--json",
            "--tta",
            tta,
        ])
    };
    let (plain, affine) = (verify("none")?, verify("affine")?);
    assert_ne!(plain["distance"], affine["distance"]);
    // Sets: the pair's distance is positive; an image against itself is at 0.
    let set = verify("affine-set")?;
    assert!(set["distance"].as_f64().is_some_and(|x| x > 0.0), "{set}");
    let own = json(&[
        "verify",
        "--model",
        s(&model),
        s(&a1),
        s(&a1),
        "--json",
        "--tta",
        "affine-set",
    ])?;
    assert!(own["distance"].as_f64().is_some_and(|x| x < 1e-6), "{own}");
    let out = run(&[
        "verify",
        "--model",
        s(&model),
        s(&a1),
        s(&a2),
        "--tta",
        "mirror-ish",
    ])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mirror-ish"));
    let out = run(&[
        "verify",
        "--model",
        s(&model),
        s(&a1),
        s(&a2),
        "--tta",
        "affine-set:1",
    ])?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("affine-set:1") && stderr.contains("from 2 to"),
        "{stderr}"
    );

    // embed to .npy: a valid NumPy header and 3 × 384 f32 (the linear layer's 128 and the
    // recipe's two taps of 128).
    let npy = dir.path().join("e.npy");
    let embed_three = |extra: &[&str]| -> Result<Vec<u8>> {
        let (a, b, c) = (
            d.join("s21/1.pgm"),
            d.join("s22/1.pgm"),
            d.join("s23/1.pgm"),
        );
        let mut args = vec!["embed", "--model", s(&model), s(&a), s(&b), s(&c)];
        args.extend(extra);
        args.extend(["--out", s(&npy)]);
        ok(&args)?;
        Ok(std::fs::read(&npy)?)
    };
    let bytes = embed_three(&[])?;
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (3, 384)"));
    assert_eq!(bytes.len(), 10 + header_len + 3 * 384 * 4);
    // With affine sets each image's 32 encodings: [3, 32, 384].
    let bytes = embed_three(&["--tta", "affine-set"])?;
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (3, 32, 384)"));
    assert_eq!(bytes.len(), 10 + header_len + 3 * 32 * 384 * 4);
    // Another copy count, `affine-set:N`: N encodings an image.
    let bytes = embed_three(&["--tta", "affine-set:4"])?;
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (3, 4, 384)"));
    assert_eq!(bytes.len(), 10 + header_len + 3 * 4 * 384 * 4);

    // LFW-style pairs protocol on unseen subjects: 2 folds of 3 matched + 3 mismatched pairs.
    let lfw = dir.path().join("lfw");
    for i in 21..=26 {
        std::fs::create_dir_all(lfw.join(format!("s{i}")))?;
        for k in 1..=3 {
            // Content is recognised from the bytes, so PGM data under LFW's .jpg names works.
            std::fs::copy(
                d.join(format!("s{i}/{k}.pgm")),
                lfw.join(format!("s{i}/s{i}_{k:04}.jpg")),
            )?;
        }
    }
    let pairs = dir.path().join("pairs.txt");
    std::fs::write(
        &pairs,
        "2\t3\ns21\t1\t2\ns22\t1\t3\ns23\t2\t3\ns21\t1\ts22\t1\ns23\t1\ts24\t2\ns25\t3\ts26\t1\n\
         s24\t1\t2\ns25\t1\t3\ns26\t2\t3\ns24\t3\ts21\t1\ns26\t1\ts22\t2\ns25\t2\ts23\t3\n",
    )?;
    let pairs_eval = [
        "eval",
        "--model",
        s(&model),
        "--protocol",
        "pairs",
        "--pairs",
        s(&pairs),
        "--images",
        s(&lfw),
        "--json",
    ];
    let r = json(&pairs_eval)?;
    assert_eq!(r["n"].as_u64(), Some(12), "{r}");
    assert_eq!(r["folds"].as_u64(), Some(2), "{r}");
    for key in ["accuracy", "auc", "eer", "std", "std_err"] {
        assert!(r[key].as_f64().is_some(), "{key} missing: {r}");
    }
    let r = json(&[&pairs_eval[..], &["--pairs-train", s(&pairs)]].concat())?;
    assert!(r["dev_threshold"].as_f64().is_some(), "{r}");

    // Lake-style one-shot runs: one run of 5-way, training = image 1, test = image 2.
    let runs = dir.path().join("runs");
    std::fs::create_dir_all(runs.join("run01/training"))?;
    std::fs::create_dir_all(runs.join("run01/test"))?;
    let mut labels = String::new();
    for (k, subject) in (21..=25).enumerate() {
        let c = k + 1;
        std::fs::copy(
            d.join(format!("s{subject}/1.pgm")),
            runs.join(format!("run01/training/class{c:02}.png")),
        )?;
        // Test items in reverse order, so the answer is not the item's own index.
        let item = 6 - c;
        std::fs::copy(
            d.join(format!("s{subject}/2.pgm")),
            runs.join(format!("run01/test/item{item:02}.png")),
        )?;
        labels.push_str(&format!(
            "run01/test/item{item:02}.png run01/training/class{c:02}.png\n"
        ));
    }
    std::fs::write(runs.join("run01/class_labels.txt"), labels)?;
    let r = json(&[
        "eval",
        "--model",
        s(&model),
        "--protocol",
        "oneshot-runs",
        "--runs",
        s(&runs),
        "--json",
    ])?;
    assert_eq!(r["n"].as_u64(), Some(5), "{r}");
    let acc = r["accuracy"].as_f64().context("accuracy")?;
    assert!(acc >= 0.6, "5-way one-shot on unseen faces: {acc}");

    // inspect shows the threshold and provenance.
    let info = ok(&["inspect", s(&model)])?;
    assert!(
        info.contains("conv4") && info.contains("threshold:") && info.contains("att_faces"),
        "{info}"
    );

    // A gallery made with another model is refused.
    let other = dir.path().join("other.safetensors");
    let out = train_tiny(&other, &["--input-size", "112x92"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "identify",
        "--model",
        s(&other),
        "--gallery",
        s(&gallery),
        s(&d.join("s21/1.pgm")),
    ])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another model"));
    Ok(())
}

fn losses(report: &Path) -> Result<Vec<(u64, f32)>> {
    let text = std::fs::read_to_string(report.join("metrics.jsonl"))?;
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok((
                v["step"].as_u64().context("step")?,
                v["loss"].as_f64().context("loss")? as f32,
            ))
        })
        .collect()
}

#[test]
fn resume_repeats_the_uninterrupted_losses() -> Result<()> {
    resume_repeats(&[])?;
    Ok(())
}

/// The proxy loss's proxies and their optimiser state travel in the checkpoint (so the
/// resumed losses match), and stay out of the model file.
#[test]
fn resume_with_the_proxy_loss_repeats_the_uninterrupted_losses() -> Result<()> {
    let dir = resume_repeats(&["--proxy-weight", "0.5"])?;
    let names = |p: &Path| -> Result<Vec<String>> { Ok(tensor_bytes(p)?.into_keys().collect()) };
    let ckpt = names(&dir.path().join("part.ckpt"))?;
    assert!(ckpt.iter().any(|n| n == "proxy.weight"), "{ckpt:?}");
    let model = names(&dir.path().join("part.safetensors"))?;
    assert!(model.iter().all(|n| !n.contains("proxy")), "{model:?}");
    Ok(())
}

/// `--bf16` trains with the convolutions' products on AMX tiles, and a resumed bf16 run repeats
/// the uninterrupted one's losses exactly; on a machine without the tiles it is a usage error
/// that says what is missing.
#[test]
fn bf16_training_resumes_exactly_or_is_refused_without_amx() -> Result<()> {
    if siamese_ops::nn::bf16_supported() {
        resume_repeats(&["--bf16"])?;
    } else {
        let dir = tempfile::tempdir()?;
        let out = train_tiny(&dir.path().join("m.safetensors"), &["--bf16"])?;
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--bf16") && stderr.contains("AMX"),
            "{stderr}"
        );
    }
    Ok(())
}

/// The weight average's shadows travel in the checkpoint, so the resumed run keeps the same
/// averaged model as the uninterrupted one, tensor for tensor; the model file holds the average
/// under the encoder's own names and no shadows.
#[test]
fn resume_with_the_weight_average_keeps_the_same_averaged_model() -> Result<()> {
    let dir = resume_repeats(&["--ema", "0.9"])?;
    let ckpt = tensor_bytes(&dir.path().join("part.ckpt"))?;
    assert!(
        ckpt.keys().any(|n| n == "ema.block1.conv.weight"),
        "{:?}",
        ckpt.keys()
    );
    let part = tensor_bytes(&dir.path().join("part.safetensors"))?;
    let full = tensor_bytes(&dir.path().join("full.safetensors"))?;
    assert!(
        part.keys().all(|n| !n.starts_with("ema.")),
        "{:?}",
        part.keys()
    );
    assert_eq!(
        part, full,
        "the resumed run kept a different averaged model"
    );
    // The kept model is the average, not the last weights (which the checkpoint holds).
    assert_ne!(
        part.get("block1.conv.weight"),
        ckpt.get("block1.conv.weight")
    );
    assert_eq!(
        part.get("block1.conv.weight"),
        ckpt.get("ema.block1.conv.weight")
    );
    Ok(())
}

/// The raw bytes of every tensor of a safetensors file, by name.
fn tensor_bytes(p: &Path) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let bytes = std::fs::read(p)?;
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let mut out = std::collections::BTreeMap::new();
    for (name, t) in header.as_object().context("header")? {
        let Some(off) = t.get("data_offsets").and_then(|o| o.as_array()) else {
            continue;
        };
        let at = |i: usize| {
            off[i]
                .as_u64()
                .map(|v| 8 + n + v as usize)
                .context("offset")
        };
        out.insert(name.clone(), bytes[at(0)?..at(1)?].to_vec());
    }
    Ok(out)
}

/// Trains 16 steps in one go, then 7 steps and a resume to 16, with `extra` flags; asserts
/// the same loss at every step and returns the folder (`full.*`, `part.*`).
fn resume_repeats(extra: &[&str]) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let d = att();
    let mut common = vec![
        "train",
        "--data",
        s(&d),
        "--classes",
        "s1-s12",
        "--recipe",
        "demo",
        "--input-size",
        "56x46",
        "--steps",
        "16",
        "--quiet",
        "--checkpoint-every",
        "4",
        "--augment",
        "true",
    ];
    common.extend(extra);
    let full = dir.path().join("full.safetensors");
    let mut args = common.clone();
    args.extend(["--out", s(&full)]);
    ok(&args)?;
    let full_losses = losses(&dir.path().join("full-report"))?;
    assert_eq!(full_losses.len(), 16);

    let part = dir.path().join("part.safetensors");
    let mut args = common.clone();
    args.extend(["--out", s(&part), "--stop-after", "7"]);
    ok(&args)?;
    let ckpt = dir.path().join("part.ckpt");
    assert!(ckpt.exists());
    // As if the run had crashed after logging steps past its checkpoint: those lines go.
    let log = dir.path().join("part-report/metrics.jsonl");
    let mut text = std::fs::read_to_string(&log)?;
    text.push_str("{\"step\":8,\"loss\":9.9,\"lr\":0.1,\"active\":1.0,\"images_per_sec\":1.0}\n");
    std::fs::write(&log, text)?;
    let mut args = common.clone();
    args.extend(["--out", s(&part), "--resume", s(&ckpt)]);
    ok(&args)?;
    let resumed = losses(&dir.path().join("part-report"))?;
    // The stop after 7 steps wrote its checkpoint at the end: steps 1–7 then 8–16.
    assert_eq!(
        resumed.iter().map(|x| x.0).collect::<Vec<_>>(),
        (1..=16).collect::<Vec<_>>()
    );
    for (a, b) in full_losses.iter().zip(&resumed) {
        assert_eq!(a, b, "step {} differs after resume ({extra:?})", a.0);
    }
    Ok(dir)
}

#[test]
fn bad_images_are_named_or_skipped() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("faces");
    copy_subjects(&data, 1, 6)?;
    let bad = data.join("s3/4.pgm");
    let bytes = std::fs::read(&bad)?;
    std::fs::write(&bad, &bytes[..bytes.len() / 3])?;
    let model = dir.path().join("m.safetensors");
    let args = [
        "train",
        "--data",
        s(&data),
        "--recipe",
        "demo",
        "--steps",
        "3",
        "--out",
        s(&model),
        "--quiet",
    ];
    let out = run(&args)?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4.pgm"), "error does not name the file: {err}");
    let mut skip = args.to_vec();
    skip.push("--skip-bad");
    ok(&skip)?;
    assert!(model.exists());

    // verify on an undecodable image names it, exit 1.
    let out = run(&[
        "verify",
        "--model",
        s(&model),
        s(&bad),
        s(&data.join("s1/1.pgm")),
    ])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("4.pgm"));
    // Out-of-range threshold: a usage error, exit 2, before the model is read.
    let good = data.join("s1/1.pgm");
    let out = run(&[
        "verify",
        "--model",
        s(&model),
        s(&good),
        s(&good),
        "--threshold",
        "-1",
    ])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
    Ok(())
}

#[test]
fn not_a_model_and_bad_flags() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fake = dir.path().join("fake.safetensors");
    std::fs::write(&fake, b"definitely not a model")?;
    let img = att().join("s1/1.pgm");
    let out = run(&["verify", "--model", s(&fake), s(&img), s(&img)])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fake.safetensors"), "{err}");
    assert!(!err.contains("panicked"));

    let out = run(&["inspect", s(&dir.path().join("missing.safetensors"))])?;
    assert_eq!(out.status.code(), Some(1));

    let out = run(&["verify", "--no-such-flag"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
    for (flag, value, named) in [
        ("--arch", "vgg", "vgg"),
        ("--fit-ink", "1.5", "--fit-ink"),
        ("--elastic", "9", "--elastic"),
        ("--elastic-sigma", "0", "--elastic-sigma"),
        ("--widths", "64,0", "--widths"),
        ("--member-sizes", "28x", "--member-sizes"),
        ("--proxy-scale", "0", "proxy loss"),
        ("--proxy-weight=-1", "--quiet", "proxy loss"),
        ("--ema", "1", "--ema"),
    ] {
        let out = run(&[
            "train",
            "--data",
            s(&att()),
            "--out",
            "x.safetensors",
            flag,
            value,
        ])?;
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{err}");
    }
    let help = ok(&["train", "--help"])?;
    assert!(help.contains("Example") && help.contains("--time-budget"));
    Ok(())
}

#[test]
fn identify_against_a_large_random_gallery() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("tiny.safetensors");
    let out = train_tiny(&model, &[])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gallery = dir.path().join("random.safetensors");
    ok(&[
        "enroll",
        "--model",
        s(&model),
        "--random",
        "5000",
        "--random-identities",
        "500",
        "--out",
        s(&gallery),
    ])?;
    let probe = att().join("s9/1.pgm");
    let r = json(&[
        "identify",
        "--model",
        s(&model),
        "--gallery",
        s(&gallery),
        s(&probe),
        "--top",
        "4",
        "--json",
    ])?;
    let candidates = r["candidates"].as_array().context("candidates")?;
    assert_eq!(candidates.len(), 4, "{r}");
    let mut last = 0.0;
    for c in candidates {
        let id = c["identity"].as_str().context("identity")?;
        let n: usize = id.strip_prefix("id").context("idN")?.parse()?;
        assert!(n < 500, "{r}");
        let d = c["distance"].as_f64().context("distance")?;
        assert!(
            d >= last && d <= 4.0 + 1e-4,
            "unit vectors are at most 4 apart: {r}"
        );
        last = d;
    }
    assert!(r["identity"].is_string() && r["threshold"].as_f64().is_some());
    assert_eq!(r["probe"].as_str(), Some(s(&probe)));

    // Neither --gallery nor --random is bad usage.
    let out = run(&["enroll", "--model", s(&model), "--out", s(&gallery)])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--gallery"));
    Ok(())
}

#[test]
fn ctrl_c_writes_a_checkpoint_that_resumes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("m.safetensors");
    let d = att();
    let args = [
        "train",
        "--data",
        s(&d),
        "--classes",
        "s1-s8",
        "--recipe",
        "demo",
        "--steps",
        "100000",
        "--quiet",
        "--checkpoint-every",
        "0",
        "--out",
        s(&model),
    ];
    let child = bin()
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Let it start training, then interrupt it as Ctrl-C would.
    let ckpt = dir.path().join("m.ckpt");
    let report = dir.path().join("m-report/metrics.jsonl");
    let start = std::time::Instant::now();
    while !report.exists() || std::fs::metadata(&report)?.len() == 0 {
        anyhow::ensure!(start.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -INT failed");
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(ckpt.exists(), "no checkpoint after Ctrl-C: {err}");
    let steps_before = losses(&dir.path().join("m-report"))?.len() as u64;
    // Resume for a few more steps.
    let mut resume = args.to_vec();
    let total = (steps_before + 3).to_string();
    resume[8] = &total;
    resume.extend(["--resume", s(&ckpt)]);
    ok(&resume)?;
    let after = losses(&dir.path().join("m-report"))?;
    assert_eq!(after.last().map(|x| x.0), Some(steps_before + 3));
    Ok(())
}

#[test]
fn recipes_without_data_train_on_their_whole_data_set() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("m.safetensors");
    let out = bin()
        .env("SIAMESE_DATA", shared())
        .args([
            "train",
            "--recipe",
            "omniglot",
            "--steps",
            "2",
            "--quiet",
            "--out",
            s(&model),
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("images_background_small1.zip")
            && err.contains("images_background_small2.zip"),
        "{err}"
    );
    // Both small sets' classes went in: the provenance lists both sources.
    let meta = ok(&["inspect", s(&model)])?;
    assert!(meta.contains("small1") && meta.contains("small2"), "{meta}");
    // The recipe's ink fitting and test-time augmentation travel with the model.
    assert!(
        meta.contains("\"fit_ink\":0.7") && meta.contains("63 affine distortions"),
        "{meta}"
    );
    // Without the data the error says where it looked and how to fetch it.
    let out = bin()
        .env("SIAMESE_DATA", dir.path())
        .args(["train", "--recipe", "att-faces", "--out", s(&model)])
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("att_faces") && err.contains("cargo xtask fetch att-faces"),
        "{err}"
    );
    Ok(())
}

#[test]
fn members_at_their_own_sizes_train_and_inspect_names_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("sizes.safetensors");
    let out = train_tiny(
        &model,
        &["--member-sizes", "28x24,56x46", "--widths", "32,64,64,64"],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = ok(&["inspect", s(&model)])?;
    assert!(text.contains("ensemble of 2 members"), "{text}");
    assert!(text.contains("28×24, 56×46"), "{text}");
    // Without --input-size the input is the largest member size.
    assert!(text.contains("1×56×46"), "{text}");
    // --members must agree with the number of sizes.
    let out = train_tiny(&model, &["--member-sizes", "28x24,56x46", "--members", "3"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--member-sizes"));
    // The omniglot recipe is one 40×40 network; --member-sizes makes it the earlier recipe's
    // pair of a 28×28 and a 40×40 network.
    let omni = shared().join("omniglot/images_background_small1.zip");
    let recipe = |extra: &[&str]| -> Result<String> {
        let mut args = vec![
            "train",
            "--data",
            s(&omni),
            "--classes",
            "Korean/*",
            "--recipe",
            "omniglot",
            "--tta",
            "none",
            "--steps",
            "1",
            "--val-fraction",
            "0",
            "--quiet",
            // Each run trains anew into the same model: its checkpoint is replaced on purpose.
            "--overwrite",
            "--out",
            s(&model),
        ];
        args.extend(extra);
        ok(&args)?;
        ok(&["inspect", s(&model)])
    };
    let text = recipe(&["--member-sizes", "28x28,40x40"])?;
    assert!(text.contains("ensemble of 2 members"), "{text}");
    assert!(text.contains("28×28, 40×40"), "{text}");
    // Taps read one network's blocks: the ensemble drops the recipe's.
    assert!(!text.contains("taps:"), "{text}");
    let text = recipe(&[])?;
    assert!(!text.contains("ensemble"), "{text}");
    assert!(text.contains("1×40×40"), "{text}");
    assert!(
        text.contains(
            "block 3 (128 numbers, weight 2), block 4 (128 numbers, weight 2); 384 numbers in all"
        ),
        "{text}"
    );
    // The Omniglot recipe trains its taps; `--train-taps false` reads them at inference only.
    assert!(text.contains("; trained with the loss"), "{text}");
    let text = recipe(&["--train-taps", "false"])?;
    assert!(
        text.contains("384 numbers in all; read at inference only"),
        "{text}"
    );
    // An image's encoding carries the taps.
    let npy = dir.path().join("one.npy");
    let face = att().join("s1/1.pgm");
    ok(&["embed", "--model", s(&model), s(&face), "--out", s(&npy)])?;
    let bytes = std::fs::read(&npy)?;
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert!(String::from_utf8_lossy(&bytes[10..10 + header_len]).contains("'shape': (1, 384)"));
    let text = recipe(&["--taps", "2:1"])?;
    assert!(
        text.contains("block 2 (128 numbers, weight 1); 256 numbers"),
        "{text}"
    );
    let text = recipe(&["--taps", "none"])?;
    assert!(!text.contains("taps:"), "{text}");
    let out = train_tiny(&model, &["--taps", "3"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--taps"));
    let out = train_tiny(&model, &["--train-taps", "maybe"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--train-taps"));
    // A reader that stops early (`siamese inspect m | head -1`) ends the command quietly.
    let mut child = bin()
        .args(["inspect", s(&model)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    Ok(())
}
