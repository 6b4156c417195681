//! Criterion benches: one training step (forward, triplet-free sum loss, backward) and one
//! inference pass of 64 images for each architecture at its usual input size.
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use candle_core::{Device, ModuleT, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use siamese_encoder::{Encoder, EncoderConfig};
use std::time::Duration;

fn cases() -> Vec<(&'static str, usize, usize, usize)> {
    vec![
        ("koch", 1, 105, 105),
        ("conv4", 1, 105, 105),
        ("conv4", 1, 28, 28),
        ("resnet", 1, 112, 92),
    ]
}

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let n = 64;
    let mut group = c.benchmark_group("encoder");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    for (arch, ch, h, w) in cases() {
        let cfg = match EncoderConfig::new(arch, ch, h, w) {
            Ok(c) => c,
            Err(e) => panic!("bench config {arch}: {e}"),
        };
        let enc = Encoder::new(&cfg, 0, &dev).expect("encoder builds");
        let x = Tensor::rand(0f32, 1f32, (n, ch, h, w), &dev).expect("input");
        group.bench_function(format!("train_step/{arch}/f32/{n}x{ch}x{h}x{w}"), |b| {
            b.iter(|| {
                let y = enc.forward_t(&x, true).expect("forward");
                let loss = y.sqr().expect("sqr").sum_all().expect("sum");
                let grads = loss.backward().expect("backward");
                std::hint::black_box(grads);
            })
        });
        group.bench_function(format!("inference/{arch}/f32/{n}x{ch}x{h}x{w}"), |b| {
            b.iter(|| std::hint::black_box(enc.forward_t(&x, false).expect("forward")))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
