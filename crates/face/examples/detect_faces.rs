//! Detects faces in one image with dlib's MMOD model and prints them with the time of each
//! stage: `cargo run --release -p siamese-face --example detect_faces -- IMAGE [UPSAMPLE]
//! [RUNS]` (the model is read from `../shared/faces/models`, or `$MMOD_MODEL`). Run it under
//! `/usr/bin/time -v` for the peak memory.

use std::path::PathBuf;

use siamese_face::detect::{DetectOptions, DetectTimings, Detector};
use siamese_face::RgbImage;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: IMAGE [UPSAMPLE] [RUNS]"))?,
    );
    let upsample: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    let model = std::env::var_os("MMOD_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/faces/models/mmod_human_face_detector.dat")
        });
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let detector = Detector::from_dlib(&name, &std::fs::read(&model)?)?;
    let rgb = image::open(&path)?.to_rgb8();
    let (w, h) = rgb.dimensions();
    let img = RgbImage::new(w as usize, h as usize, rgb.into_raw())?;
    let opts = DetectOptions {
        upsample,
        ..DetectOptions::default()
    };
    let mut sum = DetectTimings::default();
    for run in 0..runs {
        let (faces, t) = detector.detect_timed(&img, &opts)?;
        if run == 0 {
            for f in &faces {
                println!("{:?} {:.4}", f.rect, f.confidence);
            }
        }
        sum.upsample += t.upsample;
        sum.pyramid += t.pyramid;
        sum.network += t.network;
        sum.decode += t.decode;
    }
    let total = sum.total().as_secs_f64();
    let share = |d: std::time::Duration| 100.0 * d.as_secs_f64() / total;
    println!(
        "{}x{} upsample {upsample}: {:.3} s per image; upsample {:.1} %, pyramid {:.1} %, \
         network {:.1} %, decode+NMS {:.1} %",
        w,
        h,
        total / runs as f64,
        share(sum.upsample),
        share(sum.pyramid),
        share(sum.network),
        share(sum.decode)
    );
    Ok(())
}
