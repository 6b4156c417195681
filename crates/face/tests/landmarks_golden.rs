//! The 5-point shape predictor reads dlib's file to its last byte, rejects damaged copies, and
//! places every golden face's landmarks where real dlib did, given dlib's rectangle.

mod common;

use std::sync::OnceLock;
use std::time::Instant;

use siamese_face::landmarks::ShapePredictor;
use siamese_face::{Point, Rect, RgbImage};

const PREDICTOR: &str = "shape_predictor_5_face_landmarks.dat";

fn bytes() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| common::model_bytes(PREDICTOR))
}

fn predictor() -> &'static ShapePredictor {
    static P: OnceLock<ShapePredictor> = OnceLock::new();
    P.get_or_init(|| ShapePredictor::from_dlib(PREDICTOR, bytes()).unwrap())
}

#[test]
fn the_predictor_file_walks_to_its_last_byte() {
    let t = Instant::now();
    let p = ShapePredictor::from_dlib(PREDICTOR, bytes()).unwrap();
    println!(
        "parsed {} bytes in {:.1} ms",
        bytes().len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(p.num_parts(), 5);
    assert_eq!(p.num_cascades(), 15);
    assert_eq!(p.num_trees(), 7500);
    let mean = p.mean_shape();
    let expected = [
        [0.776, 0.346],
        [0.619, 0.354],
        [0.227, 0.346],
        [0.384, 0.354],
        [0.501, 0.658],
    ];
    for (m, e) in mean.iter().zip(expected) {
        assert!(
            (m[0] - e[0]).abs() < 1e-3 && (m[1] - e[1]).abs() < 1e-3,
            "{mean:?}"
        );
    }
}

#[test]
fn landmarks_match_dlib_on_every_golden_face() {
    let p = predictor();
    // Every image, JPEGs included, has exactly the pixels dlib was given: `common::image`
    // decodes JPEGs with libjpeg-turbo's decoder, as PIL does for face_recognition.
    let (mut faces, mut exact, mut worst) = (0usize, 0usize, 0i64);
    for im in common::golden() {
        let img = common::image(&im.name);
        assert_eq!([img.height(), img.width(), 3], im.shape[..], "{}", im.name);
        for f in &im.faces {
            let got = p.predict(&img, f.rect);
            assert_eq!(got.len(), 5);
            let err = got
                .iter()
                .zip(&f.points)
                .map(|(a, b)| (a.x - b.x).abs().max((a.y - b.y).abs()))
                .max()
                .unwrap_or(0);
            faces += 1;
            exact += got.iter().zip(&f.points).filter(|(a, b)| a == b).count();
            worst = worst.max(err);
            if err > 0 {
                println!("{} {}: {got:?} vs dlib {:?}", im.name, f.detector, f.points);
            }
        }
    }
    println!(
        "landmarks: {faces} faces, {exact}/{} points exact, max error {worst} px",
        faces * 5
    );
    assert!(faces >= 30, "{faces} faces");
    // Given the pixels dlib saw, the predictor is dlib's to the pixel.
    assert_eq!((exact, worst), (faces * 5, 0), "points exact, max error");
}

#[test]
fn truncated_or_altered_files_are_errors_naming_file_and_offset() {
    let bytes = bytes();
    for cut in [
        0,
        1,
        3,
        4,
        50,
        5000,
        bytes.len() / 2,
        bytes.len() - 3,
        bytes.len() - 1,
    ] {
        let err = ShapePredictor::from_dlib(PREDICTOR, &bytes[..cut])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(PREDICTOR) && err.contains("at byte"),
            "{cut}: {err}"
        );
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    let err = ShapePredictor::from_dlib(PREDICTOR, &longer)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unexpected bytes"), "{err}");
    // Version 2.
    let mut v2 = bytes.to_vec();
    v2[1] = 2;
    let err = ShapePredictor::from_dlib(PREDICTOR, &v2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at byte 0") && err.contains("version 2"),
        "{err}"
    );
    // The first split's idx1 (346 = 02 5a 01) set to 60000 (02 60 ea): beyond 800 pixels.
    let at = bytes
        .windows(3)
        .position(|w| w == [0x02, 0x5a, 0x01])
        .unwrap();
    let mut bad = bytes.to_vec();
    bad[at + 1..at + 3].copy_from_slice(&[0x60, 0xea]);
    let err = ShapePredictor::from_dlib(PREDICTOR, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("split feature 60000") && err.contains(&format!("at byte {at}")),
        "{err}"
    );
    // Flip bytes all over: an error or (where the byte is a value) a predictor, never a panic;
    // whatever loads must predict without panicking.
    let img = RgbImage::zeroed(64, 64).unwrap();
    let mut loaded = 0;
    for i in (0..bytes.len()).step_by(bytes.len() / 37) {
        let mut b = bytes.to_vec();
        b[i] ^= 0x5a;
        if let Ok(p) = ShapePredictor::from_dlib(PREDICTOR, &b) {
            loaded += 1;
            assert_eq!(
                p.predict(&img, Rect::new(0, 0, 63, 63)).len(),
                p.num_parts()
            );
        }
    }
    println!("{loaded} of 38 altered copies still load");
}

#[test]
fn another_model_file_is_an_error_naming_it() {
    for name in [
        "dlib_face_recognition_resnet_model_v1.dat",
        "mmod_human_face_detector.dat",
    ] {
        let b = common::model_bytes(name);
        let err = ShapePredictor::from_dlib(name, &b).unwrap_err().to_string();
        assert!(err.starts_with(name) && err.contains("at byte"), "{err}");
    }
    assert!(ShapePredictor::from_dlib("empty", &[]).is_err());
}

#[test]
fn odd_rectangles_and_images_never_panic() {
    let p = predictor();
    let img = common::image("obama_small.jpg");
    let tiny = RgbImage::new(1, 1, vec![200, 100, 50]).unwrap();
    let rects = [
        Rect::new(-500, -500, -300, -300),
        Rect::new(10_000, 10_000, 10_200, 10_200),
        Rect::new(50, 50, 50, 50),
        Rect::new(50, 50, 49, 49),
        Rect::new(100, 100, 0, 0),
        Rect::new(0, 0, 0, 1 << 40),
        Rect::new(i64::MIN, i64::MIN, i64::MAX, i64::MAX),
        Rect::new(i64::MAX, i64::MAX, i64::MIN, i64::MIN),
    ];
    for rect in rects {
        for im in [&img, &tiny] {
            let pts = p.predict(im, rect);
            assert_eq!(pts.len(), 5, "{rect:?}");
        }
    }
    // A one-pixel rectangle puts every landmark on that pixel.
    let pts = p.predict(&img, Rect::new(50, 60, 50, 60));
    assert!(pts.iter().all(|&q| q == Point::new(50, 60)), "{pts:?}");
    // A face wholly outside the image is the mean shape pushed by zero-valued pixels:
    // still inside its rectangle, give or take the trees' reach.
    let r = Rect::new(-500, -500, -301, -301);
    for q in p.predict(&img, r) {
        assert!(
            (-560..=-240).contains(&q.x) && (-560..=-240).contains(&q.y),
            "{q:?}"
        );
    }
}
