//! Criterion bench: dlib's face encoder on a batch of 16 golden chips (one `embed` call, one
//! forward pass), and on one chip alone, reported in images per second.
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use siamese_face::encoder::FaceEncoder;
use siamese_face::RgbImage;
use std::path::PathBuf;
use std::time::Duration;

fn faces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/faces")
}

fn chip(path: &std::path::Path) -> RgbImage {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    RgbImage::new(w as usize, h as usize, rgb.into_raw()).expect("chip")
}

fn bench(c: &mut Criterion) {
    let name = "dlib_face_recognition_resnet_model_v1.dat";
    let path = faces_dir().join("models").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let encoder = FaceEncoder::from_dlib(name, &bytes).expect("encoder");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(faces_dir().join("golden/chips"))
        .expect("golden chips")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    paths.sort();
    let chips: Vec<RgbImage> = paths.iter().take(16).map(|p| chip(p)).collect();
    assert_eq!(chips.len(), 16, "16 golden chips");

    let mut group = c.benchmark_group("face_encoder");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(chips.len() as u64));
    group.bench_function("embed/16x150x150", |b| {
        b.iter(|| std::hint::black_box(encoder.embed(&chips).expect("embed")))
    });
    group.finish();

    // One chip per call, as a pipeline that encodes each photo's single face on its own does.
    let mut group = c.benchmark_group("face_encoder");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));
    group.bench_function("embed/1x150x150", |b| {
        b.iter(|| std::hint::black_box(encoder.embed(&chips[..1]).expect("embed")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
