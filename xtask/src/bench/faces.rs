//! `cargo xtask bench --only faces`: dlib's face pipeline through the release binary, and with
//! `--peer` face_recognition on real dlib (`bench/peer/faces.py`), alternating.
//!
//! The model is `faces/faces.safetensors` of the data root, fetched and imported as
//! `cargo xtask fetch dlib-face-models` does (from `../shared/faces/models` when it exists, else
//! `$SIAMESE_MIRROR` or dlib.net). Photos: `../shared/faces/images`; chips: the 150×150 chips
//! of `../shared/faces/golden/chips`. Each stage's time per image is the difference of two runs
//! of one command, one given every input once and one given them `n` times, divided by the
//! extra inputs: process start, model load and first-call warm-up cancel, and what is left is
//! the stage itself (with decoding each photo, which face_recognition's timings leave out;
//! a few milliseconds a photo).
//!
//! - detect: `siamese detect --model faces.safetensors PHOTOS` (the MMOD CNN, upsampled once),
//!   against `face_locations(img, 1, "cnn")`;
//! - detect + landmarks + encoding: `siamese embed --model faces.safetensors --faces all PHOTOS`,
//!   against `face_locations` then `face_encodings(img, those locations)`;
//! - encoding alone: `siamese embed --model faces.safetensors --detect none CHIPS`, against
//!   `compute_face_descriptor(chips)` on the same chips in one batch call;
//! - peak RSS of `siamese identify --faces all` on the 1080p photo (a five-identity gallery
//!   enrolled from the photos), against face_recognition detecting and encoding that photo.

use super::{markdown_table, measure, median, mib, python, s, BenchOptions, Measured};
use crate::eval::root;
use crate::fetch;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The face rows of the report: Markdown and JSON.
pub struct FacesReport {
    /// A `## Faces` section.
    pub md: String,
    /// Everything measured.
    pub json: serde_json::Value,
}

/// The photos, chips and model the face rows time.
struct Inputs {
    /// `faces.safetensors`.
    model: PathBuf,
    /// The folder of the three `.dat` files.
    dat_dir: PathBuf,
    /// Photos, sorted.
    photos: Vec<PathBuf>,
    /// The folder of the photos (all of them, for the gallery).
    photo_dir: PathBuf,
    /// 150×150 chips, sorted.
    chips: Vec<PathBuf>,
    /// The folder of the chips.
    chip_dir: PathBuf,
    /// The 1920×1080 photo of the peak-RSS row.
    photo_1080p: PathBuf,
}

/// Image files (`.jpg`, `.jpeg`, `.png`) of `dir`, sorted.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// The photos of a `--quick` run: the five smallest (under 0.6 megapixels each), where dlib
/// takes seconds a photo rather than minutes for all of them.
const QUICK_PHOTOS: [&str; 5] = [
    "alex-lacamoire.png",
    "lin-manuel-miranda.png",
    "obama-240p.jpg",
    "obama-480p.jpg",
    "obama_small.jpg",
];

/// Photos left out of every run: `obama3.jpg` (1434×2333) upsampled once is 13 megapixels,
/// for which dlib's detector holds about 13 GB (8 GB for 1920×1080), too much beside other work
/// on a 24 GB machine.
const SKIPPED_PHOTOS: [&str; 1] = ["obama3.jpg"];

/// Fetches and imports dlib's models (as `cargo xtask fetch dlib-face-models`) and lists the
/// inputs (with `quick`, only [`QUICK_PHOTOS`]).
fn inputs(exe: &Path, quick: bool) -> Result<Inputs> {
    let shared = root().join("../shared/faces");
    let local_models = shared.join("models");
    let data_root = std::env::var_os("SIAMESE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("data"));
    let mirror = if local_models.is_dir() {
        Some(local_models)
    } else {
        std::env::var_os("SIAMESE_MIRROR")
            .filter(|m| !m.is_empty())
            .map(PathBuf::from)
    };
    let opts = fetch::Options {
        data_root: data_root.clone(),
        mirror,
        unpack_limit: fetch::MAX_UNPACKED,
        verbose: true,
    };
    let model = fetch::fetch_and_import("dlib-face-models", &opts, exe)?
        .context("dlib-face-models has no import step")?;
    let photo_dir = shared.join("images");
    let chip_dir = shared.join("golden/chips");
    let mut photos = images_in(&photo_dir)?;
    photos.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !SKIPPED_PHOTOS.contains(&n))
    });
    if quick {
        photos.retain(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| QUICK_PHOTOS.contains(&n))
        });
    }
    let chips = images_in(&chip_dir)?;
    if photos.len() < 2 || chips.is_empty() {
        bail!(
            "{} and {} hold too few images (see ../shared/faces/README.md)",
            photo_dir.display(),
            chip_dir.display()
        );
    }
    let photo_1080p = photo_dir.join("obama-1080p.jpg");
    if !photo_1080p.is_file() {
        bail!("{} not found", photo_1080p.display());
    }
    Ok(Inputs {
        model,
        dat_dir: data_root.join("faces"),
        photos,
        photo_dir,
        chips,
        chip_dir,
        photo_1080p,
    })
}

/// Whether `siamese SUBCOMMAND --help` mentions `flag`.
fn has_flag(exe: &Path, subcommand: &str, flag: &str) -> bool {
    Command::new(exe)
        .args([subcommand, "--help"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// One stage of ours, timed by difference: `head`, then the inputs `copies.0` or `copies.1`
/// times, then `tail`.
struct Stage<'a> {
    head: Vec<String>,
    inputs: &'a [PathBuf],
    tail: Vec<String>,
    copies: (usize, usize),
}

/// Seconds and CPU seconds per input of one round of `stage`: the two runs' differences over
/// the extra inputs.
fn time_stage(exe: &Path, stage: &Stage<'_>, threads: usize) -> Result<(f64, f64, Measured)> {
    let run = |copies: usize| -> Result<Measured> {
        let mut args = stage.head.clone();
        for _ in 0..copies {
            args.extend(stage.inputs.iter().map(|p| s(p)));
        }
        args.extend(stage.tail.iter().cloned());
        measure(exe, &args, threads)
    };
    let few = run(stage.copies.0)?;
    let many = run(stage.copies.1)?;
    let extra = ((stage.copies.1 - stage.copies.0) * stage.inputs.len()) as f64;
    let wall = (many.wall - few.wall).max(0.0) / extra;
    let cpu = match (many.cpu, few.cpu) {
        (Some(b), Some(a)) => (b - a).max(0.0) / extra,
        _ => f64::NAN,
    };
    Ok((wall, cpu, many))
}

/// One stage's seconds per input, per round: ours and dlib's, wall and CPU.
struct Series {
    /// `faces.py`'s key (`detect`, `full`, `encode`, `chip`).
    key: &'static str,
    ours: Vec<f64>,
    ours_cpu: Vec<f64>,
    dlib: Vec<f64>,
    dlib_cpu: Vec<f64>,
}

impl Series {
    fn new(key: &'static str) -> Self {
        Self {
            key,
            ours: Vec::new(),
            ours_cpu: Vec::new(),
            dlib: Vec::new(),
            dlib_cpu: Vec::new(),
        }
    }

    /// Medians of ours, ours CPU, dlib's, dlib's CPU (NaN where there are none).
    fn medians(&self) -> [f64; 4] {
        let m = |v: &[f64]| if v.is_empty() { f64::NAN } else { median(v) };
        [
            m(&self.ours),
            m(&self.ours_cpu),
            m(&self.dlib),
            m(&self.dlib_cpu),
        ]
    }

    fn json(&self) -> serde_json::Value {
        let [w, c, dw, dc] = self.medians();
        serde_json::json!({
            "stage": self.key,
            "ours_seconds": self.ours,
            "ours_cpu_seconds": self.ours_cpu,
            "dlib_seconds": self.dlib,
            "dlib_cpu_seconds": self.dlib_cpu,
            "time_ratio": w / dw,
            "cpu_ratio": c / dc,
        })
    }
}

/// The Python that runs `faces.py`: `$FACES_PYTHON` (a virtual environment with dlib, say),
/// else `$PYTHON`, else `python3`.
fn faces_python() -> String {
    std::env::var("FACES_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(python)
}

/// Whether that Python imports face_recognition and dlib.
fn dlib_available() -> bool {
    Command::new(faces_python())
        .args(["-c", "import dlib, face_recognition"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `faces.py` with `args` and returns its JSON.
fn run_peer(args: &[String]) -> Result<serde_json::Value> {
    let script = root().join("bench/peer/faces.py");
    let out = Command::new(faces_python())
        .arg(&script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {} {}", faces_python(), script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    serde_json::from_slice(&out.stdout).context("faces.py printed no JSON")
}

/// A field of the peer's JSON as a number.
fn num(v: &serde_json::Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("faces.py: no {key}"))
}

/// `a / b` as a time ratio, `n/a` when either is missing.
fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

fn ms(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1} ms", 1e3 * x)
    } else {
        "n/a".into()
    }
}

/// Times the face pipeline (and, with `--peer`, face_recognition on dlib).
pub fn run(exe: &Path, o: &BenchOptions, work: &Path) -> Result<FacesReport> {
    let inp = inputs(exe, o.quick)?;
    for (cmd, flag) in [
        ("import", "dlib"),
        ("detect", "--model"),
        ("embed", "--detect"),
        ("identify", "--faces"),
    ] {
        if !has_flag(exe, cmd, flag) {
            bail!(
                "`siamese {cmd} --help` does not mention {flag}: this binary has no face commands"
            );
        }
    }
    let model = s(&inp.model);
    let upsample: Vec<String> = if has_flag(exe, "detect", "--upsample") {
        vec!["--upsample".into(), "1".into()]
    } else {
        Vec::new()
    };
    let npy = s(&work.join("faces-embed.npy"));
    let mut detect_head: Vec<String> = vec!["detect".into(), "--model".into(), model.clone()];
    detect_head.extend(upsample.iter().cloned());
    detect_head.push("--json".into());
    let detect = Stage {
        head: detect_head,
        inputs: &inp.photos,
        tail: Vec::new(),
        copies: (1, 2),
    };
    let mut full_head: Vec<String> = vec!["embed".into(), "--model".into(), model.clone()];
    full_head.extend(["--faces".into(), "all".into()]);
    if has_flag(exe, "embed", "--upsample") {
        full_head.extend(upsample.iter().cloned());
    }
    let full = Stage {
        head: full_head,
        inputs: &inp.photos,
        tail: vec!["--out".into(), npy.clone()],
        copies: (1, 2),
    };
    let chip_copies = if o.quick { (1, 2) } else { (1, 4) };
    let chips = Stage {
        head: vec![
            "embed".into(),
            "--model".into(),
            model.clone(),
            "--detect".into(),
            "none".into(),
        ],
        inputs: &inp.chips,
        tail: vec!["--out".into(), npy.clone()],
        copies: chip_copies,
    };

    let peer = o.peer && {
        let ok = dlib_available();
        if !ok {
            eprintln!(
                "--peer: {} cannot import dlib and face_recognition; install them with \
                 `pip install dlib face_recognition` (dlib builds from source: 9 to 12 \
                 minutes on 2 cores; install libopenblas-dev first, or dlib runs several times \
                 slower) and set FACES_PYTHON (or PYTHON) to that interpreter. Skipping the \
                 dlib comparison.",
                faces_python()
            );
        }
        ok
    };
    let rounds = o.rounds.unwrap_or(if o.quick { 1 } else { 3 });
    let mut peer_args: Vec<String> = vec!["--images".into()];
    peer_args.extend(inp.photos.iter().map(|p| s(p)));
    peer_args.extend([
        "--chips".into(),
        s(&inp.chip_dir),
        "--models".into(),
        s(&inp.dat_dir),
        "--passes".into(),
        "1".into(),
    ]);

    // Alternating rounds: ours (three stages), then dlib's (the same three, one process).
    let mut stages = [
        Series::new("detect"),
        Series::new("full"),
        Series::new("encode"),
        Series::new("chip"),
    ];
    let mut dl_cores = Vec::new();
    let mut peer_json = Vec::new();
    for round in 0..rounds {
        eprintln!("faces: round {}/{rounds}", round + 1);
        let det = time_stage(exe, &detect, o.threads)?;
        let all = time_stage(exe, &full, o.threads)?;
        let chip = time_stage(exe, &chips, o.threads)?;
        for (series, (wall, cpu)) in stages.iter_mut().zip([
            (det.0, det.1),
            (all.0, all.1),
            // Chips and encoding: the full pipeline less detection (and landmarks), this round
            // (the table takes the difference of the medians instead).
            (all.0 - det.0, all.1 - det.1),
            (chip.0, chip.1),
        ]) {
            series.ours.push(wall);
            series.ours_cpu.push(cpu);
        }
        if peer {
            eprintln!("faces: dlib round {}/{rounds}", round + 1);
            let v = run_peer(&peer_args)?;
            for series in stages.iter_mut() {
                let per = if series.key == "chip" {
                    "chip"
                } else {
                    "image"
                };
                series
                    .dlib
                    .push(num(&v, &format!("{}_seconds_per_{per}", series.key))?);
                series
                    .dlib_cpu
                    .push(num(&v, &format!("{}_cpu_seconds_per_{per}", series.key))?);
            }
            dl_cores.push(num(&v, "cpu_seconds")? / num(&v, "wall_seconds")?);
            peer_json.push(v);
        }
    }

    // Peak RSS: identify every face of the 1080p photo against a small gallery.
    let gallery_dir = work.join("faces-gallery");
    let _ = std::fs::remove_dir_all(&gallery_dir);
    for (who, files) in [
        ("obama", &["obama.jpg", "obama2.jpg"][..]),
        ("biden", &["biden.jpg"]),
        ("lin-manuel-miranda", &["lin-manuel-miranda.png"]),
        ("alex-lacamoire", &["alex-lacamoire.png"]),
    ] {
        let dir = gallery_dir.join(who);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in files {
            std::fs::copy(inp.photo_dir.join(f), dir.join(f))
                .with_context(|| format!("copying {f} into {}", dir.display()))?;
        }
    }
    let gallery = work.join("faces-gallery.safetensors");
    let enroll = measure(
        exe,
        &[
            "enroll".into(),
            "--model".into(),
            model.clone(),
            "--gallery".into(),
            s(&gallery_dir),
            "--out".into(),
            s(&gallery),
        ],
        o.threads,
    )?;
    let mut identify = Vec::new();
    for _ in 0..o.runs.min(3) {
        identify.push(measure(
            exe,
            &[
                "identify".into(),
                "--model".into(),
                model.clone(),
                "--gallery".into(),
                s(&gallery),
                "--faces".into(),
                "all".into(),
                "--json".into(),
                s(&inp.photo_1080p),
            ],
            o.threads,
        )?);
    }
    let id_peak = identify
        .iter()
        .filter_map(|m| m.peak_mib)
        .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
    let id_wall = median(&identify.iter().map(|m| m.wall).collect::<Vec<_>>());
    let dl_rss = if peer {
        Some(run_peer(&[
            "--rss".into(),
            s(&inp.photo_1080p),
            "--models".into(),
            s(&inp.dat_dir),
        ])?)
    } else {
        None
    };
    let dl_peak = dl_rss.as_ref().and_then(|v| v["peak_rss_mib"].as_f64());

    // The table.
    let n_photos = inp.photos.len();
    let n_chips = inp.chips.len();
    let labels = [
        (
            0,
            format!("detect (MMOD CNN, upsampled once), per photo ({n_photos} photos)"),
        ),
        (1, "detect + landmarks + encoding, per photo".to_string()),
        (
            3,
            format!("encoding alone, per 150×150 chip ({n_chips} chips)"),
        ),
    ];
    let mut rows: Vec<Vec<String>> = labels
        .into_iter()
        .map(|(i, label)| {
            let [w, c, dw, dc] = stages[i].medians();
            vec![
                label,
                ms(w),
                ms(dw),
                ratio(w, dw),
                ms(c),
                ms(dc),
                ratio(c, dc),
            ]
        })
        .collect();
    rows.push(vec![
        "peak RSS: identify --faces all, 1920×1080 photo".into(),
        mib(id_peak),
        mib(dl_peak),
        match (id_peak, dl_peak) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => "n/a".into(),
        },
        format!("{:.0} ms wall from start", 1e3 * id_wall),
        String::new(),
        String::new(),
    ]);
    let mut md = format!(
        "\n## Faces (dlib's models, `faces.safetensors`)\n\n\
         {n_photos} photos of `../shared/faces/images` ({}) and {n_chips} chips of \
         `../shared/faces/golden/chips`; {rounds} round(s){}, {} kernel threads. Ours: the \
         difference of two runs of the release binary (all inputs once, and {}/{}/{} times), so \
         process start and model load cancel; photo decoding stays in. dlib: \
         `bench/peer/faces.py` (face_recognition {}, dlib {}), photos decoded beforehand. \
         Times are wall seconds; CPU columns are user + system seconds of every thread (ours \
         from `wait4`, dlib's from `time.process_time`), which a busy machine disturbs less. \
         Ratios are ours over dlib's: below 1× we are faster.\n\n",
        if o.quick {
            "the five smallest: --quick".to_string()
        } else {
            format!("all but {}", SKIPPED_PHOTOS.join(", "))
        },
        if peer {
            ", ours and dlib's alternating"
        } else {
            ""
        },
        o.threads,
        detect.copies.1,
        full.copies.1,
        chips.copies.1,
        peer_json
            .first()
            .and_then(|v| v["face_recognition"].as_str())
            .unwrap_or("n/a"),
        peer_json
            .first()
            .and_then(|v| v["dlib"].as_str())
            .unwrap_or("n/a"),
    );
    md.push_str(&markdown_table(
        &[
            "stage",
            "ours",
            "dlib",
            "time ratio (ours / dlib)",
            "ours CPU",
            "dlib CPU",
            "CPU ratio",
        ],
        &rows,
    ));
    // Landmarks, chips and encoding alone: dlib's `face_encodings` given the boxes; ours only as
    // the difference of the medians of the two photo rows (one round's can be negative).
    let [fw, fc, ..] = stages[1].medians();
    let [dw, dc, ..] = stages[0].medians();
    let [_, _, ew, ec] = stages[2].medians();
    md.push_str(&format!(
        "\nLandmarks + chips + encoding alone, per photo: ours {} wall, {} CPU (the difference of \
         the two photo rows' medians: within the detection's noise); dlib {} wall, {} CPU \
         (`face_encodings` given the boxes).\n",
        ms(fw - dw),
        ms(fc - dc),
        ms(ew),
        ms(ec)
    ));
    if peer {
        md.push_str(&format!(
            "\ndlib used {:.2} cores on average (CPU seconds over wall seconds of its runs).\n",
            median(&dl_cores)
        ));
    } else {
        md.push_str(if o.peer {
            "\ndlib comparison skipped: the Python of `$FACES_PYTHON` (else `$PYTHON`, else \
             `python3`) cannot import dlib and face_recognition.\n"
        } else {
            "\nNo dlib comparison (add `--peer`).\n"
        });
    }
    let json = serde_json::json!({
        "photos": inp.photos.iter().map(|p| s(p)).collect::<Vec<_>>(),
        "chips": n_chips,
        "rounds": rounds,
        "stages": stages.iter().map(Series::json).collect::<Vec<_>>(),
        "identify_1080p": {
            "peak_rss_mib": id_peak,
            "wall_seconds": identify.iter().map(|m| m.wall).collect::<Vec<_>>(),
            "enroll_seconds": enroll.wall,
        },
        "dlib": peer_json,
        "dlib_rss": dl_rss,
    });
    Ok(FacesReport { md, json })
}
