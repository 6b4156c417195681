//! Starting a run from a trained model's weights (`siamese train --init MODEL`) instead of
//! random ones.
//!
//! The run's encoder is the init model's (architecture, sizes, embedding, normalisation), and
//! so are its preprocessing, distance and test-time augmentation: [`Init::configure`] sets
//! them, [`Init::check`] refuses a configuration that differs. A face model
//! (`Model::import_dlib`) stays one: the written model keeps its detector, landmark predictor
//! and `siamese.face` settings, so the fine-tuned file detects and aligns faces as before
//! (its training images must be the chips of that pipeline: `Model::face_cache`). Every
//! written model records the init model in [`Provenance::init`](crate::Provenance).
//!
//! Distance: the run trains, validates and calibrates in the init model's distance (a face
//! model's is the Euclidean distance, not squared), so the stored threshold is a distance in
//! the same units that `verify` and `identify` compare with it.

use std::path::Path;

use candle_core::Tensor;
use siamese_encoder::Encoder;
use siamese_infer::model::model_bytes;
use siamese_infer::{Model, ModelMeta};

use crate::config::TrainConfig;

/// The learning rate of a fine-tuning run when none is given.
pub const FINETUNE_LR: f64 = 1e-4;
/// Its warm-up steps (at most).
pub const FINETUNE_WARMUP: u64 = 20;
use crate::error::{Result, TrainError};

/// The model a run starts from.
#[derive(Debug)]
pub struct Init {
    /// The model (its encoder's weights are copied into the run's encoder).
    pub model: Model,
    /// What the provenance says of it: the file's name and where the model came from.
    pub description: String,
}

impl Init {
    /// The model at `path`, described by its file name, its recipe and its fingerprint.
    pub fn load(path: &Path, device: &candle_core::Device) -> Result<Init> {
        let model = Model::load(path, device)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let description = format!(
            "{name} ({}; weights {})",
            model
                .meta
                .provenance
                .recipe
                .as_deref()
                .unwrap_or("trained model"),
            model.fingerprint()?
        );
        Ok(Init { model, description })
    }

    /// Whether the init model is a face model (training images must then be its chips).
    pub fn is_face_model(&self) -> bool {
        self.model.is_face_model()
    }

    /// Makes `config` train the init model's encoder: its encoder configuration,
    /// preprocessing, distance and test-time augmentation.
    pub fn configure(&self, config: &mut TrainConfig) {
        config.encoder = self.model.encoder.config().clone();
        config.preprocess = self.model.meta.preprocess.clone();
        config.distance = self.model.meta.distance;
        config.tta = self.model.meta.tta;
    }

    /// The settings a fine-tuning run takes where the user chose none: a small learning rate
    /// (`FINETUNE_LR`, 1e-4, with at most `FINETUNE_WARMUP`, 20, warm-up steps) unless `lr_given`;
    /// batch-hard triplets at `margin` (0.2 if `None`) and no proxy loss unless `loss_given`;
    /// and, for a face model, no affine or elastic distortion (its chips are aligned already).
    pub fn fine_tune_defaults(
        &self,
        config: &mut TrainConfig,
        lr_given: bool,
        loss_given: bool,
        margin: Option<f64>,
    ) {
        if !lr_given {
            config.schedule.lr = FINETUNE_LR;
            config.schedule.warmup_steps = config.schedule.warmup_steps.min(FINETUNE_WARMUP);
        }
        if !loss_given {
            config.loss = crate::config::LossConfig::Triplet {
                margin: margin.unwrap_or(0.2),
                mining: siamese_pairs::Mining::BatchHard,
            };
            config.proxy = None;
        }
        if self.is_face_model() {
            config.augment.affine = false;
            config.augment.elastic = 0.0;
        }
    }

    /// Refuses a configuration whose encoder, preprocessing, distance or test-time
    /// augmentation is not the init model's.
    pub fn check(&self, config: &TrainConfig) -> Result<()> {
        let m = &self.model;
        let differs = |what: &str| {
            Err(TrainError::Config(format!(
                "the configuration's {what} is not that of the init model {}",
                self.description
            )))
        };
        if &config.encoder != m.encoder.config() {
            return differs("encoder");
        }
        if config.preprocess != m.meta.preprocess {
            return differs("preprocessing");
        }
        if config.distance != m.meta.distance {
            return differs("distance");
        }
        if config.tta != m.meta.tta {
            return differs("test-time augmentation");
        }
        Ok(())
    }

    /// Copies the init model's weights and buffers into `encoder` (built from the same
    /// configuration), checking that every tensor has a counterpart of the same shape.
    pub fn load_into(&self, encoder: &Encoder) -> Result<()> {
        let from: std::collections::HashMap<&str, &Tensor> = self
            .model
            .encoder
            .params()
            .all()
            .map(|(n, v)| (n.as_str(), v.as_tensor()))
            .collect();
        let mut used = 0;
        for (name, var) in encoder.params().all() {
            let Some(t) = from.get(name.as_str()) else {
                return Err(TrainError::Config(format!(
                    "init model {}: no tensor `{name}`",
                    self.description
                )));
            };
            if t.dims() != var.dims() {
                return Err(TrainError::Config(format!(
                    "init model {}: `{name}` is {:?}, the encoder's is {:?}",
                    self.description,
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
            used += 1;
        }
        if used != from.len() {
            return Err(TrainError::Config(format!(
                "init model {}: {} tensors, the encoder has {used}",
                self.description,
                from.len()
            )));
        }
        Ok(())
    }

    /// The bytes of a model file of `encoder` with `meta`: a face model again when the init
    /// model is one (its detector, landmarks and face settings), a plain model otherwise.
    pub(crate) fn model_bytes(
        init: Option<&Init>,
        encoder: &Encoder,
        meta: &ModelMeta,
        extra: &[(String, Tensor)],
    ) -> Result<Vec<u8>> {
        match init.and_then(|i| i.model.face.as_ref()) {
            Some(face) => Ok(face.model_bytes(encoder, meta, extra)?),
            None => Ok(model_bytes(encoder, meta, extra)?),
        }
    }
}
