//! Landmarks and face chips per face on golden images: the 5-point shape predictor given dlib's
//! rectangle, the 150x150 chip given dlib's points (direct bilinear, and through the
//! `pyramid_down<2>` step for a large face), and reading the predictor file.
//!
//! `cargo bench -p siamese-face --bench landmarks`; throughput is in faces per second.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use siamese_face::chip::face_chip;
use siamese_face::landmarks::ShapePredictor;

const PREDICTOR: &str = "shape_predictor_5_face_landmarks.dat";

fn bench(c: &mut Criterion) {
    let bytes = common::model_bytes(PREDICTOR);
    let golden = common::golden();
    let face = |name: &str| {
        let im = golden.iter().find(|g| g.name == name).expect(name);
        (common::image(name), im.faces[0].clone())
    };

    let mut g = c.benchmark_group("landmarks");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_predictor_file", |b| {
        b.iter(|| ShapePredictor::from_dlib(PREDICTOR, &bytes).expect("parse"))
    });
    let sp = ShapePredictor::from_dlib(PREDICTOR, &bytes).expect("parse");
    for name in ["obama.jpg", "obama_small.jpg"] {
        let (img, f) = face(name);
        g.bench_with_input(
            BenchmarkId::new("predict_5_points", name),
            &img,
            |b, img| b.iter(|| sp.predict(img, f.rect)),
        );
    }
    g.finish();

    let mut g = c.benchmark_group("chip");
    g.sample_size(10);
    g.throughput(Throughput::Elements(1));
    // obama.jpg: a 295 px chip rectangle, sampled directly; biden.jpg: 338 px, through one
    // pyramid level of the crop around the face.
    for name in ["obama.jpg", "biden.jpg"] {
        let (img, f) = face(name);
        g.bench_with_input(BenchmarkId::new("face_chip_150", name), &img, |b, img| {
            b.iter(|| face_chip(img, &f.points, 150, 0.25).expect("chip"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
