//! The inference crate end to end on real pictures (`../shared/data/att_faces`) with freshly
//! initialised encoders: nothing here trains, so the checks are about plumbing (files,
//! errors, decisions, identical representations), not accuracy.

use anyhow::Result;
use candle_core::Device;
use siamese_data::{Dataset, LfwPairs, OneShotRuns, Preprocess};
use siamese_encoder::{Architecture, Encoder, EncoderConfig};
use siamese_infer::{
    eval_pairs, eval_runs, eval_unseen, Calibration, Embeddings, Gallery, InferError, Model,
    ModelMeta, Provenance, Tta, UnseenOptions, Verdict, Verifier,
};
use siamese_ops::distance::Distance;
use std::path::{Path, PathBuf};

fn att() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/att_faces")
}

fn face(subject: usize, k: usize) -> PathBuf {
    att().join(format!("s{subject}/{k}.pgm"))
}

/// A conv4 on 28×24 grey faces, initialised from `seed`, calibrated at `threshold`.
fn model(seed: u64, threshold: Option<f32>, tta: Tta) -> Result<Model> {
    let mut cfg = EncoderConfig::for_arch(Architecture::conv4(), 1, 28, 24);
    cfg.l2_normalize = true;
    Ok(Model {
        encoder: Encoder::new(&cfg, seed, &Device::Cpu)?,
        meta: ModelMeta {
            preprocess: Preprocess::new(1, 24, 28),
            distance: Distance::SquaredL2,
            calibration: threshold.map(|threshold| Calibration {
                threshold,
                accuracy: 0.9,
                far: 0.1,
                frr: 0.1,
                pairs: 10,
                source: "test".into(),
            }),
            provenance: Provenance::default(),
            tta,
        },
        extra: Vec::new(),
        face: None,
    })
}

/// Copies images `ks` of subjects `subjects` into `dir/sN/`.
fn copy_faces(dir: &Path, subjects: &[usize], ks: &[usize]) -> Result<()> {
    for &s in subjects {
        std::fs::create_dir_all(dir.join(format!("s{s}")))?;
        for &k in ks {
            std::fs::copy(face(s, k), dir.join(format!("s{s}/{k}.pgm")))?;
        }
    }
    Ok(())
}

#[test]
fn a_saved_model_verifies_at_its_threshold() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("m.safetensors");
    model(1, Some(0.5), Tta::Hflip)?.save(&path)?;
    let m = Model::load(&path, &Device::Cpu)?;
    let rows = m.embed_paths(&[face(1, 1), face(2, 1)])?;
    assert_eq!(rows.len(), 2 * m.row_len());
    assert_eq!(m.embedding_shape(2), vec![2, 128]);
    let v = Verifier::new(m, None)?;
    assert_eq!(v.threshold(), 0.5);
    let own = v.verify(face(1, 1), face(1, 1))?;
    assert_eq!(own, Verdict::at(0.0, 0.5));
    assert!(own.same);
    let other = v.verify(face(1, 1), face(2, 1))?;
    let r = v.model().row_len();
    assert_eq!(other.distance, v.model().distance(&rows[..r], &rows[r..]));
    assert_eq!(other.same, other.distance < 0.5);
    assert_eq!(v.verify_rows(&rows[..r], &rows[r..]), other);

    // A threshold given wins; one out of range is refused; no threshold at all is an error.
    let m = v.into_model();
    let v = Verifier::new(m, Some(0.0))?;
    assert!(!v.verify(face(1, 1), face(1, 1))?.same, "0 < 0 is false");
    let m = v.into_model();
    assert!(matches!(
        Verifier::new(m, Some(f32::NAN)),
        Err(InferError::Threshold(_))
    ));
    assert!(matches!(
        Verifier::new(model(1, None, Tta::None)?, None),
        Err(InferError::NoThreshold)
    ));
    // An image that is not one is named.
    let bad = dir.path().join("bad.pgm");
    std::fs::write(&bad, b"P5 not really")?;
    let v = Verifier::new(model(1, Some(0.5), Tta::None)?, None)?;
    let err = v
        .verify(&bad, face(1, 1))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.pgm"), "{err}");
    // So is a file that is not a model.
    let err = Model::load(&bad, &Device::Cpu)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.pgm"), "{err}");
    Ok(())
}

#[test]
fn a_gallery_enrols_saves_opens_and_identifies() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("known");
    copy_faces(&folder, &[1, 2, 3], &[1, 2, 3])?;
    let m = model(2, Some(0.5), Tta::None)?;
    let g = Gallery::enrol(&m, &folder)?;
    assert_eq!(g.identities(), ["s1", "s2", "s3"]);
    assert_eq!((g.len(), g.row_len(), g.labels()[4]), (9, 128, 1));
    let path = dir.path().join("g.safetensors");
    g.save(&path)?;
    let opened = Gallery::open(&path, &m)?;
    assert_eq!(opened.rows(), g.rows());
    assert_eq!(opened.meta(), g.meta());

    // An enrolled image finds itself at distance 0 (up to rounding: the matrix products of
    // a batch of 2 and of 9 may sum in other orders); at threshold 0 nothing is below it.
    let probes = [folder.join("s2/3.pgm"), face(4, 1)];
    let ids = opened.identify(&m, &probes, 2, None)?;
    assert_eq!(ids[0].name(), "s2");
    assert_eq!(ids[0].candidates.len(), 2);
    assert!(ids[0].candidates[0].distance < 1e-6, "{:?}", ids[0]);
    assert_eq!(ids[0].threshold, Some(0.5));
    let strict = opened.identify(&m, &probes, 1, Some(0.0))?;
    assert_eq!(
        (strict[0].identity.as_deref(), strict[0].name()),
        (None, "unknown")
    );
    // The ranking is the rank-1 rule: each identity at its nearest enrolled image.
    let e = opened.embed_probes(&m, &probes[1..])?;
    let ranked = opened.rank(&e, 3)?;
    for c in &ranked[0] {
        let nearest = (0..opened.len())
            .filter(|&i| opened.identities()[opened.labels()[i]] == c.identity)
            .map(|i| m.distance(&e, &opened.rows()[i * 128..(i + 1) * 128]))
            .fold(f32::INFINITY, f32::min);
        assert!((c.distance - nearest).abs() < 1e-5, "{c:?} vs {nearest}");
    }

    // Another model is refused, naming the gallery.
    match Gallery::open(&path, &model(3, Some(0.5), Tta::None)?) {
        Err(e @ InferError::OtherModel { .. }) => {
            assert!(e.to_string().contains("g.safetensors"), "{e}")
        }
        other => panic!("expected OtherModel, got {other:?}"),
    }
    // A file that is not a gallery is refused, naming it.
    let fake = dir.path().join("fake.safetensors");
    std::fs::write(&fake, b"definitely not a gallery")?;
    let err = Gallery::open(&fake, &m)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fake.safetensors") && err.contains("not a gallery"),
        "{err}"
    );
    // An empty folder is an error naming it.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let err = Gallery::enrol(&m, &empty)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
    Ok(())
}

/// A gallery remembers its test-time augmentation, and probes are encoded with it whatever
/// the model's: an enrolled image is at distance 0 (up to rounding). A gallery written before the
/// augmentation was recorded (no `tta` key) opens with the model's own.
#[test]
fn probes_are_encoded_as_the_gallery_was() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("known");
    copy_faces(&folder, &[5, 6], &[1, 2])?;
    let mut m = model(4, None, Tta::AffineSet(4))?;
    let g = Gallery::enrol(&m, &folder)?;
    assert_eq!((g.row_len(), g.tta()), (4 * 128, Tta::AffineSet(4)));
    let path = dir.path().join("set.safetensors");
    g.save(&path)?;
    m.meta.tta = Tta::None;
    let opened = Gallery::open(&path, &m)?;
    let ids = opened.identify(&m, &[folder.join("s6/2.pgm")], 1, None)?;
    assert_eq!(ids[0].name(), "s6");
    assert!(ids[0].candidates[0].distance < 1e-6, "{:?}", ids[0]);
    assert_eq!(ids[0].threshold, None);

    // The same rows and metadata without the `tta` key, as older galleries were written.
    let plain = Gallery::enrol(&m, &folder)?;
    let mut meta = serde_json::to_value(plain.meta())?;
    meta.as_object_mut().map(|o| o.remove("tta"));
    let rows = candle_core::Tensor::from_slice(plain.rows(), (plain.len(), 128), &Device::Cpu)?;
    let header = [("siamese.gallery".to_string(), meta.to_string())].into();
    let old = dir.path().join("old.safetensors");
    std::fs::write(
        &old,
        safetensors::serialize([("embeddings", &rows)], Some(header))?,
    )?;
    let opened = Gallery::open(&old, &m)?;
    assert_eq!((opened.tta(), opened.rows()), (Tta::None, plain.rows()));
    Ok(())
}

#[test]
fn embeddings_files_hold_shape_and_paths() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let m = model(5, None, Tta::AffineSet(3))?;
    let paths = [face(7, 1), face(8, 1)];
    let e = Embeddings::of_paths(&m, &paths)?;
    assert_eq!(e.shape, vec![2, 3, 128]);
    let npy = e.to_npy();
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    assert!(String::from_utf8_lossy(&npy[10..10 + header_len]).contains("'shape': (2, 3, 128)"));
    let path = dir.path().join("e.safetensors");
    e.save(&path)?;
    let bytes = std::fs::read(&path)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let names: Vec<String> = serde_json::from_str(
        &meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("paths"))
            .cloned()
            .unwrap_or_default(),
    )?;
    assert_eq!(names, paths.map(|p| p.display().to_string()));
    assert!(Embeddings::new(vec![0.0; 5], vec![2, 3], Vec::new()).is_err());
    Ok(())
}

#[test]
fn protocols_report_on_small_sets() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let m = model(6, Some(0.5), Tta::None)?;

    // unseen: 5 subjects × 10 images.
    let data = Dataset::open(att())?;
    let sel = siamese_data::parse_class_selection("s1-s5")?;
    let data = data.classes_matching(&sel)?;
    let opts = UnseenOptions {
        episodes: 20,
        shots: 3,
        ..UnseenOptions::default()
    };
    let u = eval_unseen(&m, &data, &opts)?;
    let s = u.report.summary();
    assert_eq!((s.images, s.classes, s.n, s.ways), (50, 5, 1225, 5));
    assert!(s.accuracy.is_some() && s.rank1.is_some());
    assert_eq!(u.embedded.len(), 50);

    // one-shot runs whose test items are copies of their classes' training images: every
    // item is at distance 0 from its own class, so all are right.
    let runs = dir.path().join("runs/run01");
    std::fs::create_dir_all(runs.join("training"))?;
    std::fs::create_dir_all(runs.join("test"))?;
    let mut labels = String::new();
    for c in 1..=4 {
        std::fs::copy(
            face(c + 10, 1),
            runs.join(format!("training/class{c:02}.png")),
        )?;
        std::fs::copy(
            face(c + 10, 1),
            runs.join(format!("test/item{:02}.png", 5 - c)),
        )?;
        labels.push_str(&format!(
            "run01/test/item{:02}.png run01/training/class{c:02}.png\n",
            5 - c
        ));
    }
    std::fs::write(runs.join("class_labels.txt"), labels)?;
    let r = eval_runs(&m, &OneShotRuns::open(dir.path().join("runs"))?)?;
    assert_eq!((r.accuracy, r.n, r.runs.len()), (1.0, 4, 1));

    // LFW-style pairs, 2 folds: matched pairs are one image twice (distance 0), so every
    // matched pair is nearer than every mismatched one.
    let lfw = dir.path().join("lfw");
    for i in 21..=24 {
        std::fs::create_dir_all(lfw.join(format!("s{i}")))?;
        for k in 1..=2 {
            std::fs::copy(face(i, k), lfw.join(format!("s{i}/s{i}_{k:04}.jpg")))?;
        }
    }
    let text = "2\t2\ns21\t1\t1\ns22\t2\t2\ns21\t1\ts22\t1\ns23\t1\ts24\t2\n\
                s23\t2\t2\ns24\t1\t1\ns24\t1\ts21\t2\ns22\t1\ts23\t1\n";
    let pairs = LfwPairs::parse(text, "pairs.txt")?;
    let p = eval_pairs(&m, &pairs, &lfw, None)?;
    assert_eq!((p.n, p.folds, p.auc, p.eer), (8, 2, 1.0, 0.0));
    assert!(p.std.is_some() && p.dev_threshold.is_none());
    let p = eval_pairs(&m, &pairs, &lfw, Some(&pairs))?;
    assert_eq!(p.accuracy, 1.0);
    assert!(p.dev_threshold.is_some());
    Ok(())
}
