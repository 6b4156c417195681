//! End to end, as face_recognition runs it: our box -> our points -> our chip -> our
//! descriptor, against what real dlib printed for every CNN face of `../shared/faces`.

mod common;

use siamese_face::encoder::distance;
use siamese_face::{FacePipeline, Rect};

fn pipeline() -> FacePipeline {
    let m = common::model_bytes;
    FacePipeline::from_dlib(
        (
            "mmod_human_face_detector.dat",
            &m("mmod_human_face_detector.dat"),
        ),
        (
            "shape_predictor_5_face_landmarks.dat",
            &m("shape_predictor_5_face_landmarks.dat"),
        ),
        (
            "dlib_face_recognition_resnet_model_v1.dat",
            &m("dlib_face_recognition_resnet_model_v1.dat"),
        ),
    )
    .unwrap()
}

fn overlap(a: &Rect, b: &Rect) -> f64 {
    let i = a.intersect(b).area() as f64;
    i / (a.area() + b.area()) as f64 * 2.0
}

#[test]
fn every_golden_face_end_to_end_within_0_01_of_dlibs_descriptor() {
    let p = pipeline();
    let mut worst = 0f32;
    let mut sum = 0f32;
    let mut n = 0;
    let mut ours = std::collections::HashMap::new();
    for g in common::golden() {
        let img = common::image(&g.name);
        let found = p.encode(&img).unwrap();
        let golden = g.by("cnn");
        assert_eq!(
            found.len(),
            golden.len(),
            "{}: {} faces found, dlib found {}",
            g.name,
            found.len(),
            golden.len()
        );
        for gf in golden {
            let best = found
                .iter()
                .max_by(|a, b| {
                    overlap(&a.face.rect, &gf.rect).total_cmp(&overlap(&b.face.rect, &gf.rect))
                })
                .unwrap();
            let want: [f32; 128] = gf.descriptor.as_slice().try_into().unwrap();
            let d = distance(&best.descriptor, &want);
            println!(
                "{:28} box {:?} vs dlib {:?}: descriptor {d:.5} from dlib's",
                g.name, best.face.rect, gf.rect
            );
            assert!(
                d <= 0.01,
                "{}: descriptor {d} from dlib's (limit 0.01)",
                g.name
            );
            worst = worst.max(d);
            sum += d;
            n += 1;
        }
        if found.len() == 1 {
            ours.insert(g.name.clone(), found[0].descriptor);
        }
    }
    println!(
        "end to end over {n} faces: max {worst:.5}, mean {:.5} (Euclidean, against dlib's descriptor)",
        sum / n as f32
    );
    // face_recognition's own test expectations.
    let d = |a: &str, b: &str| distance(&ours[a], &ours[b]);
    for (a, b) in [
        ("obama.jpg", "obama2.jpg"),
        ("obama.jpg", "obama3.jpg"),
        ("obama2.jpg", "obama3.jpg"),
    ] {
        assert!(d(a, b) <= 0.6, "{a} vs {b}: {}", d(a, b));
    }
    for o in ["obama.jpg", "obama2.jpg", "obama3.jpg"] {
        assert!(
            d(o, "biden.jpg") > 0.6,
            "{o} vs biden: {}",
            d(o, "biden.jpg")
        );
    }
}

#[test]
fn whole_image_as_the_face_box_and_faceless_images() {
    let p = pipeline();
    // A chip-like crop: the whole image as the box (`--detect none`).
    let chip = common::chip("obama_cnn_0.png");
    let face = p.face_in(&chip, FacePipeline::whole(&chip));
    assert_eq!(face.points.len(), 5);
    let enc = p.encode_faces(&chip, vec![face]).unwrap();
    assert_eq!(enc.len(), 1);
    // No face: an empty result, not an error.
    let black = siamese_face::RgbImage::zeroed(320, 240).unwrap();
    assert!(p.encode(&black).unwrap().is_empty());
    let one = siamese_face::RgbImage::zeroed(1, 1).unwrap();
    assert!(p.encode(&one).unwrap().is_empty());
}
