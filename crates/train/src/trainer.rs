//! The training loop: P×K batches, loss, backward, optimiser step, validation on held-out
//! classes, calibration, checkpoints, exact resume, progress and the metrics log.

use crate::batch::TrainSet;
use crate::checkpoint::{Checkpoint, CheckpointState};
use crate::config::{LossConfig, TrainConfig};
use crate::ema::{with_average, Ema};
use crate::error::{Result, TrainError};
use crate::eval::{self, ValidationReport};
use crate::fsutil::write_atomic;
use crate::init::Init;
use crate::optim::Optimizer;
use crate::report;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use siamese_data::ImageCache;
use siamese_encoder::Encoder;
use siamese_infer::{Calibration, Model, ModelMeta, Provenance};
use siamese_ops::nn::{set_matmul_precision, MatmulPrecision};
use siamese_pairs::{BceHead, LossOutput, PkSampler};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The images of a run: training classes and, optionally, held-out validation classes.
#[derive(Debug)]
pub struct TrainData {
    /// Training images.
    pub train: ImageCache,
    /// Validation images of classes not in `train` (used for model selection and calibration).
    pub validation: Option<ImageCache>,
    /// Names of the data sets, for the provenance.
    pub sources: Vec<String>,
}

/// Where a run writes and how it behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The model file to write (the best model so far, calibrated).
    pub out: PathBuf,
    /// The checkpoint file (written every `checkpoint_every` steps and on interruption).
    pub checkpoint: PathBuf,
    /// The report folder (metrics log, plots, JSON summary).
    pub report_dir: PathBuf,
    /// Continue from this checkpoint.
    pub resume: Option<PathBuf>,
    /// Set from outside (Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// The recipe name, for the provenance.
    pub recipe: Option<String>,
    /// Stop after this many steps of this invocation (for tests of resume).
    pub stop_after: Option<u64>,
}

/// What a training run tells its caller as it goes. The library prints nothing: the CLI's
/// observer draws the progress bar and prints the validation lines, a program that trains
/// from code may pass [`Silent`] or its own.
pub trait Observer {
    /// The run starts: its length in steps when known, else its time budget in seconds.
    fn start(&mut self, _total_steps: Option<u64>, _seconds: Option<f64>) {}
    /// Something a person should read: a setting adjusted, a resumed run, early stopping.
    fn note(&mut self, _message: &str) {}
    /// A step was made: its log line (`validation` set when it validated) and the seconds
    /// trained so far, this and earlier invocations together.
    fn step(&mut self, _line: &LogLine, _elapsed: f64) {}
    /// The loop ended (finished, stopped, or failed); called once.
    fn finish(&mut self) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {}

/// One line of the metrics log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogLine {
    /// Step number (1-based: the update just made).
    pub step: u64,
    /// Loss of that step's batch.
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Fraction of active pairs or triplets.
    pub active: f32,
    /// Training images per second so far.
    pub images_per_sec: f64,
    /// Validation metrics, when validated at this step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationReport>,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Updates made in total.
    pub steps: u64,
    /// Wall-clock seconds of training in total.
    pub wall_seconds: f64,
    /// Training images per second.
    pub images_per_sec: f64,
    /// Loss of each step, in order (of this and earlier invocations, when resumed).
    pub losses: Vec<f32>,
    /// Validation of the kept model.
    pub best: Option<ValidationReport>,
    /// Step of the kept model.
    pub best_step: u64,
    /// The calibration stored in the model.
    pub calibration: Option<Calibration>,
    /// The model file written.
    pub model: PathBuf,
    /// The report folder.
    pub report_dir: PathBuf,
}

fn metric_value(v: &ValidationReport, metric: &str) -> f64 {
    match metric {
        "auc" => v.auc,
        "eer" => -v.eer,
        // Always keep the latest validated model (small validation sets are too noisy to pick by).
        "last" => f64::INFINITY,
        _ => v.oneshot_accuracy,
    }
}

/// Trains an encoder as `config` says on `data`, writing the model, checkpoints and report;
/// `observer` hears of the progress.
pub fn train(
    config: &TrainConfig,
    data: &TrainData,
    opts: &RunOptions,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<TrainSummary> {
    train_from(config, data, opts, None, device, observer)
}

/// [`train`], starting from the weights of `init` when given (its configuration must be the
/// init model's: [`Init::configure`]); the written model keeps a face model's pipeline and
/// names the init model in its provenance.
pub fn train_from(
    config: &TrainConfig,
    data: &TrainData,
    opts: &RunOptions,
    init: Option<&Init>,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<TrainSummary> {
    let result = train_observed(config, data, opts, init, device, observer);
    observer.finish();
    result
}

fn train_observed(
    config: &TrainConfig,
    data: &TrainData,
    opts: &RunOptions,
    init: Option<&Init>,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<TrainSummary> {
    config.validate()?;
    if let Some(i) = init {
        i.check(config)?;
    }
    let precision = if config.bf16 {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::F32
    };
    set_matmul_precision(precision).map_err(|e| TrainError::Config(format!("bf16: {e}")))?;
    let set = TrainSet::new(
        &data.train,
        config.rotations_as_classes,
        config.mirrors_as_classes,
    )?;
    let labels32: Vec<u32> = set.labels.iter().map(|&l| l as u32).collect();
    // Small data sets: draw from as many classes as have two images, rather than fail.
    let usable = {
        let mut counts = std::collections::HashMap::new();
        for l in &labels32 {
            *counts.entry(*l).or_insert(0usize) += 1;
        }
        counts.values().filter(|c| **c >= 2).count()
    };
    if usable < 2 {
        return Err(TrainError::Config(format!(
            "training needs at least 2 classes with 2 or more images; the training split has {usable}"
        )));
    }
    let p = config.classes_per_batch.min(usable);
    if p < config.classes_per_batch {
        observer.note(&format!(
            "{} classes per batch asked, but only {usable} training classes have 2 or more images; using {p}",
            config.classes_per_batch
        ));
    }
    let sampler = match config.groups_per_batch {
        None => PkSampler::new(&labels32, p, config.images_per_class)?,
        Some(g) => {
            let group = set.groups();
            PkSampler::grouped(&labels32, p, config.images_per_class, g, |l| {
                group[l as usize]
            })?
        }
    };
    let batch_size = p * config.images_per_class;
    let total_steps = total_steps(config, set.labels.len(), batch_size);

    let encoder = Encoder::new(&config.encoder, config.seed, device)?;
    if let Some(i) = init {
        i.load_into(&encoder)?;
    }
    let head_map = VarMap::new();
    let head = match config.loss {
        LossConfig::Bce => Some(BceHead::load(
            config.encoder.embedding_dim,
            candle_nn::VarBuilder::from_varmap(&head_map, DType::F32, device),
        )?),
        _ => None,
    };
    let mut vars: Vec<(String, Var)> = encoder.params().trainable().to_vec();
    let mut head_vars: Vec<(String, Var)> = head_map
        .data()
        .lock()
        .map_err(|_| TrainError::Config("head parameters are poisoned".into()))?
        .iter()
        .map(|(n, v)| (format!("head.{}", n.trim_start_matches("head.")), v.clone()))
        .collect();
    head_vars.sort_by(|a, b| a.0.cmp(&b.0));
    let proxy_vars = proxy_vars(config, set.classes(), device)?;
    let proxies: Vec<Var> = proxy_vars.iter().map(|(_, v)| v.clone()).collect();
    // The proxies are checkpointed with the head, but only `head.*` goes into the model file.
    head_vars.extend(proxy_vars);
    vars.extend(head_vars.iter().cloned());
    let mut optimizer = Optimizer::new(config.optimizer.clone(), vars);
    // The weight average, if any, is checkpointed with the head (and kept out of the model
    // file, which takes only `head.*` from that list).
    let ema = config.ema.map(|d| Ema::new(&encoder, d)).transpose()?;
    if let Some(e) = &ema {
        head_vars.extend(e.named().iter().cloned());
    }

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut state = CheckpointState::new(config);
    if let Some(path) = &opts.resume {
        let ck = Checkpoint::load(path, device)?;
        ck.restore(path, config, &encoder, &head_vars, &mut optimizer)?;
        rng = ck.state.rng.clone();
        state = ck.state;
        observer.note(&format!(
            "resumed from {} at step {} ({:.0} s trained)",
            path.display(),
            state.step,
            state.wall_seconds
        ));
    }

    std::fs::create_dir_all(&opts.report_dir).map_err(|e| TrainError::io(&opts.report_dir, e))?;
    let log_path = opts.report_dir.join("metrics.jsonl");
    if opts.resume.is_some() {
        drop_log_lines_after(&log_path, state.step)?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(opts.resume.is_some())
        .write(true)
        .truncate(opts.resume.is_none())
        .open(&log_path)
        .map_err(|e| TrainError::io(&log_path, e))?;

    let validation_set = data.validation.as_ref().filter(|v| v.len() > 1);
    observer.start(total_steps, config.budget.seconds);
    let start = Instant::now();
    let wall_before = state.wall_seconds;
    let steps_before = state.step;
    let mut last_checkpoint: Option<PathBuf> = opts.resume.clone();
    let mut collapsed_run = 0u32;
    let mut stale = 0usize;

    loop {
        let elapsed = wall_before + start.elapsed().as_secs_f64();
        if finished(config, state.step, total_steps, elapsed) {
            break;
        }
        if let Some(n) = opts.stop_after {
            if state.step - steps_before >= n {
                break;
            }
        }
        if opts.stop.load(Ordering::SeqCst) {
            state.wall_seconds = elapsed;
            state.rng = rng.clone();
            let ck = Checkpoint::capture(&encoder, &head_vars, &optimizer, &state)?;
            ck.save(&opts.checkpoint)?;
            return Err(TrainError::Interrupted {
                step: state.step,
                checkpoint: opts.checkpoint.clone(),
            });
        }
        let progress = match (total_steps, config.budget.seconds) {
            (Some(t), _) => state.step as f64 / t.max(1) as f64,
            (None, Some(s)) => elapsed / s,
            (None, None) => 0.0,
        };
        let lr = config.schedule.lr(state.step, progress);
        let items = sampler.batch(&mut rng);
        let aug_seed: u64 = rng.random();
        let pixels = set.assemble(&items, &config.augment, aug_seed)?;
        let c = &data.train;
        let xs = Tensor::from_vec(pixels, (items.len(), c.channels, c.height, c.width), device)?;
        let labels: Vec<u32> = items.iter().map(|&i| set.labels[i] as u32).collect();
        let (out, grads) = loss_and_grads(
            config,
            &encoder,
            &xs,
            &labels,
            head.as_ref(),
            &proxies,
            &mut rng,
        )?;
        let loss: f32 = out.loss.to_dtype(DType::F32)?.to_scalar()?;
        state.step += 1;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: state.step,
                loss,
                checkpoint: last_checkpoint,
            });
        }
        collapsed_run = if out.collapsed { collapsed_run + 1 } else { 0 };
        if collapsed_run >= 20 {
            return Err(TrainError::Collapsed {
                step: state.step,
                checkpoint: last_checkpoint,
            });
        }
        optimizer.step(&grads, lr)?;
        if let Some(e) = &ema {
            e.update(state.step)?;
        }
        state.losses.push(loss);

        let elapsed = wall_before + start.elapsed().as_secs_f64();
        let trained_images = (state.step * batch_size as u64) as f64;
        let ips = trained_images / elapsed.max(1e-9);
        let active = if out.total > 0 {
            out.active as f32 / out.total as f32
        } else {
            0.0
        };
        let mut line = LogLine {
            step: state.step,
            loss,
            lr,
            active,
            images_per_sec: ips,
            validation: None,
        };
        let last = finished(config, state.step, total_steps, elapsed);
        let validate_now =
            config.validation.every > 0 && state.step.is_multiple_of(config.validation.every);
        if validate_now || last {
            if let Some(val) = validation_set {
                let (v, kept) = with_average(ema.as_ref(), || {
                    let val = eval::embed_with(&encoder, val, config.tta)?;
                    let v = eval::validate(&val, config, config.seed ^ 0x5eed)?;
                    let score = metric_value(&v, &config.validation.metric);
                    let keep = config.validation.metric == "last"
                        || state.best.as_ref().is_none_or(|(b, _)| {
                            score > metric_value(b, &config.validation.metric)
                        });
                    if keep {
                        let cal = eval::calibrate(&val, config.matcher(), config.seed ^ 0xca1)?;
                        save_model(
                            config,
                            data,
                            opts,
                            init,
                            &encoder,
                            &head_vars,
                            state.step,
                            elapsed,
                            cal,
                            Some(&v),
                        )?;
                    }
                    Ok((v, keep))
                })?;
                if kept {
                    state.best = Some((v.clone(), state.step));
                    stale = 0;
                } else {
                    stale += 1;
                }
                line.validation = Some(v);
            }
        }
        if let Ok(text) = serde_json::to_string(&line) {
            let _ = writeln!(log, "{text}");
        }
        observer.step(&line, elapsed);

        if config.checkpoint_every > 0 && state.step.is_multiple_of(config.checkpoint_every) {
            state.wall_seconds = elapsed;
            state.rng = rng.clone();
            Checkpoint::capture(&encoder, &head_vars, &optimizer, &state)?
                .save(&opts.checkpoint)?;
            last_checkpoint = Some(opts.checkpoint.clone());
        }
        if let Some(p) = config.validation.patience {
            if stale >= p {
                observer.note(&format!(
                    "early stopping: no improvement in {p} validations"
                ));
                break;
            }
        }
    }
    let wall = wall_before + start.elapsed().as_secs_f64();
    state.wall_seconds = wall;
    state.rng = rng.clone();

    // Without held-out classes the final model is kept, calibrated on the training images.
    if state.best.is_none() {
        with_average(ema.as_ref(), || {
            let train_emb = eval::embed_with(&encoder, &data.train, config.tta)?;
            let mut cal = eval::calibrate(&train_emb, config.matcher(), config.seed ^ 0xca1)?;
            cal.source = "training classes (no held-out classes)".into();
            save_model(
                config, data, opts, init, &encoder, &head_vars, state.step, wall, cal, None,
            )
        })?;
    }
    // The kept model, read back once: its calibration and its plots on the validation classes.
    let kept = Model::load(&opts.out, device)?;
    if config.checkpoint_every > 0 {
        Checkpoint::capture(&encoder, &head_vars, &optimizer, &state)?.save(&opts.checkpoint)?;
    }
    let summary = TrainSummary {
        steps: state.step,
        wall_seconds: wall,
        images_per_sec: (state.step * batch_size as u64) as f64 / wall.max(1e-9),
        losses: state.losses.clone(),
        best: state.best.as_ref().map(|(v, _)| v.clone()),
        best_step: state.best.as_ref().map(|(_, s)| *s).unwrap_or(state.step),
        calibration: kept.meta.calibration.clone(),
        model: opts.out.clone(),
        report_dir: opts.report_dir.clone(),
    };
    report::write_training_report(&summary, &opts.report_dir)?;
    if let Some(val) = data.validation.as_ref().filter(|v| v.len() > 1) {
        let e = eval::embed(&kept, val)?;
        report::write_verification_plots(&e, kept.matcher(), kept.threshold(), &opts.report_dir)?;
    }
    Ok(summary)
}

/// One step's loss and gradients. An encoder with several members trains each member on its
/// own encoding, as if alone, and the loss is the mean of theirs, so members stay independent
/// like separately trained networks. Being independent, the members run their forward and
/// backward passes in parallel (one rayon task each): small layers keep two cores busier this
/// way than by splitting each layer between them. One member, or the BCE head (which reads
/// the whole encoding), is the plain loss of the encoding. `proxies` holds one proxy matrix
/// per member (one for the whole encoding when there is a single loss), or none.
fn loss_and_grads(
    config: &TrainConfig,
    encoder: &Encoder,
    xs: &Tensor,
    labels: &[u32],
    head: Option<&BceHead>,
    proxies: &[Var],
    rng: &mut ChaCha8Rng,
) -> Result<(LossOutput, GradStore)> {
    let k = config.encoder.members;
    if !one_loss_per_member(config) {
        let emb = candle_core::ModuleT::forward_t(encoder, xs, true)?;
        let out = compute_loss(config, &emb, labels, head, proxies.first(), rng)?;
        let grads = out.loss.backward()?;
        return Ok((out, grads));
    }
    let parts = (0..k)
        .into_par_iter()
        .map(|i| -> Result<(LossOutput, GradStore)> {
            let emb = encoder.member_forward_t(i, xs, true)?;
            // Only the BCE loss draws random numbers, and it never gets here.
            let out = compute_loss(config, &emb, labels, None, proxies.get(i), &mut rng.clone())?;
            let grads = (&out.loss / k as f64)?.backward()?;
            Ok((out, grads))
        })
        .collect::<Result<Vec<_>>>()?;
    let (outs, mut stores): (Vec<LossOutput>, Vec<GradStore>) = parts.into_iter().unzip();
    let mut grads = stores.remove(0);
    for g in stores {
        grads.extend(g)?;
    }
    let losses: Vec<Tensor> = outs.iter().map(|o| o.loss.detach()).collect();
    let mean = |f: fn(&LossOutput) -> f32| outs.iter().map(f).sum::<f32>() / k as f32;
    let out = LossOutput {
        loss: (Tensor::stack(&losses, 0)?.sum_all()? / k as f64)?,
        active: outs.iter().map(|o| o.active).sum(),
        total: outs.iter().map(|o| o.total).sum(),
        collapsed: outs.iter().all(|o| o.collapsed),
        mean_pos_dist: mean(|o| o.mean_pos_dist),
        mean_neg_dist: mean(|o| o.mean_neg_dist),
    };
    Ok((out, grads))
}

/// Whether each member of the encoder has a loss of its own (an ensemble, except under the
/// BCE head, which reads the whole encoding).
fn one_loss_per_member(config: &TrainConfig) -> bool {
    config.encoder.members > 1 && !matches!(config.loss, LossConfig::Bce)
}

/// The proxies of [`TrainConfig::proxy`], one `[classes, D]` matrix per loss (per member, or
/// one for the whole encoding), named `proxy.weight` and `proxy.m{i}.weight` like the
/// members' parameters; none without a proxy loss. Normal with variance `1 / D`, from the
/// run's seed.
fn proxy_vars(config: &TrainConfig, classes: usize, device: &Device) -> Result<Vec<(String, Var)>> {
    if config.proxy.is_none() {
        return Ok(Vec::new());
    }
    let dims = if one_loss_per_member(config) {
        config.encoder.member_dims()
    } else {
        vec![config.encoder.embedding_dim]
    };
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x9_0c5e_ed00);
    let mut normal = move || -> f32 {
        // Box–Muller: u1 in (0, 1] keeps the logarithm finite.
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    };
    dims.iter()
        .enumerate()
        .map(|(i, &d)| {
            let std = (1.0 / d as f64).sqrt() as f32;
            let values: Vec<f32> = (0..classes * d).map(|_| std * normal()).collect();
            let var = Var::from_tensor(&Tensor::from_vec(values, (classes, d), device)?)?;
            let name = if i == 0 {
                "proxy.weight".to_string()
            } else {
                format!("proxy.m{i}.weight")
            };
            Ok((name, var))
        })
        .collect()
}

/// The configured loss of one encoding, plus the weighted proxy loss when `proxies` is given.
fn compute_loss(
    config: &TrainConfig,
    emb: &Tensor,
    labels: &[u32],
    head: Option<&BceHead>,
    proxies: Option<&Var>,
    rng: &mut ChaCha8Rng,
) -> Result<LossOutput> {
    let mut out = base_loss(config, emb, labels, head, rng)?;
    if let (Some(p), Some(w)) = (&config.proxy, proxies) {
        let px = siamese_pairs::proxy_softmax(emb, w.as_tensor(), labels, p.scale)?;
        out.loss = (out.loss + (px.loss * p.weight)?)?;
    }
    Ok(out)
}

fn base_loss(
    config: &TrainConfig,
    emb: &Tensor,
    labels: &[u32],
    head: Option<&BceHead>,
    rng: &mut ChaCha8Rng,
) -> Result<LossOutput> {
    let device = emb.device();
    Ok(match &config.loss {
        LossConfig::Triplet { margin, mining } => {
            siamese_pairs::triplet(emb, labels, *margin, *mining, config.distance)?
        }
        LossConfig::Contrastive { margin } => {
            siamese_pairs::contrastive_batch(emb, labels, *margin, config.distance)?
        }
        LossConfig::Prototypical { scale } => siamese_pairs::prototypical(emb, labels, *scale)?,
        LossConfig::Bce => {
            let Some(head) = head else {
                return Err(TrainError::Config("bce loss without a head".into()));
            };
            // Every same-class pair of the batch and as many random different-class pairs.
            let n = labels.len();
            let mut a = Vec::new();
            let mut b = Vec::new();
            let mut same = Vec::new();
            for i in 0..n {
                for j in i + 1..n {
                    if labels[i] == labels[j] {
                        a.push(i as u32);
                        b.push(j as u32);
                        same.push(1f32);
                    }
                }
            }
            let positives = a.len();
            let mut guard = 0;
            while a.len() < 2 * positives && guard < 100 * n {
                guard += 1;
                let i = rng.random_range(0..n);
                let j = rng.random_range(0..n);
                if labels[i] != labels[j] {
                    a.push(i as u32);
                    b.push(j as u32);
                    same.push(0f32);
                }
            }
            let ia = Tensor::new(a.as_slice(), device)?;
            let ib = Tensor::new(b.as_slice(), device)?;
            let e1 = emb.index_select(&ia, 0)?;
            let e2 = emb.index_select(&ib, 0)?;
            let same = Tensor::new(same.as_slice(), device)?;
            head.loss(&e1, &e2, &same)?
        }
    })
}

/// Writes the model file for the encoder as it is now, with its calibration and provenance.
#[allow(clippy::too_many_arguments)]
fn save_model(
    config: &TrainConfig,
    data: &TrainData,
    opts: &RunOptions,
    init: Option<&Init>,
    encoder: &Encoder,
    head_vars: &[(String, Var)],
    step: u64,
    wall: f64,
    calibration: Calibration,
    validation: Option<&ValidationReport>,
) -> Result<()> {
    let provenance = Provenance {
        data: data.sources.clone(),
        recipe: opts.recipe.clone(),
        train_classes: data.train.classes.len(),
        train_images: data.train.len(),
        validation_classes: data
            .validation
            .as_ref()
            .map(|v| v.classes.clone())
            .unwrap_or_default(),
        seed: config.seed,
        steps: step,
        wall_seconds: wall,
        config: serde_json::to_value(config).unwrap_or(serde_json::Value::Null),
        version: env!("CARGO_PKG_VERSION").to_string(),
        validation: validation.and_then(|v| serde_json::to_value(v).ok()),
        init: init.map(|i| i.description.clone()),
    };
    let meta = ModelMeta {
        preprocess: config.preprocess.clone(),
        distance: config.distance,
        calibration: Some(calibration),
        provenance,
        tta: config.tta,
    };
    let extra: Vec<(String, Tensor)> = head_vars
        .iter()
        .filter(|(n, _)| n.starts_with("head."))
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    write_atomic(&opts.out, &Init::model_bytes(init, encoder, &meta, &extra)?)
}

/// Keeps only the metrics-log lines of steps up to `step`: after a crash the log may run past
/// the checkpoint a run resumes from, and those steps are about to be trained again.
fn drop_log_lines_after(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<LogLine>(l).is_ok_and(|line| line.step <= step))
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::fsutil::write_atomic(path, out.as_bytes())
}

/// The number of updates the budget allows, when it is given in steps or epochs.
fn total_steps(config: &TrainConfig, items: usize, batch: usize) -> Option<u64> {
    let b = &config.budget;
    let from_epochs = b
        .epochs
        .map(|e| ((e * items as f64) / batch.max(1) as f64).ceil().max(1.0) as u64);
    match (b.steps, from_epochs) {
        (Some(s), Some(e)) => Some(s.min(e)),
        (Some(s), None) => Some(s),
        (None, e) => e,
    }
}

fn finished(config: &TrainConfig, step: u64, total: Option<u64>, elapsed: f64) -> bool {
    if let Some(t) = total {
        if step >= t {
            return true;
        }
    }
    if let Some(s) = config.budget.seconds {
        if elapsed >= s {
            return true;
        }
    }
    false
}

/// Default checkpoint and report paths beside a model path: `model.ckpt`, `model-report/`.
pub fn default_paths(out: &Path) -> (PathBuf, PathBuf) {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let dir = out.parent().unwrap_or(Path::new(""));
    (
        dir.join(format!("{stem}.ckpt")),
        dir.join(format!("{stem}-report")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed batch of eight 28×28 grey images.
    fn eight_images(dev: &Device) -> Result<Tensor> {
        let pixels: Vec<f32> = (0..8 * 28 * 28)
            .map(|i| ((i * 37 % 17) as f32) / 17.0)
            .collect();
        Ok(Tensor::from_vec(pixels, (8, 1, 28, 28), dev)?)
    }

    #[test]
    fn members_train_in_parallel_on_their_own_encodings_and_the_loss_is_their_mean() -> Result<()> {
        let mut config = TrainConfig::recipe("omniglot")?;
        (config.encoder.height, config.encoder.width) = (28, 28);
        config.encoder.members = 2;
        config.encoder.taps.clear(); // taps read one network
        config.encoder.member_sizes = vec![[20, 20], [28, 28]];
        let dev = Device::Cpu;
        let encoder = Encoder::new(&config.encoder, 3, &dev)?;
        let xs = eight_images(&dev)?;
        let labels = [0u32, 0, 1, 1, 2, 2, 3, 3];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (out, grads) = loss_and_grads(&config, &encoder, &xs, &labels, None, &[], &mut rng)?;
        let got: f32 = out.loss.to_scalar()?;
        let scale = match config.loss {
            LossConfig::Prototypical { scale } => scale,
            _ => return Err(TrainError::Config("recipe loss changed".into())),
        };
        // By hand, in one graph: the whole encoding, split into the members' own encodings,
        // each member's prototypical loss, their mean.
        let emb = candle_core::ModuleT::forward_t(&encoder, &xs, true)?;
        let mut parts = Vec::new();
        let mut start = 0;
        for d in config.encoder.member_dims() {
            // The member's share, its 1/√2 undone: the member's own unit-length encoding.
            let part = (emb.narrow(1, start, d)? * 2f64.sqrt())?;
            parts.push(siamese_pairs::prototypical(&part, &labels, scale)?.loss);
            start += d;
        }
        let expected = ((&parts[0] + &parts[1])? / 2.0)?;
        let want: f32 = expected.to_scalar()?;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // The same gradients for every parameter of both members.
        let by_hand = expected.backward()?;
        let mut checked = 0;
        for (name, t) in encoder.params().all() {
            let (Some(a), Some(b)) = (grads.get(t), by_hand.get(t)) else {
                continue;
            };
            let (a, b): (Vec<f32>, Vec<f32>) =
                (a.flatten_all()?.to_vec1()?, b.flatten_all()?.to_vec1()?);
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let size = b.iter().map(|v| v.abs()).fold(1e-6f32, f32::max);
            assert!(worst <= 1e-4 * size, "{name}: {worst} against {size}");
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} parameters had gradients");
        // Not the loss of the whole encoding: the members do not see each other.
        let whole: f32 = siamese_pairs::prototypical(&emb, &labels, scale)?
            .loss
            .to_scalar()?;
        assert!((got - whole).abs() > 1e-3, "{got} vs {whole}");
        // One member: the plain loss of the encoding.
        config.encoder.members = 1;
        config.encoder.member_sizes.clear();
        let single = Encoder::new(&config.encoder, 3, &dev)?;
        let (plain, _) = loss_and_grads(&config, &single, &xs, &labels, None, &[], &mut rng)?;
        let emb = candle_core::ModuleT::forward_t(&single, &xs, true)?;
        let direct: f32 = siamese_pairs::prototypical(&emb, &labels, scale)?
            .loss
            .to_scalar()?;
        assert!((plain.loss.to_scalar::<f32>()? - direct).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn the_proxy_loss_adds_to_each_members_loss_and_trains_every_members_proxies() -> Result<()> {
        let mut config = TrainConfig::recipe("omniglot")?;
        (config.encoder.height, config.encoder.width) = (28, 28);
        config.encoder.members = 2;
        config.encoder.taps.clear(); // taps read one network
        config.encoder.member_sizes = vec![[20, 20], [28, 28]];
        config.proxy = Some(crate::config::ProxyLoss {
            weight: 0.5,
            scale: 8.0,
        });
        let dev = Device::Cpu;
        let encoder = Encoder::new(&config.encoder, 3, &dev)?;
        let classes = 6;
        let proxies = proxy_vars(&config, classes, &dev)?;
        let names: Vec<&str> = proxies.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["proxy.weight", "proxy.m1.weight"]);
        for ((_, v), d) in proxies.iter().zip(config.encoder.member_dims()) {
            assert_eq!(v.dims(), [classes, d]);
        }
        // The same seed gives the same proxies.
        let again = proxy_vars(&config, classes, &dev)?;
        let (a, b): (Vec<f32>, Vec<f32>) = (
            proxies[1].1.as_tensor().flatten_all()?.to_vec1()?,
            again[1].1.as_tensor().flatten_all()?.to_vec1()?,
        );
        assert_eq!(a, b);
        let vars: Vec<Var> = proxies.iter().map(|(_, v)| v.clone()).collect();
        let xs = eight_images(&dev)?;
        let labels = [0u32, 0, 1, 1, 5, 5, 3, 3];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (out, grads) = loss_and_grads(&config, &encoder, &xs, &labels, None, &vars, &mut rng)?;
        // By hand: each member's prototypical loss plus half its proxy loss, averaged.
        let mut want = 0.0;
        for (i, v) in vars.iter().enumerate() {
            let emb = encoder.member_forward_t(i, &xs, true)?;
            let proto: f32 = siamese_pairs::prototypical(&emb, &labels, 16.0)?
                .loss
                .to_scalar()?;
            let proxy: f32 = siamese_pairs::proxy_softmax(&emb, v.as_tensor(), &labels, 8.0)?
                .loss
                .to_scalar()?;
            assert!(proxy > 0.1, "member {i}: proxy loss {proxy}");
            want += (proto + 0.5 * proxy) / 2.0;
        }
        let got: f32 = out.loss.to_scalar()?;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Both members' proxies get gradients, on every class's row: classes 2 and 4, absent
        // from the batch, are negatives all the same.
        for (name, v) in &proxies {
            let g: Vec<Vec<f32>> = grads
                .get(v.as_tensor())
                .ok_or_else(|| TrainError::Config(format!("no gradient for {name}")))?
                .to_vec2()?;
            for (c, row) in g.iter().enumerate() {
                let norm: f32 = row.iter().map(|x| x * x).sum();
                assert!(norm > 0.0, "{name}: class {c} has no gradient");
            }
        }
        // Without a proxy loss there are no proxies.
        config.proxy = None;
        assert!(proxy_vars(&config, classes, &dev)?.is_empty());
        Ok(())
    }
}
