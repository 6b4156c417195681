//! The dlib reader walks the real encoder file to its last byte and rejects damaged copies.

mod common;

use siamese_face::dlib::net::{read_network, Layer};
use siamese_face::dlib::Reader;

const ENCODER: &str = "dlib_face_recognition_resnet_model_v1.dat";

fn metric_loss(r: &mut Reader<'_>) -> siamese_face::Result<(f32, f32)> {
    r.tag(&["loss_metric_2"], "the metric loss")?;
    Ok((r.f32()?, r.f32()?))
}

#[test]
fn the_encoder_file_walks_to_its_last_byte() {
    let bytes = common::model_bytes(ENCODER);
    let mut r = Reader::new(ENCODER, &bytes);
    let net = read_network(&mut r, metric_loss).unwrap();
    assert_eq!(net.loss, (0.04, 0.6));
    assert_eq!(net.input.size, Some((150, 150)));
    let convs = net
        .layers()
        .filter(|(l, _)| matches!(l, Layer::Conv { .. }))
        .count();
    let affines = net
        .layers()
        .filter(|(l, _)| matches!(l, Layer::Affine { .. }))
        .count();
    assert_eq!((convs, affines), (29, 29));
    let params: usize = net
        .layers()
        .map(|(l, _)| match l {
            Layer::Conv { filters, bias, .. } => filters.len() + bias.as_ref().map_or(0, Vec::len),
            Layer::Affine { gamma, beta } => gamma.len() + beta.len(),
            Layer::Fc { weights, .. } => weights.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(params, 5_614_592);
}

#[test]
fn truncated_or_altered_files_are_errors_naming_file_and_offset() {
    let bytes = common::model_bytes(ENCODER);
    for cut in [0, 1, 7, 341, 5000, bytes.len() / 2, bytes.len() - 1] {
        let mut r = Reader::new(ENCODER, &bytes[..cut]);
        let err = read_network(&mut r, metric_loss).unwrap_err().to_string();
        assert!(
            err.starts_with(ENCODER) && err.contains("at byte"),
            "{cut}: {err}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let err = read_network(&mut Reader::new(ENCODER, &longer), metric_loss).unwrap_err();
    assert!(err.to_string().contains("unexpected bytes"), "{err}");
    // Flip bytes at many places: an error or (where the byte is a weight) a network, never a panic.
    for i in (0..bytes.len()).step_by(bytes.len() / 997) {
        let mut altered = bytes.clone();
        altered[i] ^= 0x5a;
        let _ = read_network(&mut Reader::new(ENCODER, &altered), metric_loss);
    }
}
