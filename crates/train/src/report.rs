//! Reports: plots as PNG (loss curve, ROC curve, distance histograms) and numbers as JSON.
//! A training run's report folder holds `metrics.jsonl`, `report.json`, `loss.png` and, with
//! held-out classes, `roc.png` and `distances.png` of the kept model.
//!
//! Text needs a TrueType font; the first of `$SIAMESE_FONT` and a few common system fonts is
//! used. Without one the plots are drawn without text rather than not at all.

use crate::error::{Result, TrainError};
use crate::eval;
use crate::trainer::TrainSummary;
use plotters::prelude::*;
use siamese_ops::distance::Matcher;
use std::path::Path;
use std::sync::OnceLock;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font for plot text once; returns whether one is available.
fn has_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var("SIAMESE_FONT").ok();
        for path in env
            .iter()
            .map(String::as_str)
            .chain(FONT_CANDIDATES.iter().copied())
        {
            if let Ok(bytes) = std::fs::read(path) {
                // Plotters keeps fonts for the life of the process; leaking once is intended.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::bad_file(path, format!("cannot draw plot: {e}"))
}

/// One named, coloured line of a plot.
pub type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// A line plot of `series` (each a name, colour and points) with axis labels.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    x_range: Option<(f64, f64)>,
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    let text = has_font();
    let root = BitMapBackend::new(path, (800, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let all = series.iter().flat_map(|s| s.2.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let (x0, x1) = x_range.unwrap_or((x0, x1));
    let (y0, y1) = y_range.unwrap_or((y0, y1));
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption(title, ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(60);
    }
    let mut chart = builder
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| plot_err(path, e))?;
    if text {
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .x_labels(0)
            .y_labels(0)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    for (name, colour, points) in series {
        let s = chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?;
        if text {
            let c = *colour;
            s.label(*name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
    }
    if text && series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// The ROC curve (true-accept rate against false-accept rate) with the chance diagonal.
pub fn roc_plot(path: &Path, fpr: &[f64], tpr: &[f64], auc: f64) -> Result<()> {
    let pts: Vec<(f64, f64)> = fpr.iter().copied().zip(tpr.iter().copied()).collect();
    line_plot(
        path,
        &format!("ROC (AUC {auc:.4})"),
        "false accept rate",
        "true accept rate",
        &[
            ("ROC", BLUE, pts),
            (
                "chance",
                RGBColor(180, 180, 180),
                vec![(0.0, 0.0), (1.0, 1.0)],
            ),
        ],
        Some((0.0, 1.0)),
        Some((0.0, 1.0)),
    )
}

/// Histograms of same-class and different-class distances, with the threshold marked.
pub fn distance_histogram(
    path: &Path,
    same: &[f32],
    different: &[f32],
    threshold: Option<f32>,
) -> Result<()> {
    let max = same
        .iter()
        .chain(different)
        .copied()
        .filter(|d| d.is_finite())
        .fold(0.0f32, f32::max)
        .max(1e-6) as f64;
    let bins = 60usize;
    let hist = |v: &[f32]| -> Vec<(f64, f64)> {
        let mut counts = vec![0usize; bins];
        for &d in v {
            let b = ((d as f64 / max) * bins as f64) as usize;
            counts[b.min(bins - 1)] += 1;
        }
        let total = v.len().max(1) as f64;
        let mut pts = Vec::new();
        for (i, c) in counts.iter().enumerate() {
            let x0 = i as f64 / bins as f64 * max;
            let x1 = (i + 1) as f64 / bins as f64 * max;
            let y = *c as f64 / total;
            pts.push((x0, y));
            pts.push((x1, y));
        }
        pts
    };
    let s = hist(same);
    let d = hist(different);
    let top = s
        .iter()
        .chain(d.iter())
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1e-6);
    let mut series = vec![("same class", GREEN, s), ("different class", RED, d)];
    if let Some(t) = threshold {
        series.push(("threshold", BLACK, vec![(t as f64, 0.0), (t as f64, top)]));
    }
    line_plot(
        path,
        "Distances of same-class and different-class pairs",
        "distance",
        "fraction of pairs",
        &series,
        Some((0.0, max)),
        Some((0.0, top * 1.05)),
    )
}

/// Writes `report.json`, `loss.png` into `dir` for a finished run.
pub fn write_training_report(summary: &TrainSummary, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let json_path = dir.join("report.json");
    let json = serde_json::to_string_pretty(summary)
        .map_err(|e| TrainError::Config(format!("report to JSON: {e}")))?;
    std::fs::write(&json_path, json).map_err(|e| TrainError::io(&json_path, e))?;
    let raw: Vec<(f64, f64)> = summary
        .losses
        .iter()
        .enumerate()
        .map(|(i, l)| ((i + 1) as f64, *l as f64))
        .collect();
    let window = (raw.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = raw
        .windows(window)
        .map(|w| {
            (
                w[w.len() - 1].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect();
    line_plot(
        &dir.join("loss.png"),
        "Training loss",
        "step",
        "loss",
        &[
            ("loss", RGBColor(170, 190, 230), raw),
            ("moving average", BLUE, smooth),
        ],
        None,
        None,
    )
}

/// Writes `roc.png`, `distances.png` (with `threshold` marked) and `pca.png` for labelled
/// embeddings compared by `d` (the PCA projects each set's mean encoding).
pub fn write_verification_plots(
    e: &eval::Embedded,
    d: Matcher,
    threshold: Option<f32>,
    dir: &Path,
) -> Result<()> {
    let p = eval::pairs(e, d, 200_000, 0);
    let roc = siamese_pairs::metrics::roc(&p.distances, &p.same)?;
    roc_plot(&dir.join("roc.png"), &roc.fpr, &roc.tpr, roc.auc())?;
    let mut same = Vec::new();
    let mut different = Vec::new();
    for (d, is_same) in p.distances.iter().zip(&p.same) {
        if *is_same {
            same.push(*d);
        } else {
            different.push(*d);
        }
    }
    distance_histogram(&dir.join("distances.png"), &same, &different, threshold)?;
    let dim = e.dim / d.set.max(1);
    pca_plot(&dir.join("pca.png"), &d.means(&e.emb, dim), &e.labels, dim)
}

/// Writes the `unseen` protocol's report into `dir` (created if needed): `report.json` (the
/// report), `report.md` (its numbers as a table, showing the plots beside it) and the plots
/// of [`write_verification_plots`] for `e`, the embeddings it was computed on.
pub fn write_unseen_report(
    report: &eval::UnseenReport,
    e: &eval::Embedded,
    d: Matcher,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let threshold = report.threshold.map(|t| t as f32);
    write_verification_plots(e, d, threshold, dir)?;
    let json_path = dir.join("report.json");
    let json = serde_json::to_value(report)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map_err(|e| TrainError::Config(format!("report to JSON: {e}")))?;
    std::fs::write(&json_path, json).map_err(|e| TrainError::io(&json_path, e))?;
    let percent = |a: Option<f64>| a.map_or_else(|| "n/a".into(), |a| format!("{:.2}%", 100.0 * a));
    let v = &report.verification;
    let md = format!(
        "# Evaluation: unseen classes\n\n| metric | value |\n|---|---|\n| images | {} |\n\
         | classes | {} |\n| pairs | {} |\n| ROC AUC | {:.4} |\n| EER | {:.2}% |\n\
         | accuracy at stored threshold | {} |\n| {}-way one-shot ({} episodes) | {:.2}% ± {:.2} |\n\
         | rank-1 | {} |\n\n![ROC](roc.png)\n\n![distances](distances.png)\n\n![PCA](pca.png)\n",
        report.images,
        report.classes,
        v.pairs,
        v.auc,
        100.0 * v.eer,
        percent(report.accuracy_at_threshold),
        report.oneshot.ways,
        report.oneshot.episodes,
        100.0 * report.oneshot.accuracy,
        100.0 * report.oneshot.ci95,
        percent(report.rank1.as_ref().map(|r| r.accuracy)),
    );
    let md_path = dir.join("report.md");
    std::fs::write(&md_path, md).map_err(|e| TrainError::io(&md_path, e))
}

/// The top two principal components of `rows` (`n × dim`), by power iteration with deflation.
fn principal_axes(rows: &[f32], n: usize, dim: usize) -> [Vec<f64>; 2] {
    let mut mean = vec![0.0f64; dim];
    for r in rows.chunks_exact(dim) {
        for (m, x) in mean.iter_mut().zip(r) {
            *m += *x as f64 / n.max(1) as f64;
        }
    }
    let mut cov = vec![0.0f64; dim * dim];
    for r in rows.chunks_exact(dim) {
        for i in 0..dim {
            let a = r[i] as f64 - mean[i];
            for j in 0..dim {
                cov[i * dim + j] += a * (r[j] as f64 - mean[j]);
            }
        }
    }
    let mut axes: [Vec<f64>; 2] = [vec![0.0; dim], vec![0.0; dim]];
    for axis in axes.iter_mut() {
        let mut v: Vec<f64> = (0..dim).map(|i| 1.0 + (i as f64 * 0.618).fract()).collect();
        let mut lambda = 0.0;
        for _ in 0..200 {
            let mut w = vec![0.0; dim];
            for i in 0..dim {
                w[i] = (0..dim).map(|j| cov[i * dim + j] * v[j]).sum();
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm < 1e-300 {
                break;
            }
            lambda = norm;
            v = w.into_iter().map(|x| x / norm).collect();
        }
        for i in 0..dim {
            for j in 0..dim {
                cov[i * dim + j] -= lambda * v[i] * v[j];
            }
        }
        *axis = v;
    }
    axes
}

/// A 2-D PCA projection of embeddings (`n × dim`), one colour per class.
pub fn pca_plot(path: &Path, rows: &[f32], labels: &[usize], dim: usize) -> Result<()> {
    let n = labels.len();
    if dim == 0 || rows.len() != n * dim {
        return Err(TrainError::Config(format!(
            "pca plot: {} values for {n} rows of {dim}",
            rows.len()
        )));
    }
    let [a, b] = principal_axes(rows, n, dim);
    let pts: Vec<(f64, f64, usize)> = rows
        .chunks_exact(dim)
        .zip(labels)
        .map(|(r, &l)| {
            let x = r.iter().zip(&a).map(|(v, w)| *v as f64 * w).sum();
            let y = r.iter().zip(&b).map(|(v, w)| *v as f64 * w).sum();
            (x, y, l)
        })
        .collect();
    let text = has_font();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in &pts {
        x0 = x0.min(p.0);
        x1 = x1.max(p.0);
        y0 = y0.min(p.1);
        y1 = y1.max(p.1);
    }
    if x0 >= x1 {
        (x0, x1) = (x0 - 1.0, x0 + 1.0);
    }
    if y0 >= y1 {
        (y0, y1) = (y0 - 1.0, y0 + 1.0);
    }
    let root = BitMapBackend::new(path, (800, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if text {
        builder
            .caption(
                "Encodings projected on their two principal axes",
                ("sans-serif", 22),
            )
            .x_label_area_size(35)
            .y_label_area_size(50);
    }
    let mut chart = builder
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| plot_err(path, e))?;
    if text {
        chart
            .configure_mesh()
            .x_desc("PC 1")
            .y_desc("PC 2")
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    chart
        .draw_series(
            pts.iter()
                .map(|&(x, y, l)| Circle::new((x, y), 4, Palette99::pick(l).filled())),
        )
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}
