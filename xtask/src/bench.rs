//! `cargo xtask bench`: end-to-end speed and memory of the release `siamese` binary.
//!
//! Everything is measured from outside, through the binary a user runs:
//!
//! - **train**: images/s of conv4 at 28×28, 56×46 (the att-faces recipe) and 105×105 (which
//!   bracket the omniglot recipe's 40×40), resnet and koch, read from the `report.json` that
//!   `siamese train --steps N` writes (`images_per_sec`: trained images over the training
//!   loop's wall time, first step included) and, steady state, from `metrics.jsonl` (steps
//!   2..N only, so the first step's allocations are excluded);
//! - **embed**: images/s of `siamese embed` on 300 AT&T images, process start included;
//! - **verify**: wall time of one `siamese verify` from process start (cold start), median
//!   of several runs, with a conv4 105×105 model;
//! - **identify**: latency per probe against galleries of random unit encodings
//!   (`enroll --random`): `(median T(P probes) − median T(1 probe)) / (P − 1)`, which removes
//!   process start, model load and gallery read and leaves embedding plus search per probe;
//! - **peak RSS** of every command, from `wait4`'s `ru_maxrss` on Linux.
//!
//! `--peer` also times the PyTorch reference `bench/peer/peer.py` on the same networks, input
//! sizes and batches, alternating candle and PyTorch runs, and reports medians and ratios.
//!
//! **faces** (`--only faces`, also part of a full run): dlib's face pipeline through the binary
//! with `faces.safetensors` — detection, detection + landmarks + encoding per photo, encoding
//! alone per chip, peak RSS of `identify --faces all` on a 1080p photo — and with `--peer`
//! face_recognition on real dlib (`bench/peer/faces.py`), alternating ([`faces`]).
//!
//! Results: `target/bench/bench.json` and `target/bench/bench.md`.

mod faces;
// The service rows (`siamese serve`): kept in their own file.
#[path = "bench_serve.rs"]
mod serve;

use crate::eval::{build_binary, root};
use crate::UsageError;
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Parsed `bench` flags.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Few steps and runs: a smoke test of the whole path.
    pub quick: bool,
    /// Also run the PyTorch reference.
    pub peer: bool,
    /// Training steps per run (default 2 with `--quick`, 10 otherwise).
    pub steps: u64,
    /// Repetitions of the timed commands (default 3 with `--quick`, 10 otherwise).
    pub runs: usize,
    /// Alternating candle / PyTorch rounds per network with `--peer` (default 3, 1 with
    /// `--quick`): PyTorch's rate moves by up to a fifth between runs here, so more rounds
    /// steady the medians.
    pub rounds: Option<usize>,
    /// Kernel threads of both sides.
    pub threads: usize,
    /// Gallery sizes for `identify`.
    pub galleries: Vec<usize>,
    /// Only these groups: the networks of architectures `conv4`, `resnet`, `koch`, and
    /// `faces` (dlib's face pipeline); all when empty.
    pub only: Vec<String>,
}

/// Parses `bench` arguments.
pub fn parse(args: &[String]) -> Result<BenchOptions> {
    let mut quick = false;
    let mut peer = false;
    let mut steps = None;
    let mut runs = None;
    let mut rounds = None;
    let mut threads = 2;
    let mut galleries = vec![10_000, 1_000_000];
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| -> Result<String> {
            it.next()
                .cloned()
                .ok_or_else(|| UsageError(format!("{flag} needs a value")).into())
        };
        let number = |flag: &str, v: String| -> Result<usize> {
            match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(UsageError(format!("{flag} takes a positive number, got `{v}`")).into()),
            }
        };
        match a.as_str() {
            "--quick" => quick = true,
            "--peer" => peer = true,
            "--steps" => steps = Some(number(a, value(a)?)? as u64),
            "--runs" => runs = Some(number(a, value(a)?)?),
            "--rounds" => rounds = Some(number(a, value(a)?)?),
            "--threads" => threads = number(a, value(a)?)?,
            "--galleries" => {
                galleries = value(a)?
                    .split(',')
                    .map(|g| number("--galleries", g.to_string()))
                    .collect::<Result<_>>()?
            }
            "--only" => {
                only = value(a)?.split(',').map(|v| v.trim().to_string()).collect();
                if let Some(bad) = only
                    .iter()
                    .find(|v| !ARCHS.contains(&v.as_str()) && *v != FACES)
                {
                    return Err(UsageError(format!(
                        "--only takes architectures ({}) or {FACES}, got `{bad}`",
                        ARCHS.join(", ")
                    ))
                    .into());
                }
            }
            other => return Err(UsageError(format!("unknown bench argument `{other}`")).into()),
        }
    }
    Ok(BenchOptions {
        quick,
        peer,
        steps: steps.unwrap_or(if quick { 2 } else { 10 }),
        runs: runs.unwrap_or(if quick { 3 } else { 10 }),
        rounds,
        threads,
        galleries,
        only,
    })
}

/// The architectures the benchmarks time.
const ARCHS: [&str; 3] = ["conv4", "resnet", "koch"];

/// The `--only` group of dlib's face pipeline.
const FACES: &str = "faces";

impl BenchOptions {
    /// Whether the network rows (training, embed, verify, identify) run: no `--only`, or one
    /// naming an architecture.
    pub fn networks(&self) -> bool {
        self.only.is_empty() || self.only.iter().any(|a| a != FACES)
    }

    /// Whether the face rows run: no `--only`, or one naming `faces`.
    pub fn faces(&self) -> bool {
        self.only.is_empty() || self.only.iter().any(|a| a == FACES)
    }
}

/// One network timed by training: a recipe, and the architecture, input size and batch passed
/// explicitly to `siamese train` and to the PyTorch peer.
struct Net {
    /// Row name.
    name: &'static str,
    /// `peer.py --arch`.
    arch: &'static str,
    /// `omniglot` or `att-faces`: the data, learning rate and weight decay follow from it.
    recipe: &'static str,
    /// (height, width) of the input.
    size: (usize, usize),
    /// P × K of the batch.
    batch: (usize, usize),
}

impl Net {
    /// Learning rate and weight decay of the recipe's AdamW (for the peer).
    fn optimiser(&self) -> (f64, f64) {
        if self.recipe == "omniglot" {
            (3e-3, 1e-4)
        } else {
            (2e-3, 5e-4)
        }
    }

    /// The recipe's training data in `../shared/data`.
    fn data(&self) -> PathBuf {
        let shared = root().join("../shared/data");
        if self.recipe == "omniglot" {
            shared.join("omniglot/images_background_small1.zip")
        } else {
            shared.join("att_faces")
        }
    }
}

/// The networks `o` asks for: [`all_nets`], narrowed by `--only`.
fn nets(o: &BenchOptions) -> Vec<Net> {
    all_nets(o.quick)
        .into_iter()
        .filter(|n| o.only.is_empty() || o.only.iter().any(|a| a == n.arch))
        .collect()
}

fn all_nets(quick: bool) -> Vec<Net> {
    let net = |name, arch, recipe, size, batch| Net {
        name,
        arch,
        recipe,
        size,
        batch,
    };
    let mut v = vec![
        net("conv4 28×28", "conv4", "omniglot", (28, 28), (64, 4)),
        net(
            "att-faces recipe (conv4 56×46)",
            "conv4",
            "att-faces",
            (56, 46),
            (16, 4),
        ),
        net("conv4 105×105", "conv4", "omniglot", (105, 105), (32, 4)),
    ];
    if !quick {
        v.push(net(
            "resnet 112×92",
            "resnet",
            "att-faces",
            (112, 92),
            (16, 4),
        ));
        v.push(net("koch 105×105", "koch", "omniglot", (105, 105), (32, 4)));
    }
    v
}

/// What one run of a command cost.
#[derive(Debug, Clone)]
struct Measured {
    /// Seconds from spawn to exit.
    wall: f64,
    /// Peak resident set in MiB (Linux), if known.
    peak_mib: Option<f64>,
    /// User plus system CPU seconds (Linux), if known.
    cpu: Option<f64>,
    /// What the command wrote to stderr.
    stderr: String,
}

/// Runs `exe args`, measuring wall time and peak RSS; fails with the command's stderr.
fn measure(exe: &Path, args: &[String], threads: usize) -> Result<Measured> {
    let mut child = Command::new(exe)
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let t = Instant::now();
    let mut out_pipe = child.stdout.take().context("no stdout pipe")?;
    let mut err_pipe = child.stderr.take().context("no stderr pipe")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let (success, peak_mib, cpu) = wait_with_rusage(&mut child)?;
    let wall = t.elapsed().as_secs_f64();
    // stdout is drained so the child never blocks on a full pipe; results come from files.
    let _ = out_reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    if !success {
        bail!(
            "{} {} failed:\n{}",
            exe.display(),
            args.join(" "),
            stderr.trim_end()
        );
    }
    Ok(Measured {
        wall,
        peak_mib,
        cpu,
        stderr,
    })
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
mod sys {
    /// `struct rusage` of 64-bit Linux: two `timeval`s, then 14 `long`s, `ru_maxrss` first.
    #[repr(C)]
    pub struct Rusage {
        pub utime: [i64; 2],
        pub stime: [i64; 2],
        pub maxrss: i64,
        pub rest: [i64; 13],
    }

    extern "C" {
        pub fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut Rusage) -> i32;
    }
}

/// Waits for `child` and returns (exited with 0, peak RSS in MiB, user + system CPU seconds).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn wait_with_rusage(child: &mut std::process::Child) -> Result<(bool, Option<f64>, Option<f64>)> {
    let pid = i32::try_from(child.id()).context("process id out of range")?;
    let mut status = 0i32;
    let mut usage = sys::Rusage {
        utime: [0; 2],
        stime: [0; 2],
        maxrss: 0,
        rest: [0; 13],
    };
    loop {
        // SAFETY: `status` and `usage` are valid, exclusively borrowed and laid out as the C
        // types; `pid` is our own child, not yet reaped (std's `Child` is never waited on here).
        let r = unsafe { sys::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    // WIFEXITED && WEXITSTATUS == 0.
    let success = status & 0x7f == 0 && (status >> 8) & 0xff == 0;
    let seconds = |tv: [i64; 2]| tv[0] as f64 + tv[1] as f64 * 1e-6;
    Ok((
        success,
        Some(usage.maxrss as f64 / 1024.0),
        Some(seconds(usage.utime) + seconds(usage.stime)),
    ))
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn wait_with_rusage(child: &mut std::process::Child) -> Result<(bool, Option<f64>, Option<f64>)> {
    Ok((child.wait().context("wait")?.success(), None, None))
}

/// The median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return 0.0;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// A Markdown table: a header row, the separator, then the rows (cells' `|` escaped).
pub fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = format!(
        "| {} |\n|{}\n",
        header
            .iter()
            .map(|h| cell(h))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(header.len())
    );
    for r in rows {
        let mut cells: Vec<String> = r.iter().map(|c| cell(c)).collect();
        cells.resize(header.len(), String::new());
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

fn mib(m: Option<f64>) -> String {
    m.map_or_else(|| "n/a".into(), |m| format!("{m:.0} MiB"))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Images/s of one `train` run: (report.json's `images_per_sec`, steady state over steps
/// 2..N from metrics.jsonl, or the former when there is one step), and the measurement.
fn train_once(
    exe: &Path,
    net: &Net,
    steps: u64,
    out: &Path,
    extra: &[&str],
    threads: usize,
) -> Result<(f64, f64, Measured)> {
    let mut args: Vec<String> = vec![
        "train".into(),
        "--data".into(),
        s(&net.data()),
        "--recipe".into(),
        net.recipe.into(),
        "--steps".into(),
        steps.to_string(),
        "--quiet".into(),
        "--val-fraction".into(),
        "0".into(),
        "--checkpoint-every".into(),
        "0".into(),
        "--out".into(),
        s(out),
        // The network, input and batch of the row, so the labels (and the PyTorch peer, which
        // gets the same values) describe what was timed, whatever the recipe's defaults are.
        "--arch".into(),
        net.arch.into(),
        // One network, as the peer's, even where the recipe trains an ensemble.
        "--members".into(),
        "1".into(),
        // The plain network, as the peer's, even where the recipe reads blocks into the
        // encoding: encodings stay `embedding_dim` (128) long, as the identify rows' galleries
        // of random encodings are meant to be.
        "--taps".into(),
        "none".into(),
        "--input-size".into(),
        format!("{}x{}", net.size.0, net.size.1),
        "--batch-classes".into(),
        net.batch.0.to_string(),
        "--batch-images".into(),
        net.batch.1.to_string(),
        "--lr".into(),
        net.optimiser().0.to_string(),
        // The loss of bench/peer/peer.py, whatever the recipe trains with.
        "--loss".into(),
        "triplet".into(),
        // Inference is timed on the network alone, as the peer's: no test-time augmentation
        // (the att-faces recipe's hflip would encode every image twice).
        "--tta".into(),
        "none".into(),
    ];
    args.extend(extra.iter().map(|e| e.to_string()));
    let m = measure(exe, &args, threads)?;
    let report_dir = out.with_file_name(format!(
        "{}-report",
        out.file_stem()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    ));
    let text = std::fs::read_to_string(report_dir.join("report.json"))
        .with_context(|| format!("cannot read {}", report_dir.join("report.json").display()))?;
    let report: serde_json::Value = serde_json::from_str(&text)?;
    let ips = report["images_per_sec"]
        .as_f64()
        .context("report.json has no images_per_sec")?;
    let steady = steady_images_per_sec(
        &std::fs::read_to_string(report_dir.join("metrics.jsonl")).unwrap_or_default(),
        (net.batch.0 * net.batch.1) as f64,
    )
    .unwrap_or(ips);
    Ok((ips, steady, m))
}

/// Steady-state images/s from a metrics log whose lines carry the cumulative `images_per_sec`
/// after `step`: `t_n = n·B / ips_n`, rate `(N − 1)·B / (t_N − t_1)`.
pub fn steady_images_per_sec(metrics: &str, batch: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_f64()?, v["images_per_sec"].as_f64()?)))
        .filter(|p| p.1 > 0.0)
        .collect();
    let (first, last) = (points.first()?, points.last()?);
    let t = |p: &(f64, f64)| p.0 * batch / p.1;
    let dt = t(last) - t(first);
    (last.0 > first.0 && dt > 0.0).then(|| (last.0 - first.0) * batch / dt)
}

/// Parses `bench` arguments and runs it.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let exe = build_binary()?;
    let out = root().join("target/bench");
    let work = out.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let mut json = serde_json::Map::new();
    let mut md = format!(
        "# siamese benchmarks\n\nRelease binary, {} kernel threads, {} runs per timed command{}. \
         Peak RSS: `ru_maxrss`.\n",
        o.threads,
        o.runs,
        if o.quick { " (--quick)" } else { "" }
    );
    if o.networks() {
        md.push_str(&networks(&exe, &o, &work, &mut json)?);
    }
    if o.faces() {
        let f = faces::run(&exe, &o, &work)?;
        md.push_str(&f.md);
        json.insert("faces".into(), f.json);
    }
    if o.networks() {
        let r = serve::run(&exe, &work, o.threads, if o.quick { 2.0 } else { 5.0 })?;
        md.push_str(&r.md);
        json.insert("serve".into(), r.json);
    }
    json.insert(
        "options".into(),
        serde_json::json!({"quick": o.quick, "steps": o.steps, "runs": o.runs, "threads": o.threads, "only": o.only, "peer": o.peer}),
    );
    std::fs::write(out.join("bench.md"), &md)
        .with_context(|| format!("cannot write {}", out.join("bench.md").display()))?;
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(json))?,
    )
    .with_context(|| format!("cannot write {}", out.join("bench.json").display()))?;
    println!("{md}");
    eprintln!("report: {}", out.join("bench.md").display());
    Ok(())
}

/// The network rows (training, embed, verify, identify, and with `--peer` the PyTorch
/// comparison): their Markdown, their JSON into `json`.
fn networks(
    exe: &Path,
    o: &BenchOptions,
    work: &Path,
    json: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<String> {
    let exe = exe.to_path_buf();
    let att = root().join("../shared/data/att_faces");
    if !att.is_dir() {
        bail!(
            "{} not found: run `cargo xtask fetch att-faces` and `omniglot-small` (or use --mirror)",
            att.display()
        );
    }
    let mut rows: Vec<Vec<String>> = Vec::new();

    // Training throughput per recipe network.
    let mut train_json = Vec::new();
    let mut conv4_model = None;
    for net in nets(o) {
        let model = work.join(format!("{}-{}.safetensors", net.recipe, net.arch));
        eprintln!("train: {} ({} steps)", net.name, o.steps);
        let steps = if net.arch == "koch" {
            o.steps.min(3)
        } else {
            o.steps
        };
        let (ips, steady, m) = train_once(&exe, &net, steps, &model, &[], o.threads)?;
        rows.push(vec![
            format!("train {}", net.name),
            format!(
                "{ips:.1} images/s ({steady:.1} steady), batch {}×{}, {steps} steps",
                net.batch.0, net.batch.1
            ),
            mib(m.peak_mib),
        ]);
        train_json.push(serde_json::json!({"net": net.name, "arch": net.arch, "recipe": net.recipe, "steps": steps, "images_per_sec": ips, "steady_images_per_sec": steady, "wall_seconds": m.wall, "peak_rss_mib": m.peak_mib}));
        if net.arch == "conv4" && net.size == (105, 105) {
            conv4_model = Some(model);
        }
    }
    json.insert("train".into(), train_json.into());
    let model = match conv4_model {
        Some(model) => model,
        // `--only` left the conv4 105×105 row out, but the embed, verify and identify rows time
        // that network: one step gives them a model (its weights do not change their timings).
        None => {
            let net = all_nets(true)
                .into_iter()
                .find(|n| n.arch == "conv4" && n.size == (105, 105))
                .context("the conv4 105×105 network is missing from the bench table")?;
            let model = work.join(format!("{}-{}.safetensors", net.recipe, net.arch));
            eprintln!(
                "train: {} (1 step: the model of the embed, verify and identify rows)",
                net.name
            );
            train_once(&exe, &net, 1, &model, &[], o.threads)?;
            model
        }
    };

    // embed: 300 AT&T images (s1–s30), process start included.
    let images: Vec<String> = (1..=30)
        .flat_map(|sub| (1..=10).map(move |i| (sub, i)))
        .map(|(sub, i)| s(&att.join(format!("s{sub}/{i}.pgm"))))
        .collect();
    let mut args = vec!["embed".into(), "--model".into(), s(&model)];
    args.extend(images.iter().cloned());
    args.extend(["--out".into(), s(&work.join("embed.npy"))]);
    let mut walls = Vec::new();
    let mut peak = None;
    for _ in 0..o.runs.min(3) {
        let m = measure(&exe, &args, o.threads)?;
        walls.push(m.wall);
        peak = m.peak_mib;
    }
    let embed_ips = images.len() as f64 / median(&walls);
    rows.push(vec![
        format!("embed {} images (conv4 105×105)", images.len()),
        format!("{embed_ips:.1} images/s (median of {})", walls.len()),
        mib(peak),
    ]);
    json.insert(
        "embed".into(),
        serde_json::json!({"images": images.len(), "images_per_sec": embed_ips, "walls": walls, "peak_rss_mib": peak}),
    );

    // verify: cold start, one pair.
    let args = vec![
        "verify".into(),
        "--model".into(),
        s(&model),
        images[0].clone(),
        images[1].clone(),
    ];
    let mut walls = Vec::new();
    for _ in 0..o.runs {
        let m = measure(&exe, &args, o.threads)?;
        walls.push(m.wall);
        peak = m.peak_mib;
    }
    let verify = median(&walls);
    rows.push(vec![
        "verify one pair (cold start, conv4 105×105)".into(),
        format!("{:.0} ms (median of {})", 1e3 * verify, walls.len()),
        mib(peak),
    ]);
    json.insert(
        "verify".into(),
        serde_json::json!({"median_seconds": verify, "walls": walls, "peak_rss_mib": peak}),
    );

    // identify against random galleries.
    let probes_n = 16;
    let mut id_json = Vec::new();
    for &g in &o.galleries {
        let gallery = work.join(format!("gallery-{g}.safetensors"));
        eprintln!("enroll: {g} random encodings");
        let e = measure(
            &exe,
            &[
                "enroll".into(),
                "--model".into(),
                s(&model),
                "--random".into(),
                g.to_string(),
                "--random-identities".into(),
                (g / 10).clamp(1, 1000).to_string(),
                "--out".into(),
                s(&gallery),
            ],
            o.threads,
        )?;
        let base = vec![
            "identify".into(),
            "--model".into(),
            s(&model),
            "--gallery".into(),
            s(&gallery),
            "--top".into(),
            "5".into(),
            "--json".into(),
        ];
        let (mut one, mut many) = (Vec::new(), Vec::new());
        let mut peak_many = None;
        for _ in 0..o.runs.min(5) {
            let mut a1 = base.clone();
            a1.push(images[0].clone());
            one.push(measure(&exe, &a1, o.threads)?.wall);
            let mut ap = base.clone();
            ap.extend(images[..probes_n].iter().cloned());
            let m = measure(&exe, &ap, o.threads)?;
            many.push(m.wall);
            peak_many = m.peak_mib;
        }
        let per_probe = ((median(&many) - median(&one)) / (probes_n - 1) as f64).max(0.0);
        rows.push(vec![
            format!("identify, gallery of {g} (top 5)"),
            format!(
                "{:.1} ms per probe; {:.0} ms for 1 probe from start",
                1e3 * per_probe,
                1e3 * median(&one)
            ),
            mib(peak_many),
        ]);
        id_json.push(serde_json::json!({"gallery": g, "probes": probes_n, "per_probe_seconds": per_probe, "one_probe_seconds": median(&one), "walls_one": one, "walls_many": many, "peak_rss_mib": peak_many, "enroll_seconds": e.wall, "enroll_peak_rss_mib": e.peak_mib}));
        let _ = std::fs::remove_file(&gallery);
    }
    json.insert("identify".into(), id_json.into());

    let mut md = format!(
        "\n## Networks\n\n{} steps per training run. \
         Training images/s are `report.json`'s `images_per_sec` (first step included; steady state: steps 2..N). \
         Identify latency is (T(16 probes) − T(1 probe)) / 15 of medians.\n\n",
        o.steps,
    );
    md.push_str(&markdown_table(&["what", "speed", "peak RSS"], &rows));

    if o.peer {
        match peer(&exe, o, work)? {
            Some((peer_rows, peer_json)) => {
                md.push_str("\n## candle vs PyTorch (bench/peer/peer.py)\n\n");
                md.push_str(&format!(
                    "Same network, input size, P×K batch, semi-hard triplet loss and AdamW; random inputs for PyTorch, \
                     `--augment false` for candle; steady-state training images/s (first step excluded); inference \
                     images/s in evaluation mode, forward passes alone, both sides in batches of {INFER_BATCH} \
                     (candle: the encoding time `siamese embed` reports with `--tta none` for {} minus that for {} \
                     images, so decoding, the first batches' warm-up and process start are left out, as they are for \
                     PyTorch); medians of alternating runs. Time ratios are candle's time per image over PyTorch's: \
                     below 1× candle is faster.\n\n",
                    INFER_RUNS.1, INFER_RUNS.0
                ));
                md.push_str(&markdown_table(
                    &[
                        "network",
                        "candle train images/s",
                        "PyTorch train images/s",
                        "train time ratio",
                        "candle inference images/s",
                        "PyTorch inference images/s",
                        "inference time ratio",
                    ],
                    &peer_rows,
                ));
                json.insert("peer".into(), peer_json);
            }
            None => md.push_str(
                "\nPyTorch comparison skipped: `python3 -c 'import torch'` failed (install with `pip install torch numpy`).\n",
            ),
        }
    }
    Ok(md)
}

/// The batch both sides' inference runs in: `siamese embed`'s (`siamese_train::EMBED_BATCH`,
/// which `xtask` does not link), passed to the peer as `--infer-batch`.
const INFER_BATCH: usize = 16;

/// The two `siamese embed` runs whose encoding times [`inference_ips`] subtracts: so many
/// images timed, `INFER_RUNS.1 - INFER_RUNS.0`, and the peer times as many.
const INFER_RUNS: (usize, usize) = (64, 1344);

/// Inference images/s of the network in `siamese embed` with `model`, as the peer measures
/// PyTorch's (one forward pass per image; `--tta none` whatever the model says): the encoding
/// time `embed` reports for 1344 AT&T images (s1–s30, repeated) minus that for 64 (see
/// [`INFER_RUNS`]), so the first batches' warm-up cancels and 1280 images are timed, in
/// batches of [`INFER_BATCH`] on both sides. (With 400 minus 100 images, the first batch's
/// page faults, 0.1 to 0.6 s from run to run here, moved the rate by up to half.) Decoding,
/// resizing and writing the output are left out here; `embed` images/s in the main table
/// includes them.
fn inference_ips(exe: &Path, model: &Path, threads: usize) -> Result<f64> {
    let att = root().join("../shared/data/att_faces");
    let encoding = |n: usize| -> Result<f64> {
        let mut args = vec!["embed".to_string(), "--tta".into(), "none".into()];
        args.extend(["--model".into(), s(model)]);
        args.extend(
            (0..n).map(|i| s(&att.join(format!("s{}/{}.pgm", i / 10 % 30 + 1, i % 10 + 1)))),
        );
        args.extend(["--out".into(), s(&model.with_extension("npy"))]);
        let m = measure(exe, &args, threads)?;
        encoding_seconds(&m.stderr)
            .with_context(|| format!("`siamese embed` reported no encoding time:\n{}", m.stderr))
    };
    let (small, large) = (encoding(INFER_RUNS.0)?, encoding(INFER_RUNS.1)?);
    Ok((INFER_RUNS.1 - INFER_RUNS.0) as f64 / (large - small).max(1e-9))
}

/// The seconds in `encoding N ms` of `siamese embed`'s report.
fn encoding_seconds(stderr: &str) -> Option<f64> {
    let rest = &stderr[stderr.find("encoding ")? + "encoding ".len()..];
    let ms: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(ms / 1e3)
}

/// The Python that runs the peer: `$PYTHON` (a virtual environment's, say), else `python3`.
fn python() -> String {
    std::env::var("PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// Whether the peer's Python can import torch.
fn torch_available() -> bool {
    Command::new(python())
        .args(["-c", "import torch"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The PyTorch comparison: `None` when torch is missing (after saying how to install it).
#[allow(clippy::type_complexity)]
fn peer(
    exe: &Path,
    o: &BenchOptions,
    work: &Path,
) -> Result<Option<(Vec<Vec<String>>, serde_json::Value)>> {
    if !torch_available() {
        eprintln!(
            "--peer: {} cannot import torch; install it with `pip install torch numpy` \
             (CPU wheels: `pip install torch numpy --index-url https://download.pytorch.org/whl/cpu`) \
             and run `cargo xtask bench --peer` again (set PYTHON to use another interpreter). \
             Skipping the comparison.",
            python()
        );
        return Ok(None);
    }
    let script = root().join("bench/peer/peer.py");
    let rounds = o.rounds.unwrap_or(if o.quick { 1 } else { 3 });
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for net in nets(o) {
        let steps = if net.arch == "koch" {
            o.steps.min(3)
        } else {
            o.steps
        }
        .max(2);
        let model = work.join(format!(
            "peer-{}-{}-{}x{}.safetensors",
            net.recipe, net.arch, net.size.0, net.size.1
        ));
        let (mut ours, mut theirs, mut infer) = (Vec::new(), Vec::new(), Vec::new());
        let mut our_infer = Vec::new();
        for round in 0..rounds {
            eprintln!("peer: {} round {}/{rounds}", net.name, round + 1);
            // A: candle.
            let (_, steady, _) =
                train_once(exe, &net, steps, &model, &["--augment", "false"], o.threads)?;
            ours.push(steady);
            our_infer.push(inference_ips(exe, &model, o.threads)?);
            // B: PyTorch.
            let m = Command::new(python())
                .arg(&script)
                .args([
                    "--arch",
                    net.arch,
                    "--height",
                    &net.size.0.to_string(),
                    "--width",
                    &net.size.1.to_string(),
                    "--classes",
                    &net.batch.0.to_string(),
                    "--images",
                    &net.batch.1.to_string(),
                    "--steps",
                    &steps.to_string(),
                    "--lr",
                    &net.optimiser().0.to_string(),
                    "--weight-decay",
                    &net.optimiser().1.to_string(),
                    "--threads",
                    &o.threads.to_string(),
                    // The batch `siamese embed` runs (`siamese_train::EMBED_BATCH`), and as
                    // many images as candle's inference rate times, not the script's default
                    // 3 batches: its rate is otherwise the noisiest of the table.
                    "--infer-batch",
                    &INFER_BATCH.to_string(),
                    "--infer-batches",
                    &((INFER_RUNS.1 - INFER_RUNS.0) / INFER_BATCH).to_string(),
                ])
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("cannot run {} {}", python(), script.display()))?;
            if !m.status.success() {
                bail!("{} failed ({})", script.display(), m.status);
            }
            let v: serde_json::Value =
                serde_json::from_slice(&m.stdout).context("peer.py printed no JSON")?;
            theirs.push(
                v["train_images_per_sec"]
                    .as_f64()
                    .context("peer.py: no train_images_per_sec")?,
            );
            infer.push(v["infer_images_per_sec"].as_f64().unwrap_or(f64::NAN));
        }
        let (a, b) = (median(&ours), median(&theirs));
        let (ia, ib) = (median(&our_infer), median(&infer));
        // Time ratios (candle's time per image over PyTorch's): below 1 means candle is faster.
        let ratio = if a > 0.0 { b / a } else { f64::NAN };
        let infer_ratio = if ia > 0.0 { ib / ia } else { f64::NAN };
        rows.push(vec![
            net.name.to_string(),
            format!("{a:.1}"),
            format!("{b:.1}"),
            format!("{ratio:.2}×"),
            format!("{ia:.1}"),
            format!("{ib:.1}"),
            format!("{infer_ratio:.2}×"),
        ]);
        out.push(serde_json::json!({"net": net.name, "arch": net.arch, "candle": ours, "pytorch": theirs, "candle_infer": our_infer, "pytorch_infer": infer, "train_time_ratio": ratio, "infer_time_ratio": infer_ratio}));
    }
    Ok(Some((rows, out.into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_the_encoding_time_of_embed() {
        let line = "400 embeddings of dimension 128 written to m.npy (decoding 31.0 ms, \
                    encoding 97.5 ms: 4102.6 images/s)\n";
        assert_eq!(encoding_seconds(line), Some(0.0975));
        assert_eq!(encoding_seconds("400 embeddings written"), None);
        assert_eq!(encoding_seconds("encoding fast"), None);
    }

    #[test]
    fn parses_flags_and_defaults() -> Result<()> {
        let o = parse(&[])?;
        assert!(!o.quick && !o.peer);
        assert_eq!((o.steps, o.runs, o.threads), (10, 10, 2));
        assert_eq!(o.galleries, vec![10_000, 1_000_000]);
        let o = parse(&args(&["--quick", "--peer", "--galleries", "100,2000"]))?;
        assert!(o.quick && o.peer);
        assert_eq!((o.steps, o.runs), (2, 3));
        assert_eq!(o.galleries, vec![100, 2000]);
        assert_eq!(o.rounds, None);
        let o = parse(&args(&[
            "--quick", "--steps", "7", "--runs", "4", "--rounds", "5",
        ]))?;
        assert_eq!((o.steps, o.runs, o.rounds), (7, 4, Some(5)));
        assert_eq!(nets(&o).len(), 3);
        let o = parse(&args(&["--only", "koch,resnet"]))?;
        let names: Vec<&str> = nets(&o).iter().map(|n| n.arch).collect();
        assert_eq!(names, ["resnet", "koch"]);
        assert!(o.networks() && !o.faces());
        let o = parse(&args(&["--only", "faces"]))?;
        assert!(!o.networks() && o.faces());
        assert!(nets(&o).is_empty());
        let o = parse(&args(&["--only", "faces,conv4"]))?;
        assert!(o.networks() && o.faces());
        let o = parse(&[])?;
        assert!(o.networks() && o.faces());
        for bad in [
            &["--steps"][..],
            &["--steps", "0"],
            &["--runs", "x"],
            &["--rounds", "0"],
            &["--fast"],
            &["--galleries", "10,,"],
            &["--only", "vgg"],
            &["--only"],
        ] {
            let e = parse(&args(bad)).err().context("should fail")?;
            assert!(e.downcast_ref::<UsageError>().is_some(), "{bad:?}: {e}");
        }
        Ok(())
    }

    #[test]
    fn formats_markdown_tables() {
        let t = markdown_table(
            &["what", "speed"],
            &[
                vec!["train a|b".into(), "1.0".into()],
                vec!["short row".into()],
            ],
        );
        assert_eq!(
            t,
            "| what | speed |\n|---|---|\n| train a\\|b | 1.0 |\n| short row |  |\n"
        );
    }

    #[test]
    fn medians_and_steady_rates() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        // Step 1 took 2 s, steps 2..3 took 1 s each, batch 10.
        let log = "{\"step\":1,\"images_per_sec\":5.0}\n{\"step\":2,\"images_per_sec\":6.666666666666667}\n{\"step\":3,\"images_per_sec\":7.5}\n";
        let r = steady_images_per_sec(log, 10.0).unwrap_or(0.0);
        assert!((r - 10.0).abs() < 1e-9, "{r}");
        assert_eq!(
            steady_images_per_sec("{\"step\":1,\"images_per_sec\":5.0}", 10.0),
            None
        );
        assert_eq!(steady_images_per_sec("", 10.0), None);
    }
}
