//! The MMOD face detector against what dlib printed (`golden/dlib.json`, `cnn`: the image
//! upsampled once, as face_recognition's `face_locations(model="cnn")`), face_recognition's own
//! expectations, and hostile inputs.
//!
//! Every golden image is detected once (upsample 1, as dlib's goldens were made), shared by
//! the tests below through a `OnceLock`; that pass is most of this file's time.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use siamese_face::detect::{DetectOptions, Detection, Detector};
use siamese_face::{Rect, RgbImage};

const DETECTOR: &str = "mmod_human_face_detector.dat";
const ENCODER: &str = "dlib_face_recognition_resnet_model_v1.dat";

fn detector() -> &'static Detector {
    static D: OnceLock<Detector> = OnceLock::new();
    D.get_or_init(|| Detector::from_dlib(DETECTOR, &common::model_bytes(DETECTOR)).unwrap())
}

/// Each golden image's detections with the default options (upsample 1, threshold 0).
fn detections() -> &'static BTreeMap<String, Vec<Detection>> {
    static R: OnceLock<BTreeMap<String, Vec<Detection>>> = OnceLock::new();
    R.get_or_init(|| {
        let d = detector();
        common::golden()
            .iter()
            .map(|g| {
                let img = common::image(&g.name);
                assert_eq!([img.height(), img.width(), 3], g.shape[..], "{}", g.name);
                let t = std::time::Instant::now();
                let found = d.detect(&img, &DetectOptions::default()).unwrap();
                eprintln!(
                    "{:<26} {:>4}x{:<4} {:>6.2} s",
                    g.name,
                    img.width(),
                    img.height(),
                    t.elapsed().as_secs_f64()
                );
                (g.name.clone(), found)
            })
            .collect()
    })
}

/// The largest difference between corresponding sides, in pixels.
fn side_diff(a: &Rect, b: &Rect) -> i64 {
    [
        a.left - b.left,
        a.top - b.top,
        a.right - b.right,
        a.bottom - b.bottom,
    ]
    .iter()
    .map(|d| d.abs())
    .max()
    .unwrap_or(0)
}

#[test]
fn cnn_faces_match_dlib() {
    let found = detections();
    let mut failures = Vec::new();
    println!(
        "image                      faces  max side diff (px, % of face)  max confidence diff"
    );
    for g in common::golden() {
        let ours = &found[&g.name];
        let theirs = g.by("cnn");
        let mut used = vec![false; ours.len()];
        let (mut worst_px, mut worst_pct, mut worst_conf) = (0i64, 0f64, 0f64);
        for f in &theirs {
            let size = f.rect.width().max(f.rect.height()) as f64;
            let best = ours
                .iter()
                .enumerate()
                .filter(|(i, _)| !used[*i])
                .min_by_key(|(_, d)| side_diff(&d.rect, &f.rect));
            let Some((i, d)) = best else {
                failures.push(format!("{}: dlib's face {:?} not found", g.name, f.rect));
                continue;
            };
            used[i] = true;
            let px = side_diff(&d.rect, &f.rect);
            let pct = 100.0 * px as f64 / size;
            let conf = (f64::from(d.confidence) - f.confidence.unwrap_or(f64::NAN)).abs();
            worst_px = worst_px.max(px);
            worst_pct = worst_pct.max(pct);
            worst_conf = worst_conf.max(conf);
            if pct > 5.0 || conf.is_nan() || conf > 0.05 {
                failures.push(format!(
                    "{}: dlib {:?} {:?}, ours {:?} {}",
                    g.name, f.rect, f.confidence, d.rect, d.confidence
                ));
            }
        }
        for (d, u) in ours.iter().zip(&used) {
            if !u {
                failures.push(format!(
                    "{}: extra face {:?} {}",
                    g.name, d.rect, d.confidence
                ));
            }
        }
        println!(
            "{:<26} {:>2}/{:<2}  {:>3} px ({:>5.2} %)                 {:.2e}",
            g.name,
            ours.len(),
            theirs.len(),
            worst_px,
            worst_pct,
            worst_conf
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn face_recognition_expectations() {
    let found = detections();
    for (name, n) in [
        ("obama.jpg", 1),
        ("obama2.jpg", 1),
        ("obama3.jpg", 1),
        ("biden.jpg", 1),
        ("two_people.jpg", 2),
    ] {
        assert_eq!(found[name].len(), n, "{name}: {:?}", found[name]);
    }
    // Sorted by confidence, highest first.
    for (name, dets) in found {
        assert!(
            dets.windows(2).all(|w| w[0].confidence >= w[1].confidence),
            "{name}"
        );
    }
}

#[test]
fn faces_cut_by_the_border_are_reported_as_dlib_does() {
    let found = detections();
    // dlib's rectangle for the face cut by the left edge reaches past it (left -42).
    let d = &found["obama_partial_face.jpg"];
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].rect.left < 0, "{d:?}");
    assert_eq!(found["obama_partial_face2.jpg"].len(), 1);
}

#[test]
fn truncated_or_foreign_files_are_errors_naming_the_file() {
    let bytes = common::model_bytes(DETECTOR);
    for cut in [0, 1, 10, 100, 137, 5000, bytes.len() / 2, bytes.len() - 1] {
        let err = Detector::from_dlib(DETECTOR, &bytes[..cut])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(DETECTOR) && err.contains("at byte"),
            "{cut}: {err}"
        );
    }
    let encoder = common::model_bytes(ENCODER);
    let err = Detector::from_dlib(ENCODER, &encoder)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(ENCODER) && err.contains("at byte"), "{err}");
    assert!(err.contains("loss"), "{err}");
    // Flipped bytes: an error or (where the byte is a weight) a detector, never a panic.
    let mut errors = 0;
    for i in (0..bytes.len()).step_by(bytes.len() / 499) {
        let mut altered = bytes.clone();
        altered[i] ^= 0x5a;
        if let Err(e) = Detector::from_dlib(DETECTOR, &altered) {
            assert!(e.to_string().starts_with(DETECTOR), "{e}");
            errors += 1;
        }
    }
    assert!(errors > 0);
}

#[test]
fn layer_mismatches_name_the_offset() {
    // The first convolution's stride (the int after its 3 longs) changed from 2 to 3: the
    // file still parses as a network, the architecture check rejects it.
    let mut bytes = common::model_bytes(DETECTOR);
    let con = bytes.windows(5).position(|w| w == b"con_4").unwrap();
    // con_4's tensor: version, 4 dims, 1216 floats; then filters 16, rows 5, cols 5, stride 2.
    let after_tensor = con + 5 + 2 + 3 + 2 + 2 + 2 + 1216 * 4;
    assert_eq!(
        &bytes[after_tensor..after_tensor + 8],
        &[1, 16, 1, 5, 1, 5, 1, 2]
    );
    bytes[after_tensor + 7] = 3;
    let err = Detector::from_dlib(DETECTOR, &bytes)
        .unwrap_err()
        .to_string();
    assert!(err.contains("layer 0") && err.contains("stride"), "{err}");
    assert!(
        err.starts_with(&format!("{DETECTOR}: at byte {}:", con - 2)),
        "{err}"
    );
}

#[test]
fn tiny_blank_and_odd_images_give_no_faces() {
    let d = detector();
    let opts = DetectOptions::default();
    for (w, h) in [
        (1, 1),
        (1, 7),
        (9, 1),
        (2, 2),
        (3, 3),
        (1, 300),
        (300, 1),
        (79, 79),
    ] {
        let img = RgbImage::zeroed(w, h).unwrap();
        assert!(d.detect(&img, &opts).unwrap().is_empty(), "{w}x{h}");
        let none = DetectOptions {
            upsample: 0,
            ..opts
        };
        assert!(d.detect(&img, &none).unwrap().is_empty(), "{w}x{h}");
    }
    let black = RgbImage::zeroed(640, 480).unwrap();
    assert!(d.detect(&black, &opts).unwrap().is_empty());
}

#[test]
fn huge_images_are_refused_before_allocating() {
    let d = detector();
    // calloc'd and never touched: the size check comes first.
    let img = RgbImage::zeroed(20000, 20000).unwrap();
    let err = d
        .detect(&img, &DetectOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("20000x20000") && err.contains("max_pixels"),
        "{err}"
    );
    let opts = DetectOptions {
        upsample: 40,
        max_pixels: usize::MAX,
        ..DetectOptions::default()
    };
    assert!(d.detect(&RgbImage::zeroed(8, 8).unwrap(), &opts).is_err());
    // A limit below the upsampled size of a small image: an error saying how to raise it.
    let small = RgbImage::zeroed(100, 100).unwrap();
    let tight = DetectOptions {
        max_pixels: 10_000,
        ..DetectOptions::default()
    };
    let err = d.detect(&small, &tight).unwrap_err().to_string();
    assert!(err.contains("202x201") && err.contains("10000"), "{err}");
    let ok = DetectOptions {
        upsample: 0,
        ..tight
    };
    assert!(d.detect(&small, &ok).unwrap().is_empty());
}

#[test]
fn threshold_and_upsample_options() {
    let d = detector();
    let img = common::image("obama_small.jpg");
    let base = d.detect(&img, &DetectOptions::default()).unwrap();
    assert_eq!(base.len(), 1);
    // A lower threshold keeps every face found at 0 and finds more candidates.
    let low = DetectOptions {
        threshold: -0.5,
        ..DetectOptions::default()
    };
    let more = d.detect(&img, &low).unwrap();
    assert!(more.len() >= base.len());
    assert!(more.contains(&base[0]));
    // A high one none.
    let high = DetectOptions {
        threshold: 5.0,
        ..DetectOptions::default()
    };
    assert!(d.detect(&img, &high).unwrap().is_empty());
    // Without upsampling this 118-pixel face is still found (the window is 80).
    let none = DetectOptions {
        upsample: 0,
        ..DetectOptions::default()
    };
    let found = d.detect(&img, &none).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
}
