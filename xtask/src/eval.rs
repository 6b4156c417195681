//! `cargo xtask eval NAME`: fetch (or mirror) → train with the recipe → evaluate → report,
//! end to end through the real `siamese` binary, so the path measured is the user's.
//!
//! Reports go to `target/eval/NAME/` as `report.json` and `report.md`, with each seed's model,
//! training report and evaluation plots beside them.

use crate::fetch::{self, Options};
use crate::UsageError;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

struct EvalOptions {
    name: String,
    seeds: Vec<u64>,
    budget: f64,
    data_root: PathBuf,
    mirror: Option<PathBuf>,
    train_all: bool,
    extra: Vec<String>,
}

/// The workspace root (xtask lives one folder below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the release binary and returns its path.
pub fn build_binary() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "siamese-cli"])
        .current_dir(root())
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p siamese-cli failed");
    }
    let exe = root()
        .join("target/release")
        .join(format!("siamese{}", std::env::consts::EXE_SUFFIX));
    if !exe.exists() {
        bail!("built binary not found at {}", exe.display());
    }
    Ok(exe)
}

fn parse(args: &[String]) -> Result<EvalOptions> {
    let mut o = EvalOptions {
        name: String::new(),
        seeds: vec![0],
        budget: 0.0,
        data_root: std::env::var_os("SIAMESE_DATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("data")),
        mirror: std::env::var_os("SIAMESE_MIRROR")
            .filter(|m| !m.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let shared = root().join("../shared/data");
                shared.is_dir().then_some(shared)
            }),
        train_all: false,
        extra: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| -> Result<String> {
            it.next()
                .cloned()
                .ok_or_else(|| UsageError(format!("{flag} needs a value")).into())
        };
        match a.as_str() {
            "--seeds" => {
                o.seeds = value(a)?
                    .split(',')
                    .map(|s| s.trim().parse::<u64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| UsageError("--seeds takes numbers like 0,1,2".into()))?
            }
            "--time-budget" => {
                o.budget = value(a)?
                    .parse()
                    .map_err(|_| UsageError("--time-budget takes seconds".into()))?
            }
            "--data-root" => o.data_root = PathBuf::from(value(a)?),
            "--mirror" => o.mirror = Some(PathBuf::from(value(a)?)),
            "--train-all" => o.train_all = true,
            "--" => o.extra.extend(it.by_ref().cloned()),
            f if f.starts_with('-') => return Err(UsageError(format!("unknown flag `{f}`")).into()),
            name if o.name.is_empty() => o.name = name.to_string(),
            other => return Err(UsageError(format!("unexpected argument `{other}`")).into()),
        }
    }
    if o.name.is_empty() {
        return Err(UsageError("name an evaluation: omniglot or att-faces".into()).into());
    }
    Ok(o)
}

/// Parses `eval` arguments and runs it.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let fetch_opts = Options {
        data_root: o.data_root.clone(),
        mirror: o.mirror.clone(),
        unpack_limit: crate::fetch::MAX_UNPACKED,
        verbose: true,
    };
    let out = root().join("target/eval").join(&o.name);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    match o.name.as_str() {
        "omniglot" => {
            fetch::fetch_named("omniglot-small", &fetch_opts)?;
            let exe = build_binary()?;
            omniglot(&o, &exe, &out)
        }
        "att-faces" => {
            fetch::fetch_named("att-faces", &fetch_opts)?;
            let exe = build_binary()?;
            att_faces(&o, &exe, &out)
        }
        other => Err(UsageError(format!(
            "unknown evaluation `{other}` (expected omniglot or att-faces)"
        ))
        .into()),
    }
}

fn siamese(exe: &Path, args: &[String]) -> Result<String> {
    eprintln!("$ siamese {}", args.join(" "));
    let out = Command::new(exe)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        bail!("siamese {} failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Trains `seedN.safetensors` in `out` with `recipe` on the `data` arguments for `budget`
/// seconds (plus the user's extra flags), then evaluates it with `eval` arguments and returns
/// the evaluation's JSON.
#[allow(clippy::too_many_arguments)]
fn train_and_eval(
    o: &EvalOptions,
    exe: &Path,
    out: &Path,
    recipe: &str,
    budget: f64,
    seed: u64,
    data: &[String],
    eval: &[&str],
) -> Result<serde_json::Value> {
    let model = s(&out.join(format!("seed{seed}.safetensors")));
    let mut train = vec!["train".to_string()];
    train.extend(data.iter().cloned());
    for arg in [
        "--recipe",
        recipe,
        "--time-budget",
        &budget.to_string(),
        "--seed",
        &seed.to_string(),
        "--out",
        &model,
        // Each evaluation is a new run: it replaces the last one's checkpoint in this folder.
        "--overwrite",
    ] {
        train.push(arg.to_string());
    }
    train.extend(o.extra.iter().cloned());
    siamese(exe, &train)?;
    let mut args: Vec<String> = ["eval", "--model", &model]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(eval.iter().map(|a| a.to_string()));
    args.push("--json".into());
    let text = siamese(exe, &args)?;
    Ok(serde_json::from_str(text.trim())?)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

/// How many 20-way runs the Omniglot evaluation builds.
const OMNIGLOT_RUNS: usize = 100;

/// The standard error of an accuracy `p` measured on `n` independent trials (0 without any).
fn binomial_se(p: f64, n: f64) -> f64 {
    if n > 0.0 {
        (p * (1.0 - p) / n).sqrt()
    } else {
        0.0
    }
}

/// The accuracy and the number of trials of a `siamese eval --protocol oneshot-runs` result.
fn accuracy_and_trials(v: &serde_json::Value) -> (f64, f64) {
    (
        v["accuracy"].as_f64().unwrap_or(0.0),
        v["n"].as_f64().unwrap_or(0.0),
    )
}

/// Omniglot: train on images_background_small1 (or both small sets with `--train-all`),
/// evaluate on 20-way within-alphabet runs built from the small2 alphabets small1 lacks.
fn omniglot(o: &EvalOptions, exe: &Path, out: &Path) -> Result<()> {
    let dir = o.data_root.join("omniglot");
    let small1 = dir.join("images_background_small1.zip");
    let small2 = dir.join("images_background_small2.zip");
    // 100 runs (2,000 trials) put the binomial standard error near 0.75 points; 20 runs
    // (400 trials) left it near 1.7, too wide to rank recipes.
    let runs = out.join(format!("runs-{OMNIGLOT_RUNS}"));
    let last_run = siamese_data::oneshot_run_name(OMNIGLOT_RUNS - 1, OMNIGLOT_RUNS);
    if !runs.join(last_run).exists() {
        let d1 = siamese_data::Dataset::open(&small1)?;
        let d2 = siamese_data::Dataset::open(&small2)?;
        let known = d1.alphabets();
        let fresh = d2.filter_classes(|c| !known.iter().any(|a| a == siamese_data::alphabet_of(c)));
        eprintln!(
            "building {OMNIGLOT_RUNS} runs of 20-way one-shot from {:?}",
            fresh.alphabets()
        );
        let cfg = siamese_data::OneShotRunsConfig {
            runs: OMNIGLOT_RUNS,
            ways: 20,
            seed: 0,
        };
        siamese_data::write_oneshot_runs(&fresh, &runs, &cfg)?;
    }
    let budget = if o.budget > 0.0 { o.budget } else { 900.0 };
    let mut rows = Vec::new();
    for &seed in &o.seeds {
        let mut data = vec!["--data".to_string(), s(&small1)];
        if o.train_all {
            data.extend(["--data".into(), s(&small2)]);
        }
        let eval = ["--protocol", "oneshot-runs", "--runs", &s(&runs)];
        let v = train_and_eval(o, exe, out, "omniglot", budget, seed, &data, &eval)?;
        let (acc, n) = accuracy_and_trials(&v);
        eprintln!(
            "seed {seed}: 20-way one-shot accuracy {:.2}% ± {:.2} (standard error over {n} trials)",
            100.0 * acc,
            100.0 * binomial_se(acc, n)
        );
        rows.push((seed, v));
    }
    let accs: Vec<f64> = rows.iter().map(|r| accuracy_and_trials(&r.1).0).collect();
    let (m, sd) = mean_std(&accs);
    let mut md = format!(
        "# Omniglot one-shot evaluation\n\nTrained on {} for {budget:.0} s per seed; evaluated on {OMNIGLOT_RUNS} runs of 20-way within-alphabet one-shot classification built from the alphabets of images_background_small2 that small1 lacks (training and test drawings by different drawers).\n\n| seed | accuracy | standard error | trials |\n|---|---|---|---|\n",
        if o.train_all { "both small background sets" } else { "images_background_small1" }
    );
    for (seed, v) in &rows {
        let (acc, n) = accuracy_and_trials(v);
        md.push_str(&format!(
            "| {seed} | {:.2}% | {:.2} | {n} |\n",
            100.0 * acc,
            100.0 * binomial_se(acc, n)
        ));
    }
    md.push_str(&format!(
        "\nMean {:.2}% (std {:.2} over {} seeds).\n",
        100.0 * m,
        100.0 * sd,
        accs.len()
    ));
    write_report(
        out,
        &md,
        &serde_json::json!({"name": "omniglot", "budget_seconds": budget, "mean_accuracy": m, "std": sd, "seeds": rows.iter().map(|r| serde_json::json!({"seed": r.0, "result": r.1})).collect::<Vec<_>>()}),
    )
}

/// AT&T: train on s1–s20 (or all 30 with `--train-all`, then evaluation is on seen subjects
/// and only a smoke test), evaluate verification and 10-way one-shot on s21–s30.
fn att_faces(o: &EvalOptions, exe: &Path, out: &Path) -> Result<()> {
    let data = o.data_root.join("att_faces");
    let budget = if o.budget > 0.0 { o.budget } else { 600.0 };
    let mut rows = Vec::new();
    for &seed in &o.seeds {
        let mut train = vec!["--data".to_string(), s(&data)];
        if !o.train_all {
            train.extend(["--classes".into(), "s1-s20".into()]);
        }
        let report = s(&out.join(format!("seed{seed}-eval")));
        let eval = [
            "--protocol",
            "unseen",
            "--data",
            &s(&data),
            "--classes",
            "s21-s30",
            "--ways",
            "10",
            "--episodes",
            "2000",
            "--report",
            &report,
        ];
        let v = train_and_eval(o, exe, out, "att-faces", budget, seed, &train, &eval)?;
        eprintln!(
            "seed {seed}: 10-way one-shot {:.2}%, EER {:.2}%, AUC {:.4}",
            100.0 * v["oneshot_accuracy"].as_f64().unwrap_or(0.0),
            100.0 * v["eer"].as_f64().unwrap_or(0.0),
            v["auc"].as_f64().unwrap_or(0.0)
        );
        rows.push((seed, v));
    }
    let one: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.1["oneshot_accuracy"].as_f64())
        .collect();
    let eer: Vec<f64> = rows.iter().filter_map(|r| r.1["eer"].as_f64()).collect();
    let (m1, s1) = mean_std(&one);
    let (me, se) = mean_std(&eer);
    let mut md = format!(
        "# AT&T faces evaluation\n\nTrained on {} for {budget:.0} s per seed; evaluated on subjects s21–s30 ({}): verification over all 4,950 pairs and 10-way one-shot identification over 2,000 episodes.\n\n| seed | 10-way one-shot | EER | AUC | accuracy at stored threshold |\n|---|---|---|---|---|\n",
        if o.train_all { "all 30 subjects" } else { "subjects s1–s20" },
        if o.train_all { "seen in training: a smoke test only" } else { "never seen in training" }
    );
    for (seed, v) in &rows {
        md.push_str(&format!(
            "| {seed} | {:.2}% | {:.2}% | {:.4} | {:.2}% |\n",
            100.0 * v["oneshot_accuracy"].as_f64().unwrap_or(0.0),
            100.0 * v["eer"].as_f64().unwrap_or(0.0),
            v["auc"].as_f64().unwrap_or(0.0),
            100.0 * v["accuracy"].as_f64().unwrap_or(0.0)
        ));
    }
    md.push_str(&format!(
        "\nMean 10-way one-shot {:.2}% (std {:.2}), mean EER {:.2}% (std {:.2}) over {} seeds. Plots: `seedN-eval/roc.png`, `seedN-eval/distances.png`.\n",
        100.0 * m1, 100.0 * s1, 100.0 * me, 100.0 * se, rows.len()
    ));
    write_report(
        out,
        &md,
        &serde_json::json!({"name": "att-faces", "budget_seconds": budget, "mean_oneshot_accuracy": m1, "mean_eer": me, "seeds": rows.iter().map(|r| serde_json::json!({"seed": r.0, "result": r.1})).collect::<Vec<_>>()}),
    )
}

fn write_report(out: &Path, md: &str, json: &serde_json::Value) -> Result<()> {
    std::fs::write(out.join("report.md"), md)
        .with_context(|| format!("cannot write {}", out.join("report.md").display()))?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(json)?)
        .with_context(|| format!("cannot write {}", out.join("report.json").display()))?;
    println!("{md}");
    eprintln!("report: {}", out.join("report.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_standard_error_matches_hand_computed_cases() {
        // sqrt(0.85 · 0.15 / 2000) = 0.0079843...
        assert!((binomial_se(0.85, 2000.0) - 0.007_984_3).abs() < 1e-6);
        // 400 trials at 85%: 1.785 points, the old eval's noise.
        assert!((binomial_se(0.85, 400.0) - 0.017_853_6).abs() < 1e-6);
        assert_eq!(binomial_se(1.0, 100.0), 0.0);
        assert_eq!(binomial_se(0.5, 0.0), 0.0);
    }

    #[test]
    fn mean_and_sample_standard_deviation() {
        let (m, sd) = mean_std(&[0.85, 0.87]);
        assert!((m - 0.86).abs() < 1e-12);
        // Sample (n − 1) deviation of two values 0.02 apart: 0.02 / √2.
        assert!((sd - 0.02 / 2f64.sqrt()).abs() < 1e-12);
    }
}
