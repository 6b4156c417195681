//! Face models on `../shared/faces`: dlib's three files imported into one model file, read
//! back bit for bit, its metadata, photos through it, and hostile files refused with an error
//! naming the file and the tensor or setting.
//!
//! dlib's files are imported once per test binary into a temporary folder (31 MB parsed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{ensure, Result};
use candle_core::Device;
use siamese_face::{FacePipeline, RgbImage};
use siamese_infer::faces::{load_photo_rgb, FACE_KEY};
use siamese_infer::{Detect, FaceOptions, Faces, Gallery, InferError, Model, Verifier};
use siamese_ops::distance::Distance;

fn faces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/faces")
}

fn models() -> PathBuf {
    faces_dir().join("models")
}

fn image(name: &str) -> PathBuf {
    faces_dir().join("images").join(name)
}

const DETECTOR: &str = "mmod_human_face_detector.dat";
const LANDMARKS: &str = "shape_predictor_5_face_landmarks.dat";
const ENCODER: &str = "dlib_face_recognition_resnet_model_v1.dat";

/// The imported model file (written once), in a folder kept for the whole test binary.
fn model_file() -> &'static Path {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let path = dir.path().join("faces.safetensors");
            let m = models();
            Model::import_dlib(&m.join(DETECTOR), &m.join(LANDMARKS), &m.join(ENCODER))
                .and_then(|model| model.save(&path))
                .unwrap_or_else(|e| panic!("import: {e}"));
            (dir, path)
        })
        .1
}

fn load() -> Result<Model> {
    Ok(Model::load(model_file(), &Device::Cpu)?)
}

/// dlib's pipeline, from dlib's own files.
fn dlib_pipeline() -> Result<FacePipeline> {
    let read = |n: &str| std::fs::read(models().join(n));
    Ok(FacePipeline::from_dlib(
        (DETECTOR, &read(DETECTOR)?),
        (LANDMARKS, &read(LANDMARKS)?),
        (ENCODER, &read(ENCODER)?),
    )?)
}

/// The golden descriptors of the CNN faces of an image (what face_recognition returns).
fn golden(name: &str) -> Result<Vec<Vec<f32>>> {
    let text = std::fs::read_to_string(faces_dir().join("golden/dlib.json"))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let faces = v["images"][name]["cnn"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no golden faces for {name}"))?;
    Ok(faces
        .iter()
        .map(|f| {
            f["descriptor"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_f64())
                .map(|x| x as f32)
                .collect()
        })
        .collect())
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

#[test]
fn the_file_gives_dlibs_pipeline_bit_for_bit() -> Result<()> {
    let model = load()?;
    let dlib = dlib_pipeline()?;
    for name in ["two_people.jpg", "obama_small.jpg"] {
        let img = load_photo_rgb(&image(name))?;
        let ours = model.find_faces(&img, &FaceOptions::default())?;
        let theirs = dlib.faces(&img)?;
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.rect, b.rect, "{name}");
            assert_eq!(
                a.confidence.map(f32::to_bits),
                b.confidence.map(f32::to_bits)
            );
            assert_eq!(a.points, b.points, "{name}");
        }
        let chips = model.face_chips(&img, &ours)?;
        assert_eq!(chips, dlib.chips(&img, &theirs)?);
        let rows = model.encode_chips(&chips)?;
        let want: Vec<f32> = dlib
            .encode_faces(&img, theirs)?
            .iter()
            .flat_map(|f| f.descriptor)
            .collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&rows), bits(&want), "{name}");
        // And what dlib itself printed, as the face crate's golden tests hold it.
        for (row, g) in rows.chunks(128).zip(golden(name)?) {
            ensure!(l2(row, &g) < 1e-5, "{name}: {}", l2(row, &g));
        }
    }
    Ok(())
}

#[test]
fn the_metadata_says_what_the_model_is_and_where_it_came_from() -> Result<()> {
    let model = load()?;
    assert!(model.is_face_model());
    let m = &model.meta;
    assert_eq!(m.distance, Distance::L2);
    assert_eq!(
        (
            m.preprocess.channels,
            m.preprocess.width,
            m.preprocess.height
        ),
        (3, 150, 150)
    );
    let cal = m.calibration.as_ref().expect("a threshold");
    // dlib's stored threshold, read from its encoder file.
    assert_eq!(cal.threshold, dlib_pipeline()?.encoder.threshold());
    assert!((cal.threshold - 0.6).abs() < 1e-6);
    assert!(!cal.is_measured());
    assert!(cal.source.contains("not measured"), "{}", cal.source);
    let face = model.face.as_ref().expect("a face pipeline");
    assert_eq!(face.meta.upsample, 1);
    assert_eq!(face.meta.detect_threshold, 0.0);
    assert_eq!((face.meta.chip.size, face.meta.chip.padding), (150, 0.25));
    assert_eq!(face.meta.detector.window, [80, 80]);
    assert_eq!(face.meta.landmarks.parts, 5);
    let sha: HashMap<&str, &str> = face
        .meta
        .sources
        .iter()
        .map(|s| (s.file.as_str(), s.sha256.as_str()))
        .collect();
    // The digests `../shared/faces/README.md` lists.
    assert_eq!(
        sha[ENCODER],
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
    );
    assert_eq!(
        sha[LANDMARKS],
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
    );
    assert_eq!(
        sha[DETECTOR],
        "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"
    );
    // Saved again, it reads back the same.
    let again = Model::from_bytes(&model.to_bytes()?, &Device::Cpu)?;
    assert_eq!(again.meta, model.meta);
    assert_eq!(again.fingerprint()?, model.fingerprint()?);
    assert_eq!(again.face.map(|f| f.meta), Some(face.meta.clone()));
    Ok(())
}

/// The safetensors file at `path` with `edit` applied to its tensors and metadata.
fn rewrite(
    bytes: &[u8],
    edit: impl FnOnce(
        &mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>,
        &mut HashMap<String, String>,
    ),
) -> Result<Vec<u8>> {
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
    let mut meta = header.metadata().clone().unwrap_or_default();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors, &mut meta);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b)?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// The error of loading `bytes` as a model file named `hostile.safetensors`.
fn load_error(dir: &Path, bytes: &[u8]) -> String {
    let path = dir.join("hostile.safetensors");
    std::fs::write(&path, bytes).expect("write");
    match Model::load(&path, &Device::Cpu) {
        Ok(_) => panic!("a hostile file was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hostile_files_are_errors_naming_the_file_and_the_tensor() -> Result<()> {
    let bytes = std::fs::read(model_file())?;
    let dir = tempfile::tempdir()?;
    let face_meta = |meta: &HashMap<String, String>| -> serde_json::Value {
        serde_json::from_str(&meta[FACE_KEY]).expect("face metadata")
    };
    type Tensors = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;
    type Edit = Box<dyn FnOnce(&mut Tensors, &mut HashMap<String, String>)>;
    let set = |path: &'static [&'static str], value: serde_json::Value| -> Edit {
        Box::new(move |_, meta| {
            let mut v = face_meta(meta);
            let mut at = &mut v;
            for k in path {
                at = match k.parse::<usize>() {
                    Ok(i) => &mut at[i],
                    Err(_) => &mut at[*k],
                };
            }
            *at = value;
            meta.insert(FACE_KEY.into(), v.to_string());
        })
    };
    let cases: Vec<(Edit, &str)> = vec![
        // Sizes far beyond the file: refused before anything that size is allocated.
        (
            set(
                &["landmarks", "cascades", "0", "trees"],
                1_000_000_000_000u64.into(),
            ),
            "landmarks cascade 0 trees",
        ),
        (
            set(
                &["landmarks", "cascades", "3", "features"],
                1_000_000.into(),
            ),
            "expected [1000000]",
        ),
        (set(&["landmarks", "parts"], 68.into()), "68 parts"),
        (set(&["landmarks", "depth"], 40.into()), "landmarks depth"),
        (
            set(&["detector", "window"], serde_json::json!([0, 80])),
            "detector window width",
        ),
        (set(&["detector", "nms_iou"], 7.into()), "detector nms_iou"),
        (set(&["upsample"], 99.into()), "upsample 99"),
        (set(&["chip", "size"], 151.into()), "chips of 151x151"),
        (set(&["chip", "padding"], (-1.0).into()), "chip padding"),
        (
            Box::new(|_, meta| {
                meta.insert(FACE_KEY.into(), "{not json".into());
            }),
            "bad `siamese.face` metadata",
        ),
        (
            Box::new(|t, _| t.retain(|(n, ..)| n != "detector.conv3.weight")),
            "detector.conv3.weight: missing",
        ),
        (
            Box::new(|t, _| {
                for (n, d, s, b) in t.iter_mut() {
                    if n == "detector.conv0.bias" {
                        *d = safetensors::Dtype::U8;
                        *s = vec![b.len()];
                    }
                }
            }),
            "detector.conv0.bias: is U8",
        ),
        (
            Box::new(|t, _| {
                for (n, _, _, b) in t.iter_mut() {
                    if n == "detector.conv2.weight" {
                        b[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
                    }
                }
            }),
            "detector.conv2.weight: value 1 is NaN",
        ),
        (
            Box::new(|t, _| {
                for (n, _, _, b) in t.iter_mut() {
                    if n == "landmarks.cascade2.splits" {
                        b[..4].copy_from_slice(&999_999u32.to_le_bytes());
                    }
                }
            }),
            "landmarks.cascade2.splits: value 0 is 999999, but there are only",
        ),
        (
            Box::new(|t, _| {
                for (n, _, _, b) in t.iter_mut() {
                    if n == "landmarks.cascade7.anchors" {
                        b[..4].copy_from_slice(&7u32.to_le_bytes());
                    }
                }
            }),
            "landmarks.cascade7.anchors: value 0 is 7, but there are only 5 landmarks",
        ),
        (
            Box::new(|t, _| {
                t.push((
                    "landmarks.extra".into(),
                    safetensors::Dtype::F32,
                    vec![1],
                    vec![0; 4],
                ))
            }),
            "landmarks.extra: unexpected tensor",
        ),
    ];
    for (edit, want) in cases {
        let err = load_error(dir.path(), &rewrite(&bytes, edit)?);
        ensure!(
            err.contains("hostile.safetensors") && err.contains(want),
            "expected `{want}` in: {err}"
        );
    }
    // Truncated anywhere: an error, never a panic.
    for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = load_error(dir.path(), &bytes[..cut]);
        ensure!(err.contains("hostile.safetensors"), "{err}");
    }
    Ok(())
}

#[test]
fn detection_none_reads_a_cropped_face_and_grey_photos_work() -> Result<()> {
    let model = load()?;
    let obama = golden("obama.jpg")?.remove(0);
    // A chip dlib cut: the whole image is the face's box.
    let chip = faces_dir().join("golden/chips/obama_cnn_0.png");
    let none = FaceOptions {
        detect: Detect::None,
        ..FaceOptions::default()
    };
    let p = model.encode_photo(&chip, &none)?;
    assert_eq!((p.found, p.faces.len()), (1, 1));
    assert_eq!(p.faces[0].rect.right, 149);
    assert_eq!(p.faces[0].confidence, None);
    ensure!(l2(&p.rows, &obama) < 0.6, "{}", l2(&p.rows, &obama));
    // A grey photo (a PGM of obama_small.jpg's mean value), replicated to RGB.
    let rgb = load_photo_rgb(&image("obama_small.jpg"))?;
    let grey: Vec<u8> = rgb
        .as_raw()
        .chunks(3)
        .map(|p| ((p[0] as u32 + p[1] as u32 + p[2] as u32) / 3) as u8)
        .collect();
    let dir = tempfile::tempdir()?;
    let pgm = dir.path().join("grey.pgm");
    let mut bytes = format!("P5\n{} {}\n255\n", rgb.width(), rgb.height()).into_bytes();
    bytes.extend_from_slice(&grey);
    std::fs::write(&pgm, bytes)?;
    let p = model.encode_photo(&pgm, &FaceOptions::default())?;
    assert_eq!(p.found, 1);
    let small = golden("obama_small.jpg")?.remove(0);
    ensure!(l2(&p.rows, &small) < 0.6, "{}", l2(&p.rows, &small));
    // A blank image has no face: verification says which file.
    let blank = dir.path().join("blank.pgm");
    let mut bytes = b"P5\n64 48\n255\n".to_vec();
    bytes.extend(std::iter::repeat_n(200u8, 64 * 48));
    std::fs::write(&blank, bytes)?;
    let verifier = Verifier::new(model, None)?;
    match verifier.verify_faces(&pgm, &blank, &FaceOptions::default()) {
        Err(InferError::NoFace { path }) => assert_eq!(path, blank),
        other => panic!("expected no face in {}: {other:?}", blank.display()),
    }
    let _: RgbImage = load_photo_rgb(&blank)?;
    Ok(())
}

#[test]
fn a_group_photo_is_identified_face_by_face() -> Result<()> {
    let model = load()?;
    // A gallery of dlib's chips of Obama and Biden, read without detection.
    let dir = tempfile::tempdir()?;
    for (who, chip) in [("obama", "obama_cnn_0.png"), ("biden", "biden_cnn_0.png")] {
        std::fs::create_dir_all(dir.path().join(who))?;
        std::fs::copy(
            faces_dir().join("golden/chips").join(chip),
            dir.path().join(who).join(chip),
        )?;
    }
    let none = FaceOptions {
        detect: Detect::None,
        ..FaceOptions::default()
    };
    let enrolled = Gallery::enrol_faces(&model, dir.path(), &none)?;
    assert_eq!(enrolled.gallery.len(), 2);
    assert_eq!(enrolled.identities[0].images, 1);
    assert_eq!(enrolled.identities[0].no_face, 0);
    let all = FaceOptions {
        faces: Faces::All,
        ..FaceOptions::default()
    };
    let found =
        enrolled
            .gallery
            .identify_faces(&model, &[image("two_people.jpg")], &all, 2, None)?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].found, 2);
    let mut names: Vec<&str> = found[0].faces.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["biden", "obama"]);
    // Saved with its counts, it opens as any gallery.
    let path = dir.path().join("g.safetensors");
    enrolled.save(&path)?;
    let counts = siamese_infer::faces::read_enrolment(&path)?.expect("counts");
    assert_eq!(counts, enrolled.identities);
    let opened = Gallery::open(&path, &model)?;
    assert_eq!(opened.rows(), enrolled.gallery.rows());
    Ok(())
}
