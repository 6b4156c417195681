//! Library-level end to end: synthetic data → train → model file → load → verify, through the
//! facade crate only, as a library user would.

use siamese::data::{synthetic, ImageCache, SplitSize};
use siamese::train::{default_paths, eval, Model, RunOptions, TrainConfig, TrainData};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[test]
fn train_save_load_and_verify_on_synthetic_glyphs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = synthetic(16, 12, 28, 3);
    let (train, val) = data.class_disjoint_split(3, SplitSize::Count(4))?;
    let mut config = TrainConfig::recipe("demo")?;
    config.budget.steps = Some(60);
    config.validation.every = 30;
    let load = |d| -> anyhow::Result<ImageCache> {
        Ok(ImageCache::load_all(d, &config.preprocess, false)?.0)
    };
    let td = TrainData {
        train: load(&train)?,
        validation: Some(load(&val)?),
        sources: vec!["synthetic".into()],
    };
    let out = dir.path().join("m.safetensors");
    let (checkpoint, report_dir) = default_paths(&out);
    let opts = RunOptions {
        out: out.clone(),
        checkpoint,
        report_dir,
        resume: None,
        stop: Arc::new(AtomicBool::new(false)),
        recipe: Some("demo".into()),
        stop_after: None,
    };
    let summary = siamese::train::train(
        &config,
        &td,
        &opts,
        &candle_core::Device::Cpu,
        &mut siamese::train::Silent,
    )?;
    assert_eq!(summary.steps, 60);
    assert_eq!(summary.losses.len(), 60);
    let model = Model::load(&out, &candle_core::Device::Cpu)?;
    let cal = model
        .meta
        .calibration
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no calibration"))?;
    assert!(cal.threshold > 0.0 && cal.accuracy > 0.5);
    assert_eq!(model.meta.provenance.steps, summary.best_step);

    // On the held-out classes, same-class pairs are closer than different-class ones.
    let val_cache = &td
        .validation
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no validation"))?;
    let e = eval::embed(&model, val_cache)?;
    let r = eval::unseen(&e, model.matcher(), model.threshold(), 4, 200, 1, 0)?;
    assert!(r.verification.auc > 0.8, "AUC {}", r.verification.auc);
    Ok(())
}
