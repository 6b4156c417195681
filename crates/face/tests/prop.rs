//! Property tests: dlib's serialisation reader and the three model readers never panic on
//! arbitrary bytes (an error naming the offset is fine; a panic, an abort or an allocation
//! larger than the bytes is not). Case counts are small so each property runs in seconds.

use proptest::prelude::*;
use siamese_face::detect::Detector;
use siamese_face::dlib::net::read_network;
use siamese_face::dlib::Reader;
use siamese_face::encoder::FaceEncoder;
use siamese_face::landmarks::ShapePredictor;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes that look like dlib's stream: small varints (a length byte then its digits), tag
/// strings, and raw bytes, so that the readers get past their first checks.
fn dlib_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        // A varint of 1 to 8 bytes, possibly negative (dlib sets the high bit of the length).
        (
            1u8..=8,
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 8)
        )
            .prop_map(|(n, neg, digits)| {
                let mut v = vec![n | if neg { 0x80 } else { 0 }];
                v.extend_from_slice(&digits[..n as usize]);
                v
            }),
        // A small positive varint.
        (0u8..=255).prop_map(|d| vec![1, d]),
        // A string of a layer tag dlib writes.
        proptest::sample::select(vec![
            "con_",
            "fc_",
            "relu_",
            "bn_con2",
            "affine_",
            "max_pool",
            "avg_pool",
            "add_prev_",
            "tag1",
            "skip1",
            "input_rgb_image_sized",
            "input_rgb_image",
            "loss_metric_",
            "loss_mmod_",
            "input_rgb_image_pyramid",
        ])
        .prop_map(|s| {
            let mut v = vec![1, s.len() as u8];
            v.extend_from_slice(s.as_bytes());
            v
        }),
        proptest::collection::vec(any::<u8>(), 0..16),
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config(300))]

    /// Every primitive of the reader, in an order chosen by the bytes themselves.
    #[test]
    fn reader_primitives_never_panic(
        bytes in dlib_like(),
        ops in proptest::collection::vec(0u8..10, 1..40),
    ) {
        let mut r = Reader::new("arbitrary.dat", &bytes);
        for op in ops {
            let _ = match op {
                0 => r.byte().map(|_| ()),
                1 => r.bool().map(|_| ()),
                2 => r.int().map(|_| ()),
                3 => r.uint().map(|_| ()),
                4 => r.f64().map(|_| ()),
                5 => r.f32().map(|_| ()),
                6 => r.string().map(|_| ()),
                7 => r.matrix().map(|_| ()),
                8 => r.tensor().map(|_| ()),
                _ => r.len(4, "values").map(|_| ()),
            };
        }
        let _ = r.finish();
    }

    #[test]
    fn read_network_never_panics(bytes in dlib_like()) {
        let mut r = Reader::new("arbitrary.dat", &bytes);
        let _ = read_network(&mut r, |r| r.string());
    }

    #[test]
    fn model_readers_never_panic(bytes in dlib_like(), raw in proptest::collection::vec(any::<u8>(), 0..256)) {
        for b in [&bytes, &raw] {
            let _ = FaceEncoder::from_dlib("encoder.dat", b);
            let _ = ShapePredictor::from_dlib("landmarks.dat", b);
            let _ = Detector::from_dlib("detector.dat", b);
        }
    }
}
