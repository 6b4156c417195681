//! The face encoder against real dlib: every golden chip's descriptor, face_recognition's
//! same-person / different-person expectations, the safetensors round trip, and hostile files.

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use siamese_face::encoder::{distance, Descriptor, FaceEncoder};
use siamese_face::{FaceError, RgbImage};

const ENCODER: &str = "dlib_face_recognition_resnet_model_v1.dat";

fn encoder() -> &'static FaceEncoder {
    static E: OnceLock<FaceEncoder> = OnceLock::new();
    E.get_or_init(|| FaceEncoder::from_dlib(ENCODER, &common::model_bytes(ENCODER)).unwrap())
}

/// Every golden face's chip name and dlib's descriptor of it.
fn golden_chips() -> Vec<(String, Vec<f32>)> {
    common::golden()
        .into_iter()
        .flat_map(|im| im.faces)
        .map(|f| (f.chip, f.descriptor_from_chip))
        .collect()
}

/// Our descriptors of every golden chip, by chip name (one call: batches of 16).
fn our_descriptors() -> &'static HashMap<String, Descriptor> {
    static D: OnceLock<HashMap<String, Descriptor>> = OnceLock::new();
    D.get_or_init(|| {
        let golden = golden_chips();
        let chips: Vec<RgbImage> = golden.iter().map(|(c, _)| common::chip(c)).collect();
        let ds = encoder().embed(&chips).unwrap();
        golden.into_iter().map(|(c, _)| c).zip(ds).collect()
    })
}

#[test]
fn reads_the_model_file() {
    let e = encoder();
    assert_eq!(e.mean_rgb(), [122.782, 117.001, 104.298]);
    assert_eq!(e.threshold(), 0.6);
    assert_eq!(e.encoder().params().count(), 5_614_592 - 7_104);
}

#[test]
fn every_golden_chip_matches_dlib() {
    let ours = our_descriptors();
    let golden = golden_chips();
    assert!(golden.len() >= 30, "{} golden faces", golden.len());
    let (mut max, mut sum, mut n) = (0f32, 0f64, 0usize);
    for (chip, want) in &golden {
        assert_eq!(want.len(), 128, "{chip}");
        let got = &ours[chip];
        let m = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        sum += got
            .iter()
            .zip(want)
            .map(|(a, b)| f64::from((a - b).abs()))
            .sum::<f64>();
        n += 128;
        max = max.max(m);
        assert!(m < 1e-4, "{chip}: max difference {m}");
    }
    println!(
        "descriptor difference from dlib over {} faces: max {max:.3e}, mean {:.3e}",
        golden.len(),
        sum / n as f64
    );
}

#[test]
fn same_person_within_threshold_others_beyond() {
    let ours = our_descriptors();
    let t = encoder().threshold();
    let obamas = ["obama_hog_0.png", "obama2_hog_0.png", "obama3_hog_0.png"];
    for a in obamas {
        for b in obamas {
            let d = distance(&ours[a], &ours[b]);
            println!("{a} vs {b}: {d:.4}");
            assert!(d <= t, "{a} vs {b}: {d}");
        }
        let d = distance(&ours[a], &ours["biden_hog_0.png"]);
        println!("{a} vs biden_hog_0.png: {d:.4}");
        assert!(d > t, "{a} vs biden: {d}");
    }
    // The same with the CNN detector's chips.
    let obamas = ["obama_cnn_0.png", "obama2_cnn_0.png", "obama3_cnn_0.png"];
    for a in obamas {
        for b in obamas {
            assert!(distance(&ours[a], &ours[b]) <= t, "{a} vs {b}");
        }
        assert!(distance(&ours[a], &ours["biden_cnn_0.png"]) > t, "{a}");
    }
}

#[test]
fn safetensors_round_trip_is_bit_identical() {
    let e = encoder();
    let bytes = e.to_safetensors().unwrap();
    let back = FaceEncoder::from_safetensors("face.safetensors", &bytes).unwrap();
    assert_eq!(back.mean_rgb(), e.mean_rgb());
    assert_eq!(back.threshold(), e.threshold());
    let chips: Vec<RgbImage> = ["obama_hog_0.png", "biden_cnn_0.png", "two_people_hog_1.png"]
        .iter()
        .map(|c| common::chip(c))
        .collect();
    let a = e.embed(&chips).unwrap();
    let b = back.embed(&chips).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
    // Bytes that are not a face encoder's.
    let err = FaceEncoder::from_safetensors("junk.safetensors", b"not safetensors").unwrap_err();
    assert!(err.to_string().starts_with("junk.safetensors"), "{err}");
}

#[test]
fn hostile_files_are_errors_naming_the_file() {
    let bytes = common::model_bytes(ENCODER);
    for cut in [0, 3, 100, bytes.len() / 3, bytes.len() - 1] {
        let err = FaceEncoder::from_dlib(ENCODER, &bytes[..cut]).unwrap_err();
        assert!(matches!(err, FaceError::Format { .. }), "{cut}: {err}");
        assert!(err.to_string().starts_with(ENCODER), "{cut}: {err}");
    }
    for other in [
        "mmod_human_face_detector.dat",
        "shape_predictor_5_face_landmarks.dat",
    ] {
        let err = FaceEncoder::from_dlib(other, &common::model_bytes(other)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FaceError::Format { .. }), "{other}: {msg}");
        assert!(msg.starts_with(other), "{other}: {msg}");
        println!("{msg}");
    }
}

#[test]
fn a_chip_of_the_wrong_size_is_an_input_error() {
    let e = encoder();
    let good = common::chip("biden_hog_0.png");
    for (w, h) in [(149, 150), (150, 151), (1, 1)] {
        let bad = RgbImage::zeroed(w, h).unwrap();
        let err = e.embed(&[good.clone(), bad]).unwrap_err();
        assert!(matches!(err, FaceError::Input(_)), "{err}");
        assert!(err.to_string().contains("150x150"), "{err}");
    }
    assert!(e.embed(&[]).unwrap().is_empty());
    assert!(e.input_tensor(&[]).is_err());
    let x = e.input_tensor(&[good]).unwrap();
    assert_eq!(x.dims(), &[1, 3, 150, 150]);
}

/// A layer that differs from dlib's network (here the first downsampling convolution with
/// stride 1, or the max-pooling with a 2x2 window) is named with its position and offset.
#[test]
fn a_wrong_layer_is_named_with_its_offset() {
    use siamese_face::dlib::net::{read_network, Layer};
    use siamese_face::dlib::Reader;
    let bytes = common::model_bytes(ENCODER);
    let net = read_network(&mut Reader::new(ENCODER, &bytes), |r| {
        r.tag(&["loss_metric_2"], "loss")?;
        Ok((r.f32()?, r.f32()?))
    })
    .unwrap();
    let position = |pred: &dyn Fn(&Layer) -> bool| {
        net.nodes
            .iter()
            .enumerate()
            .find_map(|(i, n)| match n {
                siamese_face::dlib::net::Node::Layer { layer, offset } if pred(layer) => {
                    Some((i, *offset))
                }
                _ => None,
            })
            .unwrap()
    };

    // The first con 64x32x3x3: its strides follow the tag, the tensor and three ints.
    let (i, offset) = position(&|l| {
        matches!(
            l,
            Layer::Conv {
                shape: [64, 32, 3, 3],
                ..
            }
        )
    });
    let mut r = Reader::new("t", &bytes[offset..]);
    r.string().unwrap();
    r.tensor().unwrap();
    for _ in 0..3 {
        r.int().unwrap();
    }
    let at = offset + r.pos();
    let mut altered = bytes.clone();
    assert_eq!(&altered[at..at + 4], &[1, 2, 1, 2]);
    altered[at + 1] = 1;
    altered[at + 3] = 1;
    let err = FaceEncoder::from_dlib(ENCODER, &altered)
        .unwrap_err()
        .to_string();
    let want = format!(
        "{ENCODER}: at byte {offset}: layer {i} is con 64x32x3x3 stride 1x1 padding 0x0, expected con 64x32x3x3 stride 2 padding 0"
    );
    assert_eq!(err, want);

    // The max-pooling's window rows (right after its tag).
    let (i, offset) = position(&|l| matches!(l, Layer::Pool { avg: false, .. }));
    let at = offset + 1 + 1 + "max_pool_2".len();
    let mut altered = bytes.clone();
    assert_eq!(&altered[at..at + 2], &[1, 3]);
    altered[at + 1] = 2;
    let err = FaceEncoder::from_dlib(ENCODER, &altered)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "at byte {offset}: layer {i} is max_pool 2x3 stride 2x2 padding 0x0, expected max_pool 3x3"
        )),
        "{err}"
    );
}
