//! One function per command: parse flags into library values, call the crates, print.

use crate::args::*;
use crate::images;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use siamese_data::{parse_class_selection, Dataset, ImageCache, SplitSize};
use siamese_train::{
    default_paths, eval, report, Model, RunOptions, TrainConfig, TrainData, TrainError,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A usage error: reported with exit status 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let device = device(&cli.device)?;
    if cli.bf16 {
        siamese_ops::nn::set_matmul_precision(siamese_ops::nn::MatmulPrecision::Bf16)
            .map_err(|e| usage(format!("--bf16: {e}")))?;
    }
    match cli.command {
        Command::Train(a) => train(*a, &device, cli.bf16),
        Command::Verify(a) => verify(a, &device),
        Command::Embed(a) => embed(a, &device),
        Command::Enroll(a) => enroll(a, &device),
        Command::Identify(a) => identify(a, &device),
        Command::Eval(a) => evaluate(a, &device),
        Command::Inspect(a) => inspect(a),
        Command::Demo(a) => demo(a, &device),
    }
}

fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = n
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse)
                .map_err(|_| usage(format!("bad device `{n}`")))?;
            Device::new_cuda(ordinal).with_context(|| {
                format!("cannot open device `{n}` (is this a build with the `cuda` feature?)")
            })
        }
        other => Err(usage(format!(
            "unknown device `{other}` (expected cpu or cuda)"
        ))),
    }
}

fn load_model(path: &Path, device: &Device) -> Result<Model> {
    Ok(Model::load(path, device)?)
}

/// `--taps` as given: none, empty (`none`), or the parsed list.
fn parse_taps(taps: &[String]) -> Result<Option<Vec<siamese_encoder::Tap>>> {
    if taps.is_empty() {
        return Ok(None);
    }
    if taps.iter().any(|t| t == "none") {
        return Ok(Some(Vec::new()));
    }
    taps.iter()
        .map(|t| siamese_encoder::Tap::parse(t).map_err(|e| usage(format!("--taps: {e}"))))
        .collect::<Result<_>>()
        .map(Some)
}

/// The model with its test-time augmentation replaced by `--tta NAME`, when given.
fn with_tta(mut model: Model, tta: Option<&str>) -> Result<Model> {
    if let Some(t) = tta {
        model.meta.tta = siamese_train::Tta::from_name(t).map_err(|e| usage(e.to_string()))?;
    }
    Ok(model)
}

fn check_threshold(t: Option<f32>) -> Result<()> {
    if let Some(t) = t {
        if !t.is_finite() || t < 0.0 {
            bail!("threshold {t} is out of range: it must be a finite distance ≥ 0");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- train

fn open_data(paths: &[PathBuf], classes: Option<&str>) -> Result<Dataset> {
    let mut sets = Vec::new();
    for p in paths {
        let d =
            Dataset::open(p).with_context(|| format!("cannot read data set {}", p.display()))?;
        sets.push(d);
    }
    let mut data = Dataset::merge(sets);
    if let Some(sel) = classes {
        let sel = parse_class_selection(sel).map_err(|e| usage(e.to_string()))?;
        data = data.classes_matching(&sel)?;
    }
    if data.num_classes() < 2 {
        bail!(
            "the data has {} classes; at least 2 are needed",
            data.num_classes()
        );
    }
    Ok(data)
}

/// `HxW` of the flag `flag`, e.g. `105x105`.
fn parse_size(flag: &str, s: &str) -> Result<(usize, usize)> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| usage(format!("{flag} `{s}`: expected HxW, e.g. 105x105")))?;
    let h: usize = h
        .trim()
        .parse()
        .map_err(|_| usage(format!("{flag} `{s}`: bad height")))?;
    let w: usize = w
        .trim()
        .parse()
        .map_err(|_| usage(format!("{flag} `{s}`: bad width")))?;
    Ok((h, w))
}

fn build_config(a: &TrainArgs) -> Result<(TrainConfig, String)> {
    let recipe = match &a.recipe {
        Some(r) => r.clone(),
        None => {
            let omniglot = a.data.iter().any(|p| {
                let s = p.to_string_lossy().to_lowercase();
                s.ends_with(".zip") || s.contains("omniglot")
            });
            if omniglot { "omniglot" } else { "att-faces" }.to_string()
        }
    };
    let mut c = TrainConfig::recipe(&recipe).map_err(|e| usage(e.to_string()))?;
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        c = TrainConfig::from_toml(&text)
            .with_context(|| format!("bad configuration {}", path.display()))?;
    }
    if let Some(arch) = &a.arch {
        let keep = c.encoder.clone();
        c.encoder.arch =
            siamese_encoder::Architecture::from_name(arch).map_err(|e| usage(e.to_string()))?;
        c.encoder.l2_normalize = keep.l2_normalize;
    }
    if !a.widths.is_empty() {
        c.encoder.arch = c
            .encoder
            .arch
            .with_widths(&a.widths)
            .map_err(|e| usage(format!("--widths: {e}")))?;
    }
    if let Some(loss) = &a.loss {
        c.loss = siamese_train::LossConfig::from_name(loss).map_err(|e| usage(e.to_string()))?;
    }
    if let Some(m) = a.margin {
        match &mut c.loss {
            siamese_train::LossConfig::Triplet { margin, .. }
            | siamese_train::LossConfig::Contrastive { margin } => *margin = m,
            siamese_train::LossConfig::Bce | siamese_train::LossConfig::Prototypical { .. } => {
                return Err(usage(
                    "--margin applies to the triplet and contrastive losses only",
                ))
            }
        }
    }
    if let Some(v) = a.scale {
        match &mut c.loss {
            siamese_train::LossConfig::Prototypical { scale } => *scale = v,
            _ => return Err(usage("--scale applies to the proto loss only")),
        }
    }
    match (a.proxy_weight, a.proxy_scale) {
        (Some(0.0), _) => c.proxy = None,
        (Some(_), _) | (None, Some(_)) => {
            let mut p = c.proxy.unwrap_or(siamese_train::ProxyLoss {
                weight: 1.0,
                scale: siamese_pairs::DEFAULT_PROXY_SCALE,
            });
            if let Some(w) = a.proxy_weight {
                p.weight = w;
            }
            if let Some(s) = a.proxy_scale {
                p.scale = s;
            }
            c.proxy = Some(p);
        }
        (None, None) => {}
    }
    // 0 turns the average off; other values are checked with the rest of the config.
    if let Some(d) = a.ema {
        c.ema = (d != 0.0).then_some(d);
    }
    if a.epochs.is_some() || a.steps.is_some() || a.time_budget.is_some() {
        c.budget = siamese_train::Budget {
            steps: a.steps,
            epochs: a.epochs,
            seconds: a.time_budget,
        };
    }
    if let Some(s) = a.seed {
        c.seed = s;
    }
    if let Some(lr) = a.lr {
        c.schedule.lr = lr;
    }
    if let Some(p) = a.batch_classes {
        c.classes_per_batch = p;
    }
    if let Some(k) = a.batch_images {
        c.images_per_class = k;
    }
    if let Some(d) = a.embedding_dim {
        c.encoder.embedding_dim = d;
    }
    if let Some(k) = a.members {
        // K members that all see the input, whatever sizes the recipe gave its members.
        c.encoder.members = k;
        c.encoder.member_sizes.clear();
    }
    let mut input_size = a
        .input_size
        .as_deref()
        .map(|s| parse_size("--input-size", s))
        .transpose()?;
    if !a.member_sizes.is_empty() {
        let sizes = a
            .member_sizes
            .iter()
            .map(|s| parse_size("--member-sizes", s).map(|(h, w)| [h, w]))
            .collect::<Result<Vec<_>>>()?;
        if let Some(k) = a.members.filter(|&k| k != sizes.len()) {
            return Err(usage(format!(
                "--members {k} disagrees with the {} sizes of --member-sizes",
                sizes.len()
            )));
        }
        c.encoder.members = sizes.len();
        if input_size.is_none() {
            let h = sizes.iter().map(|s| s[0]).max().unwrap_or(c.encoder.height);
            let w = sizes.iter().map(|s| s[1]).max().unwrap_or(c.encoder.width);
            input_size = Some((h, w));
        }
        c.encoder.member_sizes = sizes;
    }
    if let Some((h, w)) = input_size {
        c.encoder.height = h;
        c.encoder.width = w;
        c.preprocess.height = h as u32;
        c.preprocess.width = w as u32;
    }
    if let Some(taps) = parse_taps(&a.taps)? {
        c.encoder.taps = taps;
    } else if !c.encoder.taps.is_empty() && c.encoder.validate().is_err() {
        // The recipe's taps, on an encoder the flags changed so that they no longer fit.
        c.encoder.taps.clear();
    }
    if let Some(t) = a.train_taps {
        c.encoder.train_taps = t;
    }
    if let Some(f) = a.fit_ink {
        if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
            return Err(usage(format!(
                "--fit-ink must be a fraction between 0 (off) and 1, got {f}"
            )));
        }
        c.preprocess.fit_ink = (f > 0.0).then_some(f);
    }
    if let Some(false) = a.augment {
        c.augment = siamese_data::Augment::default();
    } else if let Some(true) = a.augment {
        if c.augment.is_identity() {
            c.augment = siamese_data::Augment::koch();
        }
    }
    if let Some(k) = a.augment_strength {
        if !(k.is_finite() && (0.0..=4.0).contains(&k)) {
            return Err(usage(format!(
                "--augment-strength must be between 0 and 4, got {k}"
            )));
        }
        c.augment.strength = k;
    }
    if let Some(e) = a.elastic {
        if !(e.is_finite() && (0.0..=8.0).contains(&e)) {
            return Err(usage(format!(
                "--elastic must be between 0 (off) and 8 pixels, got {e}"
            )));
        }
        c.augment.elastic = e;
    }
    if let Some(s) = a.elastic_sigma {
        if !(s.is_finite() && (0.5..=16.0).contains(&s)) {
            return Err(usage(format!(
                "--elastic-sigma must be between 0.5 and 16 pixels, got {s}"
            )));
        }
        c.augment.elastic_sigma = s;
    }
    if let Some(r) = a.rotations {
        c.rotations_as_classes = r;
    }
    if let Some(t) = &a.tta {
        c.tta = siamese_train::Tta::from_name(t).map_err(|e| usage(e.to_string()))?;
    }
    if let Some(m) = a.mirrors {
        c.mirrors_as_classes = m;
    }
    if let Some(g) = a.batch_groups {
        c.groups_per_batch = Some(g);
    }
    if let Some(f) = a.val_fraction {
        c.validation.fraction = f;
    }
    if let Some(m) = &a.val_metric {
        c.validation.metric = m.clone();
    }
    if let Some(v) = a.val_every {
        c.validation.every = v;
    }
    if let Some(k) = a.checkpoint_every {
        c.checkpoint_every = k;
    }
    c.validate().map_err(|e| usage(e.to_string()))?;
    Ok((c, recipe))
}

fn load_cache(data: &Dataset, c: &TrainConfig, skip_bad: bool, what: &str) -> Result<ImageCache> {
    let t = std::time::Instant::now();
    let (cache, skipped) = ImageCache::load_all(data, &c.preprocess, skip_bad)?;
    for s in &skipped {
        eprintln!("skipped: {}", s.error);
    }
    eprintln!(
        "{what}: {} images of {} classes decoded in {:.1} s",
        cache.len(),
        data.num_classes(),
        t.elapsed().as_secs_f64()
    );
    Ok(cache)
}

/// Where a recipe's data set lives when `--data` is not given: `$SIAMESE_DATA`, else `data/`.
fn data_root() -> PathBuf {
    std::env::var_os("SIAMESE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Everything a recipe's data set has under `root` (what users train on when they give no
/// `--data`), or an error saying how to fetch it.
fn recipe_data(recipe: &str, root: &Path) -> Result<Vec<PathBuf>> {
    let (dir, what) = match recipe {
        "omniglot" => (root.join("omniglot"), "omniglot"),
        "att-faces" | "att" | "faces" => (root.join("att_faces"), "att-faces"),
        _ => {
            return Err(usage(format!(
                "--data is needed: the recipe `{recipe}` has no default data set"
            )))
        }
    };
    let found: Vec<PathBuf> = if what == "omniglot" {
        let mut zips: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                            n.starts_with("images_background") && n.ends_with(".zip")
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        zips.sort();
        zips
    } else if dir.is_dir() {
        vec![dir.clone()]
    } else {
        Vec::new()
    };
    if found.is_empty() {
        return Err(usage(format!(
            "no --data given and the {what} recipe's data is not in {} (set SIAMESE_DATA to \
             the folder that holds it): run `cargo xtask fetch {what}` or pass --data",
            dir.display()
        )));
    }
    Ok(found)
}

fn train(mut a: TrainArgs, device: &Device, bf16: bool) -> Result<()> {
    if a.data.is_empty() {
        let Some(recipe) = a.recipe.clone() else {
            return Err(usage(
                "give --data (training images), or --recipe to train on its whole data set",
            ));
        };
        a.data = recipe_data(&recipe, &data_root())?;
        eprintln!(
            "no --data: training on everything the {recipe} recipe's data set has: {}",
            a.data
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (mut config, recipe) = build_config(&a)?;
    config.bf16 = bf16;
    let data = open_data(&a.data, a.classes.as_deref())?;
    let (train_set, val_set) = if config.validation.fraction > 0.0 {
        let (train, val) = data
            .class_disjoint_split(config.seed, SplitSize::Fraction(config.validation.fraction))?;
        (train, Some(val))
    } else {
        (data, None)
    };
    eprintln!(
        "recipe {recipe}: {} on {}×{}, loss {:?}, {} training classes{}",
        config.encoder.arch.name(),
        config.encoder.height,
        config.encoder.width,
        config.loss,
        train_set.num_classes(),
        val_set
            .as_ref()
            .map(|v| format!(", {} validation classes", v.num_classes()))
            .unwrap_or_default()
    );
    let train_cache = load_cache(&train_set, &config, a.skip_bad, "training")?;
    let val_cache = match &val_set {
        Some(v) => Some(load_cache(v, &config, a.skip_bad, "validation")?),
        None => None,
    };
    let (ckpt, report_dir) = default_paths(&a.out);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: writing a checkpoint after this step (Ctrl-C again to quit now)"
            );
        });
    }
    let opts = RunOptions {
        out: a.out.clone(),
        checkpoint: a.checkpoint.clone().unwrap_or(ckpt),
        report_dir: a.report.clone().unwrap_or(report_dir),
        resume: a.resume.clone(),
        stop,
        progress: !a.quiet,
        recipe: Some(recipe),
        stop_after: a.stop_after,
    };
    let data = TrainData {
        train: train_cache,
        validation: val_cache,
        sources: a.data.iter().map(|p| p.display().to_string()).collect(),
    };
    let summary = match siamese_train::train(&config, &data, &opts, device) {
        Ok(s) => s,
        Err(e @ TrainError::Interrupted { .. }) => {
            eprintln!("{e}");
            std::process::exit(130);
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "trained {} steps in {:.0} s ({:.0} images/s); kept step {}",
        summary.steps, summary.wall_seconds, summary.images_per_sec, summary.best_step
    );
    if let Some(b) = &summary.best {
        eprintln!(
            "validation: AUC {:.4}, EER {:.2}%, {}-way one-shot {:.1}%",
            b.auc,
            100.0 * b.eer,
            b.ways,
            100.0 * b.oneshot_accuracy
        );
    }
    if let Some(c) = &summary.calibration {
        eprintln!(
            "threshold {:.4} (accuracy {:.1}%, FAR {:.1}%, FRR {:.1}% on {} pairs of {})",
            c.threshold,
            100.0 * c.accuracy,
            100.0 * c.far,
            100.0 * c.frr,
            c.pairs,
            c.source
        );
    }
    eprintln!(
        "model: {}  report: {}",
        summary.model.display(),
        summary.report_dir.display()
    );
    Ok(())
}

// ---------------------------------------------------------------- verify / embed

fn embed_paths(model: &Model, paths: &[PathBuf]) -> Result<Vec<f32>> {
    let pixels = images::load(paths, &model.meta.preprocess)?;
    Ok(model.embed_flat(&pixels, paths.len(), siamese_train::EMBED_BATCH)?)
}

fn verify(a: VerifyArgs, device: &Device) -> Result<()> {
    check_threshold(a.threshold)?;
    let model = with_tta(load_model(&a.model, device)?, a.tta.as_deref())?;
    let threshold = match a.threshold.or(model.threshold()) {
        Some(t) => t,
        None => bail!(
            "{}: the model has no calibrated threshold; pass --threshold",
            a.model.display()
        ),
    };
    let e = embed_paths(&model, &[a.a.clone(), a.b.clone()])?;
    let r = model.row_len();
    let d = model.matcher().between(&e[..r], &e[r..]);
    let same = d < threshold;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"distance": d, "same": same, "threshold": threshold, "a": a.a, "b": a.b})
        );
    } else {
        println!(
            "{}: distance {d:.4} {} threshold {threshold:.4}",
            if same { "same" } else { "different" },
            if same { "<" } else { "≥" }
        );
    }
    Ok(())
}

fn embed(a: EmbedArgs, device: &Device) -> Result<()> {
    let model = with_tta(load_model(&a.model, device)?, a.tta.as_deref())?;
    let paths = images::expand(&a.paths)?;
    if paths.is_empty() {
        bail!("no images found in the given paths");
    }
    let started = std::time::Instant::now();
    let pixels = images::load(&paths, &model.meta.preprocess)?;
    let decoded = started.elapsed().as_secs_f64();
    let e = model.embed_flat(&pixels, paths.len(), siamese_train::EMBED_BATCH)?;
    let encoded = started.elapsed().as_secs_f64() - decoded;
    let dim = model.encoder.config().output_dim();
    // Set representations keep each image's encodings: [images, set, dim].
    let set = model.matcher().set;
    let shape = if set > 1 {
        vec![paths.len(), set, dim]
    } else {
        vec![paths.len(), dim]
    };
    let bytes = if a.out.extension().is_some_and(|x| x == "npy") {
        npy(&e, &shape)
    } else {
        let t = Tensor::from_vec(e, shape, &Device::Cpu)?;
        let mut meta = HashMap::new();
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        meta.insert("paths".to_string(), serde_json::to_string(&names)?);
        safetensors::serialize([("embeddings", &t)], Some(meta))?
    };
    siamese_train::write_atomic(&a.out, &bytes)?;
    eprintln!(
        "{} embeddings of dimension {dim} written to {} (decoding {:.1} ms, encoding {:.1} ms: \
         {:.1} images/s)",
        paths.len(),
        a.out.display(),
        decoded * 1e3,
        encoded * 1e3,
        paths.len() as f64 / encoded.max(1e-9)
    );
    Ok(())
}

/// A NumPy `.npy` file (version 1.0, little-endian f32, C order) of the given shape.
fn npy(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------- gallery

const GALLERY_KEY: &str = "siamese.gallery";

/// FNV-1a over the model's weights, so a gallery can say which model made it.
fn fingerprint(model: &Model) -> Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, var) in model.encoder.params().all() {
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let v: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
        for x in v {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    Ok(format!("{h:016x}"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct GalleryMeta {
    model: String,
    identities: Vec<String>,
    labels: Vec<usize>,
    paths: Vec<String>,
    /// The test-time augmentation the images were encoded with (absent in older galleries:
    /// the model's own).
    #[serde(default)]
    tta: Option<siamese_train::Tta>,
}

fn enroll(a: EnrollArgs, device: &Device) -> Result<()> {
    let model = with_tta(load_model(&a.model, device)?, a.tta.as_deref())?;
    let dim = model.row_len();
    let (e, meta) =
        match (&a.gallery, a.random) {
            (Some(_), Some(_)) => return Err(usage("give --gallery DIR or --random N, not both")),
            (None, None) => return Err(usage(
                "enroll needs --gallery DIR (a folder with one sub-folder of images per identity)",
            )),
            (None, Some(n)) => {
                if n == 0 || a.random_identities == 0 {
                    return Err(usage("--random and --random-identities must be at least 1"));
                }
                let identities = a.random_identities.min(n);
                let meta = GalleryMeta {
                    model: fingerprint(&model)?,
                    identities: (0..identities).map(|i| format!("id{i}")).collect(),
                    labels: (0..n).map(|i| i % identities).collect(),
                    paths: Vec::new(),
                    tta: Some(model.meta.tta),
                };
                (random_unit_rows(n, dim, a.random_seed), meta)
            }
            (Some(gallery), None) => {
                let data = Dataset::open(gallery)
                    .with_context(|| format!("cannot read gallery folder {}", gallery.display()))?;
                if data.is_empty() {
                    bail!(
                        "{}: no images found (expected one sub-folder per identity)",
                        gallery.display()
                    );
                }
                let (cache, _) = ImageCache::load_all(&data, &model.meta.preprocess, false)?;
                let e = model.embed_cache(&cache)?;
                let meta = GalleryMeta {
                    model: fingerprint(&model)?,
                    identities: cache.classes.clone(),
                    labels: cache.labels.clone(),
                    paths: cache
                        .origin
                        .iter()
                        .map(|&i| data.items[i].source.display_name().display().to_string())
                        .collect(),
                    tta: Some(model.meta.tta),
                };
                (e, meta)
            }
        };
    let rows = meta.labels.len();
    let bytes = gallery_file_bytes(e, rows, dim, &meta)?;
    siamese_train::write_atomic(&a.out, &bytes)?;
    eprintln!(
        "enrolled {} images of {} identities into {}",
        rows,
        meta.identities.len(),
        a.out.display()
    );
    Ok(())
}

fn identify(a: IdentifyArgs, device: &Device) -> Result<()> {
    check_threshold(a.threshold)?;
    if a.top == 0 {
        return Err(usage("--top must be at least 1"));
    }
    let mut model = load_model(&a.model, device)?;
    let mut file = GalleryFile::open(&a.gallery)?;
    let meta = file.meta.take().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: not a gallery file written by `siamese enroll`",
            a.gallery.display()
        )
    })?;
    if meta.model != fingerprint(&model)? {
        bail!(
            "{}: the gallery was enrolled with another model; enrol it again with {}",
            a.gallery.display(),
            a.model.display()
        );
    }
    // Probes are encoded as the gallery was.
    if let Some(tta) = meta.tta {
        model.meta.tta = tta;
    }
    let dim = model.row_len();
    if file.shape != [meta.labels.len(), dim] {
        bail!(
            "{}: embeddings have shape {:?}, expected [{}, {dim}]",
            a.gallery.display(),
            file.shape,
            meta.labels.len()
        );
    }
    if meta.labels.iter().any(|&l| l >= meta.identities.len()) {
        bail!(
            "{}: a label is beyond the {} identities",
            a.gallery.display(),
            meta.identities.len()
        );
    }
    let gallery = file.read_rows()?;
    let threshold = a.threshold.or(model.threshold());
    let probes = embed_paths(&model, &a.probes)?;
    let d = model.matcher();
    let all_ranked = rank_identities(d, gallery, dim, &meta, &probes, a.top)?;
    let mut results = Vec::new();
    for (probe, ranked) in a.probes.iter().zip(all_ranked) {
        let known = threshold.is_none_or(|t| ranked.first().is_some_and(|r| r.1 < t));
        let identity = if known {
            ranked
                .first()
                .map(|r| meta.identities[r.0].clone())
                .unwrap_or_default()
        } else {
            "unknown".to_string()
        };
        results.push(serde_json::json!({
            "probe": probe,
            "identity": identity,
            "threshold": threshold,
            "candidates": ranked.iter().map(|(i, dist)| serde_json::json!({"identity": meta.identities[*i], "distance": dist})).collect::<Vec<_>>(),
        }));
        if !a.json {
            let list: Vec<String> = ranked
                .iter()
                .map(|(i, dist)| format!("{} ({dist:.4})", meta.identities[*i]))
                .collect();
            println!("{}: {identity}  [{}]", probe.display(), list.join(", "));
        }
    }
    if a.json {
        if results.len() == 1 {
            println!("{}", results[0]);
        } else {
            println!("{}", serde_json::json!({ "results": results }));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- eval

fn evaluate(a: EvalArgs, device: &Device) -> Result<()> {
    let mut model = with_tta(load_model(&a.model, device)?, a.tta.as_deref())?;
    if let Some(taps) = parse_taps(&a.taps)? {
        model
            .encoder
            .set_taps(taps)
            .map_err(|e| usage(format!("--taps: {e}")))?;
    }
    match a.protocol.as_str() {
        "unseen" => eval_unseen(&a, &model),
        "oneshot-runs" => eval_runs(&a, &model),
        "pairs" => eval_pairs(&a, &model),
        other => Err(usage(format!(
            "unknown protocol `{other}` (expected unseen, oneshot-runs or pairs)"
        ))),
    }
}

fn eval_unseen(a: &EvalArgs, model: &Model) -> Result<()> {
    if a.data.is_empty() {
        return Err(usage("--protocol unseen needs --data DIR"));
    }
    let data = open_data(&a.data, a.classes.as_deref())?;
    let (cache, _) = ImageCache::load_all(&data, &model.meta.preprocess, false)?;
    let ways = a.ways.min(data.num_classes());
    let e = eval::embed(model, &cache)?;
    let d = model.matcher();
    let threshold = model.threshold();
    let r = eval::unseen(&e, d, threshold, ways, a.episodes, a.shots, a.seed)?;
    if let Some(dir) = &a.report {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        report::write_verification_plots(&e, d, threshold, dir)?;
        write_eval_report(dir, &serde_json::to_value(&r)?)?;
    }
    let json = serde_json::json!({
        "protocol": "unseen",
        "accuracy": r.accuracy_at_threshold,
        "auc": r.verification.auc,
        "eer": r.verification.eer,
        "n": r.verification.pairs,
        "oneshot_accuracy": r.oneshot.accuracy,
        "oneshot_ci95": r.oneshot.ci95,
        "ways": r.oneshot.ways,
        "episodes": r.oneshot.episodes,
        "rank1": r.rank1.as_ref().map(|e| e.accuracy),
        "threshold": r.threshold,
        "images": r.images,
        "classes": r.classes,
    });
    if a.json {
        println!("{json}");
    } else {
        println!("unseen: {} images of {} classes", r.images, r.classes);
        println!(
            "verification over {} pairs: AUC {:.4}, EER {:.2}%{}",
            r.verification.pairs,
            r.verification.auc,
            100.0 * r.verification.eer,
            r.accuracy_at_threshold
                .map(|acc| format!(
                    ", accuracy {:.2}% at threshold {:.4}",
                    100.0 * acc,
                    r.threshold.unwrap_or(0.0)
                ))
                .unwrap_or_default()
        );
        println!(
            "{}-way one-shot over {} episodes: {:.2}% ± {:.2}",
            r.oneshot.ways,
            r.oneshot.episodes,
            100.0 * r.oneshot.accuracy,
            100.0 * r.oneshot.ci95
        );
        if let Some(e) = &r.rank1 {
            println!(
                "rank-1 with {} enrolled images per class ({} classes): {:.2}%",
                e.shots,
                e.ways,
                100.0 * e.accuracy
            );
        }
    }
    Ok(())
}

fn eval_runs(a: &EvalArgs, model: &Model) -> Result<()> {
    let Some(dir) = &a.runs else {
        return Err(usage("--protocol oneshot-runs needs --runs DIR"));
    };
    let runs = siamese_data::OneShotRuns::open(dir)?;
    let pre = &model.meta.preprocess;
    let dim = model.row_len();
    let d = model.matcher();
    let mut per_run = Vec::new();
    let (mut correct, mut total) = (0usize, 0usize);
    for run in &runs.runs {
        let load =
            |s: &siamese_data::ImageSource| -> Result<Vec<f32>> { Ok(pre.apply(&s.load()?)) };
        let mut train_px = Vec::new();
        for s in &run.training {
            train_px.extend(load(s)?);
        }
        let mut test_px = Vec::new();
        for t in &run.trials {
            test_px.extend(load(&t.test)?);
        }
        let te = model.embed_flat(&train_px, run.training.len(), siamese_train::EMBED_BATCH)?;
        let qe = model.embed_flat(&test_px, run.trials.len(), siamese_train::EMBED_BATCH)?;
        let mut ok = 0;
        for (i, t) in run.trials.iter().enumerate() {
            let q = &qe[i * dim..(i + 1) * dim];
            let best = (0..run.training.len())
                .map(|j| (j, d.between(q, &te[j * dim..(j + 1) * dim])))
                .min_by(|x, y| x.1.total_cmp(&y.1))
                .map(|x| x.0);
            if best == Some(t.answer) {
                ok += 1;
            }
        }
        per_run.push(serde_json::json!({"run": run.name, "accuracy": ok as f64 / run.trials.len().max(1) as f64, "n": run.trials.len()}));
        correct += ok;
        total += run.trials.len();
    }
    let acc = correct as f64 / total.max(1) as f64;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"protocol": "oneshot-runs", "accuracy": acc, "n": total, "runs": per_run})
        );
    } else {
        for r in &per_run {
            println!(
                "{}: {:.1}%",
                r["run"].as_str().unwrap_or("?"),
                100.0 * r["accuracy"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "one-shot runs: {:.2}% over {total} trials ({} runs)",
            100.0 * acc,
            runs.runs.len()
        );
    }
    Ok(())
}

fn eval_pairs(a: &EvalArgs, model: &Model) -> Result<()> {
    let (Some(pairs_path), Some(images)) = (&a.pairs, &a.images) else {
        return Err(usage(
            "--protocol pairs needs --pairs PAIRS.txt and --images DIR",
        ));
    };
    let pairs = siamese_data::LfwPairs::open(pairs_path)?;
    let (distances, same) = pair_distances(model, &pairs, images)?;
    let folds: Vec<usize> = pairs.pairs.iter().map(|p| p.fold).collect();
    let v = eval::verification(&eval::PairScores {
        distances: distances.clone(),
        same: same.clone(),
    })?;
    let k = pairs.folds.max(1);
    let kf = if k > 1 {
        Some(siamese_pairs::metrics::kfold_accuracy(
            &distances, &same, &folds, k,
        )?)
    } else {
        None
    };
    let roc = siamese_pairs::metrics::roc(&distances, &same)?;
    let (tar3, _) = roc.tar_at_far(1e-3);
    let (tar2, _) = roc.tar_at_far(1e-2);
    let dev_threshold = match &a.pairs_train {
        Some(train_path) => {
            let train = siamese_data::LfwPairs::open(train_path)?;
            let (td, ts) = pair_distances(model, &train, images)?;
            Some(siamese_pairs::metrics::best_threshold(&td, &ts)?.0 as f32)
        }
        None => None,
    };
    let accuracy = match (&kf, dev_threshold) {
        (_, Some(t)) => {
            same.iter()
                .zip(&distances)
                .filter(|(s, d)| (**d < t) == **s)
                .count() as f64
                / same.len().max(1) as f64
        }
        (Some((mean, _, _)), None) => *mean,
        (None, None) => {
            let t = model.threshold().unwrap_or(v.eer_threshold as f32);
            same.iter()
                .zip(&distances)
                .filter(|(s, d)| (**d < t) == **s)
                .count() as f64
                / same.len().max(1) as f64
        }
    };
    let json = serde_json::json!({
        "protocol": "pairs", "accuracy": accuracy, "std": kf.map(|k| k.1), "std_err": kf.map(|k| k.2),
        "dev_threshold": dev_threshold, "auc": v.auc, "eer": v.eer, "tar_at_far_1e-3": tar3, "tar_at_far_1e-2": tar2, "n": same.len(), "folds": k,
    });
    if a.json {
        println!("{json}");
    } else {
        println!(
            "pairs: accuracy {:.2}%{} over {} pairs; AUC {:.4}, EER {:.2}%, TAR {:.2}% at FAR 1e-3, {:.2}% at FAR 1e-2",
            100.0 * accuracy,
            kf.map(|k| format!(" ± {:.2} ({}-fold)", 100.0 * k.1, pairs.folds)).unwrap_or_default(),
            same.len(),
            v.auc,
            100.0 * v.eer,
            100.0 * tar3,
            100.0 * tar2
        );
    }
    Ok(())
}

/// Distances of LFW-style pairs (images under `images`) and whether each pair is matched.
fn pair_distances(
    model: &Model,
    pairs: &siamese_data::LfwPairs,
    images: &Path,
) -> Result<(Vec<f32>, Vec<bool>)> {
    let mut paths = Vec::with_capacity(2 * pairs.pairs.len());
    for p in &pairs.pairs {
        let (x, y) = p.paths(images);
        paths.push(x);
        paths.push(y);
    }
    let e = embed_paths(model, &paths)?;
    let dim = model.row_len();
    let d = model.matcher();
    let distances = (0..pairs.pairs.len())
        .map(|i| {
            let (x, y) = (2 * i * dim, (2 * i + 1) * dim);
            d.between(&e[x..y], &e[y..y + dim])
        })
        .collect();
    Ok((distances, pairs.pairs.iter().map(|p| p.is_same).collect()))
}

/// Writes `report.json` and `report.md` (which shows the plots beside them) into `dir`.
fn write_eval_report(dir: &Path, json: &serde_json::Value) -> Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(json)?)
        .with_context(|| format!("cannot write {}", dir.join("report.json").display()))?;
    let md = format!(
        "# Evaluation: unseen classes\n\n| metric | value |\n|---|---|\n| images | {} |\n| classes | {} |\n| pairs | {} |\n| ROC AUC | {:.4} |\n| EER | {:.2}% |\n| accuracy at stored threshold | {} |\n| {}-way one-shot ({} episodes) | {:.2}% ± {:.2} |\n| rank-1 | {} |\n\n![ROC](roc.png)\n\n![distances](distances.png)\n\n![PCA](pca.png)\n",
        json["images"],
        json["classes"],
        json["verification"]["pairs"],
        json["verification"]["auc"].as_f64().unwrap_or(f64::NAN),
        100.0 * json["verification"]["eer"].as_f64().unwrap_or(f64::NAN),
        json["accuracy_at_threshold"].as_f64().map(|a| format!("{:.2}%", 100.0 * a)).unwrap_or_else(|| "n/a".into()),
        json["oneshot"]["ways"],
        json["oneshot"]["episodes"],
        100.0 * json["oneshot"]["accuracy"].as_f64().unwrap_or(f64::NAN),
        100.0 * json["oneshot"]["ci95"].as_f64().unwrap_or(f64::NAN),
        json["rank1"]["accuracy"].as_f64().map(|a| format!("{:.2}%", 100.0 * a)).unwrap_or_else(|| "n/a".into()),
    );
    std::fs::write(dir.join("report.md"), md)
        .with_context(|| format!("cannot write {}", dir.join("report.md").display()))?;
    eprintln!("report written to {}", dir.display());
    Ok(())
}

// ---------------------------------------------------------------- inspect / demo

fn inspect(a: InspectArgs) -> Result<()> {
    let model = load_model(&a.model, &Device::Cpu)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"encoder": model.encoder.config(), "parameters": model.encoder.params().count(), "meta": model.meta})
        );
        return Ok(());
    }
    let c = model.encoder.config();
    let m = &model.meta;
    println!("model:        {}", a.model.display());
    println!(
        "architecture: {}{} ({} parameters)",
        c.arch.name(),
        if c.members > 1 {
            format!(
                ", an ensemble of {} members ({:?} numbers each{})",
                c.members,
                c.member_dims(),
                if c.member_sizes.is_empty() {
                    String::new()
                } else {
                    let sizes: Vec<String> = (0..c.members)
                        .map(|i| {
                            let (h, w) = c.member_size(i);
                            format!("{h}×{w}")
                        })
                        .collect();
                    format!("; seeing the input at {}", sizes.join(", "))
                }
            )
        } else {
            String::new()
        },
        model.encoder.params().count()
    );
    println!(
        "input:        {}×{}×{} (channels × height × width)",
        c.in_channels, c.height, c.width
    );
    println!(
        "embedding:    {} numbers{}",
        c.embedding_dim,
        if c.l2_normalize {
            ", L2-normalised"
        } else {
            ""
        }
    );
    if !c.taps.is_empty() {
        let taps: Vec<String> = c
            .taps
            .iter()
            .zip(c.tap_dims())
            .map(|(t, n)| format!("block {} ({n} numbers, weight {})", t.block, t.weight))
            .collect();
        println!(
            "taps:         {}; {} numbers in all{}",
            taps.join(", "),
            c.output_dim(),
            if c.train_taps {
                "; trained with the loss"
            } else {
                "; read at inference only"
            }
        );
    }
    println!("distance:     {:?}", m.distance);
    println!("preprocess:   {}", serde_json::to_string(&m.preprocess)?);
    println!(
        "test-time:    {}",
        match m.tta {
            siamese_train::Tta::None => "one pass per image".to_string(),
            siamese_train::Tta::Hflip => "mean of the image's and its mirror's encodings".into(),
            siamese_train::Tta::Affine(c) => format!(
                "mean encoding over the image and {} affine distortions of it",
                c - 1
            ),
            siamese_train::Tta::AffineSet(c) => format!(
                "the encodings of the image and {} affine distortions of it (ranges ×{}), \
                 compared as sets (symmetric Chamfer distance)",
                c - 1,
                siamese_train::AFFINE_SET_STRENGTH
            ),
        }
    );
    match &m.calibration {
        Some(cal) => println!(
            "threshold:    {:.4} (accuracy {:.1}%, FAR {:.1}%, FRR {:.1}% on {} pairs of {})",
            cal.threshold,
            100.0 * cal.accuracy,
            100.0 * cal.far,
            100.0 * cal.frr,
            cal.pairs,
            cal.source
        ),
        None => println!("threshold:    none (pass --threshold to verify)"),
    }
    let p = &m.provenance;
    println!(
        "trained on:   {} ({} classes, {} images; recipe {})",
        p.data.join(", "),
        p.train_classes,
        p.train_images,
        p.recipe.as_deref().unwrap_or("none")
    );
    println!(
        "training:     {} steps, {:.0} s, seed {}, siamese {}",
        p.steps, p.wall_seconds, p.seed, p.version
    );
    if let Some(v) = &p.validation {
        println!("validation:   {v}");
    }
    if !model.extra.is_empty() {
        let names: Vec<&str> = model.extra.iter().map(|(n, _)| n.as_str()).collect();
        println!("extra:        {}", names.join(", "));
    }
    Ok(())
}

fn demo(a: DemoArgs, device: &Device) -> Result<()> {
    let t = std::time::Instant::now();
    eprintln!(
        "demo: drawing 40 classes of synthetic glyphs, 20 samples each (seed {})",
        a.seed
    );
    let data = siamese_data::synthetic(40, 20, 28, a.seed);
    let mut config = TrainConfig::recipe("demo")?;
    config.seed = a.seed;
    config.budget.steps = Some(a.steps);
    let (trainval, test) = data.class_disjoint_split(a.seed, SplitSize::Count(10))?;
    let (train, val) = trainval.class_disjoint_split(a.seed + 1, SplitSize::Count(6))?;
    let load = |d: &Dataset| -> Result<ImageCache> {
        Ok(ImageCache::load_all(d, &config.preprocess, false)?.0)
    };
    let data = TrainData {
        train: load(&train)?,
        validation: Some(load(&val)?),
        sources: vec!["synthetic glyphs".into()],
    };
    let test_cache = load(&test)?;
    let (ckpt, report_dir) = default_paths(&a.out);
    let opts = RunOptions {
        out: a.out.clone(),
        checkpoint: ckpt,
        report_dir,
        resume: None,
        stop: Arc::new(AtomicBool::new(false)),
        progress: true,
        recipe: Some("demo".into()),
        stop_after: None,
    };
    eprintln!(
        "training conv4 on {} classes for {} steps…",
        train.num_classes(),
        a.steps
    );
    let summary = siamese_train::train(&config, &data, &opts, device)?;
    let model = Model::load(&a.out, device)?;
    let e = eval::embed(&model, &test_cache)?;
    let r = eval::unseen(&e, model.matcher(), model.threshold(), 5, 500, 5, a.seed)?;
    println!(
        "demo model: {} ({} steps, {:.0} s)",
        a.out.display(),
        summary.steps,
        summary.wall_seconds
    );
    println!(
        "on 10 classes never seen in training: AUC {:.4}, EER {:.2}%, 5-way one-shot {:.1}%",
        r.verification.auc,
        100.0 * r.verification.eer,
        100.0 * r.oneshot.accuracy
    );
    let threshold = model
        .threshold()
        .unwrap_or(r.verification.eer_threshold as f32);
    // The decision at the threshold, and whether it is right: examples are not cherry-picked.
    let verdict = |d: f32, same_class: bool| match (d < threshold, same_class) {
        (true, true) => "same (right)",
        (false, false) => "different (right)",
        (true, false) => "same (wrong: the classes differ)",
        (false, true) => "different (wrong: one class)",
    };
    let by_class = test_cache.indices_by_class();
    let mut shown = 0;
    for (c, members) in by_class
        .iter()
        .enumerate()
        .filter(|(_, m)| m.len() >= 2)
        .take(3)
    {
        let (i, j) = (members[0], members[1]);
        // The next class with images, so that each example meets another class.
        let other = (1..by_class.len())
            .map(|step| (c + step) % by_class.len())
            .find_map(|k| by_class[k].first().copied());
        let dsame = model.matcher().between(e.row(i), e.row(j));
        println!(
            "verify {} #{} vs #{}: distance {dsame:.4} → {}",
            test_cache.classes[c],
            i,
            j,
            verdict(dsame, true)
        );
        if let Some(k) = other {
            let ddiff = model.matcher().between(e.row(i), e.row(k));
            println!(
                "verify {} #{} vs {} #{}: distance {ddiff:.4} → {}",
                test_cache.classes[c],
                i,
                test_cache.classes[test_cache.labels[k]],
                k,
                verdict(ddiff, false)
            );
        }
        shown += 1;
    }
    println!(
        "threshold {threshold:.4}; {shown} classes shown; done in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------- gallery files and search

/// The largest safetensors header read (the limit of the `safetensors` crate).
const MAX_GALLERY_HEADER: u64 = 100_000_000;

/// A gallery file opened for reading: its metadata and where its embeddings lie. The
/// embeddings are read by [`GalleryFile::read_rows`] straight into one `Vec<f32>` through a
/// small buffer, so the file is never held in memory beside them.
struct GalleryFile {
    path: PathBuf,
    file: std::fs::File,
    /// The `siamese enroll` metadata, when the file has it.
    meta: Option<GalleryMeta>,
    /// Shape of the `embeddings` tensor.
    shape: Vec<usize>,
    /// Byte offset of the embeddings in the file, and their length in bytes.
    offset: u64,
    len: usize,
}

impl GalleryFile {
    fn open(path: &Path) -> Result<Self> {
        use std::io::Read;
        let bad = |why: String| anyhow::anyhow!("{}: not a gallery file: {why}", path.display());
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot read gallery {}", path.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("cannot read gallery {}", path.display()))?
            .len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| bad("too short for a safetensors header".into()))?;
        let n = u64::from_le_bytes(n);
        if n > MAX_GALLERY_HEADER || n.saturating_add(8) > size {
            return Err(bad(format!(
                "a header of {n} bytes in a file of {size} bytes"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .with_context(|| format!("cannot read gallery {}", path.display()))?;
        let header: serde_json::Value =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let meta = header
            .get("__metadata__")
            .and_then(|m| m.get(GALLERY_KEY))
            .and_then(|j| j.as_str())
            .and_then(|j| serde_json::from_str(j).ok());
        let t = header
            .get("embeddings")
            .ok_or_else(|| bad("no tensor `embeddings`".into()))?;
        if t.get("dtype").and_then(|d| d.as_str()) != Some("F32") {
            return Err(bad(format!("embeddings are {}, not F32", t["dtype"])));
        }
        let numbers = |key: &str| -> Option<Vec<usize>> {
            t.get(key)?
                .as_array()?
                .iter()
                .map(|v| v.as_u64().and_then(|x| usize::try_from(x).ok()))
                .collect()
        };
        let shape = numbers("shape").ok_or_else(|| bad("embeddings without a shape".into()))?;
        let (start, end) = match numbers("data_offsets").as_deref() {
            Some(&[s, e]) if s <= e => (s, e),
            _ => return Err(bad("embeddings without valid data offsets".into())),
        };
        let len = end - start;
        let expected = shape
            .iter()
            .try_fold(4usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("embeddings of shape {shape:?}")))?;
        let offset = 8 + n + start as u64;
        if len != expected || offset.saturating_add(len as u64) > size {
            return Err(bad(format!(
                "embeddings of shape {shape:?} hold {len} bytes at offset {offset} of {size}"
            )));
        }
        Ok(GalleryFile {
            path: path.to_path_buf(),
            file,
            meta,
            shape,
            offset,
            len,
        })
    }

    /// The embeddings, row-major, read through a 1 MiB buffer.
    fn read_rows(mut self) -> Result<Vec<f32>> {
        use std::io::{Read, Seek, SeekFrom};
        let err = || format!("cannot read gallery {}", self.path.display());
        self.file
            .seek(SeekFrom::Start(self.offset))
            .with_context(err)?;
        let mut out = Vec::with_capacity(self.len / 4);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = self.len;
        while left > 0 {
            let chunk = &mut buf[..left.min(1 << 20)];
            self.file.read_exact(chunk).with_context(err)?;
            out.extend(
                chunk
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            left -= chunk.len();
        }
        Ok(out)
    }
}

/// Little-endian `f32` rows as a safetensors tensor.
struct F32Rows {
    bytes: Vec<u8>,
    shape: [usize; 2],
}

impl safetensors::View for F32Rows {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The bytes of a gallery file: `embeddings` `[rows, dim]` plus the metadata.
fn gallery_file_bytes(e: Vec<f32>, rows: usize, dim: usize, meta: &GalleryMeta) -> Result<Vec<u8>> {
    if e.len() != rows * dim {
        bail!("{} encodings for {rows} rows of dimension {dim}", e.len());
    }
    let mut bytes = Vec::with_capacity(e.len() * 4);
    for v in e {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let t = F32Rows {
        bytes,
        shape: [rows, dim],
    };
    let mut m = HashMap::new();
    m.insert(GALLERY_KEY.to_string(), serde_json::to_string(meta)?);
    Ok(safetensors::serialize([("embeddings", t)], Some(m))?)
}

/// `rows` random unit-length encodings of length `dim` (normal directions), deterministic from
/// `seed`: benchmark galleries.
fn random_unit_rows(rows: usize, dim: usize, seed: u64) -> Vec<f32> {
    use rayon::prelude::*;
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut out = vec![0f32; rows * dim];
    out.par_chunks_mut(dim.max(1))
        .enumerate()
        .for_each(|(row, r)| {
            let mut state = seed ^ (row as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
            // Box–Muller: two normals from two uniforms in (0, 1].
            let uniform = |s: &mut u64| ((splitmix(s) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            for pair in r.chunks_mut(2) {
                let (u1, u2) = (uniform(&mut state), uniform(&mut state));
                let radius = (-2.0 * u1.ln()).sqrt();
                let angle = std::f64::consts::TAU * u2;
                pair[0] = (radius * angle.cos()) as f32;
                if let Some(x) = pair.get_mut(1) {
                    *x = (radius * angle.sin()) as f32;
                }
            }
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= norm);
        });
    out
}

/// The `top` nearest identities of each probe, as `(identity, distance)` ascending (ties to
/// the lower identity index), an identity's distance being that of its nearest enrolled row.
///
/// Squared L2 searches a [`GalleryIndex`] for the nearest rows: identities appear in that list
/// in the order of their nearest rows, so once it holds `top` identities they are the answer.
/// The list starts at `4 · top` rows and widens up to `top · m` (`m`: the most rows of one
/// identity), which always holds `top` identities. The distances reported are recomputed
/// exactly as the full scan (the fallback for every other distance, and for set
/// representations) computes them, so both give the same output (up to `f32` rounding of
/// near-ties between rows, about `1e-7`).
fn rank_identities(
    d: siamese_ops::distance::Matcher,
    gallery: Vec<f32>,
    dim: usize,
    meta: &GalleryMeta,
    probes: &[f32],
    top: usize,
) -> Result<Vec<Vec<(usize, f32)>>> {
    use siamese_ops::distance::{Distance, GalleryIndex};
    let n_ids = meta.identities.len();
    let rows = meta.labels.len();
    let sort = |ranked: &mut Vec<(usize, f32)>| {
        ranked.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
        ranked.truncate(top);
    };
    if d.set > 1 || !matches!(d.distance, Distance::SquaredL2) {
        return Ok(scan_identities(d, &gallery, dim, meta, probes, top));
    }
    let mut counts = vec![0usize; n_ids];
    for &l in &meta.labels {
        counts[l] += 1;
    }
    // `top · m` rows always hold `top` identities; most probes need far fewer, so start small
    // and widen only for the probes whose candidates hold fewer than `top` identities.
    let cap = top
        .saturating_mul(counts.iter().copied().max().unwrap_or(0))
        .min(rows);
    let mut k = top.saturating_mul(4).max(16).min(cap);
    let index = GalleryIndex::new(gallery, dim)?;
    let data = index.data();
    let mut ranked_all = vec![Vec::new(); probes.len() / dim];
    let mut pending: Vec<usize> = (0..ranked_all.len()).collect();
    while !pending.is_empty() {
        let queries: Vec<f32> = pending
            .iter()
            .flat_map(|&p| probes[p * dim..(p + 1) * dim].iter().copied())
            .collect();
        let hits = index.search_batch(&queries, k)?;
        let mut again = Vec::new();
        for (&p, hits) in pending.iter().zip(hits) {
            let q = &probes[p * dim..(p + 1) * dim];
            let mut best: HashMap<usize, f32> = HashMap::new();
            for (row, _) in hits {
                let dist = d.between(q, &data[row * dim..(row + 1) * dim]);
                let b = best.entry(meta.labels[row]).or_insert(f32::INFINITY);
                if dist < *b {
                    *b = dist;
                }
            }
            if best.len() < top && k < cap {
                again.push(p);
                continue;
            }
            let mut ranked: Vec<(usize, f32)> = best.into_iter().collect();
            if k == rows && ranked.len() < top {
                // Every row was seen: identities with no rows follow at infinity, as in the scan.
                let seen: std::collections::HashSet<usize> = ranked.iter().map(|r| r.0).collect();
                ranked.extend(
                    (0..n_ids)
                        .filter(|i| !seen.contains(i))
                        .map(|i| (i, f32::INFINITY)),
                );
            }
            sort(&mut ranked);
            ranked_all[p] = ranked;
        }
        pending = again;
        k = k.saturating_mul(4).min(cap);
    }
    Ok(ranked_all)
}

/// [`rank_identities`] by a full scan: every row's distance to every probe.
fn scan_identities(
    d: siamese_ops::distance::Matcher,
    gallery: &[f32],
    dim: usize,
    meta: &GalleryMeta,
    probes: &[f32],
    top: usize,
) -> Vec<Vec<(usize, f32)>> {
    probes
        .chunks_exact(dim)
        .map(|q| {
            let mut best = vec![f32::INFINITY; meta.identities.len()];
            let dists: Vec<f32> = (0..meta.labels.len())
                .into_par_iter()
                .map(|row| d.between(q, &gallery[row * dim..(row + 1) * dim]))
                .collect();
            for (&dist, &label) in dists.iter().zip(&meta.labels) {
                if dist < best[label] {
                    best[label] = dist;
                }
            }
            let mut ranked: Vec<(usize, f32)> = best.into_iter().enumerate().collect();
            ranked.sort_by(|x, y| x.1.total_cmp(&y.1).then(x.0.cmp(&y.0)));
            ranked.truncate(top);
            ranked
        })
        .collect()
}

#[cfg(test)]
mod gallery_tests {
    use super::*;
    use siamese_ops::distance::Distance;

    fn meta(labels: Vec<usize>, identities: usize) -> GalleryMeta {
        GalleryMeta {
            model: String::new(),
            identities: (0..identities).map(|i| format!("id{i}")).collect(),
            labels,
            paths: Vec::new(),
            tta: None,
        }
    }

    type Ranked = Vec<Vec<(usize, f32)>>;

    /// A squared-L2 gallery ranked through the index and by the full scan.
    fn ranked_both_ways(
        gallery: &[f32],
        dim: usize,
        m: &GalleryMeta,
        probes: &[f32],
        top: usize,
    ) -> Result<(Ranked, Ranked)> {
        let d = Distance::SquaredL2.into();
        Ok((
            rank_identities(d, gallery.to_vec(), dim, m, probes, top)?,
            scan_identities(d, gallery, dim, m, probes, top),
        ))
    }

    #[test]
    fn index_search_ranks_like_the_scan() -> Result<()> {
        let dim = 16;
        for (rows, ids, top) in [(500, 37, 1), (500, 37, 5), (40, 7, 9), (3000, 1000, 3)] {
            // Uneven identities: row i belongs to (i * i) % ids, some identities have no rows.
            let m = meta((0..rows).map(|i| (i * i) % ids).collect(), ids);
            let gallery = random_unit_rows(rows, dim, 1);
            let probes = random_unit_rows(12, dim, 2);
            let (fast, scan) = ranked_both_ways(&gallery, dim, &m, &probes, top)?;
            assert_eq!(fast, scan, "rows {rows}, identities {ids}, top {top}");
        }
        // Tight clusters of 50 rows per identity: the nearest rows all share one identity, so
        // the candidate list has to widen.
        let (dim, ids, per) = (8, 20, 50);
        let centres = random_unit_rows(ids, dim, 4);
        let noise = random_unit_rows(ids * per, dim, 5);
        let gallery: Vec<f32> = (0..ids * per)
            .flat_map(|r| {
                let c = &centres[(r / per) * dim..(r / per + 1) * dim];
                let n = &noise[r * dim..(r + 1) * dim];
                // Distances from the centre grow with r, far apart compared to f32 rounding.
                let scale = 0.002 * (r % per + 1) as f32;
                c.iter()
                    .zip(n)
                    .map(|(c, n)| c + scale * n)
                    .collect::<Vec<_>>()
            })
            .collect();
        let m = meta((0..ids * per).map(|r| r / per).collect(), ids);
        let probes = centres[..3 * dim].to_vec();
        for top in [1, 3, 7, 20, 25] {
            let (fast, scan) = ranked_both_ways(&gallery, dim, &m, &probes, top)?;
            assert_eq!(fast, scan, "clusters, top {top}");
            assert_eq!(fast[0].len(), top.min(ids));
        }
        Ok(())
    }

    #[test]
    fn gallery_files_round_trip() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("g.safetensors");
        let rows = random_unit_rows(10, 8, 3);
        for r in rows.chunks_exact(8) {
            let n: f32 = r.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        let m = meta((0..10).map(|i| i % 3).collect(), 3);
        std::fs::write(&path, gallery_file_bytes(rows.clone(), 10, 8, &m)?)?;
        let mut f = GalleryFile::open(&path)?;
        assert_eq!(f.shape, [10, 8]);
        assert_eq!(f.meta.take().map(|m| m.labels), Some(m.labels));
        assert_eq!(f.read_rows()?, rows);
        std::fs::write(&path, b"not a gallery")?;
        assert!(GalleryFile::open(&path).is_err());
        Ok(())
    }
}
