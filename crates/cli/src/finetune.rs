//! `train --init MODEL`: a run that starts from a trained or imported model's weights.
//!
//! The encoder, preprocessing, distance and test-time augmentation are the init model's
//! (`siamese_train::Init`); flags that would change them are a usage error naming both. Other
//! flags and the recipe work as usual, with these defaults where the flag is not given
//! (fine-tuning, not training from scratch): learning rate 1e-4 with 20 warm-up steps, and the
//! batch-hard triplet loss (margin 0.2, in the init model's distance). With a face model as
//! init, every training and validation image goes through its face pipeline first (largest
//! face, or the whole image with `--detect none`; landmarks; the aligned chip), images without
//! a face are left out and counted, and augmentation keeps flips, brightness and contrast
//! (no affine or elastic distortion: chips are already aligned). A trained model that is not
//! a face model initialises the encoder from its weights and reads images as it does.

use anyhow::Result;
use candle_core::Device;
use siamese_data::{Dataset, ImageCache};
use siamese_train::{Init, TrainConfig};

use crate::args::TrainArgs;
use crate::commands::UsageError;

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// The flags of `a` that change what `--init` fixes.
fn conflicting(a: &TrainArgs) -> Vec<&'static str> {
    [
        (a.arch.is_some(), "--arch"),
        (!a.widths.is_empty(), "--widths"),
        (a.input_size.is_some(), "--input-size"),
        (a.embedding_dim.is_some(), "--embedding-dim"),
        (a.members.is_some(), "--members"),
        (!a.member_sizes.is_empty(), "--member-sizes"),
        (!a.taps.is_empty(), "--taps"),
        (a.train_taps.is_some(), "--train-taps"),
        (a.fit_ink.is_some(), "--fit-ink"),
        (a.tta.is_some(), "--tta"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

/// The init model of `--init`, with `config` made to train it (or none without `--init`).
/// Flags that conflict with it, and face flags without a face model, are usage errors.
pub fn init(a: &TrainArgs, config: &mut TrainConfig, device: &Device) -> Result<Option<Init>> {
    let face_flags: Vec<&str> = [
        (a.face.detect.is_some(), "--detect"),
        (a.face.upsample.is_some(), "--upsample"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let Some(path) = &a.init else {
        if !face_flags.is_empty() {
            return Err(usage(format!(
                "{} apply to a face model given with --init (`siamese import dlib`)",
                face_flags.join(", ")
            )));
        }
        return Ok(None);
    };
    let init = Init::load(path, device)?;
    let c = init.model.encoder.config();
    let conflicts = conflicting(a);
    if !conflicts.is_empty() {
        return Err(usage(format!(
            "{} conflict with --init {}: the encoder and its input are the init model's \
             ({}, {}x{}x{}, {}-d, {}normalised)",
            conflicts.join(", "),
            path.display(),
            c.arch.name(),
            c.in_channels,
            c.height,
            c.width,
            c.output_dim(),
            if c.l2_normalize { "" } else { "un" }
        )));
    }
    if !init.is_face_model() && !face_flags.is_empty() {
        return Err(usage(format!(
            "{} need a face model as --init; {} reads each image whole",
            face_flags.join(", "),
            path.display()
        )));
    }
    if let Some(u) = a
        .face
        .upsample
        .filter(|&u| u > siamese_infer::faces::MAX_UPSAMPLE)
    {
        return Err(usage(format!(
            "--upsample {u}: at most {}",
            siamese_infer::faces::MAX_UPSAMPLE
        )));
    }
    init.configure(config);
    init.fine_tune_defaults(
        config,
        a.lr.is_some(),
        a.loss.is_some() || a.config.is_some(),
        a.margin,
    );
    config.validate().map_err(|e| usage(e.to_string()))?;
    eprintln!(
        "init: {} ({}, {}x{}x{}, distance {:?}); loss {:?}, lr {}",
        init.description,
        c.arch.name(),
        c.in_channels,
        c.height,
        c.width,
        config.distance,
        config.loss,
        config.schedule.lr
    );
    Ok(Some(init))
}

/// The chips of a face model's pipeline for every image of `data` that has a face; the
/// images without one are counted on stderr with the first few names.
pub fn face_cache(init: &Init, data: &Dataset, a: &TrainArgs, what: &str) -> Result<ImageCache> {
    let t = std::time::Instant::now();
    let opts = crate::faces::options(&a.face, None);
    let fc = init.model.face_cache(data, &opts)?;
    report_no_face(what, &fc.no_face);
    eprintln!(
        "{what}: {} face chips from {} images of {} classes in {:.1} s",
        fc.cache.len(),
        data.items.len(),
        data.num_classes(),
        t.elapsed().as_secs_f64()
    );
    Ok(fc.cache)
}

/// Says on stderr how many images gave no face, naming the first few.
pub fn report_no_face(what: &str, no_face: &[std::path::PathBuf]) {
    if no_face.is_empty() {
        return;
    }
    let first: Vec<String> = no_face
        .iter()
        .take(5)
        .map(|p| p.display().to_string())
        .collect();
    eprintln!(
        "{what}: {} images without a face left out: {}{}",
        no_face.len(),
        first.join(", "),
        if no_face.len() > first.len() {
            ", ..."
        } else {
            ""
        }
    );
}
