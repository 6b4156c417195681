//! dlib's MMOD face detector on a 640x480 and a 1920x1080 photo (`obama-480p.jpg` resized to
//! 640x480, `obama-1080p.jpg` as it is), upsampled once (face_recognition's
//! `face_locations(model="cnn")`) and not at all: `cargo bench -p siamese-face --bench
//! detect`. Before the timings it prints each case's share of time per stage (upsampling,
//! pyramid, network, decoding and NMS) over a few runs of `Detector::detect_timed`.
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use siamese_face::detect::{DetectOptions, DetectTimings, Detector};
use siamese_face::RgbImage;

fn faces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/faces")
}

fn detector() -> Detector {
    let p = faces_dir().join("models/mmod_human_face_detector.dat");
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Detector::from_dlib("mmod_human_face_detector.dat", &bytes).unwrap()
}

/// A photo of `images/`, resized to `w` x `h` (Triangle filter) when it is another size.
fn photo(name: &str, w: u32, h: u32) -> RgbImage {
    let p = faces_dir().join("images").join(name);
    let mut img = image::open(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .to_rgb8();
    if img.dimensions() != (w, h) {
        img = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
    }
    RgbImage::new(w as usize, h as usize, img.into_raw()).unwrap()
}

fn cases() -> Vec<(&'static str, RgbImage)> {
    vec![
        ("640x480", photo("obama-480p.jpg", 640, 480)),
        ("1920x1080", photo("obama-1080p.jpg", 1920, 1080)),
    ]
}

/// Prints the seconds per image and each stage's share over `runs` runs.
fn stage_shares(d: &Detector, label: &str, img: &RgbImage, upsample: u32, runs: u32) {
    let opts = DetectOptions {
        upsample,
        ..DetectOptions::default()
    };
    let mut sum = DetectTimings::default();
    let mut faces = 0;
    for _ in 0..runs {
        let (found, t) = d.detect_timed(img, &opts).unwrap();
        faces = found.len();
        sum.upsample += t.upsample;
        sum.pyramid += t.pyramid;
        sum.network += t.network;
        sum.decode += t.decode;
    }
    let total = sum.total().as_secs_f64();
    let pct = |x: std::time::Duration| 100.0 * x.as_secs_f64() / total;
    println!(
        "detect/{label}/upsample{upsample}: {:.3} s per image ({faces} face(s)); upsample {:.1} %, \
         pyramid {:.1} %, network {:.1} %, decode+NMS {:.2} %",
        total / f64::from(runs),
        pct(sum.upsample),
        pct(sum.pyramid),
        pct(sum.network),
        pct(sum.decode)
    );
}

fn bench(c: &mut Criterion) {
    let d = detector();
    let cases = cases();
    for (label, img) in &cases {
        for upsample in [1, 0] {
            stage_shares(&d, label, img, upsample, 3);
        }
    }
    let mut g = c.benchmark_group("detect");
    g.sample_size(10);
    for (label, img) in &cases {
        for upsample in [1u32, 0] {
            let opts = DetectOptions {
                upsample,
                ..DetectOptions::default()
            };
            let id = BenchmarkId::new(*label, format!("upsample{upsample}"));
            g.bench_with_input(id, img, |b, img| b.iter(|| d.detect(img, &opts).unwrap()));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
