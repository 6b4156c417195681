//! `siamese train --init`: fine-tuning dlib's imported face encoder on a few AT&T subjects,
//! through the real binary. The written model must be a face model again (its pipeline kept,
//! its provenance naming the init model) whose `verify` runs; flags that would change the
//! init model's encoder are a usage error (exit status 2).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_siamese"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn att() -> PathBuf {
    shared().join("data/att_faces")
}

fn run(args: &[&str]) -> Result<Output> {
    bin().args(args).output().context("cannot run siamese")
}

fn ok(args: &[&str]) -> Result<String> {
    let out = run(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "siamese {args:?} failed: {stderr}");
    Ok(String::from_utf8(out.stdout)?)
}

/// dlib's three files imported into `dir/faces.safetensors`.
fn import(dir: &Path) -> Result<PathBuf> {
    let m = shared().join("faces/models");
    let out = dir.join("faces.safetensors");
    let p = |n: &str| m.join(n).display().to_string();
    ok(&[
        "import",
        "dlib",
        "--encoder",
        &p("dlib_face_recognition_resnet_model_v1.dat"),
        "--landmarks",
        &p("shape_predictor_5_face_landmarks.dat"),
        "--detector",
        &p("mmod_human_face_detector.dat"),
        "--out",
        &out.display().to_string(),
    ])?;
    Ok(out)
}

#[test]
fn fine_tuning_the_imported_encoder_keeps_a_face_model_and_conflicting_flags_are_refused(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let faces = import(dir.path())?;
    let faces_s = faces.display().to_string();
    let data = att().display().to_string();
    let out = dir.path().join("tuned.safetensors");
    let out_s = out.display().to_string();
    let train = |extra: &[&str]| -> Result<Output> {
        let mut args = vec![
            "train",
            "--init",
            &faces_s,
            "--data",
            &data,
            "--classes",
            "s1-s4",
            "--detect",
            "none",
            "--steps",
            "2",
            "--batch-classes",
            "4",
            "--batch-images",
            "2",
            "--quiet",
            "--out",
            &out_s,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };

    // Flags that change the init model's encoder: a usage error naming both.
    for flag in [["--arch", "conv4"], ["--input-size", "56x46"]] {
        let o = train(&flag)?;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag:?}: {err}");
        assert!(err.contains(flag[0]) && err.contains("--init"), "{err}");
        assert!(!out.exists());
    }
    // --detect without a face model to fine-tune.
    let o = run(&[
        "train",
        "--data",
        &data,
        "--classes",
        "s1-s4",
        "--detect",
        "none",
        "--steps",
        "1",
        "--out",
        &out_s,
    ])?;
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Two steps from the imported weights.
    let o = train(&[])?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("40 face chips"), "{err}");

    let text = ok(&["inspect", &out_s])?;
    assert!(text.contains("face model"), "{text}");
    assert!(text.contains("landmarks:"), "{text}");
    assert!(text.contains("init from:    faces.safetensors"), "{text}");
    assert!(text.contains("2 steps"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["inspect", "--json", &out_s])?)?;
    let meta = json.to_string();
    assert!(meta.contains("faces.safetensors"), "{meta}");
    // The threshold is the run's calibration, in the Euclidean distance `verify` uses.
    assert!(meta.contains("training classes"), "{meta}");

    let s1 = att().join("s1");
    let v = ok(&[
        "verify",
        "--model",
        &out_s,
        "--detect",
        "none",
        "--json",
        &s1.join("1.pgm").display().to_string(),
        &s1.join("2.pgm").display().to_string(),
    ])?;
    let v: serde_json::Value = serde_json::from_str(v.trim())?;
    let d = v["distance"].as_f64().context("no distance")?;
    assert!(d.is_finite() && d > 0.0, "{v}");
    Ok(())
}
