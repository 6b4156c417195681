//! Checkpoints: weights, optimiser state, RNG state and step in one safetensors file, written
//! atomically, so a resumed run continues exactly as the uninterrupted one would have.

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::eval::ValidationReport;
use crate::fsutil::write_atomic;
use crate::optim::Optimizer;
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use siamese_encoder::Encoder;
use siamese_infer::checksum::{TensorDigest, CHECKSUM_KEY};
use std::collections::HashMap;
use std::path::Path;

/// Metadata key of the checkpoint state (JSON of [`CheckpointState`]).
pub const CHECKPOINT_KEY: &str = "siamese.checkpoint";

/// The most steps a checkpoint may claim (a billion: years of training at any speed).
pub const MAX_CHECKPOINT_STEPS: u64 = 1_000_000_000;

/// Everything of a run besides its tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The configuration of the run.
    pub config: TrainConfig,
    /// Updates made.
    pub step: u64,
    /// Wall-clock seconds trained.
    pub wall_seconds: f64,
    /// The sampler's random state after `step` updates.
    pub rng: ChaCha8Rng,
    /// Loss of every step so far.
    pub losses: Vec<f32>,
    /// Validation of the best model so far and its step.
    pub best: Option<(ValidationReport, u64)>,
}

impl CheckpointState {
    /// Checks what a checkpoint file claims against what a run can have made: at most
    /// [`MAX_CHECKPOINT_STEPS`] steps, one loss per step, finite non-negative seconds, a best
    /// step among the steps made, and a configuration that validates.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.step > MAX_CHECKPOINT_STEPS {
            return Err(format!(
                "it claims step {}, over the limit of {MAX_CHECKPOINT_STEPS}",
                self.step
            ));
        }
        if self.losses.len() as u64 != self.step {
            return Err(format!(
                "it claims step {} but holds {} losses",
                self.step,
                self.losses.len()
            ));
        }
        if !(self.wall_seconds.is_finite() && self.wall_seconds >= 0.0) {
            return Err(format!(
                "it claims {} seconds of training",
                self.wall_seconds
            ));
        }
        if let Some((_, best)) = &self.best {
            if *best == 0 || *best > self.step {
                return Err(format!(
                    "its best step {best} is not one of its {} steps",
                    self.step
                ));
            }
        }
        self.config
            .validate()
            .map_err(|e| format!("its configuration: {e}"))
    }

    /// The state before the first step.
    pub fn new(config: &TrainConfig) -> Self {
        Self {
            config: config.clone(),
            step: 0,
            wall_seconds: 0.0,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            losses: Vec::new(),
            best: None,
        }
    }
}

/// A checkpoint in memory.
#[derive(Debug)]
pub struct Checkpoint {
    /// Step, RNG, losses, config.
    pub state: CheckpointState,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Captures the current weights, buffers, head and optimiser state.
    pub fn capture(
        encoder: &Encoder,
        head: &[(String, Var)],
        optimizer: &Optimizer,
        state: &CheckpointState,
    ) -> Result<Self> {
        let mut tensors = HashMap::new();
        for (name, var) in encoder.params().all().chain(head.iter()) {
            tensors.insert(name.clone(), var.as_tensor().copy()?);
        }
        let (opt, _) = optimizer.state()?;
        tensors.extend(opt);
        Ok(Self {
            state: state.clone(),
            tensors,
        })
    }

    /// Writes the checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string(&self.state)
            .map_err(|e| TrainError::Config(format!("checkpoint state to JSON: {e}")))?;
        let mut meta = HashMap::new();
        meta.insert(CHECKPOINT_KEY.to_string(), json);
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        // The tensors' checksum, as `siamese_infer::checksum::verify_safetensors` recomputes it.
        let mut digest = TensorDigest::new();
        for name in &names {
            if let Some(t) = self.tensors.get(*name) {
                use safetensors::View;
                digest.tensor(name, &View::dtype(t).to_string(), t.dims());
                digest.bytes(&View::data(t));
            }
        }
        meta.insert(CHECKSUM_KEY.to_string(), digest.finish());
        let bytes = safetensors::serialize(
            names
                .iter()
                .filter_map(|n| self.tensors.get(*n).map(|t| (n.as_str(), t))),
            Some(meta),
        )
        .map_err(|e| TrainError::bad_file(path, format!("cannot serialise checkpoint: {e}")))?;
        write_atomic(path, &bytes)
    }

    /// Reads a checkpoint; errors name the file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let meta = siamese_encoder::io::read_metadata(&bytes)
            .map_err(|e| TrainError::bad_file(path, e))?;
        let Some(json) = meta.get(CHECKPOINT_KEY) else {
            return Err(TrainError::bad_file(
                path,
                "not a siamese checkpoint (no checkpoint state in the metadata)",
            ));
        };
        let state: CheckpointState = serde_json::from_str(json)
            .map_err(|e| TrainError::bad_file(path, format!("bad checkpoint state: {e}")))?;
        state
            .validate()
            .map_err(|e| TrainError::bad_file(path, format!("not a usable checkpoint: {e}")))?;
        siamese_infer::checksum::verify_safetensors(path, &bytes)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| TrainError::bad_file(path, e))?;
        Ok(Self { state, tensors })
    }

    /// Puts the saved tensors back into the encoder, head and optimiser. The run's
    /// configuration must equal the checkpoint's, except for the budget.
    pub fn restore(
        &self,
        path: &Path,
        config: &TrainConfig,
        encoder: &Encoder,
        head: &[(String, Var)],
        optimizer: &mut Optimizer,
    ) -> Result<()> {
        let mut a = config.clone();
        a.budget = Default::default();
        let mut b = self.state.config.clone();
        b.budget = Default::default();
        if a != b {
            return Err(TrainError::bad_file(
                path,
                "the checkpoint was made with a different configuration (architecture, loss, data preprocessing, seed or schedule); resume with the same flags",
            ));
        }
        for (name, var) in encoder.params().all().chain(head.iter()) {
            let Some(t) = self.tensors.get(name) else {
                return Err(TrainError::bad_file(
                    path,
                    format!("tensor `{name}` is missing"),
                ));
            };
            if t.dims() != var.dims() {
                return Err(TrainError::bad_file(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
            var.set(t)?;
        }
        optimizer
            .load_state(&self.tensors, self.state.step)
            .map_err(|e| TrainError::bad_file(path, e))?;
        Ok(())
    }
}
