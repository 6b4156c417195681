//! One function per command: parse flags into library values, call the crates, print.

use crate::args::*;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use siamese_data::{parse_class_selection, Dataset, ImageCache, Skipped, SplitSize};
use siamese_infer::eval;
use siamese_infer::{
    check_threshold, Embeddings, Gallery, InferError, Model, Tta, UnseenEval, UnseenOptions,
    Verifier,
};
use siamese_train::{default_paths, report, RunOptions, TrainConfig, TrainData, TrainError};
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
        siamese_infer::set_matmul_precision(siamese_infer::MatmulPrecision::Bf16)
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
        Command::Import(a) => crate::faces::import(a),
        Command::Detect(a) => crate::faces::detect(a, &device),
        Command::Demo(a) => demo(a, &device),
        Command::Serve(a) => serve(a, &device),
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
        model.meta.tta = Tta::from_name(t).map_err(|e| usage(e.to_string()))?;
    }
    Ok(model)
}

// ---------------------------------------------------------------- train

/// The data sets of `--data`, merged and selected, with everything their listings skipped.
fn open_data(
    paths: &[PathBuf],
    classes: Option<&str>,
    skip_bad: bool,
) -> Result<(Dataset, Vec<Skipped>)> {
    let mut sets = Vec::new();
    let mut skipped = Vec::new();
    for p in paths {
        let (d, s) = Dataset::open_reporting(p, skip_bad)
            .with_context(|| format!("cannot read data set {}", p.display()))?;
        sets.push(d);
        skipped.extend(s);
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
    Ok((data, skipped))
}

/// `HxW` of the flag `flag`, e.g. `105x105`.
fn parse_size(flag: &str, s: &str) -> Result<(usize, usize)> {
    crate::values::size(s).map_err(|e| usage(format!("{flag} {e}")))
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
            let mut p = c.proxy.unwrap_or_default();
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
        c.tta = Tta::from_name(t).map_err(|e| usage(e.to_string()))?;
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
    crate::guard::report_skipped(
        &format!("{what} images"),
        &crate::guard::skipped_items(data, skipped),
    );
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

/// `train`'s outputs (model, checkpoint, report folder) against each other and its inputs
/// (data, configuration, the checkpoint resumed), before anything is read. An existing
/// checkpoint is replaced only by the run that resumes it, or with `--overwrite`.
fn check_train_outputs(a: &TrainArgs, checkpoint: &Path, report_dir: &Path) -> Result<()> {
    use siamese_infer::outputs::{Input, Output};
    let same = |x: &Path, y: &Path| {
        matches!(
            (std::fs::canonicalize(x), std::fs::canonicalize(y)),
            (Ok(x), Ok(y)) if x == y
        )
    };
    let resumes_it = a.resume.as_deref().is_some_and(|r| same(r, checkpoint));
    let mut inputs: Vec<Input<'_>> = a.data.iter().map(|d| Input::new("--data", d)).collect();
    if let Some(c) = &a.config {
        inputs.push(Input::new("--config", c));
    }
    if let Some(r) = a.resume.as_deref().filter(|_| !resumes_it) {
        inputs.push(Input::new("--resume", r));
    }
    let ckpt = if resumes_it || a.overwrite {
        Output::file("--checkpoint", checkpoint)
    } else {
        Output::new_file("--checkpoint", checkpoint)
    };
    let outputs = [
        Output::file("--out", &a.out),
        ckpt,
        Output::folder("--report", report_dir),
    ];
    crate::guard::check(&inputs, &outputs).map_err(|e| {
        if checkpoint.exists() && !resumes_it && !a.overwrite && !checkpoint.is_dir() {
            usage(format!(
                "{e}: it is the checkpoint of an earlier run; continue that run with --resume \
                 {}, or pass --overwrite to start a new one in its place",
                checkpoint.display()
            ))
        } else {
            e
        }
    })
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
    let (ckpt, report_dir) = default_paths(&a.out);
    let checkpoint = a.checkpoint.clone().unwrap_or(ckpt);
    let report_dir = a.report.clone().unwrap_or(report_dir);
    // Flag values first (their errors name the flag), then the outputs, then the data.
    let (mut config, recipe) = build_config(&a)?;
    check_train_outputs(&a, &checkpoint, &report_dir)?;
    let init = crate::finetune::init(&a, &mut config, device)?;
    config.bf16 = bf16;
    let (data, skipped) = open_data(&a.data, a.classes.as_deref(), a.skip_bad)?;
    crate::guard::report_skipped("training data", &skipped);
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
    // A face model as --init: training images are its pipeline's chips.
    let load = |set: &Dataset, what: &str| match init.as_ref().filter(|i| i.is_face_model()) {
        Some(i) => crate::finetune::face_cache(i, set, &a, what),
        None => load_cache(set, &config, a.skip_bad, what),
    };
    let train_cache = load(&train_set, "training")?;
    let val_cache = match &val_set {
        Some(v) => Some(load(v, "validation")?),
        None => None,
    };
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
        checkpoint,
        report_dir,
        resume: a.resume.clone(),
        stop,
        recipe: Some(recipe),
        stop_after: a.stop_after,
    };
    let data = TrainData {
        train: train_cache,
        validation: val_cache,
        sources: a.data.iter().map(|p| p.display().to_string()).collect(),
    };
    let mut progress = crate::progress::Progress::new(a.quiet);
    let run =
        siamese_train::train_from(&config, &data, &opts, init.as_ref(), device, &mut progress);
    let summary = match run {
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

fn verify(a: VerifyArgs, device: &Device) -> Result<()> {
    if let Some(t) = a.threshold {
        check_threshold(t)?;
    }
    let model = with_tta(load_model(&a.model, device)?, a.tta.as_deref())?;
    crate::faces::check_flags(&model, &a.face, None)?;
    let verifier = match Verifier::new(model, a.threshold) {
        Err(InferError::NoThreshold) => bail!(
            "{}: the model has no calibrated threshold; pass --threshold",
            a.model.display()
        ),
        v => v?,
    };
    if verifier.model().is_face_model() {
        return crate::faces::verify(&a, &verifier);
    }
    let v = verifier.verify(&a.a, &a.b)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"distance": v.distance, "same": v.same, "threshold": v.threshold, "a": a.a.to_string_lossy(), "b": a.b.to_string_lossy()})
        );
    } else {
        println!("{v}");
    }
    Ok(())
}

fn embed(a: EmbedArgs, device: &Device) -> Result<()> {
    {
        use siamese_infer::outputs::{Input, Output};
        let mut inputs = vec![Input::new("--model", &a.model)];
        inputs.extend(a.paths.iter().map(|p| Input::new("IMAGES", p)));
        crate::guard::check(&inputs, &[Output::file("--out", &a.out)])?;
    }
    let model = with_tta(load_model(&a.model, device)?, a.tta.as_deref())?;
    let paths = siamese_infer::expand_paths(&a.paths)?;
    if paths.is_empty() {
        bail!("no images found in the given paths");
    }
    if crate::faces::check_flags(&model, &a.face, a.faces)? {
        return crate::faces::embed(&a, &model, &paths);
    }
    let started = std::time::Instant::now();
    let pixels = siamese_infer::load_images(&paths, &model.meta.preprocess)?;
    let decoded = started.elapsed().as_secs_f64();
    let e = model.embed_images(&pixels)?;
    let encoded = started.elapsed().as_secs_f64() - decoded;
    let names = paths.iter().map(|p| p.display().to_string()).collect();
    Embeddings::new(e, model.embedding_shape(paths.len()), names)?.save(&a.out)?;
    eprintln!(
        "{} embeddings of dimension {} written to {} (decoding {:.1} ms, encoding {:.1} ms: \
         {:.1} images/s)",
        paths.len(),
        model.encoder.config().output_dim(),
        a.out.display(),
        decoded * 1e3,
        encoded * 1e3,
        paths.len() as f64 / encoded.max(1e-9)
    );
    Ok(())
}

// ---------------------------------------------------------------- gallery

fn enroll(a: EnrollArgs, device: &Device) -> Result<()> {
    {
        use siamese_infer::outputs::{Input, Output};
        let mut inputs = vec![Input::new("--model", &a.model)];
        if let Some(g) = &a.gallery {
            inputs.push(Input::new("--gallery", g));
        }
        crate::guard::check(&inputs, &[Output::file("--out", &a.out)])?;
    }
    let model = with_tta(load_model(&a.model, device)?, a.tta.as_deref())?;
    let gallery =
        match (&a.gallery, a.random) {
            (Some(_), Some(_)) => return Err(usage("give --gallery DIR or --random N, not both")),
            (None, None) => return Err(usage(
                "enroll needs --gallery DIR (a folder with one sub-folder of images per identity)",
            )),
            (None, Some(n)) => {
                if n == 0 || a.random_identities == 0 {
                    return Err(usage("--random and --random-identities must be at least 1"));
                }
                Gallery::random(&model, n, a.random_identities, a.random_seed)?
            }
            (Some(folder), None) => {
                if crate::faces::check_flags(&model, &a.face, a.faces)? {
                    return crate::faces::enroll(&a, &model, folder);
                }
                let (gallery, skipped) = Gallery::enrol_reporting(&model, folder, a.skip_bad)?;
                crate::guard::report_skipped(&format!("{}", folder.display()), &skipped);
                gallery
            }
        };
    gallery.save(&a.out)?;
    eprintln!(
        "enrolled {} images of {} identities into {}",
        gallery.len(),
        gallery.identities().len(),
        a.out.display()
    );
    Ok(())
}

fn identify(a: IdentifyArgs, device: &Device) -> Result<()> {
    if let Some(t) = a.threshold {
        check_threshold(t)?;
    }
    if a.top == 0 {
        return Err(usage("--top must be at least 1"));
    }
    let model = load_model(&a.model, device)?;
    let gallery = Gallery::open(&a.gallery, &model)?;
    if crate::faces::check_flags(&model, &a.face, a.faces)? {
        return crate::faces::identify(&a, &model, &gallery);
    }
    let results = gallery.identify(&model, &a.probes, a.top, a.threshold)?;
    let mut json = Vec::new();
    for (probe, r) in a.probes.iter().zip(&results) {
        if a.json {
            json.push(serde_json::json!({
                "probe": probe.to_string_lossy(),
                "identity": r.name(),
                "threshold": r.threshold,
                "candidates": r.candidates,
            }));
        } else {
            let list: Vec<String> = r
                .candidates
                .iter()
                .map(|c| format!("{} ({:.4})", c.identity, c.distance))
                .collect();
            println!("{}: {}  [{}]", probe.display(), r.name(), list.join(", "));
        }
    }
    if a.json {
        if json.len() == 1 {
            println!("{}", json[0]);
        } else {
            println!("{}", serde_json::json!({ "results": json }));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- eval

fn evaluate(a: EvalArgs, device: &Device) -> Result<()> {
    {
        use siamese_infer::outputs::{Input, Output};
        let mut inputs = vec![Input::new("--model", &a.model)];
        inputs.extend(a.data.iter().map(|d| Input::new("--data", d)));
        for (flag, p) in [
            ("--runs", &a.runs),
            ("--pairs", &a.pairs),
            ("--images", &a.images),
            ("--pairs-train", &a.pairs_train),
        ] {
            if let Some(p) = p {
                inputs.push(Input::new(flag, p));
            }
        }
        let outputs: Vec<Output<'_>> = a
            .report
            .iter()
            .map(|r| Output::folder("--report", r))
            .collect();
        crate::guard::check(&inputs, &outputs)?;
    }
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
    let (data, skipped) = open_data(&a.data, a.classes.as_deref(), false)?;
    crate::guard::report_skipped("test data", &skipped);
    let opts = UnseenOptions {
        ways: a.ways,
        episodes: a.episodes,
        shots: a.shots,
        seed: a.seed,
    };
    // A face model: each image's largest face, aligned (`--detect none`: the whole image).
    let UnseenEval {
        report: r,
        embedded,
    } = if crate::faces::check_flags(model, &a.face, None)? {
        let face = crate::faces::options(&a.face, None);
        let (e, no_face) = siamese_infer::eval_unseen_faces(model, &data, &opts, &face)?;
        crate::finetune::report_no_face("test data", &no_face);
        e
    } else {
        siamese_infer::eval_unseen(model, &data, &opts)?
    };
    if let Some(dir) = &a.report {
        report::write_unseen_report(&r, &embedded, model.matcher(), dir)?;
        eprintln!("report written to {}", dir.display());
    }
    if a.json {
        let mut v = serde_json::to_value(r.summary())?;
        if let Some(o) = v.as_object_mut() {
            o.insert("skipped".into(), serde_json::to_value(&skipped)?);
        }
        println!("{v}");
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
    let r = siamese_infer::eval_runs(model, &runs)?;
    if a.json {
        println!("{}", serde_json::to_value(&r)?);
    } else {
        for run in &r.runs {
            println!("{}: {:.1}%", run.run, 100.0 * run.accuracy);
        }
        println!(
            "one-shot runs: {:.2}% over {} trials ({} runs)",
            100.0 * r.accuracy,
            r.n,
            r.runs.len()
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
    let dev = a
        .pairs_train
        .as_ref()
        .map(siamese_data::LfwPairs::open)
        .transpose()?;
    let r = siamese_infer::eval_pairs(model, &pairs, images, dev.as_ref())?;
    if a.json {
        println!("{}", serde_json::to_value(&r)?);
    } else {
        println!(
            "pairs: accuracy {:.2}%{} over {} pairs; AUC {:.4}, EER {:.2}%, TAR {:.2}% at FAR 1e-3, {:.2}% at FAR 1e-2",
            100.0 * r.accuracy,
            r.std
                .map(|s| format!(" ± {:.2} ({}-fold)", 100.0 * s, r.folds))
                .unwrap_or_default(),
            r.n,
            r.auc,
            100.0 * r.eer,
            100.0 * r.tar_at_far_1e3,
            100.0 * r.tar_at_far_1e2
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- inspect / demo

fn inspect(a: InspectArgs) -> Result<()> {
    let model = load_model(&a.model, &Device::Cpu)?;
    if model.is_face_model() {
        return crate::faces::inspect(&a, &model);
    }
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
            Tta::None => "one pass per image".to_string(),
            Tta::Hflip => "mean of the image's and its mirror's encodings".into(),
            Tta::Affine(c) => format!(
                "mean encoding over the image and {} affine distortions of it",
                c - 1
            ),
            Tta::AffineSet(c) => format!(
                "the encodings of the image and {} affine distortions of it (ranges ×{}), \
                 compared as sets (symmetric Chamfer distance)",
                c - 1,
                siamese_infer::AFFINE_SET_STRENGTH
            ),
        }
    );
    println!("{}", threshold_line(m.calibration.as_ref()));
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
    {
        use siamese_infer::outputs::Output;
        let (_, report_dir) = default_paths(&a.out);
        crate::guard::check(
            &[],
            &[
                Output::file("--out", &a.out),
                Output::folder("--out (its report folder)", &report_dir),
            ],
        )?;
    }
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
        recipe: Some("demo".into()),
        stop_after: None,
    };
    eprintln!(
        "training conv4 on {} classes for {} steps…",
        train.num_classes(),
        a.steps
    );
    let mut progress = crate::progress::Progress::new(false);
    let summary = siamese_train::train(&config, &data, &opts, device, &mut progress)?;
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

// ---------------------------------------------------------------- serve

fn serve(a: ServeArgs, device: &Device) -> Result<()> {
    use std::net::ToSocketAddrs;
    if let Some(t) = a.threshold {
        check_threshold(t).map_err(|e| usage(format!("--threshold: {e}")))?;
    }
    let addr = a
        .addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| usage(format!("--addr `{}`: expected HOST:PORT", a.addr)))?;
    for (flag, v) in [
        ("--max-batch", a.max_batch.unwrap_or(1)),
        ("--max-images", a.max_images),
        ("--max-concurrent", a.max_concurrent),
        ("--max-body", a.max_body),
    ] {
        if v == 0 {
            return Err(usage(format!("{flag} must be at least 1")));
        }
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        return Err(usage("--timeout must be a positive number of seconds"));
    }
    if a.no_batch && a.max_batch.is_some() {
        return Err(usage("give --no-batch or --max-batch, not both"));
    }
    let model = with_tta(load_model(&a.model, device)?, a.tta.as_deref())?;
    let config = siamese_serve::Config {
        addr,
        store: a.store.clone(),
        gallery: a.gallery.clone(),
        token_file: a.token_file.clone(),
        threshold: a.threshold,
        max_batch: if a.no_batch {
            1
        } else {
            a.max_batch.unwrap_or(siamese_infer::EMBED_BATCH)
        },
        max_wait: std::time::Duration::from_millis(a.max_wait_ms),
        max_body_bytes: a.max_body,
        max_pixels: a.max_pixels,
        max_images: a.max_images,
        max_concurrent: a.max_concurrent,
        timeout: std::time::Duration::from_secs_f64(a.timeout),
        ..siamese_serve::Config::default()
    };
    // A client that hangs up must not end the server (the CLI restores SIGPIPE's default
    // for `siamese inspect | head`).
    #[cfg(unix)]
    // SAFETY: SIG_IGN is a valid disposition; no other thread changes signal handling here.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let stopped = siamese_serve::run(&config, model, |s| {
        for n in &s.notices {
            eprintln!("note: {n}");
        }
        let galleries: Vec<String> = s
            .galleries
            .iter()
            .map(|g| {
                format!(
                    "{} ({} images, {} identities)",
                    g.name, g.images, g.identities
                )
            })
            .collect();
        eprintln!(
            "galleries: {}; {}",
            if galleries.is_empty() {
                "none".to_string()
            } else {
                galleries.join(", ")
            },
            match &a.store {
                Some(d) => format!(
                    "kept in {} ({} log records replayed)",
                    d.display(),
                    s.replayed
                ),
                None => "in memory only (no --store)".to_string(),
            }
        );
        if !s.addr.ip().is_loopback() && a.token_file.is_none() {
            eprintln!(
                "warning: listening on {} without --token-file: anyone who can reach it may \
                 use it",
                s.addr
            );
        }
        eprintln!("listening on http://{}", s.addr);
    })?;
    eprintln!(
        "stopped{}; {} galleries compacted",
        if stopped.forced {
            " (requests still running were abandoned)"
        } else {
            ""
        },
        stopped.compacted
    );
    if !stopped.errors.is_empty() {
        bail!("while stopping: {}", stopped.errors.join("; "));
    }
    Ok(())
}

/// `inspect`'s threshold line: the stored threshold and where it came from (the rates it was
/// measured at, or the source of a threshold that was not measured).
pub(crate) fn threshold_line(cal: Option<&siamese_infer::Calibration>) -> String {
    match cal {
        Some(cal) if !cal.is_measured() => format!(
            "threshold:    {:.4}, same person below it (not measured: {})",
            cal.threshold, cal.source
        ),
        Some(cal) => format!(
            "threshold:    {:.4} (accuracy {:.1}%, FAR {:.1}%, FRR {:.1}% on {} pairs of {})",
            cal.threshold,
            100.0 * cal.accuracy,
            100.0 * cal.far,
            100.0 * cal.frr,
            cal.pairs,
            cal.source
        ),
        None => "threshold:    none (pass --threshold to verify)".to_string(),
    }
}
