//! The programs in `examples/` on small data: a freshly initialised model (nothing is
//! trained, so only the plumbing is checked: a verdict comes out, an enrolled image finds
//! its own identity) on AT&T faces from `../shared/data`.

#[allow(dead_code)]
#[path = "../examples/verify.rs"]
mod verify;

#[allow(dead_code)]
#[path = "../examples/identify.rs"]
mod identify;

use siamese::data::Preprocess;
use siamese::encoder::{Architecture, Encoder, EncoderConfig};
use siamese::infer::{Calibration, Device, Model, ModelMeta, Provenance, Tta};
use siamese::ops::distance::Distance;
use std::path::{Path, PathBuf};

fn face(subject: usize, k: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../shared/data/att_faces/s{subject}/{k}.pgm"))
}

/// A conv4 on 28×24 grey faces, as initialised, calibrated at 0.5, saved to `path`.
fn save_model(path: &Path) -> anyhow::Result<()> {
    let mut cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 28, 24);
    cfg.l2_normalize = true;
    let model = Model {
        encoder: Encoder::new(&cfg, 7, &Device::Cpu)?,
        meta: ModelMeta {
            preprocess: Preprocess::new(1, 24, 28),
            distance: Distance::SquaredL2,
            calibration: Some(Calibration {
                threshold: 0.5,
                accuracy: 0.0,
                far: 0.0,
                frr: 0.0,
                pairs: 0,
                source: "none: an untrained model for the examples' test".into(),
            }),
            provenance: Provenance::default(),
            tta: Tta::None,
        },
        extra: Vec::new(),
        face: None,
    };
    Ok(model.save(path)?)
}

#[test]
fn verify_prints_a_verdict() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("model.safetensors");
    save_model(&model)?;
    let line = verify::verify(&model, &face(1, 1), &face(1, 1))?;
    assert_eq!(line, "same: distance 0.0000, threshold 0.5000");
    let line = verify::verify(&model, &face(1, 1), &face(2, 1))?;
    assert!(
        (line.starts_with("same: ") || line.starts_with("different: "))
            && line.contains("threshold 0.5000"),
        "{line}"
    );
    Ok(())
}

#[test]
fn identify_names_an_enrolled_image() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("model.safetensors");
    save_model(&model)?;
    let folder = dir.path().join("known");
    for s in 1..=4 {
        std::fs::create_dir_all(folder.join(format!("s{s}")))?;
        for k in 1..=2 {
            std::fs::copy(face(s, k), folder.join(format!("s{s}/{k}.pgm")))?;
        }
    }
    let probes = [folder.join("s3/2.pgm"), face(9, 1)];
    let lines = identify::identify(&model, &folder, &probes)?;
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].contains("s3/2.pgm: s3 [s3 0.0000, "),
        "{}",
        lines[0]
    );
    assert_eq!(
        lines[1].matches(", ").count(),
        2,
        "three candidates: {}",
        lines[1]
    );
    Ok(())
}

/// The examples need only the inference layer: without the default `train` feature, what an
/// example build compiles (the facade's normal and dev dependencies) holds no training
/// crate, plotting, progress bars, argument parser or TOML.
#[test]
fn examples_build_without_the_training_stack() -> anyhow::Result<()> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "-p", "siamese", "--no-default-features"])
        .args(["-e", "normal,dev", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    let tree = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |name: &str| tree.lines().any(|l| l.starts_with(&format!("{name} v")));
    assert!(has("siamese-infer"), "{tree}");
    for heavy in ["siamese-train", "plotters", "indicatif", "clap", "toml"] {
        assert!(!has(heavy), "{heavy} is built for the examples:\n{tree}");
    }
    Ok(())
}
